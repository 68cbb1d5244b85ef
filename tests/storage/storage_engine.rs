//! Functional tests of the Bitcask engine through its public API: every
//! operation, persistence across reopen, segment rolling, merge, TTL, the
//! directory lock and input limits. Exact values throughout.

use std::sync::Arc;

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Condition, Durability, Engine, Error, ManualClock, Options, SetOptions, Submitted,
    Ttl, WriteOp,
};
use tempfile::TempDir;

/// A fixed "now" for tests: 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

fn opts() -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes: 4096,
        ..Options::default()
    };
    o.limits.max_value_bytes = 1024;
    o.merge.dead_ratio = 0.0; // merges only when the test asks
    o
}

fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> Bitcask {
    Bitcask::open_with_clock(dir.path(), opts(), clock.clone()).unwrap()
}

fn set(e: &Bitcask, k: &str, v: &str) -> bool {
    e.set(
        k.as_bytes(),
        Bytes::from(v.to_string()),
        SetOptions::default(),
    )
    .unwrap()
}

fn get(e: &Bitcask, k: &str) -> Option<String> {
    e.get(k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn set_get_delete_exists() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    assert_eq!(get(&e, "a"), None);
    assert!(set(&e, "a", "1"));
    assert_eq!(get(&e, "a").as_deref(), Some("1"));
    assert!(set(&e, "a", "2"));
    assert_eq!(get(&e, "a").as_deref(), Some("2"));
    assert!(e.exists(b"a").unwrap());
    assert!(e.delete(b"a").unwrap());
    assert!(!e.delete(b"a").unwrap());
    assert!(!e.exists(b"a").unwrap());
    assert_eq!(get(&e, "a"), None);
    let st = e.status().unwrap();
    assert_eq!(st.keys, 0);
    assert_eq!(st.next_offset, 3, "two puts and one tombstone");
    assert_eq!(st.records_written, 3);
}

#[test]
fn conditional_sets() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    let nx = SetOptions {
        condition: Condition::IfAbsent,
        ..SetOptions::default()
    };
    let xx = SetOptions {
        condition: Condition::IfPresent,
        ..SetOptions::default()
    };
    assert!(!e.set(b"k", Bytes::from_static(b"x"), xx).unwrap());
    assert_eq!(get(&e, "k"), None);
    assert!(e.set(b"k", Bytes::from_static(b"1"), nx).unwrap());
    assert!(!e.set(b"k", Bytes::from_static(b"2"), nx).unwrap());
    assert_eq!(get(&e, "k").as_deref(), Some("1"));
    assert!(e.set(b"k", Bytes::from_static(b"3"), xx).unwrap());
    assert_eq!(get(&e, "k").as_deref(), Some("3"));
    assert_eq!(
        e.status().unwrap().next_offset,
        2,
        "refused sets write nothing"
    );
}

#[test]
fn ttl_expire_and_restart() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(&dir, &clock);
        assert_eq!(e.ttl(b"k").unwrap(), Ttl::Missing);
        set(&e, "k", "v");
        assert_eq!(e.ttl(b"k").unwrap(), Ttl::Persistent);
        assert!(e.expire(b"k", T0 + 10_000).unwrap());
        assert_eq!(e.ttl(b"k").unwrap(), Ttl::ExpiresInMs(10_000));
        assert_eq!(get(&e, "k").as_deref(), Some("v"), "expire keeps the value");
        assert!(!e.expire(b"nope", T0 + 10_000).unwrap());
        let opts = SetOptions {
            expire_at_ms: Some(T0 + 500),
            ..SetOptions::default()
        };
        e.set(b"short", Bytes::from_static(b"s"), opts).unwrap();
        clock.advance(499);
        assert_eq!(get(&e, "short").as_deref(), Some("s"));
        clock.advance(1);
        assert_eq!(get(&e, "short"), None, "expired exactly at its instant");
        assert_eq!(e.ttl(b"short").unwrap(), Ttl::Missing);
    }
    // Expiry is absolute: it survives a restart unchanged.
    let e = open(&dir, &clock);
    assert_eq!(e.ttl(b"k").unwrap(), Ttl::ExpiresInMs(9_500));
    assert_eq!(get(&e, "short"), None);
    clock.advance(9_500);
    assert_eq!(get(&e, "k"), None);
    assert_eq!(e.sweep_expired(), 2, "both expired keys swept");
    assert_eq!(e.status().unwrap().keys, 0);
}

#[test]
fn expire_in_the_past_deletes() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    set(&e, "k", "v");
    assert!(e.expire(b"k", T0).unwrap());
    assert_eq!(get(&e, "k"), None);
    let opts = SetOptions {
        expire_at_ms: Some(T0 - 1),
        ..SetOptions::default()
    };
    assert!(e.set(b"k2", Bytes::from_static(b"v"), opts).unwrap());
    assert_eq!(get(&e, "k2"), None);
}

#[test]
fn persists_across_reopen_with_many_segments() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(&dir, &clock);
        for i in 0..500 {
            set(&e, &format!("key{i}"), &format!("value{i}"));
        }
        for i in (0..500).step_by(3) {
            e.delete(format!("key{i}").as_bytes()).unwrap();
        }
        assert!(e.status().unwrap().segments > 5, "small segments rolled");
    }
    let e = open(&dir, &clock);
    for i in 0..500 {
        let want = (i % 3 != 0).then(|| format!("value{i}"));
        assert_eq!(get(&e, &format!("key{i}")), want, "key{i}");
    }
    assert_eq!(e.status().unwrap().keys, 333);
    assert_eq!(e.next_offset(), 500 + 167);
}

#[test]
fn merge_reclaims_disk_and_keeps_live_keys() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    for round in 0..10 {
        for i in 0..50 {
            set(&e, &format!("k{i}"), &format!("r{round}-{i}"));
        }
    }
    for i in 0..10 {
        e.delete(format!("k{i}").as_bytes()).unwrap();
    }
    let before = e.status().unwrap();
    let report = e.merge().unwrap();
    let after = e.status().unwrap();
    assert!(report.inputs > 1);
    assert!(
        report.records_kept <= 40,
        "only live keys of sealed segments are copied, got {}",
        report.records_kept
    );
    assert!(
        after.disk_bytes < before.disk_bytes / 3,
        "disk {} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(on_disk, after.disk_bytes, "old files really deleted");
    for i in 0..50 {
        let want = (i >= 10).then(|| format!("r9-{i}"));
        assert_eq!(get(&e, &format!("k{i}")), want);
    }
    drop(e);
    let e = open(&dir, &clock);
    for i in 0..50 {
        let want = (i >= 10).then(|| format!("r9-{i}"));
        assert_eq!(get(&e, &format!("k{i}")), want, "after reopen");
    }
}

#[test]
fn deleted_keys_do_not_come_back_after_merge_and_reopen() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(&dir, &clock);
        set(&e, "ghost", "boo");
        for i in 0..200 {
            set(&e, &format!("fill{i}"), "xxxxxxxxxxxxxxxxxxxx");
        }
        e.delete(b"ghost").unwrap();
        for i in 0..200 {
            set(&e, &format!("fill{i}"), "yyyyyyyyyyyyyyyyyyyy");
        }
        e.merge().unwrap();
        assert_eq!(get(&e, "ghost"), None);
    }
    let e = open(&dir, &clock);
    assert_eq!(
        get(&e, "ghost"),
        None,
        "the classic Bitcask resurrection bug"
    );
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let _e = open(&dir, &clock);
    let err = Bitcask::open_with_clock(dir.path(), opts(), clock.clone())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, Error::Locked(_)));
    assert_eq!(
        err.to_string(),
        format!(
            "data directory {} is in use by another process",
            dir.path().display()
        )
    );
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    let err = e
        .set(b"", Bytes::from_static(b"v"), SetOptions::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "empty key");
    let long = vec![b'k'; 1025];
    let err = e
        .set(&long, Bytes::from_static(b"v"), SetOptions::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "key is 1025 bytes, the limit is 1024");
    let err = e
        .set(b"k", Bytes::from(vec![0u8; 1025]), SetOptions::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "value is 1025 bytes, the limit is 1024");
    assert_eq!(
        e.get(&long).unwrap_err().to_string(),
        "key is 1025 bytes, the limit is 1024"
    );
    assert_eq!(e.status().unwrap().next_offset, 0, "nothing written");
}

#[test]
fn options_are_validated() {
    let dir = TempDir::new().unwrap();
    let o = Options {
        segment_bytes: 100,
        ..Options::default()
    };
    let err = Bitcask::open(dir.path(), o).err().unwrap();
    assert_eq!(
        err.to_string(),
        "segment_bytes 100 is smaller than the largest record (1049633 bytes)"
    );
}

#[test]
fn read_log_and_truncate() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    for i in 0..100 {
        set(&e, &format!("k{}", i % 10), &format!("v{i}"));
    }
    let recs = e.read_log(42, usize::MAX).unwrap();
    assert_eq!(recs.len(), 58);
    assert_eq!(recs[0].header.offset, 42);
    assert_eq!(recs[0].key(), b"k2");
    assert_eq!(&recs[0].value()[..], b"v42");
    let few = e.read_log(0, 1).unwrap();
    assert_eq!(
        few.len(),
        1,
        "at least one record even over the byte budget"
    );

    e.truncate(55).unwrap();
    assert_eq!(e.next_offset(), 55);
    // k0..k4 were last written at 50..54, k5..k9 at 45..49.
    for i in 0..10 {
        let want = if i < 5 { 50 + i } else { 40 + i };
        assert_eq!(get(&e, &format!("k{i}")), Some(format!("v{want}")), "k{i}");
    }
    set(&e, "k0", "after");
    assert_eq!(e.read_log(55, usize::MAX).unwrap().len(), 1);
    drop(e);
    let e = open(&dir, &clock);
    assert_eq!(e.next_offset(), 56);
    assert_eq!(get(&e, "k0").as_deref(), Some("after"));
    assert_eq!(get(&e, "k1").as_deref(), Some("v51"));
}

#[test]
fn expired_keys_are_reclaimed_without_being_read() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    let ttl = SetOptions {
        expire_at_ms: Some(T0 + 1_000),
        ..SetOptions::default()
    };
    for i in 0..200 {
        e.set(
            format!("temp{i}").as_bytes(),
            Bytes::from(vec![b't'; 100]),
            ttl,
        )
        .unwrap();
    }
    for i in 0..20 {
        set(&e, &format!("keep{i}"), "forever");
    }
    let before = e.status().unwrap();
    assert_eq!(before.keys, 220);
    clock.advance(1_000);
    // Nobody reads the expired keys: the sweep finds them.
    assert_eq!(e.sweep_expired(), 200);
    assert_eq!(e.status().unwrap().keys, 20);
    assert_eq!(e.sweep_expired(), 0);
    e.merge().unwrap();
    let after = e.status().unwrap();
    assert!(
        after.disk_bytes * 4 < before.disk_bytes,
        "expired records dropped from disk: {} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    drop(e);
    let e = open(&dir, &clock);
    assert_eq!(e.status().unwrap().keys, 20);
    assert_eq!(get(&e, "temp5"), None);
    assert_eq!(get(&e, "keep5").as_deref(), Some("forever"));
}

#[test]
fn merge_starts_on_its_own_past_the_dead_ratio() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut o = opts();
    o.merge.dead_ratio = 0.5;
    o.merge.min_dead_bytes = 0;
    o.merge.check_interval_ms = 10;
    let e = Bitcask::open_with_clock(dir.path(), o, clock.clone()).unwrap();
    // 20 keys overwritten 30 times: nearly everything sealed is dead.
    for round in 0..30 {
        for i in 0..20 {
            set(&e, &format!("k{i}"), &format!("{round}-{}", "v".repeat(40)));
        }
    }
    let written = e.status().unwrap().disk_bytes;
    // ~48 KB written; live data is 20 records (~1.7 KB) plus the active
    // segment (at most 4 KB). Wait until merges brought the log down to that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = e.status().unwrap();
        if st.merges > 0 && st.disk_bytes < 8_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic merge reclaimed the dead bytes ({written} written): {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for i in 0..20 {
        assert_eq!(
            get(&e, &format!("k{i}")),
            Some(format!("29-{}", "v".repeat(40)))
        );
    }
}

/// Under `every_ms` (and `never`) `submit` writes the record itself (one
/// `write(2)`, no thread hand-off: `Done`, the record readable at once);
/// under `always` it queues writes for the group commit; a close writes
/// what is queued before it returns, so every completion succeeds and
/// every value is there after a reopen.
#[test]
fn submit_writes_at_once_under_every_ms_queues_under_always_and_close_writes_the_queue() {
    let dir = TempDir::new().unwrap();
    let every_ms_dir = TempDir::new().unwrap();
    let set = |v: &'static [u8]| WriteOp::Set(Bytes::from_static(v), SetOptions::default());
    {
        let e = Bitcask::open(
            every_ms_dir.path(),
            Options {
                // An hour: the periodic fsync must not run before the
                // check below, however slow the machine.
                fsync: Durability::EveryMs(3_600_000),
                ..Options::default()
            },
        )
        .unwrap();
        match e.submit(b"k", &set(b"v")).unwrap() {
            Submitted::Done(w) => assert_eq!((w.done, w.until), (true, 1)),
            other => panic!("under every_ms submit writes at once: {other:?}"),
        }
        assert_eq!(e.next_offset(), 1, "submit wrote the record");
        assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(e.status().unwrap().fsyncs, 0, "and did not fsync it");
    }
    let always = || Options {
        fsync: Durability::Always,
        ..Options::default()
    };
    let e = Bitcask::open(dir.path(), always()).unwrap();
    // Bad input is refused before anything is queued.
    let err = e.submit(b"", &set(b"v")).unwrap_err();
    assert_eq!(
        err.to_string(),
        Error::InvalidInput("empty key".into()).to_string()
    );
    let big = WriteOp::Set(
        Bytes::from(vec![0u8; Options::default().limits.max_value_bytes + 1]),
        SetOptions::default(),
    );
    let err = e.submit(b"k", &big).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "value is {} bytes, the limit is {}",
            Options::default().limits.max_value_bytes + 1,
            Options::default().limits.max_value_bytes
        )),
        "{err}"
    );
    assert_eq!(e.next_offset(), 0);
    let mut queued = Vec::new();
    for i in 0..100u32 {
        match e.submit(&i.to_be_bytes(), &set(b"v")).unwrap() {
            Submitted::Queued(c) => queued.push(c),
            other => panic!("key {i}: {other:?}"),
        }
    }
    e.close().unwrap();
    let err = e.submit(b"late", &set(b"v")).unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (i, c) in queued.into_iter().enumerate() {
        assert_eq!(rt.block_on(c.wait()).unwrap().until, i as u64 + 1);
    }
    drop(e);
    let e = Bitcask::open(dir.path(), always()).unwrap();
    assert_eq!(e.status().unwrap().keys, 100);
    assert_eq!(
        e.get(&99u32.to_be_bytes()).unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

/// The no-I/O reads answer only what memory knows: a missing or expired key
/// (absent), a cached value, and every TTL; a value that is only on disk is
/// declined (`None`) until a `get` has read it into the cache.
#[test]
fn cached_reads_answer_from_memory_or_decline() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let e = open(&dir, &clock);
        set(&e, "plain", "v1");
        e.set(
            b"short",
            Bytes::from_static(b"v2"),
            SetOptions {
                expire_at_ms: Some(T0 + 1_000),
                ..SetOptions::default()
            },
        )
        .unwrap();
    }
    // Reopened: the keydir is rebuilt, the value cache is empty.
    let e = open(&dir, &clock);
    assert_eq!(e.get_cached(b"missing").unwrap(), Some(None));
    assert_eq!(e.get_cached(b"plain").unwrap(), None, "only on disk");
    assert_eq!(e.ttl_cached(b"plain").unwrap(), Some(Ttl::Persistent));
    assert_eq!(
        e.ttl_cached(b"short").unwrap(),
        Some(Ttl::ExpiresInMs(1_000))
    );
    assert_eq!(e.ttl_cached(b"missing").unwrap(), Some(Ttl::Missing));
    assert_eq!(get(&e, "plain").as_deref(), Some("v1"));
    assert_eq!(
        e.get_cached(b"plain").unwrap(),
        Some(Some(Bytes::from_static(b"v1"))),
        "cached by the get"
    );
    clock.advance(1_000);
    assert_eq!(e.get_cached(b"short").unwrap(), Some(None), "expired");
    assert_eq!(e.ttl_cached(b"short").unwrap(), Some(Ttl::Missing));
    let err = e.get_cached(b"").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

/// `submit_many` decides its ops in order under one take of the writer
/// mutex: each answers as `submit` would have, op after op; an op whose
/// answer rests on a record of the same (unwritten) batch declines, and
/// every op after it is not started (`Blocking` too), so running the
/// declined ones in order keeps the order. Under `every_ms` the records
/// are written before it returns (`Done`); under `always` they are queued
/// for one group commit.
#[test]
fn submit_many_answers_in_order_as_submit_would() {
    let set = |v: &'static [u8], condition| {
        WriteOp::Set(
            Bytes::from_static(v),
            SetOptions {
                expire_at_ms: None,
                condition,
            },
        )
    };
    let dir = TempDir::new().unwrap();
    let e = Bitcask::open(
        dir.path(),
        Options {
            fsync: Durability::EveryMs(1000),
            ..Options::default()
        },
    )
    .unwrap();
    let (v1, v2) = (set(b"v1", Condition::Always), set(b"v2", Condition::Always));
    let (nx, v4) = (
        set(b"v3", Condition::IfAbsent),
        set(b"v4", Condition::Always),
    );
    let empty = set(b"v", Condition::Always);
    let ops: Vec<(&[u8], &WriteOp)> = vec![
        (b"a", &v1),
        (b"", &empty),
        (b"b", &v2),
        (b"a", &nx),
        (b"c", &v4),
    ];
    let answers: Vec<String> = e
        .submit_many(&ops)
        .into_iter()
        .map(|a| match a {
            Ok(Submitted::Done(w)) => format!("done {} until {}", w.done, w.until),
            Ok(Submitted::Queued(_)) => "queued".into(),
            Ok(Submitted::Blocking) => "blocking".into(),
            Err(e) => format!("error {e}"),
        })
        .collect();
    assert_eq!(
        answers,
        [
            "done true until 1",
            "error empty key",
            "done true until 2",
            "blocking",
            "blocking",
        ]
    );
    assert_eq!(e.next_offset(), 2, "written before it returned");
    assert_eq!(e.get(b"a").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(e.get(b"c").unwrap(), None, "not started");
    // The declined ops, in order.
    assert!(!e.write(b"a", nx.clone()).unwrap().done, "a exists");
    assert!(e.write(b"c", v4.clone()).unwrap().done);
    assert_eq!(e.get(b"c").unwrap().as_deref(), Some(&b"v4"[..]));
    drop(e);

    let dir = TempDir::new().unwrap();
    let e = Bitcask::open(
        dir.path(),
        Options {
            fsync: Durability::Always,
            ..Options::default()
        },
    )
    .unwrap();
    let ops: Vec<(&[u8], &WriteOp)> = vec![(b"x", &v1), (b"y", &v2)];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut untils = Vec::new();
    for answer in e.submit_many(&ops) {
        match answer.unwrap() {
            Submitted::Queued(c) => untils.push(rt.block_on(c.wait()).unwrap().until),
            other => panic!("under always submit_many queues: {other:?}"),
        }
    }
    assert_eq!(untils, [1, 2]);
    assert_eq!(e.get(b"y").unwrap().as_deref(), Some(&b"v2"[..]));
}
