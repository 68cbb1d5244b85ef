//! A follower's appends: records fetched from a leader, parsed and checked
//! record by record (CRC, increasing offsets, non-decreasing epochs, no gap
//! past the leader's dense point), then written byte for byte.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::super::Inner;
use super::super::keydir::Key;
use super::super::record::{self, DecodeError, HEADER_LEN};
use super::super::writer::{Batch, Queued, Unapplied};
use crate::storage::{Durability, Error, Result};

/// Records parsed from a leader's bytes, checked and ready to write.
pub(super) struct Parsed {
    /// One per record, in order (offset, key, kind, expiry, length, epoch).
    pub(super) queue: Vec<Queued>,
}

/// Parses and checks `bytes` (concatenated encoded records): every CRC,
/// strictly increasing offsets, non-decreasing epochs, and records that fit
/// in a segment.
pub(super) fn parse_replicated(bytes: &[u8], segment_bytes: u64) -> Result<Parsed> {
    let mut queue: Vec<Queued> = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = record::decode(&bytes[at..]).map_err(|e| {
            let what = match e {
                DecodeError::Incomplete => "is cut short",
                DecodeError::Invalid => "fails its checksum or is malformed",
            };
            Error::Corrupt(
                format!(
                    "replicated record {} (byte {at}) {what}; nothing appended",
                    queue.len()
                )
                .into(),
            )
        })?;
        if let Some(prev) = queue.last() {
            if header.offset <= prev.offset {
                return Err(Error::InvalidInput(format!(
                    "replicated offsets must increase: {} after {}; nothing appended",
                    header.offset, prev.offset
                )));
            }
            if header.epoch < prev.epoch {
                return Err(Error::InvalidInput(format!(
                    "replicated epochs must not decrease: {} after {} at offset {}; nothing appended",
                    header.epoch, prev.epoch, header.offset
                )));
            }
        }
        let len = header.record_len();
        if len as u64 > segment_bytes {
            return Err(Error::InvalidInput(format!(
                "replicated record at offset {} is {len} bytes, more than a segment ({segment_bytes}); nothing appended",
                header.offset
            )));
        }
        let key = &bytes[at + HEADER_LEN..at + HEADER_LEN + header.key_len as usize];
        queue.push(Queued {
            offset: header.offset,
            key: Key::from_slice(key),
            kind: header.kind,
            expire_at: header.expire_at_ms,
            len: len as u32,
            epoch: header.epoch,
        });
        at += len;
    }
    Ok(Parsed { queue })
}

impl Inner {
    /// See [`super::super::Bitcask::append_replicated`].
    pub(in crate::storage::bitcask) fn append_replicated(&self, bytes: &[u8]) -> Result<usize> {
        self.append_replicated_dense(bytes, u64::MAX)
    }

    /// See [`super::super::Bitcask::append_replicated_dense`].
    pub(in crate::storage::bitcask) fn append_replicated_dense(
        &self,
        bytes: &[u8],
        dense_from: u64,
    ) -> Result<usize> {
        self.append_replicated_as(bytes, dense_from, false)
            .map(Option::unwrap_or_default)
    }

    /// [`Inner::append_replicated_dense`]; with `page_cache_only`, `None`
    /// (nothing done) when the append would wait for another batch's I/O,
    /// fsync (`always`) or roll (which fsyncs the full segment): what is
    /// left is one `write(2)` to the page cache, as a submitted write's
    /// (docs/STORAGE.md, "Submitted writes").
    pub(in crate::storage::bitcask) fn append_replicated_as(
        &self,
        bytes: &[u8],
        dense_from: u64,
        page_cache_only: bool,
    ) -> Result<Option<usize>> {
        self.replica("append_replicated")?;
        let Parsed { queue } = parse_replicated(bytes, self.opts.segment_bytes)?;
        let (Some(first), Some(last)) = (queue.first(), queue.last()) else {
            return Ok(Some(0));
        };
        let (first, last) = (first.offset, last.offset);
        // The log end after the append; `u64::MAX` is never an offset.
        let Some(new_next) = last.checked_add(1).filter(|&n| n < u64::MAX) else {
            return Err(Error::InvalidInput(format!(
                "replicated offset {last} is past the largest log offset; nothing appended"
            )));
        };
        // A gap is only where a leader merged committed records away: none
        // may reach `dense_from`.
        let mut prev: Option<u64> = None;
        for q in &queue {
            if let Some(p) = prev
                && q.offset > p + 1
                && q.offset > dense_from
            {
                return Err(Error::InvalidInput(format!(
                    "replicated offsets jump from {p} to {} at or above the leader's dense \
                     point {dense_from}; nothing appended",
                    q.offset
                )));
            }
            prev = Some(q.offset);
        }
        let mut w = self.writer.lock();
        // Local writes queued before us go first (a follower has none).
        loop {
            w.check_writable()?;
            if (w.flushing || !w.queue.is_empty()) && page_cache_only {
                return Ok(None);
            } else if w.flushing {
                self.batch_done.wait(&mut w);
            } else if !w.queue.is_empty() {
                self.lead(&mut w);
            } else {
                break;
            }
        }
        if first < w.next_offset {
            return Err(Error::InvalidInput(format!(
                "replicated offset {first} is below the log end {}; nothing appended",
                w.next_offset
            )));
        }
        if first > w.next_offset && first > dense_from {
            return Err(Error::InvalidInput(format!(
                "replicated offset {first} leaves a gap after the log end {} at or above the \
                 leader's dense point {dense_from}; nothing appended",
                w.next_offset
            )));
        }
        if let (Some(&(e, _)), Some(q)) = (w.epochs.last(), queue.first())
            && q.epoch < e
        {
            return Err(Error::InvalidInput(format!(
                "replicated epoch {} at offset {first} is below the log's last epoch {e}; nothing appended",
                q.epoch
            )));
        }
        let sync = self.opts.fsync == Durability::Always;
        if page_cache_only
            && (sync || w.active.len() + bytes.len() as u64 > self.opts.segment_bytes)
        {
            return Ok(None);
        }
        let old_next = w.next_offset;
        w.flushing = true;
        w.next_offset = new_next;
        let active = w.active.clone();
        let written = MutexGuard::unlocked(&mut w, || self.write_out(active, bytes, &queue, sync));
        let rolled = written.new_active.is_some();
        if let Some(seg) = written.new_active {
            w.active = seg;
        }
        let ok = written.locations.len();
        w.keep_tail(bytes, &queue, ok, rolled || written.error.is_some());
        self.stage(&mut w, &queue[..ok], &written.locations);
        let done = Arc::new(Batch::default());
        done.finish(Ok(()));
        let staged = w.pending.len() - ok;
        for i in staged..w.pending.len() {
            let u = Unapplied::of_pending(&w.pending[i], &done);
            let key = w.pending[i].key.clone();
            w.unapplied.insert(key, u);
        }
        if ok > 0 {
            w.written_end = queue[ok - 1].offset + 1;
        }
        w.dirty |= ok > 0 && !sync;
        self.stats.records.fetch_add(ok as u64, Ordering::Relaxed);
        let result = match written.error {
            None => Ok(Some(ok)),
            Some(err) => {
                tracing::error!(dir = %self.dir.display(), "append of replicated records failed after {ok} of {}: {err}", queue.len());
                if let Some(why) = written.refuse {
                    self.refuse(&mut w, why);
                }
                let back = if ok == 0 {
                    old_next
                } else {
                    queue[ok - 1].offset + 1
                };
                w.fail_pending(back, &err);
                w.rebuild_unapplied();
                Err(err)
            }
        };
        self.end_flush(&mut w);
        result
    }
}
