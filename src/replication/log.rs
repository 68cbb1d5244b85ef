//! The storage seam of replication: what a partition replica needs from its
//! engine, beyond the [`Engine`] reads every node serves.
//!
//! [`ReplicaLog`] is implemented by [`Bitcask`] opened in replica mode
//! (records become visible only when committed). The methods that touch
//! files may block on disk I/O, and the replication layer calls them off
//! the async runtime's workers (the blocking pool, or `block_in_place`);
//! `commit`, `committed`, `written_end` and `read_raw_memory` do no I/O,
//! and `append_now` at most one `write(2)` to the page cache (else it
//! declines): they are called directly.
//!
//! Invariants the implementation keeps (see `docs/STORAGE.md`):
//! - `written_end` only moves forward, except through `truncate*`;
//! - records below `committed` are applied to the keydir, the others are
//!   not; `committed` never moves backwards and survives a restart;
//! - `append` keeps each record's offset and epoch and checks its CRC;
//! - a leader's writes and commits carry its epoch and are refused once the
//!   log left that role (`step_down`, or a newer `set_epoch`).

use bytes::Bytes;

use crate::storage::{self, Bitcask, Engine, Submitted, WriteOp, Written};

/// A partition replica's log, as replication drives it.
pub trait ReplicaLog: Engine {
    /// Leads at `epoch`: stamps records written from now on with it, and
    /// accepts writes and commits stamped with it.
    fn set_epoch(&self, epoch: u32) -> storage::Result<()>;
    /// Leaves the leader role: writes the local writes already admitted,
    /// then refuses every stamped write and commit (blocking).
    fn step_down(&self) -> storage::Result<()>;
    /// Decides and writes `op` on `key` as the leader at `epoch` (refused
    /// unless the engine leads at `epoch`).
    fn write_op(&self, key: &[u8], op: WriteOp, epoch: u32) -> storage::Result<Written>;
    /// [`Engine::submit`] as the leader at `epoch` (refused unless the
    /// engine leads at `epoch`).
    fn submit_at(&self, key: &[u8], op: &WriteOp, epoch: u32) -> storage::Result<Submitted>;
    /// Appends records in the storage format, fetched from the leader
    /// (follower); a gap in their offsets past `dense_from` (the leader's
    /// high watermark: its log has gaps only where merge removed committed
    /// records) is refused. Returns how many were appended.
    fn append(&self, records: &[u8], dense_from: u64) -> storage::Result<usize>;
    /// [`ReplicaLog::append`] when it is one `write(2)` to the page cache
    /// (no fsync, no roll, no other batch's I/O to wait for), or `None`
    /// (nothing done) when it is more: callable on a runtime thread.
    fn append_now(&self, _records: &[u8], _dense_from: u64) -> Option<storage::Result<usize>> {
        None
    }
    /// Applies records below `hw`; returns the commit point. No I/O (the
    /// engine checkpoints the commit point in the background). Follower.
    fn commit(&self, hw: u64) -> storage::Result<u64>;
    /// [`ReplicaLog::commit`] by the leader at `epoch` (refused unless the
    /// engine leads at `epoch`).
    fn commit_at(&self, hw: u64, epoch: u32) -> storage::Result<u64>;
    /// The commit point.
    fn committed(&self) -> u64;
    /// End of the records written (and fsynced under `always`).
    fn written_end(&self) -> u64;
    /// Raw records from `from`, concatenated, as many as `budget` allows
    /// (see [`ReadBudget::keep`]), and how many.
    fn read_raw(&self, from: u64, budget: ReadBudget) -> storage::Result<(Bytes, u32)>;
    /// [`ReplicaLog::read_raw`] answered from memory without I/O (the
    /// log's last batches), or `None` when that needs a file: callable on
    /// a runtime thread.
    fn read_raw_memory(
        &self,
        _from: u64,
        _budget: ReadBudget,
    ) -> Option<storage::Result<(Bytes, u32)>> {
        None
    }
    /// Removes records `>= offset`; refused below the commit point.
    fn truncate_to(&self, offset: u64) -> storage::Result<()>;
    /// Removes records `>= offset` even below the commit point (unclean).
    fn truncate_unclean_to(&self, offset: u64) -> storage::Result<()>;
    /// `(epoch, first offset)` of every leader epoch in the log, ascending.
    fn epoch_starts(&self) -> storage::Result<Vec<(u32, u64)>>;
    /// Tombstones at or above `offset` must survive merges.
    fn retain_from(&self, offset: u64);
}

impl ReplicaLog for Bitcask {
    fn set_epoch(&self, epoch: u32) -> storage::Result<()> {
        Bitcask::set_epoch(self, epoch)
    }

    fn step_down(&self) -> storage::Result<()> {
        Bitcask::step_down(self)
    }

    fn write_op(&self, key: &[u8], op: WriteOp, epoch: u32) -> storage::Result<Written> {
        Bitcask::write_at(self, key, op, epoch)
    }

    fn submit_at(&self, key: &[u8], op: &WriteOp, epoch: u32) -> storage::Result<Submitted> {
        Bitcask::submit_at(self, key, op, epoch)
    }

    fn append(&self, records: &[u8], dense_from: u64) -> storage::Result<usize> {
        self.append_replicated_dense(records, dense_from)
    }

    fn append_now(&self, records: &[u8], dense_from: u64) -> Option<storage::Result<usize>> {
        self.append_replicated_now(records, dense_from)
    }

    fn commit(&self, hw: u64) -> storage::Result<u64> {
        Bitcask::commit(self, hw)
    }

    fn commit_at(&self, hw: u64, epoch: u32) -> storage::Result<u64> {
        Bitcask::commit_at(self, hw, epoch)
    }

    fn committed(&self) -> u64 {
        Bitcask::committed(self)
    }

    fn written_end(&self) -> u64 {
        Bitcask::written_end(self)
    }

    fn read_raw(&self, from: u64, budget: ReadBudget) -> storage::Result<(Bytes, u32)> {
        if budget.room == 0 && !budget.first {
            return Ok((Bytes::new(), 0));
        }
        // `read_log` returns at least one record and may pass its bound by
        // one record: read up to the bound, keep what the budget allows.
        let records = self.read_log(from, budget.want.min(budget.room).max(1))?;
        Ok(pack(records, budget))
    }

    fn read_raw_memory(
        &self,
        from: u64,
        budget: ReadBudget,
    ) -> Option<storage::Result<(Bytes, u32)>> {
        if budget.room == 0 && !budget.first {
            return Some(Ok((Bytes::new(), 0)));
        }
        let read = self.read_log_memory(from, budget.want.min(budget.room).max(1))?;
        Some(read.map(|records| pack(records, budget)))
    }

    fn truncate_to(&self, offset: u64) -> storage::Result<()> {
        self.truncate(offset)
    }

    fn truncate_unclean_to(&self, offset: u64) -> storage::Result<()> {
        self.truncate_unclean(offset)
    }

    fn epoch_starts(&self) -> storage::Result<Vec<(u32, u64)>> {
        self.epochs()
    }

    fn retain_from(&self, offset: u64) {
        self.set_retain_from(offset)
    }
}

/// What one partition's share of a fetch answer may hold.
///
/// An answer has a hard byte budget that fits the message limit
/// (`room` is what is left of it) and a fair share per partition (`want`).
/// A partition gets its records while they fit both; its first record may
/// pass `want` (so a record larger than the share still moves) but never
/// `room`, except the first record of the whole answer (`first`), which is
/// always taken: the message limit leaves room for the largest record, so
/// a follower always makes progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    /// This partition's fair share of the answer, in bytes.
    pub want: usize,
    /// What is left of the answer's hard budget, in bytes.
    pub room: usize,
    /// Nothing is in the answer yet: the first record is taken whatever
    /// its size.
    pub first: bool,
}

impl ReadBudget {
    /// How many of the leading records, of `sizes` bytes each, to take.
    pub fn keep(&self, sizes: impl IntoIterator<Item = usize>) -> usize {
        let mut taken = 0usize;
        let mut n = 0usize;
        for size in sizes {
            let total = taken.saturating_add(size);
            let fits = total <= self.room && (total <= self.want || n == 0);
            if !(fits || (n == 0 && self.first)) {
                break;
            }
            taken = total;
            n += 1;
        }
        n
    }
}

/// The end offset of `epoch` in a log with `starts` (ascending
/// `(epoch, first offset)`) and log end `end`: where the next higher epoch
/// starts, or `end` for the last one. With the largest epoch `<= epoch`
/// actually present; `None` when there is none.
pub fn epoch_end(starts: &[(u32, u64)], epoch: u32, end: u64) -> Option<(u32, u64)> {
    let i = starts.partition_point(|&(e, _)| e <= epoch);
    if i == 0 {
        return None;
    }
    let found = starts[i - 1].0;
    let end = starts.get(i).map_or(end, |&(_, start)| start);
    Some((found, end))
}

/// The records the budget keeps, concatenated, and how many.
fn pack(mut records: Vec<storage::Record>, budget: ReadBudget) -> (Bytes, u32) {
    records.truncate(budget.keep(records.iter().map(|r| r.raw.len())));
    let count = records.len() as u32;
    if records.len() == 1 {
        return (records[0].raw.clone(), 1);
    }
    let mut buf = Vec::with_capacity(records.iter().map(|r| r.raw.len()).sum());
    for r in &records {
        buf.extend_from_slice(&r.raw);
    }
    (Bytes::from(buf), count)
}

#[cfg(test)]
mod tests {
    use super::{ReadBudget, epoch_end};

    #[test]
    fn a_fetch_budget_takes_records_while_they_fit() {
        let b = |want, room, first| ReadBudget { want, room, first };
        let mib = 1 << 20;
        // The first record of an answer is taken whatever its size.
        assert_eq!(b(10, 0, true).keep([mib]), 1);
        assert_eq!(b(10, 5, true).keep([mib, 1]), 1);
        // Later partitions: only records that fit what is left.
        assert_eq!(b(10, 5, false).keep([mib]), 0);
        assert_eq!(b(mib, mib - 1, false).keep([mib]), 0);
        assert_eq!(b(mib, mib, false).keep([mib]), 1);
        // A first record may pass the fair share, not the room.
        assert_eq!(b(10, 100, false).keep([50, 1]), 1);
        assert_eq!(b(100, 100, false).keep([50, 50, 1]), 2);
        assert_eq!(b(100, 1000, false).keep([50, 40, 20]), 2);
        assert_eq!(b(100, 1000, false).keep([]), 0);
        assert_eq!(b(10, 10, true).keep([usize::MAX, 1]), 1);
    }

    #[test]
    fn epoch_end_offsets() {
        let starts = [(1, 0), (2, 2), (5, 4)];
        assert_eq!(epoch_end(&starts, 0, 9), None);
        assert_eq!(epoch_end(&starts, 1, 9), Some((1, 2)));
        assert_eq!(epoch_end(&starts, 2, 9), Some((2, 4)));
        assert_eq!(epoch_end(&starts, 3, 9), Some((2, 4)));
        assert_eq!(epoch_end(&starts, 4, 9), Some((2, 4)));
        assert_eq!(epoch_end(&starts, 5, 9), Some((5, 9)));
        assert_eq!(epoch_end(&starts, 7, 9), Some((5, 9)));
        assert_eq!(epoch_end(&[], 7, 9), None);
    }
}
