//! Client authentication with real processes (issue 13): a `caskade-server`
//! whose config has users with argon2 hashes made by the real
//! `caskade-cli hash-password`, reached over gRPC (exact status codes and
//! messages), over RESP (byte-exact, compared with a real `redis-server
//! --requirepass` with an ACL user when one is installed) and by the CLI;
//! and protected mode (exit code and the one line).

use crate::harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use caskade::proto;
use caskade::proto::kv_client::KvClient;
use harness::{Server, ServerOpts, bounded, cli_bin, free_port, free_ports, runtime};
use tonic::Code;

/// Passwords of the test users.
const DEFAULT_PW: &str = "def-pw";
const RO_PW: &str = "ro-pw";
const RW_PW: &str = "rw-pw";
const ADMIN_PW: &str = "admin-pw";

/// What the server says without credentials.
const MISSING: &str = "authentication required: send the metadata `authorization: Basic <base64 of user:password>` (caskade-cli: `auth.user`/`auth.password` in its config, or CASKADE_USER/CASKADE_PASSWORD)";

/// Runs the real `caskade-cli hash-password` with `password` on stdin.
fn hash(password: &str) -> String {
    let mut child = Command::new(cli_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains(password));
    assert!(
        printed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{printed}"
    );
    assert_eq!(printed.lines().count(), 1);
    printed.trim().to_string()
}

/// The `auth:` section with the four test users (hashed once per run).
fn auth_yaml() -> &'static str {
    static YAML: OnceLock<String> = OnceLock::new();
    YAML.get_or_init(|| {
        format!(
            "auth:\n  users:\n\
             \x20   - {{name: default, password_hash: '{}', permissions: [read, write]}}\n\
             \x20   - {{name: ro, password_hash: '{}', permissions: [read]}}\n\
             \x20   - {{name: rw, password_hash: '{}', permissions: [read, write]}}\n\
             \x20   - {{name: admin, password_hash: '{}', permissions: [read, write, admin]}}\n",
            hash(DEFAULT_PW),
            hash(RO_PW),
            hash(RW_PW),
            hash(ADMIN_PW)
        )
    })
}

/// A server with `yaml` as its config file.
fn start(dir: &Path, yaml: &str, opts: ServerOpts) -> Result<Server, harness::StartFailure> {
    let file = dir.join("server.yaml");
    std::fs::write(&file, format!("engine: memory\n{yaml}")).unwrap();
    Server::try_start(
        &dir.join("data"),
        opts.arg("--config").arg(file.to_str().unwrap()),
    )
}

/// A gRPC stub, with `authorization: Basic user:password` when given.
async fn stub(addr: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{addr}")).await.unwrap()
}

/// A request carrying `creds`.
fn req<T>(msg: T, creds: Option<(&str, &str)>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some((u, p)) = creds {
        let v = caskade::auth::basic(u, p.as_bytes());
        r.metadata_mut().insert("authorization", v.parse().unwrap());
    }
    r
}

fn set(key: &str) -> proto::SetRequest {
    proto::SetRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    }
}

fn get(key: &str) -> proto::GetRequest {
    proto::GetRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// `(code, message, caskade-reason)` of a refused call.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String, String) {
    let s = r.unwrap_err();
    let reason = s
        .metadata()
        .get("caskade-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (s.code(), s.message().to_string(), reason)
}

/// The first two fields (`calls=N,errors=E`) of the `Info` line of
/// `command` (`cmd_<command>`), read as admin; `None` if never called.
async fn calls_errors(
    kv: &mut KvClient<tonic::transport::Channel>,
    command: &str,
) -> Option<String> {
    let info = kv
        .info(req(proto::InfoRequest {}, Some(("admin", ADMIN_PW))))
        .await
        .unwrap()
        .into_inner();
    let key = format!("cmd_{command}");
    info.sections
        .iter()
        .flat_map(|s| &s.fields)
        .find(|f| f.key == key)
        .map(|f| f.value.splitn(3, ',').take(2).collect::<Vec<_>>().join(","))
}

#[test]
fn grpc_refuses_missing_and_wrong_credentials_and_missing_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), auth_yaml(), ServerOpts::default()).unwrap();
    runtime().block_on(bounded(async {
        let mut kv = stub(&server.addr).await;
        let unauth = |m: &str| {
            (
                Code::Unauthenticated,
                m.to_string(),
                "UNAUTHENTICATED".into(),
            )
        };
        assert_eq!(refusal(kv.get(req(get("k"), None)).await), unauth(MISSING));
        assert_eq!(
            refusal(kv.ping(req(proto::PingRequest {}, None)).await),
            unauth(MISSING)
        );
        let wrong = unauth("invalid username-password pair");
        assert_eq!(
            refusal(kv.get(req(get("k"), Some(("ro", "nope")))).await),
            wrong
        );
        assert_eq!(
            refusal(kv.get(req(get("k"), Some(("nobody", RO_PW)))).await),
            wrong
        );
        // A wrong password after the right one was cached is still wrong.
        kv.get(req(get("k"), Some(("ro", RO_PW)))).await.unwrap();
        assert_eq!(
            refusal(kv.get(req(get("k"), Some(("ro", "ro-pw2")))).await),
            wrong
        );
        let mut bearer = tonic::Request::new(get("k"));
        bearer
            .metadata_mut()
            .insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(
            refusal(kv.get(bearer).await),
            unauth("malformed credentials: the authorization scheme must be Basic")
        );

        // Read-only: reads yes, writes no.
        let denied = |u: &str, p: &str, m: &str| {
            (
                Code::PermissionDenied,
                format!("user '{u}' has no '{p}' permission, which {m} needs"),
                "PERMISSION_DENIED".to_string(),
            )
        };
        assert_eq!(
            refusal(kv.set(req(set("k"), Some(("ro", RO_PW)))).await),
            denied("ro", "write", "Set")
        );
        let r = kv.get(req(get("k"), Some(("ro", RO_PW)))).await.unwrap();
        assert_eq!(r.into_inner().value, None, "the refused Set wrote nothing");
        kv.set(req(set("k"), Some(("rw", RW_PW)))).await.unwrap();
        let r = kv.get(req(get("k"), Some(("ro", RO_PW)))).await.unwrap();
        assert_eq!(r.into_inner().value.as_deref(), Some(&b"v"[..]));

        // Admin methods need admin.
        let status = proto::ReassignStatusRequest::default();
        assert_eq!(
            refusal(kv.reassign_status(req(status, Some(("rw", RW_PW)))).await),
            denied("rw", "admin", "ReassignStatus")
        );
        let decom = proto::DecommissionRequest::default();
        assert_eq!(
            refusal(kv.decommission(req(decom, Some(("ro", RO_PW)))).await),
            denied("ro", "admin", "Decommission")
        );
        // Past the check, a standalone node answers as it always did.
        let status = proto::ReassignStatusRequest::default();
        let (code, msg, _) = refusal(
            kv.reassign_status(req(status, Some(("admin", ADMIN_PW))))
                .await,
        );
        assert_eq!(
            (code, msg.as_str()),
            (
                Code::FailedPrecondition,
                "reassignment needs a cluster: this node runs standalone (no `cluster:` section)"
            )
        );

        // Every refusal counts in its method's figures (8 Gets, 5 of
        // them refused; the Ping refused; one Set of two refused).
        assert_eq!(
            calls_errors(&mut kv, "get").await.as_deref(),
            Some("calls=8,errors=5")
        );
        assert_eq!(
            calls_errors(&mut kv, "ping").await.as_deref(),
            Some("calls=1,errors=1")
        );
        assert_eq!(
            calls_errors(&mut kv, "set").await.as_deref(),
            Some("calls=2,errors=1")
        );
    }));
    assert!(!server.log().contains(RO_PW), "a password reached the log");
}

#[test]
fn cli_takes_credentials_from_env_and_config_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), auth_yaml(), ServerOpts::default()).unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let args: Vec<&str> = ["--addr", server.addr.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        harness::run_cli_hiding(&args, env, "-pw")
    };
    assert_eq!(
        run(&[], &["get", "k"]),
        (Some(1), String::new(), format!("{MISSING}\n"))
    );
    assert_eq!(
        run(
            &[("CASKADE_USER", "ro"), ("CASKADE_PASSWORD", "bad-pw")],
            &["get", "k"]
        ),
        (
            Some(1),
            String::new(),
            "invalid username-password pair\n".into()
        )
    );
    assert_eq!(
        run(
            &[("CASKADE_USER", "ro"), ("CASKADE_PASSWORD", RO_PW)],
            &["set", "k", "1"]
        ),
        (
            Some(1),
            String::new(),
            "user 'ro' has no 'write' permission, which Set needs\n".into()
        )
    );
    // No user: `default`, as redis-cli -a.
    assert_eq!(
        run(&[("CASKADE_PASSWORD", DEFAULT_PW)], &["set", "k", "1"]),
        (Some(0), "OK\n".into(), String::new())
    );
    // From the config file; the environment wins over it.
    let conf = dir.path().join("cli.yaml");
    std::fs::write(&conf, format!("auth: {{user: ro, password: {RO_PW}}}\n")).unwrap();
    let c = conf.to_str().unwrap();
    assert_eq!(
        run(&[], &["-c", c, "get", "k"]),
        (Some(0), "1\n".into(), String::new())
    );
    assert_eq!(
        run(
            &[("CASKADE_USER", "rw"), ("CASKADE_PASSWORD", RW_PW)],
            &["-c", c, "set", "k", "2"]
        ),
        (Some(0), "OK\n".into(), String::new())
    );
}

/// The RESP array of `words`.
fn resp(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

/// Sends `commands` then QUIT on one connection to `addr` and returns
/// everything answered until the server closes it.
fn session(addr: &str, commands: &[&[&str]]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    for c in commands {
        all.extend(resp(c));
    }
    all.extend(resp(&["QUIT"]));
    s.write_all(&all).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    String::from_utf8(got).unwrap()
}

/// Sessions whose answers caskade gives byte for byte as Redis 7 does.
const SESSIONS: &[&[&[&str]]] = &[
    // Before AUTH: refused, but unknown commands and arities come first.
    &[
        &["PING"],
        &["GET", "a"],
        &["ECHO", "x"],
        &["SELECT", "0"],
        &["CLIENT", "ID"],
        &["AUTH"],
        &["AUTH", "a", "b", "c"],
        &["FOO"],
        &["AUTH", "wrong"],
        &["AUTH", "nobody", "def-pw"],
    ],
    // AUTH password = user `default`; a later wrong AUTH keeps the login.
    &[
        &["AUTH", "def-pw"],
        &["SET", "a", "1"],
        &["GET", "a"],
        &["AUTH", "wrong"],
        &["GET", "a"],
    ],
    // A read-only user.
    &[
        &["AUTH", "ro", "ro-pw"],
        &["SET", "b", "1"],
        &["GET", "b"],
        &["CONFIG", "GET", "maxclients"],
    ],
    // HELLO: its own checks first, then the credentials, then the login.
    &[
        &["HELLO", "3"],
        &["HELLO"],
        &["HELLO", "3", "AUTH", "default", "wrong"],
        &["HELLO", "4", "AUTH", "default", "def-pw"],
        &["HELLO", "x"],
        &["HELLO", "2", "AUTH", "default"],
        &["HELLO", "2", "SETNAME", "a b", "AUTH", "default", "def-pw"],
        &["HELLO", "2", "AUTH", "default", "wrong", "SETNAME", "nm"],
        &["GET", "a"],
    ],
    // RESET logs out.
    &[&["AUTH", "def-pw"], &["RESET"], &["GET", "a"]],
];

/// What caskade must answer to [`SESSIONS`], in Redis 7's words.
const EXPECTED: &[&str] = &[
    "-NOAUTH Authentication required.\r\n\
     -NOAUTH Authentication required.\r\n\
     -NOAUTH Authentication required.\r\n\
     -NOAUTH Authentication required.\r\n\
     -NOAUTH Authentication required.\r\n\
     -ERR wrong number of arguments for 'auth' command\r\n\
     -ERR syntax error\r\n\
     -ERR unknown command 'FOO', with args beginning with: \r\n\
     -WRONGPASS invalid username-password pair or user is disabled.\r\n\
     -WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n",
    "+OK\r\n+OK\r\n$1\r\n1\r\n\
     -WRONGPASS invalid username-password pair or user is disabled.\r\n$1\r\n1\r\n+OK\r\n",
    "+OK\r\n-NOPERM this user has no permissions to run the 'set' command\r\n$-1\r\n\
     -NOPERM this user has no permissions to run the 'config|get' command\r\n+OK\r\n",
    "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n\
     -NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n\
     -WRONGPASS invalid username-password pair or user is disabled.\r\n\
     -NOPROTO unsupported protocol version\r\n\
     -ERR Protocol version is not an integer or out of range\r\n\
     -ERR Syntax error in HELLO option 'AUTH'\r\n\
     -ERR Client names cannot contain spaces, newlines or special characters.\r\n\
     -WRONGPASS invalid username-password pair or user is disabled.\r\n\
     -NOAUTH Authentication required.\r\n+OK\r\n",
    "+OK\r\n+RESET\r\n-NOAUTH Authentication required.\r\n+OK\r\n",
];

/// A real redis-server with `--requirepass def-pw` and an ACL user `ro`
/// (`+@read`), killed on drop; `None` when redis-server is not installed.
struct Redis(std::process::Child, String);

impl Redis {
    fn start() -> Option<Redis> {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                DEFAULT_PW,
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis(child, format!("127.0.0.1:{port}"));
        for _ in 0..200 {
            if TcpStream::connect(&redis.1).is_ok() {
                let ok = session(
                    &redis.1,
                    &[
                        &["AUTH", DEFAULT_PW],
                        &["ACL", "SETUSER", "ro", "on", ">ro-pw", "~*", "+@read"],
                    ],
                );
                assert_eq!(ok, "+OK\r\n+OK\r\n+OK\r\n");
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not come up on {}", redis.1);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn resp_auth_answers_byte_for_byte_as_redis() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Redis has no failed-login limit; these sessions make more than the
    // default 10 failed logins from 127.0.0.1.
    let yaml = format!(
        "{}  max_failed_logins: 0\nresp: {{listen: '127.0.0.1:{port}'}}\n",
        auth_yaml()
    );
    let _server = start(dir.path(), &yaml, ServerOpts::default()).unwrap();
    let addr = format!("127.0.0.1:{port}");
    for (s, want) in SESSIONS.iter().zip(EXPECTED) {
        assert_eq!(session(&addr, s), *want, "session {s:?}");
    }
    // Against the real thing, when it is installed.
    if let Some(redis) = Redis::start() {
        for s in SESSIONS {
            assert_eq!(session(&addr, s), session(&redis.1, s), "session {s:?}");
        }
    } else {
        eprintln!("redis-server not installed: compared with the literal answers only");
    }
    // HELLO ... AUTH logs in and answers HELLO's map (RESP3 here).
    let got = session(
        &addr,
        &[&["HELLO", "3", "AUTH", "ro", RO_PW], &["GET", "b"]],
    );
    assert!(
        got.starts_with("%7\r\n$6\r\nserver\r\n$7\r\ncaskade\r\n"),
        "{got}"
    );
    assert!(got.ends_with("_\r\n+OK\r\n"), "{got}");
}

#[test]
fn resp_without_users_acts_as_redis_default_user() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!("resp: {{listen: '127.0.0.1:{port}'}}\n");
    let _server = start(dir.path(), &yaml, ServerOpts::default()).unwrap();
    let got = session(
        &format!("127.0.0.1:{port}"),
        &[
            &["AUTH", "x"],
            &["AUTH", "default", "x"],
            &["AUTH", "bob", "x"],
            &["GET", "a"],
        ],
    );
    assert_eq!(
        got,
        "-ERR AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?\r\n+OK\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n$-1\r\n+OK\r\n"
    );
}

/// The line protected mode prints for `what` bound on `addr`.
fn protected(what: &str, addr: &str) -> String {
    format!(
        "caskade-server: protected mode: the {what} listener binds {addr}, not a loopback \
         address, and no users are configured; add users under `auth.users` (password hashes \
         from `caskade-cli hash-password`) or set `auth.protected_mode: false` \
         (CASKADE_AUTH_PROTECTED_MODE=false) to serve without authentication"
    )
}

#[test]
fn protected_mode_refuses_non_loopback_without_users_unless_opted_out() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let any = format!("0.0.0.0:{}", ports[0]);
    let failure = start(dir.path(), "", ServerOpts::default().listen(&any))
        .err()
        .expect("protected mode let the server start");
    failure.assert_exits_with_line(&protected("client", &any));

    let resp_any = format!("0.0.0.0:{}", ports[1]);
    let yaml = format!("resp: {{listen: '{resp_any}'}}\n");
    let failure = start(dir.path(), &yaml, ServerOpts::default())
        .err()
        .expect("protected mode let the server start");
    failure.assert_exits_with_line(&protected("RESP", &resp_any));

    // Opted out, by the environment and by the file.
    let opts = ServerOpts::default()
        .listen(&any)
        .env("CASKADE_AUTH_PROTECTED_MODE", "false");
    let mut s = start(dir.path(), "", opts).unwrap();
    assert_eq!(s.addr, any);
    s.stop();
    let mut s = start(
        dir.path(),
        "auth: {protected_mode: false}\n",
        ServerOpts::default().listen(&any),
    )
    .unwrap();
    s.stop();
    // With users, binding everywhere is fine.
    let mut s = start(dir.path(), auth_yaml(), ServerOpts::default().listen(&any)).unwrap();
    s.stop();
}

/// RESP `AUTH user password` from `from` (an address of this machine) to
/// `addr`: the one-line answer.
fn auth_from(from: &str, addr: &str, user: &str, password: &str) -> String {
    let rt = runtime();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        sock.connect(addr.parse().unwrap()).await.unwrap()
    });
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&resp(&["AUTH", user, password])).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        s.read_exact(&mut b).unwrap();
        got.push(b[0]);
    }
    String::from_utf8(got).unwrap()
}

const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// With the defaults (10 failed logins per address per 60 s), the 11th
/// login from an address is refused without being checked, on RESP and on
/// gRPC (each listener counts its own), even with the right password;
/// another address logs in.
#[test]
fn failed_logins_lock_the_address_with_the_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!("{}resp: {{listen: '127.0.0.1:{port}'}}\n", auth_yaml());
    let server = start(dir.path(), &yaml, ServerOpts::default()).unwrap();
    let addr = format!("127.0.0.1:{port}");
    for i in 0..10 {
        // Unknown users and wrong passwords count alike.
        let user = if i % 2 == 0 { "rw" } else { "nobody" };
        assert_eq!(auth_from("127.0.0.1", &addr, user, "guess"), WRONGPASS);
    }
    assert_eq!(
        auth_from("127.0.0.1", &addr, "rw", RW_PW),
        "-ERR too many failed authentication attempts, retry in 60s\r\n"
    );
    assert_eq!(auth_from("127.0.0.2", &addr, "rw", RW_PW), "+OK\r\n");

    let rt = runtime();
    rt.block_on(async {
        let mut kv = stub(&server.addr).await;
        let wrong = || req(get("k"), Some(("rw", "guess")));
        for _ in 0..10 {
            assert_eq!(
                refusal(kv.get(wrong()).await),
                (
                    Code::Unauthenticated,
                    "invalid username-password pair".to_string(),
                    "UNAUTHENTICATED".to_string()
                )
            );
        }
        assert_eq!(
            refusal(kv.get(req(get("k"), Some(("rw", RW_PW)))).await),
            (
                Code::Unauthenticated,
                "too many failed authentication attempts, retry in 60s".to_string(),
                "UNAUTHENTICATED".to_string()
            )
        );
    });
}

/// `auth.max_failed_logins: 2`, `auth.failed_login_window_ms: 1500`: the
/// third login is refused, and the lock lapses after the window.
#[test]
fn a_failed_login_lock_lapses_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "{}  max_failed_logins: 2\n  failed_login_window_ms: 1500\n\
         resp: {{listen: '127.0.0.1:{port}'}}\n",
        auth_yaml()
    );
    let _server = start(dir.path(), &yaml, ServerOpts::default()).unwrap();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(auth_from("127.0.0.1", &addr, "ro", "guess"), WRONGPASS);
    assert_eq!(auth_from("127.0.0.1", &addr, "ro", "guess"), WRONGPASS);
    assert_eq!(
        auth_from("127.0.0.1", &addr, "ro", RO_PW),
        "-ERR too many failed authentication attempts, retry in 2s\r\n"
    );
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(auth_from("127.0.0.1", &addr, "ro", RO_PW), "+OK\r\n");
}

/// One message of a `Forward` stream: its id and what it asks.
fn forward_msg(id: u64, request: proto::forward_request::Request) -> proto::ForwardRequest {
    proto::ForwardRequest {
        id,
        request: Some(request),
    }
}

/// The node-to-node `Forward` stream (src/server/service/forward.rs)
/// checks every message as the unary call it carries: a read-only user
/// may open it and read, but its `MSet` is refused PERMISSION_DENIED with
/// the unary `MSet` refusal, and the stream stays open; once the peer's
/// address is locked by failed logins (`auth.max_failed_logins: 2`), the
/// next message of the stream opened before is refused as a unary call
/// would be, although its credentials were checked at open. Without
/// credentials the stream is not opened.
#[test]
fn a_forward_stream_checks_every_message_as_its_unary_call() {
    use proto::forward_request::Request as Ask;
    use proto::forward_response::Reply;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}  max_failed_logins: 2\n  failed_login_window_ms: 60000\n",
        auth_yaml()
    );
    let server = start(dir.path(), &yaml, ServerOpts::default()).unwrap();
    runtime().block_on(bounded(async {
        let mut kv = stub(&server.addr).await;
        kv.set(req(set("k"), Some(("rw", RW_PW)))).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let open = kv
            .forward(req(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                Some(("ro", RO_PW)),
            ))
            .await;
        let mut answers = open.unwrap().into_inner();
        let mut ask = async |id, request| {
            tx.send(forward_msg(id, request)).await.unwrap();
            let a = answers.message().await.unwrap().unwrap();
            assert_eq!(a.id, id);
            a.reply.unwrap()
        };
        let mget = || {
            Ask::MGet(proto::MGetRequest {
                keys: vec!["k".into(), "absent".into()],
                consistency: 0,
            })
        };
        let mset = || {
            Ask::MSet(proto::MSetRequest {
                pairs: vec![proto::KeyValue {
                    key: "k".into(),
                    value: "ro-wrote".into(),
                }],
                acks: 0,
            })
        };
        let values = |r: Reply| match r {
            Reply::MGet(r) => r.values.into_iter().map(|v| v.value).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let refused = |r: Reply| match r {
            Reply::Error(e) => (e.code, e.message, e.metadata["caskade-reason"].clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(values(ask(1, mget()).await), vec![Some("v".into()), None]);
        assert_eq!(
            refused(ask(2, mset()).await),
            (
                Code::PermissionDenied as i32,
                "user 'ro' has no 'write' permission, which MSet needs".to_string(),
                "PERMISSION_DENIED".to_string()
            )
        );
        // The same stream still serves reads; nothing was written.
        assert_eq!(values(ask(3, mget()).await), vec![Some("v".into()), None]);
        // The refused message counts as a refused MSet call would.
        assert_eq!(
            calls_errors(&mut kv, "mset").await.as_deref(),
            Some("calls=1,errors=1")
        );
        assert_eq!(
            calls_errors(&mut kv, "mget").await.as_deref(),
            Some("calls=2,errors=0")
        );
        // Two failed logins lock 127.0.0.1: the open stream's next message
        // is refused, as a new unary call is.
        for _ in 0..2 {
            let r = kv.get(req(get("k"), Some(("ro", "guess")))).await;
            assert_eq!(refusal(r).0, Code::Unauthenticated);
        }
        let locked = refused(ask(4, mget()).await);
        assert_eq!(
            (locked.0, locked.2.as_str()),
            (Code::Unauthenticated as i32, "UNAUTHENTICATED")
        );
        assert!(
            locked
                .1
                .starts_with("too many failed authentication attempts, retry in "),
            "{}",
            locked.1
        );
        // Without credentials: no stream.
        let (_tx2, rx2) = tokio::sync::mpsc::channel::<proto::ForwardRequest>(1);
        let none = kv
            .forward(req(tokio_stream::wrappers::ReceiverStream::new(rx2), None))
            .await;
        assert_eq!(refusal(none).0, Code::Unauthenticated);
    }));
}
