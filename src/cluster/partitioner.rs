//! Which partition a key belongs to.
//!
//! Format (stable, part of the on-disk and wire contract; see docs/API.md):
//! `partition = fnv1a64(key) mod partition_count`, where `fnv1a64` is the
//! 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`) over the key's raw bytes.
//!
//! Invariants: the mapping depends on nothing but the key bytes and the
//! partition count, never on the platform, the process or a random seed, so
//! every node and every client agree. Changing the partition count moves
//! keys, which is why a data directory records its count and refuses
//! another (see [`crate::node`]).

/// The name under which `Metadata` advertises this scheme.
pub const PARTITIONER: &str = "fnv1a64-mod";

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `key` among `partition_count` partitions (which must be
/// at least 1).
pub fn partition_for(key: &[u8], partition_count: u32) -> u32 {
    debug_assert!(partition_count > 0);
    (fnv1a64(key) % u64::from(partition_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published FNV-1a 64 test vectors.
    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    /// Fixed keys land on fixed partitions: if this test fails, existing
    /// data directories and clients would route keys to the wrong partition.
    #[test]
    fn partition_numbers_are_stable() {
        let cases: [(&[u8], u32, u32); 10] = [
            (b"a", 8, 4),
            (b"hello", 8, 3),
            (b"foobar", 8, 0),
            (b"user:1000", 8, 1),
            (b"hello", 16, 11),
            (b"user:1000", 16, 9),
            (b"a", 1024, 140),
            (b"hello", 1024, 267),
            (b"key:000000000042", 1024, 416),
            (&[0, 255], 1024, 864),
        ];
        for (key, count, expected) in cases {
            assert_eq!(
                partition_for(key, count),
                expected,
                "key {key:?} count {count}"
            );
        }
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(partition_for(b"anything", 1), 0);
    }
}
