//! Network partitions, without touching the host's network.
//!
//! - A partition scenario re-runs its own test inside a network namespace
//!   it creates ([`in_netns`]): ZooKeeper, the nodes and the clients all
//!   live on that namespace's loopback, and the iptables rules are that
//!   namespace's. The namespace is deleted when the outer test ends (Drop
//!   guard), which drops every rule with it.
//! - Inside, each node runs as its own group id, and [`Firewall`] drops
//!   packets by owner group (iptables `-m owner --gid-owner`) and
//!   destination port: "node A cannot reach node B's ports", "node A
//!   cannot reach ZooKeeper", or "node A sends nothing but to ZooKeeper"
//!   (one-way). Its rules live in one chain, flushed on heal and removed
//!   on drop.
//! - Where namespaces or iptables are not available (not root, no
//!   `ip`/`iptables`), the scenario says so and is skipped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set inside the namespace.
pub const INSIDE: &str = "TORTURE_IN_NETNS";

/// Group ids the nodes run as inside the namespace.
pub const GIDS: [u32; 3] = [47101, 47102, 47103];

/// Runs `cmd args`, Ok(stdout) on success.
fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh("ip", &["netns", "delete", &self.0]) {
            eprintln!("{e}");
        }
    }
}

/// Whether this process already runs inside the scenario's namespace.
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Outside the namespace: creates it, runs test `name` of this binary in
/// it, and panics when that fails. Returns false when partitions cannot be
/// made here (the caller skips).
pub fn in_netns(name: &str, bound: Duration) -> bool {
    let ns = Netns(format!("caskade-torture-{}", std::process::id()));
    if let Err(e) = sh("ip", &["netns", "add", &ns.0]) {
        std::mem::forget(ns);
        eprintln!("scenario {name} skipped: cannot create a network namespace: {e}");
        return false;
    }
    let ready = sh(
        "ip",
        &["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"],
    )
    .and_then(|_| {
        sh(
            "ip",
            &["netns", "exec", &ns.0, "iptables", "-n", "-L", "OUTPUT"],
        )
    });
    if let Err(e) = ready {
        eprintln!("scenario {name} skipped: {e}");
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("run the scenario in its namespace");
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match status {
        Some(s) if s.success() => true,
        Some(s) => panic!("scenario {name} failed in its network namespace ({s}); see above"),
        None => panic!("scenario {name} did not finish within {bound:?}"),
    }
}

/// This namespace's iptables rules for the scenario, in chain `TORTURE`.
pub struct Firewall {
    /// Rules in force, for the nemesis log.
    pub rules: Vec<String>,
}

impl Firewall {
    /// Creates the chain and jumps to it from OUTPUT.
    pub fn new() -> Result<Firewall, String> {
        sh("iptables", &["-N", "TORTURE"])?;
        sh("iptables", &["-I", "OUTPUT", "-j", "TORTURE"])?;
        Ok(Firewall { rules: Vec::new() })
    }

    /// Drops TCP packets that group `gid` sends to `port` (new
    /// connections and established ones alike).
    pub fn drop_to(&mut self, gid: u32, port: u16) -> Result<(), String> {
        let (g, p) = (gid.to_string(), port.to_string());
        sh(
            "iptables",
            &[
                "-A",
                "TORTURE",
                "-o",
                "lo",
                "-p",
                "tcp",
                "-m",
                "owner",
                "--gid-owner",
                &g,
                "--dport",
                &p,
                "-j",
                "DROP",
            ],
        )?;
        self.rules.push(format!("gid {gid} -> port {port}: drop"));
        Ok(())
    }

    /// Drops every TCP packet group `gid` sends, except to `keep`.
    pub fn mute_except(&mut self, gid: u32, keep: u16) -> Result<(), String> {
        let (g, k) = (gid.to_string(), keep.to_string());
        sh(
            "iptables",
            &[
                "-A",
                "TORTURE",
                "-o",
                "lo",
                "-p",
                "tcp",
                "-m",
                "owner",
                "--gid-owner",
                &g,
                "!",
                "--dport",
                &k,
                "-j",
                "DROP",
            ],
        )?;
        self.rules
            .push(format!("gid {gid} -> all but port {keep}: drop"));
        Ok(())
    }

    /// Removes every rule.
    pub fn heal(&mut self) -> Result<(), String> {
        sh("iptables", &["-F", "TORTURE"])?;
        self.rules.clear();
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = sh("iptables", &["-F", "TORTURE"]);
        let _ = sh("iptables", &["-D", "OUTPUT", "-j", "TORTURE"]);
        let _ = sh("iptables", &["-X", "TORTURE"]);
    }
}

/// The port of `host:port`.
pub fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}
