//! Hint files: the metadata of a sealed segment's records without values, so
//! recovery rebuilds the keydir without reading the values.
//!
//! `<base>.hint` sits beside `<base>.log`. Layout, little endian:
//!
//! ```text
//! magic "CSKH" | version u8 = 1 | 3 zero bytes | log_len u64 | count u64
//! count x ( offset u64 | pos u32 | len u32 | expire_at u64 | kind u8 | key_len u32 | key )
//! crc32 u32 of every byte before it
//! ```
//!
//! Invariants:
//! - a hint is used only if its checksum matches, it parses exactly, and its
//!   `log_len` equals the segment file's length; otherwise recovery scans the
//!   segment (a hint is an optimisation, never a source of truth);
//! - hints are written to a temporary name, fsynced and renamed into place;
//! - the entry count a hint declares never sizes a buffer beyond what its
//!   bytes can hold (a crafted count reserves nothing large).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::BufMut;

use super::record::{Header, Kind};
use crate::storage::Result;
use crate::storage::error::IoContext;
use crate::storage::owner_only;

/// First bytes of every hint file.
const MAGIC: &[u8; 4] = b"CSKH";
/// Format version.
const VERSION: u8 = 1;
/// Bytes before the first entry.
const PREAMBLE: usize = 24;

/// One record's metadata in a hint file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintEntry {
    /// Record offset.
    pub offset: u64,
    /// Byte position of the record in its segment.
    pub pos: u32,
    /// Record length.
    pub len: u32,
    /// Absolute expiry in ms; 0 = never.
    pub expire_at: u64,
    /// Record kind.
    pub kind: Kind,
    /// The key.
    pub key: Vec<u8>,
}

impl HintEntry {
    /// The hint entry for a record at `pos` with `header`.
    pub fn new(pos: u64, header: &Header, key: &[u8]) -> HintEntry {
        HintEntry {
            offset: header.offset,
            pos: pos as u32,
            len: header.record_len() as u32,
            expire_at: header.expire_at_ms,
            kind: header.kind,
            key: key.to_vec(),
        }
    }
}

/// Encodes a hint file's bytes.
fn encode(log_len: u64, entries: &[HintEntry]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(PREAMBLE + entries.len() * 40 + 4);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&[0; 3]);
    buf.put_u64_le(log_len);
    buf.put_u64_le(entries.len() as u64);
    for e in entries {
        buf.put_u64_le(e.offset);
        buf.put_u32_le(e.pos);
        buf.put_u32_le(e.len);
        buf.put_u64_le(e.expire_at);
        buf.put_u8(e.kind as u8);
        buf.put_u32_le(e.key.len() as u32);
        buf.extend_from_slice(&e.key);
    }
    let crc = crc32fast::hash(&buf);
    buf.put_u32_le(crc);
    buf
}

/// A cursor over hint bytes that fails instead of panicking on short input.
struct Cursor<'a> {
    /// Remaining bytes.
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Takes `n` bytes.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// Takes a little-endian integer of `N` bytes.
    fn int<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// The smallest encoded entry: offset, pos, len, expire_at, kind, key
/// length and a one-byte key.
const MIN_ENTRY: usize = 8 + 4 + 4 + 8 + 1 + 4 + 1;

/// Entries to reserve room for when a hint declares `count` and `rest`
/// bytes follow: never more than those bytes can hold, so a crafted count
/// cannot make a small file reserve a large buffer.
fn capacity_for(count: u64, rest: usize) -> usize {
    usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(rest / MIN_ENTRY)
}

/// Decodes hint bytes; `None` if anything is off.
fn decode(bytes: &[u8], log_len: u64) -> Option<Vec<HintEntry>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut c = Cursor { rest: body };
    if c.take(4)? != MAGIC || c.take(1)? != [VERSION] || c.take(3)? != [0; 3] {
        return None;
    }
    if u64::from_le_bytes(c.int()?) != log_len {
        return None;
    }
    let count = u64::from_le_bytes(c.int()?);
    let mut entries = Vec::with_capacity(capacity_for(count, c.rest.len()));
    for _ in 0..count {
        let offset = u64::from_le_bytes(c.int()?);
        let pos = u32::from_le_bytes(c.int()?);
        let len = u32::from_le_bytes(c.int()?);
        let expire_at = u64::from_le_bytes(c.int()?);
        let kind = match c.take(1)?[0] {
            1 => Kind::Put,
            2 => Kind::Delete,
            3 => Kind::Expire,
            _ => return None,
        };
        let key_len = u32::from_le_bytes(c.int()?) as usize;
        let key = c.take(key_len)?.to_vec();
        if key.is_empty() || pos as u64 + len as u64 > log_len {
            return None;
        }
        entries.push(HintEntry {
            offset,
            pos,
            len,
            expire_at,
            kind,
            key,
        });
    }
    c.rest.is_empty().then_some(entries)
}

/// Writes `path` atomically: temporary file, fsync, rename. The caller
/// fsyncs the directory.
pub fn write(path: &Path, log_len: u64, entries: &[HintEntry]) -> Result<()> {
    let tmp = tmp_path(path);
    let bytes = encode(log_len, entries);
    let mut f = owner_only::create(&tmp).ctx_at("create", &tmp)?;
    f.write_all(&bytes).ctx_at("write", &tmp)?;
    f.sync_all().ctx_at("fsync", &tmp)?;
    fs::rename(&tmp, path).ctx_at("rename", &tmp)?;
    Ok(())
}

/// Reads the hint at `path` for a segment of `log_len` bytes. `Ok(None)` when
/// it is missing or unusable (the caller scans the segment instead).
pub fn read(path: &Path, log_len: u64) -> Result<Option<Vec<HintEntry>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(decode(&bytes, log_len)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::storage::Error::io_at("read", path, e)),
    }
}

/// The temporary name a hint is written under.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_count_reserves_no_more_than_the_bytes_can_hold() {
        // A 40-byte body declaring 2^24 entries reserved 2^24 entries
        // (~1 GB of address space) before this bound.
        assert_eq!(capacity_for(1 << 24, 40), 1);
        assert_eq!(capacity_for(u64::MAX, 0), 0);
        assert_eq!(capacity_for(3, 10 * MIN_ENTRY), 3);
        // The real encoding of three entries fits the bound.
        let bytes = encode(1000, &entries());
        assert_eq!(decode(&bytes, 1000).map(|e| e.len()), Some(3));
    }

    fn entries() -> Vec<HintEntry> {
        (0..3u64)
            .map(|i| HintEntry {
                offset: 10 + i,
                pos: (i * 40) as u32,
                len: 40,
                expire_at: i,
                kind: if i == 1 { Kind::Delete } else { Kind::Put },
                key: format!("key{i}").into_bytes(),
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let bytes = encode(120, &entries());
        assert_eq!(decode(&bytes, 120), Some(entries()));
    }

    #[test]
    fn wrong_log_length_is_rejected() {
        assert_eq!(decode(&encode(120, &entries()), 121), None);
    }

    #[test]
    fn every_truncation_and_flip_is_rejected() {
        let bytes = encode(120, &entries());
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 120), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad, 120), None, "flip at {i}");
        }
    }
}
