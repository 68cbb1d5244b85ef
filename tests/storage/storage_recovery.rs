//! Recovery tests: the log cut at every byte of its last records, garbage and
//! zero-filled tails, flipped bits in sealed and active segments, damaged
//! hint files, records forged inside values. Recovery must keep exactly the
//! valid records up to the first damaged one, never serve a corrupted value,
//! and never apply bytes that lie inside another record (after a damaged
//! record, only the next segment's start is a trusted record boundary).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use caskade::storage::{Bitcask, Durability, Engine, Error, ManualClock, Options, SetOptions};
use tempfile::TempDir;

const T0: u64 = 1_767_225_600_000;

fn opts(segment_bytes: u64) -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes,
        cache_bytes: 0,
        ..Options::default()
    };
    o.limits.max_value_bytes = 256;
    o.limits.max_key_bytes = 64;
    o.merge.dead_ratio = 0.0;
    o
}

fn open(dir: &Path, segment_bytes: u64) -> Bitcask {
    Bitcask::open_with_clock(dir, opts(segment_bytes), Arc::new(ManualClock::new(T0))).unwrap()
}

fn logs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

fn hints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    v.sort();
    v
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}-{}", "x".repeat(i % 13)))
}

/// Writes `n` sets over 5 keys (some deletes) and returns the log's byte
/// length after each operation.
fn write_ops(e: &Bitcask, n: usize) -> Vec<u64> {
    let mut ends = Vec::new();
    for i in 0..n {
        let k = format!("k{}", i % 5);
        if i % 7 == 6 {
            e.delete(k.as_bytes()).unwrap();
        } else {
            e.set(k.as_bytes(), value(i), SetOptions::default())
                .unwrap();
        }
        ends.push(e.status().unwrap().disk_bytes);
    }
    ends
}

/// The expected key -> value map after the first `n` operations.
fn expected(n: usize) -> Vec<(String, Option<Bytes>)> {
    let mut state: std::collections::BTreeMap<String, Option<Bytes>> =
        (0..5).map(|k| (format!("k{k}"), None)).collect();
    for i in 0..n {
        let k = format!("k{}", i % 5);
        let v = if i % 7 == 6 { None } else { Some(value(i)) };
        state.insert(k, v);
    }
    state.into_iter().collect()
}

fn assert_state(e: &Bitcask, n: usize, what: &str) {
    for (k, v) in expected(n) {
        assert_eq!(e.get(k.as_bytes()).unwrap(), v, "{what}: key {k}");
    }
}

#[test]
fn cut_at_every_byte_of_the_last_records() {
    let src = TempDir::new().unwrap();
    let ends = {
        let e = open(src.path(), 1 << 20);
        write_ops(&e, 40)
    };
    let log = logs(src.path()).pop().unwrap();
    let full = fs::read(&log).unwrap();
    assert_eq!(full.len() as u64, *ends.last().unwrap());
    // Every byte position inside the last 8 records.
    let from = ends[31] as usize;
    for cut in from..=full.len() {
        let dir = TempDir::new().unwrap();
        let name = log.file_name().unwrap();
        fs::write(dir.path().join(name), &full[..cut]).unwrap();
        let complete = ends.iter().filter(|&&end| end as usize <= cut).count();
        let e = open(dir.path(), 1 << 20);
        assert_state(&e, complete, &format!("cut at {cut}"));
        assert_eq!(e.next_offset(), complete as u64, "cut at {cut}");
        drop(e);
        let kept = fs::metadata(dir.path().join(name)).unwrap().len();
        assert_eq!(
            kept,
            ends[complete - 1],
            "torn tail cut back (cut at {cut})"
        );
        // The engine goes on writing after the cut, and it all reopens.
        let e = open(dir.path(), 1 << 20);
        e.set(
            b"after",
            Bytes::from_static(b"crash"),
            SetOptions::default(),
        )
        .unwrap();
        drop(e);
        let e = open(dir.path(), 1 << 20);
        assert_eq!(e.get(b"after").unwrap().as_deref(), Some(&b"crash"[..]));
        assert_state(&e, complete, &format!("cut at {cut}, reopened"));
    }
}

#[test]
fn garbage_and_zero_tails_are_cut() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for case in 0..40 {
        let dir = TempDir::new().unwrap();
        let ends = {
            let e = open(dir.path(), 1 << 20);
            write_ops(&e, 20)
        };
        let log = logs(dir.path()).pop().unwrap();
        let len = 1 + (rnd() % 300) as usize;
        let tail: Vec<u8> = if case % 2 == 0 {
            vec![0; len]
        } else {
            (0..len).map(|_| rnd() as u8).collect()
        };
        let mut bytes = fs::read(&log).unwrap();
        bytes.extend_from_slice(&tail);
        fs::write(&log, &bytes).unwrap();
        let e = open(dir.path(), 1 << 20);
        assert_state(&e, 20, &format!("case {case}"));
        assert_eq!(e.status().unwrap().corrupt_ranges, 0);
        drop(e);
        assert_eq!(fs::metadata(&log).unwrap().len(), ends[19], "case {case}");
    }
}

/// Finds the byte position of the record with `needle` as its value.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("value present")
}

/// The base offset in a segment file's name.
fn base_of(log: &Path) -> u64 {
    log.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn flipped_bit_in_a_sealed_segment_skips_the_rest_of_that_segment() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), 600);
        for i in 0..60 {
            e.set(
                format!("key{i}").as_bytes(),
                value(i),
                SetOptions::default(),
            )
            .unwrap();
        }
    }
    for h in hints(dir.path()) {
        fs::remove_file(h).unwrap();
    }
    let all = logs(dir.path());
    let second_base = base_of(&all[1]);
    assert!(second_base > 3, "{second_base}");
    let first = &all[0];
    let mut bytes = fs::read(first).unwrap();
    let at = find(&bytes, &value(2));
    bytes[at] ^= 0x01;
    fs::write(first, &bytes).unwrap();
    let e = open(dir.path(), 600);
    assert_eq!(e.status().unwrap().corrupt_ranges, 1);
    assert_eq!(
        e.get(b"key2").unwrap(),
        None,
        "the damaged record is not served"
    );
    // After a damaged record nothing in its segment is trusted (where the
    // next record starts is unknown); the next segment starts at a known
    // boundary and is kept whole.
    for i in (0..60).filter(|&i| i != 2) {
        let want = (i < 2 || i as u64 >= second_base).then(|| value(i));
        assert_eq!(e.get(format!("key{i}").as_bytes()).unwrap(), want, "key{i}");
    }
    assert_eq!(e.next_offset(), 60);
    drop(e);
    assert_eq!(
        fs::read(first).unwrap(),
        bytes,
        "a sealed segment is not modified"
    );
}

#[test]
fn flipped_bit_in_the_active_segment_cuts_the_log_there() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), 1 << 20);
        for i in 0..10 {
            e.set(
                format!("key{i}").as_bytes(),
                value(i),
                SetOptions::default(),
            )
            .unwrap();
        }
    }
    let log = logs(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&log).unwrap();
    let at = find(&bytes, &value(4));
    let record_at = find(&bytes, b"key4") - 33;
    bytes[at + 3] ^= 0x80;
    fs::write(&log, &bytes).unwrap();
    let e = open(dir.path(), 1 << 20);
    assert_eq!(
        e.status().unwrap().corrupt_ranges,
        1,
        "valid-looking records followed: reported as corruption, not a torn tail"
    );
    for i in 0..10 {
        let want = (i < 4).then(|| value(i));
        assert_eq!(e.get(format!("key{i}").as_bytes()).unwrap(), want, "key{i}");
    }
    assert_eq!(e.next_offset(), 4);
    e.set(b"after", Bytes::from_static(b"cut"), SetOptions::default())
        .unwrap();
    drop(e);
    let e = open(dir.path(), 1 << 20);
    assert_eq!(e.get(b"after").unwrap().as_deref(), Some(&b"cut"[..]));
    assert_eq!(e.status().unwrap().corrupt_ranges, 0);
    assert_eq!(e.next_offset(), 5);
    drop(e);
    assert!(fs::read(&log).unwrap().starts_with(&bytes[..record_at]));
}

#[test]
fn corruption_after_open_is_an_error_not_a_value() {
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), 600);
    for i in 0..30 {
        e.set(
            format!("key{i}").as_bytes(),
            value(i),
            SetOptions::default(),
        )
        .unwrap();
    }
    // Damage a sealed (memory-mapped) segment under the running engine.
    let first = logs(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    let at = find(&bytes, &value(1));
    bytes[at] ^= 0x04;
    fs::write(&first, &bytes).unwrap();
    let err = e.get(b"key1").unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("checksum mismatch in record at"),
        "{err}"
    );
    assert_eq!(
        e.get(b"key0").unwrap(),
        Some(value(0)),
        "other records still served"
    );
}

#[test]
fn damaged_hints_fall_back_to_a_scan() {
    let src = TempDir::new().unwrap();
    {
        let e = open(src.path(), 600);
        write_ops(&e, 80);
        e.write_missing_hints().unwrap();
    }
    let hint_files = hints(src.path());
    assert!(hint_files.len() >= 3);
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("flipped byte", |b| b[30] ^= 0xff),
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("empty", |b| b.clear()),
        ("trailing junk", |b| b.extend_from_slice(b"junk")),
    ];
    for (what, damage) in damages {
        let dir = TempDir::new().unwrap();
        for entry in fs::read_dir(src.path()).unwrap() {
            let p = entry.unwrap().path();
            fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let h = dir.path().join(hint_files[1].file_name().unwrap());
        let mut bytes = fs::read(&h).unwrap();
        damage(&mut bytes);
        fs::write(&h, &bytes).unwrap();
        let e = open(dir.path(), 600);
        assert_state(&e, 80, what);
        assert_eq!(e.status().unwrap().corrupt_ranges, 0, "{what}");
    }
    // A hint that is intact but belongs to a longer file is ignored too.
    let dir = TempDir::new().unwrap();
    for entry in fs::read_dir(src.path()).unwrap() {
        let p = entry.unwrap().path();
        fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let log = dir.path().join(
        hint_files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".hint", ".log"),
    );
    let mut bytes = fs::read(&log).unwrap();
    bytes.truncate(bytes.len() - 1);
    fs::write(&log, &bytes).unwrap();
    let e = open(dir.path(), 600);
    assert_eq!(
        e.status().unwrap().corrupt_ranges,
        1,
        "scanned: the cut record of a sealed segment is reported, not hidden by the stale hint"
    );
}

#[test]
fn hints_reproduce_the_scanned_state() {
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), 600);
        write_ops(&e, 120);
        e.write_missing_hints().unwrap();
    }
    assert!(hints(dir.path()).len() >= 5);
    let e = open(dir.path(), 600);
    assert_state(&e, 120, "from hints");
    let with_hints = e.status().unwrap();
    drop(e);
    for h in hints(dir.path()) {
        fs::remove_file(h).unwrap();
    }
    let e = open(dir.path(), 600);
    assert_state(&e, 120, "from a scan");
    let scanned = e.status().unwrap();
    assert_eq!(with_hints.keys, scanned.keys);
    assert_eq!(with_hints.dead_bytes, scanned.dead_bytes);
    assert_eq!(with_hints.next_offset, scanned.next_offset);
}

/// Encodes a record by the documented layout (docs/STORAGE.md): what a user
/// can put inside a value to pose as a record.
fn forged(offset: u64, kind: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.push(kind);
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    let crc = crc32fast::hash(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn a_record_forged_inside_a_torn_value_is_not_applied() {
    let dir = TempDir::new().unwrap();
    // A tombstone for `victim` at offset 10^9, inside the value of `carrier`.
    let fake = forged(1_000_000_000, 2, b"victim", b"");
    let mut carrier = b"pad-pad".to_vec();
    carrier.extend_from_slice(&fake);
    carrier.extend_from_slice(&[b'z'; 60]);
    {
        let e = open(dir.path(), 1 << 20);
        e.set(
            b"victim",
            Bytes::from_static(b"alive"),
            SetOptions::default(),
        )
        .unwrap();
        for i in 0..3 {
            e.set(format!("k{i}").as_bytes(), value(i), SetOptions::default())
                .unwrap();
        }
        e.set(
            b"carrier",
            Bytes::from(carrier.clone()),
            SetOptions::default(),
        )
        .unwrap();
    }
    let log = logs(dir.path()).pop().unwrap();
    let bytes = fs::read(&log).unwrap();
    let carrier_at = find(&bytes, b"carrier") - 33;
    let fake_end = find(&bytes, &fake) + fake.len();
    // A torn write of the carrier: its forged record made it whole.
    fs::write(&log, &bytes[..fake_end + 10]).unwrap();
    let e = open(dir.path(), 1 << 20);
    assert_eq!(
        e.get(b"victim").unwrap().as_deref(),
        Some(&b"alive"[..]),
        "the forged tombstone was applied"
    );
    assert_eq!(e.get(b"carrier").unwrap(), None);
    assert_eq!(
        e.next_offset(),
        4,
        "next_offset jumped to the forged offset"
    );
    for i in 0..3 {
        assert_eq!(e.get(format!("k{i}").as_bytes()).unwrap(), Some(value(i)));
    }
    drop(e);
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        carrier_at as u64,
        "the torn carrier is cut off"
    );
}

#[test]
fn a_record_forged_inside_a_damaged_sealed_record_is_not_applied() {
    let dir = TempDir::new().unwrap();
    // `victim` is offset 0, `carrier` offset 1: the forged tombstone claims
    // exactly the carrier's offset and ends exactly where the carrier ends,
    // so it chains with the records after it. Only the carrier's header is
    // damaged.
    let fake = forged(1, 2, b"victim", b"");
    let mut carrier = b"pad".to_vec();
    carrier.extend_from_slice(&fake);
    {
        let e = open(dir.path(), 600);
        e.set(
            b"victim",
            Bytes::from_static(b"alive"),
            SetOptions::default(),
        )
        .unwrap();
        e.set(
            b"carrier",
            Bytes::from(carrier.clone()),
            SetOptions::default(),
        )
        .unwrap();
        for i in 0..40 {
            e.set(
                format!("key{i}").as_bytes(),
                value(i),
                SetOptions::default(),
            )
            .unwrap();
        }
    }
    for h in hints(dir.path()) {
        fs::remove_file(h).unwrap();
    }
    let all = logs(dir.path());
    assert!(all.len() >= 3, "{} segments", all.len());
    let first = &all[0];
    let mut bytes = fs::read(first).unwrap();
    let carrier_at = find(&bytes, b"carrier") - 33;
    bytes[carrier_at] ^= 0x01; // the carrier's CRC
    fs::write(first, &bytes).unwrap();
    let e = open(dir.path(), 600);
    assert_eq!(
        e.get(b"victim").unwrap().as_deref(),
        Some(&b"alive"[..]),
        "the forged tombstone was applied"
    );
    assert_eq!(e.get(b"carrier").unwrap(), None);
    assert_eq!(e.status().unwrap().corrupt_ranges, 1);
    assert_eq!(e.next_offset(), 42);
    // The rest of the damaged segment is not trusted; the next segments are.
    let second_base: u64 = all[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..40u64 {
        let want = (i + 2 >= second_base).then(|| value(i as usize));
        assert_eq!(e.get(format!("key{i}").as_bytes()).unwrap(), want, "key{i}");
    }
}
