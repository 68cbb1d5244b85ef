//! Real ZooKeeper servers for the integration tests, started and stopped
//! through `scripts/zk.sh` (Debian's `zookeeper` package, loopback only).
//!
//! - [`Zk::standalone`]: one server; [`Zk::ensemble`]: three members.
//! - Every server runs in a temporary directory owned by the [`Zk`] value;
//!   Drop kills every member (SIGKILL) and then runs `scripts/zk.sh stop
//!   DIR`, which stops any server whose pid file is left under it, even
//!   when the test failed.
//! - Every script run is bounded ([`SCRIPT_WAIT`]); ports come from
//!   [`super::free_port`]-style probing, and a start that loses a port race
//!   is retried on fresh ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest time one `scripts/zk.sh` run may take (it waits 30 s itself).
pub const SCRIPT_WAIT: Duration = Duration::from_secs(45);

/// Start attempts before giving up (ports can be taken between probing and
/// binding by another test).
const ATTEMPTS: usize = 3;

/// A running ZooKeeper (one server or a three-member ensemble), stopped on
/// drop.
pub struct Zk {
    /// Holds every member's config, data, pid file and log.
    dir: tempfile::TempDir,
    /// Client port of each member.
    client_ports: Vec<u16>,
}

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

impl Zk {
    /// One server on a free port, up (answering `imok`) when this returns.
    pub fn standalone() -> Zk {
        check_installed();
        let dir = tempfile::tempdir().expect("temp dir for ZooKeeper");
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let port = super::free_ports(1)[0];
            let d = dir.path().to_str().expect("utf-8 temp dir");
            match run_script(&["start", d, &port.to_string()]) {
                Ok(_) => {
                    return Zk {
                        dir,
                        client_ports: vec![port],
                    };
                }
                Err(e) => {
                    last = e;
                    let _ = run_script(&["stop", d]);
                }
            }
        }
        panic!("ZooKeeper did not start in {ATTEMPTS} attempts; last: {last}");
    }

    /// A three-member ensemble, every member up and a quorum formed when
    /// this returns. Members are numbered 0, 1, 2.
    pub fn ensemble() -> Zk {
        check_installed();
        let dir = tempfile::tempdir().expect("temp dir for ZooKeeper");
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let ports = super::free_ports(9);
            let d = dir.path().to_str().expect("utf-8 temp dir");
            let (c, q, e) = (&ports[0..3], &ports[3..6], &ports[6..9]);
            match run_script(&["start-ensemble", d, &join(c), &join(q), &join(e)]) {
                Ok(_) => {
                    return Zk {
                        dir,
                        client_ports: c.to_vec(),
                    };
                }
                Err(e) => {
                    last = e;
                    let _ = run_script(&["stop", d]);
                    for i in 1..=3 {
                        let _ = std::fs::remove_dir_all(dir.path().join(i.to_string()));
                    }
                }
            }
        }
        panic!("ZooKeeper ensemble did not start in {ATTEMPTS} attempts; last: {last}");
    }

    /// `127.0.0.1:PORT[,127.0.0.1:PORT...]`.
    pub fn connect_string(&self) -> String {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether this is an ensemble (three members).
    fn is_ensemble(&self) -> bool {
        self.client_ports.len() > 1
    }

    /// The directory of member `i` (0-based).
    fn member_dir(&self, i: usize) -> PathBuf {
        if self.is_ensemble() {
            self.dir.path().join((i + 1).to_string())
        } else {
            assert_eq!(i, 0, "a standalone ZooKeeper has only member 0");
            self.dir.path().to_path_buf()
        }
    }

    /// Kills member `i` (SIGKILL: no goodbye to its clients) and waits
    /// (bounded) until it is gone; its data stays. ZooKeeper syncs its
    /// transaction log before it answers a write, so nothing acknowledged
    /// is lost.
    pub fn kill_member(&self, i: usize) {
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
        // SAFETY: signal 0 only checks that the pid exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
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
        let d = self.dir.path().to_str().expect("utf-8 temp dir");
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
        std::fs::read_to_string(self.member_dir(i).join("zk.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
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
        // The data is thrown away: kill at once (a clean stop takes ~2 s),
        // then let the script sweep whatever is left under the directory.
        for i in 0..self.client_ports.len() {
            if let Err(e) = self.sigkill(i) {
                eprintln!("{e}");
            }
        }
        let d = self.dir.path().to_string_lossy().into_owned();
        if let Err(e) = run_script(&["stop", &d]) {
            eprintln!("{e}");
        }
    }
}
