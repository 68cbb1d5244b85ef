use std::fs;
use std::sync::Arc;

use super::append::parse_replicated;
use super::epochs::{decode_epochs, encode_epochs};
use super::*;
use crate::storage::bitcask::record;

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
