//! The engine seen as a log: reading records by offset (leaders serve
//! followers from it) and truncating to an offset (followers cut a divergent
//! suffix).
//!
//! Invariants:
//! - `read_log` returns records in offset order, each CRC-checked, exactly
//!   as stored (replication ships them unchanged), and only records below
//!   the written end: never a record of a batch that may still fail;
//! - it finds its start through the segment's sparse offset index, so a read
//!   at the tail walks at most a few KiB of headers;
//! - `truncate(o)` removes every record with offset `>= o` durably (rewritten
//!   segment renamed over, directory fsynced) before the keydir is rebuilt,
//!   and never modifies a file in place that a reader may have mapped;
//! - in replica mode it never goes below the commit point, except as an
//!   unclean truncation, which lowers the commit point durably first and
//!   logs the committed offsets lost; it trims the epoch cache and rebuilds
//!   the pending records from disk.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::keydir::KeyDir;
use super::record::{self, Record};
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Segment};
use super::{Inner, Segments, recovery, replica, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::{Error, Result};

/// A record read from the log.
pub type LogRecord = Record;

impl Inner {
    /// See [`super::Bitcask::read_log`].
    pub(super) fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
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
                        Error::Corrupt(format!(
                            "checksum mismatch in record at {}:{}",
                            seg.path.display(),
                            a + at as u64
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
    pub(super) fn truncate(&self, offset: u64, unclean: bool) -> Result<()> {
        let _maintenance = self.maintenance.lock();
        let mut w = self.writer.lock();
        while w.flushing {
            self.batch_done.wait(&mut w);
        }
        w.check_writable()?;
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
                // Lower the commit point durably first: a crash after it
                // leaves those records uncommitted, never committed twice.
                rep.committed.store(offset, Ordering::Release);
                self.persist_commit(rep, true, u64::MAX)?;
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
        let segs: Vec<Arc<Segment>> = self.segments.read().ordered.clone();
        for seg in segs.iter().filter(|s| s.base >= offset) {
            remove_segment_files(seg)?;
        }
        let keep = segs.iter().rev().find(|s| s.base < offset);
        let kept_end = match keep {
            Some(seg) => cut_segment(seg, offset)?,
            None => None,
        };
        if kept_end.is_none_or(|end| end < offset) {
            // Everything goes, or the kept records end below `offset` (a
            // merge left a gap there): an empty segment based at `offset`
            // keeps the log end at `offset` across a reopen, so no offset
            // below it is ever handed out again.
            if let Some(seg) = keep {
                // It stops being the active segment: make it durable first.
                seg.file()
                    .sync_data()
                    .ctx(|| format!("fsync {}", seg.path.display()))?;
            }
            let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
            Segment::create(&self.dir, id, offset)?;
        }
        sync_dir(&self.dir)?;

        // Rebuild the keydir and segment table from the files, then publish
        // shard by shard (each key switches atomically).
        let fresh = KeyDir::new(0);
        let commit = self
            .replica
            .as_ref()
            .map(|rep| rep.committed.load(Ordering::Acquire));
        let loaded = recovery::load(&self.dir, &fresh, &self.next_segment_id, commit)?;
        let active = loaded
            .segments
            .last()
            .cloned()
            .ok_or_else(|| Error::Corrupt("no active segment after truncation".into()))?;
        *self.segments.write() = Segments::new(loaded.segments);
        self.keydir.replace_with(fresh);
        w.active = active;
        w.next_offset = loaded.next_offset.max(offset.min(w.next_offset));
        w.written_end = w.next_offset;
        w.unapplied.clear();
        w.dirty = false;
        if self.replica.is_some() {
            w.pending = loaded.pending.into();
            w.rebuild_unapplied();
            let before = w.epochs.len();
            w.epochs.retain(|&(_, start)| start < offset);
            if w.epochs.len() != before
                && let Err(e) = replica::save_epochs(&self.dir, &w.epochs)
            {
                // A stale file is trimmed or rebuilt at open.
                tracing::warn!(dir = %self.dir.display(), "saving the epoch cache: {e}");
            }
        }
        Ok(())
    }
}

/// Deletes a segment file and its hint.
fn remove_segment_files(seg: &Segment) -> Result<()> {
    let dir = seg.path.parent().unwrap_or(std::path::Path::new("."));
    for suffix in [LOG_SUFFIX, HINT_SUFFIX] {
        let path = segment::file_path(dir, seg.base, suffix);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Rewrites `seg` without its records at `offset` and above: the kept prefix
/// goes to a temporary file, fsynced, renamed over the segment. Returns the
/// end of the kept records (last kept offset + 1), `None` if none is kept.
fn cut_segment(seg: &Segment, offset: u64) -> Result<Option<u64>> {
    let mut cut_at = None;
    let mut kept_end = None;
    // A point at or before `offset - 1`, so the last kept record is seen.
    let start = seg.seek(offset.saturating_sub(1))?;
    seg.walk_headers(start, seg.len(), |pos, header| {
        if header.offset >= offset {
            cut_at = Some(pos);
            return false;
        }
        kept_end = Some(header.offset + 1);
        true
    })?;
    let Some(cut_at) = cut_at else {
        return Ok(kept_end);
    };
    let dir = seg.path.parent().unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!("{:020}.log.truncate", seg.base));
    let prefix = seg.read(0, cut_at as usize)?;
    fs::write(&tmp, &prefix).ctx(|| format!("write {}", tmp.display()))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync {}", tmp.display()))?;
    let hint = segment::file_path(dir, seg.base, HINT_SUFFIX);
    match fs::remove_file(&hint) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", hint.display()), e)),
    }
    fs::rename(&tmp, &seg.path).ctx(|| format!("rename {}", tmp.display()))?;
    Ok(kept_end)
}
