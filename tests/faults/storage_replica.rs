//! Replica mode of the Bitcask engine: records become visible when committed.
//!
//! Covers visibility and `until`, conditional writes on uncommitted state,
//! a follower replaying a leader's log, checks on appended records, the
//! commit point across reopen and crash, truncation (clean and unclean), the
//! leader-epoch cache, merge limits, and `read_log` through the sparse index.
//! Exact values throughout. A "crash" copies the data directory while the
//! engine is open (the files as the OS holds them at that instant, which is
//! what a killed process leaves) and opens the copy.
//!
//! Failpoints are process-wide: the one test that uses them takes the gate
//! exclusively, every other test takes it shared.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Condition, Durability, Engine, Error, Kind, ManualClock, Options, SetOptions, Ttl,
    WriteOp, Written,
};
use tempfile::TempDir;

/// A fixed "now": 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

/// The binary's gate: the failpoint test takes it alone, every other
/// test shared.
use crate::GATE;

fn opts(fsync: Durability, segment_bytes: u64) -> Options {
    let mut o = Options {
        fsync,
        segment_bytes,
        cache_bytes: 1 << 16,
        ..Options::default()
    };
    o.limits.max_value_bytes = 200;
    o.limits.max_key_bytes = 32;
    o.merge.dead_ratio = 0.0;
    o
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Bitcask {
    Bitcask::open_replica(dir, opts(Durability::Never, 1024), clock.clone()).unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

fn set(e: &Bitcask, k: &str, v: &str) -> Written {
    e.write(
        k.as_bytes(),
        WriteOp::Set(Bytes::from(v.to_string()), SetOptions::default()),
    )
    .unwrap()
}

fn set_with(
    e: &Bitcask,
    k: &str,
    v: &str,
    expire_at_ms: Option<u64>,
    condition: Condition,
) -> Written {
    e.write(
        k.as_bytes(),
        WriteOp::Set(
            Bytes::from(v.to_string()),
            SetOptions {
                expire_at_ms,
                condition,
            },
        ),
    )
    .unwrap()
}

fn del(e: &Bitcask, k: &str) -> Written {
    e.write(k.as_bytes(), WriteOp::Delete).unwrap()
}

fn get(e: &Bitcask, k: &str) -> Option<String> {
    e.get(k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn w(done: bool, until: u64) -> Written {
    Written {
        done,
        until,
        old: None,
        number: 0,
    }
}

/// Every visible key with its value and TTL.
fn state(e: &Bitcask) -> BTreeMap<String, (String, Ttl)> {
    let mut out = BTreeMap::new();
    for k in e.keys().unwrap() {
        let key = String::from_utf8(k.to_vec()).unwrap();
        let value = String::from_utf8(e.get(&k).unwrap().unwrap().to_vec()).unwrap();
        out.insert(key, (value, e.ttl(&k).unwrap()));
    }
    out
}

/// The leader's log from `from`, as shipped to a follower.
fn shipped(e: &Bitcask, from: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for r in e.read_log(from, usize::MAX).unwrap() {
        out.extend_from_slice(&r.raw);
    }
    out
}

/// Offsets of the records in the log.
fn offsets(e: &Bitcask) -> Vec<u64> {
    e.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.header.offset)
        .collect()
}

/// Copies the files of `from` to a new directory: what a crash at this
/// instant would leave on disk (the page cache survives a process crash).
fn crash_copy(from: &Path) -> TempDir {
    let to = TempDir::new().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            // The janitor may rename or remove a temporary file meanwhile.
            match std::fs::copy(entry.path(), to.path().join(entry.file_name())) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copy {}: {e}", entry.path().display()),
            }
        }
    }
    to
}

#[test]
fn writes_are_invisible_until_committed() {
    let _g = GATE.read();
    let dir = TempDir::new().unwrap();
    let clock = clock();
    let e = open(dir.path(), &clock);
    assert_eq!(e.committed(), 0);
    assert_eq!(set(&e, "a", "1"), w(true, 1));
    assert_eq!(set(&e, "b", "2"), w(true, 2));
    assert_eq!(get(&e, "a"), None);
    assert_eq!(e.ttl(b"a").unwrap(), Ttl::Missing);
    assert_eq!(e.keys().unwrap().len(), 0);
    assert_eq!((e.written_end(), e.next_offset()), (2, 2));
    assert_eq!(
        e.read_log(0, usize::MAX).unwrap().len(),
        2,
        "served before commit"
    );

    assert_eq!(e.commit(1).unwrap(), 1);
    assert_eq!(get(&e, "a").as_deref(), Some("1"));
    assert_eq!(get(&e, "b"), None);
    assert_eq!(e.commit(0).unwrap(), 1, "never backwards");
    assert_eq!(e.commit(100).unwrap(), 2, "capped at the written end");
    assert_eq!(e.committed(), 2);
    assert_eq!(get(&e, "b").as_deref(), Some("2"));

    // Engine methods write too, and are invisible until committed.
    assert!(e.delete(b"a").unwrap());
    assert_eq!(get(&e, "a").as_deref(), Some("1"));
    assert!(
        e.set(b"c", Bytes::from_static(b"3"), SetOptions::default())
            .unwrap()
    );
    assert_eq!(e.commit(3).unwrap(), 3);
    assert_eq!(get(&e, "a"), None);
    assert_eq!(get(&e, "c"), None);
    assert_eq!(e.commit(4).unwrap(), 4);
    assert_eq!(get(&e, "c").as_deref(), Some("3"));
    let st = e.status().unwrap();
    assert_eq!((st.keys, st.next_offset, st.records_written), (2, 4, 4));
}

#[test]
fn conditional_writes_decide_on_uncommitted_state() {
    let _g = GATE.read();
    let dir = TempDir::new().unwrap();
    let clock = clock();
    {
        let e = open(dir.path(), &clock);
        let nx = Condition::IfAbsent;
        let xx = Condition::IfPresent;
        assert_eq!(set_with(&e, "a", "1", None, nx), w(true, 1));
        assert_eq!(
            set_with(&e, "a", "2", None, nx),
            w(false, 1),
            "rests on offset 0"
        );
        assert_eq!(
            set_with(&e, "b", "1", None, xx),
            w(false, 0),
            "rests on the committed state"
        );
        assert_eq!(set_with(&e, "a", "3", None, xx), w(true, 2));
        assert_eq!(del(&e, "a"), w(true, 3));
        assert_eq!(del(&e, "a"), w(false, 3));
        assert_eq!(set_with(&e, "a", "4", None, xx), w(false, 3));
        assert_eq!(
            e.write(b"a", WriteOp::Expire(T0 + 1000)).unwrap(),
            w(false, 3)
        );
        // EXPIRE on an uncommitted value copies that value.
        assert_eq!(set(&e, "c", "cv"), w(true, 4));
        assert_eq!(
            e.write(b"c", WriteOp::Expire(T0 + 5000)).unwrap(),
            w(true, 5)
        );
        // A TTL already passed in the newest state counts as absent.
        assert_eq!(
            set_with(&e, "t", "tv", Some(T0 + 10), Condition::Always),
            w(true, 6)
        );
        clock.advance(10);
        assert_eq!(set_with(&e, "t", "again", None, nx), w(true, 7));
        assert_eq!(e.commit(7).unwrap(), 7);
        assert_eq!(e.ttl(b"c").unwrap(), Ttl::ExpiresInMs(4990));
        assert_eq!(get(&e, "c").as_deref(), Some("cv"));
        assert_eq!(get(&e, "a"), None);
        assert_eq!(get(&e, "t").as_deref(), Some("again"));
        // Uncommitted after a reopen: the state comes from the disk.
        assert_eq!(set(&e, "d", "dv"), w(true, 8));
    }
    let e = open(dir.path(), &clock);
    assert_eq!((e.committed(), e.written_end()), (7, 8));
    assert_eq!(get(&e, "d"), None);
    assert_eq!(
        set_with(&e, "d", "x", None, Condition::IfAbsent),
        w(false, 8)
    );
    assert_eq!(
        set_with(&e, "t", "x", None, Condition::IfAbsent),
        w(false, 7)
    );
    assert_eq!(
        e.write(b"d", WriteOp::Expire(T0 + 60_000)).unwrap(),
        w(true, 9)
    );
    assert_eq!(e.commit(10).unwrap(), 9);
    assert_eq!(get(&e, "d").as_deref(), Some("dv"));
    assert_eq!(e.ttl(b"d").unwrap(), Ttl::ExpiresInMs(59_990));
    assert_eq!(get(&e, "t").as_deref(), Some("again"));
}

/// Leader writes of every kind, some committed; returns the leader.
fn leader_history(dir: &Path, clock: &Arc<ManualClock>) -> Bitcask {
    let e = open(dir, clock);
    e.set_epoch(1).unwrap();
    set(&e, "plain", "p1");
    set_with(&e, "ttl", "t1", Some(T0 + 30_000), Condition::Always);
    set(&e, "gone", "g");
    del(&e, "gone");
    set(&e, "exp", "e1");
    e.write(b"exp", WriteOp::Expire(T0 + 20_000)).unwrap();
    e.set_epoch(3).unwrap();
    assert_eq!(
        set_with(&e, "plain", "nx", None, Condition::IfAbsent),
        w(false, 1)
    );
    set(&e, "plain", "p2");
    set_with(&e, "short", "s", Some(T0 + 100), Condition::Always);
    e.write(b"short2", WriteOp::Expire(T0 + 100)).unwrap();
    for i in 0..30 {
        set(
            &e,
            &format!("k{}", i % 7),
            &format!("value-{i}-{}", "x".repeat(i % 13)),
        );
    }
    del(&e, "k3");
    e
}

#[test]
fn follower_replaying_the_leader_log_ends_with_its_committed_state() {
    let _g = GATE.read();
    let clock = clock();
    let ldir = TempDir::new().unwrap();
    let leader = leader_history(ldir.path(), &clock);
    let end = leader.written_end();
    assert_eq!(end, 39);
    assert_eq!(leader.commit(end).unwrap(), end);
    clock.advance(200); // "short" has expired on both sides

    let fdir = TempDir::new().unwrap();
    let follower = open(fdir.path(), &clock);
    // Two fetches: offsets [0, 17) then the rest.
    let first: Vec<u8> = leader
        .read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .filter(|r| r.header.offset < 17)
        .flat_map(|r| r.raw.to_vec())
        .collect();
    assert_eq!(follower.append_replicated(&first).unwrap(), 17);
    assert_eq!(follower.next_offset(), 17);
    assert_eq!(
        follower.keys().unwrap().len(),
        0,
        "nothing visible before commit"
    );
    assert_eq!(follower.commit(10).unwrap(), 10);
    assert_eq!(
        follower.append_replicated(&shipped(&leader, 17)).unwrap(),
        22
    );
    assert_eq!(follower.commit(end).unwrap(), end);
    let want = state(&leader);
    assert_eq!(want["plain"], ("p2".into(), Ttl::Persistent));
    assert_eq!(want["ttl"], ("t1".into(), Ttl::ExpiresInMs(29_800)));
    assert_eq!(want["exp"], ("e1".into(), Ttl::ExpiresInMs(19_800)));
    assert_eq!(want.get("gone"), None);
    assert_eq!(want.get("short"), None);
    assert_eq!(want.get("k3"), None);
    assert_eq!(want.len(), 9);
    assert_eq!(state(&follower), want);
    assert_eq!(follower.epochs().unwrap(), vec![(1, 0), (3, 6)]);
    assert_eq!(follower.epochs().unwrap(), leader.epochs().unwrap());
    assert_eq!(shipped(&follower, 0), shipped(&leader, 0), "byte for byte");
    // And after a reopen of both.
    drop(follower);
    let follower = open(fdir.path(), &clock);
    assert_eq!(follower.committed(), end);
    assert_eq!(state(&follower), want);
}

#[test]
fn a_damaged_append_is_refused_whole() {
    let _g = GATE.read();
    let clock = clock();
    let ldir = TempDir::new().unwrap();
    let leader = open(ldir.path(), &clock);
    set(&leader, "a", "1");
    set(&leader, "b", "2");
    set(&leader, "c", "3");
    let bytes = shipped(&leader, 0);
    let fdir = TempDir::new().unwrap();
    let follower = open(fdir.path(), &clock);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x04;
        match follower.append_replicated(&bad) {
            Err(Error::Corrupt(msg)) => assert!(msg.ends_with("nothing appended"), "{msg}"),
            other => panic!("flip at byte {i}: {other:?}"),
        }
        assert_eq!((follower.next_offset(), follower.written_end()), (0, 0));
    }
    let cut = follower
        .append_replicated(&bytes[..bytes.len() - 1])
        .unwrap_err();
    assert_eq!(
        cut.to_string(),
        "replicated record 2 (byte 70) is cut short; nothing appended"
    );
    assert_eq!(follower.read_log(0, usize::MAX).unwrap().len(), 0);
    assert_eq!(follower.append_replicated(&bytes).unwrap(), 3);
    assert_eq!(follower.append_replicated(&[]).unwrap(), 0);
    assert_eq!(follower.next_offset(), 3);
}

#[test]
fn offsets_must_move_forward_and_gaps_are_allowed() {
    let _g = GATE.read();
    let clock = clock();
    let ldir = TempDir::new().unwrap();
    let leader = open(ldir.path(), &clock);
    for i in 0..8 {
        set(&leader, &format!("k{i}"), "v");
    }
    let recs = leader.read_log(0, usize::MAX).unwrap();
    let fdir = TempDir::new().unwrap();
    let follower = open(fdir.path(), &clock);
    assert_eq!(follower.append_replicated(&shipped(&leader, 0)).unwrap(), 8);
    let again = follower.append_replicated(&recs[5].raw).unwrap_err();
    assert_eq!(
        again.to_string(),
        "replicated offset 5 is below the log end 8; nothing appended"
    );
    // Within one call: 2 after 3.
    let fdir2 = TempDir::new().unwrap();
    let f2 = open(fdir2.path(), &clock);
    let mut swapped = recs[3].raw.to_vec();
    swapped.extend_from_slice(&recs[2].raw);
    let err = f2.append_replicated(&swapped).unwrap_err();
    assert_eq!(
        err.to_string(),
        "replicated offsets must increase: 2 after 3; nothing appended"
    );
    assert_eq!(f2.next_offset(), 0);
    // Gaps (a merged leader log) are fine: 1, 4, 6.
    let mut gappy = recs[1].raw.to_vec();
    gappy.extend_from_slice(&recs[4].raw);
    gappy.extend_from_slice(&recs[6].raw);
    assert_eq!(f2.append_replicated(&gappy).unwrap(), 3);
    assert_eq!((f2.next_offset(), f2.written_end()), (7, 7));
    assert_eq!(f2.commit(7).unwrap(), 7);
    let mut keys: Vec<String> = state(&f2).into_keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["k1", "k4", "k6"]);
    assert_eq!(offsets(&f2), vec![1, 4, 6]);
    // A local write continues after the gap.
    assert_eq!(set(&f2, "local", "x"), w(true, 8));
    // Standalone engines take no replicated records.
    let sdir = TempDir::new().unwrap();
    let standalone =
        Bitcask::open_with_clock(sdir.path(), opts(Durability::Never, 1024), clock.clone())
            .unwrap();
    let err = standalone.append_replicated(&recs[0].raw).unwrap_err();
    assert_eq!(
        err.to_string(),
        "append_replicated needs an engine opened in replica mode"
    );
}

#[test]
fn truncation_keeps_the_commit_point_unless_unclean() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    for i in 0..10 {
        set(&e, &format!("k{}", i % 4), &format!("v{i}"));
    }
    assert_eq!(e.commit(6).unwrap(), 6);
    let err = e.truncate(5).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
    assert_eq!(
        err.to_string(),
        "cannot truncate to offset 5: records below the commit point 6 are committed"
    );
    assert_eq!(e.next_offset(), 10);
    e.truncate(8).unwrap();
    assert_eq!((e.next_offset(), e.written_end(), e.committed()), (8, 8, 6));
    assert_eq!(offsets(&e), (0..8).collect::<Vec<_>>());
    // k0 = v4, k1 = v5 committed; k2 = v6, k3 = v7 pending.
    assert_eq!(get(&e, "k2").as_deref(), Some("v2"));
    assert_eq!(e.commit(100).unwrap(), 8);
    assert_eq!(get(&e, "k2").as_deref(), Some("v6"));
    assert_eq!(get(&e, "k3").as_deref(), Some("v7"));

    e.truncate_unclean(3).unwrap();
    assert_eq!((e.next_offset(), e.written_end(), e.committed()), (3, 3, 3));
    let want: BTreeMap<String, (String, Ttl)> = [("k0", "v0"), ("k1", "v1"), ("k2", "v2")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), (v.to_string(), Ttl::Persistent)))
        .collect();
    assert_eq!(state(&e), want);
    assert_eq!(set(&e, "k3", "new"), w(true, 4));
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!((e.committed(), e.next_offset()), (3, 4));
    assert_eq!(state(&e), want);
    assert_eq!(e.commit(4).unwrap(), 4);
    assert_eq!(get(&e, "k3").as_deref(), Some("new"));
    // Truncating to the log end or past it changes nothing.
    e.truncate(4).unwrap();
    e.truncate(40).unwrap();
    assert_eq!(e.next_offset(), 4);
}

#[test]
fn truncation_fails_queued_writers_and_drops_pending_records() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    assert_eq!(set(&e, "a", "1"), w(true, 1));
    assert_eq!(set(&e, "a", "2"), w(true, 2));
    assert_eq!(e.commit(1).unwrap(), 1);
    e.truncate(1).unwrap();
    // The newest state is the committed one again: NX sees "a" = "1".
    assert_eq!(
        set_with(&e, "a", "x", None, Condition::IfAbsent),
        w(false, 1)
    );
    assert_eq!(
        set_with(&e, "b", "y", None, Condition::IfPresent),
        w(false, 1)
    );
    assert_eq!(e.commit(10).unwrap(), 1, "nothing pending");
    assert_eq!(get(&e, "a").as_deref(), Some("1"));
}

#[test]
fn epoch_cache_tracks_writes_truncation_and_reopen() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), &clock);
        assert_eq!(e.epochs().unwrap(), vec![]);
        assert_eq!(e.last_epoch().unwrap(), 0);
        for (i, epoch) in [1, 1, 2, 2, 5].into_iter().enumerate() {
            e.set_epoch(epoch).unwrap();
            set(&e, &format!("k{i}"), "v");
        }
        assert_eq!(e.epochs().unwrap(), vec![(1, 0), (2, 2), (5, 4)]);
        assert_eq!(e.last_epoch().unwrap(), 5);
        assert_eq!(
            e.set_epoch(4).unwrap_err().to_string(),
            "leader epoch 4 is below the current epoch 5"
        );
    }
    {
        let e = open(dir.path(), &clock);
        assert_eq!(e.epochs().unwrap(), vec![(1, 0), (2, 2), (5, 4)]);
        e.truncate(3).unwrap();
        assert_eq!(e.epochs().unwrap(), vec![(1, 0), (2, 2)]);
        assert_eq!(e.last_epoch().unwrap(), 2);
        // The leader epoch set before stays; the log's last epoch is 2.
        set(&e, "after", "v");
        assert_eq!(e.epochs().unwrap(), vec![(1, 0), (2, 2), (5, 3)]);
        e.truncate(3).unwrap();
        e.set_epoch(6).unwrap();
        set(&e, "after", "v");
        assert_eq!(e.epochs().unwrap(), vec![(1, 0), (2, 2), (6, 3)]);
    }
    let want = vec![(1, 0), (2, 2), (6, 3)];
    assert_eq!(open(dir.path(), &clock).epochs().unwrap(), want);
    std::fs::remove_file(dir.path().join("EPOCHS")).unwrap();
    assert_eq!(open(dir.path(), &clock).epochs().unwrap(), want, "rebuilt");
    assert!(dir.path().join("EPOCHS").exists(), "and saved");
    // A damaged file is rebuilt.
    let mut bytes = std::fs::read(dir.path().join("EPOCHS")).unwrap();
    bytes[14] ^= 1;
    std::fs::write(dir.path().join("EPOCHS"), &bytes).unwrap();
    assert_eq!(open(dir.path(), &clock).epochs().unwrap(), want, "rebuilt");
    // A stale one (from before a truncation) is trimmed.
    let e = open(dir.path(), &clock);
    e.set_epoch(9).unwrap();
    set(&e, "x", "v");
    let saved = std::fs::read(dir.path().join("EPOCHS")).unwrap();
    e.truncate(4).unwrap();
    drop(e);
    std::fs::write(dir.path().join("EPOCHS"), &saved).unwrap();
    assert_eq!(
        open(dir.path(), &clock).epochs().unwrap(),
        want,
        "entries past the log end are trimmed"
    );
    // Standalone: computed from the headers, epoch 0.
    let sdir = TempDir::new().unwrap();
    let s = Bitcask::open_with_clock(sdir.path(), opts(Durability::Never, 1024), clock.clone())
        .unwrap();
    assert_eq!(s.epochs().unwrap(), vec![]);
    s.set(b"a", Bytes::from_static(b"1"), SetOptions::default())
        .unwrap();
    assert_eq!(s.epochs().unwrap(), vec![(0, 0)]);
    assert!(s.set_epoch(1).is_err());
    assert_eq!(s.commit(0).unwrap(), 1);
    assert_eq!(s.committed(), 1);
}

#[test]
fn uncommitted_tail_survives_reopen_and_crash_invisible() {
    let _g = GATE.read();
    for fsync in [
        Durability::Never,
        Durability::Always,
        Durability::EveryMs(60_000),
    ] {
        let clock = clock();
        let dir = TempDir::new().unwrap();
        let e = Bitcask::open_replica(dir.path(), opts(fsync, 1024), clock.clone()).unwrap();
        for i in 0..12 {
            set(&e, &format!("k{i}"), &format!("v{i}"));
        }
        assert_eq!(e.commit(7).unwrap(), 7);
        {
            // `commit` does no I/O: the commit point reaches `COMMITTED` at
            // the next background checkpoint (or a flush). A crash before it
            // finds the records uncommitted, none lost. (The checkpoint
            // runs at most every second, so it is normally not there yet.)
            let early = crash_copy(dir.path());
            let c = Bitcask::open_replica(early.path(), opts(fsync, 1024), clock.clone()).unwrap();
            let at = c.committed();
            assert!(at == 0 || at == 7, "{fsync:?}: recovered commit point {at}");
            assert_eq!(c.written_end(), 12, "{fsync:?}");
            assert_eq!(state(&c).len() as u64, at, "{fsync:?}");
            assert_eq!(c.read_log(0, usize::MAX).unwrap().len(), 12);
            drop(c);
            e.flush().unwrap();
        }
        // Crash: the files as they are now.
        let crashed = crash_copy(dir.path());
        let c = Bitcask::open_replica(crashed.path(), opts(fsync, 1024), clock.clone()).unwrap();
        assert_eq!((c.committed(), c.written_end()), (7, 12), "{fsync:?}");
        assert_eq!(state(&c).len(), 7, "{fsync:?}");
        assert_eq!(get(&c, "k6").as_deref(), Some("v6"));
        assert_eq!(get(&c, "k7"), None);
        assert_eq!(c.read_log(7, usize::MAX).unwrap().len(), 5);
        assert_eq!(c.commit(12).unwrap(), 12);
        assert_eq!(get(&c, "k11").as_deref(), Some("v11"));
        drop(c);
        // A crash with a torn record at the end of the log.
        let crashed = crash_copy(dir.path());
        let newest = std::fs::read_dir(crashed.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        std::io::Write::write_all(&mut f, &[0x11; 20]).unwrap();
        drop(f);
        let c = Bitcask::open_replica(crashed.path(), opts(fsync, 1024), clock.clone()).unwrap();
        assert_eq!((c.committed(), c.next_offset()), (7, 12), "{fsync:?}");
        drop(c);
        // An orderly reopen of the original.
        drop(e);
        let e = Bitcask::open_replica(dir.path(), opts(fsync, 1024), clock.clone()).unwrap();
        assert_eq!((e.committed(), e.written_end()), (7, 12));
        assert_eq!(get(&e, "k7"), None);
        assert_eq!(e.commit(9).unwrap(), 9);
        drop(e);
        let e = Bitcask::open_replica(dir.path(), opts(fsync, 1024), clock.clone()).unwrap();
        assert_eq!(e.committed(), 9);
        assert_eq!(get(&e, "k8").as_deref(), Some("v8"));
        assert_eq!(get(&e, "k9"), None);
    }
}

#[test]
fn a_commit_point_past_the_log_end_is_lowered() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), &clock);
        for i in 0..6 {
            set(&e, &format!("k{i}"), "v");
        }
        e.commit(6).unwrap();
    }
    // The log lost its tail (a machine crash under every_ms could do this):
    // rewrite the only segment without its last two records.
    let seg = dir.path().join("00000000000000000000.log");
    let bytes = std::fs::read(&seg).unwrap();
    let rec = bytes.len() / 6;
    std::fs::write(&seg, &bytes[..rec * 4]).unwrap();
    let e = open(dir.path(), &clock);
    assert_eq!((e.committed(), e.next_offset()), (4, 4));
    // New records at 4 and 5 are not taken as committed after a reopen.
    set(&e, "n4", "v");
    set(&e, "n5", "v");
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.committed(), 4);
    assert_eq!(get(&e, "n4"), None);
}

/// Bug 8 of issue 10: a crash during the very first write of `COMMITTED`
/// (a fresh replica directory) must not make the replica refuse to open.
/// The first write can only have held commit point 0; a `COMMITTED` whose
/// first slot was never written and whose second is torn is that write.
/// A later damage (a slot written after the first) still refuses to open.
#[test]
fn a_torn_first_write_of_the_commit_point_opens_at_zero() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), &clock);
        for i in 0..3 {
            set(&e, &format!("k{i}"), "v");
        }
    }
    let path = dir.path().join("COMMITTED");
    let intact = std::fs::read(&path).unwrap();
    // The first write goes to the slot at 512: torn after 10 of its bytes
    // (a sparse file: the first slot reads as zeros), or left all zeros.
    for torn in [
        [&[0u8; 512][..], &intact[512..522]].concat(),
        vec![0u8; 536],
        vec![0u8; 100],
    ] {
        std::fs::write(&path, &torn).unwrap();
        let e = open(dir.path(), &clock);
        assert_eq!((e.committed(), e.next_offset()), (0, 3));
        assert_eq!(get(&e, "k0"), None, "uncommitted");
        e.commit(2).unwrap();
        assert_eq!(get(&e, "k1").as_deref(), Some("v"));
        drop(e);
        assert_eq!(open(dir.path(), &clock).committed(), 2, "and it works");
    }
    // A temporary file left by a crash while creating it is ignored.
    std::fs::write(dir.path().join("COMMITTED.tmp"), [1u8; 7]).unwrap();
    assert_eq!(open(dir.path(), &clock).committed(), 2);
    // Both slots written and then damaged: not a first write, refuse.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[13] ^= 1;
    bytes[512 + 13] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = Bitcask::open_replica(dir.path(), opts(Durability::Never, 1024), clock.clone())
        .err()
        .unwrap();
    assert!(err.to_string().contains("is damaged"), "{err}");
}

#[test]
fn merge_keeps_uncommitted_segments_and_retained_tombstones() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    // Offset 0: "gone", 1: its tombstone, 2: "short" (expires), then filler.
    set(&e, "gone", "x");
    del(&e, "gone");
    set_with(&e, "short", "s", Some(T0 + 10), Condition::Always);
    for i in 0..60 {
        set(
            &e,
            &format!("k{}", i % 5),
            &format!("value-{i:02}-{}", "y".repeat(40)),
        );
    }
    let end = e.next_offset();
    assert_eq!(end, 63);
    clock.advance(10);
    // Nothing committed: merge touches nothing.
    let before = shipped(&e, 0);
    let report = e.merge().unwrap();
    assert_eq!(report.inputs, 0);
    assert_eq!(shipped(&e, 0), before);

    // Committed up to 40: only segments wholly below 40 are merged, and
    // (retain_from = 0) the tombstone and the expired record stay.
    e.commit(40).unwrap();
    let tail_before = shipped(&e, 40);
    let report = e.merge().unwrap();
    assert!(report.inputs > 0);
    assert_eq!(
        shipped(&e, 40),
        tail_before,
        "records >= committed untouched"
    );
    let logged = e.read_log(0, usize::MAX).unwrap();
    let kept: Vec<(u64, Kind)> = logged
        .iter()
        .filter(|r| r.header.offset < 3)
        .map(|r| (r.header.offset, r.header.kind))
        .collect();
    assert_eq!(kept, vec![(1, Kind::Delete), (2, Kind::Put)]);
    // Every merged-away record is below 40 and an overwritten "k".
    let present: Vec<u64> = logged.iter().map(|r| r.header.offset).collect();
    let merged_seg_end = present.iter().copied().filter(|&o| o >= 3).min().unwrap();
    for o in 3..merged_seg_end {
        assert!(!present.contains(&o) && o < 40);
    }

    // The slowest replica passed offset 2: the tombstone (1) may go, the
    // expired record (2) not yet.
    e.set_retain_from(2);
    e.commit(end).unwrap();
    e.merge().unwrap();
    let low: Vec<u64> = offsets(&e).into_iter().filter(|&o| o < 3).collect();
    assert_eq!(low, vec![2]);
    e.set_retain_from(3);
    e.merge().unwrap();
    let low: Vec<u64> = offsets(&e).into_iter().filter(|&o| o < 3).collect();
    assert_eq!(low, Vec::<u64>::new());
    assert_eq!(get(&e, "gone"), None);
    assert_eq!(get(&e, "short"), None);
    let want = state(&e);
    assert_eq!(want.len(), 5);
    // A follower replaying the merged log (with its gaps) agrees.
    let fdir = TempDir::new().unwrap();
    let f = open(fdir.path(), &clock);
    f.append_replicated(&shipped(&e, 0)).unwrap();
    f.commit(end).unwrap();
    assert_eq!(state(&f), want);
}

#[test]
fn a_lagging_follower_never_resurrects_a_deleted_or_expired_key() {
    let _g = GATE.read();
    let clock = clock();
    let ldir = TempDir::new().unwrap();
    let fdir = TempDir::new().unwrap();
    let leader = open(ldir.path(), &clock);
    let follower = open(fdir.path(), &clock);
    set(&leader, "del", "old");
    set(&leader, "exp", "old");
    follower.append_replicated(&shipped(&leader, 0)).unwrap();
    let lagging = follower.next_offset();
    assert_eq!(lagging, 2);
    // The follower stops fetching; the leader deletes and expires.
    del(&leader, "del");
    leader.write(b"exp", WriteOp::Expire(T0 + 5)).unwrap();
    for i in 0..80 {
        set(&leader, &format!("f{}", i % 3), &"z".repeat(60));
    }
    leader.commit(leader.written_end()).unwrap();
    clock.advance(5);
    leader.set_retain_from(lagging);
    leader.merge().unwrap();
    follower
        .append_replicated(&shipped(&leader, lagging))
        .unwrap();
    follower.commit(leader.written_end()).unwrap();
    assert_eq!(get(&follower, "del"), None);
    assert_eq!(get(&follower, "exp"), None);
    assert_eq!(state(&follower), state(&leader));
}

#[test]
fn sweep_writes_no_records() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    set_with(&e, "a", "1", Some(T0 + 5), Condition::Always);
    set(&e, "b", "2");
    e.commit(2).unwrap();
    clock.advance(5);
    assert_eq!(e.sweep_expired(), 1);
    assert_eq!(e.next_offset(), 2);
    assert_eq!(e.status().unwrap().records_written, 2);
    assert_eq!(offsets(&e), vec![0, 1]);
}

#[test]
fn read_log_from_every_offset_matches_a_walk() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    // 64 KiB segments: several index points per segment.
    let e = Bitcask::open_replica(dir.path(), opts(Durability::Never, 64 << 10), clock.clone())
        .unwrap();
    for i in 0..1500u64 {
        let v = "v".repeat((i * 37 % 150) as usize);
        set(&e, &format!("k{}", i % 40), &v);
        if i % 17 == 0 {
            del(&e, &format!("k{}", (i + 3) % 40));
        }
    }
    e.commit(e.written_end() / 2).unwrap();
    e.merge().unwrap(); // gaps in the low offsets
    let all = e.read_log(0, usize::MAX).unwrap();
    let end = e.next_offset();
    assert!(all.len() < end as usize, "the merge left gaps");
    assert!(e.status().unwrap().segments >= 3);
    for from in 0..=end + 1 {
        let want: Vec<_> = all.iter().filter(|r| r.header.offset >= from).collect();
        let got = e.read_log(from, usize::MAX).unwrap();
        assert_eq!(got.len(), want.len(), "from {from}");
        assert!(got.iter().zip(&want).all(|(a, b)| a == *b), "from {from}");
        let one = e.read_log(from, 1).unwrap();
        assert_eq!(
            one.first(),
            want.first().copied(),
            "from {from}, one record"
        );
        let some = e.read_log(from, 1000).unwrap();
        let mut bytes = 0;
        let n = want
            .iter()
            .take_while(|r| {
                let under = bytes < 1000;
                bytes += r.raw.len();
                under
            })
            .count();
        assert_eq!(some.len(), n, "from {from}, 1000 bytes");
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn a_failed_write_leaves_the_uncommitted_state_intact() {
    let _g = GATE.write();
    let scenario = fail::FailScenario::setup();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    assert_eq!(set(&e, "a", "1"), w(true, 1));
    fail::cfg("bitcask::write", "return").unwrap();
    let err = e
        .write(
            b"a",
            WriteOp::Set(Bytes::from_static(b"2"), SetOptions::default()),
        )
        .unwrap_err();
    assert!(matches!(err, Error::DiskFull(_)), "{err}");
    let fdir = TempDir::new().unwrap();
    let f = open(fdir.path(), &clock);
    assert!(matches!(
        f.append_replicated(&shipped(&e, 0)),
        Err(Error::DiskFull(_))
    ));
    assert_eq!((f.next_offset(), f.written_end()), (0, 0));
    fail::remove("bitcask::write");
    // "a" = "1" is still the newest state, uncommitted.
    assert_eq!(
        set_with(&e, "a", "x", None, Condition::IfAbsent),
        w(false, 1)
    );
    assert_eq!(
        e.write(b"a", WriteOp::Expire(T0 + 100)).unwrap(),
        w(true, 2)
    );
    assert_eq!(e.commit(2).unwrap(), 2);
    assert_eq!(get(&e, "a").as_deref(), Some("1"));
    assert_eq!(e.ttl(b"a").unwrap(), Ttl::ExpiresInMs(100));
    assert_eq!(f.append_replicated(&shipped(&e, 0)).unwrap(), 2);
    scenario.teardown();
}

#[test]
#[ignore = "timing; run by hand with --release -- --ignored --nocapture"]
fn read_log_tail_timing() {
    let dir = TempDir::new().unwrap();
    let clock = clock();
    let value = Bytes::from(vec![7u8; 1024]);
    let tail;
    {
        let e = Bitcask::open_with_clock(dir.path(), opts_big(300 << 20), clock.clone()).unwrap();
        let mut n = 0u64;
        while n * (33 + 10 + 1024) < 256 << 20 {
            e.set(
                format!("k{n:09}").as_bytes(),
                value.clone(),
                SetOptions::default(),
            )
            .unwrap();
            n += 1;
        }
        tail = e.next_offset() - 1;
        for round in 0..3 {
            let t = Instant::now();
            let recs = e.read_log(tail, 1 << 20).unwrap();
            assert_eq!(recs.len(), 1);
            println!(
                "active segment, {n} records, read_log(tail) #{round}: {:?}",
                t.elapsed()
            );
        }
    }
    // Roll: the 256 MiB segment becomes sealed (memory-mapped).
    let e = Bitcask::open_with_clock(dir.path(), opts_big(256 << 20), clock.clone()).unwrap();
    while e.status().unwrap().segments < 2 {
        e.set(b"roll", value.clone(), SetOptions::default())
            .unwrap();
    }
    for round in 0..3 {
        let t = Instant::now();
        let recs = e.read_log(tail, 1).unwrap();
        assert_eq!(recs[0].header.offset, tail);
        println!("sealed segment, read_log(tail) #{round}: {:?}", t.elapsed());
    }
}

/// Options for the timing test: big segments, 1 KiB values.
fn opts_big(segment_bytes: u64) -> Options {
    let mut o = opts(Durability::Never, segment_bytes);
    o.limits.max_value_bytes = 4096;
    o.cache_bytes = 0;
    o
}

#[test]
fn hints_do_not_apply_uncommitted_records_at_open() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), &clock);
        for i in 0..60 {
            set(
                &e,
                &format!("k{}", i % 10),
                &format!("v{i}-{}", "h".repeat(30)),
            );
        }
        assert!(e.status().unwrap().segments >= 3);
        e.commit(25).unwrap();
        e.write_missing_hints().unwrap(); // (the janitor may have been first)
        let hints = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "hint")
            })
            .count();
        assert!(hints >= 2, "{hints} hints");
    }
    let e = open(dir.path(), &clock);
    assert_eq!((e.committed(), e.written_end()), (25, 60));
    let want: BTreeMap<String, String> = (15..25)
        .map(|i| (format!("k{}", i % 10), format!("v{i}-{}", "h".repeat(30))))
        .collect();
    let got: BTreeMap<String, String> = state(&e).into_iter().map(|(k, (v, _))| (k, v)).collect();
    assert_eq!(got, want);
    assert_eq!(e.commit(60).unwrap(), 60);
    assert_eq!(
        get(&e, "k9").as_deref(),
        Some(&*format!("v59-{}", "h".repeat(30)))
    );
}

#[test]
fn truncation_keeps_the_log_end_across_a_merge_gap() {
    let _g = GATE.read();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    {
        let e = open(dir.path(), &clock);
        let v60 = "a".repeat(60);
        set(&e, "z", &v60); // 0, stays live
        for _ in 1..39 {
            set(&e, "a", &v60); // 1..=38
        }
        assert_eq!(del(&e, "a"), w(true, 40)); // 39
        assert_eq!(set(&e, "b", &"b".repeat(150)), w(true, 41)); // 40, rolls
        assert_eq!(e.commit(40).unwrap(), 40);
        e.set_retain_from(40);
        e.merge().unwrap();
        assert_eq!(offsets(&e), vec![0, 40]);
        e.truncate(40).unwrap();
        assert_eq!((e.next_offset(), e.committed()), (40, 40));
    }
    let e = open(dir.path(), &clock);
    assert_eq!(
        (e.next_offset(), e.committed(), e.written_end()),
        (40, 40, 40)
    );
    assert_eq!(get(&e, "z").as_deref(), Some(&*"a".repeat(60)));
    assert_eq!(get(&e, "a"), None);
    assert_eq!(set(&e, "c", "1"), w(true, 41));
    assert_eq!(offsets(&e), vec![0, 40]);
}

/// Model-based test of replica mode: random writes, commits, merges,
/// truncations (never below the commit point), reopens and crashes. The
/// model keeps the committed map and the pending records by offset; every
/// answer, `until`, offset and the visible state must match it.
mod model {
    use super::*;
    use caskade::storage::Clock;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub enum Op {
        Set {
            key: u8,
            value: u8,
            ttl: Option<u64>,
            condition: u8,
        },
        Delete(u8),
        Expire(u8, i64),
        Advance(u64),
        /// Commit up to committed + (pending span) * n / 4, or past the end.
        Commit(u8),
        Merge,
        Retain(u8),
        /// Truncate to committed + (pending span) * n / 4.
        Truncate(u8),
        Reopen,
        Crash(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..6;
        prop_oneof![
            8 => (key.clone(), any::<u8>(), prop::option::of(1u64..3000), 0u8..4)
                .prop_map(|(key, value, ttl, condition)| Op::Set { key, value, ttl, condition }),
            3 => key.clone().prop_map(Op::Delete),
            2 => (key, -100i64..3000).prop_map(|(k, d)| Op::Expire(k, d)),
            2 => (0u64..1500).prop_map(Op::Advance),
            4 => (0u8..6).prop_map(Op::Commit),
            1 => Just(Op::Merge),
            1 => (0u8..5).prop_map(Op::Retain),
            1 => (0u8..5).prop_map(Op::Truncate),
            1 => Just(Op::Reopen),
            1 => any::<bool>().prop_map(Op::Crash),
        ]
    }

    /// What a record does.
    #[derive(Clone, Debug)]
    enum Rec {
        Put(Bytes, u64),
        Delete,
    }

    fn key(k: u8) -> Vec<u8> {
        format!("key-{k}").into_bytes()
    }

    fn value(v: u8) -> Bytes {
        Bytes::from(format!("value-{v}-{}", "x".repeat(v as usize % 50)))
    }

    /// The committed state: value and expiry (0 = none) by key.
    type State = BTreeMap<Vec<u8>, (Bytes, u64)>;

    struct Harness {
        dir: TempDir,
        clock: Arc<ManualClock>,
        opts: Options,
        engine: Option<Bitcask>,
        committed: State,
        commit_point: u64,
        pending: Vec<(u64, Vec<u8>, Rec)>,
        next: u64,
        /// `(commit point, committed state)` at every commit point since
        /// the last checkpoint known to be on disk (close, merge), that one
        /// first: a crash recovers one of them (the engine checkpoints in
        /// the background too).
        history: Vec<(u64, State)>,
        /// Records applied since that checkpoint, in offset order.
        applied: Vec<(u64, Vec<u8>, Rec)>,
    }

    impl Harness {
        fn e(&self) -> &Bitcask {
            self.engine.as_ref().unwrap()
        }

        /// The newest state of `k` and the pending offset it comes from.
        fn latest(&self, k: &[u8]) -> (Option<(Bytes, u64)>, Option<u64>) {
            match self.pending.iter().rev().find(|(_, pk, _)| pk == k) {
                Some((o, _, Rec::Put(v, at))) => (Some((v.clone(), *at)), Some(*o)),
                Some((o, _, Rec::Delete)) => (None, Some(*o)),
                None => (self.committed.get(k).cloned(), None),
            }
        }

        /// The commit point is on disk: a crash recovers at least it.
        fn checkpointed(&mut self) {
            self.history = vec![(self.commit_point, self.committed.clone())];
            self.applied.clear();
        }

        /// After a crash: the model goes back to the commit point the
        /// engine recovered, which must be one it went through.
        fn recovered(&mut self) -> Result<(), TestCaseError> {
            let at = self.e().committed();
            let Some(i) = self.history.iter().position(|(p, _)| *p == at) else {
                return Err(TestCaseError::fail(format!(
                    "recovered commit point {at} is none of {:?}",
                    self.history.iter().map(|h| h.0).collect::<Vec<_>>()
                )));
            };
            self.committed = self.history[i].1.clone();
            let mut pending: Vec<_> = self
                .applied
                .iter()
                .filter(|(o, _, _)| *o >= at)
                .cloned()
                .collect();
            pending.append(&mut self.pending);
            self.pending = pending;
            self.commit_point = at;
            self.checkpointed();
            Ok(())
        }

        fn reopen(&mut self) {
            self.engine = None;
            self.engine = Some(
                Bitcask::open_replica(self.dir.path(), self.opts.clone(), self.clock.clone())
                    .unwrap(),
            );
        }

        fn write(&mut self, k: u8, op: WriteOp) -> Result<(), TestCaseError> {
            let now = self.clock.now_ms();
            let k = key(k);
            let (cur, dep) = self.latest(&k);
            let cur = cur.filter(|(_, at)| *at == 0 || *at > now);
            let exists = cur.is_some();
            let (rec, answer) = match &op {
                WriteOp::Set(v, o) => {
                    let allowed = match o.condition {
                        Condition::Always => true,
                        Condition::IfAbsent => !exists,
                        Condition::IfPresent => exists,
                    };
                    match o.expire_at_ms {
                        _ if !allowed => (None, false),
                        Some(at) if at <= now => (exists.then_some(Rec::Delete), true),
                        at => (Some(Rec::Put(v.clone(), at.unwrap_or(0))), true),
                    }
                }
                WriteOp::Delete => (exists.then_some(Rec::Delete), exists),
                WriteOp::Expire(_) if !exists => (None, false),
                WriteOp::Expire(at) if *at <= now => (Some(Rec::Delete), true),
                WriteOp::Expire(at) => (cur.map(|(v, _)| Rec::Put(v, *at)), true),
                // The read-modify-writes are modelled in tests/storage/storage_ops.rs.
                other => unreachable!("the model generates set, delete and expire: {other:?}"),
            };
            let got = self.e().write(&k, op).unwrap();
            prop_assert_eq!(got.done, answer);
            match rec {
                Some(rec) => {
                    prop_assert_eq!(got.until, self.next + 1);
                    self.pending.push((self.next, k, rec));
                    self.next += 1;
                }
                None => {
                    let until = dep.map_or(self.commit_point, |o| o + 1);
                    prop_assert_eq!(got.until, until);
                }
            }
            prop_assert_eq!(self.e().next_offset(), self.next);
            Ok(())
        }

        fn check(&self) -> Result<(), TestCaseError> {
            let e = self.e();
            let now = self.clock.now_ms();
            prop_assert_eq!(e.committed(), self.commit_point);
            prop_assert_eq!(e.written_end(), self.next);
            let mut got = BTreeMap::new();
            for k in e.keys().unwrap() {
                let v = e.get(&k).unwrap().unwrap();
                got.insert(k.to_vec(), (v, e.ttl(&k).unwrap()));
            }
            let want: BTreeMap<Vec<u8>, (Bytes, Ttl)> = self
                .committed
                .iter()
                .filter(|(_, (_, at))| *at == 0 || *at > now)
                .map(|(k, (v, at))| {
                    let ttl = if *at == 0 {
                        Ttl::Persistent
                    } else {
                        Ttl::ExpiresInMs(at - now)
                    };
                    (k.clone(), (v.clone(), ttl))
                })
                .collect();
            prop_assert_eq!(got, want);
            // The uncommitted records are all in the log, unchanged.
            let tail: Vec<u64> = e
                .read_log(self.commit_point, usize::MAX)
                .unwrap()
                .iter()
                .map(|r| r.header.offset)
                .collect();
            let pending: Vec<u64> = self.pending.iter().map(|p| p.0).collect();
            prop_assert_eq!(tail, pending);
            Ok(())
        }

        fn point(&self, n: u8) -> u64 {
            self.commit_point + (self.next - self.commit_point) * n as u64 / 4
        }

        fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
            match op {
                Op::Set {
                    key: k,
                    value: v,
                    ttl,
                    condition,
                } => {
                    let opts = SetOptions {
                        expire_at_ms: ttl.map(|t| self.clock.now_ms() + t),
                        condition: match condition {
                            0 | 1 => Condition::Always,
                            2 => Condition::IfAbsent,
                            _ => Condition::IfPresent,
                        },
                    };
                    self.write(*k, WriteOp::Set(value(*v), opts))?;
                }
                Op::Delete(k) => self.write(*k, WriteOp::Delete)?,
                Op::Expire(k, d) => {
                    let at = (self.clock.now_ms() as i64 + d) as u64;
                    self.write(*k, WriteOp::Expire(at))?;
                }
                Op::Advance(ms) => self.clock.advance(*ms),
                Op::Commit(n) => {
                    let hw = if *n == 5 {
                        self.next + 3
                    } else {
                        self.point(*n)
                    };
                    let target = hw.min(self.next).max(self.commit_point);
                    prop_assert_eq!(self.e().commit(hw).unwrap(), target);
                    for (o, k, rec) in &self.pending {
                        if *o < target {
                            self.applied.push((*o, k.clone(), rec.clone()));
                            match rec {
                                Rec::Put(v, at) => {
                                    self.committed.insert(k.clone(), (v.clone(), *at));
                                }
                                Rec::Delete => {
                                    self.committed.remove(k);
                                }
                            }
                        }
                    }
                    self.pending.retain(|(o, _, _)| *o >= target);
                    if target > self.commit_point {
                        self.history.push((target, self.committed.clone()));
                    }
                    self.commit_point = target;
                }
                Op::Merge => {
                    self.e().merge().unwrap();
                    self.checkpointed();
                }
                Op::Retain(n) => self.e().set_retain_from(self.point(*n)),
                Op::Truncate(n) => {
                    let at = self.point(*n);
                    self.e().truncate(at).unwrap();
                    self.pending.retain(|(o, _, _)| *o < at);
                    self.next = self.next.min(at);
                    if self.commit_point > 0 {
                        let below = self.commit_point - 1;
                        let err = self.e().truncate(below).unwrap_err();
                        prop_assert!(matches!(err, Error::InvalidInput(_)));
                    }
                }
                Op::Reopen => {
                    self.reopen();
                    self.checkpointed();
                }
                Op::Crash(torn) => {
                    let copy = crash_copy(self.dir.path());
                    self.engine = None;
                    if *torn {
                        let newest = std::fs::read_dir(copy.path())
                            .unwrap()
                            .map(|e| e.unwrap().path())
                            .filter(|p| p.extension().is_some_and(|x| x == "log"))
                            .max()
                            .unwrap();
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(newest)
                            .unwrap();
                        std::io::Write::write_all(&mut f, &[0x5a; 30]).unwrap();
                    }
                    self.dir = copy;
                    self.reopen();
                    self.recovered()?;
                }
            }
            self.check()
        }
    }

    fn run(ops: Vec<Op>, fsync: Durability) -> Result<(), TestCaseError> {
        let dir = TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let opts = opts(fsync, 700);
        let engine = Bitcask::open_replica(dir.path(), opts.clone(), clock.clone()).unwrap();
        let mut h = Harness {
            dir,
            clock,
            opts,
            engine: Some(engine),
            committed: BTreeMap::new(),
            commit_point: 0,
            pending: Vec::new(),
            next: 0,
            history: vec![(0, BTreeMap::new())],
            applied: Vec::new(),
        };
        for op in &ops {
            h.step(op)?;
        }
        // Commit everything: the visible state is then the newest one.
        h.step(&Op::Commit(5))?;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

        #[test]
        fn replica_matches_model_fsync_never(ops in prop::collection::vec(op(), 1..100)) {
            let _g = GATE.read();
            run(ops, Durability::Never)?;
        }

        #[test]
        fn replica_matches_model_fsync_always(ops in prop::collection::vec(op(), 1..50)) {
            let _g = GATE.read();
            run(ops, Durability::Always)?;
        }
    }
}

/// The `.log` files of `dir`, sorted.
fn log_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn mid_log_corruption_cuts_the_replica_log_and_the_records_are_refetched() {
    let _g = GATE.read();
    let clock = clock();
    let ldir = TempDir::new().unwrap();
    let leader = open(ldir.path(), &clock);
    // 60 records over three segments; offset 25 deletes `d` (set at 3).
    for i in 0..60u64 {
        if i == 25 {
            del(&leader, "d");
        } else if i == 3 {
            set(&leader, "d", "doomed");
        } else {
            set(&leader, &format!("k{}", i % 7), &format!("val-{i:03}"));
        }
    }
    assert_eq!(leader.commit(60).unwrap(), 60);
    leader.flush().unwrap();
    let fdir = crash_copy(ldir.path());
    // A segment with an intact hint is not scanned at open (its damage
    // shows on reads); without one it is.
    for entry in std::fs::read_dir(fdir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let segments = log_files(fdir.path());
    assert!(segments.len() >= 3, "{} segments", segments.len());
    // Damage the value of the record at offset 20 (in the first segment,
    // below the commit point), on the follower's copy.
    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes
        .windows(7)
        .position(|w| w == b"val-020")
        .expect("record 20 is in the first segment");
    bytes[at + 5] ^= 0x10;
    std::fs::write(first, &bytes).unwrap();

    let follower = open(fdir.path(), &clock);
    assert_eq!(follower.next_offset(), 20, "the log ends at the bad record");
    assert_eq!(follower.written_end(), 20);
    assert_eq!(
        follower.committed(),
        20,
        "the commit point is clamped to the log end"
    );
    assert_eq!(offsets(&follower), (0..20).collect::<Vec<_>>());
    assert_eq!(
        log_files(fdir.path()),
        vec![first.clone()],
        "later segments dropped"
    );
    assert_eq!(follower.status().unwrap().corrupt_ranges, 1);
    // The tombstone at 25 was in the dropped range: `d` is alive until refetched.
    assert_eq!(get(&follower, "d").as_deref(), Some("doomed"));

    // The follower fetches everything from its log end again.
    assert_eq!(
        follower.append_replicated(&shipped(&leader, 20)).unwrap(),
        40
    );
    assert_eq!(follower.commit(60).unwrap(), 60);
    assert_eq!(get(&follower, "d"), None);
    assert_eq!(state(&follower), state(&leader));
    assert_eq!(shipped(&follower, 0), shipped(&leader, 0), "byte for byte");
    drop(follower);
    let follower = open(fdir.path(), &clock);
    assert_eq!((follower.committed(), follower.next_offset()), (60, 60));
    assert_eq!(follower.status().unwrap().corrupt_ranges, 0);
    assert_eq!(state(&follower), state(&leader));
}

/// Session 11 (src/storage/bitcask/tail.rs): a failed write forgets the
/// log's tail in memory, on a leader and on a follower: nothing before the
/// failure is answered from memory any more, and what memory answers after
/// the next write equals the files.
#[cfg(feature = "failpoints")]
#[test]
fn a_failed_write_forgets_the_tail_in_memory() {
    let _g = GATE.write();
    let scenario = fail::FailScenario::setup();
    let clock = clock();
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &clock);
    set(&e, "a", "1");
    set(&e, "b", "2");
    assert_eq!(e.read_log_memory(0, usize::MAX).unwrap().unwrap().len(), 2);
    fail::cfg("bitcask::write", "1*return->off").unwrap();
    let err = e
        .write(
            b"c",
            WriteOp::Set(Bytes::from_static(b"3"), SetOptions::default()),
        )
        .unwrap_err();
    assert!(matches!(err, Error::DiskFull(_)), "{err}");
    assert!(e.read_log_memory(0, usize::MAX).is_none(), "forgotten");
    set(&e, "c", "3");
    assert!(e.read_log_memory(1, usize::MAX).is_none());
    let mem = e.read_log_memory(2, usize::MAX).unwrap().unwrap();
    assert_eq!(mem.len(), 1);
    assert_eq!(mem, e.read_log(2, usize::MAX).unwrap());

    let fdir = TempDir::new().unwrap();
    let f = open(fdir.path(), &clock);
    assert_eq!(f.append_replicated(&shipped(&e, 0)).unwrap(), 3);
    assert_eq!(f.read_log_memory(0, usize::MAX).unwrap().unwrap().len(), 3);
    set(&e, "d", "4");
    fail::cfg("bitcask::write", "1*return->off").unwrap();
    assert!(matches!(
        f.append_replicated(&shipped(&e, 3)),
        Err(Error::DiskFull(_))
    ));
    assert!(f.read_log_memory(0, usize::MAX).is_none(), "forgotten");
    fail::remove("bitcask::write");
    scenario.teardown();
}
