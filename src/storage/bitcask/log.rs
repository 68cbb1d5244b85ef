//! The engine seen as a log: reading records by offset (leaders serve
//! followers from it) and truncating to an offset (followers cut a divergent
//! suffix).
//!
//! Invariants:
//! - `read_log` returns records in offset order, each CRC-checked, exactly
//!   as stored (replication ships them unchanged), and only records below
//!   the written end: never a record of a batch that may still fail;
//! - it answers from the log's last batches in memory when they reach back
//!   to the offset asked (replica mode, `tail.rs`: no I/O, the same records
//!   the files hold), else it finds its start through the segment's sparse
//!   offset index, so a read at the tail walks at most a few KiB of headers;
//! - `truncate(o)` removes every record with offset `>= o` durably (rewritten
//!   segment renamed over, directory fsynced) before the keydir is rebuilt,
//!   and never modifies a file in place that a reader may have mapped;
//! - it copies the kept prefix (fsynced) before deleting anything: a failure
//!   there (ENOSPC) changes nothing. A failure after the first deletion, or
//!   any failed fsync, refuses writes until reopen (the in-memory state may
//!   name deleted files; reads go on through the open segments); segments
//!   are deleted newest first, so a crash leaves a shorter log, not a hole;
//! - the file work and the keydir reload run without the writer mutex
//!   (`commit`, `submit`, `read_log` answer meanwhile); `flushing` and
//!   `truncating` keep batches and new records out, `written_end` is
//!   lowered to `o` first, and commits made meanwhile are applied when the
//!   reload is published;
//! - in replica mode it never goes below the commit point, except as an
//!   unclean truncation, which lowers the commit point durably first and
//!   logs the committed offsets lost; it trims the epoch cache and rebuilds
//!   the pending records from disk.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::MutexGuard;

use super::keydir::KeyDir;
use super::record::{self, Record};
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Segment};
use super::writer::Writer;
use super::{Inner, Segments, fsync, recovery, replica, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Error, Result, Text};

/// A record read from the log.
pub type LogRecord = Record;

impl Inner {
    /// See [`super::Bitcask::read_log`].
    pub(super) fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        match self.read_log_memory(from, max_bytes) {
            Some(read) => read,
            None => self.read_log_files(from, max_bytes),
        }
    }

    /// [`Inner::read_log`] from the segment files (the tail in memory
    /// does not reach back to `from`).
    pub(super) fn read_log_files(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        // The end first: every record below it is in a segment of the
        // snapshot taken next.
        let end = self.writer.lock().written_end;
        let segs: Vec<Arc<Segment>> = self.segments.read().ordered.clone();
        let first = segs.partition_point(|s| s.base <= from).saturating_sub(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for seg in &segs[first..] {
            if seg.base >= end {
                break;
            }
            let start = if from > seg.base { seg.seek(from)? } else { 0 };
            // The byte range [span.0, span.1) holds the records to return.
            let mut span: Option<(u64, u64)> = None;
            let mut full = false;
            seg.walk_headers(start, seg.len(), |pos, header| {
                if header.offset < from {
                    return true;
                }
                if header.offset >= end {
                    full = true;
                    return false;
                }
                let len = header.record_len();
                span = Some((span.map_or(pos, |s| s.0), pos + len as u64));
                bytes += len;
                full = bytes >= max_bytes;
                !full
            })?;
            if let Some((a, b)) = span {
                let raw = Bytes::from(seg.read(a, (b - a) as usize)?);
                let mut at = 0usize;
                while at < raw.len() {
                    let header = record::decode(&raw[at..]).map_err(|_| {
                        Error::Corrupt(crate::storage::Text::naming(
                            format!(
                                "checksum mismatch in record at {}:{}",
                                seg.path.display(),
                                a + at as u64
                            ),
                            &seg.path,
                        ))
                    })?;
                    let len = header.record_len();
                    out.push(Record {
                        header,
                        raw: raw.slice(at..at + len),
                    });
                    at += len;
                }
            }
            if full {
                break;
            }
        }
        Ok(out)
    }

    /// See [`super::Bitcask::truncate`].
    ///
    /// The writer mutex is held only to start and to publish: the file work
    /// and the reload of the keydir run without it (with `flushing` and
    /// `truncating` set, so no batch is written and no record is queued
    /// meanwhile), because `commit` and `submit` take that mutex on
    /// runtime threads.
    pub(super) fn truncate(&self, offset: u64, unclean: bool) -> Result<()> {
        let mut maintenance = self.maintenance.lock();
        // A merge past its commit goes forward first (the reload below
        // would roll its files forward behind its back).
        self.finish_merge(&mut maintenance)?;
        let mut w = self.writer.lock();
        while w.flushing {
            self.batch_done.wait(&mut w);
        }
        w.check_writable()?;
        let mut lowered = false;
        if let Some(rep) = &self.replica {
            let committed = rep.committed.load(Ordering::Acquire);
            if offset < committed {
                if !unclean {
                    return Err(Error::InvalidInput(format!(
                        "cannot truncate to offset {offset}: records below the commit point {committed} are committed"
                    )));
                }
                tracing::error!(
                    dir = %self.dir.display(),
                    "DATA LOSS: unclean truncation to offset {offset} discards committed records at offsets {offset}..{committed}"
                );
                // Lowered durably first (below): a crash after it leaves
                // those records uncommitted, never committed twice.
                rep.committed.store(offset, Ordering::Release);
                lowered = true;
            }
        }
        if offset >= w.next_offset {
            return Ok(());
        }
        let aborted = Error::InvalidInput(format!("log truncated to offset {offset}"));
        let first_queued = w.queue.first().map(|q| q.offset);
        if let Some(first) = first_queued {
            w.fail_pending(first, &aborted);
        }
        tracing::warn!(
            dir = %self.dir.display(),
            "truncating the log from offset {offset} (log end was {})",
            w.next_offset
        );
        let (written_end, next_offset) = (w.written_end, w.next_offset);
        w.flushing = true;
        w.truncating = true;
        // Nothing at or above `offset` is served or committed from now on.
        w.written_end = written_end.min(offset);
        w.tail.clear();
        let epochs: Vec<(u32, u64)> = w.epochs.iter().copied().filter(|e| e.1 < offset).collect();
        let epochs_changed = epochs.len() != w.epochs.len();
        let segs: Vec<Arc<Segment>> = self.segments.read().ordered.clone();
        let fresh = self.keydir.empty_like();
        let result = MutexGuard::unlocked(&mut w, || {
            if lowered && let Some(rep) = &self.replica {
                self.persist_commit(rep, true, u64::MAX)
                    .map_err(|e| (e, true))?;
            }
            self.truncate_files(offset, &segs)?;
            fail::fail_point!("log::before_reload");
            let commit = self
                .replica
                .as_ref()
                .map(|rep| rep.committed.load(Ordering::Acquire));
            let loaded = recovery::load(&self.dir, &fresh, &self.next_segment_id, commit)
                .map_err(|e| (e, true))?;
            if epochs_changed && let Err(e) = replica::save_epochs(&self.dir, &epochs) {
                // A stale file is trimmed or rebuilt at open.
                tracing::warn!(dir = %self.dir.display(), "saving the epoch cache: {e}");
            }
            Ok(loaded)
        });
        w.truncating = false;
        let outcome = match result {
            Ok(loaded) => {
                self.publish_truncation(&mut w, loaded, fresh, offset, next_offset, epochs)
            }
            Err((e, false)) => {
                // Nothing changed on disk.
                w.written_end = written_end;
                Err(e)
            }
            Err((e, true)) => {
                // Part of the files changed: the segment table and the
                // keydir may point at deleted files. Reads go on (segments
                // are reference counted); writes stop until reopen.
                self.refuse(
                    &mut w,
                    Text::new(
                        format!("truncation to offset {offset} failed part-way ({e}); reopen the engine (restart the node)"),
                        format!("truncation to offset {offset} failed part-way ({}); reopen the engine (restart the node)", e.client_message()),
                    ),
                );
                Err(e)
            }
        };
        self.end_flush(&mut w);
        outcome
    }

    /// Publishes a truncation's reload: segment table, keydir (shard by
    /// shard, each key switches atomically), writer state; in replica mode
    /// the pending records, applying those below a commit point that moved
    /// during the reload.
    fn publish_truncation(
        &self,
        w: &mut Writer,
        loaded: recovery::Loaded,
        fresh: KeyDir,
        offset: u64,
        next_offset: u64,
        epochs: Vec<(u32, u64)>,
    ) -> Result<()> {
        let Some(active) = loaded.segments.last().cloned() else {
            let e = Error::Corrupt("no active segment after truncation".into());
            self.refuse(w, e.text());
            return Err(e);
        };
        *self.segments.write() = Segments::new(loaded.segments);
        self.keydir.replace_with(fresh);
        w.active = active;
        w.next_offset = loaded.next_offset.max(offset.min(next_offset));
        w.written_end = w.next_offset;
        w.unapplied.clear();
        w.dirty = false;
        if let Some(rep) = &self.replica {
            w.pending = loaded.pending.into();
            // Rebuilt from disk: no value in memory, nothing to fill.
            let _ = self.apply_pending(w, rep.committed.load(Ordering::Acquire));
            w.rebuild_unapplied();
            w.epochs = epochs;
        }
        Ok(())
    }

    /// The file work of a truncation. The kept prefix of the segment
    /// holding `offset` is copied first (nothing changes on disk if that
    /// fails, e.g. ENOSPC: the error says `false`); then segments above go,
    /// newest first (a crash leaves a shorter log, never a hole), the copy
    /// is renamed over, the directory fsynced. A failure from the first
    /// destructive step on, and any failed fsync, says `true`: refuse
    /// writes.
    fn truncate_files(&self, offset: u64, segs: &[Arc<Segment>]) -> Step<()> {
        let keep = segs.iter().rev().find(|s| s.base < offset);
        let cut = match keep {
            Some(seg) => prepare_cut(seg, offset)?,
            None => Cut {
                kept_end: None,
                copy: None,
            },
        };
        let destructive = |e: Error| (e, true);
        for seg in segs.iter().rev().filter(|s| s.base >= offset) {
            remove_segment_files(seg).map_err(destructive)?;
        }
        if let (Some(seg), Some(copy)) = (keep, &cut.copy) {
            let dir = seg.path.parent().unwrap_or(std::path::Path::new("."));
            let hint = segment::file_path(dir, seg.base, HINT_SUFFIX);
            match fs::remove_file(&hint) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err((Error::io_at("remove", &hint, e), true)),
            }
            fs::rename(copy, &seg.path)
                .ctx_at("rename", copy)
                .map_err(destructive)?;
        }
        if cut.kept_end.is_none_or(|end| end < offset) {
            // Everything goes, or the kept records end below `offset` (a
            // merge left a gap there): an empty segment based at `offset`
            // keeps the log end at `offset` across a reopen, so no offset
            // below it is ever handed out again.
            if let Some(seg) = keep.filter(|_| cut.copy.is_none()) {
                // It stops being the active segment: make it durable first.
                seg.sync_data()
                    .ctx_at("fsync", &seg.path)
                    .map_err(destructive)?;
            }
            let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
            Segment::create(&self.dir, id, offset).map_err(destructive)?;
        }
        sync_dir(&self.dir).map_err(destructive)
    }
}

/// A step of a truncation: on error, whether writes must be refused.
type Step<T> = std::result::Result<T, (Error, bool)>;

/// The kept part of the segment that holds the truncation point.
struct Cut {
    /// End of the kept records (last kept offset + 1), `None` if none.
    kept_end: Option<u64>,
    /// The fsynced copy of the kept prefix, to rename over the segment;
    /// `None` when nothing in the segment is cut.
    copy: Option<std::path::PathBuf>,
}

/// Deletes a segment file and its hint.
fn remove_segment_files(seg: &Segment) -> Result<()> {
    let dir = seg.path.parent().unwrap_or(std::path::Path::new("."));
    for suffix in [LOG_SUFFIX, HINT_SUFFIX] {
        let path = segment::file_path(dir, seg.base, suffix);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_at("remove", &path, e)),
        }
    }
    Ok(())
}

/// Copies the records of `seg` below `offset` to a temporary file, fsynced.
/// Changes nothing else; the copy is removed if that fails.
fn prepare_cut(seg: &Segment, offset: u64) -> Step<Cut> {
    let mut cut_at = None;
    let mut kept_end = None;
    // A point at or before `offset - 1`, so the last kept record is seen.
    let start = seg.seek(offset.saturating_sub(1)).map_err(|e| (e, false))?;
    seg.walk_headers(start, seg.len(), |pos, header| {
        if header.offset >= offset {
            cut_at = Some(pos);
            return false;
        }
        kept_end = Some(header.offset + 1);
        true
    })
    .map_err(|e| (e, false))?;
    let Some(cut_at) = cut_at else {
        return Ok(Cut {
            kept_end,
            copy: None,
        });
    };
    let dir = seg.path.parent().unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!("{:020}.log.truncate", seg.base));
    let copy = || -> Step<()> {
        let prefix = seg.read(0, cut_at as usize).map_err(|e| (e, false))?;
        fail::fail_point!("log::write_prefix", |_| Err((
            Error::io_at(
                "write",
                &tmp,
                std::io::Error::from_raw_os_error(libc::ENOSPC)
            ),
            false
        )));
        owner_only::create(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &prefix))
            .ctx_at("write", &tmp)
            .map_err(|e| (e, false))?;
        // fsyncgate: a failed fsync refuses writes, even of this copy.
        fs::File::open(&tmp)
            .and_then(|f| fsync(&f))
            .ctx_at("fsync", &tmp)
            .map_err(|e| (e, true))
    };
    if let Err(e) = copy() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Cut {
        kept_end,
        copy: Some(tmp),
    })
}
