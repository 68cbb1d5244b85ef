//! Real ZooKeeper servers for the integration tests, started and stopped
//! through `scripts/zk.sh` (Debian's `zookeeper` package, loopback only).
//!
//! - [`Zk::standalone`]: one server; [`Zk::ensemble`]: three members.
//! - Every server runs in a temporary directory owned by the [`Zk`] value;
//!   Drop kills every member (SIGKILL) and then runs `scripts/zk.sh stop
//!   DIR`, which stops any server whose pid file is left under it, even
//!   when the test failed.
//! - [`Zk::shared`]: a chroot of its own (`/cluster-N`, created empty) on
//!   one server the whole test process shares, for clusters whose tests
//!   never kill, pause or restart ZooKeeper (those panic on a share). It
//!   saves a JVM start (~2 s) and kill per cluster. The server is started
//!   on first use (again if it died) and lives until the process ends:
//!   a watchdog process waits on a pipe only this process holds, and when
//!   the process ends, however it ends, kills the server and removes its
//!   directory. Every node and raw client of a share sees only its
//!   chroot, through the connect string (`127.0.0.1:PORT/cluster-N`).
//! - Every script run is bounded ([`SCRIPT_WAIT`]); ports come from
//!   [`super::free_port`]-style probing, and a start that loses a port race
//!   is retried on fresh ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest time one `scripts/zk.sh` run may take (it waits 30 s itself).
pub const SCRIPT_WAIT: Duration = Duration::from_secs(45);

/// Start attempts before giving up (ports can be taken between probing and
/// binding by another test).
const ATTEMPTS: usize = 3;

/// A running ZooKeeper (one server or a three-member ensemble), stopped on
/// drop; or a chroot on the process's shared server ([`Zk::shared`]).
pub struct Zk {
    /// Holds every member's config, data, pid file and log (the shared
    /// server's directory for a share).
    dir: PathBuf,
    /// Removes `dir` on drop; `None` for a share of the shared server.
    own: Option<tempfile::TempDir>,
    /// Client port of each member.
    client_ports: Vec<u16>,
    /// The chroot of a share (`/cluster-N`); empty for a server of its own.
    chroot: String,
}

/// The process's shared server ([`Zk::shared`]).
struct Shared {
    /// Its config, data, pid file and log (removed by the watchdog).
    dir: PathBuf,
    /// Its client port.
    port: u16,
    /// The watchdog, its stdin (a pipe only this process holds) kept open:
    /// closed when this process ends or the server is replaced, and the
    /// watchdog then kills the server and removes `dir`.
    watchdog: Child,
}

impl Drop for Shared {
    /// Only when the server is replaced (statics are never dropped): lets
    /// the watchdog clean up, and reaps it.
    fn drop(&mut self) {
        drop(self.watchdog.stdin.take());
        let _ = self.watchdog.wait();
    }
}

/// The shared server, once started.
static SHARED: Mutex<Option<Shared>> = Mutex::new(None);

/// Chroots handed out on the shared server.
static CHROOTS: AtomicU64 = AtomicU64::new(0);

/// The watchdog of the shared server (`$1` is its directory): waits for
/// the end of its stdin, then kills the server and removes the directory.
/// Ctrl-C and a closed terminal do not stop it before it has cleaned up.
const WATCHDOG: &str = r#"trap '' INT HUP
read -r _ || true
pid=$(cat "$1/zk.pid" 2>/dev/null) && kill -9 "$pid" 2>/dev/null
rm -rf "$1""#;

/// `scripts/zk.sh` of this repository.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zk.sh")
}

/// Runs `scripts/zk.sh ARGS` bounded by [`SCRIPT_WAIT`]; Ok with stdout,
/// Err with stdout and stderr.
fn run_script(args: &[&str]) -> Result<String, String> {
    let out_file = tempfile::NamedTempFile::new().expect("temp file for zk.sh output");
    let err_file = tempfile::NamedTempFile::new().expect("temp file for zk.sh errors");
    let mut child = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out_file.reopen().expect("reopen temp file"))
        .stderr(err_file.reopen().expect("reopen temp file"))
        .spawn()
        .expect("run scripts/zk.sh");
    let deadline = Instant::now() + SCRIPT_WAIT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(out_file.path()).unwrap_or_default();
    let err = std::fs::read_to_string(err_file.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("zk.sh {args:?} exited with {s}:\n{out}{err}")),
        None => Err(format!(
            "zk.sh {args:?} did not finish within {SCRIPT_WAIT:?}:\n{out}{err}"
        )),
    }
}

/// Whether process `pid` runs: it exists and is not a zombie. A server
/// started by `scripts/zk.sh` is an orphan (the script started it in the
/// background and exited), so once killed it stays a zombie until init
/// reaps it, 1-2 s later on the test machine; a zombie holds no port, no
/// file and no CPU, so it counts as gone. Without /proc, whether the pid
/// exists.
pub fn running(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name's `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        // Reaped since, or no /proc (then the pid exists, as kill said).
        Err(_) => !Path::new("/proc/self/stat").exists(),
    }
}

/// Panics with a clear message when the ZooKeeper package is missing.
fn check_installed() {
    assert!(
        Path::new("/usr/share/java/zookeeper.jar").exists(),
        "ZooKeeper is not installed: run scripts/ensure-deps.sh"
    );
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts one server in `dir` on a free port (retried on fresh ports);
/// returns its port once it answers `imok`.
fn start_in(dir: &Path) -> u16 {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let port = super::free_ports(1)[0];
        let d = dir.to_str().expect("utf-8 temp dir");
        match run_script(&["start", d, &port.to_string()]) {
            Ok(_) => return port,
            Err(e) => {
                last = e;
                let _ = run_script(&["stop", d]);
            }
        }
    }
    panic!("ZooKeeper did not start in {ATTEMPTS} attempts; last: {last}");
}

/// The pid in `dir/zk.pid`, if any.
fn pid_in(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("zk.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl Shared {
    /// Starts the shared server and its watchdog (first, so that a failed
    /// start is cleaned up too).
    fn start() -> Shared {
        let dir = tempfile::Builder::new()
            .prefix("caskade-zk-shared-")
            .tempdir()
            .expect("temp dir for the shared ZooKeeper")
            .keep();
        let watchdog = Command::new("bash")
            .args(["-c", WATCHDOG, "zk-watchdog"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the shared ZooKeeper's watchdog");
        // Made before the server starts, so a failed start is cleaned up too.
        let mut shared = Shared {
            dir,
            port: 0,
            watchdog,
        };
        shared.port = start_in(&shared.dir);
        shared
    }
}

/// Creates the empty znode `path` (a chroot) on the server at `port`,
/// bounded by [`SCRIPT_WAIT`].
fn create_chroot(port: u16, path: &str) {
    use zookeeper_client as zkc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The timer is made inside the runtime.
    let made = rt.block_on(async {
        tokio::time::timeout(SCRIPT_WAIT, async {
            let client = zkc::Client::connector()
                .with_session_timeout(Duration::from_millis(2000))
                .connect(&format!("127.0.0.1:{port}"))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let opts = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
            client
                .create(path, b"", &opts)
                .await
                .map_err(|e| format!("create: {e}"))?;
            Ok::<(), String>(())
        })
        .await
    });
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("cannot create chroot {path} on the shared ZooKeeper: {e}"),
        Err(_) => {
            panic!("chroot {path} not created on the shared ZooKeeper within {SCRIPT_WAIT:?}")
        }
    }
}

impl Zk {
    /// One server on a free port, up (answering `imok`) when this returns.
    pub fn standalone() -> Zk {
        check_installed();
        let own = tempfile::tempdir().expect("temp dir for ZooKeeper");
        let port = start_in(own.path());
        Zk {
            dir: own.path().to_path_buf(),
            own: Some(own),
            client_ports: vec![port],
            chroot: String::new(),
        }
    }

    /// A fresh empty chroot on the process's shared server, started (or
    /// started again, if it died) here (module docs). Killing, pausing or
    /// restarting it panics: a test that does needs [`Zk::standalone`].
    pub fn shared() -> Zk {
        check_installed();
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let up = shared
            .as_ref()
            .is_some_and(|s| pid_in(&s.dir).is_some_and(running));
        if !up {
            if let Some(old) = shared.take() {
                let log = std::fs::read_to_string(old.dir.join("zk.log")).unwrap_or_default();
                eprintln!(
                    "the shared ZooKeeper in {} is gone; starting another. Its log ends:\n{}",
                    old.dir.display(),
                    super::cluster::tail(&log, 20)
                );
            }
            *shared = Some(Shared::start());
        }
        let s = shared.as_ref().expect("shared server started");
        let chroot = format!("/cluster-{}", CHROOTS.fetch_add(1, Ordering::Relaxed) + 1);
        create_chroot(s.port, &chroot);
        Zk {
            dir: s.dir.clone(),
            own: None,
            client_ports: vec![s.port],
            chroot,
        }
    }

    /// Panics unless this is a server of its own (not a share): `what` is
    /// what the test tried to do.
    fn own_only(&self, what: &str) {
        assert!(
            self.own.is_some(),
            "cannot {what} the shared ZooKeeper (chroot {}): start this test's cluster on a \
             Zk::standalone() of its own",
            self.chroot
        );
    }

    /// A three-member ensemble, every member up and a quorum formed when
    /// this returns. Members are numbered 0, 1, 2.
    pub fn ensemble() -> Zk {
        check_installed();
        let own = tempfile::tempdir().expect("temp dir for ZooKeeper");
        let dir = own.path().to_path_buf();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let ports = super::free_ports(9);
            let d = dir.to_str().expect("utf-8 temp dir");
            let (c, q, e) = (&ports[0..3], &ports[3..6], &ports[6..9]);
            match run_script(&["start-ensemble", d, &join(c), &join(q), &join(e)]) {
                Ok(_) => {
                    return Zk {
                        dir,
                        own: Some(own),
                        client_ports: c.to_vec(),
                        chroot: String::new(),
                    };
                }
                Err(e) => {
                    last = e;
                    let _ = run_script(&["stop", d]);
                    for i in 1..=3 {
                        let _ = std::fs::remove_dir_all(dir.join(i.to_string()));
                    }
                }
            }
        }
        panic!("ZooKeeper ensemble did not start in {ATTEMPTS} attempts; last: {last}");
    }

    /// `127.0.0.1:PORT[,127.0.0.1:PORT...]`, then the chroot of a share
    /// (`/cluster-N`).
    pub fn connect_string(&self) -> String {
        let hosts = self
            .client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        format!("{hosts}{}", self.chroot)
    }

    /// The client port of each member.
    pub fn client_ports(&self) -> &[u16] {
        &self.client_ports
    }

    /// The chroot of a share (`/cluster-N`), empty for a server of its own.
    pub fn chroot(&self) -> &str {
        &self.chroot
    }

    /// Whether this is an ensemble (three members).
    fn is_ensemble(&self) -> bool {
        self.client_ports.len() > 1
    }

    /// The directory of member `i` (0-based).
    fn member_dir(&self, i: usize) -> PathBuf {
        if self.is_ensemble() {
            self.dir.join((i + 1).to_string())
        } else {
            assert_eq!(i, 0, "a standalone ZooKeeper has only member 0");
            self.dir.clone()
        }
    }

    /// Kills member `i` (SIGKILL: no goodbye to its clients) and waits
    /// (bounded) until it is gone (dead; see [`running`]); its data stays. ZooKeeper syncs its
    /// transaction log before it answers a write, so nothing acknowledged
    /// is lost.
    pub fn kill_member(&self, i: usize) {
        self.own_only("kill");
        if let Err(e) = self.sigkill(i) {
            panic!("{e}");
        }
    }

    /// SIGKILL to member `i`, then waits (bounded) until it is gone.
    fn sigkill(&self, i: usize) -> Result<(), String> {
        let Some(pid) = self.pid(i) else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of a server this harness started.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(pid) {
            if Instant::now() > deadline {
                return Err(format!("ZooKeeper member {i} (pid {pid}) survived SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.member_dir(i).join("zk.pid"));
        Ok(())
    }

    /// Starts member `i` again on its port and data; returns when it
    /// answers `imok`.
    pub fn restart_member(&self, i: usize) {
        self.own_only("restart");
        let d = self.dir.to_str().expect("utf-8 temp dir");
        let r = if self.is_ensemble() {
            run_script(&["start-member", d, &(i + 1).to_string()])
        } else {
            assert_eq!(i, 0, "a standalone ZooKeeper has only member 0");
            run_script(&["start", d, &self.client_ports[0].to_string()])
        };
        if let Err(e) = r {
            panic!("cannot restart ZooKeeper member {i}: {e}");
        }
    }

    /// The pid of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<i32> {
        pid_in(&self.member_dir(i))
    }

    /// Freezes member `i` (SIGSTOP): connections stay open, nothing answers.
    pub fn pause_member(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// Thaws member `i` (SIGCONT).
    pub fn resume_member(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, sig: i32) {
        self.own_only("signal");
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("ZooKeeper member {i} is not running"));
        // SAFETY: kill(2) on the pid of a server this harness started.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.client_ports.len()
    }

    /// The member that reports `Mode: leader` (or `standalone`) to the
    /// `srvr` four-letter command, if one does (each asked for at most 1 s).
    pub fn leader(&self) -> Option<usize> {
        use std::io::{Read, Write};
        (0..self.client_ports.len()).find(|&i| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.client_ports[i]));
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut out = String::new();
            s.write_all(b"srvr").is_ok()
                && s.read_to_string(&mut out).is_ok()
                && (out.contains("Mode: leader") || out.contains("Mode: standalone"))
        })
    }

    /// The log of member `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.member_dir(i).join("zk.log")).unwrap_or_default()
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        // A share leaves its chroot behind on the shared server (a few
        // znodes, gone with the server).
        if self.own.is_none() {
            return;
        }
        // The data is thrown away: kill at once (a clean stop takes ~2 s),
        // then let the script sweep whatever is left under the directory.
        for i in 0..self.client_ports.len() {
            if let Err(e) = self.sigkill(i) {
                eprintln!("{e}");
            }
        }
        let d = self.dir.to_string_lossy().into_owned();
        if let Err(e) = run_script(&["stop", &d]) {
            eprintln!("{e}");
        }
    }
}
