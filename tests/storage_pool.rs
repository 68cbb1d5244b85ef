//! The node-wide background pool (`storage::Workers`): a fixed number of
//! threads whatever the number of engines, group commit still batching on
//! it, close answering writes in flight, the per-node merge budget, and
//! open file descriptors that do not grow with sealed segments.
//!
//! Thread and fd counts are process-wide, so every test here holds `SERIAL`
//! (the other tests' engines, and their private pools, are gone by then).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{
    BackgroundOptions, Bitcask, Durability, Engine, Options, SetOptions, Submitted, WriteOp,
};
use parking_lot::Mutex;
use tempfile::TempDir;

/// Serialises the tests of this file (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// Options with small segments, no automatic merge, and a pool of two
/// commit threads and one merge thread.
fn opts(fsync: Durability) -> Options {
    let mut o = Options {
        fsync,
        segment_bytes: 64 << 10,
        cache_bytes: 1 << 20,
        background: BackgroundOptions {
            commit_threads: 2,
            merge_threads: 1,
        },
        ..Options::default()
    };
    o.merge.dead_ratio = 0.0;
    o.limits.max_value_bytes = 4096;
    o
}

/// Entries of a /proc directory.
fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// OS threads of this process whose name starts with `caskade-`.
fn caskade_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("caskade-"))
        .count()
}

/// [`caskade_threads`] once it reaches `n` (a new thread names itself
/// after it starts), or what it is after 5 s.
fn settled_caskade_threads(n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while caskade_threads() != n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    caskade_threads()
}

fn set(v: &[u8]) -> WriteOp {
    WriteOp::Set(Bytes::copy_from_slice(v), SetOptions::default())
}

fn open_many(root: &Path, n: usize, o: &Options) -> Vec<Arc<Bitcask>> {
    (0..n)
        .map(|i| Arc::new(Bitcask::open(root.join(format!("p{i}")), o.clone()).unwrap()))
        .collect()
}

#[test]
fn two_hundred_engines_share_a_fixed_set_of_threads() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    let tasks_before = entries("/proc/self/task");
    assert_eq!(caskade_threads(), 0, "no engine is open yet");
    let o = opts(Durability::EveryMs(20)).with_shared_workers().unwrap();
    let pool = o.shared_workers.clone().unwrap();
    // 2 commit workers, 1 merge thread, the janitor and the timer.
    assert_eq!(pool.threads(), 5);
    let engines = open_many(root.path(), 200, &o);
    for (i, e) in engines.iter().enumerate() {
        e.set(b"k", Bytes::from(i.to_string()), SetOptions::default())
            .unwrap();
    }
    // The periodic fsync (every 20 ms) runs for every engine on the pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    for e in &engines {
        while e.status().unwrap().fsyncs == 0 {
            assert!(
                Instant::now() < deadline,
                "{} never fsynced",
                e.dir().display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(
        settled_caskade_threads(5),
        5,
        "threads do not grow with engines"
    );
    // (Threads of earlier tests may still be exiting: at most.)
    assert!(entries("/proc/self/task") <= tasks_before + 5);
    // Engines close and open while the pool runs.
    let (closed, open) = engines.split_at(100);
    for e in closed {
        e.close().unwrap();
    }
    let more = open_many(&root.path().join("more"), 100, &o);
    for e in open.iter().chain(&more) {
        e.set(b"k2", Bytes::from_static(b"v"), SetOptions::default())
            .unwrap();
    }
    assert_eq!(caskade_threads(), 5);
    drop((engines, more, o));
    // The last handle (the test's) stops the threads.
    drop(pool);
    assert_eq!(caskade_threads(), 0);
    assert!(entries("/proc/self/task") <= tasks_before);
}

#[test]
fn an_engine_opened_alone_has_a_private_pool_of_four_threads() {
    let _serial = SERIAL.lock();
    let dir = TempDir::new().unwrap();
    let e = Bitcask::open(dir.path(), Options::default()).unwrap();
    assert_eq!(e.workers().threads(), 4);
    assert_eq!(settled_caskade_threads(4), 4);
    drop(e);
    assert_eq!(caskade_threads(), 0);
    // The directory lock is free at once: no pool thread holds the engine.
    let e = Bitcask::open(dir.path(), Options::default()).unwrap();
    drop(e);
}

#[test]
fn group_commit_batches_submitted_writes_on_the_shared_pool() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    let o = opts(Durability::Always).with_shared_workers().unwrap();
    let engines = open_many(root.path(), 20, &o);
    const PER_ENGINE: u32 = 200;
    let mut queued = Vec::new();
    for e in &engines {
        for i in 0..PER_ENGINE {
            match e.submit(&i.to_be_bytes(), &set(b"value")).unwrap() {
                Submitted::Queued(c) => queued.push(c),
                other => panic!("{other:?}"),
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for c in queued {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), c.wait()).await })
            .expect("a submitted write was never answered")
            .unwrap();
    }
    let (mut records, mut fsyncs) = (0, 0);
    for e in &engines {
        let st = e.status().unwrap();
        assert_eq!(st.records_written, PER_ENGINE as u64);
        assert_eq!(st.keys, PER_ENGINE as u64);
        records += st.records_written;
        fsyncs += st.fsyncs;
    }
    let per_fsync = records as f64 / fsyncs as f64;
    eprintln!("{records} records, {fsyncs} fsyncs: {per_fsync:.1} records per fsync");
    assert!(
        per_fsync >= 2.0,
        "submitted writes shared only {per_fsync:.2} records per fsync"
    );
    // Acknowledged means fsynced: every record is there after a reopen.
    drop(engines);
    let again = open_many(root.path(), 20, &o);
    for e in &again {
        assert_eq!(e.status().unwrap().keys, PER_ENGINE as u64);
    }
}

#[test]
fn close_answers_writes_in_flight_and_never_hangs() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    // One commit worker, kept busy by other engines' commits.
    let mut o = opts(Durability::Always);
    o.background.commit_threads = 1;
    let o = o.with_shared_workers().unwrap();
    let engines = open_many(root.path(), 8, &o);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut completions = Vec::new();
    for (n, e) in engines.iter().enumerate() {
        for i in 0..300u32 {
            match e.submit(&i.to_be_bytes(), &set(b"v")) {
                Ok(Submitted::Queued(c)) => completions.push((n, rt.spawn(c.wait()))),
                other => panic!("{other:?}"),
            }
        }
    }
    // Blocking writers too, racing the close.
    let blocking: Vec<_> = engines
        .iter()
        .map(|e| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                for i in 0..100_000u32 {
                    match e.write(format!("b{i}").as_bytes(), set(b"v")) {
                        Ok(_) => ok += 1,
                        Err(caskade::storage::Error::Closed) => return ok,
                        Err(err) => panic!("{err}"),
                    }
                }
                ok
            })
        })
        .collect();
    let started = Instant::now();
    for e in &engines {
        e.close().unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let mut answered = vec![0u64; engines.len()];
    for (n, c) in completions {
        let r = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), c).await })
            .expect("a write queued before close was never answered")
            .unwrap();
        // Queued before close: close writes it.
        r.unwrap();
        answered[n] += 1;
    }
    let blocking_ok: Vec<u64> = blocking.into_iter().map(|t| t.join().unwrap()).collect();
    for e in &engines {
        let err = e.write(b"late", set(b"v")).unwrap_err();
        assert!(matches!(err, caskade::storage::Error::Closed), "{err}");
    }
    drop(engines);
    // Every acknowledged write is there after a reopen.
    let again = open_many(root.path(), 8, &o);
    for (n, e) in again.iter().enumerate() {
        assert_eq!(answered[n], 300);
        assert_eq!(e.status().unwrap().keys, 300 + blocking_ok[n]);
    }
}

/// Writes `n` KiB of values twice over (half the bytes dead), in sealed
/// segments of 64 KiB.
fn fill(e: &Bitcask, kib: u32) {
    for round in 0..2u8 {
        for i in 0..kib / 2 {
            let v = vec![round; 1000];
            e.set(&i.to_be_bytes(), v.into(), SetOptions::default())
                .unwrap();
        }
    }
}

#[test]
fn merges_of_two_engines_share_the_node_merge_budget() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    const RATE: u64 = 4 << 20;
    let mut o = opts(Durability::Never);
    o.merge.bytes_per_sec = RATE;
    let o = o.with_shared_workers().unwrap();
    let engines = open_many(root.path(), 2, &o);
    for e in &engines {
        fill(e, 4 << 10);
    }
    let started = Instant::now();
    let merges: Vec<_> = engines
        .iter()
        .map(|e| {
            let e = e.clone();
            std::thread::spawn(move || e.merge().unwrap())
        })
        .collect();
    let reports: Vec<_> = merges.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let bytes: u64 = reports.iter().map(|r| r.bytes_before).sum();
    assert!(bytes > 6 << 20, "{bytes}");
    // Each merge may leave up to 64 KiB unpaced at its end, and the bucket
    // allows a 10 ms burst.
    let floor = (bytes - (128 << 10)) as f64 / RATE as f64 - 0.010;
    eprintln!(
        "merged {bytes} bytes in {elapsed:.2} s: {:.2} MiB/s (budget 4)",
        bytes as f64 / elapsed / (1 << 20) as f64
    );
    assert!(
        elapsed >= floor,
        "two merges ran at {:.2} MiB/s together, over the node's 4 MiB/s",
        bytes as f64 / elapsed / (1 << 20) as f64
    );
    assert!(elapsed < floor * 3.0 + 2.0, "merges far slower: {elapsed}");
    for e in &engines {
        assert_eq!(e.status().unwrap().keys, 2 << 10);
    }
}

#[test]
fn open_fds_do_not_grow_with_sealed_segments() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    let o = opts(Durability::Never).with_shared_workers().unwrap();
    let fds_before = entries("/proc/self/fd");
    let e = Bitcask::open(root.path(), o.clone()).unwrap();
    let fds_open = entries("/proc/self/fd");
    fill(&e, 8 << 10);
    let segments = e.status().unwrap().segments;
    assert!(segments >= 100, "{segments}");
    // Past the janitor's hint files (it opens each briefly).
    e.write_missing_hints().unwrap();
    // The LOCK file and the active segment, as with one segment.
    assert_eq!(entries("/proc/self/fd"), fds_open);
    assert_eq!(fds_open, fds_before + 2);
    drop(e);
    assert_eq!(entries("/proc/self/fd"), fds_before);
    // Recovery maps the sealed segments and closes their files too.
    let e = Bitcask::open(root.path(), o.clone()).unwrap();
    assert_eq!(e.status().unwrap().segments, segments);
    e.write_missing_hints().unwrap();
    assert_eq!(entries("/proc/self/fd"), fds_before + 2);
    assert_eq!(e.status().unwrap().keys, 4 << 10);
    // Reads go through the maps; a merge opens, maps and closes outputs.
    assert_eq!(
        e.get(&7u32.to_be_bytes()).unwrap(),
        Some(Bytes::from(vec![1u8; 1000]))
    );
    e.merge().unwrap();
    e.write_missing_hints().unwrap();
    assert_eq!(entries("/proc/self/fd"), fds_before + 2);
    assert_eq!(
        e.get(&7u32.to_be_bytes()).unwrap(),
        Some(Bytes::from(vec![1u8; 1000]))
    );
}

/// The figure in the report: threads and fds of one process with 1,000
/// engines. Not a test (timing- and machine-dependent); run by hand with
/// `cargo test --release --test storage_pool -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_a_thousand_engines() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    let (t0, f0) = (entries("/proc/self/task"), entries("/proc/self/fd"));
    let mut o = Options {
        segment_bytes: 4096,
        ..Options::default()
    };
    o.limits.max_value_bytes = 2048;
    let o = o.with_shared_workers().unwrap().with_shared_cache();
    let mut engines = Vec::new();
    for i in 0..1000 {
        let e = Bitcask::open(root.path().join(format!("p{i}")), o.clone()).unwrap();
        for k in 0..20u32 {
            e.set(
                &k.to_be_bytes(),
                vec![7u8; 1000].into(),
                SetOptions::default(),
            )
            .unwrap();
        }
        engines.push(e);
    }
    let segs: u64 = engines.iter().map(|e| e.status().unwrap().segments).sum();
    println!(
        "1000 engines, {segs} segments: threads {t0} -> {}, open fds {f0} -> {}",
        entries("/proc/self/task"),
        entries("/proc/self/fd")
    );
    drop(engines);
    let engines: Vec<_> = (0..1000)
        .map(|i| Bitcask::open(root.path().join(format!("p{i}")), o.clone()).unwrap())
        .collect();
    println!(
        "after reopen: threads {}, open fds {}",
        entries("/proc/self/task"),
        entries("/proc/self/fd")
    );
    drop(engines);
}

/// Close writes the submitted records itself when no commit worker is free:
/// the only one is held inside another engine's group commit (paused after
/// a segment roll), so nothing else would lead them.
#[cfg(feature = "failpoints")]
#[test]
fn close_writes_queued_records_while_every_commit_worker_is_busy() {
    use parking_lot::Condvar;
    /// (worker arrived at the pause, released).
    static GATE: (Mutex<(bool, bool)>, Condvar) = (Mutex::new((false, false)), Condvar::new());
    let _serial = SERIAL.lock();
    *GATE.0.lock() = (false, false);
    let root = TempDir::new().unwrap();
    let mut o = opts(Durability::Always);
    o.background.commit_threads = 1;
    let o = o.with_shared_workers().unwrap();
    let a = Bitcask::open(root.path().join("a"), o.clone()).unwrap();
    let b = Bitcask::open(root.path().join("b"), o.clone()).unwrap();
    fail::cfg_callback("bitcask::after_roll", || {
        let mut g = GATE.0.lock();
        g.0 = true;
        GATE.1.notify_all();
        while !g.1 {
            GATE.1.wait(&mut g);
        }
    })
    .unwrap();
    // Engine a's submitted writes roll a segment on the commit worker.
    let mut held = Vec::new();
    for i in 0..200u32 {
        match a.submit(&i.to_be_bytes(), &set(&[1u8; 1000])).unwrap() {
            Submitted::Queued(c) => held.push(c),
            other => panic!("{other:?}"),
        }
        if GATE.0.lock().0 {
            break;
        }
    }
    {
        let mut g = GATE.0.lock();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !g.0 {
            assert!(
                !GATE.1.wait_until(&mut g, deadline).timed_out(),
                "the commit worker never rolled a segment"
            );
        }
    }
    // The worker is held: b's records wait in its queue.
    let queued: Vec<_> = (0..50u32)
        .map(|i| match b.submit(&i.to_be_bytes(), &set(b"v")).unwrap() {
            Submitted::Queued(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let closer = std::thread::spawn(move || {
        tx.send(b.close()).unwrap();
        b
    });
    let closed = rx.recv_timeout(Duration::from_secs(10));
    // Release the worker before any assertion can fail.
    fail::remove("bitcask::after_roll");
    {
        let mut g = GATE.0.lock();
        g.1 = true;
        GATE.1.notify_all();
    }
    closed.expect("close hung").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (i, c) in queued.into_iter().enumerate() {
        let w = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.wait()).await })
            .expect("a write queued before close was never answered")
            .unwrap();
        assert_eq!(w.until, i as u64 + 1);
    }
    for c in held {
        rt.block_on(c.wait()).unwrap();
    }
    let b = closer.join().unwrap();
    drop(b);
    let b = Bitcask::open(root.path().join("b"), o.clone()).unwrap();
    assert_eq!(b.status().unwrap().keys, 50);
}

#[test]
fn close_stops_a_merge_in_progress_before_its_commit() {
    let _serial = SERIAL.lock();
    let root = TempDir::new().unwrap();
    let dir = root.path().join("p");
    let mut o = opts(Durability::Never);
    // About 16 s for the 4 MiB below: close must not wait for it.
    o.merge.bytes_per_sec = 256 << 10;
    let o = o.with_shared_workers().unwrap();
    let e = Arc::new(Bitcask::open(&dir, o.clone()).unwrap());
    fill(&e, 4 << 10);
    let merging = {
        let e = e.clone();
        std::thread::spawn(move || e.merge())
    };
    std::thread::sleep(Duration::from_millis(300));
    e.close().unwrap();
    let merged = merging.join().unwrap();
    assert!(
        matches!(merged, Err(caskade::storage::Error::Closed)),
        "the merge went on after close: {merged:?}"
    );
    assert!(
        !dir.join("merge").exists(),
        "an uncommitted merge is removed"
    );
    drop(e);
    let e = Bitcask::open(&dir, o).unwrap();
    assert_eq!(e.status().unwrap().keys, 2 << 10);
    assert_eq!(
        e.get(&7u32.to_be_bytes()).unwrap(),
        Some(Bytes::from(vec![1u8; 1000]))
    );
}
