//! One ZooKeeper session of this node: connecting, registering
//! `/nodes/<id>`, and the lease that says whether this node may still act
//! as a partition leader.
//!
//! The lease ([`Lease`]) runs on this node's boot clock (`CLOCK_BOOTTIME`,
//! which keeps counting while the machine is suspended, unlike
//! `CLOCK_MONOTONIC` behind `std::time::Instant`: a node suspended past its
//! session timeout must find its lease lapsed on resume). It is renewed
//! by every successful heartbeat (an `exists` on the cluster root every
//! session timeout / 4) with the time the heartbeat was *sent*, and lasts
//! 2/3 of the negotiated session timeout from there. ZooKeeper cannot
//! expire the session before a full session timeout has passed since it
//! last heard from this node, which is after that send time, so while the
//! lease is valid the session (and with it this node's leaderships) is
//! still alive; the remaining third absorbs clock-rate differences and
//! scheduling delays.
//!
//! Invariants:
//! - [`Lease::valid`] is false whenever no session is established, and
//!   becomes false on its own (no task needs to run) once the lease time
//!   has passed: a process frozen by SIGSTOP past its lease sees it
//!   invalid on the first check after SIGCONT.
//! - `/nodes/<id>` is ephemeral and owned by the current session; a node
//!   id registered by another live session is refused (after waiting one
//!   session timeout for a previous incarnation's session to expire).
//! - Each registration has a node epoch, the czxid of its `/nodes/<id>`:
//!   a new session's registration always has a higher one (KIP-380).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::znode::{Paths, encode, zk_error};
use crate::cluster::NodeAddr;
use crate::error::Error;

/// Nanoseconds on `CLOCK_BOOTTIME` (time since boot, suspend included).
pub(crate) fn boot_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every Linux since 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Not reachable on Linux; fall back to the monotonic clock's view
        // through a fixed origin rather than panic.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        return ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A point on the boot clock ([`boot_nanos`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BootInstant(u64);

impl BootInstant {
    /// Now.
    pub fn now() -> BootInstant {
        BootInstant(boot_nanos())
    }
}

/// Whether this node may act as a leader, on its own boot clock.
#[derive(Debug)]
pub(crate) struct Lease {
    /// Origin of the stored instants.
    base: BootInstant,
    /// Send time (ns after `base`, plus one so 0 means never) of the latest
    /// ZooKeeper round trip that succeeded in the current session.
    heard: AtomicU64,
    /// Length of the lease in ns (2/3 of the negotiated session timeout).
    length: AtomicU64,
    /// A session is established (not expired, not closed).
    alive: AtomicBool,
    /// The lease lapsed and the listener was fenced; cleared on renewal.
    lapsed: AtomicBool,
}

impl Lease {
    /// A lease that is not valid until a session begins.
    pub fn new() -> Lease {
        Lease {
            base: BootInstant::now(),
            heard: AtomicU64::new(0),
            length: AtomicU64::new(0),
            alive: AtomicBool::new(false),
            lapsed: AtomicBool::new(false),
        }
    }

    /// `t` in ns after `base`, plus one (0 means never).
    fn nanos(&self, t: BootInstant) -> u64 {
        t.0.saturating_sub(self.base.0) + 1
    }

    /// A session with `session_timeout` was established by a request sent
    /// at `sent`.
    pub fn begin(&self, session_timeout: Duration, sent: BootInstant) {
        let length = session_timeout.as_nanos() as u64 * 2 / 3;
        self.length.store(length, Ordering::SeqCst);
        self.heard.store(self.nanos(sent), Ordering::SeqCst);
        self.lapsed.store(false, Ordering::SeqCst);
        self.alive.store(true, Ordering::SeqCst);
    }

    /// The session is gone (expired, closed).
    pub fn end(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.heard.store(0, Ordering::SeqCst);
    }

    /// A request sent at `sent` was answered. Returns true when this ends a
    /// lapse (the listener was fenced and should get the states again).
    pub fn renew(&self, sent: BootInstant) -> bool {
        self.heard.fetch_max(self.nanos(sent), Ordering::SeqCst);
        self.valid() && self.lapsed.swap(false, Ordering::SeqCst)
    }

    /// When the lease runs out on the boot clock, if a session is
    /// established.
    fn boot_deadline(&self) -> Option<BootInstant> {
        let heard = self.heard.load(Ordering::SeqCst);
        if !self.alive.load(Ordering::SeqCst) || heard == 0 {
            return None;
        }
        let length = self.length.load(Ordering::SeqCst);
        Some(BootInstant(self.base.0 + heard - 1 + length))
    }

    /// When the lease runs out, as an `Instant` to sleep until (a suspend
    /// meanwhile makes the sleep end late; [`Lease::valid`] is what counts).
    pub fn deadline(&self) -> Option<Instant> {
        let d = self.boot_deadline()?;
        let (now, boot) = (Instant::now(), BootInstant::now());
        Some(now + Duration::from_nanos(d.0.saturating_sub(boot.0)))
    }

    /// True while a session is established and the lease has not run out
    /// on the boot clock.
    pub fn valid(&self) -> bool {
        self.boot_deadline().is_some_and(|d| BootInstant::now() < d)
    }

    /// Marks the lease as lapsed; true the first time for this lapse.
    pub fn mark_lapsed(&self) -> bool {
        !self.lapsed.swap(true, Ordering::SeqCst)
    }
}

/// Creates `/nodes/<me.id>` (ephemeral, JSON [`NodeAddr`]) in the session
/// of `client`; returns the registration's node epoch (the znode's czxid).
///
/// If the znode exists and belongs to another session, waits up to one
/// session timeout for it to vanish (a restarted node's previous session
/// expiring), then refuses with [`Error::Unavailable`].
pub(crate) async fn register(
    client: &zk::Client,
    paths: &Paths,
    me: &NodeAddr,
) -> crate::Result<i64> {
    let path = paths.node(&me.id);
    let data = encode(me);
    let opts = paths.options(zk::CreateMode::Ephemeral);
    let deadline = Instant::now() + client.session_timeout() + Duration::from_millis(500);
    let mut told = false;
    loop {
        match client.create(&path, &data, &opts).await {
            Ok((stat, _)) => return Ok(stat.czxid),
            // Outcome unknown: the next attempt finds out (NodeExists with
            // our own session as owner means it was created).
            Err(zk::Error::ConnectionLoss) => {
                tokio::time::sleep(super::znode::LOSS_BACKOFF).await;
                continue;
            }
            Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(zk_error(&format!("register {path}"), e)),
        }
        let (stat, watcher) = match client.check_and_watch_stat(&path).await {
            Ok((Some(stat), w)) => (stat, w),
            Ok((None, _)) => continue,
            Err(zk::Error::ConnectionLoss) => continue,
            Err(e) => return Err(zk_error(&format!("read {path}"), e)),
        };
        if stat.ephemeral_owner == client.session_id().0 {
            return Ok(stat.czxid);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Unavailable(format!(
                "node id {:?} is already registered in ZooKeeper ({path}, session {:#x}) by another \
                 live node; is another caskade-server running with this node_id?",
                me.id, stat.ephemeral_owner
            )));
        }
        if !told {
            told = true;
            tracing::warn!(
                "{path} exists (session {:#x}); waiting up to {} ms for it to expire",
                stat.ephemeral_owner,
                (deadline - now).as_millis()
            );
        }
        let _ = tokio::time::timeout(deadline - now, watcher.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease reads CLOCK_BOOTTIME (issue 10, bug 14 e), and lapses once
    /// its length has passed since the send time on that clock.
    #[test]
    fn the_lease_runs_on_the_boot_clock() {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let before = read(libc::CLOCK_BOOTTIME);
        let ours = boot_nanos();
        let after = read(libc::CLOCK_BOOTTIME);
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");

        let lease = Lease::new();
        assert!(!lease.valid());
        lease.begin(Duration::from_secs(3), BootInstant::now());
        assert!(lease.valid());
        // Heard 2.5 s ago on the boot clock: past the 2 s lease.
        let lease = Lease {
            base: BootInstant(boot_nanos() - 10_000_000_000),
            ..Lease::new()
        };
        let long_ago = BootInstant(boot_nanos() - 2_500_000_000);
        lease.begin(Duration::from_secs(3), long_ago);
        assert!(!lease.valid());
        lease.end();
        assert!(!lease.valid());
    }
}
