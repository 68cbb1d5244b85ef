//! The Bitcask engine: an append-only log of records in segment files, an
//! in-memory keydir pointing at the live record of each key, and an LRU
//! cache of hot values.
//!
//! Directory layout:
//!
//! ```text
//! LOCK                      flock'ed while an engine has the directory open
//! <base:020>.log            segment files, named by their base offset
//! <base:020>.hint           hint file of a sealed segment (optional)
//! merge/                    a merge in progress; merge/COMMIT marks it done
//! COMMITTED                 replica mode: the commit point (see [`replica`])
//! EPOCHS                    replica mode: the leader-epoch cache
//! ```
//!
//! Two modes share this code. *Standalone* ([`Bitcask::open`]) applies a
//! record to the keydir as soon as its write could be acknowledged.
//! *Replica* ([`Bitcask::open_replica`]) applies records only when the
//! replication layer commits them ([`Bitcask::commit`]); until then they
//! are in the log, served to followers, and decide conditional writes, but
//! reads do not see them.
//!
//! How it differs from the Bitcask paper: records carry a logical offset and
//! a leader epoch (they are the unit of replication), the keydir does not
//! store a timestamp, `EXPIRE` writes a self-contained record, and merge
//! rewrites a *prefix* of the log so tombstones can be dropped safely. The
//! full reasoning is in `docs/STORAGE.md`.
//!
//! Concurrency: readers take one keydir shard lock for a lookup and read the
//! disk without locks; writers go through [`writer`]'s group commit; merge and
//! truncation exclude each other through the maintenance mutex and publish
//! their results key by key. Segments are reference counted, so a reader that
//! holds one keeps its file and map alive across a merge.
//!
//! Background work (group commits of submitted writes, periodic fsync,
//! expiry sweep, checkpoints, hints, merge) runs on the node's pool of
//! threads ([`Workers`], see [`workers`]), shared by all its engines; an
//! engine opened alone gets a private pool. Closing an engine stops its
//! jobs: once `close` returns nothing runs for it.

mod background;
mod cache;
mod decide;
mod flush;
mod hint;
mod keydir;
mod log;
mod merge;
mod options;
mod pagealloc;
mod record;
mod recovery;
mod replica;
mod segment;
mod tail;
mod workers;
mod writer;

pub use cache::ValueCache;
pub use log::LogRecord;
pub use merge::MergeReport;
pub use options::{BackgroundOptions, MergeOptions, Options};
pub use record::{Header, Kind, Record};
pub use workers::{CommitCounts, Workers};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use hashbrown::HashMap;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use self::flush::{fsync, sync_dir};
use self::keydir::{Entry, KeyDir};
use self::replica::{CommitFile, Replica};
use self::segment::Segment;
use self::writer::{Batch, Writer};
use super::{
    Clock, Durability, Engine, Error, Expiry, Result, SetOptions, Status, SystemClock, Ttl,
    WriteOp, Written,
};

/// How many times a read retries when a merge moved its record meanwhile.
const READ_RETRIES: usize = 8;

/// The segment table: every open segment by id, and in log order.
#[derive(Default)]
struct Segments {
    /// Segment id -> segment.
    by_id: HashMap<u32, Arc<Segment>>,
    /// All segments by base offset; the last one is the active segment.
    ordered: Vec<Arc<Segment>>,
}

impl Segments {
    /// A table of `ordered` segments.
    fn new(ordered: Vec<Arc<Segment>>) -> Segments {
        Segments {
            by_id: ordered.iter().map(|s| (s.id, s.clone())).collect(),
            ordered,
        }
    }

    /// Adds a new active segment at the end.
    fn push(&mut self, seg: Arc<Segment>) {
        self.by_id.insert(seg.id, seg.clone());
        self.ordered.push(seg);
    }

    /// Adds `bytes` to the dead count of segment `id`, if it still exists.
    fn add_dead(&self, id: u32, bytes: u64) {
        if let Some(s) = self.by_id.get(&id) {
            s.dead.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Counters reported by [`Engine::status`].
#[derive(Default)]
struct Stats {
    /// Records written.
    records: AtomicU64,
    /// fsync calls on segment files.
    fsyncs: AtomicU64,
    /// Completed merges.
    merges: AtomicU64,
    /// Bytes written by completed merges (their output segments).
    merge_bytes: AtomicU64,
    /// Latency of fsync calls on segment files.
    fsync_latency: crate::storage::Histogram,
    /// Corrupt byte ranges found at open.
    corrupt_ranges: AtomicU64,
}

/// Everything the engine and its background jobs share.
struct Inner {
    /// The data directory.
    dir: PathBuf,
    /// Tuning options.
    opts: Options,
    /// Source of "now" for expiry.
    clock: Arc<dyn Clock>,
    /// The locked `LOCK` file; the lock lives as long as this handle.
    _lock: File,
    /// Key -> location of its live record, and the value cache.
    keydir: KeyDir,
    /// Open segments.
    segments: RwLock<Segments>,
    /// Next segment id to hand out.
    next_segment_id: AtomicU32,
    /// The write path's state (see [`writer`]).
    writer: Mutex<Writer>,
    /// Signalled whenever a batch finishes.
    batch_done: Condvar,
    /// Signalled when a record joins the batch being built.
    enqueued: Condvar,
    /// Writers inside `write` (queued or about to be).
    in_flight: AtomicUsize,
    /// Serialises merge and truncation.
    maintenance: Mutex<merge::Maintenance>,
    /// Counters.
    stats: Stats,
    /// The pool that runs the engine's background work (see [`workers`]).
    workers: Workers,
    /// The engine's registration with `workers`.
    slot: Arc<workers::Slot>,
    /// Set first thing by `close`: a merge in progress stops before its
    /// commit point (and its `merge/` is removed), so closing an engine
    /// never waits for a rate-limited merge.
    closing: AtomicBool,
    /// Replica mode's state; `None` in standalone mode.
    replica: Option<Replica>,
}

/// A Bitcask engine over one data directory. See the module docs.
pub struct Bitcask {
    /// Shared state.
    inner: Arc<Inner>,
}

/// What [`Bitcask::submit`] did with a write.
#[derive(Debug)]
pub enum Submitted {
    /// Decided with nothing to write: the answer.
    Done(Written),
    /// Queued: the answer once its group commit finishes.
    Queued(Completion),
    /// Not started: deciding it may need I/O; use the blocking write.
    Blocking,
}

/// A submitted write waiting for its group commit (see [`Bitcask::submit`]).
#[derive(Debug)]
#[must_use = "a submitted write is only acknowledged once its completion is awaited"]
pub struct Completion {
    /// The group commit the record is in.
    batch: Arc<Batch>,
    /// The record's index in it.
    index: usize,
    /// The answer, valid once the batch wrote the record.
    written: Written,
}

impl Completion {
    /// Waits for the group commit: the answer once the record is written
    /// (and fsynced under `always`), or the error that failed it.
    pub async fn wait(self) -> Result<Written> {
        self.batch.finished().await;
        self.batch.result_for(self.index).map(|()| self.written)
    }
}

impl Bitcask {
    /// Opens (creating if needed) the engine in `dir`, with the system clock.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Bitcask> {
        Self::open_with_clock(dir, opts, Arc::new(SystemClock))
    }

    /// Opens the engine with an explicit clock (tests move time by hand).
    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        opts: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Bitcask> {
        Self::open_mode(dir.as_ref(), opts, clock, false)
    }

    /// Opens in replica mode. Records at offsets `>=` the persisted commit
    /// point (file `COMMITTED` in the engine directory; 0 when missing) are
    /// recovered into the log but not applied to the keydir; they wait for
    /// [`Bitcask::commit`].
    pub fn open_replica(
        dir: impl AsRef<Path>,
        opts: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Bitcask> {
        Self::open_mode(dir.as_ref(), opts, clock, true)
    }

    /// Opens in either mode.
    fn open_mode(
        dir: &Path,
        opts: Options,
        clock: Arc<dyn Clock>,
        replica: bool,
    ) -> Result<Bitcask> {
        validate(&opts)?;
        let dir = dir.to_path_buf();
        let lock = recovery::lock_dir(&dir)?;
        let commit_file = replica.then(|| CommitFile::open(&dir)).transpose()?;
        let keydir = KeyDir::with_cache(opts.value_cache());
        let next_segment_id = AtomicU32::new(0);
        let commit = commit_file.as_ref().map(CommitFile::value);
        let loaded = recovery::load(&dir, &keydir, &next_segment_id, commit)?;
        let active = loaded
            .segments
            .last()
            .cloned()
            .ok_or_else(|| Error::Corrupt("no active segment after recovery".into()))?;
        let stats = Stats::default();
        stats
            .corrupt_ranges
            .store(loaded.corrupt_ranges, Ordering::Relaxed);
        let mut writer = Writer::new(active, loaded.next_offset);
        let replica = match commit_file {
            None => None,
            Some(mut file) => {
                let committed = file.value().min(loaded.next_offset);
                if committed < file.value() {
                    tracing::warn!(
                        dir = %dir.display(),
                        "commit point {} is past the log end {}; lowered to it",
                        file.value(),
                        loaded.next_offset
                    );
                    file.store(committed, true)?;
                }
                writer.pending = loaded.pending.into();
                writer.rebuild_unapplied();
                writer.epochs = replica::load_epochs(&dir, &loaded.segments, loaded.next_offset)?;
                writer.epoch = writer.epochs.last().map_or(0, |e| e.0);
                Some(Replica {
                    role: AtomicU64::new(replica::ROLE_UNSET),
                    committed: AtomicU64::new(committed),
                    retain_from: AtomicU64::new(0),
                    file: Mutex::new(file),
                })
            }
        };
        let workers = opts.workers()?;
        let inner = Arc::new_cyclic(|me| Inner {
            slot: workers.register(me.clone(), &opts),
            closing: AtomicBool::new(false),
            workers,
            dir,
            opts,
            clock,
            _lock: lock,
            keydir,
            segments: RwLock::new(Segments::new(loaded.segments)),
            next_segment_id,
            writer: Mutex::new(writer),
            batch_done: Condvar::new(),
            enqueued: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            maintenance: Mutex::new(merge::Maintenance::default()),
            stats,
            replica,
        });
        Ok(Bitcask { inner })
    }

    /// Runs a merge now, whatever the dead-byte ratio. Returns what it did.
    pub fn merge(&self) -> Result<MergeReport> {
        self.inner.merge()
    }

    /// Removes expired keys from the keydir now (the background sweep does
    /// this periodically). Returns how many were removed.
    pub fn sweep_expired(&self) -> usize {
        self.inner.sweep_expired()
    }

    /// Writes hint files for sealed segments that lack one. Returns how many.
    pub fn write_missing_hints(&self) -> Result<usize> {
        self.inner.write_missing_hints()
    }

    /// Records with offset `>= from` and below [`Bitcask::written_end`], in
    /// offset order, up to about `max_bytes` (at least one record if any).
    /// For replication: a sparse per-segment index finds the start.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<Vec<LogRecord>> {
        self.inner.read_log(from, max_bytes)
    }

    /// [`Bitcask::read_log`] when the log's last batches in memory hold
    /// `from` (replica mode: a follower fetching at or near the log end);
    /// `None` otherwise. Does no I/O, so async callers may call it on a
    /// runtime thread and fall back to `read_log` off it.
    pub fn read_log_memory(&self, from: u64, max_bytes: usize) -> Option<Result<Vec<LogRecord>>> {
        self.inner.read_log_memory(from, max_bytes)
    }

    /// Removes every record with offset `>= offset` and rebuilds the keydir;
    /// fails the writes queued meanwhile. For followers whose log diverged
    /// from the leader's. In replica mode it refuses (`InvalidInput`) to go
    /// below [`Bitcask::committed`]; see [`Bitcask::truncate_unclean`].
    /// Afterwards `next_offset() == offset`, or lower if the log ended lower.
    pub fn truncate(&self, offset: u64) -> Result<()> {
        self.inner.truncate(offset, false)
    }

    /// [`Bitcask::truncate`] that may go below the commit point (an unclean
    /// leader election): committed records are lost, which is logged with
    /// the offsets lost, and the commit point drops to `offset`.
    pub fn truncate_unclean(&self, offset: u64) -> Result<()> {
        self.inner.truncate(offset, true)
    }

    /// Sets the leader epoch stamped on records written from now on (replica
    /// mode). Epochs only grow: a value below the current one, or below the
    /// last epoch in the log, is `InvalidInput`.
    pub fn set_epoch(&self, epoch: u32) -> Result<()> {
        self.inner.set_epoch(epoch)
    }

    /// Decides and writes one operation (any [`WriteOp`], see
    /// `storage/ops.rs` for each one's answer); NX/XX, the existence checks
    /// and read-modify-writes (`INCRBY`, `APPEND`, ...) decide on the newest
    /// written state, uncommitted records included. In replica mode the write is not visible to reads
    /// until `commit(hw)` with `hw >= until`.
    pub fn write(&self, key: &[u8], op: WriteOp) -> Result<Written> {
        self.inner.write(key, op, None)
    }

    /// [`Bitcask::write`] without blocking the calling thread, for callers
    /// on an async runtime: decides `op` under the writer mutex (memory
    /// only, never held across I/O) and, when there is a record to write,
    /// queues it for the next group commit, which a commit worker of the
    /// node's pool leads, and returns a
    /// [`Completion`] to await. A waiting write then costs a task, not a
    /// thread parked until its fsync.
    ///
    /// Under `every_ms` and `never` there is no fsync to share: when no
    /// flush is running and the batch fits the active segment, the caller
    /// writes it itself (one `write(2)` of about a microsecond to the page
    /// cache; no fsync, no segment roll) and gets [`Submitted::Done`],
    /// which costs less than waking any thread for it (docs/BENCHMARKS.md,
    /// "caskade vs Redis over RESP"); otherwise the record is queued as
    /// under `always`.
    ///
    /// Returns [`Submitted::Blocking`] (the caller then runs
    /// [`Bitcask::write`] on a blocking thread) when the decision itself
    /// may need I/O (an `expire`, whose record carries the value, or an
    /// answer resting on a record still being written).
    pub fn submit(&self, key: &[u8], op: &WriteOp) -> Result<Submitted> {
        self.inner.submit(key, op, None)
    }

    /// [`Bitcask::submit`] of every op of `ops`, in order, under one take
    /// of the writer mutex: their records join one batch, so under
    /// `every_ms` / `never` the caller writes them with one `write(2)` (and
    /// one keydir pass) instead of one each, and under `always` a commit
    /// worker is woken once. Each op's answer is what `submit` would have
    /// given it, called op after op; once an op answers
    /// [`Submitted::Blocking`], the ops after it are not started and answer
    /// `Blocking` too, so running the declined ops in order on a blocking
    /// thread keeps the order of `ops`.
    pub fn submit_many(&self, ops: &[(&[u8], &WriteOp)]) -> Vec<Result<Submitted>> {
        self.inner.submit_many(ops, None)
    }

    /// Follower side (replica mode): appends records fetched from the leader
    /// unchanged, offsets and epochs kept. `records` is a concatenation of
    /// encoded records as in segment files (what [`Bitcask::read_log`]
    /// returns, concatenated). Every CRC is checked, offsets must increase
    /// strictly and start at or above [`Bitcask::next_offset`] (gaps are
    /// allowed), epochs must not decrease; if any check fails nothing is
    /// appended (`Corrupt` for a damaged record, `InvalidInput` otherwise).
    /// Durable per the fsync policy before it returns. The records are not
    /// applied until committed. Returns how many records were appended.
    ///
    /// An I/O error part-way keeps the records that reached the disk before
    /// it (as a failed group commit keeps its written prefix); `next_offset`
    /// tells where the log ends.
    pub fn append_replicated(&self, records: &[u8]) -> Result<usize> {
        self.inner.append_replicated(records)
    }

    /// Applies every written record with offset `< hw` to the keydir, in
    /// offset order. No I/O: it takes the writer mutex (never held across
    /// I/O) and the keydir's, so it may run on an async runtime. The commit
    /// point is checkpointed to `COMMITTED` in the background: by the periodic
    /// fsync after the log's fsync under `every_ms`, by the janitor (at
    /// most a second later) otherwise, and by `flush` and close; a crash
    /// loses at most the latest checkpoint interval of commit progress,
    /// never a record (the records stay in the log, uncommitted). Never moves backwards (a lower `hw` is ignored) and never past
    /// [`Bitcask::written_end`]. Returns the commit point. In standalone mode
    /// it does nothing and returns `next_offset`.
    pub fn commit(&self, hw: u64) -> Result<u64> {
        self.inner.commit_to(hw)
    }

    /// The commit point: records below it are visible (replica mode). In
    /// standalone mode, `next_offset`.
    pub fn committed(&self) -> u64 {
        match &self.inner.replica {
            Some(rep) => rep.committed.load(Ordering::Acquire),
            None => self.next_offset(),
        }
    }

    /// End of the records whose batch finished (written, and fsynced under
    /// `always`): the log end offset followers may be served up to.
    pub fn written_end(&self) -> u64 {
        self.inner.writer.lock().written_end
    }

    /// The leader-epoch cache (KIP-101): `(epoch, offset of its first
    /// record)`, ascending, for every epoch present in the log. In replica
    /// mode it is kept in memory and in the `EPOCHS` file; in standalone
    /// mode it is computed by scanning every record header (for tools).
    pub fn epochs(&self) -> Result<Vec<(u32, u64)>> {
        if self.inner.replica.is_some() {
            return Ok(self.inner.writer.lock().epochs.clone());
        }
        let segments = self.inner.segments.read().ordered.clone();
        replica::scan_epochs(&segments)
    }

    /// The epoch of the last record in the log (0 if the log is empty).
    pub fn last_epoch(&self) -> Result<u32> {
        Ok(self.epochs()?.last().map_or(0, |e| e.0))
    }

    /// Tombstones and expired records at offsets `>= offset` survive merge
    /// (the slowest replica has not passed them). Replica mode starts at 0
    /// (keep all); standalone ignores it (every tombstone in the merged range
    /// may go).
    pub fn set_retain_from(&self, offset: u64) {
        if let Some(rep) = &self.inner.replica {
            rep.retain_from.store(offset, Ordering::Release);
        }
    }

    /// The offset the next record will get (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.inner.writer.lock().next_offset
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Refuses further writes, writes what is queued, stops the engine's
    /// background jobs (waiting for a running one) and flushes. Idempotent;
    /// `Drop` calls it. Once it returns nothing runs for the engine on the
    /// pool, which holds no reference to it.
    pub fn close(&self) -> Result<()> {
        self.inner.closing.store(true, Ordering::Release);
        {
            // Refuse new writes, then write what is queued here (a pool
            // worker may be leading a batch: wait for it).
            let mut w = self.inner.writer.lock();
            w.closed = true;
            while w.flushing || !w.queue.is_empty() {
                if w.flushing {
                    self.inner.batch_done.wait(&mut w);
                } else {
                    self.inner.lead(&mut w);
                }
            }
        }
        self.inner.slot.close();
        self.inner.sync().and_then(|d| self.inner.sync_commit(d))
    }

    /// The pool running this engine's background work.
    pub fn workers(&self) -> &Workers {
        &self.inner.workers
    }
}

impl Drop for Bitcask {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(dir = %self.inner.dir.display(), "closing storage engine: {e}");
        }
    }
}

/// Rejects options the engine cannot work with.
fn validate(opts: &Options) -> Result<()> {
    let max_record = record::HEADER_LEN as u64
        + opts.limits.max_key_bytes as u64
        + opts.limits.max_value_bytes as u64;
    if opts.segment_bytes > (2 << 30) {
        return Err(Error::InvalidInput(format!(
            "segment_bytes {} is over the 2 GiB limit",
            opts.segment_bytes
        )));
    }
    if opts.segment_bytes < max_record {
        return Err(Error::InvalidInput(format!(
            "segment_bytes {} is smaller than the largest record ({max_record} bytes)",
            opts.segment_bytes
        )));
    }
    if opts.limits.max_key_bytes as u64 > record::MAX_DECODE_KEY as u64
        || opts.limits.max_value_bytes as u64 > record::MAX_DECODE_VALUE as u64
    {
        return Err(Error::InvalidInput("key or value limit too large".into()));
    }
    if let Durability::EveryMs(0) = opts.fsync {
        return Err(Error::InvalidInput(
            "fsync every_ms must be at least 1".into(),
        ));
    }
    Ok(())
}

impl Inner {
    /// The segment with id `id`, if it is still open.
    fn segment(&self, id: u32) -> Option<Arc<Segment>> {
        self.segments.read().by_id.get(&id).cloned()
    }

    /// Reads the value of the record `entry` points at and checks its key.
    /// `Ok(None)` when the segment is gone (a merge moved the record).
    fn read_value(&self, key: &[u8], entry: Entry) -> Result<Option<Bytes>> {
        let Some(seg) = self.segment(entry.seg) else {
            return Ok(None);
        };
        let (header, buf) = seg.read_record(entry.pos as u64, entry.len as usize)?;
        let key_end = record::HEADER_LEN + header.key_len as usize;
        if &buf[record::HEADER_LEN..key_end] != key {
            return Err(Error::Corrupt(crate::storage::Text::naming(
                format!(
                    "record at {}:{} holds another key",
                    seg.path.display(),
                    entry.pos
                ),
                &seg.path,
            )));
        }
        Ok(Some(Bytes::from(buf).slice(key_end..)))
    }

    /// The live value of `key` through the cache.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.opts.limits.check_key(key)?;
        for _ in 0..READ_RETRIES {
            let now = self.clock.now_ms();
            let entry = {
                let mut shard = self.keydir.shard(key);
                let Some(entry) = shard.get(key) else {
                    return Ok(None);
                };
                if entry.expired(now) {
                    return Ok(None);
                }
                if let Some(v) = shard.cached_at(key, entry) {
                    return Ok(Some(v));
                }
                entry
            };
            let Some(value) = self.read_value(key, entry)? else {
                continue;
            };
            let mut shard = self.keydir.shard(key);
            if shard.get(key) == Some(entry) {
                shard.cache(key, &value);
            }
            return Ok(Some(value));
        }
        Err(Error::Io {
            context: "read".into(),
            path: None,
            source: std::io::Error::other("record kept moving under concurrent merges"),
        })
    }

    /// End of the records the keydir reflects: the commit point in replica
    /// mode, the written end in standalone mode.
    fn applied_end(&self, w: &Writer) -> u64 {
        match &self.replica {
            Some(rep) => rep.committed.load(Ordering::Acquire),
            None => w.written_end,
        }
    }

    /// Waits until `batch` is done, leading group commits while no one else
    /// is.
    fn wait_batch(&self, w: &mut MutexGuard<'_, Writer>, batch: &Arc<Batch>) {
        while !batch.is_done() {
            if w.flushing {
                self.batch_done.wait(w);
            } else {
                self.lead(w);
            }
        }
    }
}

/// Applies one record to the keydir, reporting bytes that became dead.
/// `value`, the value of a put-like record written by this engine (not
/// recovered, not appended from a leader), is offered to the value cache
/// in the same shard lock scope (see `keydir::Shard::fill`).
fn apply_one(
    keydir: &KeyDir,
    key: &[u8],
    kind: Kind,
    entry: Entry,
    value: Option<&[u8]>,
    dead: &mut impl FnMut(u32, u64),
) {
    let mut shard = keydir.shard(key);
    let old = if kind.is_put_like() {
        let old = shard.insert(key, entry);
        if let Some(value) = value {
            shard.fill(key, entry, value);
        }
        old
    } else {
        // A tombstone is itself dead weight from the moment it is written.
        dead(entry.seg, entry.len as u64);
        shard.remove(key)
    };
    if let Some(old) = old {
        dead(old.seg, old.len as u64);
    }
}

impl Engine for Bitcask {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.get(key)
    }

    fn submit(&self, key: &[u8], op: &WriteOp) -> Result<Submitted> {
        Bitcask::submit(self, key, op)
    }

    fn submit_many(&self, ops: &[(&[u8], &WriteOp)]) -> Vec<Result<Submitted>> {
        Bitcask::submit_many(self, ops)
    }

    fn get_cached(&self, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        self.inner.opts.limits.check_key(key)?;
        let mut shard = self.inner.keydir.shard(key);
        Ok(match shard.get(key) {
            None => Some(None),
            // The clock is read only for a key that can expire.
            Some(e) if e.expire_at != 0 && e.expired(self.inner.clock.now_ms()) => Some(None),
            Some(e) => shard.cached_at(key, e).map(Some),
        })
    }

    fn ttl_cached(&self, key: &[u8]) -> Result<Option<Ttl>> {
        // The keydir entry holds the expiry: no I/O.
        self.ttl(key).map(Some)
    }

    fn log_end(&self) -> Option<u64> {
        Some(self.next_offset())
    }

    fn set(&self, key: &[u8], value: Bytes, opts: SetOptions) -> Result<bool> {
        self.inner
            .write(key, WriteOp::Set(value, opts), None)
            .map(|w| w.done)
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.write(key, WriteOp::Delete, None).map(|w| w.done)
    }

    fn expire(&self, key: &[u8], expire_at_ms: u64) -> Result<bool> {
        self.inner
            .write(key, WriteOp::Expire(expire_at_ms), None)
            .map(|w| w.done)
    }

    fn write(&self, key: &[u8], op: WriteOp) -> Result<Written> {
        self.inner.write(key, op, None)
    }

    fn expiry(&self, key: &[u8]) -> Result<Expiry> {
        self.inner.opts.limits.check_key(key)?;
        let now = self.inner.clock.now_ms();
        Ok(match self.inner.keydir.get(key) {
            None => Expiry::Missing,
            Some(e) if e.expired(now) => Expiry::Missing,
            Some(e) if e.expire_at == 0 => Expiry::Persistent,
            Some(e) => Expiry::At(e.expire_at),
        })
    }

    fn live_keys(&self) -> Result<u64> {
        let now = self.inner.clock.now_ms();
        let mut n = 0;
        for i in 0..keydir::SHARDS {
            let shard = self.inner.keydir.shard_at(i);
            n += shard.iter().filter(|(_, e)| !e.expired(now)).count() as u64;
        }
        Ok(n)
    }

    fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.opts.limits.check_key(key)?;
        let now = self.inner.clock.now_ms();
        Ok(match self.inner.keydir.get(key) {
            None => Ttl::Missing,
            Some(e) if e.expired(now) => Ttl::Missing,
            Some(e) if e.expire_at == 0 => Ttl::Persistent,
            Some(e) => Ttl::ExpiresInMs(e.expire_at - now),
        })
    }

    fn keys(&self) -> Result<Vec<Bytes>> {
        let now = self.inner.clock.now_ms();
        let mut out = Vec::new();
        for i in 0..keydir::SHARDS {
            let shard = self.inner.keydir.shard_at(i);
            out.extend(
                shard
                    .iter()
                    .filter(|(_, e)| !e.expired(now))
                    .map(|(k, _)| Bytes::copy_from_slice(k)),
            );
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        let durable = self.inner.sync()?;
        self.inner.sync_commit(durable)
    }

    fn status(&self) -> Result<Status> {
        // The writer mutex is taken and released before the segment table's
        // read lock: a group-commit leader takes that read lock while it
        // holds the writer mutex, and with a merge waiting for the write
        // lock (parking_lot is fair) the opposite order deadlocks all three.
        let next_offset = self.inner.writer.lock().next_offset;
        let (cache_hits, cache_misses) = self.inner.keydir.cache_stats();
        let segments = self.inner.segments.read();
        Ok(Status {
            keys: self.inner.keydir.len() as u64,
            segments: segments.ordered.len() as u64,
            disk_bytes: segments.ordered.iter().map(|s| s.len()).sum(),
            dead_bytes: segments
                .ordered
                .iter()
                .map(|s| s.dead.load(Ordering::Relaxed))
                .sum(),
            next_offset,
            records_written: self.inner.stats.records.load(Ordering::Relaxed),
            fsyncs: self.inner.stats.fsyncs.load(Ordering::Relaxed),
            merges: self.inner.stats.merges.load(Ordering::Relaxed),
            merge_bytes_written: self.inner.stats.merge_bytes.load(Ordering::Relaxed),
            fsync_latency: self.inner.stats.fsync_latency.snapshot(),
            cache_hits,
            cache_misses,
            cache_fills: self.inner.keydir.cache_fills(),
            corrupt_ranges: self.inner.stats.corrupt_ranges.load(Ordering::Relaxed),
        })
    }
}
