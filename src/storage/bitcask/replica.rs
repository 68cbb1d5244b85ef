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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BufMut;
use parking_lot::{Mutex, MutexGuard};

use super::flush::fsync_failed;
use super::keydir::{Entry, Key};
use super::record::{self, DecodeError, HEADER_LEN};
use super::segment::{Scanned, Segment};
use super::writer::{Batch, Location, Pending, Queued, Unapplied, Writer};
use super::{Inner, apply_one, fsync, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Durability, Error, Result};

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

/// The open `COMMITTED` file and what it holds.
pub(super) struct CommitFile {
    /// Its path.
    path: PathBuf,
    /// The open file.
    file: File,
    /// Sequence number of the newest slot written.
    seq: u64,
    /// The commit point in the newest slot.
    value: u64,
    /// Written since the last fsync.
    dirty: bool,
}

impl CommitFile {
    /// Opens the commit point file in `dir`, creating it if missing: its
    /// first slot (commit point 0) is written to a temporary file, fsynced,
    /// renamed into place and the directory fsynced, so `COMMITTED` never
    /// exists half-written. A file written by the first write of an older
    /// version (in place, so possibly torn) reads as 0: see [`read_slots`].
    pub fn open(dir: &Path) -> Result<CommitFile> {
        let path = dir.join(COMMITTED_FILE);
        let tmp = dir.join(format!("{COMMITTED_FILE}.tmp"));
        if !path.exists() {
            let mut first = vec![0u8; SLOT_STRIDE as usize];
            first.extend_from_slice(&encode_slot(1, 0));
            owner_only::create(&tmp)
                .and_then(|mut f| f.write_all(&first).and_then(|()| fsync(&f)))
                .ctx(|| format!("write {}", tmp.display()))?;
            fs::rename(&tmp, &path).ctx(|| format!("rename {}", tmp.display()))?;
            sync_dir(dir)?;
        } else if tmp.exists() {
            // A creation interrupted before its rename; the file is there.
            let _ = fs::remove_file(&tmp);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx(|| format!("open {}", path.display()))?;
        let bytes = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        let (seq, value) = read_slots(&bytes).ok_or_else(|| {
            Error::Corrupt(format!(
                "commit point file {} is damaged; move it aside to open with commit point 0",
                path.display()
            ))
        })?;
        Ok(CommitFile {
            path,
            file,
            seq,
            value,
            dirty: false,
        })
    }

    /// The commit point on file.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Writes `value` into the next slot (if it changed), and fsyncs if
    /// `sync` (also when an earlier write is not fsynced yet).
    pub fn store(&mut self, value: u64, sync: bool) -> Result<()> {
        if value != self.value || self.seq == 0 {
            let seq = self.seq + 1;
            let slot = encode_slot(seq, value);
            let at = (seq % 2) * SLOT_STRIDE;
            self.file
                .write_all_at(&slot, at)
                .ctx(|| format!("write {}", self.path.display()))?;
            self.seq = seq;
            self.value = value;
            self.dirty = true;
        }
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// fsyncs the file if a write is not durable yet.
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            fail::fail_point!("replica::sync_commit", |_| Err(Error::io(
                format!("fsync {}", self.path.display()),
                std::io::Error::from_raw_os_error(libc::EIO)
            )));
            fsync(&self.file).ctx(|| format!("fsync {}", self.path.display()))?;
            self.dirty = false;
        }
        Ok(())
    }
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

/// One encoded `COMMITTED` slot.
fn encode_slot(seq: u64, value: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(SLOT_LEN);
    b.extend_from_slice(COMMIT_MAGIC);
    b.put_u64_le(seq);
    b.put_u64_le(value);
    let crc = crc32fast::hash(&b);
    b.put_u32_le(crc);
    b
}

/// Decodes one slot: `(seq, committed)` if it is intact.
fn decode_slot(b: &[u8]) -> Option<(u64, u64)> {
    let b = b.get(..SLOT_LEN)?;
    if &b[..4] != COMMIT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[..20]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(b[4..12].try_into().ok()?);
    let value = u64::from_le_bytes(b[12..20].try_into().ok()?);
    Some((seq, value))
}

/// The newest intact slot of a `COMMITTED` file's bytes: `(seq, value)`.
///
/// Neither slot intact while the first slot (bytes 0..24) was never
/// written (empty, short, or zeros) is a torn *first* write: the first
/// write (seq 1) goes to the second slot and the second write to the first,
/// so only seq 1, commit point 0, was ever being written. That reads as
/// `(0, 0)`. Safe: 0 is exactly the value that write held, and the commit
/// point only bounds what is applied (reads, merge input, truncation);
/// nothing above it is lost, it waits in the log to be committed again.
/// Any other damage of both slots is refused (`None`): a lower commit
/// point than the one persisted would let a clean truncation drop
/// committed records.
fn read_slots(bytes: &[u8]) -> Option<(u64, u64)> {
    let a = decode_slot(bytes);
    let b = bytes.get(SLOT_STRIDE as usize..).and_then(decode_slot);
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
        (None, None) if bytes.iter().take(SLOT_LEN).all(|&x| x == 0) => Some((0, 0)),
        (a, b) => a.or(b),
    }
}

/// Encodes the epoch cache as the `EPOCHS` file's bytes.
fn encode_epochs(epochs: &[(u32, u64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + epochs.len() * 12);
    b.extend_from_slice(EPOCHS_MAGIC);
    b.extend_from_slice(&[EPOCHS_VERSION, 0, 0, 0]);
    b.put_u32_le(epochs.len() as u32);
    for &(epoch, start) in epochs {
        b.put_u32_le(epoch);
        b.put_u64_le(start);
    }
    let crc = crc32fast::hash(&b);
    b.put_u32_le(crc);
    b
}

/// Decodes the `EPOCHS` file's bytes; `None` if damaged or malformed
/// (epochs and offsets must both increase strictly).
fn decode_epochs(b: &[u8]) -> Option<Vec<(u32, u64)>> {
    if b.len() < 16 || &b[..4] != EPOCHS_MAGIC || b[4..8] != [EPOCHS_VERSION, 0, 0, 0] {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let count = u32::from_le_bytes(body[8..12].try_into().ok()?) as usize;
    let entries = &body[12..];
    if entries.len() != count.checked_mul(12)? {
        return None;
    }
    let out: Vec<(u32, u64)> = entries
        .chunks_exact(12)
        .map(|c| {
            let epoch = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let mut start = [0u8; 8];
            start.copy_from_slice(&c[4..12]);
            (epoch, u64::from_le_bytes(start))
        })
        .collect();
    out.windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
        .then_some(out)
}

/// Writes the epoch cache to `dir/EPOCHS` atomically (temporary name, fsync,
/// rename, fsync the directory).
pub(super) fn save_epochs(dir: &Path, epochs: &[(u32, u64)]) -> Result<()> {
    let path = dir.join(EPOCHS_FILE);
    let tmp = dir.join(format!("{EPOCHS_FILE}.tmp"));
    let mut f = owner_only::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(&encode_epochs(epochs))
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).ctx(|| format!("rename {}", tmp.display()))?;
    sync_dir(dir)
}

/// Every epoch in the log and the offset of its first record, by scanning
/// the record headers of `segments` (damaged ranges are skipped, as at open).
pub(super) fn scan_epochs(segments: &[Arc<Segment>]) -> Result<Vec<(u32, u64)>> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for seg in segments {
        for step in seg.scanner()? {
            if let Scanned::Record { header, .. } = step
                && out.last().is_none_or(|&(e, _)| header.epoch > e)
            {
                out.push((header.epoch, header.offset));
            }
        }
    }
    Ok(out)
}

/// The epoch of the last record in the log, if there is one.
fn last_record_epoch(segments: &[Arc<Segment>]) -> Result<Option<u32>> {
    for seg in segments.iter().rev().filter(|s| !s.is_empty()) {
        let mut last = None;
        for step in seg.scanner()? {
            if let Scanned::Record { header, .. } = step {
                last = Some(header.epoch);
            }
        }
        if last.is_some() {
            return Ok(last);
        }
    }
    Ok(None)
}

/// Loads the epoch cache at open: the `EPOCHS` file if it agrees with the
/// log (entries past the log end are trimmed: a truncation that crashed
/// before rewriting it), otherwise a scan of the headers, saved back.
pub(super) fn load_epochs(
    dir: &Path,
    segments: &[Arc<Segment>],
    next_offset: u64,
) -> Result<Vec<(u32, u64)>> {
    let path = dir.join(EPOCHS_FILE);
    let stored = match fs::read(&path) {
        Ok(b) => decode_epochs(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    let last = last_record_epoch(segments)?;
    if let Some(mut epochs) = stored {
        let before = epochs.len();
        epochs.retain(|&(_, start)| start < next_offset);
        let consistent = match (last, epochs.last()) {
            (None, None) => true,
            (Some(last), Some(&(e, _))) => last == e,
            _ => false,
        };
        if consistent {
            if epochs.len() != before {
                save_epochs(dir, &epochs)?;
            }
            return Ok(epochs);
        }
        tracing::warn!(dir = %dir.display(), "{} disagrees with the log; rebuilding it", path.display());
    }
    let epochs = scan_epochs(segments)?;
    save_epochs(dir, &epochs)?;
    Ok(epochs)
}

/// Records parsed from a leader's bytes, checked and ready to write.
struct Parsed {
    /// One per record, in order (offset, key, kind, expiry, length, epoch).
    queue: Vec<Queued>,
}

/// Parses and checks `bytes` (concatenated encoded records): every CRC,
/// strictly increasing offsets, non-decreasing epochs, and records that fit
/// in a segment.
fn parse_replicated(bytes: &[u8], segment_bytes: u64) -> Result<Parsed> {
    let mut queue: Vec<Queued> = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = record::decode(&bytes[at..]).map_err(|e| {
            let what = match e {
                DecodeError::Incomplete => "is cut short",
                DecodeError::Invalid => "fails its checksum or is malformed",
            };
            Error::Corrupt(format!(
                "replicated record {} (byte {at}) {what}; nothing appended",
                queue.len()
            ))
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

    /// See [`super::Bitcask::append_replicated`].
    pub(super) fn append_replicated(&self, bytes: &[u8]) -> Result<usize> {
        self.append_replicated_dense(bytes, u64::MAX)
    }

    /// See [`super::Bitcask::append_replicated_dense`].
    pub(super) fn append_replicated_dense(&self, bytes: &[u8], dense_from: u64) -> Result<usize> {
        self.replica("append_replicated")?;
        let Parsed { queue } = parse_replicated(bytes, self.opts.segment_bytes)?;
        let (Some(first), Some(last)) = (queue.first(), queue.last()) else {
            return Ok(0);
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
            if w.flushing {
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
        let old_next = w.next_offset;
        w.flushing = true;
        w.next_offset = new_next;
        let active = w.active.clone();
        let written = MutexGuard::unlocked(&mut w, || self.write_out(active, bytes, &queue, sync));
        if let Some(seg) = written.new_active {
            w.active = seg;
        }
        let ok = written.locations.len();
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
            None => Ok(ok),
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

    /// Applies the pending records below `target`, in offset order.
    pub(super) fn apply_pending(&self, w: &mut Writer, target: u64) {
        let segments = self.segments.read();
        while w.pending.front().is_some_and(|p| p.offset < target) {
            let Some(p) = w.pending.pop_front() else {
                break;
            };
            apply_one(&self.keydir, &p.key, p.kind, p.entry, &mut |id, bytes| {
                segments.add_dead(id, bytes)
            });
            if w.unapplied
                .get(&p.key)
                .is_some_and(|u| u.offset == p.offset)
            {
                w.unapplied.remove(&p.key);
            }
        }
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
            self.apply_pending(&mut w, target);
            rep.committed.store(target, Ordering::Release);
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
mod tests {
    use super::*;

    #[test]
    fn commit_slots_round_trip_and_survive_a_torn_slot() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut f = CommitFile::open(dir.path()).unwrap();
        assert_eq!(f.value(), 0);
        f.store(7, false).unwrap();
        f.store(9, true).unwrap();
        drop(f);
        assert_eq!(CommitFile::open(dir.path()).unwrap().value(), 9);
        // Damage the newest slot (seq 3 is in the slot at 512): the older wins.
        let path = dir.path().join(COMMITTED_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[512 + 13] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(CommitFile::open(dir.path()).unwrap().value(), 7);
        // Both damaged: refuse to guess.
        bytes[13] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = CommitFile::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is damaged"), "{err}");
    }

    #[test]
    fn epochs_file_round_trips_and_rejects_damage() {
        let epochs = vec![(1, 0), (2, 2), (5, 4)];
        let bytes = encode_epochs(&epochs);
        assert_eq!(decode_epochs(&bytes), Some(epochs));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert_eq!(decode_epochs(&bad), None, "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert_eq!(decode_epochs(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_epochs(&encode_epochs(&[(2, 5), (1, 6)])), None);
        assert_eq!(decode_epochs(&encode_epochs(&[])), Some(vec![]));
    }

    /// Bug 14 (c) of issue 10: gaps above the leader's dense point and an
    /// offset of `u64::MAX` (whose `last + 1` overflowed) are refused.
    #[test]
    fn appends_refuse_gaps_past_the_dense_point_and_offset_overflow() {
        let dir = tempfile::TempDir::new().unwrap();
        let e = super::super::Bitcask::open_replica(
            dir.path(),
            crate::storage::Options::default(),
            Arc::new(crate::storage::SystemClock),
        )
        .unwrap();
        let recs = |offsets: &[u64]| {
            let mut buf = Vec::new();
            for &o in offsets {
                record::encode(&mut buf, o, 1, None, record::Kind::Put, b"k", b"v");
            }
            buf
        };
        let refused = |r: Result<usize>| matches!(r, Err(Error::InvalidInput(_)));
        // A gap inside the batch, ending above the dense point.
        assert!(refused(e.append_replicated_dense(&recs(&[0, 5]), 3)));
        // A gap after the log end, past the dense point.
        assert!(refused(e.append_replicated_dense(&recs(&[4]), 3)));
        assert_eq!(e.next_offset(), 0);
        // Gaps below the dense point (a merged leader log) are fine.
        assert_eq!(e.append_replicated_dense(&recs(&[0, 2, 3]), 3).unwrap(), 3);
        assert_eq!(e.append_replicated_dense(&recs(&[4, 5]), 3).unwrap(), 2);
        assert_eq!(e.next_offset(), 6);
        // u64::MAX as an offset would overflow the log end.
        let top = recs(&[u64::MAX - 1, u64::MAX]);
        assert!(refused(e.append_replicated(&top)));
        assert!(refused(e.append_replicated(&recs(&[u64::MAX]))));
        assert_eq!(e.next_offset(), 6);
    }

    #[test]
    fn replicated_bytes_are_checked_record_by_record() {
        let mut buf = Vec::new();
        record::encode(&mut buf, 3, 1, None, record::Kind::Put, b"a", b"1");
        record::encode(&mut buf, 9, 2, Some(5), record::Kind::Put, b"b", b"2");
        let parsed = parse_replicated(&buf, 1 << 20).unwrap();
        let got: Vec<(u64, u32, u64)> = parsed
            .queue
            .iter()
            .map(|q| (q.offset, q.epoch, q.expire_at))
            .collect();
        assert_eq!(got, vec![(3, 1, 0), (9, 2, 5)]);
        let mut cut = buf.clone();
        cut.pop();
        let err = parse_replicated(&cut, 1 << 20).err().unwrap();
        assert_eq!(
            err.to_string(),
            "replicated record 1 (byte 35) is cut short; nothing appended"
        );
        let mut back = Vec::new();
        record::encode(&mut back, 3, 1, None, record::Kind::Put, b"a", b"1");
        record::encode(&mut back, 3, 1, None, record::Kind::Put, b"a", b"1");
        assert!(matches!(
            parse_replicated(&back, 1 << 20),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            parse_replicated(&buf, 20),
            Err(Error::InvalidInput(_))
        ));
    }
}
