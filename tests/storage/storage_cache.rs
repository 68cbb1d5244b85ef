//! The value cache seen through the engine: a write offers its value to the
//! cache (a write-fill), so the first read after a write is answered from
//! memory without a disk read, and no write, delete, expiry, merge or
//! truncation ever lets an old value be served. Exact values and exact
//! hit / miss / fill counts (`Status::cache_hits`, `cache_misses`,
//! `cache_fills`).

use std::sync::Arc;

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Durability, Engine, ManualClock, Options, SetOptions, Submitted, WriteOp,
};
use tempfile::TempDir;

/// A fixed "now": 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

fn opts() -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes: 4096,
        cache_bytes: 1 << 20,
        ..Options::default()
    };
    o.limits.max_value_bytes = 1024;
    o.merge.dead_ratio = 0.0; // merges only when the test asks
    o
}

fn open(dir: &TempDir, clock: &Arc<ManualClock>) -> Bitcask {
    Bitcask::open_with_clock(dir.path(), opts(), clock.clone()).unwrap()
}

fn set(e: &Bitcask, k: &str, v: &str) {
    e.set(
        k.as_bytes(),
        Bytes::from(v.to_string()),
        SetOptions::default(),
    )
    .unwrap();
}

/// The value `get_cached` answers: `Some(None)` absent, `Some(Some(v))`
/// cached, `None` only on disk.
fn cached(e: &Bitcask, k: &str) -> Option<Option<String>> {
    e.get_cached(k.as_bytes())
        .unwrap()
        .map(|v| v.map(|v| String::from_utf8(v.to_vec()).unwrap()))
}

fn get(e: &Bitcask, k: &str) -> Option<String> {
    e.get(k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// (hits, misses, fills).
fn stats(e: &Bitcask) -> (u64, u64, u64) {
    let s = e.status().unwrap();
    (s.cache_hits, s.cache_misses, s.cache_fills)
}

/// The first read after a write is a hit: no disk read, no miss. Before
/// values were cached on write, this read missed and went to disk.
#[test]
fn a_written_value_is_read_from_the_cache() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    set(&e, "a", "one");
    assert_eq!(stats(&e), (0, 0, 1));
    assert_eq!(cached(&e, "a"), Some(Some("one".into())));
    assert_eq!(get(&e, "a").as_deref(), Some("one"));
    assert_eq!(stats(&e), (2, 0, 1), "two hits, no miss");
    // The async path (`submit`) too, and the value a read-modify-write
    // computed.
    match e.submit(b"b", &WriteOp::Append(Bytes::from_static(b"xy"))) {
        Ok(Submitted::Done(_)) => {}
        other => panic!("submit: {other:?}"),
    }
    e.write(b"b", WriteOp::Append(Bytes::from_static(b"z")))
        .unwrap();
    assert_eq!(cached(&e, "b"), Some(Some("xyz".into())));
    e.write(b"n", WriteOp::IncrBy(41)).unwrap();
    e.write(b"n", WriteOp::IncrBy(1)).unwrap();
    assert_eq!(cached(&e, "n"), Some(Some("42".into())));
    assert_eq!(stats(&e).1, 0, "no read went to disk");
    assert_eq!(stats(&e).2, 5);
}

/// An overwritten, deleted, expired, re-expired or merged key never serves
/// its old value.
#[test]
fn old_values_are_never_served() {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(&dir, &clock);
    set(&e, "k", "v1");
    assert_eq!(cached(&e, "k"), Some(Some("v1".into())));
    set(&e, "k", "v2");
    assert_eq!(cached(&e, "k"), Some(Some("v2".into())));
    assert_eq!(get(&e, "k").as_deref(), Some("v2"));
    assert!(e.delete(b"k").unwrap());
    assert_eq!(cached(&e, "k"), Some(None));
    assert_eq!(get(&e, "k"), None);

    // Expiry: the entry's expiry is checked before the cache.
    e.set(
        b"t",
        Bytes::from_static(b"short"),
        SetOptions {
            expire_at_ms: Some(T0 + 1_000),
            ..SetOptions::default()
        },
    )
    .unwrap();
    assert_eq!(cached(&e, "t"), Some(Some("short".into())));
    clock.advance(1_000);
    assert_eq!(cached(&e, "t"), Some(None));
    assert_eq!(get(&e, "t"), None);
    // `EXPIRE` writes a record of its own, with the value: cached there.
    set(&e, "x", "kept");
    assert!(e.expire(b"x", T0 + 5_000).unwrap());
    assert_eq!(cached(&e, "x"), Some(Some("kept".into())));
    set(&e, "x", "newer");
    assert_eq!(get(&e, "x").as_deref(), Some("newer"));

    // Merge: the live records move; values cached at their old locations
    // stop being served and the next read goes to disk for the exact value.
    set(&e, "m", "old");
    set(&e, "m", "new");
    for i in 0..60 {
        set(&e, &format!("fill-{i}"), &"f".repeat(100)); // rolls segments
    }
    let (_, misses, _) = stats(&e);
    let report = e.merge().unwrap();
    assert!(report.inputs > 0, "{report:?}");
    assert_eq!(cached(&e, "m"), None, "moved: only on disk now");
    assert_eq!(get(&e, "m").as_deref(), Some("new"));
    assert_eq!(stats(&e).1, misses + 1, "one read from disk");
    assert_eq!(cached(&e, "m"), Some(Some("new".into())));
    assert_eq!(get(&e, "k"), None);
    assert_eq!(get(&e, "x").as_deref(), Some("newer"));
    // A write after the merge is cached at its own location.
    set(&e, "m", "newest");
    assert_eq!(cached(&e, "m"), Some(Some("newest".into())));
}

/// Replica mode: a leader's local write is cached when it is committed
/// (not before: it is not visible until then); a record appended from a
/// leader is not cached (a follower spends no cache on values it may
/// never serve), and truncation drops the engine's cached values.
#[test]
fn replica_mode_caches_local_writes_on_commit_only() {
    let clock = Arc::new(ManualClock::new(T0));
    let (dl, df) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let leader = Bitcask::open_replica(dl.path(), opts(), clock.clone()).unwrap();
    leader.set_epoch(1).unwrap();
    leader
        .write_at(
            b"k",
            WriteOp::Set(Bytes::from_static(b"v1"), SetOptions::default()),
            1,
        )
        .unwrap();
    assert_eq!(cached(&leader, "k"), Some(None), "not committed yet");
    assert_eq!(stats(&leader), (0, 0, 0));
    leader.commit(1).unwrap();
    assert_eq!(stats(&leader).2, 1);
    assert_eq!(cached(&leader, "k"), Some(Some("v1".into())));
    // Two writes of one key committed together: the newest is cached.
    for v in ["v2", "v3"] {
        leader
            .write_at(b"k", WriteOp::Set(Bytes::from(v), SetOptions::default()), 1)
            .unwrap();
    }
    leader.commit(3).unwrap();
    assert_eq!(cached(&leader, "k"), Some(Some("v3".into())));
    // An uncommitted write is cut off: the committed value is served.
    leader
        .write_at(
            b"k",
            WriteOp::Set(Bytes::from_static(b"v4"), SetOptions::default()),
            1,
        )
        .unwrap();
    leader.truncate(3).unwrap();
    assert_eq!(get(&leader, "k").as_deref(), Some("v3"));

    let follower = Bitcask::open_replica(df.path(), opts(), clock.clone()).unwrap();
    let raw: Vec<u8> = leader
        .read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|r| r.raw.to_vec())
        .collect();
    assert_eq!(follower.append_replicated(&raw).unwrap(), 3);
    follower.commit(3).unwrap();
    assert_eq!(cached(&follower, "k"), None, "appended: not cached");
    assert_eq!(get(&follower, "k").as_deref(), Some("v3"));
}
