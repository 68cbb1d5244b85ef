//! Node-level tests of the Redis string operations (`src/node/ops.rs`) on a
//! standalone node: exact answers with a manual clock, validation, MSET /
//! MGET across partitions, DBSIZE, and concurrent INCR/APPEND through the
//! async group-commit path (`fsync: always`).

use std::sync::Arc;

use bytes::Bytes;
use caskade::Error;
use caskade::config::Config;
use caskade::node::{Acks, Consistency, ExpireTime, GetExpiry, Node, SetOutcome, SetWith};
use caskade::storage::{Condition, Durability, ExpireFlags, Expiry, ManualClock, Ttl};

const T0: u64 = 1_767_225_600_000;
const L: Consistency = Consistency::Leader;
const A: Acks = Acks::All;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn node(dir: &std::path::Path, clock: Arc<ManualClock>) -> Node {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.storage.fsync = Durability::Always;
    Node::open_standalone(&config, "127.0.0.1:7379".into(), clock).unwrap()
}

fn plain() -> SetWith {
    SetWith {
        expire: None,
        keep_ttl: false,
        condition: Condition::Always,
        get: false,
        acks: A,
    }
}

#[tokio::test]
async fn set_options_getex_expire_flags_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let n = node(dir.path(), clock.clone());
    // SET k v EX 10 GET on an absent key.
    let r = n
        .set_with(
            b("k"),
            b("v1"),
            SetWith {
                expire: Some(ExpireTime::In(10_000)),
                get: true,
                ..plain()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        SetOutcome {
            written: true,
            old: None
        }
    );
    assert_eq!(
        n.expire_time(b("k"), L).await.unwrap(),
        Expiry::At(T0 + 10_000)
    );
    // SET k v2 KEEPTTL GET.
    let r = n
        .set_with(
            b("k"),
            b("v2"),
            SetWith {
                keep_ttl: true,
                get: true,
                ..plain()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.old, Some(b("v1")));
    assert_eq!(n.ttl(b("k"), L).await.unwrap(), Ttl::ExpiresInMs(10_000));
    // SET NX GET on an existing key: not written, old value answered.
    let r = n
        .set_with(
            b("k"),
            b("v3"),
            SetWith {
                condition: Condition::IfAbsent,
                get: true,
                ..plain()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.written, r.old), (false, Some(b("v2"))));
    // A plain SET drops the TTL; SET with PXAT in the past deletes.
    n.set_with(b("k"), b("v4"), plain()).await.unwrap();
    assert_eq!(n.expire_time(b("k"), L).await.unwrap(), Expiry::Persistent);
    let past = SetWith {
        expire: Some(ExpireTime::At(T0 as i64 - 1)),
        ..plain()
    };
    assert!(n.set_with(b("k"), b("v5"), past).await.unwrap().written);
    assert_eq!(n.get(b("k"), L).await.unwrap(), None);
    assert_eq!(n.expire_time(b("k"), L).await.unwrap(), Expiry::Missing);
    // Refusals, with Redis' words.
    let err = |r: caskade::Result<SetOutcome>| r.unwrap_err().to_string();
    let both = SetWith {
        keep_ttl: true,
        expire: Some(ExpireTime::In(5)),
        ..plain()
    };
    assert_eq!(err(n.set_with(b("k"), b("v"), both).await), "syntax error");
    let zero = SetWith {
        expire: Some(ExpireTime::In(0)),
        ..plain()
    };
    assert_eq!(
        err(n.set_with(b("k"), b("v"), zero).await),
        "invalid expire time in 'set' command"
    );
    // EXPIRE with flags.
    n.set_with(b("e"), b("1"), plain()).await.unwrap();
    let f = |nx, xx, gt, lt| ExpireFlags { nx, xx, gt, lt };
    let ex = |t, fl| n.expire_with(b("e"), ExpireTime::In(t), fl, A);
    assert!(!ex(5_000, f(false, true, false, false)).await.unwrap());
    assert!(!ex(5_000, f(false, false, true, false)).await.unwrap());
    assert!(ex(5_000, f(false, false, false, true)).await.unwrap());
    assert!(!ex(6_000, f(true, false, false, false)).await.unwrap());
    assert!(ex(6_000, f(false, false, true, false)).await.unwrap());
    assert_eq!(
        n.expire_time(b("e"), L).await.unwrap(),
        Expiry::At(T0 + 6_000)
    );
    assert_eq!(
        ex(1, f(true, true, false, false))
            .await
            .unwrap_err()
            .to_string(),
        "NX and XX, GT or LT options at the same time are not compatible"
    );
    let at = n.expire_with(
        b("e"),
        ExpireTime::At(T0 as i64 + 8_000),
        ExpireFlags::default(),
        A,
    );
    assert!(at.await.unwrap());
    assert_eq!(
        n.expire_time(b("e"), L).await.unwrap(),
        Expiry::At(T0 + 8_000)
    );
    // PERSIST, GETEX.
    assert!(n.persist(b("e"), A).await.unwrap());
    assert!(!n.persist(b("e"), A).await.unwrap());
    assert!(!n.persist(b("missing"), A).await.unwrap());
    let got = n
        .getex(b("e"), GetExpiry::Set(ExpireTime::In(3_000)), A)
        .await
        .unwrap();
    assert_eq!(got, Some(b("1")));
    assert_eq!(n.ttl(b("e"), L).await.unwrap(), Ttl::ExpiresInMs(3_000));
    assert_eq!(
        n.getex(b("e"), GetExpiry::Persist, A).await.unwrap(),
        Some(b("1"))
    );
    assert_eq!(n.ttl(b("e"), L).await.unwrap(), Ttl::Persistent);
    assert_eq!(n.getex(b("nope"), GetExpiry::Keep, A).await.unwrap(), None);
    // A negative relative EXPIRE deletes.
    assert!(
        n.expire_with(b("e"), ExpireTime::In(-1), ExpireFlags::default(), A)
            .await
            .unwrap()
    );
    assert_eq!(n.get(b("e"), L).await.unwrap(), None);
    // GETDEL, STRLEN.
    n.set_with(b("s"), b("hello"), plain()).await.unwrap();
    assert_eq!(n.strlen(b("s"), L).await.unwrap(), 5);
    assert_eq!(n.strlen(b("none"), L).await.unwrap(), 0);
    assert_eq!(n.getdel(b("s"), A).await.unwrap(), Some(b("hello")));
    assert_eq!(n.getdel(b("s"), A).await.unwrap(), None);
}

#[tokio::test]
async fn incr_append_errors_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let n = node(dir.path(), clock.clone());
    assert_eq!(n.incr_by(b("c"), 1, A).await.unwrap(), 1);
    assert_eq!(n.incr_by(b("c"), -10, A).await.unwrap(), -9);
    let ttl = SetWith {
        expire: Some(ExpireTime::In(1_000)),
        ..plain()
    };
    n.set_with(b("c"), b("100"), ttl).await.unwrap();
    assert_eq!(n.incr_by(b("c"), 5, A).await.unwrap(), 105);
    assert_eq!(n.ttl(b("c"), L).await.unwrap(), Ttl::ExpiresInMs(1_000));
    assert_eq!(n.append(b("c"), b("x"), A).await.unwrap(), 4);
    assert_eq!(n.ttl(b("c"), L).await.unwrap(), Ttl::ExpiresInMs(1_000));
    assert_eq!(
        n.incr_by(b("c"), 1, A).await.unwrap_err(),
        Error::NotInteger
    );
    assert_eq!(n.get(b("c"), L).await.unwrap(), Some(b("105x")));
    n.set_with(b("m"), b("-9223372036854775808"), plain())
        .await
        .unwrap();
    assert_eq!(n.incr_by(b("m"), -1, A).await.unwrap_err(), Error::Overflow);
    assert_eq!(
        Error::NotInteger.to_string(),
        "value is not an integer or out of range"
    );
    assert_eq!(Error::Overflow.reason(), "OVERFLOW");
    clock.advance(1_000);
    assert_eq!(n.append(b("c"), b("new"), A).await.unwrap(), 3);
    assert_eq!(n.ttl(b("c"), L).await.unwrap(), Ttl::Persistent);
    // The value limit holds for the result of an APPEND.
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let err = n.append(b("c"), big, A).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(n.strlen(b("c"), L).await.unwrap(), 3);
}

#[tokio::test]
async fn mset_mget_dbsize_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(ManualClock::new(T0)));
    let pairs: Vec<(Bytes, Bytes)> = (0..40)
        .map(|i| (b(&format!("key{i}")), b(&format!("v{i}"))))
        .chain([(b("key0"), b("last"))])
        .collect();
    n.mset(pairs, A).await.unwrap();
    let keys: Vec<Bytes> = [0, 1, 39, 99]
        .iter()
        .map(|i| b(&format!("key{i}")))
        .collect();
    assert_eq!(
        n.mget(keys, L).await.unwrap(),
        vec![Some(b("last")), Some(b("v1")), Some(b("v39")), None]
    );
    assert_eq!(n.dbsize().await.unwrap(), 40);
    n.del(vec![b("key1")], A).await.unwrap();
    assert_eq!(n.dbsize().await.unwrap(), 39);
    // A bad key fails the whole MSET before anything is written.
    let bad = vec![(b("fresh"), b("1")), (Bytes::new(), b("2"))];
    assert_eq!(n.mset(bad, A).await.unwrap_err().to_string(), "empty key");
    assert_eq!(n.get(b("fresh"), L).await.unwrap(), None);
}

/// 8 tasks x 1,000 INCR through the node on a multi-threaded runtime
/// (the async group-commit path): exactly 8,000; and 8 tasks APPENDing.
#[test]
fn concurrent_incr_and_append_through_the_node() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = Arc::new(node(dir.path(), Arc::new(ManualClock::new(T0))));
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let n = n.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        n.incr_by(b("ctr"), 1, A).await.unwrap();
                        n.append(b("log"), Bytes::from(vec![b'a' + t]), A)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(n.get(b("ctr"), L).await.unwrap(), Some(b("8000")));
        let log = n.get(b("log"), L).await.unwrap().unwrap();
        assert_eq!(log.len(), 8000);
        for t in 0..8u8 {
            assert_eq!(log.iter().filter(|&&c| c == b'a' + t).count(), 1000);
        }
        assert_eq!(n.incr_by(b("ctr"), 0, A).await.unwrap(), 8000);
    });
}
