//! What a group commit under `fsync: always` costs the node's commit
//! workers (src/storage/bitcask/flush.rs, `Inner::call_leader`; workers.rs):
//! one commit job per batch, no worker woken for nothing, and a worker that
//! ends a batch with the next one waiting leads it without waking another.
//! The fsync is held by a failpoint (`pause`) until the next batch has formed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{
    Bitcask, CommitCounts, Durability, Engine, ManualClock, Options, SetOptions, Submitted, WriteOp,
};
use fail::FailScenario;
use tempfile::TempDir;

use crate::GATE;

const T0: u64 = 1_767_225_600_000;

/// Polls `cond` every millisecond for up to 5 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The commit counters since `before`.
fn since(now: CommitCounts, before: CommitCounts) -> (u64, u64, u64) {
    (
        now.jobs - before.jobs,
        now.idle - before.idle,
        now.wakes - before.wakes,
    )
}

/// 64 writes submitted while the first one's fsync is held up: two group
/// commits (k0, then the other 63), each led by one commit job; the 63
/// submitters wake no commit worker (a flush runs, and its end queues the
/// next job), and the worker that ends the first batch leads the second
/// itself. Before, each of those submits queued a job that one of the
/// idle workers was woken for and found the batch flushing: 4 commit
/// workers, so up to 63 wake-ups for nothing. Answers keep their offsets.
#[test]
fn a_batch_costs_one_commit_job_and_no_wakeup_for_nothing() {
    let _gate = GATE.lock();
    let scenario = FailScenario::setup();
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut o = Options {
        fsync: Durability::Always,
        // One segment for all of it: a roll would add an fsync of its own.
        segment_bytes: 1 << 20,
        ..Options::default()
    };
    o.limits.max_value_bytes = 200;
    o.background.commit_threads = 4;
    let o = o.with_shared_workers().unwrap();
    let e = Bitcask::open_with_clock(dir.path(), o, clock).unwrap();
    let workers = e.workers().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let set = |k: &str| WriteOp::Set(Bytes::from(format!("v-{k}")), SetOptions::default());
    let before = workers.commit_counts();
    let fsyncs = e.status().unwrap().fsyncs;
    // Held until every write is submitted (a fixed delay could run out on
    // a loaded machine and split the writes into more batches).
    fail::cfg("bitcask::fsync", "pause").unwrap();
    let mut queued = Vec::new();
    for i in 0..64 {
        let k = format!("k{i}");
        match e.submit(k.as_bytes(), &set(&k)).unwrap() {
            Submitted::Queued(c) => queued.push(c),
            other => panic!("set {k}: {other:?}"),
        }
        if i == 0 {
            wait_until("k0's fsync", || e.status().unwrap().fsyncs == fsyncs + 1);
        }
    }
    // Time for a worker woken for nothing to run its job.
    std::thread::sleep(Duration::from_millis(50));
    fail::remove("bitcask::fsync");
    for (i, c) in queued.into_iter().enumerate() {
        let w = rt.block_on(c.wait()).unwrap();
        assert_eq!((w.done, w.until), (true, i as u64 + 1), "k{i}");
    }
    // A worker counts its job after the job returns, which is after it has
    // answered the waiters: the second job may not be counted yet.
    wait_until("the second commit job to be counted", || {
        workers.commit_counts().jobs - before.jobs >= 2
    });
    // Time for a third job, or one that found nothing, to be counted.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        e.status().unwrap().fsyncs - fsyncs,
        2,
        "k0, then the other 63"
    );
    assert_eq!(
        since(workers.commit_counts(), before),
        (2, 0, 1),
        "(commit jobs, jobs that found nothing, wake-ups): one job per batch, \
         one wake-up (k0's submit)"
    );
    for i in 0..64 {
        let k = format!("k{i}");
        assert_eq!(
            e.get(k.as_bytes()).unwrap(),
            Some(Bytes::from(format!("v-{k}")))
        );
    }
    drop(e);
    scenario.teardown();
}
