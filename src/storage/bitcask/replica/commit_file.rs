//! The `COMMITTED` file: two checksummed slots written alternately, so a
//! torn write damages only the slot being written (format in the parent
//! module doc).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::BufMut;

use super::super::{fsync, sync_dir};
use super::{COMMIT_MAGIC, COMMITTED_FILE, SLOT_LEN, SLOT_STRIDE};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Error, Result};

/// The open `COMMITTED` file and what it holds.
pub(in crate::storage::bitcask) struct CommitFile {
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
                .ctx_at("write", &tmp)?;
            fs::rename(&tmp, &path).ctx_at("rename", &tmp)?;
            sync_dir(dir)?;
        } else if tmp.exists() {
            // A creation interrupted before its rename; the file is there.
            let _ = fs::remove_file(&tmp);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx_at("open", &path)?;
        let bytes = fs::read(&path).ctx_at("read", &path)?;
        let (seq, value) = read_slots(&bytes).ok_or_else(|| {
            Error::Corrupt(crate::storage::Text::naming(
                format!(
                    "commit point file {} is damaged; move it aside to open with commit point 0",
                    path.display()
                ),
                &path,
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
                .ctx_at("write", &self.path)?;
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
            fail::fail_point!("replica::sync_commit", |_| Err(Error::io_at(
                "fsync",
                &self.path,
                std::io::Error::from_raw_os_error(libc::EIO)
            )));
            fsync(&self.file).ctx_at("fsync", &self.path)?;
            self.dirty = false;
        }
        Ok(())
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
