//! A latency histogram with fixed buckets, made of atomics: recording is two
//! relaxed `fetch_add`s (no lock, no allocation), reading is a
//! [`HistogramSnapshot`] that a metrics exporter turns into its own format
//! at scrape time. Storage records fsync latency in it; the server records
//! request latency in it. Neither depends on a metrics library.
//!
//! Buckets are upper bounds in microseconds ([`BOUNDS_US`], Prometheus
//! style: a value lands in the first bucket whose bound is `>=` it), plus
//! one overflow bucket. A snapshot taken while values are recorded may count
//! a value in its bucket and not yet in the sum (or the reverse): each
//! figure is exact on its own, they agree once recording pauses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds in microseconds, 10 µs to 10 s.
pub const BOUNDS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Number of buckets: one per bound and the overflow (`+Inf`).
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    /// Values per bucket (not cumulative).
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the values, in microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Values per bucket (not cumulative); the last is the overflow.
    pub buckets: [u64; BUCKETS],
    /// Sum of the values in microseconds.
    pub sum_us: u64,
}

impl HistogramSnapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds `other`'s counts (several engines into one node figure).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    /// The bucket bound (µs) under which at least `q` (0..=1) of the values
    /// fall; `None` when empty or when they fall in the overflow bucket.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let want = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_whose_bound_covers_them() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(10)); // bucket 0 (<= 10)
        h.observe(Duration::from_micros(11)); // bucket 1 (<= 25)
        h.observe(Duration::from_millis(1)); // bucket 6 (<= 1000)
        h.observe(Duration::from_secs(60)); // overflow
        let s = h.snapshot();
        let mut want = [0; BUCKETS];
        want[0] = 1;
        want[1] = 1;
        want[6] = 1;
        want[BUCKETS - 1] = 1;
        assert_eq!(s.buckets, want);
        assert_eq!(s.sum_us, 10 + 11 + 1000 + 60_000_000);
        assert_eq!(s.count(), 4);
        assert_eq!(s.quantile_bound_us(0.5), Some(25));
        assert_eq!(s.quantile_bound_us(0.75), Some(1000));
        assert_eq!(s.quantile_bound_us(1.0), None);
        let mut sum = s;
        sum.add(&s);
        assert_eq!(sum.count(), 8);
        assert_eq!(sum.sum_us, 2 * s.sum_us);
    }
}
