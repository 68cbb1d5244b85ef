//! Test harness for the end-to-end tests: starts the real `caskade-server`
//! binary on a free port and the real `caskade-cli` binary, and guarantees
//! that every process started is killed when the test ends, even when an
//! assertion fails (the [`Server`] and [`Repl`] Drop guards).
//!
//! Every wait is bounded: [`WAIT`] for a server to come up or go down, and
//! the CLI runs under a timeout as well.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod load;
pub mod resp;
pub mod zk;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `(calls, errors)` of `cmd_NAME` in a node's RESP `INFO stats` text,
/// `(0, 0)` when the command was never counted.
pub fn calls_errors(info: &str, name: &str) -> (u64, u64) {
    let Some(rest) = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmd_{name}:calls=")))
    else {
        return (0, 0);
    };
    let mut parts = rest.split(',');
    let calls = parts.next().unwrap().parse().unwrap();
    let errors = parts
        .next()
        .and_then(|e| e.strip_prefix("errors="))
        .unwrap()
        .parse()
        .unwrap();
    (calls, errors)
}

/// Longest time a server may take to start or stop.
pub const WAIT: Duration = Duration::from_secs(20);

/// The server binary, built by cargo for this test.
pub fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_caskade-server"))
}

/// The CLI binary: it belongs to another package of the workspace, so it is
/// found next to the server binary (same target dir and profile) and built
/// once with cargo if it is not there yet (`cargo test -p caskade` on a
/// fresh target dir). `cargo test --workspace` (what `make test` runs)
/// builds it before any test runs, with the tests' features, because the
/// CLI package has an integration test (cli/tests/binary.rs); without that
/// the fallback build ran in the middle of the test phase and rebuilt the
/// library with other features. With `-p caskade` alone an existing binary
/// is used as is, so rebuild it after changing `cli/`.
pub fn cli_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let server = server_bin();
            let dir = server.parent().expect("binary has a directory");
            let cli = dir.join("caskade-cli");
            if !cli.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "caskade-cli", "--bin", "caskade-cli"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"));
                // The profile the tests were built with (`ci` under
                // `make test`) is the directory's name; `debug` is the
                // default profile's.
                if let Some(profile) = dir.file_name().and_then(|n| n.to_str())
                    && profile != "debug"
                {
                    cmd.args(["--profile", profile]);
                }
                let status = cmd.status().expect("run cargo build for caskade-cli");
                assert!(status.success(), "cargo build -p caskade-cli failed");
            }
            assert!(cli.exists(), "{} not found", cli.display());
            cli
        })
        .clone()
}

/// Runs `caskade-cli` with `args` and `env`, without the CASKADE_USER and
/// CASKADE_PASSWORD of the test's own environment and with stdin not a
/// terminal; asserts that `secret` is printed on neither stream. Returns
/// (exit code, stdout, stderr).
pub fn run_cli_hiding(
    args: &[&str],
    env: &[(&str, &str)],
    secret: &str,
) -> (Option<i32>, String, String) {
    let out = Command::new(cli_bin())
        .args(args)
        .env_remove("CASKADE_USER")
        .env_remove("CASKADE_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !o.contains(secret) && !e.contains(secret),
        "password printed: {o} {e}"
    );
    (out.status.code(), o, e)
}

/// A port that was free a moment ago (bound, then released), chosen
/// below the kernel's ephemeral range (`ip_local_port_range`), so no
/// outgoing connection can take it before the server binds it. (A port
/// from `bind(0)` is an ephemeral one: under load an outgoing connection
/// of another test grabbed such a port between the probe and the bind.)
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` different ports, free a moment ago, below the ephemeral range (see
/// [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, count) = if low > 12_000 {
        (10_000u64, u64::from(low) - 10_000)
    } else {
        (u64::from(low), 1)
    };
    if count < 1_000 {
        // An unusual range: fall back to ephemeral ports.
        let held: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
            .collect();
        return held
            .iter()
            .map(|l| l.local_addr().expect("local address").port())
            .collect();
    }
    // Start somewhere that differs between test processes, then walk a
    // stride coprime with the range, holding each port found until all are.
    // One start per process: with a start per call, two tests' calls could
    // hand out the same port (free again once the first call returned,
    // until its server binds it), and a server then failed with "Address
    // already in use". One walk hands out each port once per process.
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..count {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (seed.wrapping_add(k.wrapping_mul(7919))) % count) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("no {n} free ports in 127.0.0.1:{first}..{}", first + count);
}

/// A running `caskade-server`, killed on drop.
pub struct Server {
    /// The process.
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its stderr (the log) goes; removed on drop unless the test failed.
    pub log: PathBuf,
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct ServerOpts {
    /// `--listen`; default `127.0.0.1:0`.
    pub listen: Option<String>,
    /// Extra environment (`CASKADE_*`).
    pub env: Vec<(String, String)>,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Group id to run the process as (root only): lets iptables' owner
    /// match tell nodes apart on one loopback (tests/torture partitions).
    pub gid: Option<u32>,
}

impl ServerOpts {
    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Listens on a given address.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Why a server did not start: its exit status and stderr.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl StartFailure {
    /// Asserts the server exited with status 1 and `line` as the last line
    /// of its stderr: one clear message, nothing after it.
    pub fn assert_exits_with_line(&self, line: &str) {
        assert_eq!(self.status.and_then(|s| s.code()), Some(1));
        assert_eq!(self.stderr.lines().last().unwrap(), line);
    }
}

/// Runs the CLI with `args`, feeding `script` on stdin; waits for it to exit.
pub fn cli_script<S: AsRef<std::ffi::OsStr>>(args: &[S], script: &[u8]) -> Output {
    let mut child = Command::new(cli_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start caskade-cli");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script)
        .expect("write the script");
    child.wait_with_output().expect("wait for caskade-cli")
}

impl Server {
    /// Starts a server on `data_dir`; panics if it does not come up.
    pub fn start(data_dir: &Path, opts: ServerOpts) -> Server {
        match Server::try_start(data_dir, opts) {
            Ok(s) => s,
            Err(f) => panic!("server did not start: {f:?}"),
        }
    }

    /// Starts a server and waits for its `listening on ADDR` line.
    pub fn try_start(data_dir: &Path, opts: ServerOpts) -> Result<Server, StartFailure> {
        let log = std::env::temp_dir().join(format!(
            "caskade-test-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let stderr = std::fs::File::create(&log).expect("create server log");
        let mut cmd = Command::new(server_bin());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--log-level")
            .arg("info")
            .args(&opts.args)
            .env_remove("RUST_LOG")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(gid) = opts.gid {
            use std::os::unix::process::CommandExt;
            cmd.gid(gid);
        }
        let mut child = cmd.spawn().expect("spawn caskade-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = read_lines(stdout);
        let deadline = Instant::now() + WAIT;
        let mut server = Server {
            child: Some(child),
            addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            log,
        };
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        server.addr = addr.trim().to_string();
                        return Ok(server);
                    }
                }
                Err(_) => {
                    let child = server.child.as_mut().expect("child present");
                    if let Ok(Some(status)) = child.try_wait() {
                        server.child = None;
                        return Err(StartFailure {
                            status: Some(status),
                            stderr: std::fs::read_to_string(&server.log).unwrap_or_default(),
                        });
                    }
                    if Instant::now() > deadline {
                        return Err(StartFailure {
                            status: None,
                            stderr: std::fs::read_to_string(&server.log).unwrap_or_default(),
                        });
                    }
                }
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` and waits (bounded) for the exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {WAIT:?} after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, bounded wait; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL: the process dies at once, no flush, no cleanup.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Keep the log of a failed test for diagnosis.
        if std::thread::panicking() {
            eprintln!("server log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Forwards a reader's lines to a channel from a thread.
fn read_lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A process-unique number.
fn unique() -> u64 {
    static N: Mutex<u64> = Mutex::new(0);
    let mut n = N.lock().unwrap_or_else(|e| e.into_inner());
    *n += 1;
    *n
}

/// Runs `caskade-cli ARGS` (bounded by [`WAIT`]) and returns its output.
pub fn cli(args: &[&str]) -> Output {
    let mut child = Command::new(cli_bin())
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn caskade-cli");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("collect cli output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("caskade-cli {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `caskade-cli --addr ADDR ARGS...`: (exit code, stdout, stderr).
pub fn cli_at(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    let out = cli(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An interactive `caskade-cli` REPL on pipes, killed on drop.
pub struct Repl {
    /// The process.
    child: Child,
    /// Its stdin.
    stdin: Option<ChildStdin>,
    /// Its stdout, line by line.
    lines: Receiver<String>,
}

impl Repl {
    /// Starts the REPL against `addr`, history disabled.
    pub fn start(addr: &str) -> Repl {
        let mut child = Command::new(cli_bin())
            .args(["--addr", addr, "--history-file", "", "--timeout-ms", "3000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn caskade-cli");
        let stdin = child.stdin.take();
        let lines = read_lines(child.stdout.take().expect("piped stdout"));
        Repl {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one line and returns the next `n` lines of output.
    pub fn send(&mut self, line: &str, n: usize) -> Vec<String> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the REPL");
        stdin.flush().expect("flush the REPL's stdin");
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("no reply to {line:?} within {WAIT:?}"))
            })
            .collect()
    }

    /// Closes stdin (Ctrl-D) and waits for the exit code.
    pub fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "REPL did not exit on end of input"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small multi-threaded runtime for a test's async client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Bytes of a string.
pub fn b(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

/// Bounds every await of a test by [`WAIT`].
pub async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("request did not finish in time")
}
