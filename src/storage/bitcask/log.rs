//! The engine seen as a log: reading records by offset (leaders serve
//! followers from it) and truncating to an offset (followers cut a divergent
//! suffix).
//!
//! Invariants:
//! - `read_log` returns records in offset order, each CRC-checked, exactly
//!   as stored (replication ships them unchanged);
//! - `truncate(o)` removes every record with offset `>= o` durably (rewritten
//!   segment renamed over, directory fsynced) before the keydir is rebuilt,
//!   and never modifies a file in place that a reader may have mapped.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::keydir::KeyDir;
use super::record::{self, HEADER_LEN, Record};
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Segment};
use super::{Inner, Segments, recovery, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::{Error, Result};

/// A record read from the log.
pub type LogRecord = Record;

/// Walks the records of `seg` by header, calling `visit(pos, header)` until
/// it returns `false`. Fails on a damaged header or record.
fn walk(seg: &Segment, mut visit: impl FnMut(u64, &record::Header) -> Result<bool>) -> Result<()> {
    let len = seg.len();
    let mut pos = 0u64;
    while pos < len {
        let head = seg.read(pos, HEADER_LEN.min((len - pos) as usize))?;
        let header = record::decode_header(&head).map_err(|_| {
            Error::Corrupt(format!(
                "damaged record header at {}:{pos}",
                seg.path.display()
            ))
        })?;
        if !visit(pos, &header)? {
            break;
        }
        pos += header.record_len() as u64;
    }
    Ok(())
}

impl Inner {
    /// See [`super::Bitcask::read_log`].
    pub(super) fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let segs: Vec<Arc<Segment>> = self.segments.read().ordered.clone();
        let first = segs.partition_point(|s| s.base <= from).saturating_sub(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for seg in &segs[first..] {
            let mut full = false;
            walk(seg, |pos, header| {
                if header.offset < from {
                    return Ok(true);
                }
                let (header, raw) = seg.read_record(pos, header.record_len())?;
                bytes += raw.len();
                out.push(Record {
                    header,
                    raw: Bytes::from(raw),
                });
                full = bytes >= max_bytes;
                Ok(!full)
            })?;
            if full {
                break;
            }
        }
        Ok(out)
    }

    /// See [`super::Bitcask::truncate`].
    pub(super) fn truncate(&self, offset: u64) -> Result<()> {
        let _maintenance = self.maintenance.lock();
        let mut w = self.writer.lock();
        while w.flushing {
            self.batch_done.wait(&mut w);
        }
        w.check_writable()?;
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
        match keep {
            Some(seg) => cut_segment(seg, offset)?,
            None => {
                // Everything goes: start an empty log at `offset`.
                let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
                Segment::create(&self.dir, id, offset)?;
            }
        }
        sync_dir(&self.dir)?;

        // Rebuild the keydir and segment table from the files, then publish
        // shard by shard (each key switches atomically).
        let fresh = KeyDir::new(0);
        let loaded = recovery::load(&self.dir, &fresh, &self.next_segment_id)?;
        let active = loaded
            .segments
            .last()
            .cloned()
            .ok_or_else(|| Error::Corrupt("no active segment after truncation".into()))?;
        *self.segments.write() = Segments::new(loaded.segments);
        self.keydir.replace_with(fresh);
        w.active = active;
        w.next_offset = loaded.next_offset.max(offset.min(w.next_offset));
        w.unapplied.clear();
        w.dirty = false;
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
/// goes to a temporary file, fsynced, renamed over the segment.
fn cut_segment(seg: &Segment, offset: u64) -> Result<()> {
    let mut cut_at = None;
    walk(seg, |pos, header| {
        if header.offset >= offset {
            cut_at = Some(pos);
            return Ok(false);
        }
        Ok(true)
    })?;
    let Some(cut_at) = cut_at else {
        return Ok(());
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
    Ok(())
}
