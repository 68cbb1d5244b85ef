//! Background work of an engine, as the node's pool ([`super::workers`])
//! runs it: the periodic fsync under `every_ms`; the janitor pass, which
//! sweeps expired keys, checkpoints the commit point, writes hint files for
//! sealed segments and queues a merge when enough of the log is dead; the
//! merge itself; and the group commits of submitted writes.
//!
//! Invariant: background work never writes a record. The expiry sweep only
//! removes keys from the keydir (merge drops their records later), so a
//! follower's log stays byte for byte its leader's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::flush::Leader;
use super::hint;
use super::recovery::hint_entries;
use super::segment::{self, HINT_SUFFIX};
use super::workers::Job;
use super::{Inner, keydir};
use crate::storage::Durability;
use crate::storage::Result;

impl Inner {
    /// Runs one job the pool took for this engine.
    /// Returns false for a commit job that found nothing to lead.
    pub(super) fn run_job(&self, job: Job) -> bool {
        match job {
            Job::Commit => {
                // One batch per turn: `end_flush` queues the engine again
                // if records wait, so engines take turns on the workers.
                let mut w = self.writer.lock();
                // From here on, records queued are this job's to lead (or
                // the running flush's): a new submitter calls a new job.
                w.leader_called = false;
                if w.flushing || w.queue.is_empty() {
                    return false;
                }
                self.lead_as(&mut w, Leader::Worker);
            }
            Job::Sync => {
                // A failure is logged and turns writes off inside sync().
                // The commit point goes after the records it covers.
                if let Ok(durable) = self.sync()
                    && let Err(e) = self.sync_commit(durable)
                {
                    tracing::error!(dir = %self.dir.display(), "fsync of the commit point failed: {e}");
                }
            }
            Job::Janitor => self.janitor_pass(),
            Job::Merge => {
                if self.merge_due()
                    && let Err(e) = self.merge()
                {
                    tracing::error!(dir = %self.dir.display(), "merge failed: {e}");
                }
            }
        }
        true
    }

    /// Queues a job of this engine on the pool.
    pub(super) fn schedule(&self, job: Job) {
        self.workers.schedule(&self.slot, job);
    }

    /// One janitor pass: the sweep and the merge check when due, the
    /// checkpoint and the hint files always.
    fn janitor_pass(&self) {
        let sweep_every = Duration::from_millis(self.opts.sweep_interval_ms.max(10));
        let merge_every = Duration::from_millis(self.opts.merge.check_interval_ms.max(10));
        let (sweep, merge) = self.slot.janitor_due(sweep_every, merge_every);
        if sweep {
            self.sweep_expired();
        }
        // Under `every_ms` the periodic fsync checkpoints the commit point
        // right after the log's fsync; otherwise it is done here (under
        // `always` every written record is durable; under `never` nothing
        // is promised).
        if !matches!(self.opts.fsync, Durability::EveryMs(_))
            && let Err(e) = self.sync_commit(u64::MAX)
        {
            tracing::error!(dir = %self.dir.display(), "checkpoint of the commit point failed: {e}");
        }
        if let Err(e) = self.write_missing_hints() {
            tracing::warn!(dir = %self.dir.display(), "writing hint files: {e}");
        }
        // Merges run on their own threads: a long one delays neither the
        // janitor's other engines nor any commit.
        if merge && self.merge_due() {
            self.schedule(Job::Merge);
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
