//! Fault injection through failpoints (build with `--features failpoints`;
//! `make test` does): a merge "crashing" after each of its steps, a failed
//! fsync under `always` and under `every_ms`, and a full disk on write.
//!
//! Failpoints are process-wide, so the tests in this file run one at a time.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Clock, Condition, Durability, Engine, Error, ManualClock, Options, SetOptions,
    Submitted, WriteOp,
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
    o.limits.max_value_bytes = 200;
    o.limits.max_key_bytes = 32;
    o.merge.dead_ratio = 0.0;
    o
}

fn open(dir: &Path, clock: &Arc<ManualClock>, fsync: Durability) -> Bitcask {
    Bitcask::open_with_clock(dir, opts(fsync), clock.clone()).unwrap()
}

/// Writes a history with overwrites, deletes, expiries and expired keys, and
/// returns the expected live state at the end.
fn populate(e: &Bitcask, clock: &ManualClock) -> BTreeMap<Vec<u8>, Bytes> {
    let mut model = BTreeMap::new();
    for round in 0..6u64 {
        for k in 0..30u64 {
            let key = format!("key{k}").into_bytes();
            let value = Bytes::from(format!("r{round}-k{k}-{}", "v".repeat((k % 9) as usize)));
            let ttl = (k % 10 == 3).then(|| clock.now_ms() + 1_000);
            e.set(
                &key,
                value.clone(),
                SetOptions {
                    expire_at_ms: ttl,
                    ..SetOptions::default()
                },
            )
            .unwrap();
            model.insert(key, value);
        }
    }
    for k in (0..30u64).step_by(4) {
        let key = format!("key{k}").into_bytes();
        e.delete(&key).unwrap();
        model.remove(&key);
    }
    for k in (1..30u64).step_by(5) {
        let key = format!("key{k}").into_bytes();
        if model.contains_key(&key) {
            e.expire(&key, clock.now_ms() + 50_000).unwrap();
        }
    }
    // Keys 3, 13 and 23 (set with a 1 s TTL, never deleted or re-expired)
    // expire now.
    clock.advance(2_000);
    model.retain(|k, _| {
        let n: u64 = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
        n % 10 != 3
    });
    model
}

fn assert_matches(e: &Bitcask, model: &BTreeMap<Vec<u8>, Bytes>, what: &str) {
    let mut got: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
    for k in e.keys().unwrap() {
        got.insert(k.to_vec(), e.get(&k).unwrap().unwrap());
    }
    assert_eq!(&got, model, "{what}");
}

#[test]
fn merge_interrupted_after_each_step_loses_and_resurrects_nothing() {
    let _serial = SERIAL.lock();
    let steps = [
        "merge::after_outputs",
        "merge::after_hints",
        "merge::after_commit",
        "merge::after_install",
        "merge::after_swap",
    ];
    for step in steps {
        let scenario = FailScenario::setup();
        let dir = TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let e = open(dir.path(), &clock, Durability::Never);
        let model = populate(&e, &clock);
        assert_matches(&e, &model, "before merge");
        let disk_before = e.status().unwrap().disk_bytes;
        fail::cfg(step, "return").unwrap();
        let err = e.merge().unwrap_err();
        assert_eq!(err.to_string(), "failpoint: injected crash", "{step}");
        fail::remove(step);
        drop(e); // the "crash": nothing after the failed step ran
        let e = open(dir.path(), &clock, Durability::Never);
        assert_matches(&e, &model, &format!("reopened after a crash at {step}"));
        assert!(
            !dir.path().join("merge").exists(),
            "{step}: merge dir resolved"
        );
        let committed = !matches!(step, "merge::after_outputs" | "merge::after_hints");
        let disk_after = e.status().unwrap().disk_bytes;
        if committed {
            assert!(
                disk_after < disk_before,
                "{step}: rolled forward ({disk_before} -> {disk_after})"
            );
        } else {
            assert_eq!(disk_after, disk_before, "{step}: rolled back");
        }
        // The engine merges and reopens normally afterwards.
        e.merge().unwrap();
        assert_matches(&e, &model, &format!("merged again after {step}"));
        drop(e);
        let e = open(dir.path(), &clock, Durability::Never);
        assert_matches(&e, &model, &format!("final reopen after {step}"));
        scenario.teardown();
    }
}

#[test]
fn failed_fsync_under_always_is_not_acknowledged_and_never_reappears() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::Always);
    e.set(b"before", Bytes::from_static(b"1"), SetOptions::default())
        .unwrap();
    fail::cfg("bitcask::fsync", "return").unwrap();
    let err = e
        .set(b"lost", Bytes::from_static(b"2"), SetOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(
        err.to_string()
            .ends_with(": Input/output error (os error 5)"),
        "{err}"
    );
    assert_eq!(
        e.get(b"lost").unwrap(),
        None,
        "an unacknowledged write is invisible"
    );
    fail::remove("bitcask::fsync");
    // fsyncgate: after a failed fsync nothing more is acknowledged until
    // the engine is reopened (a retried fsync could report success for
    // pages the kernel dropped), and flush fails.
    let refused = e
        .set(b"after", Bytes::from_static(b"3"), SetOptions::default())
        .unwrap_err();
    assert!(matches!(refused, Error::WritesRefused(_)), "{refused}");
    assert!(e.flush().is_err());
    assert_eq!(e.next_offset(), 1, "the failed record gave its offset back");
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(e.get(b"lost").unwrap(), None, "and never reappears");
    // The record was cut off durably, so the offsets have no hole.
    e.set(b"after", Bytes::from_static(b"3"), SetOptions::default())
        .unwrap();
    assert_eq!(e.next_offset(), 2);
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(e.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(e.get(b"after").unwrap().as_deref(), Some(&b"3"[..]));
    scenario.teardown();
}

#[test]
fn failed_background_fsync_refuses_writes_but_serves_reads() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::EveryMs(5));
    e.set(b"k", Bytes::from_static(b"v"), SetOptions::default())
        .unwrap();
    fail::cfg("bitcask::fsync", "return").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        match e.set(b"k2", Bytes::from_static(b"v2"), SetOptions::default()) {
            Err(err) => break err,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the failed fsync was ignored");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert!(matches!(refusal, Error::WritesRefused(_)), "{refusal}");
    assert!(
        refusal
            .to_string()
            .starts_with("writes refused: fsync failed ("),
        "{refusal}"
    );
    fail::remove("bitcask::fsync");
    assert_eq!(
        e.get(b"k").unwrap().as_deref(),
        Some(&b"v"[..]),
        "reads go on"
    );
    scenario.teardown();
}

#[test]
fn disk_full_on_write_fails_cleanly_and_writes_resume() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::Always);
    for i in 0..20 {
        e.set(
            format!("k{i}").as_bytes(),
            Bytes::from(format!("v{i}")),
            SetOptions::default(),
        )
        .unwrap();
    }
    fail::cfg("bitcask::write", "return").unwrap();
    let err = e
        .set(b"k0", Bytes::from_static(b"new"), SetOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::DiskFull(_)), "{err}");
    assert!(
        err.to_string().starts_with("disk full: write ")
            && err
                .to_string()
                .ends_with("No space left on device (os error 28)"),
        "{err}"
    );
    let err = e.delete(b"k1").unwrap_err();
    assert!(matches!(err, Error::DiskFull(_)));
    for i in 0..20 {
        assert_eq!(
            e.get(format!("k{i}").as_bytes()).unwrap(),
            Some(Bytes::from(format!("v{i}"))),
            "reads go on, nothing changed"
        );
    }
    fail::remove("bitcask::write");
    e.set(b"k0", Bytes::from_static(b"new"), SetOptions::default())
        .unwrap();
    assert_eq!(e.next_offset(), 21, "failed writes left no offsets behind");
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(e.get(b"k0").unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(e.get(b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
    scenario.teardown();
}

/// Polls `cond` every millisecond for up to 5 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Submitted writes (`Bitcask::submit`, the async path the server uses
/// under `always`) wait as tasks, not threads: the 63 submitted while the
/// committer's first fsync is held up all go into its next group commit,
/// and each answer carries its exact offset.
#[test]
fn submitted_writes_share_the_next_group_commit() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    // One segment for all of it: a roll would add an fsync of its own.
    let one_segment = || Options {
        segment_bytes: 1 << 20,
        ..opts(Durability::Always)
    };
    let e = Bitcask::open_with_clock(dir.path(), one_segment(), clock.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let set = |k: &str, opts: SetOptions| WriteOp::Set(Bytes::from(format!("v-{k}")), opts);
    // Applied, and its value not cached: only on disk.
    e.write(b"ondisk", set("ondisk", SetOptions::default()))
        .unwrap();
    let before = e.status().unwrap();
    // Held until every write is submitted (a fixed delay could run out on
    // a loaded machine and split the writes into more batches).
    fail::cfg("bitcask::fsync", "pause").unwrap();
    let Submitted::Queued(first) = e.submit(b"k0", &set("k0", SetOptions::default())).unwrap()
    else {
        panic!("an unconditional set under always is queued");
    };
    wait_until("the committer's first fsync", || {
        e.status().unwrap().fsyncs == before.fsyncs + 1
    });
    let mut queued = vec![first];
    for i in 1..64 {
        let k = format!("k{i}");
        match e
            .submit(k.as_bytes(), &set(&k, SetOptions::default()))
            .unwrap()
        {
            Submitted::Queued(c) => queued.push(c),
            other => panic!("set {k}: {other:?}"),
        }
    }
    // Decisions without a record are answered at once; one that rests on a
    // record still being written, and an expire of a key whose value is on
    // disk only (its record carries the value), go to the blocking path.
    let nx = SetOptions {
        condition: Condition::IfAbsent,
        ..SetOptions::default()
    };
    let xx = SetOptions {
        condition: Condition::IfPresent,
        ..SetOptions::default()
    };
    assert!(matches!(
        e.submit(b"k5", &set("k5", nx)).unwrap(),
        Submitted::Blocking
    ));
    match e.submit(b"absent", &set("absent", xx)).unwrap() {
        Submitted::Done(w) => assert!(!w.done, "XX on an absent key does nothing"),
        other => panic!("XX on an absent key: {other:?}"),
    }
    match e.submit(b"absent", &WriteOp::Delete).unwrap() {
        Submitted::Done(w) => assert!(!w.done, "deleting an absent key does nothing"),
        other => panic!("delete of an absent key: {other:?}"),
    }
    assert!(matches!(
        e.submit(b"ondisk", &WriteOp::Expire(T0 + 10_000)).unwrap(),
        Submitted::Blocking
    ));
    // An expire of a key whose value memory holds (k1's record, still in
    // flight) is queued behind that record, into the same group commit.
    let Submitted::Queued(expire) = e.submit(b"k1", &WriteOp::Expire(T0 + 10_000)).unwrap() else {
        panic!("an expire of a value in memory is queued");
    };
    fail::remove("bitcask::fsync");
    for (i, c) in queued.into_iter().enumerate() {
        let w = rt.block_on(c.wait()).unwrap();
        assert!(w.done);
        assert_eq!(
            w.until,
            i as u64 + 2,
            "k{i} was written at offset {}",
            i + 1
        );
    }
    let w = rt.block_on(expire.wait()).unwrap();
    assert_eq!((w.done, w.until), (true, 66));
    let after = e.status().unwrap();
    assert_eq!(after.records_written - before.records_written, 65);
    assert_eq!(
        after.fsyncs - before.fsyncs,
        2,
        "one fsync for k0, one for the other 63 and the expire"
    );
    assert_eq!(after.segments, 1);
    drop(e);
    let e = Bitcask::open_with_clock(dir.path(), one_segment(), clock.clone()).unwrap();
    for i in 0..64 {
        let k = format!("k{i}");
        assert_eq!(
            e.get(k.as_bytes()).unwrap(),
            Some(Bytes::from(format!("v-{k}")))
        );
    }
    assert_eq!(e.get(b"absent").unwrap(), None);
    assert_eq!(
        e.ttl(b"k1").unwrap(),
        caskade::storage::Ttl::ExpiresInMs(10_000)
    );
    scenario.teardown();
}

/// A submitted write whose fsync fails gets the error through its
/// completion, is never visible, and never reappears.
#[test]
fn submitted_write_with_a_failed_fsync_is_not_acknowledged() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::Always);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    fail::cfg("bitcask::fsync", "return").unwrap();
    let op = WriteOp::Set(Bytes::from_static(b"v"), SetOptions::default());
    let Submitted::Queued(c) = e.submit(b"lost", &op).unwrap() else {
        panic!("an unconditional set under always is queued");
    };
    let err = rt.block_on(c.wait()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with(": Input/output error (os error 5)"),
        "{err}"
    );
    assert_eq!(e.get(b"lost").unwrap(), None);
    fail::remove("bitcask::fsync");
    assert_eq!(e.next_offset(), 0, "the failed record gave its offset back");
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(e.get(b"lost").unwrap(), None, "and never reappears");
    scenario.teardown();
}

/// Under `every_ms`, writers do not wait for a running fsync: a write made
/// while a flush's fsync is held up returns before that flush does, and the
/// flush started meanwhile fsyncs it.
#[test]
fn writes_go_on_during_an_fsync() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    // A long interval: only the explicit flushes below fsync.
    let e = Arc::new(open(dir.path(), &clock, Durability::EveryMs(3_600_000)));
    e.set(b"a", Bytes::from_static(b"1"), SetOptions::default())
        .unwrap();
    let before = e.status().unwrap().fsyncs;
    fail::cfg("bitcask::fsync", "sleep(500)").unwrap();
    let first = std::thread::spawn({
        let e = e.clone();
        move || e.flush()
    });
    wait_until("the first flush's fsync", || {
        e.status().unwrap().fsyncs == before + 1
    });
    e.set(b"b", Bytes::from_static(b"2"), SetOptions::default())
        .unwrap();
    assert!(
        !first.is_finished(),
        "the write returned while the fsync was still running"
    );
    let second = std::thread::spawn({
        let e = e.clone();
        move || e.flush()
    });
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    fail::remove("bitcask::fsync");
    assert_eq!(
        e.status().unwrap().fsyncs,
        before + 2,
        "the second flush fsynced the write made during the first"
    );
    assert_eq!(e.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    scenario.teardown();
}

/// `submit_many` under `every_ms` writes its records with one `write(2)`:
/// when that write fails (ENOSPC, the first write only), every record of
/// the call fails with it and gives its offset back (op by op, only the
/// first would have failed); the next call writes all of them.
#[test]
fn submit_many_writes_its_records_with_one_write() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::EveryMs(1000));
    let ops: Vec<WriteOp> = (0..3)
        .map(|i| WriteOp::Set(Bytes::from(format!("v{i}")), SetOptions::default()))
        .collect();
    let keys = [b"k0", b"k1", b"k2"];
    let refs: Vec<(&[u8], &WriteOp)> = keys.iter().map(|k| &k[..]).zip(&ops).collect();
    fail::cfg("bitcask::write", "1*return->off").unwrap();
    let answers: Vec<String> = e
        .submit_many(&refs)
        .into_iter()
        .map(|a| match a {
            Err(e) => e.to_string(),
            Ok(other) => format!("{other:?}"),
        })
        .collect();
    assert_eq!(answers.len(), 3);
    for a in &answers {
        assert!(a.starts_with("disk full: write "), "{answers:?}");
    }
    assert_eq!(e.next_offset(), 0, "every offset given back");
    assert_eq!(e.get(b"k1").unwrap(), None);
    let untils: Vec<u64> = e
        .submit_many(&refs)
        .into_iter()
        .map(|a| match a {
            Ok(Submitted::Done(w)) => w.until,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(untils, [1, 2, 3]);
    assert_eq!(e.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
    fail::remove("bitcask::write");
    scenario.teardown();
}
