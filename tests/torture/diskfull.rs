//! Disk full on one node (`disk-full` scenario): the node's data directory
//! is moved onto a small tmpfs (the node is killed, its files copied onto
//! the tmpfs mounted on the same path, and it is started again), then,
//! under write load, a filler file takes every free byte so the node's
//! writes fail with ENOSPC, and is removed 1-2.5 s later.
//!
//! What the nemesis checks itself (besides every checker of the run):
//! - while full, a write the full node leads is refused with an error that
//!   says the disk is full (ENOSPC, "No space left on device"), never
//!   acknowledged (a refused write must stay invisible: `failed_visible`);
//! - after the filler is removed the node takes writes again; where it
//!   refuses them until reopened (a failed write may leave a failed fsync
//!   behind it, and the engine then refuses writes until restarted: the
//!   fsyncgate rule, docs/STORAGE.md), the nemesis restarts it, as an
//!   operator would, and says so in its log;
//! - the cluster recovers: every ISR full again (`heal_and_quiesce`).
//!
//! Cleanup: the mount is a [`Tmpfs`] guard owned by the cluster
//! (`TestCluster::guards`), unmounted after every node is killed, even when
//! the scenario panics. Without root, or where tmpfs cannot be mounted, the
//! scenario prints that it is skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::nemesis::Ctx;

/// A tmpfs mounted on a directory, unmounted on drop.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (which must exist).
    pub fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        let size = format!("size={}k", bytes.div_ceil(1024));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "caskade-torture"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.dir)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // A process still holding files there: detach now, freed when it
        // exits.
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs on {}", self.dir.display());
        }
    }
}

/// Whether a tmpfs can be mounted here (root, `mount` works); the reason
/// when not.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (mounting a tmpfs needs it)".into());
    }
    let probe = tempfile::tempdir().map_err(|e| e.to_string())?;
    Tmpfs::mount(probe.path(), 1 << 20).map(drop)
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Copies the tree `from` into `to` (an existing directory).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

/// Moves node `i`'s data onto a tmpfs with `headroom` free bytes (the
/// node is killed and started again).
fn move_to_tmpfs(ctx: &mut Ctx, i: usize, headroom: u64) -> Result<(), String> {
    let data = ctx.cluster.specs[i].data.clone();
    ctx.kill(i);
    let aside = data.with_extension("before-tmpfs");
    std::fs::rename(&data, &aside).map_err(|e| format!("move the data aside: {e}"))?;
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    let size = du(&aside) + headroom;
    let fs = Tmpfs::mount(&data, size)?;
    ctx.cluster.guards.push(Box::new(fs));
    copy_tree(&aside, &data).map_err(|e| format!("copy the data onto the tmpfs: {e}"))?;
    let _ = std::fs::remove_dir_all(&aside);
    ctx.start(i);
    let id = ctx.id(i);
    ctx.note(format!("{id}: data on a tmpfs of {} KiB", size / 1024));
    Ok(())
}

/// Fills the filesystem of `dir` with `dir/filler` until ENOSPC; returns
/// its size.
fn fill(dir: &Path) -> Result<u64, String> {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).map_err(|e| format!("create filler: {e}"))?;
    let block = vec![0x5au8; 64 << 10];
    let mut n = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(format!("fill: {e}")),
        }
    }
    // The last partial pages: byte by byte is not needed, tmpfs counts
    // pages.
    Ok(n)
}

/// Whether an error text says the disk is full.
fn says_full(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    ["no space", "enospc", "disk full", "os error 28"]
        .iter()
        .any(|w| e.contains(w))
}

/// Writes to partitions node `i` leads, through node `i`, until one is
/// refused (the tail of the last segment page may still take a few small
/// records): Ok(error text) or Err(what happened instead).
fn probe(ctx: &mut Ctx, i: usize, round: usize) -> Result<String, String> {
    let led: Vec<u32> = (0..ctx.cluster.opts.partitions)
        .filter(|&p| ctx.cluster.leader(p) == Some(i))
        .collect();
    let Some(&p) = led.first() else {
        return Err("leads nothing".into());
    };
    let rt = super::harness::runtime();
    let client = ctx.cluster.client_of(i, &rt);
    let key = ctx.cluster.key_in(p, 1000 + round);
    let value = bytes::Bytes::from(vec![b'f'; 32 << 10]);
    for attempt in 0..20 {
        let r = rt.block_on(client.set(
            bytes::Bytes::from(key.clone()),
            value.clone(),
            caskade::client::SetOptions::default(),
        ));
        match r {
            Ok(_) => continue,
            Err(e) => return Ok(format!("{e} (after {attempt} acknowledged probes)")),
        }
    }
    Err("20 probes of 32 KiB acknowledged on a full disk".into())
}

/// The disk-full faults on node `d` (seeded: the leader or a follower of
/// a random partition).
pub fn disk_full(ctx: &mut Ctx) {
    let p = ctx.partition();
    let Some(l) = ctx.leader(p, Duration::from_secs(10)) else {
        ctx.problems.push("no leader to start from".into());
        return;
    };
    let n = ctx.cluster.specs.len();
    let d = match ctx.rng.below(2) {
        0 => l,
        _ => (l + 1) % n,
    };
    if let Err(e) = move_to_tmpfs(ctx, d, 24 << 20) {
        ctx.problems
            .push(format!("could not set up the tmpfs: {e}"));
        return;
    }
    let id = ctx.id(d);
    let data = ctx.cluster.specs[d].data.clone();
    // Back to a full ISR before the first fill.
    let until = Instant::now() + Duration::from_secs(30);
    while !(ctx.cluster.all_led() && ctx.cluster.full_isr()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    // A leader case: preferred-leader rebalance (on in this scenario) gives
    // the restarted node its partitions back.
    let until = Instant::now() + Duration::from_secs(15);
    while d == l
        && Instant::now() < until
        && !(0..ctx.cluster.opts.partitions).any(|p| ctx.cluster.leader(p) == Some(d))
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut round = 0;
    loop {
        round += 1;
        ctx.pause_ms(300, 1000);
        match fill(&data) {
            Ok(n) => ctx.note(format!("{id}: disk full (filler {} KiB)", n / 1024)),
            Err(e) => {
                ctx.problems.push(e);
                break;
            }
        }
        match probe(ctx, d, round) {
            Ok(e) if says_full(&e) => ctx.note(format!("{id} refuses writes: {e}")),
            Ok(e) => {
                ctx.note(format!("{id} refuses writes: {e}"));
                ctx.problems.push(format!(
                    "{id}, disk full, refused a write with an error that does not say so: {e}"
                ));
            }
            Err(e) => ctx.note(format!("{id} probe while full: {e}")),
        }
        ctx.pause_ms(1000, 2500);
        // What the node said about it.
        let log = ctx.cluster.log(d);
        let seen = log
            .lines()
            .filter(|l| says_full(l))
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>();
        match seen.first() {
            Some(first) => ctx.note(format!(
                "{id} logged {} ENOSPC lines, first: {first}",
                seen.len()
            )),
            None => ctx.note(format!("{id} logged no ENOSPC")),
        }
        let _ = std::fs::remove_file(data.join("filler"));
        ctx.note(format!("{id}: space freed"));
        // The node should take writes again by itself; if it still refuses
        // them (or its replicas stay out of the ISR) after 5 s, restart it.
        let until = Instant::now() + Duration::from_secs(5);
        let mut healthy = false;
        while Instant::now() < until {
            if ctx.cluster.all_led() && ctx.cluster.full_isr() {
                healthy = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if healthy {
            ctx.note(format!("{id} recovered by itself (full ISR)"));
        } else {
            ctx.note(format!(
                "{id} not back in every ISR 5 s after space was freed: operator restart"
            ));
            ctx.kill(d);
            ctx.start(d);
        }
        if !ctx.more() {
            break;
        }
    }
}
