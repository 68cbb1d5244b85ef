//! The on-disk record: the unit of storage and of replication.
//!
//! Layout, little endian, [`HEADER_LEN`] = 33 bytes of header then the body:
//!
//! ```text
//! 0   crc32         u32   CRC-32 (crc32fast) of bytes 4..end of record
//! 4   offset        u64   the partition's logical log offset
//! 12  leader_epoch  u32   epoch of the leader that first wrote the record
//! 16  expire_at_ms  u64   absolute expiry in Unix ms; 0 = never
//! 24  kind          u8    1 = put, 2 = delete, 3 = expire
//! 25  key_len       u32
//! 29  value_len     u32
//! 33  key, value
//! ```
//!
//! Invariants:
//! - a record is valid only if its CRC matches and its kind and lengths are
//!   well formed; nothing from an invalid record is ever served;
//! - an `expire` record is self-contained: it carries the key's value again
//!   with the new expiry, so every live key is exactly one record on disk
//!   (see `docs/STORAGE.md` for why);
//! - a `delete` record (tombstone) has an empty value and no expiry.

use bytes::{BufMut, Bytes};

/// Bytes in a record header.
pub const HEADER_LEN: usize = 33;

/// Upper bound on a key length accepted when *decoding*, whatever the
/// configured limit: a header claiming more is garbage.
pub const MAX_DECODE_KEY: u32 = 1 << 20;

/// Upper bound on a value length accepted when decoding.
pub const MAX_DECODE_VALUE: u32 = 1 << 30;

/// What a record does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Sets the key to the value.
    Put = 1,
    /// Removes the key (a tombstone).
    Delete = 2,
    /// Re-sets the key's value with a new expiry (written by `EXPIRE`).
    Expire = 3,
}

impl Kind {
    /// The kind for a byte, if it names one.
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Expire),
            _ => None,
        }
    }

    /// Whether the record leaves the key with a value.
    pub fn is_put_like(self) -> bool {
        matches!(self, Kind::Put | Kind::Expire)
    }
}

/// The fixed-size header of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The logical log offset.
    pub offset: u64,
    /// The leader epoch that wrote it.
    pub epoch: u32,
    /// Absolute expiry in Unix ms; 0 = never.
    pub expire_at_ms: u64,
    /// What the record does.
    pub kind: Kind,
    /// Key length in bytes.
    pub key_len: u32,
    /// Value length in bytes.
    pub value_len: u32,
}

impl Header {
    /// Total length of the record this header starts.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key_len as usize + self.value_len as usize
    }

    /// The expiry as an option.
    pub fn expire_at(&self) -> Option<u64> {
        (self.expire_at_ms != 0).then_some(self.expire_at_ms)
    }
}

/// Why bytes do not decode as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the lengths it claims: a torn tail, or
    /// the end of the data.
    Incomplete,
    /// The header is malformed or the checksum does not match.
    Invalid,
}

/// Appends an encoded record to `buf` and returns its length.
pub fn encode(
    buf: &mut Vec<u8>,
    offset: u64,
    epoch: u32,
    expire_at_ms: Option<u64>,
    kind: Kind,
    key: &[u8],
    value: &[u8],
) -> usize {
    let start = buf.len();
    buf.reserve(HEADER_LEN + key.len() + value.len());
    buf.put_u32_le(0);
    buf.put_u64_le(offset);
    buf.put_u32_le(epoch);
    buf.put_u64_le(expire_at_ms.unwrap_or(0));
    buf.put_u8(kind as u8);
    buf.put_u32_le(key.len() as u32);
    buf.put_u32_le(value.len() as u32);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    let crc = crc32fast::hash(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// Reads a little-endian integer at `at`; the caller has checked the length.
fn le<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// Parses the header at the start of `bytes` without checking the CRC.
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let kind = Kind::from_u8(bytes[24]).ok_or(DecodeError::Invalid)?;
    let header = Header {
        offset: u64::from_le_bytes(le(bytes, 4)),
        epoch: u32::from_le_bytes(le(bytes, 12)),
        expire_at_ms: u64::from_le_bytes(le(bytes, 16)),
        kind,
        key_len: u32::from_le_bytes(le(bytes, 25)),
        value_len: u32::from_le_bytes(le(bytes, 29)),
    };
    if header.key_len == 0
        || header.key_len > MAX_DECODE_KEY
        || header.value_len > MAX_DECODE_VALUE
        || (kind == Kind::Delete && (header.value_len != 0 || header.expire_at_ms != 0))
    {
        return Err(DecodeError::Invalid);
    }
    Ok(header)
}

/// Decodes and verifies the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Header, DecodeError> {
    let header = decode_header(bytes)?;
    let len = header.record_len();
    if bytes.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let stored = u32::from_le_bytes(le(bytes, 0));
    if crc32fast::hash(&bytes[4..len]) != stored {
        return Err(DecodeError::Invalid);
    }
    Ok(header)
}

/// A decoded record that owns its bytes (as shipped by replication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The header.
    pub header: Header,
    /// The whole encoded record, header included.
    pub raw: Bytes,
}

impl Record {
    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.raw[HEADER_LEN..HEADER_LEN + self.header.key_len as usize]
    }

    /// The value (empty for a tombstone).
    pub fn value(&self) -> Bytes {
        let start = HEADER_LEN + self.header.key_len as usize;
        self.raw
            .slice(start..start + self.header.value_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 3, Some(1234), Kind::Put, b"key", b"value");
        buf
    }

    #[test]
    fn round_trip_exact_bytes() {
        let buf = sample();
        assert_eq!(buf.len(), HEADER_LEN + 3 + 5);
        let h = decode(&buf).unwrap();
        assert_eq!(
            h,
            Header {
                offset: 7,
                epoch: 3,
                expire_at_ms: 1234,
                kind: Kind::Put,
                key_len: 3,
                value_len: 5
            }
        );
        assert_eq!(&buf[HEADER_LEN..], b"keyvalue");
        // The layout is a wire format: pin it.
        assert_eq!(&buf[4..12], &7u64.to_le_bytes());
        assert_eq!(buf[24], 1);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = sample();
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]),
                Err(DecodeError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn zeroes_are_invalid() {
        assert_eq!(decode(&[0u8; 64]), Err(DecodeError::Invalid));
    }
}
