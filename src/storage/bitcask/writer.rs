//! The write path: offset assignment, group commit, segment rolling, and
//! applying written records to the keydir.
//!
//! Writers encode their record into a shared buffer under the writer mutex
//! and join the *batch* being built. One writer at a time is the *leader*:
//! it takes the whole batch, releases the mutex, hands the bytes to the OS in
//! one `write` (per segment) and, under `fsync: always`, one `fdatasync`,
//! then re-takes the mutex, applies the batch to the keydir and wakes the
//! others. Writers that arrive while a leader does I/O form the next batch,
//! so N concurrent writers share one fsync.
//!
//! Invariants:
//! - offsets are assigned under the mutex, so they increase in write order
//!   and records reach the file in offset order; a failed batch gives its
//!   offsets back, so the log has no gaps from failures;
//! - a record is applied to the keydir only after its batch was written
//!   (and fsynced under `always`): a read never sees an unacknowledged write;
//! - when a batch fails, everything queued behind it fails too (those writers
//!   may have decided on the failed records' effects), and the file is cut
//!   back so no partial record stays on disk;
//! - `unapplied` holds the newest not-yet-applied state of each key, so
//!   conditional writes and read-modify-writes (`INCRBY`, `APPEND`, ...,
//!   see `storage/ops.rs`) decide on the latest state, not the applied one.
//!
//! Replica mode (see `replica.rs`) changes one step: a written record is not
//! applied but pushed to `pending`, in offset order, until the replication
//! layer commits it. Then:
//! - `pending` holds exactly the written records at or above the commit
//!   point, in increasing offset order, and nothing below it;
//! - `unapplied` describes, for each key with a pending or queued record,
//!   the newest such record (so NX/XX decide on the newest written state);
//! - `written_end` is the end of the records whose batch finished; every
//!   record below it is on disk (and fsynced under `always`), none above it
//!   is pending.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hashbrown::HashMap;

use std::collections::VecDeque;

use super::keydir::{Entry, Key};
use super::record::Kind;
use super::segment::Segment;
use crate::storage::{Error, Result};

/// One record waiting in the current batch.
#[derive(Debug)]
pub(super) struct Queued {
    /// Its log offset.
    pub offset: u64,
    /// Its key.
    pub key: Key,
    /// Its kind.
    pub kind: Kind,
    /// Its expiry (0 = never).
    pub expire_at: u64,
    /// Encoded length.
    pub len: u32,
    /// The leader epoch stamped on it.
    pub epoch: u32,
}

/// A written record waiting for the commit point to pass it (replica mode).
#[derive(Debug)]
pub(super) struct Pending {
    /// Its log offset.
    pub offset: u64,
    /// Its key.
    pub key: Key,
    /// Its kind.
    pub kind: Kind,
    /// Where it is, as the keydir will hold it once applied.
    pub entry: Entry,
}

/// Where a written record landed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Location {
    /// Segment id.
    pub seg: u32,
    /// Byte position.
    pub pos: u32,
}

/// The outcome of one group commit, shared by every writer in it.
///
/// Blocking writers wait for it on the engine's `batch_done` condvar;
/// submitted (async) writers on `done`, which `finish` wakes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// `Ok` or the index of the first record that failed with the error.
    outcome: OnceLock<std::result::Result<(), (usize, Error)>>,
    /// Wakes the async waiters once `outcome` is set.
    done: tokio::sync::Notify,
}

impl Batch {
    /// Whether the batch has finished.
    pub fn is_done(&self) -> bool {
        self.outcome.get().is_some()
    }

    /// Finishes the batch and wakes its async waiters.
    pub fn finish(&self, outcome: std::result::Result<(), (usize, Error)>) {
        let _ = self.outcome.set(outcome);
        self.done.notify_waiters();
    }

    /// Waits, without blocking a thread, until the batch has finished.
    pub async fn finished(&self) {
        let notified = self.done.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a `finish` in between still wakes us.
        notified.as_mut().enable();
        if !self.is_done() {
            notified.await;
        }
    }

    /// The result for the record at `index` in the batch; the batch is done.
    pub fn result_for(&self, index: usize) -> Result<()> {
        match self.outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err((first_failed, _))) if index < *first_failed => Ok(()),
            Some(Err((_, e))) => Err(e.duplicate()),
            None => Err(Error::Closed),
        }
    }
}

/// What an unapplied record leaves its key with.
#[derive(Debug)]
pub(super) enum State {
    /// Nothing: a delete.
    Absent,
    /// This value and expiry (0 = never), known in memory.
    Value(Bytes, u64),
    /// The value of the written record at this location (records appended
    /// from a leader, or restored after a failure); read when needed.
    Stored(Entry),
}

/// The newest written-but-not-applied state of a key.
#[derive(Debug)]
pub(super) struct Unapplied {
    /// Offset of the record that produced it.
    pub offset: u64,
    /// The state it leaves.
    pub state: State,
    /// The batch the record is in.
    pub batch: Arc<Batch>,
}

impl Unapplied {
    /// The unapplied state of a pending (written) record.
    pub fn of_pending(p: &Pending, batch: &Arc<Batch>) -> Unapplied {
        Unapplied {
            offset: p.offset,
            state: if p.kind.is_put_like() {
                State::Stored(p.entry)
            } else {
                State::Absent
            },
            batch: batch.clone(),
        }
    }
}

/// State behind the writer mutex.
pub(super) struct Writer {
    /// The segment appended to.
    pub active: Arc<Segment>,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Leader epoch stamped on new records.
    pub epoch: u32,
    /// Encoded records of the batch being built.
    pub buf: Vec<u8>,
    /// The records in `buf`, in order.
    pub queue: Vec<Queued>,
    /// Buffers of a finished batch, kept for the next one (no allocation
    /// per batch).
    spare: (Vec<u8>, Vec<Queued>),
    /// The batch being built.
    pub batch: Arc<Batch>,
    /// A leader is doing I/O.
    pub flushing: bool,
    /// A commit job was queued for the records waiting and has not yet
    /// looked at them (see `Inner::call_leader`): no other is queued.
    pub leader_called: bool,
    /// A background or explicit fsync is running (writers go on).
    pub syncing: bool,
    /// A truncation is rewriting the log (with `flushing` set): no record
    /// may be queued until it ends (its offset would be stale).
    pub truncating: bool,
    /// Newest unapplied state per key.
    pub unapplied: HashMap<Key, Unapplied>,
    /// Set after an I/O failure that could not be undone: writes are refused.
    pub refused: Option<crate::storage::Text>,
    /// Bytes were written since the last fsync.
    pub dirty: bool,
    /// The engine is closed.
    pub closed: bool,
    /// Written, uncommitted records in offset order (replica mode only).
    pub pending: VecDeque<Pending>,
    /// End of the records whose batch finished.
    pub written_end: u64,
    /// Leader-epoch cache: (epoch, offset of its first record), ascending
    /// (replica mode only).
    pub epochs: Vec<(u32, u64)>,
    /// The last batches written, in memory (replica mode only; see
    /// [`super::tail`]).
    pub tail: super::tail::Tail,
}

impl Writer {
    /// A writer appending to `active` from `next_offset`.
    pub fn new(active: Arc<Segment>, next_offset: u64) -> Writer {
        Writer {
            active,
            next_offset,
            epoch: 0,
            buf: Vec::with_capacity(64 << 10),
            queue: Vec::new(),
            spare: (Vec::new(), Vec::new()),
            batch: Arc::new(Batch::default()),
            flushing: false,
            leader_called: false,
            syncing: false,
            truncating: false,
            unapplied: HashMap::new(),
            refused: None,
            dirty: false,
            closed: false,
            pending: VecDeque::new(),
            written_end: next_offset,
            epochs: Vec::new(),
            tail: super::tail::Tail::default(),
        }
    }

    /// Forgets every unapplied state and rebuilds it from `pending` (replica
    /// mode, after a failure or a truncation, when nothing is queued).
    pub fn rebuild_unapplied(&mut self) {
        self.unapplied.clear();
        let done = Arc::new(Batch::default());
        done.finish(Ok(()));
        for p in &self.pending {
            self.unapplied
                .insert(p.key.clone(), Unapplied::of_pending(p, &done));
        }
    }

    /// Records that a record of `epoch` was written at `offset`; returns
    /// whether the epoch cache changed.
    pub fn note_epoch(&mut self, epoch: u32, offset: u64) -> bool {
        if self.epochs.last().is_some_and(|&(e, _)| e >= epoch) {
            return false;
        }
        self.epochs.push((epoch, offset));
        true
    }

    /// Whether a commit job must be queued for the records waiting: none
    /// is queued that has not looked at them yet and no flush runs (its
    /// end queues one). Notes the job as queued; the caller queues it.
    pub fn needs_leader(&mut self) -> bool {
        if self.flushing || self.leader_called || self.queue.is_empty() {
            return false;
        }
        self.leader_called = true;
        true
    }

    /// Fails fast when writes cannot be taken.
    pub fn check_writable(&self) -> Result<()> {
        if self.closed {
            return Err(Error::Closed);
        }
        if let Some(why) = &self.refused {
            return Err(Error::WritesRefused(why.clone()));
        }
        Ok(())
    }

    /// Encodes a record into the batch being built. Returns the batch, the
    /// record's index in it and its offset.
    pub fn enqueue(
        &mut self,
        key: &[u8],
        kind: Kind,
        value: Bytes,
        expire_at: u64,
    ) -> (Arc<Batch>, usize, u64) {
        let offset = self.next_offset;
        self.next_offset += 1;
        let len = super::record::encode(
            &mut self.buf,
            offset,
            self.epoch,
            (expire_at != 0).then_some(expire_at),
            kind,
            key,
            &value,
        );
        let index = self.queue.len();
        self.queue.push(Queued {
            offset,
            key: Key::from_slice(key),
            kind,
            expire_at,
            len: len as u32,
            epoch: self.epoch,
        });
        self.unapplied.insert(
            Key::from_slice(key),
            Unapplied {
                offset,
                state: if kind.is_put_like() {
                    State::Value(value, expire_at)
                } else {
                    State::Absent
                },
                batch: self.batch.clone(),
            },
        );
        (self.batch.clone(), index, offset)
    }

    /// Takes the batch being built for a leader to write.
    pub fn take_batch(&mut self) -> (Vec<u8>, Vec<Queued>, Arc<Batch>) {
        let (spare_buf, spare_queue) = std::mem::take(&mut self.spare);
        let buf = std::mem::replace(&mut self.buf, spare_buf);
        let queue = std::mem::replace(&mut self.queue, spare_queue);
        let batch = std::mem::replace(&mut self.batch, Arc::new(Batch::default()));
        (buf, queue, batch)
    }

    /// Keeps a finished batch's buffers for reuse (small ones only).
    pub fn recycle(&mut self, mut buf: Vec<u8>, mut queue: Vec<Queued>) {
        if buf.capacity() <= 1 << 20 && self.spare.0.capacity() == 0 {
            buf.clear();
            queue.clear();
            self.spare = (buf, queue);
        }
    }

    /// Forgets the unapplied state that `queued` produced, unless a newer
    /// record of the same key has replaced it.
    pub fn settle(&mut self, queued: &[Queued]) {
        for q in queued {
            if self
                .unapplied
                .get(&q.key)
                .is_some_and(|u| u.offset == q.offset)
            {
                self.unapplied.remove(&q.key);
            }
        }
    }

    /// Fails the batch being built (after a failure ahead of it) and gives
    /// back its offsets, which start at `first_offset`.
    pub fn fail_pending(&mut self, first_offset: u64, err: &Error) {
        let (_, queue, batch) = self.take_batch();
        self.settle(&queue);
        batch.finish(Err((0, err.duplicate())));
        self.next_offset = first_offset;
    }
}
