//! Recovery tests: the log cut at every byte of its last records, garbage and
//! zero-filled tails, flipped bits in sealed and active segments, damaged
//! hint files. Recovery must keep exactly the valid records, never serve a
//! corrupted value, and never drop a valid record that follows a bad one.

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

#[test]
fn flipped_bit_in_a_sealed_segment_is_skipped_and_later_records_kept() {
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
    let first = logs(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    let at = find(&bytes, &value(2));
    bytes[at] ^= 0x01;
    fs::write(&first, &bytes).unwrap();
    let e = open(dir.path(), 600);
    assert_eq!(e.status().unwrap().corrupt_ranges, 1);
    assert_eq!(
        e.get(b"key2").unwrap(),
        None,
        "the damaged record is not served"
    );
    for i in (0..60).filter(|&i| i != 2) {
        assert_eq!(
            e.get(format!("key{i}").as_bytes()).unwrap(),
            Some(value(i)),
            "key{i}"
        );
    }
}

#[test]
fn flipped_bit_in_the_active_segment_keeps_later_records() {
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
    let before = fs::metadata(&log).unwrap().len();
    let mut bytes = fs::read(&log).unwrap();
    let at = find(&bytes, &value(4));
    bytes[at + 3] ^= 0x80;
    fs::write(&log, &bytes).unwrap();
    let e = open(dir.path(), 1 << 20);
    assert_eq!(e.status().unwrap().corrupt_ranges, 1);
    assert_eq!(e.get(b"key4").unwrap(), None);
    for i in (0..10).filter(|&i| i != 4) {
        assert_eq!(e.get(format!("key{i}").as_bytes()).unwrap(), Some(value(i)));
    }
    drop(e);
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        before,
        "corruption in the middle is not a torn tail: nothing truncated"
    );
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
