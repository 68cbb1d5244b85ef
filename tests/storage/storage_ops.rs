//! Engine-level tests of the read-modify-write operations (`storage/ops.rs`
//! decided in Bitcask's write path): exact answers, the expiry each one
//! leaves, concurrency without lost updates, durability across a reopen,
//! replication of the records they produce, and the same answers from the
//! in-memory reference engine.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Condition, Durability, Engine, ExpireFlags, Expiry, ExpiryChange, ManualClock, Memory,
    Options, SetOptions, Ttl, WriteOp, Written,
};

const T0: u64 = 1_767_225_600_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opts(fsync: Durability) -> Options {
    let mut o = Options {
        fsync,
        segment_bytes: 1 << 20,
        ..Options::default()
    };
    o.limits.max_value_bytes = 64 << 10;
    o
}

fn open(dir: &Path, clock: &Arc<ManualClock>, fsync: Durability) -> Bitcask {
    Bitcask::open_with_clock(dir, opts(fsync), clock.clone()).unwrap()
}

fn get(e: &dyn Engine, k: &str) -> Option<String> {
    e.get(k.as_bytes())
        .unwrap()
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn w(e: &dyn Engine, k: &str, op: WriteOp) -> Written {
    e.write(k.as_bytes(), op).unwrap()
}

/// 8 threads x 1,000 INCR on one key: exactly 8,000, under each fsync
/// policy, and still 8,000 after a reopen.
#[test]
fn concurrent_incr_loses_no_update() {
    for fsync in [
        Durability::Always,
        Durability::EveryMs(5),
        Durability::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let e = Arc::new(open(dir.path(), &clock, fsync));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::with_capacity(1000);
                    for _ in 0..1000 {
                        seen.push(w(&*e, "n", WriteOp::IncrBy(1)).number);
                    }
                    seen
                })
            })
            .collect();
        let mut all: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        // Every answer is distinct: each INCR saw the one before it.
        assert_eq!(all, (1..=8000).collect::<Vec<i64>>(), "{fsync:?}");
        assert_eq!(get(&*e, "n").as_deref(), Some("8000"), "{fsync:?}");
        drop(e);
        let e = open(dir.path(), &clock, fsync);
        assert_eq!(get(&e, "n").as_deref(), Some("8000"), "{fsync:?}");
    }
}

/// 8 threads each APPEND their own letter 250 times: 2,000 bytes, 250 of
/// each letter.
#[test]
fn concurrent_append_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = Arc::new(open(dir.path(), &clock, Durability::Always));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                let letter = Bytes::from(vec![b'a' + t]);
                for _ in 0..250 {
                    e.write(b"s", WriteOp::Append(letter.clone())).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = e.get(b"s").unwrap().unwrap();
    assert_eq!(v.len(), 2000);
    for t in 0..8u8 {
        assert_eq!(v.iter().filter(|&&c| c == b'a' + t).count(), 250);
    }
    assert_eq!(w(&*e, "s", WriteOp::Append(b("!"))).number, 2001);
}

/// Each op's answer and the expiry it leaves, with a manual clock; the
/// records survive a reopen with the same state.
#[test]
fn answers_and_expiries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let e = open(dir.path(), &clock, Durability::Always);
    let ext = |v: &str, at: Option<u64>, cond, keep_ttl, get| WriteOp::SetExt {
        value: b(v),
        opts: SetOptions {
            expire_at_ms: at,
            condition: cond,
        },
        keep_ttl,
        get,
    };
    // SET k 10 PXAT T0+5000
    let r = w(
        &e,
        "k",
        ext("10", Some(T0 + 5000), Condition::Always, false, true),
    );
    assert_eq!((r.done, r.old), (true, None));
    // INCRBY keeps the TTL.
    assert_eq!(w(&e, "k", WriteOp::IncrBy(-15)).number, -5);
    assert_eq!(e.expiry(b"k").unwrap(), Expiry::At(T0 + 5000));
    // SET KEEPTTL GET.
    let r = w(&e, "k", ext("x", None, Condition::Always, true, true));
    assert_eq!(r.old, Some(b("-5")));
    assert_eq!(e.expiry(b"k").unwrap(), Expiry::At(T0 + 5000));
    // APPEND keeps it too.
    assert_eq!(w(&e, "k", WriteOp::Append(b("yz"))).number, 3);
    assert_eq!(e.ttl(b"k").unwrap(), Ttl::ExpiresInMs(5000));
    // INCR on "xyz" fails and writes nothing.
    let before = e.next_offset();
    let err = e.write(b"k", WriteOp::IncrBy(1)).unwrap_err();
    assert_eq!(err.to_string(), "value is not an integer or out of range");
    assert_eq!(e.next_offset(), before);
    // EXPIRE GT with an earlier instant: refused; LT: applied.
    let gt = ExpireFlags {
        gt: true,
        ..ExpireFlags::default()
    };
    let lt = ExpireFlags {
        lt: true,
        ..ExpireFlags::default()
    };
    assert!(!w(&e, "k", WriteOp::ExpireIf(T0 + 4000, gt)).done);
    assert!(w(&e, "k", WriteOp::ExpireIf(T0 + 4000, lt)).done);
    assert_eq!(e.expiry(b"k").unwrap(), Expiry::At(T0 + 4000));
    // PERSIST, then GT on a key without expiry is refused (infinite).
    assert!(w(&e, "k", WriteOp::Persist).done);
    assert!(!w(&e, "k", WriteOp::Persist).done);
    assert_eq!(e.expiry(b"k").unwrap(), Expiry::Persistent);
    assert!(!w(&e, "k", WriteOp::ExpireIf(T0 + 9000, gt)).done);
    // GETEX sets one again.
    let r = w(&e, "k", WriteOp::GetEx(ExpiryChange::At(T0 + 7000)));
    assert_eq!(r.old, Some(b("xyz")));
    // GETDEL of another key.
    w(&e, "g", ext("gone", None, Condition::Always, false, false));
    assert_eq!(w(&e, "g", WriteOp::GetDel).old, Some(b("gone")));
    assert_eq!(w(&e, "g", WriteOp::GetDel).old, None);
    // Overflow is its own error.
    w(
        &e,
        "max",
        ext("9223372036854775807", None, Condition::Always, false, false),
    );
    assert_eq!(
        e.write(b"max", WriteOp::IncrBy(1)).unwrap_err().to_string(),
        "increment or decrement would overflow"
    );
    assert_eq!(e.live_keys().unwrap(), 2);
    drop(e);
    let e = open(dir.path(), &clock, Durability::Always);
    assert_eq!(get(&e, "k").as_deref(), Some("xyz"));
    assert_eq!(e.expiry(b"k").unwrap(), Expiry::At(T0 + 7000));
    assert_eq!(get(&e, "g"), None);
    assert_eq!(e.expiry(b"g").unwrap(), Expiry::Missing);
    // A past EXPIREAT deletes.
    assert!(w(&e, "k", WriteOp::ExpireIf(T0 - 1, ExpireFlags::default())).done);
    assert_eq!(get(&e, "k"), None);
    // Time passing expires a key an INCR kept the TTL of.
    w(
        &e,
        "t",
        ext("1", Some(T0 + 100), Condition::Always, false, false),
    );
    assert_eq!(w(&e, "t", WriteOp::IncrBy(1)).number, 2);
    clock.advance(100);
    assert_eq!(get(&e, "t"), None);
    assert_eq!(w(&e, "t", WriteOp::IncrBy(1)).number, 1);
    assert_eq!(e.expiry(b"t").unwrap(), Expiry::Persistent);
    assert_eq!(e.live_keys().unwrap(), 2);
}

/// A follower that appends the leader's records holds the same values:
/// INCR and APPEND travel as ordinary records.
#[test]
fn follower_replays_incr_and_append_to_the_same_values() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = Arc::new(ManualClock::new(T0));
    let leader = Bitcask::open_replica(ld.path(), opts(Durability::Never), clock.clone()).unwrap();
    let follower =
        Bitcask::open_replica(fd.path(), opts(Durability::Never), clock.clone()).unwrap();
    leader.set_epoch(1).unwrap();
    for i in 0..50 {
        leader.write_at(b"n", WriteOp::IncrBy(i), 1).unwrap();
        leader
            .write_at(b"s", WriteOp::Append(b(&i.to_string())), 1)
            .unwrap();
    }
    let w = leader.write_at(b"n", WriteOp::IncrBy(0), 1).unwrap();
    assert_eq!(w.number, 1225);
    let mut raw = Vec::new();
    for r in leader.read_log(0, usize::MAX).unwrap() {
        raw.extend_from_slice(&r.raw);
    }
    assert_eq!(follower.append_replicated(&raw).unwrap(), 101);
    let end = follower.next_offset();
    follower.commit(end).unwrap();
    leader.commit_at(end, 1).unwrap();
    let digits: String = (0..50).map(|i| i.to_string()).collect();
    for e in [&leader, &follower] {
        assert_eq!(get(e, "n").as_deref(), Some("1225"));
        assert_eq!(get(e, "s").as_deref(), Some(digits.as_str()));
    }
}

/// The in-memory reference engine answers every op as Bitcask does.
#[test]
fn memory_engine_answers_as_bitcask() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let disk = open(dir.path(), &clock, Durability::Never);
    let mem = Memory::new(clock.clone(), opts(Durability::Never).limits);
    let xx = ExpireFlags {
        xx: true,
        ..ExpireFlags::default()
    };
    let ops = [
        ("a", WriteOp::IncrBy(3)),
        ("a", WriteOp::Append(b("0"))),
        ("a", WriteOp::IncrBy(-1)),
        ("a", WriteOp::ExpireIf(T0 + 50, xx)),
        ("a", WriteOp::Expire(T0 + 50)),
        ("a", WriteOp::GetEx(ExpiryChange::Keep)),
        ("a", WriteOp::Persist),
        ("a", WriteOp::GetEx(ExpiryChange::At(T0 + 10))),
        ("a", WriteOp::Append(b("!"))),
        ("b", WriteOp::GetDel),
        ("b", WriteOp::Append(b("x"))),
        ("b", WriteOp::GetDel),
    ];
    for (k, op) in ops {
        let d = disk
            .write(k.as_bytes(), op.clone())
            .map(|w| (w.done, w.old, w.number));
        let m = mem
            .write(k.as_bytes(), op.clone())
            .map(|w| (w.done, w.old, w.number));
        assert_eq!(
            d.as_ref().map_err(ToString::to_string),
            m.as_ref().map_err(ToString::to_string),
            "{op:?}"
        );
        assert_eq!(get(&disk, k), get(&mem, k), "{op:?}");
        assert_eq!(
            disk.expiry(k.as_bytes()).unwrap(),
            mem.expiry(k.as_bytes()).unwrap()
        );
    }
    assert_eq!(get(&disk, "a").as_deref(), Some("29!"));
    clock.advance(10);
    assert_eq!((get(&disk, "a"), get(&mem, "a")), (None, None));
    assert_eq!(disk.live_keys().unwrap(), mem.live_keys().unwrap());
}
