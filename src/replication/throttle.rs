//! The reassignment throttle: a token bucket per node that bounds the
//! bytes a leader serves per second to replicas being added by a
//! reassignment, all partitions together.
//!
//! A replica is *being added* when it is listed past the first
//! `replication_factor` entries of its partition's `replicas` (a
//! reassignment in progress lists the original replicas first and the
//! added ones after them, `cluster/zk/reassign.rs`) and is not in the ISR.
//! Normal replication (ISR members, and followers that fell out of the
//! ISR) is never throttled.
//!
//! The rate comes from `<root>/admin/reassign` (`throttle_bytes_per_sec`,
//! every node watches it); 0 means unthrottled. A change applies to the
//! next fetch.
//!
//! Invariants:
//! - the bucket holds at most one second of the rate (and at least
//!   [`MIN_BURST`]), fills at the rate, and may go into debt by one
//!   answer's records (a record is never split); a throttled partition is
//!   read only while the bucket is not empty, so over any interval `t` the
//!   bytes served to replicas being added are at most `rate * t + burst +
//!   one answer`;
//! - a throttled partition with an empty bucket does not end a fetch's
//!   long poll early (no busy loop): the wait ends when the bucket refills
//!   or the poll times out.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The smallest burst, so a low rate still moves records of a few KiB.
pub const MIN_BURST: f64 = 16.0 * 1024.0;

/// A token bucket in bytes.
#[derive(Debug)]
pub struct Throttle {
    /// Rate (bytes/s, 0 = off) and the bucket.
    inner: Mutex<Bucket>,
}

/// The bucket's state.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second; 0: unthrottled.
    rate: u64,
    /// Bytes available (negative: debt).
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            inner: Mutex::new(Bucket {
                rate: 0,
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl Bucket {
    fn burst(&self) -> f64 {
        (self.rate as f64).max(MIN_BURST)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst());
    }
}

impl Throttle {
    /// Sets the rate (bytes/s, 0 = unthrottled); the bucket starts empty
    /// when the throttle is switched on.
    pub fn set_rate(&self, rate: u64) {
        let mut b = self.inner.lock();
        let now = Instant::now();
        b.refill(now);
        if b.rate == 0 && rate > 0 {
            b.tokens = 0.0;
        }
        b.rate = rate;
        b.tokens = b.tokens.min(b.burst());
    }

    /// How many bytes a throttled read may take now: `None` when
    /// unthrottled, `Some(0)` when the bucket is empty.
    pub fn available(&self) -> Option<usize> {
        let mut b = self.inner.lock();
        if b.rate == 0 {
            return None;
        }
        b.refill(Instant::now());
        Some(b.tokens.max(0.0) as usize)
    }

    /// Takes `bytes` served to replicas being added (may leave a debt).
    pub fn take(&self, bytes: usize) {
        let mut b = self.inner.lock();
        if b.rate > 0 {
            b.tokens -= bytes as f64;
        }
    }

    /// How long until the bucket holds at least `want` bytes (zero when
    /// unthrottled or already there).
    pub fn wait_for(&self, want: usize) -> Duration {
        let mut b = self.inner.lock();
        if b.rate == 0 {
            return Duration::ZERO;
        }
        b.refill(Instant::now());
        let want = (want as f64).min(b.burst());
        let missing = want - b.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / b.rate as f64)
    }
}

/// Whether `follower` of a partition with `replicas` and `isr` is being
/// added by a reassignment (see the module doc).
pub fn is_adding(
    follower: &str,
    replicas: &[String],
    isr: &[String],
    replication_factor: usize,
) -> bool {
    replicas
        .get(replication_factor..)
        .is_some_and(|a| a.iter().any(|r| r == follower))
        && !isr.iter().any(|m| m == follower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn only_added_replicas_outside_the_isr_are_throttled() {
        let r = s(&["n1", "n2", "n3", "n4"]);
        assert!(is_adding("n4", &r, &s(&["n1", "n2"]), 3));
        assert!(!is_adding("n4", &r, &s(&["n1", "n4"]), 3));
        // A follower that fell out of the ISR is not being added.
        assert!(!is_adding("n3", &r, &s(&["n1", "n2"]), 3));
        assert!(!is_adding("n3", &s(&["n1", "n2", "n3"]), &s(&["n1"]), 3));
    }

    #[test]
    fn the_bucket_fills_at_the_rate_and_goes_into_debt() {
        let t = Throttle::default();
        assert_eq!(t.available(), None);
        t.take(1 << 20);
        assert_eq!(t.available(), None, "unthrottled takes nothing");
        t.set_rate(100_000);
        assert_eq!(t.available(), Some(0), "starts empty");
        std::thread::sleep(Duration::from_millis(50));
        let got = t.available().unwrap();
        assert!((4_000..=20_000).contains(&got), "{got}");
        t.take(got + 50_000);
        assert_eq!(t.available(), Some(0));
        let wait = t.wait_for(10_000);
        assert!(wait >= Duration::from_millis(550), "{wait:?}");
        assert!(wait <= Duration::from_millis(610), "{wait:?}");
        t.set_rate(0);
        assert_eq!(t.available(), None);
        assert_eq!(t.wait_for(10_000), Duration::ZERO);
    }
}
