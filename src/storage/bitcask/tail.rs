//! The log's tail in memory (replica mode): the bytes of the last batches
//! written, so a leader answers a follower fetching at its log end without
//! touching a file, on the runtime thread that serves the fetch.
//!
//! Why: a follower in sync fetches the records written since its last
//! round, a few hundred bytes at the end of the active segment. Reading
//! them from the file is a few `pread(2)`s that must not run on a runtime
//! worker (a read may wait for the device), so the leader handed each
//! fetch round to `block_in_place`, which moves the worker's core to
//! another thread: about 1.5 thread wake-ups per replicated write
//! (docs/BENCHMARKS.md, "Replication I/O without thread hand-offs").
//!
//! Invariants:
//! - the tail is always a suffix of the log: from its first record to the
//!   written end, every record of the log is in it, in offset order, bytes
//!   exactly as written. Every path that writes records appends them here
//!   under the writer mutex, in the same critical section that moves
//!   `written_end`; a write that cannot be appended whole (a roll into a
//!   new segment, a failed or partial write) and a truncation clear it
//!   instead, so it never holds a record the log lost or misses one it has;
//! - it only holds records of the active segment (a roll clears it), so
//!   merge, which rewrites sealed segments only, never makes it stale;
//! - it holds at most [`TAIL_BYTES`] (oldest batches dropped first) plus
//!   the last batch, and an engine in standalone mode keeps nothing.

use std::collections::VecDeque;

use bytes::Bytes;

use super::record::{self, Record};
use crate::storage::{Error, Result, Text};

/// Bytes of recent batches kept per engine (about 10 000 records of
/// 100-byte values; a follower in sync reads far less per round).
pub const TAIL_BYTES: usize = 1 << 20;

/// Consecutive batches of the log's end (see the module doc).
#[derive(Default)]
pub struct Tail {
    /// Batches in offset order: (offset of the batch's first record, its
    /// bytes).
    batches: VecDeque<(u64, Bytes)>,
    /// Bytes held in `batches`.
    bytes: usize,
}

impl Tail {
    /// Appends a batch written right after the previous one.
    pub fn push(&mut self, first: u64, raw: Bytes) {
        if raw.is_empty() {
            return;
        }
        self.bytes += raw.len();
        self.batches.push_back((first, raw));
        while self.bytes > TAIL_BYTES && self.batches.len() > 1 {
            if let Some((_, old)) = self.batches.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Forgets everything (a roll, a failed write, a truncation).
    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// The records with offset `>= from` and below `end` as
    /// [`super::Inner::read_log`] would read them (up to about `max_bytes`,
    /// at least one record if any), or `None` when the tail does not start
    /// at or before `from`. `end` is the written end, read under the same
    /// writer mutex as the tail.
    pub fn read(&self, from: u64, end: u64, max_bytes: usize) -> Option<Result<Vec<Record>>> {
        if from >= end {
            return Some(Ok(Vec::new()));
        }
        let &(start, _) = self.batches.front()?;
        if start > from {
            return None;
        }
        // The last batch starting at or before `from` holds it (or `from`
        // fell in a gap a merge left, and the next record is after it).
        let first = self
            .batches
            .partition_point(|(f, _)| *f <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (_, raw) in self.batches.iter().skip(first) {
            let mut at = 0usize;
            while at < raw.len() {
                let header = match record::decode(&raw[at..]) {
                    Ok(h) => h,
                    Err(_) => {
                        return Some(Err(Error::Corrupt(Text::from(format!(
                            "a record of the in-memory log tail does not decode (offset at or after {from})"
                        )))));
                    }
                };
                if header.offset >= end {
                    return Some(Ok(out));
                }
                let len = header.record_len();
                if header.offset >= from {
                    out.push(Record {
                        header,
                        raw: raw.slice(at..at + len),
                    });
                    bytes += len;
                    if bytes >= max_bytes {
                        return Some(Ok(out));
                    }
                }
                at += len;
            }
        }
        Some(Ok(out))
    }
}

impl super::writer::Writer {
    /// Keeps the batch just written, `queue`'s records encoded in that
    /// order at the start of `buf`, if all of it was written to the active
    /// segment; otherwise forgets the tail (see the module invariants).
    /// Called under the writer mutex, before `written_end` moves.
    /// `written`: how many records were written; `broken`: the batch
    /// rolled into a new segment or failed.
    pub(super) fn keep_tail(
        &mut self,
        buf: &[u8],
        queue: &[super::writer::Queued],
        written: usize,
        broken: bool,
    ) {
        let whole = !broken && written == queue.len();
        let n: usize = queue.iter().map(|q| q.len as usize).sum();
        match queue.first() {
            Some(q) if whole && n <= buf.len() => {
                self.tail.push(q.offset, Bytes::copy_from_slice(&buf[..n]));
            }
            None if whole => {}
            _ => self.tail.clear(),
        }
    }
}

impl super::Inner {
    /// [`super::Inner::read_log`] answered from the log's tail in memory,
    /// or `None` when `from` is older than the tail (then the caller reads
    /// the files). No I/O: runtime threads may call it.
    pub(super) fn read_log_memory(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Option<Result<Vec<Record>>> {
        let w = self.writer.lock();
        w.tail.read(from, w.written_end, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::{Bitcask, Inner};
    use crate::storage::{ManualClock, Options, SetOptions, WriteOp};

    /// Every read the tail answers equals the read from the files.
    fn check_reads(inner: &Inner, end: u64) -> usize {
        let mut served = 0;
        for from in 0..=end + 1 {
            for max in [1, 60, 200, 1 << 20] {
                if let Some(mem) = inner.read_log_memory(from, max) {
                    let mem = mem.unwrap();
                    let files = inner.read_log_files(from, max).unwrap();
                    assert_eq!(mem, files, "from {from} max {max}");
                    served += 1;
                }
            }
        }
        served
    }

    fn engine(dir: &tempfile::TempDir, segment_bytes: u64) -> Bitcask {
        let o = Options {
            segment_bytes,
            limits: crate::storage::Limits {
                max_key_bytes: 8,
                max_value_bytes: 40,
            },
            ..Options::default()
        };
        Bitcask::open_replica(dir.path(), o, Arc::new(ManualClock::new(1_000))).unwrap()
    }

    fn put(e: &Bitcask, key: &str, value: &str) {
        let op = WriteOp::Set(Bytes::from(value.to_owned()), SetOptions::default());
        e.write_at(key.as_bytes(), op, 1).unwrap();
    }

    #[test]
    fn the_tail_serves_the_last_batches_and_forgets_at_truncation_and_roll() {
        let dir = tempfile::TempDir::new().unwrap();
        let e = engine(&dir, 1 << 20);
        e.set_epoch(1).unwrap();
        let nothing = e.inner.read_log_memory(0, 100).unwrap().unwrap();
        assert!(nothing.is_empty(), "nothing written: nothing to read");
        for i in 0..10 {
            put(&e, &format!("k{i}"), &format!("v{i}"));
        }
        // Every batch since the open is there: from offset 0 on.
        let all = e.inner.read_log_memory(0, usize::MAX).unwrap().unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[3].header.offset, 3);
        assert_eq!(&all[3].value()[..], b"v3");
        assert_eq!(e.inner.read_log_memory(7, 1).unwrap().unwrap().len(), 1);
        assert_eq!(e.inner.read_log_memory(10, 1).unwrap().unwrap().len(), 0);
        assert_eq!(check_reads(&e.inner, 10), 4 * 12);
        // Truncation forgets it; the next batch starts it again.
        e.truncate(6).unwrap();
        assert!(e.inner.read_log_memory(5, 100).is_none());
        assert_eq!(e.inner.read_log_memory(6, 100).unwrap().unwrap().len(), 0);
        put(&e, "k", "after");
        assert!(e.inner.read_log_memory(5, 100).is_none());
        let after = e.inner.read_log_memory(6, 100).unwrap().unwrap();
        assert_eq!((after.len(), after[0].header.offset), (1, 6));
        assert_eq!(check_reads(&e.inner, 7), 3 * 4, "from 6 on");
    }

    #[test]
    fn a_roll_forgets_the_tail() {
        let dir = tempfile::TempDir::new().unwrap();
        // Each record is 33 + 2 + 2 bytes: three fit a 120-byte segment.
        let e = engine(&dir, 120);
        e.set_epoch(1).unwrap();
        for i in 0..3 {
            put(&e, &format!("k{i}"), &format!("v{i}"));
        }
        assert!(e.inner.read_log_memory(0, 100).is_some());
        put(&e, "k3", "v3");
        assert!(e.inner.read_log_memory(0, 100).is_none(), "rolled");
        assert!(
            e.inner.read_log_memory(3, 100).is_none(),
            "the rolling batch too"
        );
        put(&e, "k4", "v4");
        let r = e.inner.read_log_memory(4, 100).unwrap().unwrap();
        assert_eq!((r.len(), r[0].header.offset), (1, 4));
    }

    #[test]
    fn a_follower_tail_holds_what_it_appended_gaps_included() {
        let (dl, df) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let leader = engine(&dl, 1 << 20);
        leader.set_epoch(1).unwrap();
        for i in 0..6 {
            put(&leader, &format!("k{i}"), &format!("v{i}"));
        }
        let follower = engine(&df, 1 << 20);
        let raw = |from: u64, skip: u64| -> Vec<u8> {
            let recs = leader.read_log(from, usize::MAX).unwrap();
            recs.iter()
                .filter(|r| r.header.offset != skip)
                .flat_map(|r| r.raw.to_vec())
                .collect()
        };
        // Offset 2 left out, as if merged away below the dense point.
        assert_eq!(follower.append_replicated_dense(&raw(0, 2), 6).unwrap(), 5);
        let r = follower
            .inner
            .read_log_memory(2, usize::MAX)
            .unwrap()
            .unwrap();
        let offsets: Vec<u64> = r.iter().map(|r| r.header.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        assert_eq!(check_reads(&follower.inner, 6), 8 * 4);
        // A page-cache append is done at once under `every_ms`.
        put(&leader, "k6", "v6");
        assert_eq!(
            follower
                .append_replicated_now(&raw(6, u64::MAX), 7)
                .unwrap()
                .unwrap(),
            1
        );
        assert_eq!(follower.written_end(), 7);
    }

    #[test]
    fn appends_that_need_more_than_a_write_are_not_done_at_once() {
        let (dl, df) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let leader = engine(&dl, 1 << 20);
        leader.set_epoch(1).unwrap();
        for i in 0..4 {
            put(&leader, &format!("k{i}"), &format!("v{i}"));
        }
        let raw: Vec<u8> = leader
            .read_log(0, usize::MAX)
            .unwrap()
            .iter()
            .flat_map(|r| r.raw.to_vec())
            .collect();
        // A roll: the full segment would be fsynced.
        let small = engine(&df, 120);
        assert!(small.append_replicated_now(&raw, 4).is_none());
        assert_eq!(small.written_end(), 0, "nothing done");
        // `always`: an fsync.
        let da = tempfile::TempDir::new().unwrap();
        let o = Options {
            fsync: crate::storage::Durability::Always,
            limits: crate::storage::Limits {
                max_key_bytes: 8,
                max_value_bytes: 40,
            },
            ..Options::default()
        };
        let always =
            Bitcask::open_replica(da.path(), o, Arc::new(ManualClock::new(1_000))).unwrap();
        assert!(always.append_replicated_now(&raw, 4).is_none());
        assert_eq!(always.written_end(), 0, "nothing done");
        assert_eq!(always.append_replicated_dense(&raw, 4).unwrap(), 4);
        // A refusal needs no I/O: answered at once.
        let err = always.append_replicated_now(&raw, 4).unwrap().unwrap_err();
        assert!(err.to_string().contains("below the log end"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Writes, appends' batches, truncations and rolls in any order:
        /// whatever the tail answers is what the files hold.
        #[test]
        fn the_tail_always_agrees_with_the_files(
            steps in proptest::collection::vec((0u8..10, 1usize..40), 1..40),
        ) {
            let dir = tempfile::TempDir::new().unwrap();
            let e = engine(&dir, 600);
            e.set_epoch(1).unwrap();
            let mut served = 0;
            for (i, (what, size)) in steps.into_iter().enumerate() {
                let end = e.written_end();
                if what == 0 && end > 0 {
                    e.truncate(end - 1 - (size as u64 % end.min(5))).unwrap();
                } else {
                    put(&e, &format!("k{}", i % 7), &"x".repeat(size));
                }
                served += check_reads(&e.inner, e.written_end());
            }
            prop_assert!(served > 0);
        }
    }
}
