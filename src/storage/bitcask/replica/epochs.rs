//! The `EPOCHS` file, the leader-epoch cache: its encoding, its rewrite
//! through a temporary name, and its rebuild from the record headers when
//! it is missing or inconsistent (the log is the truth).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::BufMut;

use super::super::segment::{Scanned, Segment};
use super::super::sync_dir;
use super::{EPOCHS_FILE, EPOCHS_MAGIC, EPOCHS_VERSION};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
use crate::storage::{Error, Result};

/// Encodes the epoch cache as the `EPOCHS` file's bytes.
pub(super) fn encode_epochs(epochs: &[(u32, u64)]) -> Vec<u8> {
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
pub(super) fn decode_epochs(b: &[u8]) -> Option<Vec<(u32, u64)>> {
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
pub(in crate::storage::bitcask) fn save_epochs(dir: &Path, epochs: &[(u32, u64)]) -> Result<()> {
    let path = dir.join(EPOCHS_FILE);
    let tmp = dir.join(format!("{EPOCHS_FILE}.tmp"));
    let mut f = owner_only::create(&tmp).ctx_at("create", &tmp)?;
    f.write_all(&encode_epochs(epochs))
        .and_then(|()| f.sync_all())
        .ctx_at("write", &tmp)?;
    fs::rename(&tmp, &path).ctx_at("rename", &tmp)?;
    sync_dir(dir)
}

/// Every epoch in the log and the offset of its first record, by scanning
/// the record headers of `segments` (damaged ranges are skipped, as at open).
pub(in crate::storage::bitcask) fn scan_epochs(
    segments: &[Arc<Segment>],
) -> Result<Vec<(u32, u64)>> {
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
pub(in crate::storage::bitcask) fn load_epochs(
    dir: &Path,
    segments: &[Arc<Segment>],
    next_offset: u64,
) -> Result<Vec<(u32, u64)>> {
    let path = dir.join(EPOCHS_FILE);
    let stored = match fs::read(&path) {
        Ok(b) => decode_epochs(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io_at("read", &path, e)),
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
