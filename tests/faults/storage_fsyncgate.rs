//! The fsyncgate rule and truncation under faults (build with
//! `--features failpoints`): any failed fsync — the seal fsync of a roll, a
//! directory fsync, truncation's, `append_replicated`'s, the `COMMITTED`
//! checkpoint's — refuses writes until the engine is reopened, under every
//! durability policy, and the next `flush` fails too; reopening works and
//! loses nothing acknowledged and fsynced. Truncation that fails part-way
//! leaves no in-memory state pointing at deleted files, and runs its long
//! part without the writer mutex. Errors are the ones the OS returns (EIO,
//! ENOSPC) injected on the real paths.
//!
//! Failpoints are process-wide, so the tests in this file run one at a time.
#![cfg(feature = "failpoints")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Durability, Engine, Error, ManualClock, Options, SetOptions, WriteOp,
};
use fail::FailScenario;
use tempfile::TempDir;

const T0: u64 = 1_767_225_600_000;

/// Failpoints are global: every test here holds the binary's gate alone.
use crate::GATE as SERIAL;

/// `every_ms` with an interval no test reaches: only explicit flushes and
/// rolls fsync.
const EVERY_HOUR: Durability = Durability::EveryMs(3_600_000);

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

fn open(dir: &Path, fsync: Durability) -> Bitcask {
    let clock = Arc::new(ManualClock::new(T0));
    Bitcask::open_with_clock(dir, opts(fsync), clock).unwrap()
}

fn open_replica(dir: &Path, fsync: Durability) -> Bitcask {
    let clock = Arc::new(ManualClock::new(T0));
    Bitcask::open_replica(dir, opts(fsync), clock).unwrap()
}

fn set(e: &Bitcask, k: &str, v: &[u8]) -> Result<bool, Error> {
    e.set(
        k.as_bytes(),
        Bytes::copy_from_slice(v),
        SetOptions::default(),
    )
}

fn get(e: &Bitcask, k: &str) -> Option<Vec<u8>> {
    e.get(k.as_bytes()).unwrap().map(|v| v.to_vec())
}

fn offsets(e: &Bitcask) -> Vec<u64> {
    e.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.header.offset)
        .collect()
}

/// Asserts that writes are refused and `flush` does not report success.
fn assert_refusing(e: &Bitcask, what: &str) {
    let err = set(e, "later", b"x").unwrap_err();
    assert!(matches!(err, Error::WritesRefused(_)), "{what}: {err}");
    assert!(
        err.to_string().starts_with("writes refused: "),
        "{what}: {err}"
    );
    let err = e.flush().unwrap_err();
    assert!(
        matches!(err, Error::WritesRefused(_)),
        "{what}: flush: {err}"
    );
    // Still: the refusal is not lifted by a flush that found nothing to do.
    assert!(e.flush().is_err(), "{what}: second flush");
}

const EIO: &str = "Input/output error (os error 5)";

/// Bug 3 of issue 10: the seal fsync at a roll covers every acknowledged,
/// unsynced write before it. When it fails the engine refuses writes (and
/// `flush` fails) under every policy; after a reopen everything written
/// before is there and writes work.
#[test]
fn failed_seal_fsync_at_a_roll_refuses_writes_under_every_policy() {
    let _serial = SERIAL.lock();
    for policy in [EVERY_HOUR, Durability::Never, Durability::Always] {
        let scenario = FailScenario::setup();
        let dir = TempDir::new().unwrap();
        let e = open(dir.path(), policy);
        // 5 x 37 + 3 x 234 = 887 bytes: the fourth big record rolls.
        for i in 0..5 {
            set(&e, &format!("s{i}"), b"abc").unwrap();
        }
        for i in 0..3 {
            set(&e, &format!("b{i}"), &[b'b'; 200]).unwrap();
        }
        assert_eq!(e.status().unwrap().segments, 1);
        fail::cfg("bitcask::fsync", "return").unwrap();
        let err = set(&e, "roll", &[b'r'; 200]).unwrap_err();
        fail::remove("bitcask::fsync");
        assert!(matches!(err, Error::Io { .. }), "{policy:?}: {err}");
        assert!(err.to_string().starts_with("fsync "), "{policy:?}: {err}");
        assert!(err.to_string().ends_with(EIO), "{policy:?}: {err}");
        assert_refusing(&e, &format!("{policy:?}"));
        assert_eq!(get(&e, "s0").as_deref(), Some(&b"abc"[..]), "reads go on");
        assert_eq!(get(&e, "roll"), None);
        drop(e);
        let e = open(dir.path(), policy);
        for i in 0..5 {
            assert_eq!(get(&e, &format!("s{i}")).as_deref(), Some(&b"abc"[..]));
        }
        assert_eq!(get(&e, "b2"), Some(vec![b'b'; 200]));
        assert_eq!(get(&e, "roll"), None, "{policy:?}: never acknowledged");
        assert_eq!(e.next_offset(), 8);
        set(&e, "roll", &[b'r'; 200]).unwrap();
        e.flush().unwrap();
        assert_eq!(offsets(&e), (0..9).collect::<Vec<_>>());
        scenario.teardown();
    }
}

/// Bug 4 of issue 10: a failed directory fsync in a roll (the new segment
/// file exists, its entry may not be durable) is an fsync failure: the
/// engine refuses writes until reopened (no write ever fails on the
/// leftover file with EEXIST); reopen works, loses nothing fsynced, and
/// later rolls work.
#[test]
fn failed_directory_fsync_at_a_roll_refuses_writes_until_reopen() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), EVERY_HOUR);
    for i in 0..4 {
        set(&e, &format!("k{i}"), &[b'0' + i as u8; 200]).unwrap();
    }
    e.flush().unwrap();
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    fail::cfg("bitcask::sync_dir", &format!("return({name})")).unwrap();
    let err = set(&e, "k4", &[b'4'; 200]).unwrap_err();
    fail::remove("bitcask::sync_dir");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().starts_with("fsync directory "), "{err}");
    assert!(err.to_string().ends_with(EIO), "{err}");
    assert_refusing(&e, "after a failed directory fsync");
    assert_eq!(get(&e, "k3"), Some(vec![b'3'; 200]));
    drop(e);
    let e = open(dir.path(), EVERY_HOUR);
    for i in 0..4u8 {
        assert_eq!(get(&e, &format!("k{i}")), Some(vec![b'0' + i; 200]));
    }
    assert_eq!(get(&e, "k4"), None);
    // Several rolls, then a reopen: nothing lost.
    for i in 4..20u8 {
        set(&e, &format!("k{i}"), &[b'0' + i; 200]).unwrap();
    }
    e.flush().unwrap();
    assert!(e.status().unwrap().segments >= 4);
    drop(e);
    let e = open(dir.path(), EVERY_HOUR);
    for i in 0..20u8 {
        assert_eq!(get(&e, &format!("k{i}")), Some(vec![b'0' + i; 200]));
    }
    assert_eq!(offsets(&e), (0..20).collect::<Vec<_>>());
    scenario.teardown();
}

/// A leader's log of `n` records of about 150 bytes, as shipped bytes.
fn leader_bytes(n: usize) -> Vec<u8> {
    let dir = TempDir::new().unwrap();
    let leader = open(dir.path(), Durability::Never);
    for i in 0..n {
        set(&leader, &format!("r{i}"), &[b'v'; 110]).unwrap();
    }
    let mut out = Vec::new();
    for r in leader.read_log(0, usize::MAX).unwrap() {
        out.extend_from_slice(&r.raw);
    }
    out
}

/// Bug 3: a failed fsync while appending a leader's records (the batch's
/// fsync under `always`, the seal fsync of a roll under `every_ms`) refuses
/// further appends and fails `flush`.
#[test]
fn failed_fsync_in_append_replicated_refuses_writes() {
    let _serial = SERIAL.lock();
    let shipped = leader_bytes(12); // ~1.7 KiB: rolls a 1 KiB segment
    for policy in [Durability::Always, EVERY_HOUR] {
        let scenario = FailScenario::setup();
        let dir = TempDir::new().unwrap();
        let f = open_replica(dir.path(), policy);
        fail::cfg("bitcask::fsync", "return").unwrap();
        let err = f.append_replicated(&shipped).unwrap_err();
        fail::remove("bitcask::fsync");
        assert!(err.to_string().ends_with(EIO), "{policy:?}: {err}");
        let err = f.append_replicated(&shipped).unwrap_err();
        assert!(matches!(err, Error::WritesRefused(_)), "{policy:?}: {err}");
        assert!(f.flush().is_err(), "{policy:?}: flush");
        drop(f);
        let f = open_replica(dir.path(), policy);
        assert_eq!(f.next_offset(), 0, "{policy:?}: nothing was fsynced");
        assert_eq!(f.append_replicated(&shipped).unwrap(), 12);
        f.flush().unwrap();
        scenario.teardown();
    }
}

/// Bug 3: a failed fsync of the `COMMITTED` checkpoint fails that flush,
/// refuses writes, and the next flush does not report success (a retried
/// fsync can succeed without the data having reached the disk).
#[test]
fn failed_commit_checkpoint_fsync_refuses_writes() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let e = open_replica(dir.path(), EVERY_HOUR);
    for i in 0..4 {
        set(&e, &format!("k{i}"), b"v").unwrap();
    }
    assert_eq!(e.commit(3).unwrap(), 3);
    fail::cfg("replica::sync_commit", "return").unwrap();
    let err = e.flush().unwrap_err();
    fail::remove("replica::sync_commit");
    assert!(err.to_string().starts_with("fsync "), "{err}");
    assert!(err.to_string().ends_with(EIO), "{err}");
    assert_refusing(&e, "after a failed checkpoint");
    assert_eq!(get(&e, "k2").as_deref(), Some(&b"v"[..]), "reads go on");
    drop(e);
    let e = open_replica(dir.path(), EVERY_HOUR);
    assert_eq!(e.next_offset(), 4, "the log was fsynced before");
    set(&e, "k4", b"v").unwrap();
    e.flush().unwrap();
    scenario.teardown();
}

/// A replica with 30 records over several segments, 10 committed, flushed.
fn replica_with_log(dir: &Path) -> Bitcask {
    let e = open_replica(dir, Durability::Never);
    for i in 0..30 {
        set(&e, &format!("k{i}"), &[b'a' + (i % 26) as u8; 100]).unwrap();
    }
    assert!(e.status().unwrap().segments >= 3);
    e.commit(10).unwrap();
    // The commit point is checkpointed by flush (a refusing engine does not
    // checkpoint it at close).
    e.flush().unwrap();
    e
}

/// Bug 3: a failed fsync in truncation refuses writes; reads stay right.
#[test]
fn failed_fsync_in_truncation_refuses_writes() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let e = replica_with_log(dir.path());
    fail::cfg("bitcask::fsync", "return").unwrap();
    let err = e.truncate(12).unwrap_err();
    fail::remove("bitcask::fsync");
    assert!(err.to_string().ends_with(EIO), "{err}");
    assert_refusing(&e, "after a failed truncation fsync");
    assert_eq!(
        get(&e, "k9"),
        Some(vec![b'j'; 100]),
        "committed reads go on"
    );
    assert_eq!(get(&e, "k10"), None, "uncommitted stays invisible");
    drop(e);
    let e = open_replica(dir.path(), Durability::Never);
    assert_eq!(get(&e, "k9"), Some(vec![b'j'; 100]));
    e.truncate(12).unwrap();
    assert_eq!(offsets(&e), (0..12).collect::<Vec<_>>());
    scenario.teardown();
}

/// Bug 8 of issue 10: truncation failing part-way (ENOSPC while copying the
/// kept prefix) leaves no in-memory state pointing at deleted files: a write
/// acknowledged afterwards is on disk after a reopen, reads are right, and
/// the truncation can be retried.
#[test]
fn truncation_failing_with_enospc_loses_no_later_write() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let e = replica_with_log(dir.path());
    let before = offsets(&e);
    // Offset 12 is inside a segment with a later segment above it.
    fail::cfg("log::write_prefix", "return").unwrap();
    let err = e.truncate(12).unwrap_err();
    fail::remove("log::write_prefix");
    assert!(matches!(err, Error::DiskFull(_)), "{err}");
    assert!(
        err.to_string()
            .ends_with("No space left on device (os error 28)"),
        "{err}"
    );
    assert_eq!(get(&e, "k9"), Some(vec![b'j'; 100]));
    let wrote = set(&e, "after", b"1");
    match &wrote {
        Ok(_) => {
            // Accepted: it must be in the log, durably, after the others.
            assert_eq!(offsets(&e), (0..31).collect::<Vec<_>>());
        }
        Err(err) => {
            assert!(matches!(err, Error::WritesRefused(_)), "{err}");
            assert_eq!(offsets(&e), before);
        }
    }
    drop(e);
    let e = open_replica(dir.path(), Durability::Never);
    let expected: Vec<u64> = if wrote.is_ok() {
        (0..31).collect()
    } else {
        before
    };
    assert_eq!(offsets(&e), expected, "reopened");
    e.truncate(12).unwrap();
    assert_eq!(offsets(&e), (0..12).collect::<Vec<_>>());
    assert_eq!(get(&e, "k9"), Some(vec![b'j'; 100]));
    drop(e);
    let e = open_replica(dir.path(), Durability::Never);
    assert_eq!(offsets(&e), (0..12).collect::<Vec<_>>());
    scenario.teardown();
}

/// Bug 8: truncation rebuilds the keydir from disk without the writer
/// mutex; `commit` (runtime threads call it) and the log end answer
/// meanwhile, and a commit made during the rebuild is applied after it.
#[test]
fn truncation_does_not_hold_the_writer_mutex_while_reloading() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let e = Arc::new(replica_with_log(dir.path()));
    let last_segment = e
        .read_log(29, 1)
        .unwrap()
        .first()
        .map(|r| r.header.offset)
        .unwrap();
    assert_eq!(last_segment, 29);
    // The newest segment file: the truncation deletes it first.
    let top = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap();
    fail::cfg("log::before_reload", "pause").unwrap();
    let truncation = std::thread::spawn({
        let e = e.clone();
        move || e.truncate(12)
    });
    // The truncation deletes the segments above offset 12, then reloads.
    let deadline = Instant::now() + Duration::from_secs(5);
    while top.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if top.exists() {
        fail::remove("log::before_reload");
        panic!("the truncation did not start");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let committer = std::thread::spawn({
        let e = e.clone();
        move || tx.send(e.commit(11).unwrap()).unwrap()
    });
    let answer = rx.recv_timeout(Duration::from_secs(2));
    fail::remove("log::before_reload");
    truncation.join().unwrap().unwrap();
    committer.join().unwrap();
    assert_eq!(answer, Ok(11), "commit answered during the reload");
    assert_eq!(e.committed(), 11);
    assert_eq!(get(&e, "k10"), Some(vec![b'k'; 100]), "applied after it");
    assert_eq!(get(&e, "k11"), None);
    assert_eq!(offsets(&e), (0..12).collect::<Vec<_>>());
    assert_eq!(e.next_offset(), 12);
    // Writes go on after the truncation, at offset 12.
    let w = e
        .write(
            b"k12",
            WriteOp::Set(Bytes::from_static(b"n"), SetOptions::default()),
        )
        .unwrap();
    assert_eq!(w.until, 13);
    scenario.teardown();
}

/// Bug 8: creating a data directory fsyncs its parent, so the new
/// directory's entry is durable before anything in it is.
#[test]
fn creating_a_data_directory_fsyncs_its_parent() {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let root = TempDir::new().unwrap();
    let name = root
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    fail::cfg("bitcask::sync_dir", &format!("return({name})")).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let err = Bitcask::open_with_clock(
        root.path().join("partition-0"),
        opts(Durability::Never),
        clock.clone(),
    )
    .err()
    .unwrap();
    fail::remove("bitcask::sync_dir");
    assert!(
        err.to_string()
            .starts_with(&format!("fsync directory {}", root.path().display())),
        "{err}"
    );
    let e = Bitcask::open_with_clock(
        root.path().join("partition-0"),
        opts(Durability::Never),
        clock,
    )
    .unwrap();
    set(&e, "k", b"v").unwrap();
    scenario.teardown();
}
