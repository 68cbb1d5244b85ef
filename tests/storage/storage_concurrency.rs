//! Concurrency: many threads writing and reading the same and different
//! keys; values never go backwards for a reader, every write is there at the
//! end, and group commit really batches (fsyncs counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use caskade::storage::{Bitcask, Condition, Durability, Engine, Options, SetOptions};
use tempfile::TempDir;

const WRITERS: usize = 8;
const PER_WRITER: u64 = 1500;

fn opts(fsync: Durability) -> Options {
    let mut o = Options {
        fsync,
        segment_bytes: 256 << 10,
        cache_bytes: 1 << 20,
        ..Options::default()
    };
    o.limits.max_value_bytes = 1024;
    o.merge.dead_ratio = 0.0;
    o
}

#[test]
fn writers_and_readers_agree_and_group_commit_batches() {
    let dir = TempDir::new().unwrap();
    let e = Arc::new(Bitcask::open(dir.path(), opts(Durability::Always)).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    // Readers: each writer's own key only ever grows.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (e, done) = (e.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = [0u64; WRITERS];
                let mut reads = 0u64;
                while !done.load(Ordering::Relaxed) {
                    for (w, seen) in last.iter_mut().enumerate() {
                        if let Some(v) = e.get(format!("own{w}").as_bytes()).unwrap() {
                            let n: u64 = std::str::from_utf8(&v).unwrap().parse().unwrap();
                            assert!(n >= *seen, "own{w} went back from {seen} to {n}");
                            *seen = n;
                        }
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut created = 0;
                for i in 1..=PER_WRITER {
                    e.set(
                        format!("own{w}").as_bytes(),
                        Bytes::from(i.to_string()),
                        SetOptions::default(),
                    )
                    .unwrap();
                    e.set(
                        format!("shared{}", i % 16).as_bytes(),
                        Bytes::from(format!("{w}:{i}")),
                        SetOptions::default(),
                    )
                    .unwrap();
                    // Exactly one writer wins each create-if-absent.
                    let nx = SetOptions {
                        condition: Condition::IfAbsent,
                        ..SetOptions::default()
                    };
                    if e.set(
                        format!("once{i}").as_bytes(),
                        Bytes::from(w.to_string()),
                        nx,
                    )
                    .unwrap()
                    {
                        created += 1;
                    }
                }
                created
            })
        })
        .collect();
    let created: u64 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(
        created, PER_WRITER,
        "each create-if-absent won exactly once"
    );
    for w in 0..WRITERS {
        assert_eq!(
            e.get(format!("own{w}").as_bytes()).unwrap(),
            Some(Bytes::from(PER_WRITER.to_string()))
        );
    }
    let st = e.status().unwrap();
    let records = WRITERS as u64 * PER_WRITER * 2 + PER_WRITER;
    assert_eq!(st.records_written, records);
    assert_eq!(st.next_offset, records);
    let per_fsync = records as f64 / st.fsyncs as f64;
    eprintln!(
        "group commit: {records} records, {} fsyncs, {per_fsync:.1} records per fsync",
        st.fsyncs
    );
    assert!(
        per_fsync >= 2.0,
        "{WRITERS} writers under fsync: always shared only {per_fsync:.2} records per fsync"
    );
    drop(e);
    let e = Bitcask::open(dir.path(), opts(Durability::Always)).unwrap();
    assert_eq!(e.status().unwrap().keys, WRITERS as u64 + 16 + PER_WRITER);
}

#[test]
fn merge_runs_while_writers_and_readers_work() {
    let dir = TempDir::new().unwrap();
    let mut o = opts(Durability::Never);
    o.segment_bytes = 16 << 10;
    o.merge.bytes_per_sec = 0;
    let e = Arc::new(Bitcask::open(dir.path(), o.clone()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let merger = {
        let (e, stop) = (e.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut merges = 0;
            while !stop.load(Ordering::Relaxed) {
                e.merge().unwrap();
                merges += 1;
            }
            merges
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 1..=3000u64 {
                    let key = format!("w{w}-k{}", i % 50);
                    e.set(
                        key.as_bytes(),
                        Bytes::from(i.to_string()),
                        SetOptions::default(),
                    )
                    .unwrap();
                    if i % 7 == 0 {
                        e.delete(format!("w{w}-k{}", (i + 1) % 50).as_bytes())
                            .unwrap();
                    }
                    let got = e.get(key.as_bytes()).unwrap();
                    assert_eq!(
                        got,
                        Some(Bytes::from(i.to_string())),
                        "read own write {key}"
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(merger.join().unwrap() > 0);
    let expected = snapshot(&e);
    assert!(!expected.is_empty());
    drop(e);
    let e = Bitcask::open(dir.path(), o).unwrap();
    let after = snapshot(&e);
    assert_eq!(after, expected, "state after reopen equals state before");
}

/// Every live key and its value, sorted.
fn snapshot(e: &Bitcask) -> Vec<(Bytes, Bytes)> {
    let mut v: Vec<_> = e
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| {
            let v = e.get(&k).unwrap().unwrap();
            (k, v)
        })
        .collect();
    v.sort();
    v
}
