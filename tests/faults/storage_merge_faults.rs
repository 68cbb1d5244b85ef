//! Merge under faults (build with `--features failpoints`): a merge running
//! in the window between a segment roll and the apply of the batch that
//! rolled, and real I/O errors (`EMFILE`) after a merge's `COMMIT`.
//!
//! Failpoints are process-wide, so the tests in this file run one at a time.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Durability, Engine, Error, ManualClock, Options, SetOptions, Submitted, WriteOp,
};
use fail::FailScenario;
use tempfile::TempDir;

const T0: u64 = 1_767_225_600_000;

/// Failpoints are global: every test here holds the binary's gate alone.
use crate::GATE as SERIAL;

fn opts(fsync: Durability) -> Options {
    let mut o = Options {
        fsync,
        segment_bytes: 1024,
        cache_bytes: 1 << 16,
        ..Options::default()
    };
    o.limits.max_value_bytes = 900;
    o.limits.max_key_bytes = 32;
    o.merge.dead_ratio = 0.0;
    o
}

fn open(dir: &Path, clock: &Arc<ManualClock>, fsync: Durability) -> Bitcask {
    Bitcask::open_with_clock(dir, opts(fsync), clock.clone()).unwrap()
}

/// Polls `cond` every millisecond for up to 5 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn put(v: &[u8]) -> WriteOp {
    WriteOp::Set(Bytes::copy_from_slice(v), SetOptions::default())
}

fn get(e: &Bitcask, k: &[u8]) -> Option<Vec<u8>> {
    e.get(k).unwrap().map(|v| v.to_vec())
}

/// Bug 1 of issue 10: a group commit that overflows segment S writes part
/// of its batch (a new value of `a`, a delete of `b`) into S, rolls, and only
/// then applies the batch. A merge in that window must not take S as input
/// (it would judge `a`'s new record and `b`'s tombstone dead from a keydir
/// that does not have them yet): every record of a merge input is applied.
#[test]
fn merge_between_roll_and_apply_keeps_acknowledged_set_and_delete() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::Always);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    e.set(b"a", Bytes::from_static(b"old"), SetOptions::default())
        .unwrap();
    e.set(b"b", Bytes::from_static(b"bbb"), SetOptions::default())
        .unwrap();
    // `x` leaves exactly 100 bytes in segment 0: room for the new `a` (37
    // bytes) and `b`'s tombstone (34), not for `y` (134).
    let used = e.status().unwrap().disk_bytes;
    let x = vec![b'x'; (1024 - used - 100 - 34) as usize];
    let fsyncs = e.status().unwrap().fsyncs;
    // Hold the committer in x's fsync, so the next three records form one
    // batch.
    fail::cfg("bitcask::fsync", "pause").unwrap();
    let Submitted::Queued(cx) = e.submit(b"x", &put(&x)).unwrap() else {
        panic!("an unconditional set under always is queued");
    };
    wait_until("x's fsync", || e.status().unwrap().fsyncs == fsyncs + 1);
    let mut batch = Vec::new();
    for (k, op) in [
        (&b"a"[..], put(b"new")),
        (&b"b"[..], WriteOp::Delete),
        (&b"y"[..], put(&[b'y'; 100])),
    ] {
        match e.submit(k, &op).unwrap() {
            Submitted::Queued(c) => batch.push(c),
            other => panic!("{op:?}: {other:?}"),
        }
    }
    // The batch's leader stops right after the roll, before applying.
    fail::cfg("bitcask::after_roll", "pause").unwrap();
    fail::remove("bitcask::fsync");
    rt.block_on(cx.wait()).unwrap();
    wait_until("the roll", || e.status().unwrap().segments == 2);
    let report = e.merge();
    // Released before any assertion, so a failing one does not hang.
    fail::remove("bitcask::after_roll");
    assert_eq!(
        report.unwrap().inputs,
        0,
        "segment 0 holds records not applied yet: not a merge input"
    );
    for c in batch {
        assert!(rt.block_on(c.wait()).unwrap().done, "acknowledged");
    }
    assert_eq!(get(&e, b"a").as_deref(), Some(&b"new"[..]));
    assert_eq!(get(&e, b"b"), None);
    // A merge now (everything applied) takes segment 0 and keeps both.
    assert_eq!(e.merge().unwrap().inputs, 1);
    assert_eq!(get(&e, b"a").as_deref(), Some(&b"new"[..]));
    assert_eq!(get(&e, b"b"), None);
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(get(&e, b"a").as_deref(), Some(&b"new"[..]), "SET survives");
    assert_eq!(get(&e, b"b"), None, "DEL stays deleted");
    assert_eq!(get(&e, b"x"), Some(x));
    assert_eq!(get(&e, b"y"), Some(vec![b'y'; 100]));
    scenario.teardown();
}

/// Writes a history with overwrites and deletes over several segments and
/// returns the expected live state.
fn populate(e: &Bitcask) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for round in 0..6u64 {
        for k in 0..30u64 {
            let key = format!("key{k}").into_bytes();
            let value = format!("r{round}-k{k}-{}", "v".repeat((k % 9) as usize)).into_bytes();
            e.set(&key, Bytes::from(value.clone()), SetOptions::default())
                .unwrap();
            model.insert(key, value);
        }
    }
    for k in (0..30u64).step_by(4) {
        let key = format!("key{k}").into_bytes();
        e.delete(&key).unwrap();
        model.remove(&key);
    }
    model
}

fn assert_matches(e: &Bitcask, model: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    let mut got = BTreeMap::new();
    for k in e.keys().unwrap() {
        got.insert(k.to_vec(), get(e, &k).unwrap());
    }
    assert_eq!(&got, model, "{what}");
}

/// The log's offsets from the start, which must strictly increase.
fn assert_offsets_increase(e: &Bitcask, what: &str) {
    let offsets: Vec<u64> = e
        .read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.header.offset)
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "{what}: offsets {offsets:?}"
    );
    assert_eq!(offsets.last(), Some(&(e.next_offset() - 1)), "{what}");
}

/// Bug 2 of issue 10: a real error after the merge's COMMIT (EMFILE while
/// opening the outputs) must not delete `merge/`: the merge is rolled
/// forward, by the next merge or by open, and nothing deleted comes back.
#[test]
fn error_after_merge_commit_rolls_forward_never_back() {
    let _serial = SERIAL.lock();
    for resume in ["next merge", "reopen"] {
        let scenario = FailScenario::setup();
        let dir = TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let e = open(dir.path(), &clock, Durability::Never);
        let mut model = populate(&e);
        let segments_before = e.status().unwrap().segments;
        fail::cfg("merge::open_output", "return").unwrap();
        let err = e.merge().unwrap_err();
        fail::remove("merge::open_output");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("Too many open files (os error 24)"),
            "{err}"
        );
        assert!(
            dir.path().join("merge/COMMIT").exists(),
            "{resume}: a committed merge is never deleted"
        );
        assert_matches(&e, &model, "after the failed merge");
        assert_offsets_increase(&e, "after the failed merge");
        // Writes go on meanwhile: a deleted key, a new one, an overwrite.
        e.delete(b"key1").unwrap();
        model.remove(&b"key1"[..]);
        e.set(b"new", Bytes::from_static(b"n"), SetOptions::default())
            .unwrap();
        model.insert(b"new".to_vec(), b"n".to_vec());
        e.set(b"key2", Bytes::from_static(b"two"), SetOptions::default())
            .unwrap();
        model.insert(b"key2".to_vec(), b"two".to_vec());
        let e = if resume == "next merge" {
            e.merge().unwrap();
            assert!(!dir.path().join("merge").exists(), "rolled forward");
            assert!(e.status().unwrap().segments < segments_before);
            assert_matches(&e, &model, "after the next merge");
            assert_offsets_increase(&e, "after the next merge");
            drop(e);
            open(dir.path(), &clock, Durability::Never)
        } else {
            drop(e);
            let e = open(dir.path(), &clock, Durability::Never);
            assert!(!dir.path().join("merge").exists(), "rolled forward");
            e
        };
        assert_matches(&e, &model, &format!("reopened ({resume})"));
        assert_offsets_increase(&e, &format!("reopened ({resume})"));
        e.merge().unwrap();
        assert_matches(&e, &model, &format!("merged again ({resume})"));
        drop(e);
        let e = open(dir.path(), &clock, Durability::Never);
        assert_matches(&e, &model, &format!("final reopen ({resume})"));
        assert_offsets_increase(&e, &format!("final reopen ({resume})"));
        scenario.teardown();
    }
}
