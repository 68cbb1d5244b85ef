//! Failed logins per peer address (`auth.max_failed_logins` within
//! `auth.failed_login_window_ms`, src/config/auth.rs).
//!
//! Invariants:
//! - an address whose failed logins reach `max` within one window (the
//!   window starts at its first failure) is locked for one window from
//!   that last failure: every login from it is refused with
//!   [`Locked::retry_secs`], before any password is looked at (no argon2,
//!   no digest), whether the password would be right or not;
//! - a lock, and a window with fewer failures, lapse by themselves; a
//!   successful login does not reset the count (a valid account must not
//!   reset the guesses against another);
//! - other addresses are not affected;
//! - the table holds at most [`MAX_TRACKED`] addresses: when full, lapsed
//!   entries are dropped, then the one whose window started first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Addresses tracked at most.
pub const MAX_TRACKED: usize = 65_536;

/// An address's failures.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When its first failure of the current window happened.
    since: Instant,
    /// Failures in the current window.
    failures: u32,
    /// Set once `failures` reached the limit: logins are refused until then.
    locked_until: Option<Instant>,
}

/// A refusal: the address is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// Whole seconds until the lock lapses, rounded up (at least 1).
    pub retry_secs: u64,
}

/// Failed logins by address.
pub struct FailedLogins {
    /// Failures allowed in one window; 0 = no limit.
    max: u32,
    /// The window, and the length of a lock.
    window: Duration,
    /// Addresses with failures.
    by_ip: Mutex<HashMap<IpAddr, Entry>>,
}

impl FailedLogins {
    /// At most `max` failures (0: unlimited) per `window` per address.
    pub fn new(max: u32, window: Duration) -> Self {
        FailedLogins {
            max,
            window,
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    /// `Err` when `ip` is locked at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Locked> {
        if self.max == 0 {
            return Ok(());
        }
        let mut map = self.by_ip.lock();
        let Some(e) = map.get(&ip).copied() else {
            return Ok(());
        };
        match e.locked_until {
            Some(until) if until > now => {
                let left = until - now;
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Err(Locked {
                    retry_secs: secs.max(1),
                })
            }
            Some(_) => {
                map.remove(&ip);
                Ok(())
            }
            None => {
                if now.saturating_duration_since(e.since) >= self.window {
                    map.remove(&ip);
                }
                Ok(())
            }
        }
    }

    /// Counts a failed login from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut map = self.by_ip.lock();
        if !map.contains_key(&ip) && map.len() >= MAX_TRACKED {
            self.make_room(&mut map, now);
        }
        let e = map.entry(ip).or_insert(Entry {
            since: now,
            failures: 0,
            locked_until: None,
        });
        if e.locked_until.is_none() && now.saturating_duration_since(e.since) >= self.window {
            *e = Entry {
                since: now,
                failures: 0,
                locked_until: None,
            };
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= self.max {
            e.locked_until = Some(now + self.window);
        }
    }

    /// Drops lapsed entries, else the oldest one.
    fn make_room(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant) {
        let window = self.window;
        map.retain(|_, e| match e.locked_until {
            Some(until) => until > now,
            None => now.saturating_duration_since(e.since) < window,
        });
        if map.len() >= MAX_TRACKED
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.since).map(|(ip, _)| *ip)
        {
            map.remove(&oldest);
        }
    }

    /// Addresses tracked (tests).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.by_ip.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_for_one_window_then_lapses() {
        let l = FailedLogins::new(3, Duration::from_secs(10));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..2 {
            l.failed(a, t0 + Duration::from_secs(i));
            assert_eq!(l.check(a, t0 + Duration::from_secs(i)), Ok(()));
        }
        l.failed(a, t0 + Duration::from_secs(3));
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(l.check(a, at(3_000)), Err(Locked { retry_secs: 10 }));
        assert_eq!(l.check(a, at(3_001)), Err(Locked { retry_secs: 10 }));
        assert_eq!(l.check(a, at(12_500)), Err(Locked { retry_secs: 1 }));
        assert_eq!(l.check(b, at(4_000)), Ok(()), "other addresses go on");
        assert_eq!(l.check(a, at(13_000)), Ok(()), "the lock lapsed");
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn failures_spread_over_more_than_a_window_do_not_lock() {
        let l = FailedLogins::new(2, Duration::from_secs(10));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        l.failed(a, t0);
        l.failed(a, t0 + Duration::from_secs(11));
        assert_eq!(l.check(a, t0 + Duration::from_secs(11)), Ok(()));
        l.failed(a, t0 + Duration::from_secs(12));
        assert_eq!(
            l.check(a, t0 + Duration::from_secs(12)),
            Err(Locked { retry_secs: 10 })
        );
    }

    #[test]
    fn zero_means_no_limit_and_the_table_is_bounded() {
        let off = FailedLogins::new(0, Duration::from_secs(10));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            off.failed(a, t0);
        }
        assert_eq!(off.check(a, t0), Ok(()));
        let l = FailedLogins::new(5, Duration::from_secs(10));
        for i in 0..(MAX_TRACKED as u32 + 10) {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
    }
}
