//! Background work of an engine: the periodic fsync under `every_ms`; the
//! janitor, which sweeps expired keys, writes hint files for sealed
//! segments, and starts a merge when enough of the log is dead; and the
//! committer, which leads the group commits of submitted writes.
//!
//! Threads are plain OS threads, not tokio tasks: all of their work is
//! blocking disk I/O. They stop when the engine closes.
//!
//! Invariant: background work never writes a record. The expiry sweep only
//! removes keys from the keydir (merge drops their records later), so a
//! follower's log stays byte for byte its leader's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::hint;
use super::recovery::hint_entries;
use super::segment::{self, HINT_SUFFIX};
use super::{Inner, keydir};
use crate::storage::error::IoContext;
use crate::storage::{Durability, Result};

/// Starts the engine's background threads.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    if let Durability::EveryMs(ms) = inner.opts.fsync {
        let inner = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("caskade-fsync".into())
                .spawn(move || {
                    while !inner.pause(Duration::from_millis(ms)) {
                        // A failure is logged and turns writes off inside sync().
                        // The commit point goes after the records it covers.
                        if let Ok(durable) = inner.sync()
                            && let Err(e) = inner.sync_commit(durable)
                        {
                            tracing::error!(dir = %inner.dir.display(), "fsync of the commit point failed: {e}");
                        }
                    }
                })
                .ctx(|| "start the fsync thread".into())?,
        );
    }
    let janitor = inner.clone();
    threads.push(
        std::thread::Builder::new()
            .name("caskade-janitor".into())
            .spawn(move || janitor.janitor())
            .ctx(|| "start the janitor thread".into())?,
    );
    Ok(threads)
}

/// Starts the committer thread, which writes submitted records in group
/// commits (see [`super::Bitcask::submit`]).
pub(super) fn start_committer(inner: &Arc<Inner>) -> Result<JoinHandle<()>> {
    let inner = inner.clone();
    std::thread::Builder::new()
        .name("caskade-commit".into())
        .spawn(move || inner.committer())
        .ctx(|| "start the committer thread".into())
}

impl Inner {
    /// Sleeps up to `d` or until woken; returns whether the engine is stopping.
    fn pause(&self, d: Duration) -> bool {
        let (lock, cv) = &self.stop;
        let mut stopped = lock.lock();
        if !*stopped {
            cv.wait_for(&mut stopped, d);
        }
        *stopped
    }

    /// The janitor's loop.
    fn janitor(&self) {
        let sweep_every = Duration::from_millis(self.opts.sweep_interval_ms.max(10));
        let merge_every = Duration::from_millis(self.opts.merge.check_interval_ms.max(10));
        let tick = sweep_every.min(merge_every).min(Duration::from_secs(1));
        let (mut last_sweep, mut last_merge) = (Instant::now(), Instant::now());
        while !self.pause(tick) {
            if last_sweep.elapsed() >= sweep_every {
                self.sweep_expired();
                last_sweep = Instant::now();
            }
            // Under `every_ms` the fsync thread checkpoints the commit
            // point right after the log's fsync; otherwise it is done here
            // (under `always` every written record is durable; under
            // `never` nothing is promised).
            if !matches!(self.opts.fsync, Durability::EveryMs(_))
                && let Err(e) = self.sync_commit(u64::MAX)
            {
                tracing::error!(dir = %self.dir.display(), "checkpoint of the commit point failed: {e}");
            }
            if let Err(e) = self.write_missing_hints() {
                tracing::warn!(dir = %self.dir.display(), "writing hint files: {e}");
            }
            if last_merge.elapsed() >= merge_every {
                if self.merge_due()
                    && let Err(e) = self.merge()
                {
                    tracing::error!(dir = %self.dir.display(), "merge failed: {e}");
                }
                last_merge = Instant::now();
            }
        }
    }

    /// Removes expired keys from the keydir; merge later drops their records.
    pub(super) fn sweep_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut removed = 0;
        for i in 0..keydir::SHARDS {
            let expired = self.keydir.shard_at(i).drain_expired(now);
            if expired.is_empty() {
                continue;
            }
            removed += expired.len();
            let segments = self.segments.read();
            for (_, e) in expired {
                segments.add_dead(e.seg, e.len as u64);
            }
        }
        removed
    }

    /// Whether the dead share of the sealed segments calls for a merge.
    fn merge_due(&self) -> bool {
        let m = &self.opts.merge;
        if m.dead_ratio <= 0.0 {
            return false;
        }
        let segments = self.segments.read();
        let sealed = &segments.ordered[..segments.ordered.len().saturating_sub(1)];
        let total: u64 = sealed.iter().map(|s| s.len()).sum();
        let dead: u64 = sealed.iter().map(|s| s.dead.load(Ordering::Relaxed)).sum();
        total > 0 && dead >= m.min_dead_bytes && dead as f64 >= m.dead_ratio * total as f64
    }

    /// Writes hint files for sealed segments that have none.
    pub(super) fn write_missing_hints(&self) -> Result<usize> {
        // Merge replaces and deletes segments: never race it (a hint written
        // for a segment a merge just deleted could describe its successor).
        let mut maintenance = self.maintenance.lock();
        // A merge that failed after its commit goes forward first: until
        // then the segment table still lists its inputs.
        self.finish_merge(&mut maintenance)?;
        let sealed: Vec<_> = {
            let segments = self.segments.read();
            let n = segments.ordered.len().saturating_sub(1);
            segments.ordered[..n].to_vec()
        };
        let mut written = 0;
        for seg in sealed {
            if seg.hinted.load(Ordering::Relaxed) {
                continue;
            }
            let path = segment::file_path(&self.dir, seg.base, HINT_SUFFIX);
            if !path.exists() && !seg.is_empty() {
                let entries = hint_entries(&seg);
                seg.release_pages();
                match entries {
                    Ok(entries) => {
                        hint::write(&path, seg.len(), &entries)?;
                        super::sync_dir(&self.dir)?;
                        written += 1;
                    }
                    Err(e) => tracing::warn!("no hint for {}: {e}", seg.path.display()),
                }
            }
            seg.hinted.store(true, Ordering::Relaxed);
        }
        Ok(written)
    }
}
