//! The CLI against servers with TLS and users (docs/SECURITY.md), on real
//! processes:
//!
//! - `bench` and `probe` connect with the CLI's TLS settings (`--tls-ca`,
//!   `tls:` of the config file) and credentials (CASKADE_PASSWORD, the
//!   config file) like every other command, and without credentials fail
//!   with the server's one line at once;
//! - a plaintext client dialing a TLS port, and a TLS client dialing a
//!   plaintext port, are told so;
//! - the REPL asks for a login on a pseudo-terminal (util-linux `script`)
//!   without echoing the password.

use crate::harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use caskade::client::Client;
use caskade::config::{ClientConfig, ClientTlsOptions};
use caskade::tls::certs::{Plan, generate};
use harness::{Server, ServerOpts, WAIT, cli_bin, runtime};

/// Password of the user `default` (read, write).
const DEFAULT_PW: &str = "def-pw";
/// Password of the user `ro` (read).
const RO_PW: &str = "ro-pw";

/// What the server says to a call without credentials.
const MISSING: &str = "authentication required: send the metadata `authorization: Basic <base64 of user:password>` (caskade-cli: `auth.user`/`auth.password` in its config, or CASKADE_USER/CASKADE_PASSWORD)";

/// The reason a plaintext client is given by a TLS server's address.
const SPEAKS_TLS: &str = "the server speaks TLS and this client does not: set tls.ca (or --tls-ca, or CASKADE_CLI_TLS_CA) to the CA certificate that signed the server's certificate";

/// The reason a TLS client is given by a plaintext server's address.
const NOT_TLS: &str = "the server does not speak TLS (it answered the TLS handshake with something else, e.g. a plaintext caskade port): unset tls.ca (and --tls-ca, CASKADE_CLI_TLS_CA) for a plaintext server, or check the port";

/// The `auth:` section with `default` and `ro` (hashed once per run).
fn auth_yaml() -> &'static str {
    static YAML: OnceLock<String> = OnceLock::new();
    YAML.get_or_init(|| {
        let h = |pw: &str| caskade::auth::hash_password(pw.as_bytes()).unwrap();
        format!(
            "auth:\n  users:\n\
             \x20   - {{name: default, password_hash: '{}', permissions: [read, write]}}\n\
             \x20   - {{name: ro, password_hash: '{}', permissions: [read]}}\n",
            h(DEFAULT_PW),
            h(RO_PW)
        )
    })
}

/// A standalone server in `dir`: TLS (certificates in `dir/certs`) when
/// `tls`, users when `auth`.
fn start(dir: &Path, tls: bool, auth: bool) -> Server {
    let certs = dir.join("certs");
    let mut yaml = String::from("engine: memory\nnode_id: node-1\n");
    if tls {
        generate(
            &certs,
            &Plan {
                ca_name: "cli test CA".into(),
                nodes: vec!["node-1".into()],
                clients: vec!["client".into()],
                hosts: vec![],
            },
        )
        .unwrap();
        let c = |f: &str| certs.join(f).display().to_string();
        yaml.push_str(&format!(
            "tls: {{cert: '{}', key: '{}', ca: '{}'}}\n",
            c("node-1.pem"),
            c("node-1.key"),
            c("ca.pem")
        ));
    }
    if auth {
        yaml.push_str(auth_yaml());
    }
    let file = dir.join("server.yaml");
    std::fs::write(&file, yaml).unwrap();
    Server::start(
        &dir.join("data"),
        ServerOpts::default()
            .arg("--config")
            .arg(file.to_str().unwrap()),
    )
}

/// Runs the CLI with `args` and `env` (no CASKADE_* credentials otherwise,
/// stdin not a terminal); `(exit code, stdout, stderr)`.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    harness::run_cli_hiding(args, env, "-pw")
}

/// A Rust client of `addr` with the test CA and `password` for `default`.
fn client(addr: &str, ca: &Path, password: &str) -> Client {
    let mut config = ClientConfig {
        addrs: vec![addr.to_string()],
        tls: ClientTlsOptions {
            ca: ca.to_path_buf(),
            ..ClientTlsOptions::default()
        },
        ..ClientConfig::default()
    };
    config.auth.password = password.into();
    Client::new(&config).unwrap()
}

#[test]
fn bench_and_probe_use_tls_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true, true);
    let addr = server.addr.as_str();
    let ca = dir.path().join("certs/ca.pem");
    let ca_s = ca.to_str().unwrap();
    let pw = [("CASKADE_PASSWORD", DEFAULT_PW)];
    let json = |out: &str| -> serde_json::Value { serde_json::from_str(out.trim()).unwrap() };

    // bench with --tls-ca and the password from the environment: every
    // request answered. A keyspace of 10^12 makes the 300 keys distinct.
    let base = ["--addr", addr, "--tls-ca", ca_s, "bench", "--json"];
    let (code, out, err) = run(
        &[
            &base[..],
            &["-n", "300", "--clients", "4", "--keyspace", "1000000000000"],
        ]
        .concat(),
        &pw,
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    let r = json(&out);
    assert_eq!(
        (&r["op"], &r["requests"], &r["errors"], &r["connections"]),
        (
            &serde_json::json!("set"),
            &serde_json::json!(300),
            &serde_json::json!(0),
            &serde_json::json!(4)
        )
    );
    let rt = runtime();
    let _in_runtime = rt.enter();
    let c = client(addr, &ca, DEFAULT_PW);
    assert_eq!(rt.block_on(c.dbsize()).unwrap(), 300);
    let (code, out, err) = run(
        &[&base[..], &["-n", "200", "--clients", "1", "--op", "get"]].concat(),
        &pw,
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    let r = json(&out);
    assert_eq!(
        (&r["op"], &r["requests"], &r["errors"]),
        (
            &serde_json::json!("get"),
            &serde_json::json!(200),
            &serde_json::json!(0)
        )
    );

    // Without credentials, or with a wrong password: the server's one
    // line, nothing on stdout.
    assert_eq!(
        run(&base, &[]),
        (Some(1), String::new(), format!("(error) {MISSING}\n"))
    );
    assert_eq!(
        run(&base, &[("CASKADE_PASSWORD", "wrong-pw")]),
        (
            Some(1),
            String::new(),
            "(error) invalid username-password pair\n".into()
        )
    );
    // Plaintext to the TLS port: told so.
    assert_eq!(
        run(&["--addr", addr, "bench", "--json"], &pw),
        (
            Some(1),
            String::new(),
            format!("(error) could not connect to caskade at {addr}: {SPEAKS_TLS}\n")
        )
    );

    // probe with TLS and credentials from the config file, both routes:
    // 10 warm-up writes, then the measured one (`probe-11`).
    let conf = dir.path().join("cli.yaml");
    std::fs::write(
        &conf,
        format!("tls: {{ca: '{ca_s}'}}\nauth: {{user: default, password: {DEFAULT_PW}}}\n"),
    )
    .unwrap();
    let conf_s = conf.to_str().unwrap();
    for (via, key) in [("forward", "pf"), ("client", "pc")] {
        let (code, out, err) = run(
            &[
                "-c", conf_s, "--addr", addr, "probe", "--key", key, "--via", via, "--json",
            ],
            &[],
        );
        assert_eq!((code, err.as_str()), (Some(0), ""), "{via}: {out}");
        let r = json(&out);
        assert_eq!(
            (&r["failed_writes"], &r["via"]),
            (&serde_json::json!(0), &serde_json::json!(via))
        );
        assert_eq!(
            rt.block_on(c.get(key.as_bytes().to_vec())).unwrap(),
            Some(bytes::Bytes::from_static(b"probe-11")),
            "{via}"
        );
    }
    // Without credentials: the server's line at once, not after the
    // 30 s warm-up deadline; a read-only user likewise.
    for (env, line) in [
        (vec![], MISSING.to_string()),
        (
            vec![("CASKADE_USER", "ro"), ("CASKADE_PASSWORD", RO_PW)],
            "user 'ro' has no 'write' permission, which Set needs".to_string(),
        ),
    ] {
        for via in ["forward", "client"] {
            let t = Instant::now();
            assert_eq!(
                run(
                    &[
                        "--addr", addr, "--tls-ca", ca_s, "probe", "--key", "k", "--via", via
                    ],
                    &env
                ),
                (Some(1), String::new(), format!("(error) {line}\n")),
                "{via}"
            );
            assert!(t.elapsed() < Duration::from_secs(10), "{via}: too slow");
        }
    }
}

#[test]
fn a_client_of_the_wrong_transport_is_told_so() {
    let tls_dir = tempfile::tempdir().unwrap();
    let tls = start(tls_dir.path(), true, false);
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = start(plain_dir.path(), false, false);
    let ca = tls_dir.path().join("certs/ca.pem");
    let ca_s = ca.to_str().unwrap();

    // Plaintext client, TLS port (it used to read "the connection closed
    // before the request was sent"); twice, the second on a new connection.
    for _ in 0..2 {
        assert_eq!(
            run(&["--addr", &tls.addr, "get", "k"], &[]),
            (
                Some(1),
                String::new(),
                format!(
                    "could not connect to caskade at {}: {SPEAKS_TLS}\n",
                    tls.addr
                )
            )
        );
    }
    // The library says the same, as "nothing sent".
    let rt = runtime();
    let _in_runtime = rt.enter();
    let err = rt
        .block_on(
            Client::for_addr(tls.addr.clone())
                .unwrap()
                .get(b"k".to_vec()),
        )
        .unwrap_err();
    assert_eq!(
        err,
        caskade::Error::Unreachable {
            addr: tls.addr.clone(),
            reason: SPEAKS_TLS.into()
        }
    );
    assert!(err.nothing_applied());
    // The same client settings work with --tls-ca.
    assert_eq!(
        run(
            &["--addr", &tls.addr, "--tls-ca", ca_s, "set", "k", "v"],
            &[]
        ),
        (Some(0), "OK\n".into(), String::new())
    );

    // TLS client, plaintext port (it used to read "invalid data").
    assert_eq!(
        run(&["--addr", &plain.addr, "--tls-ca", ca_s, "get", "k"], &[]),
        (
            Some(1),
            String::new(),
            format!(
                "could not connect to caskade at {}: {NOT_TLS}\n",
                plain.addr
            )
        )
    );
    // A plaintext client of the plaintext port is served.
    assert_eq!(
        run(&["--addr", &plain.addr, "set", "k", "v"], &[]),
        (Some(0), "OK\n".into(), String::new())
    );
}

/// Kills the `script` process (and with it the CLI) on drop.
struct Guard(
    /// The `script` process.
    std::process::Child,
);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The REPL in a pseudo-terminal (`script`), its output collected.
struct Pty {
    /// The `script` process.
    guard: Guard,
    /// Its stdin (the terminal's input).
    stdin: std::process::ChildStdin,
    /// Everything the terminal showed so far.
    output: Arc<Mutex<String>>,
}

impl Pty {
    /// Starts `caskade-cli ARGS` (no credentials in the environment).
    fn start(args: &[&str]) -> Pty {
        let cli = std::iter::once(cli_bin().display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = Command::new("script")
            .args(["-qfec", &cli, "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("CASKADE_USER")
            .env_remove("CASKADE_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let output = crate::collect_output(stdout);
        Pty {
            guard: Guard(child),
            stdin,
            output,
        }
    }

    /// Waits until the output after `from` contains `needle`; returns
    /// where it ends.
    fn wait_for(&self, from: usize, needle: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let out = self.output.lock().unwrap();
                if let Some(i) = out[from..].find(needle) {
                    return from + i + needle.len();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not seen; output: {:?}",
                self.output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Types `bytes`.
    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The terminal device of the CLI (the child of `script`).
    fn tty(&self) -> PathBuf {
        let pid = self.guard.0.id();
        let deadline = Instant::now() + WAIT;
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
            if let Some(cli) = children.split_whitespace().next()
                && let Ok(tty) = std::fs::read_link(format!("/proc/{cli}/fd/0"))
            {
                return tty;
            }
            assert!(Instant::now() < deadline, "no CLI under script");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the terminal no longer echoes (the password prompt has
    /// turned echo off), so nothing typed is shown by the terminal itself.
    fn wait_echo_off(&self) {
        let tty = self.tty();
        let deadline = Instant::now() + WAIT;
        loop {
            let out = Command::new("stty")
                .arg("-F")
                .arg(&tty)
                .arg("-a")
                .output()
                .unwrap();
            let modes = String::from_utf8_lossy(&out.stdout);
            if modes.split_whitespace().any(|m| m == "-echo") {
                return;
            }
            assert!(Instant::now() < deadline, "echo stays on: {modes}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends Ctrl-D and waits for a successful exit.
    fn finish(mut self) {
        self.send(b"\x04");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.guard.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "REPL did not exit on Ctrl-D");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn repl_asks_for_a_login_without_echoing_the_password() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("util-linux `script` is not installed; skipping the pty test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true, true);
    let ca = dir.path().join("certs/ca.pem");
    let history = dir.path().join("history");
    let args = [
        "--addr",
        &server.addr,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--history-file",
        history.to_str().unwrap(),
    ];
    let prompt = format!("{}> ", server.addr);
    let login = "The server needs a login. User [default]: ";

    // The first command asks for a login; the right one runs it.
    let mut pty = Pty::start(&args);
    let mut at = pty.wait_for(0, &prompt);
    pty.send(b"set greeting hello\r");
    at = pty.wait_for(at, login);
    pty.send(b"\r");
    at = pty.wait_for(at, "Password: ");
    pty.wait_echo_off();
    let typed = at;
    pty.send(format!("{DEFAULT_PW}\r").as_bytes());
    at = pty.wait_for(at, "OK");
    at = pty.wait_for(at, &prompt);
    // Later commands are logged in: no second prompt.
    pty.send(b"get greeting\r");
    at = pty.wait_for(at, "\"hello\"");
    pty.wait_for(at, &prompt);
    let shown = pty.output.lock().unwrap().clone();
    assert!(
        !shown.contains(DEFAULT_PW),
        "password echoed: {:?}",
        &shown[typed..]
    );
    assert_eq!(shown.matches("Password: ").count(), 1, "{shown:?}");
    pty.finish();

    // A wrong password: one clear error, and the REPL goes on.
    let mut pty = Pty::start(&args);
    let mut at = pty.wait_for(0, &prompt);
    pty.send(b"get greeting\r");
    at = pty.wait_for(at, login);
    pty.send(b"ro\r");
    at = pty.wait_for(at, "Password: ");
    pty.wait_echo_off();
    pty.send(b"not-the-pw\r");
    at = pty.wait_for(at, "(error) invalid username-password pair\r\n");
    pty.wait_for(at, &prompt);
    let shown = pty.output.lock().unwrap().clone();
    assert!(!shown.contains("not-the-pw"), "password echoed: {shown:?}");
    assert_eq!(shown.matches("(error)").count(), 1, "{shown:?}");
    pty.finish();
}
