//! Replica mode: records become visible when the replication layer commits
//! them, as a Raft state machine applies its log. This module owns the commit
//! point (`COMMITTED`), the leader-epoch cache (`EPOCHS`), appending records
//! fetched from a leader, and applying pending records on commit.
//!
//! `COMMITTED` holds two slots, at bytes 0 and 512 (separate sectors), each
//! 24 bytes, little endian:
//!
//! ```text
//! magic "CSKC" | seq u64 | committed u64 | crc32 u32 of the 20 bytes before it
//! ```
//!
//! A write goes to the slot the previous one did not use, with `seq` one
//! higher, so a torn write can only damage the slot being written; at open
//! the valid slot with the highest `seq` wins. The file is created with its
//! first slot through a temporary name (written, fsynced, renamed, directory
//! fsynced); a file whose first slot is blank and second torn (the first
//! write of an older version, in place) reads as commit point 0, the only
//! value that write could hold. A failed fsync of `COMMITTED` refuses
//! writes until reopen (fsyncgate). It is written with `pwrite` on
//! every commit (it survives a process crash at once) and fsynced when the
//! engine fsyncs: before `commit` returns under `always`, by the background
//! flusher under `every_ms`, on `flush` and close.
//!
//! `EPOCHS` (rewritten through a temporary name, fsynced, renamed, when the
//! cache changes, which happens once per leader epoch):
//!
//! ```text
//! magic "CSKE" | version u8 = 1 | 3 zero bytes | count u32
//! count x ( epoch u32 | start offset u64 ) | crc32 u32 of every byte before it
//! ```
//!
//! Invariants:
//! - the commit point never moves backwards, except through an unclean
//!   truncation (logged as data loss); it is at most `written_end`, and at
//!   open it is capped at the log end (and the capped value persisted, so a
//!   record written later at those offsets is not taken as committed);
//! - records below the commit point are applied to the keydir; records at or
//!   above it are in `Writer::pending`, in offset order, and readers do not
//!   see them;
//! - the epoch cache lists every epoch present in the log, ascending, with
//!   the offset of its first record; a missing or inconsistent `EPOCHS` file
//!   is rebuilt from the record headers at open (the file is a cache, the log
//!   is the truth);
//! - a follower never writes records of its own: appended records keep their
//!   offset and epoch, byte for byte;
//! - a leader's writes and commits carry its leader epoch
//!   ([`super::Bitcask::write_at`], [`super::Bitcask::submit_at`],
//!   [`super::Bitcask::commit_at`]) and are refused (`NotLeader`, nothing
//!   written or committed) unless the engine leads at that epoch;
//!   [`super::Bitcask::step_down`] first writes every local write already
//!   queued, then leaves the leader role under the writer mutex, so no
//!   leader write lands after it (in particular not after a follower's
//!   truncation);
//! - appended records follow the log without a gap at or above the leader's
//!   dense point (gaps exist only where the leader merged committed records
//!   away), and offsets never reach `u64::MAX`.

mod append;
mod commit_file;
mod epochs;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::flush::fsync_failed;
use super::keydir::{Entry, Fill};
use super::writer::{Location, Pending, Queued, State, Writer};
use super::{Inner, apply_one};
use crate::storage::{Durability, Error, Result};

pub(super) use self::commit_file::CommitFile;
pub(super) use self::epochs::{load_epochs, save_epochs, scan_epochs};

/// Name of the commit point file.
pub(super) const COMMITTED_FILE: &str = "COMMITTED";
/// Name of the leader-epoch cache file.
pub(super) const EPOCHS_FILE: &str = "EPOCHS";

/// Magic of a `COMMITTED` slot.
const COMMIT_MAGIC: &[u8; 4] = b"CSKC";
/// Bytes of a `COMMITTED` slot.
const SLOT_LEN: usize = 24;
/// Distance between the two slots (so they are in different sectors).
const SLOT_STRIDE: u64 = 512;

/// Magic of the `EPOCHS` file.
const EPOCHS_MAGIC: &[u8; 4] = b"CSKE";
/// Version of the `EPOCHS` format.
const EPOCHS_VERSION: u8 = 1;

/// [`Replica::role`]: the engine has not been told its role (opened, not
/// yet led or followed): local writes without a stamp are accepted.
pub(super) const ROLE_UNSET: u64 = u64::MAX;
/// [`Replica::role`]: following (stepped down): no local write or leader
/// commit is accepted.
pub(super) const ROLE_FOLLOWER: u64 = u64::MAX - 1;

/// Replica-mode state shared by the engine's threads.
pub(super) struct Replica {
    /// The role the replication layer gave the engine: a leader epoch (the
    /// engine leads at it), [`ROLE_FOLLOWER`] or [`ROLE_UNSET`]. Changed
    /// only under the writer mutex, and checked under it before a local
    /// write is queued, so a write admitted under one role is written (or
    /// fails) before the role changes.
    pub role: AtomicU64,
    /// The commit point: records below it are applied.
    pub committed: AtomicU64,
    /// Tombstones and expired records at or above this offset survive merge.
    pub retain_from: AtomicU64,
    /// The `COMMITTED` file. Its own mutex, so its fsync under `always` does
    /// not hold up writers.
    pub file: Mutex<CommitFile>,
}

/// The engine's role, for messages.
fn describe_role(role: u64) -> String {
    match role {
        ROLE_UNSET => "the replica has no role yet".into(),
        ROLE_FOLLOWER => "the replica follows".into(),
        e => format!("the replica leads at epoch {e}"),
    }
}

impl super::Bitcask {
    /// [`super::Bitcask::append_replicated`] that also refuses a gap in the
    /// offsets (between the log end and the first record, or between two
    /// records) that reaches past `dense_from`: a leader's log has gaps only
    /// where merge removed committed records, so below its commit point
    /// (the follower passes the high watermark of the leader's answer).
    pub fn append_replicated_dense(&self, records: &[u8], dense_from: u64) -> Result<usize> {
        self.inner.append_replicated_dense(records, dense_from)
    }

    /// [`super::Bitcask::append_replicated_dense`] when it is one `write(2)`
    /// to the page cache (no fsync under `every_ms`/`never`, no roll, no
    /// other batch's I/O to wait for); `None`, nothing done, otherwise.
    /// Async callers call it on a runtime thread, as a submitted write
    /// writes (docs/STORAGE.md, "Submitted writes"), and fall back to the
    /// blocking call off it.
    pub fn append_replicated_now(&self, records: &[u8], dense_from: u64) -> Option<Result<usize>> {
        self.inner
            .append_replicated_as(records, dense_from, true)
            .transpose()
    }

    /// A leader's [`super::Bitcask::write`], stamped with its leader
    /// `epoch`: refused with [`Error::NotLeader`] (nothing written) unless
    /// the engine leads at `epoch` ([`super::Bitcask::set_epoch`], and no
    /// [`super::Bitcask::step_down`] since).
    pub fn write_at(&self, key: &[u8], op: super::WriteOp, epoch: u32) -> Result<super::Written> {
        self.inner.write(key, op, Some(epoch))
    }

    /// A leader's [`super::Bitcask::submit`], stamped with its leader
    /// `epoch`, refused as [`super::Bitcask::write_at`] is.
    pub fn submit_at(
        &self,
        key: &[u8],
        op: &super::WriteOp,
        epoch: u32,
    ) -> Result<super::Submitted> {
        self.inner.submit(key, op, Some(epoch))
    }

    /// A leader's [`super::Bitcask::commit`], stamped with its leader
    /// `epoch`: refused with [`Error::NotLeader`] (nothing committed)
    /// unless the engine leads at `epoch`.
    pub fn commit_at(&self, hw: u64, epoch: u32) -> Result<u64> {
        self.inner.commit_as(hw, Some(epoch))
    }

    /// Leaves the leader role (replica mode): writes the local writes
    /// already queued (their writers get their answers), then refuses every
    /// stamped write and commit, and unstamped local writes, until the next
    /// [`super::Bitcask::set_epoch`]. Blocks while a group commit runs: call
    /// it off the async runtime.
    pub fn step_down(&self) -> Result<()> {
        self.inner.step_down()
    }
}

impl Inner {
    /// The replica-mode state, or an error naming `what` in standalone mode.
    fn replica(&self, what: &str) -> Result<&Replica> {
        self.replica.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!("{what} needs an engine opened in replica mode"))
        })
    }

    /// Queues written records for commit (replica mode) and notes their
    /// epochs, rewriting `EPOCHS` if a new epoch starts.
    pub(super) fn stage(&self, w: &mut Writer, queue: &[Queued], locations: &[Location]) {
        let mut changed = false;
        for (q, loc) in queue.iter().zip(locations) {
            w.pending.push_back(Pending {
                offset: q.offset,
                key: q.key.clone(),
                kind: q.kind,
                entry: Entry {
                    seg: loc.seg,
                    pos: loc.pos,
                    len: q.len,
                    expire_at: q.expire_at,
                },
            });
            changed |= w.note_epoch(q.epoch, q.offset);
        }
        if changed && let Err(e) = save_epochs(&self.dir, &w.epochs) {
            // The file is a cache: open rebuilds it from the log.
            tracing::warn!(dir = %self.dir.display(), "saving the epoch cache: {e}");
        }
    }

    /// See [`super::Bitcask::set_epoch`].
    pub(super) fn set_epoch(&self, epoch: u32) -> Result<()> {
        let rep = self.replica("set_epoch")?;
        let mut w = self.writer.lock();
        let floor = w.epoch.max(w.epochs.last().map_or(0, |e| e.0));
        if epoch < floor {
            return Err(Error::InvalidInput(format!(
                "leader epoch {epoch} is below the current epoch {floor}"
            )));
        }
        w.epoch = epoch;
        rep.role.store(u64::from(epoch), Ordering::Release);
        Ok(())
    }

    /// Whether a local write stamped `leader` may be queued now (called
    /// under the writer mutex). A stamped write needs the engine to lead at
    /// that epoch; an unstamped one (standalone, tools, tests) is refused
    /// only once the engine follows. Standalone mode accepts everything.
    pub(super) fn check_role(&self, leader: Option<u32>) -> Result<()> {
        let Some(rep) = &self.replica else {
            return Ok(());
        };
        let role = rep.role.load(Ordering::Acquire);
        match leader {
            Some(epoch) if role == u64::from(epoch) => Ok(()),
            None if role != ROLE_FOLLOWER => Ok(()),
            _ => Err(Error::NotLeader(format!(
                "{}: {} (the write was stamped {}); nothing written",
                self.dir.display(),
                describe_role(role),
                leader.map_or("with no epoch".to_string(), |e| format!("with epoch {e}"))
            ))),
        }
    }

    /// See [`super::Bitcask::step_down`].
    pub(super) fn step_down(&self) -> Result<()> {
        let rep = self.replica("step_down")?;
        let mut w = self.writer.lock();
        // Writes admitted under the old role go first (they may fail: then
        // their writers are told so). The role changes under the mutex, so
        // none is admitted after this loop.
        loop {
            if w.flushing {
                self.batch_done.wait(&mut w);
            } else if !w.queue.is_empty() && w.check_writable().is_ok() {
                self.lead(&mut w);
            } else {
                break;
            }
        }
        rep.role.store(ROLE_FOLLOWER, Ordering::Release);
        Ok(())
    }

    /// Applies the pending records below `target`, in offset order.
    /// Returns the values of the local writes among them, for the caller
    /// to offer to the value cache once it has released the writer mutex
    /// ([`super::keydir::KeyDir::fill`]): a fill is a lock, a copy and an
    /// allocation per record, and writers contend for that mutex. A late
    /// fill is safe: it is tagged with its record's location, served only
    /// while the key's entry still points there.
    pub(super) fn apply_pending(&self, w: &mut Writer, target: u64) -> Vec<Fill> {
        let mut fills = Vec::new();
        let segments = self.segments.read();
        while w.pending.front().is_some_and(|p| p.offset < target) {
            let Some(p) = w.pending.pop_front() else {
                break;
            };
            // The key's newest unapplied state, if this record left it: a
            // local write (on a leader) holds its value in memory, which is
            // offered to the value cache; a record appended from a leader
            // holds only its location, and is not cached (see `cache.rs`).
            let newest = w
                .unapplied
                .get(&p.key)
                .is_some_and(|u| u.offset == p.offset);
            let state = if newest {
                w.unapplied.remove(&p.key).map(|u| u.state)
            } else {
                None
            };
            apply_one(
                &self.keydir,
                &p.key,
                p.kind,
                p.entry,
                None,
                &mut |id, bytes| segments.add_dead(id, bytes),
            );
            if let Some(State::Value(value, _)) = state
                && p.kind.is_put_like()
            {
                fills.push((p.key, p.entry, value));
            }
        }
        fills
    }

    /// See [`super::Bitcask::commit`].
    pub(super) fn commit_to(&self, hw: u64) -> Result<u64> {
        self.commit_as(hw, None)
    }

    /// [`Inner::commit_to`]; with `leader`, only while the engine leads at
    /// that epoch (checked under the writer mutex, as the step-down changes
    /// the role under it).
    pub(super) fn commit_as(&self, hw: u64, leader: Option<u32>) -> Result<u64> {
        let Some(rep) = &self.replica else {
            return Ok(self.writer.lock().next_offset);
        };
        {
            let mut w = self.writer.lock();
            if let Some(epoch) = leader {
                let role = rep.role.load(Ordering::Acquire);
                if role != u64::from(epoch) {
                    return Err(Error::NotLeader(format!(
                        "{}: {}; a commit of offset {hw} stamped with epoch {epoch} is refused",
                        self.dir.display(),
                        describe_role(role)
                    )));
                }
            }
            let target = hw.min(w.written_end);
            let current = rep.committed.load(Ordering::Acquire);
            if target <= current {
                return Ok(current);
            }
            let fills = self.apply_pending(&mut w, target);
            rep.committed.store(target, Ordering::Release);
            drop(w);
            for (key, entry, value) in fills {
                self.keydir.fill(&key, entry, &value);
            }
        }
        // No I/O here: the commit point is checkpointed to `COMMITTED` in
        // the background (`sync_commit`), as Kafka checkpoints its high
        // watermark.
        Ok(rep.committed.load(Ordering::Acquire))
    }

    /// Writes the current commit point to `COMMITTED`, fsynced if `sync`.
    pub(super) fn persist_commit(&self, rep: &Replica, sync: bool, durable: u64) -> Result<()> {
        let mut file = rep.file.lock();
        // Read under the file's mutex: concurrent commits write in order.
        // Never past the durable log end.
        let value = rep.committed.load(Ordering::Acquire).min(durable);
        file.store(value, false)?;
        if !sync {
            return Ok(());
        }
        let synced = file.sync();
        drop(file);
        if let Err(e) = &synced {
            // fsyncgate: a retried fsync could succeed without the slot on
            // disk. Not under the file's mutex (the writer mutex comes first).
            self.refuse_unlocked(fsync_failed(e));
        }
        synced
    }

    /// Checkpoints the commit point, capped at `durable` (the log end
    /// below which records are known durable, from [`Inner::sync`]; under
    /// `always` every written record is, so callers pass `u64::MAX`): writes
    /// it to `COMMITTED` if it moved, and fsyncs the file if it was written
    /// since its last fsync (except under `never`). So the persisted commit
    /// point never covers a record that is not durable.
    pub(super) fn sync_commit(&self, durable: u64) -> Result<()> {
        match &self.replica {
            Some(rep) => self.persist_commit(rep, self.opts.fsync != Durability::Never, durable),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
