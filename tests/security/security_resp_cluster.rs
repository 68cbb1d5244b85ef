//! RESP through a three-node cluster whose nodes require authentication
//! (`harness::cluster::ClusterAuth`: every node has the same users, and
//! the harness reads metadata as one of them). A node that does not lead
//! a key's partition forwards its commands to the leader with the
//! caller's credentials: plain `GET`s and `SET`s on the lane of (leader,
//! credentials) and its forward wire connection (plaintext here;
//! src/server/service/coalesce.rs, lane_stream.rs, wire.rs), the other
//! commands as unary calls. The leader's `INFO stats` counters
//! (`cmd_forward_wire`: wire connections opened, or refused at their
//! greeting; their messages count as `mget` / `mset`, refused ones too;
//! `cmd_forward`, `Forward` streams, stays 0) show exactly what was
//! forwarded.

use crate::harness;

use std::io::Write;

use harness::cluster::{ClusterAuth, ClusterOpts, TestCluster};
use harness::resp::Conn;

/// The users of every node: (name, password, permissions).
const USERS: &[(&str, &str, &[&str])] = &[
    ("admin", "admin-pw", &["read", "write", "admin"]),
    ("rw", "rw-pw", &["read", "write"]),
    ("ro", "ro-pw", &["read"]),
    ("default", "def-pw", &["read", "write"]),
];

/// Redis' answer before authentication.
const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";

/// Redis' answer to a wrong user or password.
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// A cluster of 3 nodes requiring [`USERS`] (the harness logs in as
/// `admin`), RESP on, and `failpoints` (e.g. `server::coalesce_pause`)
/// in every node when given; every ISR full.
fn auth_cluster(failpoints: Option<&str>) -> TestCluster {
    auth_cluster_with(USERS, "", failpoints)
}

/// As [`auth_cluster`], with `users` and `extra` in every node's `auth:`.
fn auth_cluster_with(
    users: &[(&str, &str, &[&str])],
    extra: &str,
    failpoints: Option<&str>,
) -> TestCluster {
    let mut env = vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())];
    if let Some(f) = failpoints {
        env.push(("FAILPOINTS".into(), f.into()));
    }
    let c = TestCluster::start_shared(ClusterOpts {
        env,
        auth: Some(ClusterAuth::users(users, "admin", extra)),
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    c
}

/// What a leader counts of forwarded work: `(calls, errors)` of these
/// `cmd_*` lines of `INFO stats`.
const COUNTED: [&str; 10] = [
    "get",
    "set",
    "mget",
    "mset",
    "incrby",
    "del",
    "forward",
    "forward_wire",
    "getdel",
    "exists",
];

/// `(calls, errors)` of each of [`COUNTED`] at node `i` (read as `admin`
/// over RESP).
fn counts(c: &TestCluster, i: usize) -> Vec<(u64, u64)> {
    counts_at(&c.resp_addr(i))
}

/// As [`counts`], of the node whose RESP listener is `addr`.
fn counts_at(addr: &str) -> Vec<(u64, u64)> {
    let info = Conn::login(addr, "admin", "admin-pw").bulk(&["INFO", "stats"]);
    COUNTED
        .iter()
        .map(|name| harness::calls_errors(&info, name))
        .collect()
}

/// What node `i` counted of [`COUNTED`] while `f` ran, as `(name, calls,
/// errors)` for the names that moved.
fn counted_during(c: &TestCluster, i: usize, f: impl FnOnce()) -> Vec<(&'static str, u64, u64)> {
    let before = counts(c, i);
    f();
    let after = counts(c, i);
    COUNTED
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a != *b)
        .map(|(n, (b, a))| (*n, a.0 - b.0, a.1 - b.1))
        .collect()
}

/// The script a read-write user runs on keys `k` (4 keys of one partition):
/// each command and the answer a leader gives.
fn rw_script(k: &[String]) -> Vec<(Vec<String>, &'static str)> {
    let v = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (a, b, x, n) = (&*k[0], &*k[1], &*k[2], &*k[3]);
    vec![
        (v(&["SET", a, "v1"]), "+OK\r\n"),
        (v(&["GET", a]), "$2\r\nv1\r\n"),
        (v(&["MSET", a, "x1", b, "y2"]), "+OK\r\n"),
        (
            v(&["MGET", a, b, x]),
            "*3\r\n$2\r\nx1\r\n$2\r\ny2\r\n$-1\r\n",
        ),
        (v(&["INCR", n]), ":1\r\n"),
        (v(&["INCR", n]), ":2\r\n"),
        (v(&["GET", n]), "$1\r\n2\r\n"),
        (v(&["DEL", a, b, x]), ":2\r\n"),
        (v(&["GET", a]), "$-1\r\n"),
        (v(&["SET", b, "w"]), "+OK\r\n"),
    ]
}

/// Runs `script` on `conn`; every answer is the expected one.
fn run_script(conn: &mut Conn, script: &[(Vec<String>, &str)]) {
    for (args, want) in script {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(conn.ask(&args), *want, "{args:?}");
    }
}

/// Through a node that does not lead partition 0, logged in with `AUTH
/// user password`, `SET`/`GET`/`MSET`/`MGET`/`INCR`/`DEL` of partition 0's
/// keys answer exactly as at the leader; the leader counts exactly the
/// forwards: each `GET`, and each `MGET` whole, as an `MGet` and each `SET`
/// as an `MSet` message of two `Forward` streams (one per lane: 2
/// `cmd_forward`, no unary `set` or `get`), the others as unary calls
/// (`MSET` one `MSet`, `INCR` an `IncrBy`, `DEL` and `EXISTS` one `Del` or
/// `Exists` per partition, here one for all their keys); the third node
/// is not involved. A read-only user gets
/// `NOPERM` for every write, nothing of it forwarded, and its reads are
/// forwarded on its own lane (a third stream: lanes are per credentials).
/// Without `AUTH`, or after a wrong password, every command is `NOAUTH`
/// and nothing is forwarded. `HELLO 3 AUTH` logs in too (RESP3 answers,
/// two more streams for `default`'s lanes). The harness's own gRPC client
/// is logged in; one without credentials is refused.
#[test]
fn authenticated_resp_through_a_non_leader_answers_as_the_leader_over_forward_streams() {
    let c = auth_cluster(None);
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    let third = (0..3).find(|&i| i != leader && i != via).unwrap();
    let (at_via, at_leader) = (c.resp_addr(via), c.resp_addr(leader));
    let keys = |from: usize| (from..from + 4).map(|n| c.key_in(0, n)).collect::<Vec<_>>();
    let (kv, kl) = (keys(0), keys(10));

    // A read-write user through the non-leader, then at the leader.
    let mut third_counted = Vec::new();
    let counted = counted_during(&c, leader, || {
        third_counted = counted_during(&c, third, || {
            run_script(&mut Conn::login(&at_via, "rw", "rw-pw"), &rw_script(&kv));
        });
    });
    assert_eq!(
        counted,
        vec![
            ("mget", 4, 0),
            ("mset", 3, 0),
            ("incrby", 2, 0),
            ("del", 1, 0),
            ("forward_wire", 2, 0)
        ],
        "the leader's counts of the forwards"
    );
    assert_eq!(third_counted, vec![], "the third node is not involved");
    run_script(&mut Conn::login(&at_leader, "rw", "rw-pw"), &rw_script(&kl));

    // A read-only user: writes refused here, reads forwarded on its lane.
    let ro = |addr: &str, k: &[String]| {
        let mut r = Conn::login(addr, "ro", "ro-pw");
        let noperm = |cmd: &str| {
            format!("-NOPERM this user has no permissions to run the '{cmd}' command\r\n")
        };
        assert_eq!(r.ask(&["SET", &k[1], "ro"]), noperm("set"));
        assert_eq!(r.ask(&["MSET", &k[1], "ro", &k[2], "ro"]), noperm("mset"));
        assert_eq!(r.ask(&["INCR", &k[3]]), noperm("incr"));
        assert_eq!(r.ask(&["DEL", &k[1]]), noperm("del"));
        assert_eq!(r.ask(&["GETDEL", &k[1]]), noperm("getdel"));
        assert_eq!(r.ask(&["GET", &k[1]]), "$1\r\nw\r\n");
        assert_eq!(
            r.ask(&["MGET", &k[1], &k[3]]),
            "*2\r\n$1\r\nw\r\n$1\r\n2\r\n"
        );
        assert_eq!(r.ask(&["EXISTS", &k[1], &k[0]]), ":1\r\n");
    };
    let counted = counted_during(&c, leader, || ro(&at_via, &kv));
    assert_eq!(
        counted,
        vec![("mget", 2, 0), ("forward_wire", 1, 0), ("exists", 1, 0)],
        "only the read-only user's reads are forwarded, its GET on a stream of its own"
    );
    ro(&at_leader, &kl);

    // Not logged in: nothing is forwarded.
    let counted = counted_during(&c, leader, || {
        let mut r = Conn::open(&at_via);
        for cmd in [
            &["GET", &kv[1]][..],
            &["SET", &kv[1], "x"],
            &["MGET", &kv[1], &kv[3]],
            &["MSET", &kv[1], "x"],
            &["INCR", &kv[3]],
            &["DEL", &kv[1]],
        ] {
            assert_eq!(r.ask(cmd), NOAUTH, "{cmd:?}");
        }
        assert_eq!(r.ask(&["AUTH", "rw", "wrong"]), WRONGPASS);
        assert_eq!(r.ask(&["AUTH", "wrong"]), WRONGPASS);
        assert_eq!(r.ask(&["AUTH", "nobody", "rw-pw"]), WRONGPASS);
        assert_eq!(r.ask(&["HELLO", "3", "AUTH", "rw", "wrong"]), WRONGPASS);
        assert_eq!(r.ask(&["GET", &kv[1]]), NOAUTH);
        assert_eq!(r.ask(&["SET", &kv[1], "x"]), NOAUTH);
        // Logged in, then out.
        assert_eq!(r.ask(&["AUTH", "rw", "rw-pw"]), "+OK\r\n");
        assert_eq!(r.ask(&["RESET"]), "+RESET\r\n");
        assert_eq!(r.ask(&["GET", &kv[1]]), NOAUTH);
    });
    assert_eq!(counted, vec![], "nothing forwarded without a login");

    // HELLO 3 AUTH (the `default` user): RESP3 answers, its own lanes.
    let hello = |addr: &str, k: &[String]| {
        let mut r = Conn::open(addr);
        let h = r.ask(&["HELLO", "3", "AUTH", "default", "def-pw"]);
        assert!(
            h.starts_with("%7\r\n$6\r\nserver\r\n$7\r\ncaskade\r\n"),
            "{h}"
        );
        assert_eq!(r.ask(&["SET", &k[2], "h3"]), "+OK\r\n");
        assert_eq!(r.ask(&["GET", &k[2]]), "$2\r\nh3\r\n");
        assert_eq!(r.ask(&["MGET", &k[2], &k[0]]), "*2\r\n$2\r\nh3\r\n_\r\n");
        assert_eq!(r.ask(&["GET", &k[0]]), "_\r\n");
    };
    let counted = counted_during(&c, leader, || hello(&at_via, &kv));
    assert_eq!(
        counted,
        vec![("mget", 3, 0), ("mset", 1, 0), ("forward_wire", 2, 0)],
        "default's GET and SET lanes: a stream each"
    );
    hello(&at_leader, &kl);

    // The leader holds what went through the other node.
    let mut l = Conn::login(&at_leader, "ro", "ro-pw");
    assert_eq!(
        l.ask(&["MGET", &kv[0], &kv[1], &kv[2], &kv[3]]),
        "*4\r\n$-1\r\n$1\r\nw\r\n$2\r\nh3\r\n$1\r\n2\r\n"
    );

    // The harness's gRPC client logs in (as `admin`); one without
    // credentials is refused.
    let rt = harness::runtime();
    let got = rt.block_on(c.client_of(via, &rt).get(harness::b(&kv[1])));
    assert_eq!(got.unwrap(), Some(harness::b("w")));
    let anon = {
        let _in = rt.enter();
        caskade::client::Client::new(&caskade::config::ClientConfig {
            addrs: vec![c.specs[via].addr.clone()],
            ..Default::default()
        })
        .unwrap()
    };
    let refused = rt.block_on(anon.get(harness::b(&kv[1]))).unwrap_err();
    assert!(
        matches!(refused, caskade::Error::Unauthenticated(_)),
        "{refused:?}"
    );
}

/// Commands of two users waiting at once for one leader never share a
/// lane: with each pump held 1 s before it takes a batch (failpoint
/// `server::coalesce_pause`), 4 `GET`s of `rw` and 4 of `ro`, sent at once
/// on 8 connections through a non-leader, reach the leader as exactly 2
/// `MGet` messages on 2 streams (one lane each), and 4 `SET`s of `rw` and
/// 4 of `default` as 2 `MSet` messages on 2 more streams; every answer is
/// exact. With lanes keyed by the leader alone it would be 1 and 1.
#[test]
fn commands_of_two_users_at_once_take_a_lane_and_a_stream_each() {
    let c = auth_cluster(Some("server::coalesce_pause=return(1000)"));
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    let addr = c.resp_addr(via);
    let keys: Vec<String> = (0..8).map(|i| c.key_in(0, i)).collect();
    // (user, password, key index) of each connection.
    let round = |users: [(&str, &str); 2], cmd: &(dyn Fn(&mut Conn, &str, usize) + Sync)| {
        let start = std::sync::Barrier::new(keys.len());
        std::thread::scope(|s| {
            for (i, k) in keys.iter().enumerate() {
                let (user, pw) = users[i % 2];
                let (start, addr) = (&start, &addr);
                s.spawn(move || {
                    let mut r = Conn::login(addr, user, pw);
                    start.wait();
                    cmd(&mut r, k, i);
                });
            }
        });
    };
    let counted = counted_during(&c, leader, || {
        round([("rw", "rw-pw"), ("default", "def-pw")], &|r, k, i| {
            assert_eq!(r.ask(&["SET", k, &format!("v{i}")]), "+OK\r\n")
        });
    });
    assert_eq!(
        counted,
        vec![("mset", 2, 0), ("forward_wire", 2, 0)],
        "SETs"
    );
    let counted = counted_during(&c, leader, || {
        round([("rw", "rw-pw"), ("ro", "ro-pw")], &|r, k, i| {
            assert_eq!(r.ask(&["GET", k]), format!("$2\r\nv{i}\r\n"))
        });
    });
    assert_eq!(
        counted,
        vec![("mget", 2, 0), ("forward_wire", 2, 0)],
        "GETs"
    );
}

/// Restarts node `i` with its config file passed through `edit`, and
/// waits until every partition is led with a full ISR again.
fn restart_with(c: &mut TestCluster, i: usize, edit: impl Fn(String) -> String) {
    let file = c.specs[i].config.clone();
    let yaml = std::fs::read_to_string(&file).unwrap();
    let edited = edit(yaml.clone());
    assert_ne!(edited, yaml, "the edit changed nothing");
    std::fs::write(&file, edited).unwrap();
    c.stop_node(i);
    c.start_node(i);
    c.wait_until("every ISR is full again", |c| c.all_led() && c.full_isr());
}

/// When the nodes disagree on `auth:`, the leader's word holds and a
/// refusal does not cost the lane its stream. With the forwarding node's
/// config letting `ro` write (the leader's does not): `ro`'s `SET`s through
/// it get the leader's refusal of the forwarded `MSet`, nothing is
/// written, and the second goes on the stream the first opened (one
/// `cmd_forward`); meanwhile `rw`'s `SET` is written through a stream of
/// its own. With no users at all on the forwarding node (so no credentials
/// to forward), a `SET` and a `GET` through it get the leader's
/// `UNAUTHENTICATED` answer, as `NOAUTH` with what to fix (not the leader's
/// gRPC advice), never a silent success, and the leader serves nothing:
/// it refuses each lane's first command at the forward wire's greeting,
/// and the later ones' stream opens (one HTTP/2 connection, not a TCP
/// connection per command), and counts each.
#[test]
fn a_leader_refusing_forwarded_commands_answers_them_and_keeps_the_lane() {
    let mut c = auth_cluster(None);
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    let (k0, k1) = (c.key_in(0, 0), c.key_in(0, 1));
    restart_with(&mut c, via, |y| {
        y.replace("permissions: [read]}", "permissions: [read, write]}")
    });
    assert_eq!(c.leader(0), Some(leader), "partition 0 kept its leader");
    let addr = c.resp_addr(via);
    let denied = "-NOPERM user 'ro' has no 'write' permission, which MSet needs\r\n";
    let counted = counted_during(&c, leader, || {
        let mut r = Conn::login(&addr, "ro", "ro-pw");
        assert_eq!(r.ask(&["SET", &k0, "ro"]), denied);
        let mut w = Conn::login(&addr, "rw", "rw-pw");
        assert_eq!(w.ask(&["SET", &k1, "rw"]), "+OK\r\n");
        assert_eq!(r.ask(&["SET", &k0, "ro"]), denied);
        assert_eq!(r.ask(&["GET", &k0]), "$-1\r\n");
        assert_eq!(r.ask(&["GET", &k1]), "$2\r\nrw\r\n");
    });
    assert_eq!(
        counted,
        vec![("mget", 2, 0), ("mset", 3, 2), ("forward_wire", 3, 0)],
        "ro's SET lane: one stream for both refusals (counted as refused MSets); rw's SET lane \
         and ro's GET lane: one each"
    );

    // No users on the forwarding node: nothing to forward as credentials.
    restart_with(&mut c, via, |y| y[..y.find("auth:").unwrap()].to_string());
    assert_eq!(c.leader(0), Some(leader), "partition 0 kept its leader");
    let addr = c.resp_addr(via);
    let missing = "-NOAUTH the partition's leader requires authentication and this node, which \
                   has no auth: users, has no credentials to forward: give every node the same \
                   auth: section\r\n";
    let counted = counted_during(&c, leader, || {
        let mut r = Conn::open(&addr);
        for _ in 0..2 {
            assert_eq!(r.ask(&["SET", &k0, "anon"]), missing);
            assert_eq!(r.ask(&["GET", &k1]), missing);
        }
    });
    assert_eq!(
        counted,
        vec![("forward", 2, 2), ("forward_wire", 2, 2)],
        "the leader served nothing: it refused one wire greeting per lane (SET, GET), then the \
         lane's stream opens, without credentials; no TCP connection per command"
    );
    let mut l = Conn::login(&c.resp_addr(leader), "ro", "ro-pw");
    assert_eq!(l.ask(&["MGET", &k0, &k1]), "*2\r\n$-1\r\n$2\r\nrw\r\n");
}

/// A user whose password the forwarding node accepts and the leader does
/// not (the nodes disagree on `auth:`, e.g. half-way through changing a
/// password): a batch of its `GET`s through that node is refused with the
/// leader's `invalid username-password pair` (as `WRONGPASS`), and costs one failed login
/// at the leader (the refused stream open), not one more for the unary
/// `MGet` and one per key for the `Get`s a failed `MGet` falls back to:
/// none of those could pass with the same credentials. The forwarding
/// node's address is therefore not locked out at the leader for every
/// other user (here `auth.max_failed_logins: 3`): `rw`'s reads through it
/// still work after two such batches.
#[test]
fn a_user_the_leader_does_not_know_costs_one_failed_login_per_batch() {
    let users: Vec<(&str, &str, &[&str])> = USERS
        .iter()
        .copied()
        .chain([("rot", "old-pw", &["read", "write"][..])])
        .collect();
    let mut c = auth_cluster_with(&users, "  max_failed_logins: 3\n", None);
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    let keys: Vec<String> = (0..4).map(|i| c.key_in(0, i)).collect();
    let new_hash = caskade::auth::hash_password(b"new-pw").unwrap();
    restart_with(&mut c, via, |y| {
        y.lines()
            .map(|l| match l.trim_start().starts_with("- {name: rot,") {
                true => format!(
                    "    - {{name: rot, password_hash: '{new_hash}', permissions: [read, write]}}"
                ),
                false => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    assert_eq!(c.leader(0), Some(leader), "partition 0 kept its leader");
    let addr = c.resp_addr(via);
    let failed = |c: &TestCluster| c.log(leader).matches("failed login").count();
    assert_eq!(failed(&c), 0);
    let mut r = Conn::login(&addr, "rot", "new-pw");
    let wrong = "-WRONGPASS the partition's leader refused this user's credentials, which this \
                 node accepted: give every node the same auth: section\r\n";
    for batch in 1..=2 {
        // One write: the four GETs are one batch, one lane.
        let mut pipeline = Vec::new();
        for k in &keys {
            pipeline.extend_from_slice(
                format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes(),
            );
        }
        r.0.write_all(&pipeline).unwrap();
        let mut got = Vec::new();
        for _ in &keys {
            r.reply(&mut got);
        }
        assert_eq!(
            String::from_utf8(got).unwrap(),
            wrong.repeat(keys.len()),
            "batch {batch}"
        );
        assert_eq!(
            failed(&c),
            batch,
            "failed logins at the leader after batch {batch}"
        );
    }
    let mut w = Conn::login(&addr, "rw", "rw-pw");
    assert_eq!(w.ask(&["SET", &keys[0], "ok"]), "+OK\r\n");
    assert_eq!(w.ask(&["GET", &keys[0]]), "$2\r\nok\r\n");
}

/// A user the forwarding node lets read and the leader does not (the nodes
/// disagree on `auth:`): its `GET`s through that node get the leader's
/// refusal of the batched `MGet`, as `NOPERM`, and the leader counts just
/// that refused `MGet` per batch, not a refused `Get` per key on top: a
/// `Get` needs the read permission `MGet` needs, so retrying key by key
/// could only be refused again.
#[test]
fn a_read_the_leader_refuses_is_not_retried_key_by_key() {
    let users: Vec<(&str, &str, &[&str])> = USERS
        .iter()
        .copied()
        .chain([("wo", "wo-pw", &["write"][..])])
        .collect();
    let mut c = auth_cluster_with(&users, "", None);
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    let k0 = c.key_in(0, 0);
    restart_with(&mut c, via, |y| {
        y.replace("permissions: [write]}", "permissions: [read, write]}")
    });
    assert_eq!(c.leader(0), Some(leader), "partition 0 kept its leader");
    let addr = c.resp_addr(via);
    let denied = "-NOPERM user 'wo' has no 'read' permission, which MGet needs\r\n";
    let counted = counted_during(&c, leader, || {
        let mut r = Conn::login(&addr, "wo", "wo-pw");
        assert_eq!(r.ask(&["GET", &k0]), denied);
        assert_eq!(r.ask(&["GET", &k0]), denied);
    });
    assert_eq!(
        counted,
        vec![("mget", 2, 2), ("forward_wire", 1, 0)],
        "one stream, one refused MGet per GET, no Get retried"
    );
}
