//! Flushing batches to disk: the group-commit leader's I/O, segment rolling,
//! and the fsync policy.
//!
//! The leader of a group commit ([`Inner::lead`]) takes the batch being
//! built, releases the writer mutex, hands the bytes to the OS
//! ([`Inner::write_out`]: one `write(2)` per segment, rolling to a new
//! segment when the active one is full) and fsyncs them under `always`;
//! then it re-takes the mutex and applies the batch. [`Inner::sync`] is the
//! fsync of `every_ms` (background) and of `flush`.
//!
//! Invariants:
//! - a segment is sealed only after its bytes are fsynced, whatever the
//!   policy;
//! - a failed batch leaves no partial record on disk: the file is cut back
//!   (and the cut fsynced after a failed fsync), and if that cut fails the
//!   engine refuses writes;
//! - the fsyncgate rule: any failed fsync of a segment file, of the data
//!   directory or of `COMMITTED` (here, in truncation, in merge's install,
//!   in the checkpoint) means acknowledged writes may not be durable — the
//!   kernel may have dropped the dirty pages and a retried fsync would
//!   report success. The engine then refuses writes ([`Inner::refuse`])
//!   and `flush` fails, under every policy, until it is reopened (recovery
//!   then trusts only what is on disk). Reads go on. Hint and `EPOCHS`
//!   files are caches rebuilt from the log: a failure there is logged;
//! - a failed directory fsync after a roll created the next segment is an
//!   fsync failure like any other: writes stop until reopen (the new, empty
//!   file stays and is the active segment after reopen), rather than every
//!   later roll failing on the leftover file;
//! - a roll publishes the full segment as sealed before the batch that
//!   rolled is applied; merge therefore bounds its inputs by the applied
//!   end (see `merge.rs`), not by what is sealed;
//! - one commit job per batch of submitted records: a submitter queues one
//!   only when no flush runs and none is queued that has not yet looked at
//!   the records (`Writer::leader_called`, cleared by the job under the
//!   writer mutex); a flush's end queues the next if records wait. So
//!   records are never stranded (whoever ends a flush sees them, and a
//!   queued job takes the mutex after the records it was called for), and
//!   the submitters of a batch that forms during an fsync wake no thread;
//! - every fsync of a segment file, failed or not, is counted and its
//!   latency recorded (`Status::fsync_latency`: relaxed atomics, no lock),
//!   outside the writer mutex like the fsync itself.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::keydir::Entry;
use super::record::HEADER_LEN;
use super::segment::Segment;
use super::writer::{Location, Queued, Writer};
use super::{Inner, apply_one};
use crate::storage::error::IoContext;
use crate::storage::{Durability, Error, Result, Text};

/// Who leads a group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leader {
    /// A writer, `close`, or any caller other than a commit job.
    Caller,
    /// A commit worker running the engine's commit job.
    Worker,
}

/// Longest time a group-commit leader waits for writers that are on their
/// way (inside `write`, not yet queued) to join its batch. Without it, N
/// writers settle into two alternating groups of N/2 per fsync.
const GATHER: Duration = Duration::from_micros(200);

impl Inner {
    /// Leads one group commit: writes the batch being built, applies it,
    /// wakes its writers.
    ///
    /// The I/O runs without the mutex, so the next batch forms meanwhile
    /// and the mutex is never held across I/O (async submitters take it on
    /// runtime threads). Under `always` the leader first gathers the
    /// blocking writers on their way, so they share the fsync.
    pub(super) fn lead(&self, w: &mut MutexGuard<'_, Writer>) {
        self.lead_as(w, Leader::Caller);
    }

    /// [`Inner::lead`] by `who`: a commit worker leading its job hands the
    /// records queued meanwhile to itself (see [`Inner::end_flush_as`]).
    pub(super) fn lead_as(&self, w: &mut MutexGuard<'_, Writer>, who: Leader) {
        let sync = self.opts.fsync == Durability::Always;
        w.flushing = true;
        if sync {
            let deadline = Instant::now() + GATHER;
            while w.queue.len() < self.in_flight.load(Ordering::SeqCst)
                && !self.enqueued.wait_until(w, deadline).timed_out()
            {}
        }
        let (buf, queue, batch) = w.take_batch();
        if queue.is_empty() {
            batch.finish(Ok(()));
            w.recycle(buf, queue);
            self.end_flush_as(w, who);
            return;
        }
        let active = w.active.clone();
        let written = MutexGuard::unlocked(w, || self.write_out(active, &buf, &queue, sync));
        let rolled = written.new_active.is_some();
        if let Some(seg) = written.new_active {
            w.active = seg;
        }
        let ok = written.locations.len();
        if self.replica.is_some() {
            // Replica mode: applied on commit; `unapplied` keeps the state.
            self.stage(w, &queue[..ok], &written.locations);
        } else {
            self.apply(&buf, &queue[..ok], &written.locations);
            w.settle(&queue);
        }
        if self.replica.is_some() {
            w.keep_tail(&buf, &queue, ok, rolled || written.error.is_some());
        }
        if ok > 0 {
            w.written_end = queue[ok - 1].offset + 1;
        }
        w.dirty |= ok > 0 && !sync;
        self.stats.records.fetch_add(ok as u64, Ordering::Relaxed);
        match written.error {
            None => batch.finish(Ok(())),
            Some(err) => {
                tracing::error!(dir = %self.dir.display(), "write failed: {err}");
                if let Some(why) = written.refuse {
                    self.refuse(w, why);
                }
                w.fail_pending(queue[ok].offset, &err);
                if self.replica.is_some() {
                    w.rebuild_unapplied();
                }
                batch.finish(Err((ok, err)));
            }
        }
        w.recycle(buf, queue);
        self.end_flush_as(w, who);
    }

    /// Ends the I/O that set `flushing`: wakes the blocking writers waiting
    /// for it and, when records were queued meanwhile, queues the engine
    /// for a commit worker (which leads them unless a blocking writer,
    /// an async submitter or `close` does first). Every path that sets
    /// `flushing` ends through here, so no queued record is stranded.
    pub(super) fn end_flush(&self, w: &mut Writer) {
        self.end_flush_as(w, Leader::Caller);
    }

    /// [`Inner::end_flush`] by `who`. A commit worker ending its own batch
    /// queues the engine without waking another worker when nothing else
    /// waits in the queue: it takes that job itself as soon as it returns,
    /// so back-to-back batches cost no thread wake-up.
    pub(super) fn end_flush_as(&self, w: &mut Writer, who: Leader) {
        w.flushing = false;
        self.batch_done.notify_all();
        if !w.queue.is_empty() {
            self.call_leader(w, who == Leader::Worker);
        }
    }

    /// Queues a commit job for the records waiting unless one is queued
    /// that has not looked at them yet (`leader_called`) or a flush runs
    /// (its `end_flush` calls one). So while a batch is written, the
    /// submitters of the next one wake no thread, and one commit job is
    /// queued per batch. `by_worker`: called by a commit worker that takes
    /// the job itself (no wake-up when the queue is otherwise empty).
    pub(super) fn call_leader(&self, w: &mut Writer, by_worker: bool) {
        if w.needs_leader() {
            self.workers.schedule_commit(&self.slot, by_worker);
        }
    }

    /// Applies written records to the keydir (standalone mode), offering
    /// each put-like record's value, sliced from the batch buffer `buf` the
    /// records were encoded in, to the value cache.
    fn apply(&self, buf: &[u8], queue: &[Queued], locations: &[Location]) {
        let segments = self.segments.read();
        let mut at = 0usize;
        for (q, loc) in queue.iter().zip(locations) {
            let entry = Entry {
                seg: loc.seg,
                pos: loc.pos,
                len: q.len,
                expire_at: q.expire_at,
            };
            // The record is header, key, value (record.rs).
            let end = at + q.len as usize;
            let value = buf.get(at + HEADER_LEN + q.key.len()..end);
            apply_one(
                &self.keydir,
                &q.key,
                q.kind,
                entry,
                value,
                &mut |id, bytes| segments.add_dead(id, bytes),
            );
            at = end;
        }
    }

    /// fsyncs the active segment if anything was written since the last
    /// fsync; returns the log end below which every written record is
    /// durable. Writers go on meanwhile: the fsync covers the batches
    /// finished before it started (`written_end` then), and a batch written
    /// during it leaves the segment dirty for the next one. (Making writers
    /// wait added the fsync's duration, up to tens of ms on a busy disk, to
    /// every write arriving during it.) Concurrent
    /// syncs wait for each other, so none reports data the other has not
    /// made durable yet.
    pub(super) fn sync(&self) -> Result<u64> {
        let mut w = self.writer.lock();
        while w.syncing {
            self.batch_done.wait(&mut w);
        }
        if let Some(why) = &w.refused {
            // After a failed fsync nothing may be reported durable again,
            // not even by an fsync that now succeeds.
            return Err(Error::WritesRefused(why.clone()));
        }
        let covered = w.written_end;
        if !w.dirty {
            return Ok(covered);
        }
        w.syncing = true;
        w.dirty = false;
        let active = w.active.clone();
        let result = MutexGuard::unlocked(&mut w, || {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            // A roll may seal (and close) it meanwhile, after its own fsync.
            let started = Instant::now();
            let r = active.sync_data();
            self.stats.fsync_latency.observe(started.elapsed());
            r.ctx_at("fsync", &active.path)
        });
        w.syncing = false;
        if let Err(e) = &result {
            // Acknowledged writes since the last fsync may not be durable and
            // the page cache may have dropped them: never pretend otherwise.
            self.refuse(&mut w, fsync_failed(e));
        }
        self.batch_done.notify_all();
        result.map(|()| covered)
    }

    /// Puts the engine in the refuse-writes state until it is reopened
    /// (the first reason is kept). Callers hold the writer mutex.
    pub(super) fn refuse(&self, w: &mut Writer, why: Text) {
        tracing::error!(dir = %self.dir.display(), "refusing writes until reopened: {why}");
        if w.refused.is_none() {
            w.refused = Some(why);
        }
    }

    /// [`Inner::refuse`] for callers without the writer mutex.
    pub(super) fn refuse_unlocked(&self, why: Text) {
        let mut w = self.writer.lock();
        self.refuse(&mut w, why);
    }

    /// fsyncs the data directory; a failure refuses writes (fsyncgate).
    /// Not under the writer mutex.
    pub(super) fn sync_data_dir(&self) -> Result<()> {
        let result = sync_dir(&self.dir);
        if let Err(e) = &result {
            self.refuse_unlocked(fsync_failed(e));
        }
        result
    }
}

/// The refusal reason after a failed fsync.
pub(super) fn fsync_failed(e: &Error) -> Text {
    const REST: &str = "writes acknowledged since the previous fsync may not be durable; reopen the engine (restart the node)";
    // Clients get the OS error alone: the operation is this text's own.
    let os = match e {
        Error::Io { source, .. } => source.to_string(),
        e => e.client_message(),
    };
    Text::new(
        format!("fsync failed ({e}); {REST}"),
        format!("fsync failed ({os}); {REST}"),
    )
}

/// A failed step of the leader's I/O: the error, and the reason to refuse
/// writes from now on if the failure calls for it.
type Failed = (Error, Option<Text>);

/// What the leader's I/O achieved.
pub(super) struct WriteOut {
    /// Locations of the records written, a prefix of the batch.
    pub(super) locations: Vec<Location>,
    /// The new active segment, if the batch rolled over.
    pub(super) new_active: Option<Arc<Segment>>,
    /// Why the rest of the batch failed.
    pub(super) error: Option<Error>,
    /// Why writes must be refused from now on: an fsync failed, or a
    /// failure could not be cleaned up.
    pub(super) refuse: Option<Text>,
}

impl Inner {
    /// Hands a batch to the OS, rolling segments as they fill, and fsyncs it
    /// if `sync`. Runs without the writer mutex; only the leader calls it.
    pub(super) fn write_out(
        &self,
        active: Arc<Segment>,
        buf: &[u8],
        queue: &[Queued],
        sync: bool,
    ) -> WriteOut {
        let mut out = WriteOut {
            locations: Vec::with_capacity(queue.len()),
            new_active: None,
            error: None,
            refuse: None,
        };
        let mut seg = active;
        // Bytes [chunk_start, at) of buf go to `seg` in one write; `pending`
        // holds their records' locations until that write succeeds.
        let (mut chunk_start, mut at) = (0usize, 0usize);
        let mut pending = Vec::with_capacity(queue.len());
        for q in queue {
            let len = q.len as usize;
            let seg_len = seg.len() + (at - chunk_start) as u64;
            if seg_len > 0 && seg_len + len as u64 > self.opts.segment_bytes {
                // The segment is full: its chunk must be durable before the
                // segment is sealed, whatever the policy.
                if let Err(e) = self.write_chunk(&seg, &buf[chunk_start..at], true) {
                    (out.error, out.refuse) = (Some(e.0), e.1);
                    return out;
                }
                out.locations.append(&mut pending);
                match self.roll(&seg, q.offset) {
                    Ok(next) => {
                        seg = next.clone();
                        out.new_active = Some(next);
                        // Tests open the window between a roll and the
                        // apply of the batch that rolled.
                        fail::fail_point!("bitcask::after_roll");
                    }
                    Err(e) => {
                        (out.error, out.refuse) = (Some(e.0), e.1);
                        return out;
                    }
                }
                chunk_start = at;
            }
            pending.push(Location {
                seg: seg.id,
                pos: (seg.len() + (at - chunk_start) as u64) as u32,
            });
            at += len;
        }
        if let Err(e) = self.write_chunk(&seg, &buf[chunk_start..at], sync) {
            (out.error, out.refuse) = (Some(e.0), e.1);
            return out;
        }
        out.locations.append(&mut pending);
        out
    }

    /// Appends `bytes` to `seg`, fsyncs them if `sync`, and publishes them to
    /// readers. On failure the file is cut back to where it was (durably
    /// after a failed fsync, so the records can never reappear). The error
    /// comes with the reason to refuse writes from now on, if there is one:
    /// any failed fsync (fsyncgate; the cut does not make earlier
    /// acknowledged, unsynced writes durable), or a cut that failed.
    fn write_chunk(
        &self,
        seg: &Segment,
        bytes: &[u8],
        sync: bool,
    ) -> std::result::Result<(), Failed> {
        let before = seg.len();
        if !bytes.is_empty()
            && let Err(e) = seg.file().and_then(|f| write_all(&f, bytes))
        {
            let err = Error::io_at("write", &seg.path, e);
            let refuse = seg.file().and_then(|f| f.set_len(before)).err().map(|cut_err| {
                Text::new(
                    format!("an I/O error could not be undone ({err}, then {cut_err}); reopen the engine (restart the node)"),
                    format!("an I/O error could not be undone ({}, then {cut_err}); reopen the engine (restart the node)", err.client_message()),
                )
            });
            return Err((err, refuse));
        }
        if sync {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let synced = seg.file().and_then(|f| fsync(&f));
            self.stats.fsync_latency.observe(started.elapsed());
            if let Err(e) = synced {
                let err = Error::io_at("fsync", &seg.path, e);
                if let Err(cut_err) = cut(seg, before) {
                    tracing::error!(dir = %self.dir.display(), "cutting {} after a failed fsync: {cut_err}", seg.path.display());
                }
                let why = fsync_failed(&err);
                return Err((err, Some(why)));
            }
        }
        seg.set_len(before + bytes.len() as u64);
        Ok(())
    }

    /// Creates the next active segment, whose base is `base`, then seals the
    /// full one (already fsynced). The full one stays active if creation
    /// fails. A failed fsync of the directory (the new file's entry may not
    /// be durable) refuses writes until reopen; the new, empty file stays
    /// and is the active segment after reopen.
    fn roll(&self, seg: &Arc<Segment>, base: u64) -> std::result::Result<Arc<Segment>, Failed> {
        let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(Segment::create(&self.dir, id, base).map_err(|e| (e, None))?);
        if let Err(e) = sync_dir(&self.dir) {
            let why = fsync_failed(&e);
            return Err((e, Some(why)));
        }
        if let Err(e) = seg.seal() {
            // Reads fall back to pread; nothing is lost.
            tracing::warn!("could not map sealed segment: {e}");
        }
        self.segments.write().push(next.clone());
        self.wake_background();
        Ok(next)
    }

    /// Queues a janitor pass (a segment was sealed: it wants a hint file).
    fn wake_background(&self) {
        self.schedule(super::workers::Job::Janitor);
    }
}

/// `fdatasync`, with a failpoint for tests.
pub(super) fn fsync(file: &File) -> std::io::Result<()> {
    // EIO, as a failed writeback reports it.
    fail::fail_point!("bitcask::fsync", |_| Err(
        std::io::Error::from_raw_os_error(libc::EIO)
    ));
    file.sync_data()
}

/// `write_all`, with a failpoint that simulates a full disk.
fn write_all(mut file: &File, bytes: &[u8]) -> std::io::Result<()> {
    fail::fail_point!("bitcask::write", |_| Err(
        std::io::Error::from_raw_os_error(28)
    ));
    std::io::Write::write_all(&mut file, bytes)
}

/// Cuts `seg` back to `len` bytes and fsyncs the cut.
fn cut(seg: &Segment, len: u64) -> std::io::Result<()> {
    let file = seg.file()?;
    file.set_len(len)?;
    file.sync_data()
}

/// fsyncs a directory, making renames and creations in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    // `return(SUFFIX)` fails (EIO) only directories whose path ends with
    // SUFFIX; plain `return` fails all.
    fail::fail_point!("bitcask::sync_dir", |only: Option<String>| {
        match only {
            Some(s) if !dir.ends_with(&s) => Ok(()),
            _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }
        .ctx_at("fsync directory", dir)
    });
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx_at("fsync directory", dir)
}

/// Creates `dir` and its missing parents, fsyncing the parent of each one
/// created, so the new directory's entry is durable before anything in it.
pub(super) fn create_dir_durably(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::storage::owner_only::create_dir_all(dir).ctx_at("create data directory", dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}
