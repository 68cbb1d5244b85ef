//! Opening a data directory: the lock, finishing or discarding an interrupted
//! merge, and rebuilding the keydir from hint files and segment scans.
//!
//! Invariants:
//! - records are applied in offset order (segments by base offset, records
//!   in file order), so the newest record of a key wins;
//! - a hint is used only when it is intact and matches its segment's length;
//!   otherwise the segment is scanned and every record's CRC checked;
//! - recovery never applies bytes that lie inside another record's extent.
//!   The only trusted record boundaries are the start of a segment file, the
//!   end of a valid record, and the positions an intact hint lists. A
//!   damaged record's lengths are covered by the checksum that failed, so
//!   nothing after it in its segment is trusted: the scan stops there and
//!   never searches for the "next valid record" (a value can hold a
//!   well-formed record, with any offset, which such a search would apply);
//! - standalone, *last* segment: everything from the first damaged record on
//!   is cut off and the cut fsynced (a torn write; if valid-looking records
//!   follow, it is reported as corruption, `corrupt_ranges`, and logged as
//!   an error, since acknowledged records may be among them);
//! - standalone, *sealed* segment: the bytes from the first damaged record to
//!   the end of that segment are skipped and reported (`corrupt_ranges`),
//!   never modified; the next segment starts at a trusted boundary;
//! - replica mode (a commit point is given): the log is cut at the first
//!   damaged record, wherever it is, as Kafka does: later segments are
//!   deleted (last first, so a crash leaves a prefix and the next open
//!   redoes the cut), then the damaged segment is cut and the cut fsynced.
//!   The log end becomes the damaged record's offset (the last good record's
//!   plus one), so the follower fetches everything from there again from the
//!   leader. A commit point above it is lowered to it at open and logged as
//!   committed data that must be refetched;
//! - a merge that reached its `COMMIT` marker is rolled forward, any other
//!   merge output is deleted;
//! - in replica mode only records below the commit point are applied; the
//!   others are returned as pending, in offset order, and hints are used
//!   only for segments entirely below the commit point.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::hint::{self, HintEntry};
use super::keydir::{Entry, Key, KeyDir};
use super::merge;
use super::record::HEADER_LEN;
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Scanned, Segment};
use super::writer::Pending;
use super::{apply_one, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Error, Result};

/// Name of the lock file.
const LOCK_FILE: &str = "LOCK";

/// What recovery found.
pub(super) struct Loaded {
    /// Open segments by base offset; the last is active (unsealed).
    pub segments: Vec<Arc<Segment>>,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Corrupt byte ranges skipped.
    pub corrupt_ranges: u64,
    /// Replica mode: records at or above the commit point, in offset order,
    /// not applied.
    pub pending: Vec<Pending>,
}

/// Creates `dir` if needed and takes its exclusive lock.
pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    super::flush::create_dir_durably(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = owner_only::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx_at("open", &path)?;
    // fs4's flock, called by path: std's inherent `try_lock` needs Rust 1.89.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(fs4::TryLockError::Error(e)) => Err(Error::io_at("lock", &path, e)),
    }
}

/// Base offsets of the segment files in `dir`, sorted.
pub(super) fn segment_bases(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).ctx_at("list", dir)? {
        let entry = entry.ctx_at("list", dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_name(name, LOG_SUFFIX) {
            bases.push(base);
        } else if name.ends_with(".hint.tmp") {
            // A hint whose write was interrupted.
            let _ = fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Rebuilds the keydir from the files in `dir`. With `commit` (replica
/// mode) only records below it are applied; the rest are returned pending.
pub(super) fn load(
    dir: &Path,
    keydir: &KeyDir,
    next_id: &AtomicU32,
    commit: Option<u64>,
) -> Result<Loaded> {
    merge::recover(dir)?;
    let bases = segment_bases(dir)?;
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len() + 1);
    let mut next_offset = 0u64;
    let mut corrupt_ranges = 0u64;
    let mut pending = Vec::new();
    // Ids are handed out consecutively here, so a segment's index in
    // `segments` is its id minus the first one.
    let first_id = next_id.load(Ordering::Relaxed);
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let path = segment::file_path(dir, base, LOG_SUFFIX);
        let seg = Arc::new(Segment::open(path, id, base)?);
        let mut dead = |sid: u32, bytes: u64| {
            let s = segments.get(sid.wrapping_sub(first_id) as usize);
            if let Some(s) = s.filter(|s| s.id == sid) {
                s.dead.fetch_add(bytes, Ordering::Relaxed);
            } else if sid == seg.id {
                seg.dead.fetch_add(bytes, Ordering::Relaxed);
            }
        };
        // A hint lists no epochs and cannot tell applied records from
        // pending ones: only segments wholly below the commit point use it.
        let below_commit = commit.is_none_or(|c| bases.get(i + 1).is_some_and(|&next| next <= c));
        let hinted = if last || !below_commit {
            None
        } else {
            hint::read(&segment::file_path(dir, base, HINT_SUFFIX), seg.len())?
        };
        let mut cut_log = false;
        let last_offset = match hinted {
            Some(entries) => apply_hints(keydir, &seg, &entries, &mut dead),
            None => {
                let scan = scan_segment(keydir, &seg, commit, &mut pending, &mut dead)?;
                if let Some(damage) = scan.damaged {
                    let end = scan.last_offset.map_or(base, |o| o + 1);
                    corrupt_ranges += handle_damage(dir, &bases[i..], &seg, damage, end, commit)?;
                    cut_log = commit.is_some();
                }
                scan.last_offset
            }
        };
        if let Some(o) = last_offset {
            next_offset = next_offset.max(o + 1);
        }
        next_offset = next_offset.max(base);
        segments.push(seg);
        if cut_log {
            // Replica mode: the segments after the damage were deleted.
            break;
        }
    }
    if segments.is_empty() {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        segments.push(Arc::new(Segment::create(dir, id, 0)?));
        sync_dir(dir)?;
    }
    let sealed = segments.len() - 1;
    for seg in &segments[..sealed] {
        seg.seal()?;
    }
    if corrupt_ranges > 0 {
        tracing::error!(
            dir = %dir.display(),
            "{corrupt_ranges} corrupt byte range(s) skipped; keys whose newest record was there read as their previous value or absent"
        );
    }
    Ok(Loaded {
        segments,
        next_offset,
        corrupt_ranges,
        pending,
    })
}

/// Applies a segment's hint entries. Returns the last offset.
fn apply_hints(
    keydir: &KeyDir,
    seg: &Segment,
    entries: &[HintEntry],
    dead: &mut impl FnMut(u32, u64),
) -> Option<u64> {
    for e in entries {
        let entry = Entry {
            seg: seg.id,
            pos: e.pos,
            len: e.len,
            expire_at: e.expire_at,
        };
        apply_one(keydir, &e.key, e.kind, entry, None, dead);
    }
    entries.last().map(|e| e.offset)
}

/// What a segment scan found.
struct ScanResult {
    /// Offset of the last valid record.
    last_offset: Option<u64>,
    /// The first damaged record: nothing from it on was applied.
    damaged: Option<Damage>,
}

/// Where a scan stopped on a damaged record.
#[derive(Clone, Copy, Debug)]
struct Damage {
    /// Position of the damaged record.
    start: u64,
    /// Valid-looking records follow it (corruption rather than a torn tail).
    records_follow: bool,
}

/// Scans a segment, applying every valid record below `commit` (all of
/// them without one) and pushing the others to `pending`, up to the first
/// damaged record.
fn scan_segment(
    keydir: &KeyDir,
    seg: &Segment,
    commit: Option<u64>,
    pending: &mut Vec<Pending>,
    dead: &mut impl FnMut(u32, u64),
) -> Result<ScanResult> {
    let mut result = ScanResult {
        last_offset: None,
        damaged: None,
    };
    let mut scanner = seg.scanner()?;
    while let Some(step) = scanner.next() {
        match step {
            Scanned::Record { pos, header } => {
                let start = pos as usize + HEADER_LEN;
                let key = &scanner.data()[start..start + header.key_len as usize];
                let entry = Entry {
                    seg: seg.id,
                    pos: pos as u32,
                    len: header.record_len() as u32,
                    expire_at: header.expire_at_ms,
                };
                if commit.is_some_and(|c| header.offset >= c) {
                    pending.push(Pending {
                        offset: header.offset,
                        key: Key::from_slice(key),
                        kind: header.kind,
                        entry,
                    });
                } else {
                    apply_one(keydir, key, header.kind, entry, None, dead);
                }
                result.last_offset = Some(header.offset);
            }
            Scanned::Damaged {
                start,
                records_follow,
            } => {
                result.damaged = Some(Damage {
                    start,
                    records_follow,
                });
            }
        }
    }
    Ok(result)
}

/// Deals with a scan that stopped on a damaged record of `bases[0]`'s
/// segment `seg` (`bases[1..]` are the segments after it), as the module
/// invariants say. `end` is the offset after the last good record. Returns
/// the corrupt ranges to report.
fn handle_damage(
    dir: &Path,
    bases: &[u64],
    seg: &Segment,
    damage: Damage,
    end: u64,
    commit: Option<u64>,
) -> Result<u64> {
    let Damage {
        start,
        records_follow,
    } = damage;
    let last = bases.len() == 1;
    let bytes = seg.len() - start;
    let corrupt = u64::from(records_follow || !last);
    match commit {
        Some(commit) => {
            tracing::error!(
                segment = %seg.path.display(),
                "damaged record at position {start}: the replica log is cut at offset {end} \
                 ({bytes} bytes of this segment and {} later segment(s) dropped); \
                 the follower fetches them again from the leader",
                bases.len() - 1
            );
            if commit > end {
                tracing::error!(
                    dir = %dir.display(),
                    "committed records at offsets {end}..{commit} were lost to the damage: \
                     this replica serves them again only once refetched from the leader"
                );
            }
            cut_after(dir, bases)?;
            cut_segment(seg, start)?;
        }
        None if last => {
            if records_follow {
                tracing::error!(
                    segment = %seg.path.display(),
                    "damaged record at position {start} with valid-looking records after it: \
                     the log is cut there ({bytes} bytes dropped, acknowledged writes may be among them)"
                );
            } else {
                tracing::warn!(
                    segment = %seg.path.display(),
                    "cutting a torn tail of {bytes} bytes at position {start}"
                );
            }
            cut_segment(seg, start)?;
        }
        None => tracing::error!(
            segment = %seg.path.display(),
            "damaged record at position {start}: the {bytes} bytes from it to the end of \
             this sealed segment are skipped (where the next record starts is not known)"
        ),
    }
    Ok(corrupt)
}

/// Deletes the segments (and hints) of `bases[1..]`, the last first, and
/// the hint of `bases[0]`, then fsyncs `dir`.
fn cut_after(dir: &Path, bases: &[u64]) -> Result<()> {
    for &base in bases[1..].iter().rev() {
        remove_if_present(&segment::file_path(dir, base, HINT_SUFFIX))?;
        remove_if_present(&segment::file_path(dir, base, LOG_SUFFIX))?;
    }
    if let Some(&base) = bases.first() {
        remove_if_present(&segment::file_path(dir, base, HINT_SUFFIX))?;
    }
    sync_dir(dir)
}

/// Removes a file; a missing one is fine.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io_at("remove", path, e)),
        _ => Ok(()),
    }
}

/// Cuts `seg` (not yet mapped) back to `len` bytes and fsyncs the cut.
fn cut_segment(seg: &Segment, len: u64) -> Result<()> {
    seg.file()
        .and_then(|f| f.set_len(len).and_then(|()| f.sync_data()))
        .ctx_at("cut damaged tail of", &seg.path)?;
    seg.set_len(len);
    Ok(())
}

/// Builds the hint entries of a segment by scanning it.
pub(super) fn hint_entries(seg: &Segment) -> Result<Vec<HintEntry>> {
    let mut out = Vec::new();
    let mut scanner = seg.scanner()?;
    while let Some(step) = scanner.next() {
        if let Scanned::Record { pos, header } = step {
            let start = pos as usize + HEADER_LEN;
            let key = &scanner.data()[start..start + header.key_len as usize];
            out.push(HintEntry::new(pos, &header, key));
        } else {
            // Never describe a damaged segment with a hint: keep scanning it.
            return Err(Error::Corrupt(crate::storage::Text::naming(
                format!("segment {} has damaged records", seg.path.display()),
                &seg.path,
            )));
        }
    }
    Ok(out)
}
