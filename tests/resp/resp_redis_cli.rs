//! Real Redis clients against the RESP listener: `redis-cli` (Debian's
//! redis-tools) runs one script of every supported command against
//! caskade and against a real `redis-server` the test starts on a free
//! port, in raw and in `--no-raw` output, and the outputs must be the same
//! bytes; `redis-benchmark` then runs SET, GET and PING, pipelined, with
//! no error. The same script (less `DBSIZE` and `WAIT`, which answer a
//! node's share and its in-sync followers in a cluster, and `CONFIG GET
//! appendfsync`) runs through a
//! node of a 3-node cluster that leads no partition, every command
//! forwarded, with the same output as redis-server. Needs `redis-cli`,
//! `redis-server` and `redis-benchmark` (scripts/ensure-deps.sh installs
//! them).

use crate::idle_node;
use crate::resp_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The commands run on both servers, one per line, as redis-cli reads
/// them from stdin. Every line answers the same on both; commands whose
/// answers differ by design (HELLO, INFO, COMMAND, CLIENT ID/INFO) are in
/// docs/API.md and tests/resp/resp.rs instead. Absolute expiries are fixed
/// instants (2100-01-01) so both answer the same digits.
const SCRIPT: &str = r#"PING
PING "hello world"
ECHO ""
SET k v
GET k
SET k v2 XX
SET k v3 NX
GET k
SET e ""
GET e
SETNX k x
SETNX n1 x
STRLEN k
STRLEN missing
MGET k missing e
EXISTS k k missing
TYPE k
TYPE missing
EXPIRE k 100
TTL k
EXPIRE missing 10
TTL missing
PTTL missing
PTTL n1
TTL n1
SET t v EX 1000
TTL t
SET t2 v PX 1000000
TTL t2
SET bin "\x00\xff hi"
GET bin
STRLEN bin
DBSIZE
DEL k missing
UNLINK n1
EXISTS k n1
SELECT 0
SELECT x
GET
SET k v NX XX
SET k v EX 10 PX 100
SET k v EX abc
SET k v EX 0
SET k v EX
EXPIRE k x
PEXPIRE t 5000000
TTL t
FOO bar baz
CLIENT SETNAME cli1
CLIENT GETNAME
CLIENT SETNAME "a b"
CONFIG GET maxmemory
CONFIG GET save
CONFIG GET appendonly
CONFIG GET appendfsync
CONFIG GET timeout
CONFIG FOO
WAIT 0 0
DBSIZE
SET s1 a GET
SET s1 b GET
SET s1 c NX GET
SET s1 d XX GET
SET s2 d XX GET
SET s1 v EX 100 EX 200
TTL s1
SET s1 w KEEPTTL
TTL s1
SET s1 v KEEPTTL EX 5
SET s1 v EXAT 4102444800
EXPIRETIME s1
PEXPIRETIME s1
SET s1 v PXAT 4102444800123
PEXPIRETIME s1
EXPIRETIME s1
SET s1 v PXAT 1000
GET s1
SET s1 v PX 9223372036854775807
SET s1 v EXAT 9223372036854775807
SET s1 v EXAT 0
SET s1 v PXAT abc
GETSET s1 one
GETSET s1 two
GETDEL s1
GETDEL s1
SET g v
GETEX g
GETEX g EX 100
TTL g
GETEX g PERSIST
TTL g
GETEX g PXAT 4102444800123
PEXPIRETIME g
GETEX g NX
GETEX g PERSIST EX 10
GETEX g EX 0
GETEX g EX x
GETEX missing EX 0
GETEX missing
PERSIST g
PERSIST g
PERSIST missing
EXPIRE g 100 XX
EXPIRE g 100 GT
EXPIRE g 100 LT
EXPIRE g 200 NX
EXPIRE g 50 GT
EXPIRE g 200 GT
TTL g
PEXPIRE g 150000 LT
TTL g
EXPIRE g 300 XX
TTL g
EXPIRE g 10 NX XX
EXPIRE g 10 GT LT
EXPIRE g x NX XX
EXPIRE g 10 foo
EXPIRE g 9223372036854775807
PEXPIRE g 9223372036854775807
EXPIREAT g 9223372036854775807
EXPIREAT g 4102444800
EXPIRETIME g
PEXPIREAT g 4102444800500
PEXPIRETIME g
EXPIRETIME g
EXPIREAT g 4102444800 LT
EXPIREAT missing 4102444800
EXPIRETIME missing
PEXPIRETIME missing
EXPIREAT g 1
EXISTS g
INCR c
INCRBY c 41
DECR c
DECRBY c 50
DECRBY c -9
INCRBY c x
DECRBY c -9223372036854775808
INCRBY c -9223372036854775808
DECR c
INCR c
SET c 9223372036854775807
INCR c
INCRBY c 1.5
SET c abc
INCR c
DECR c
APPEND a hi
APPEND a " there"
APPEND a ""
GET a
STRLEN a
MSET m1 a m2 b m1 c
MGET m1 m2 m3
MSET m1 a m2
MSET m1
GETSET m1
DBSIZE
DEL c a m1 m2 g
"#;

/// Whether `bin` is on the PATH.
fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A redis-server the test started (and its directory); killed on drop.
struct Redis(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts redis-server with durability as caskade's default (AOF,
/// everysec, no snapshots) and waits for it to answer.
fn redis_server() -> (Redis, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let redis = Redis(child, dir);
    let started = Instant::now();
    while cli(port, &[], "PING\n") != "PONG\n" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (redis, port)
}

/// redis-cli on `port` with `flags`, `script` on stdin: its stdout.
fn cli(port: u16, flags: &[&str], script: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_answers_as_redis_server() {
    for bin in ["redis-cli", "redis-server", "redis-benchmark"] {
        assert!(
            have(bin),
            "{bin} is not installed: run scripts/ensure-deps.sh"
        );
    }
    let s = resp_common::start(|_| {}).await;
    let port: u16 = s.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let (ours, theirs, bench) = tokio::task::spawn_blocking(move || {
        let (_redis, redis_port) = redis_server();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for flags in [&[][..], &["--no-raw"][..]] {
            // Each mode starts from an empty database on both.
            ours.push(cli(port, flags, &format!("{SCRIPT}DEL k e t t2 bin\n")));
            theirs.push(cli(
                redis_port,
                flags,
                &format!("{SCRIPT}DEL k e t t2 bin\n"),
            ));
        }
        let bench = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-t",
                "set,get,ping",
                "-n",
                "3000",
                "-c",
                "10",
                "-P",
                "16",
                "-q",
            ])
            .output()
            .expect("run redis-benchmark");
        (ours, theirs, bench)
    })
    .await
    .unwrap();
    for (o, t) in ours.iter().zip(&theirs) {
        // Line by line, so a difference names its command.
        for (i, (a, b)) in o.lines().zip(t.lines()).enumerate() {
            assert_eq!(a, b, "output line {i}:\ncaskade:\n{o}\nredis:\n{t}");
        }
        assert_eq!(o, t);
    }
    assert!(
        ours[1].contains("(error) ERR syntax error\n"),
        "{}",
        ours[1]
    );
    let out = String::from_utf8_lossy(&bench.stdout);
    let err = String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "{out}\n{err}");
    for t in ["SET: ", "GET: ", "PING_INLINE: ", "PING_MBULK: "] {
        assert!(out.contains(t), "{t} missing from\n{out}\n{err}");
    }
    assert!(!out.contains("ERR") && !err.contains("ERR"), "{out}\n{err}");
    s.stop().await;
}

#[test]
fn redis_cli_through_a_cluster_node_that_leads_nothing_answers_as_redis_server() {
    assert!(
        have("redis-cli") && have("redis-server"),
        "run scripts/ensure-deps.sh"
    );
    let script: String = SCRIPT
        .lines()
        // The test cluster runs with `fsync: never` (appendfsync no).
        .filter(|l| {
            !["DBSIZE", "WAIT", "CONFIG GET appendfsync"]
                .iter()
                .any(|c| l.starts_with(c))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let script = format!("{script}DEL k e t t2 bin\n");
    let (c, node) = idle_node::cluster_with_an_idle_node();
    let port = idle_node::resp_port(&c, node);
    let (_redis, redis_port) = redis_server();
    let ours = cli(port, &["--no-raw"], &script);
    let theirs = cli(redis_port, &["--no-raw"], &script);
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(a, b, "output line {i}:\ncaskade:\n{ours}\nredis:\n{theirs}");
    }
    assert_eq!(ours, theirs);
    assert!(ours.contains("(integer) 42\n"), "{ours}");
    assert!(idle_node::leads_nothing(&c, node));
}
