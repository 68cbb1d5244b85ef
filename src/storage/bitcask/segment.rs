//! Segment files: append-only runs of records, named by base offset.
//!
//! A segment is `<base offset, 20 digits>.log` in the data directory; its
//! records have offsets `>= base` and below the next segment's base, in
//! increasing order. Exactly one segment is *active* (appended to through the
//! writer); the others are *sealed*: fsynced, never written again, read
//! through a read-only memory map.
//!
//! Invariants:
//! - `len` only grows (except for a truncation, which makes a new `Segment`
//!   value for the file), and every byte below it has been handed to the OS;
//! - a sealed segment's file is never modified in place: merge and
//!   truncation write a new file and rename it over, so a map that a reader
//!   holds stays valid;
//! - the `id` is an in-memory handle, unique for the life of the process; the
//!   keydir refers to segments by it;
//! - the sparse offset index ([`OffsetIndex`]) describes only bytes below
//!   `len`, which never change for the life of a `Segment` value, so a point
//!   once added stays right; a merged or truncated file is a new `Segment`
//!   value and gets a fresh, empty index;
//! - a sealed segment that is mapped holds no file descriptor: sealing
//!   closes the file once the map exists (the map keeps the inode alive), so
//!   a node's open fds do not grow with its sealed segments. Only the active
//!   segment (and a sealed one that could not be mapped, read with pread)
//!   keeps its file open.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::Mmap;
use parking_lot::{MappedRwLockReadGuard, Mutex, RwLock, RwLockReadGuard};

use super::record::{self, DecodeError, HEADER_LEN, Header};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Error, Result};

/// File name suffix of segment files.
pub const LOG_SUFFIX: &str = "log";
/// File name suffix of hint files.
pub const HINT_SUFFIX: &str = "hint";

/// The sparse offset index keeps one point per this many bytes of records.
pub const INDEX_EVERY: u64 = 4096;

/// Bytes read at a time when walking the headers of an unmapped segment.
const WALK_CHUNK: usize = 256 << 10;

/// The path of the segment or hint file with base offset `base`.
pub fn file_path(dir: &Path, base: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base:020}.{suffix}"))
}

/// Parses a segment file name `<20 digits>.log` into its base offset.
pub fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One segment file.
#[derive(Debug)]
pub struct Segment {
    /// In-memory handle referenced by keydir entries.
    pub id: u32,
    /// Offset of the first record the segment may hold (its name).
    pub base: u64,
    /// Path of the `.log` file.
    pub path: PathBuf,
    /// The open file (read-write while active); `None` once the segment is
    /// sealed and mapped (reads go through the map).
    file: RwLock<Option<File>>,
    /// Bytes readable: written to the OS and fully formed records.
    len: AtomicU64,
    /// Read-only map, present once the segment is sealed.
    map: OnceLock<Mmap>,
    /// Bytes of records here that are overwritten, deleted or expired.
    pub dead: AtomicU64,
    /// A hint file exists for it (or it cannot have one): the janitor skips it.
    pub hinted: AtomicBool,
    /// Sparse offset -> position index, extended on demand (see [`Segment::seek`]).
    index: Mutex<OffsetIndex>,
}

/// A sparse index of a segment: `(offset, position)` of a record about every
/// [`INDEX_EVERY`] bytes, so a read by offset starts near its record instead
/// of walking the segment from its start.
///
/// It is built lazily: each [`Segment::seek`] first indexes the bytes appended
/// since the previous one, so every byte is walked once for the life of the
/// segment and the write path pays nothing.
#[derive(Debug, Default)]
pub struct OffsetIndex {
    /// Points in increasing offset (and position) order.
    points: Vec<(u64, u32)>,
    /// Bytes of the segment walked so far (a record boundary).
    walked: u64,
}

impl Segment {
    /// Creates a new, empty segment file (fails if it exists).
    pub fn create(dir: &Path, id: u32, base: u64) -> Result<Segment> {
        let path = file_path(dir, base, LOG_SUFFIX);
        let file = owner_only::options()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .ctx_at("create segment", &path)?;
        Ok(Segment::from_file(id, base, path, file, 0))
    }

    /// Opens an existing segment file for reading and appending.
    pub fn open(path: PathBuf, id: u32, base: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .ctx_at("open segment", &path)?;
        let len = file.metadata().ctx_at("stat segment", &path)?.len();
        Ok(Segment::from_file(id, base, path, file, len))
    }

    /// Wraps an open file.
    fn from_file(id: u32, base: u64, path: PathBuf, file: File, len: u64) -> Segment {
        Segment {
            id,
            base,
            path,
            file: RwLock::new(Some(file)),
            len: AtomicU64::new(len),
            map: OnceLock::new(),
            dead: AtomicU64::new(0),
            hinted: AtomicBool::new(false),
            index: Mutex::new(OffsetIndex::default()),
        }
    }

    /// The byte position from which a walk finds the first record with
    /// offset `>= from`: the position of the last indexed record with offset
    /// `<= from` (0 if none). Indexes the bytes appended since the last call
    /// first. Fails on a damaged header.
    pub fn seek(&self, from: u64) -> Result<u64> {
        let mut index = self.index.lock();
        let len = self.len();
        if index.walked < len {
            let OffsetIndex { points, walked } = &mut *index;
            let mut last_point = points.last().map(|p| p.1 as u64);
            *walked = self.walk_headers(*walked, len, |pos, header| {
                if last_point.is_none_or(|at| pos >= at + INDEX_EVERY) {
                    points.push((header.offset, pos as u32));
                    last_point = Some(pos);
                }
                true
            })?;
        }
        let i = index.points.partition_point(|p| p.0 <= from);
        Ok(match i {
            0 => 0,
            i => index.points[i - 1].1 as u64,
        })
    }

    /// Number of points in the sparse index (for tests).
    #[cfg(test)]
    pub fn index_points(&self) -> usize {
        self.index.lock().points.len()
    }

    /// Calls `visit(pos, header)` for each record from byte `pos` (a record
    /// boundary) up to `end`, until it returns `false`. Reads whole chunks,
    /// not one header at a time. Returns the position where it stopped (the
    /// start of the record `visit` refused, or `end`). Checks headers only,
    /// not CRCs; fails on a damaged header or a record crossing `end`.
    pub fn walk_headers(
        &self,
        mut pos: u64,
        end: u64,
        mut visit: impl FnMut(u64, &Header) -> bool,
    ) -> Result<u64> {
        let end = end.min(self.len());
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = 0u64;
        while pos < end {
            let map = self.map.get();
            let head: &[u8] = match map {
                Some(map) => &map[pos as usize..end as usize],
                None => {
                    let have =
                        pos >= buf_at && pos + HEADER_LEN as u64 <= buf_at + buf.len() as u64;
                    if !have {
                        let n = (end - pos).min(WALK_CHUNK as u64) as usize;
                        buf = self.read(pos, n)?;
                        buf_at = pos;
                    }
                    &buf[(pos - buf_at) as usize..]
                }
            };
            let header = record::decode_header(head).map_err(|_| {
                Error::Corrupt(crate::storage::Text::naming(
                    format!("damaged record header at {}:{pos}", self.path.display()),
                    &self.path,
                ))
            })?;
            let next = pos + header.record_len() as u64;
            if next > end {
                return Err(Error::Corrupt(crate::storage::Text::naming(
                    format!("record at {}:{pos} runs past {end}", self.path.display()),
                    &self.path,
                )));
            }
            if !visit(pos, &header) {
                return Ok(pos);
            }
            pos = next;
        }
        Ok(pos)
    }

    /// Bytes readable in the segment.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the segment holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the segment is sealed (memory-mapped, read-only).
    pub fn is_sealed(&self) -> bool {
        self.map.get().is_some()
    }

    /// The file, for the writer. Fails once the segment is sealed and
    /// mapped (its descriptor is closed then; nothing writes it any more).
    pub fn file(&self) -> std::io::Result<MappedRwLockReadGuard<'_, File>> {
        RwLockReadGuard::try_map(self.file.read(), Option::as_ref).map_err(|_| {
            std::io::Error::other(format!(
                "segment {} is sealed: its file is closed",
                self.path.display()
            ))
        })
    }

    /// Whether the segment still holds an open file descriptor (for tests).
    #[cfg(test)]
    pub fn has_open_file(&self) -> bool {
        self.file.read().is_some()
    }

    /// fdatasyncs the segment's file; a sealed segment whose descriptor was
    /// closed is opened again for it.
    pub fn sync_data(&self) -> std::io::Result<()> {
        if let Ok(file) = self.file() {
            return super::flush::fsync(&file);
        }
        super::flush::fsync(&File::open(&self.path)?)
    }

    /// Publishes bytes the writer appended: readers may now read below `len`.
    pub fn set_len(&self, len: u64) {
        self.len.store(len, Ordering::Release);
    }

    /// Seals the segment: maps it read-only. The caller has fsynced it.
    pub fn seal(&self) -> Result<()> {
        if self.is_sealed() || self.is_empty() {
            // An empty file cannot be mapped; reads of it never happen.
            return Ok(());
        }
        // SAFETY: sealed segment files are never modified or truncated in
        // place (see the module invariants); replacements are renamed over,
        // which leaves this mapping's inode intact.
        let mut file = self.file.write();
        let Some(f) = file.as_ref() else {
            return Ok(());
        };
        let map = unsafe { Mmap::map(f) }.ctx_at("map segment", &self.path)?;
        let _ = self.map.set(map);
        // The map keeps the inode alive: the descriptor is not needed any
        // more (readers that found no map retry through it, see `read`).
        *file = None;
        Ok(())
    }

    /// Drops this process' page mappings of a sealed segment after a full
    /// scan (hint writing), so the scan does not inflate RSS; the pages stay
    /// in the page cache and are mapped again on the next read.
    pub fn release_pages(&self) {
        if let Some(map) = self.map.get() {
            // SAFETY: the mapping is read-only and file-backed: after
            // DONTNEED the next access reads the same bytes from the file.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Reads `len` bytes at `pos` into a new buffer.
    pub fn read(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        if pos + len as u64 > self.len() {
            return Err(Error::Corrupt(crate::storage::Text::naming(
                format!(
                    "read past the end of {} ({pos}+{len} > {})",
                    self.path.display(),
                    self.len()
                ),
                &self.path,
            )));
        }
        if let Some(map) = self.map.get() {
            return Ok(map[pos as usize..pos as usize + len].to_vec());
        }
        let file = self.file.read();
        let Some(file) = file.as_ref() else {
            // Sealed meanwhile: the map was set before the file was closed.
            if let Some(map) = self.map.get() {
                return Ok(map[pos as usize..pos as usize + len].to_vec());
            }
            return Err(Error::Corrupt(crate::storage::Text::naming(
                format!("{} has neither a file nor a map", self.path.display()),
                &self.path,
            )));
        };
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos)
            .ctx_at("read", &self.path)?;
        Ok(buf)
    }

    /// Reads and verifies the record at `pos` with total length `len`.
    pub fn read_record(&self, pos: u64, len: usize) -> Result<(Header, Vec<u8>)> {
        let buf = self.read(pos, len)?;
        match record::decode(&buf) {
            Ok(h) if h.record_len() == len => Ok((h, buf)),
            _ => Err(Error::Corrupt(crate::storage::Text::naming(
                format!(
                    "checksum mismatch in record at {}:{pos}",
                    self.path.display()
                ),
                &self.path,
            ))),
        }
    }

    /// Iterates over the readable bytes with a [`Scanner`].
    pub fn scanner(&self) -> Result<Scanner<'_>> {
        Scanner::new(self)
    }

    /// The whole readable content: the map of a sealed segment, or a fresh
    /// read of an active one.
    fn contents(&self) -> Result<Contents<'_>> {
        match self.map.get() {
            Some(map) => Ok(Contents::Mapped(&map[..self.len() as usize])),
            None => Ok(Contents::Owned(self.read(0, self.len() as usize)?)),
        }
    }
}

/// Bytes of a segment, borrowed from its map or read into memory.
pub enum Contents<'a> {
    /// A sealed segment's map.
    Mapped(&'a [u8]),
    /// An active segment, read with pread.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Contents<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(b) => b,
            Contents::Owned(v) => v,
        }
    }
}

/// One step of a scan.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// A valid record at this byte position.
    Record {
        /// Byte position in the segment.
        pos: u64,
        /// The header.
        header: Header,
    },
    /// The record at `start` is damaged, incomplete, or out of offset order,
    /// and nothing from `start` to the end of the data is trusted: the
    /// lengths that would say where the next record starts are covered by
    /// the checksum that failed, and a search for the next valid-looking
    /// record can land inside a value that holds a well-formed record. This
    /// is the last step of a scan.
    Damaged {
        /// First untrusted byte.
        start: u64,
        /// Whether some later position decodes as a valid record with a
        /// larger offset than the last trusted one. For reporting only (it
        /// tells corruption from a plain torn tail); such records are never
        /// applied.
        records_follow: bool,
    },
}

/// Walks the records of a segment from its start, record by record, and
/// stops at the first one that is not valid ([`Scanned::Damaged`]).
pub struct Scanner<'a> {
    /// The segment's bytes.
    data: Contents<'a>,
    /// Next position to decode.
    pos: usize,
    /// Offset of the last valid record: a record whose offset does not
    /// exceed it is stale bytes that happen to decode, not a record.
    last_offset: Option<u64>,
    /// Set once the end or the damage has been reported.
    done: bool,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `segment`.
    fn new(segment: &'a Segment) -> Result<Scanner<'a>> {
        Ok(Scanner {
            data: segment.contents()?,
            pos: 0,
            last_offset: None,
            done: false,
        })
    }

    /// A scanner over raw bytes.
    #[cfg(test)]
    pub fn over(data: Vec<u8>) -> Scanner<'static> {
        Scanner {
            data: Contents::Owned(data),
            pos: 0,
            last_offset: None,
            done: false,
        }
    }

    /// The whole buffer being scanned.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether some position from `from` on decodes as a valid record with a
    /// larger offset than the last trusted one. Only for reporting: the
    /// position may lie inside another record's value.
    fn valid_looking_after(&self, from: usize) -> bool {
        let data: &[u8] = &self.data;
        (from..data.len().saturating_sub(HEADER_LEN - 1)).any(|p| {
            record::decode(&data[p..])
                .is_ok_and(|h| self.last_offset.is_none_or(|last| h.offset > last))
        })
    }
}

impl Iterator for Scanner<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        if self.done {
            return None;
        }
        let data: &[u8] = &self.data;
        if self.pos >= data.len() {
            self.done = true;
            return None;
        }
        match record::decode(&data[self.pos..]) {
            Ok(header) if self.last_offset.is_none_or(|last| header.offset > last) => {
                let pos = self.pos;
                self.pos += header.record_len();
                self.last_offset = Some(header.offset);
                Some(Scanned::Record {
                    pos: pos as u64,
                    header,
                })
            }
            Ok(_) | Err(DecodeError::Invalid) | Err(DecodeError::Incomplete) => {
                self.done = true;
                Some(Scanned::Damaged {
                    start: self.pos as u64,
                    records_follow: self.valid_looking_after(self.pos + 1),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::bitcask::record::{Kind, encode};

    fn records(n: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode(
                &mut buf,
                i,
                1,
                None,
                Kind::Put,
                format!("k{i}").as_bytes(),
                b"v",
            );
        }
        buf
    }

    /// A segment file in `dir` holding `n` records with `value_len`-byte values.
    fn segment_with(dir: &Path, n: u64, value_len: usize) -> Segment {
        let seg = Segment::create(dir, 0, 0).unwrap();
        append_puts(&seg, 0..n, value_len);
        seg
    }

    /// Appends puts of keys `k{i}` at offsets `2 i` for each `i` in `range`.
    fn append_puts(seg: &Segment, range: std::ops::Range<u64>, value_len: usize) {
        let mut buf = Vec::new();
        for i in range {
            encode(
                &mut buf,
                i * 2,
                1,
                None,
                Kind::Put,
                format!("k{i}").as_bytes(),
                &vec![b'v'; value_len],
            );
        }
        std::io::Write::write_all(&mut &*seg.file().unwrap(), &buf).unwrap();
        seg.set_len(seg.len() + buf.len() as u64);
    }

    /// The position of the first record with offset >= `from`, by a plain walk.
    fn position_of(seg: &Segment, from: u64) -> Option<(u64, u64)> {
        let mut found = None;
        seg.walk_headers(0, seg.len(), |pos, h| {
            if h.offset >= from {
                found = Some((pos, h.offset));
                return false;
            }
            true
        })
        .unwrap();
        found
    }

    /// Checks `seek(from)` against a plain walk for every `from` up to
    /// `max_from`: it lands on a record boundary at or before the wanted
    /// record, less than a stride plus one record before it.
    fn check_seeks(seg: &Segment, max_from: u64) {
        for from in 0..max_from {
            let start = seg.seek(from).unwrap();
            let want = position_of(seg, from);
            let mut got = None;
            seg.walk_headers(start, seg.len(), |pos, h| {
                if h.offset >= from {
                    got = Some((pos, h.offset));
                    return false;
                }
                true
            })
            .unwrap();
            assert_eq!(got, want, "from {from}");
            if let Some((pos, _)) = want {
                assert!(start <= pos, "from {from}: seek went past the record");
                assert!(
                    pos - start < INDEX_EVERY + 337,
                    "from {from}: {} bytes to walk",
                    pos - start
                );
            }
        }
    }

    #[test]
    fn seek_matches_a_walk_for_every_offset() {
        let dir = tempfile::TempDir::new().unwrap();
        // Records of 335..=337 bytes: a point every 13 records or so.
        let seg = segment_with(dir.path(), 1000, 300);
        check_seeks(&seg, 2002);
        let points = seg.index_points() as u64;
        assert!(
            (seg.len() / (INDEX_EVERY + 337)..=seg.len() / INDEX_EVERY + 1).contains(&points),
            "{points} points"
        );
    }

    #[test]
    fn index_grows_with_the_segment() {
        let dir = tempfile::TempDir::new().unwrap();
        let seg = segment_with(dir.path(), 100, 300);
        check_seeks(&seg, 200);
        let before = seg.index_points();
        append_puts(&seg, 100..200, 300);
        check_seeks(&seg, 402);
        assert!(
            seg.index_points() >= 2 * before - 1,
            "{before} -> {}",
            seg.index_points()
        );
    }

    #[test]
    fn sealing_closes_the_file_and_reads_go_through_the_map() {
        let dir = tempfile::TempDir::new().unwrap();
        let seg = segment_with(dir.path(), 100, 300);
        let before = seg.read(0, seg.len() as usize).unwrap();
        assert!(seg.has_open_file());
        seg.seal().unwrap();
        assert!(!seg.has_open_file());
        assert!(seg.file().is_err());
        assert_eq!(seg.read(0, seg.len() as usize).unwrap(), before);
        check_seeks(&seg, 200);
        // An fsync reopens the file by its path.
        seg.sync_data().unwrap();
    }

    #[test]
    fn walk_reports_a_damaged_header() {
        let dir = tempfile::TempDir::new().unwrap();
        let seg = segment_with(dir.path(), 3, 10);
        std::io::Write::write_all(&mut &*seg.file().unwrap(), &[9u8; 40]).unwrap();
        seg.set_len(seg.len() + 40);
        let err = seg.walk_headers(0, seg.len(), |_, _| true).unwrap_err();
        assert!(
            err.to_string().starts_with("damaged record header at"),
            "{err}"
        );
    }

    #[test]
    fn names_round_trip() {
        let p = file_path(Path::new("/x"), 42, LOG_SUFFIX);
        assert_eq!(p, Path::new("/x/00000000000000000042.log"));
        assert_eq!(parse_name("00000000000000000042.log", LOG_SUFFIX), Some(42));
        assert_eq!(parse_name("0000000000000000042.log", LOG_SUFFIX), None);
        assert_eq!(parse_name("00000000000000000042.hint", LOG_SUFFIX), None);
        assert_eq!(parse_name("0000000000000000004x.log", LOG_SUFFIX), None);
    }

    #[test]
    fn clean_scan_yields_every_record() {
        let data = records(5);
        let got: Vec<_> = Scanner::over(data).collect();
        assert_eq!(got.len(), 5);
        assert!(matches!(got[4], Scanned::Record { header, .. } if header.offset == 4));
    }

    #[test]
    fn scan_stops_at_damage_in_the_middle() {
        let data = records(5);
        let rec_len = data.len() / 5;
        let mut bad = data.clone();
        bad[rec_len * 2 + HEADER_LEN] ^= 0xff; // damage record 2's key
        let got: Vec<_> = Scanner::over(bad).collect();
        let offsets: Vec<u64> = got
            .iter()
            .filter_map(|s| match s {
                Scanned::Record { header, .. } => Some(header.offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![0, 1]);
        assert_eq!(
            got.last(),
            Some(&Scanned::Damaged {
                start: (rec_len * 2) as u64,
                records_follow: true
            })
        );
    }

    #[test]
    fn a_record_inside_a_value_is_never_a_record() {
        // A value holding a whole record with a later offset, after a
        // damaged header: the scan stops; it does not resynchronise on it.
        let mut inner = Vec::new();
        encode(&mut inner, 1_000_000_000, 1, None, Kind::Delete, b"x", b"");
        let mut data = records(2);
        let carrier_at = data.len();
        encode(&mut data, 2, 1, None, Kind::Put, b"carrier", &inner);
        for i in 3..5 {
            encode(&mut data, i, 1, None, Kind::Put, b"after", b"v");
        }
        data[carrier_at] ^= 1;
        let got: Vec<_> = Scanner::over(data).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Scanned::Damaged {
                start: carrier_at as u64,
                records_follow: true
            }
        );
    }

    #[test]
    fn torn_tail_is_reported_once() {
        let mut data = records(3);
        data.extend_from_slice(&[0u8; 100]);
        let got: Vec<_> = Scanner::over(data.clone()).collect();
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[3],
            Scanned::Damaged {
                start: (data.len() - 100) as u64,
                records_follow: false
            }
        );
    }
}
