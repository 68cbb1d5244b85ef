//! The background threads of a node's engines: one small, fixed pool per
//! node ([`Workers`]), not threads per engine, so a node that carries
//! thousands of partitions runs a handful of background threads.
//!
//! Roles, each a plain OS thread (all of the work is blocking disk I/O):
//! - *commit workers* (`storage.background.commit_threads`, default 2 to 4
//!   from the cores) lead the group commits of submitted writes (`always`)
//!   and run the periodic fsync and commit-point checkpoint (`every_ms`).
//!   They take engines from one ready queue; an engine is in it at most
//!   once per kind of job, and its batches are ordered by the writer's
//!   `flushing` flag whichever worker leads. A worker leads one batch per
//!   turn and queues the engine again if more records wait, so engines take
//!   turns, and a slow fsync of one engine holds one worker, not the node.
//!   When nothing else waits in the queue it wakes no other worker for
//!   that job: it takes it itself as it returns, so back-to-back batches
//!   cost no thread wake-up (`CommitCounts` counts jobs, jobs that found
//!   nothing to lead, and wake-ups);
//! - the *timer* decides when each engine's periodic work is due and queues
//!   it; it does no I/O, so a slow job never delays another engine's timer;
//! - the *janitor* runs each engine's periodic maintenance: expiry sweep,
//!   checkpoint of the commit point (not under `every_ms`), hint files, and
//!   the check whether a merge is due;
//! - *merge threads* (`storage.background.merge_threads`, default 1) run
//!   merges, so a merge blocks neither commits nor the janitor. Merges of all
//!   engines share one byte budget (`merge.bytes_per_sec`, per node).
//!
//! Invariants:
//! - a job runs only for an engine that is registered and not closed;
//!   [`Slot::close`] waits for the engine's running job, so once
//!   `Bitcask::close` returns nothing runs for it again and no pool thread
//!   holds it (its directory lock is released when the engine is dropped);
//! - the pool holds engines only weakly (`Weak<Inner>`), upgraded for the
//!   length of one job;
//! - dropping the last [`Workers`] handle stops and joins the threads; each
//!   engine holds a handle, so the pool outlives every engine using it;
//! - background work never writes a record (see `background.rs`).

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Inner;
use super::options::Options;
use crate::storage::error::IoContext;
use crate::storage::{Durability, Result};

/// Longest burst a merge may run ahead of the node's merge budget.
const BURST: Duration = Duration::from_millis(10);

/// The kinds of job, each queued at most once per engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Job {
    /// Lead a group commit of submitted records (commit workers).
    Commit = 0,
    /// The periodic fsync and checkpoint of `every_ms` (commit workers).
    Sync = 1,
    /// A janitor pass (janitor thread).
    Janitor = 2,
    /// A merge if one is due (merge threads).
    Merge = 3,
}

/// An engine's registration with the pool.
pub(super) struct Slot {
    /// The engine; upgraded for the length of one job.
    engine: Weak<Inner>,
    /// Closed flag, running jobs and queued kinds.
    state: Mutex<SlotState>,
    /// Signalled when the last running job of the engine ends.
    idle: Condvar,
}

/// See [`Slot::state`].
#[derive(Default)]
struct SlotState {
    /// The engine is closed: no job starts for it any more.
    closed: bool,
    /// Jobs of the engine running now.
    busy: usize,
    /// Which kinds of job are in a queue (indexed by [`Job`]).
    queued: [bool; 4],
    /// When the janitor last swept expired keys.
    last_sweep: Option<Instant>,
    /// When the janitor last checked whether to merge.
    last_merge_check: Option<Instant>,
}

impl Slot {
    /// Stops every job of the engine: none starts from now on, and this
    /// waits for the running ones. Idempotent.
    pub(super) fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        while s.busy > 0 {
            self.idle.wait(&mut s);
        }
    }

    /// When the janitor last swept and last checked for a merge, updated
    /// to now for the ones that are due (`sweep`, `merge` periods).
    /// Returns (sweep due, merge check due).
    pub(super) fn janitor_due(&self, sweep: Duration, merge: Duration) -> (bool, bool) {
        let now = Instant::now();
        let mut s = self.state.lock();
        let due = |last: &mut Option<Instant>, every: Duration| {
            let last = last.get_or_insert(now);
            let due = now.duration_since(*last) >= every;
            if due {
                *last = now;
            }
            due
        };
        let sweep_due = due(&mut s.last_sweep, sweep);
        let merge_due = due(&mut s.last_merge_check, merge);
        (sweep_due, merge_due)
    }
}

/// A queue of jobs and the threads that serve it.
#[derive(Default)]
struct Queue {
    /// Jobs in arrival order.
    jobs: Mutex<VecDeque<(Arc<Slot>, Job)>>,
    /// Signalled when a job arrives or the pool stops.
    ready: Condvar,
}

/// A periodic job of one engine, due at an instant.
struct Timed {
    /// When it is due.
    at: Instant,
    /// Tie breaker, so the heap never compares slots.
    seq: u64,
    /// The engine.
    slot: Arc<Slot>,
    /// [`Job::Sync`] or [`Job::Janitor`].
    job: Job,
    /// Its period.
    every: Duration,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A token bucket shared by the node's merges: bytes per second, with a
/// burst of [`BURST`].
struct Budget {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// When the bytes reserved so far are paid for.
    paid_until: Mutex<Option<Instant>>,
}

impl Budget {
    /// Takes `n` bytes from the budget, sleeping until they are paid for.
    fn take(&self, n: u64) {
        if self.rate == 0 || n == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        let wait = {
            let mut paid = self.paid_until.lock();
            let now = Instant::now();
            let floor = now.checked_sub(BURST).unwrap_or(now);
            let until = paid.map_or(floor, |p| p.max(floor)) + cost;
            *paid = Some(until);
            until.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// State the pool's threads share.
struct Shared {
    /// Commit and periodic-fsync jobs.
    commit: Queue,
    /// Janitor passes.
    janitor: Queue,
    /// Merges.
    merge: Queue,
    /// Periodic jobs by due time.
    timer: Mutex<BinaryHeap<Timed>>,
    /// Signalled when the timer's earliest entry may have changed.
    timer_changed: Condvar,
    /// Next [`Timed::seq`].
    seq: AtomicU64,
    /// Set when the pool stops.
    stopping: AtomicBool,
    /// The node's merge budget.
    budget: Budget,
    /// Commit jobs and wake-ups, counted.
    counts: Counts,
}

/// Who queues a job (see [`Shared::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waker {
    /// Any thread but one of the job's queue: a thread is woken for it.
    Other,
    /// A thread of the job's queue, which serves the queue next.
    Own,
}

/// Counters of the commit jobs, for tests and profiles (relaxed atomics).
#[derive(Default)]
struct Counts {
    /// Commit jobs run.
    jobs: AtomicU64,
    /// Commit jobs that found nothing to lead.
    idle: AtomicU64,
    /// Commit-queue wake-ups (`notify_one` for a commit job).
    wakes: AtomicU64,
}

/// What a node's commit workers did since the pool started
/// ([`Workers::commit_counts`]). A job is counted when it returns, which is
/// after the writers it committed have been answered: a writer that has its
/// answer may read a count without its job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Commit jobs run (each leads at most one group commit).
    pub jobs: u64,
    /// Commit jobs that found nothing to lead: a thread woken for nothing.
    pub idle: u64,
    /// Times a sleeping commit worker was signalled for a commit job.
    pub wakes: u64,
}

impl Shared {
    /// The queue that serves `job`.
    fn queue(&self, job: Job) -> &Queue {
        match job {
            Job::Commit | Job::Sync => &self.commit,
            Job::Janitor => &self.janitor,
            Job::Merge => &self.merge,
        }
    }

    /// Queues `job` for `slot` unless it is queued already or the engine
    /// is closed, and wakes a thread of its queue for it. `Own`: the caller
    /// is a thread of that queue, which takes the job itself when nothing
    /// else waits in the queue (then no thread is woken).
    fn schedule(&self, slot: &Arc<Slot>, job: Job, who: Waker) {
        {
            let mut s = slot.state.lock();
            if s.closed || s.queued[job as usize] {
                return;
            }
            s.queued[job as usize] = true;
        }
        let q = self.queue(job);
        let wake = {
            let mut jobs = q.jobs.lock();
            let wake = who == Waker::Other || !jobs.is_empty();
            jobs.push_back((slot.clone(), job));
            wake
        };
        if wake {
            if job == Job::Commit {
                self.counts.wakes.fetch_add(1, Ordering::Relaxed);
            }
            q.ready.notify_one();
        }
    }

    /// Serves `queue` until the pool stops.
    fn serve(&self, queue: &Queue) {
        loop {
            let (slot, job) = {
                let mut jobs = queue.jobs.lock();
                loop {
                    if self.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    if let Some(j) = jobs.pop_front() {
                        break j;
                    }
                    queue.ready.wait(&mut jobs);
                }
            };
            let engine = {
                let mut s = slot.state.lock();
                s.queued[job as usize] = false;
                if s.closed {
                    continue;
                }
                let Some(engine) = slot.engine.upgrade() else {
                    continue;
                };
                s.busy += 1;
                engine
            };
            let worked = engine.run_job(job);
            drop(engine);
            if job == Job::Commit {
                self.counts.jobs.fetch_add(1, Ordering::Relaxed);
                if !worked {
                    self.counts.idle.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut s = slot.state.lock();
            s.busy -= 1;
            if s.busy == 0 {
                slot.idle.notify_all();
            }
        }
    }

    /// The timer's loop: queues each periodic job when due, until the pool
    /// stops.
    fn run_timer(&self) {
        let mut heap = self.timer.lock();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            match heap.peek() {
                Some(t) if t.at <= now => {
                    let Some(mut t) = heap.pop() else { continue };
                    if t.slot.state.lock().closed {
                        continue; // dropped: the engine is gone
                    }
                    self.schedule(&t.slot, t.job, Waker::Other);
                    // Fixed rate; a job still queued is not queued twice.
                    t.at = (t.at + t.every).max(now);
                    heap.push(t);
                }
                Some(t) => {
                    let at = t.at;
                    self.timer_changed.wait_until(&mut heap, at);
                }
                None => self.timer_changed.wait(&mut heap),
            }
        }
    }

    /// Adds a periodic job, first due one period from now.
    fn add_timer(&self, slot: &Arc<Slot>, job: Job, every: Duration) {
        let t = Timed {
            at: Instant::now() + every,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            slot: slot.clone(),
            job,
            every,
        };
        self.timer.lock().push(t);
        self.timer_changed.notify_one();
    }
}

/// The node's background thread pool (see the module docs). Cheap to clone:
/// clones share the pool, and the last one dropped stops its threads.
/// Created once per node ([`Options::with_shared_workers`]); an engine
/// opened without one makes a private pool.
#[derive(Clone)]
pub struct Workers(Arc<Pool>);

/// The threads and their shared state; dropping it stops them.
struct Pool {
    /// What the threads share.
    shared: Arc<Shared>,
    /// The threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Number of threads the pool started.
    count: usize,
}

impl Workers {
    /// Starts a pool sized by `opts.background`, with a merge budget of
    /// `opts.merge.bytes_per_sec`.
    pub fn new(opts: &Options) -> Result<Workers> {
        Self::start(
            opts.background.commit_threads(),
            opts.background.merge_threads.max(1),
            opts.merge.bytes_per_sec,
        )
    }

    /// The private pool of an engine opened without a shared one: one
    /// thread of each role.
    pub(super) fn private(opts: &Options) -> Result<Workers> {
        Self::start(1, 1, opts.merge.bytes_per_sec)
    }

    /// Starts the threads.
    fn start(commit: usize, merge: usize, merge_rate: u64) -> Result<Workers> {
        let shared = Arc::new(Shared {
            commit: Queue::default(),
            janitor: Queue::default(),
            merge: Queue::default(),
            timer: Mutex::new(BinaryHeap::new()),
            timer_changed: Condvar::new(),
            seq: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            budget: Budget {
                rate: merge_rate,
                paid_until: Mutex::new(None),
            },
            counts: Counts::default(),
        });
        let pool = Pool {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            count: commit + merge + 2,
        };
        let spawn = |name: &str, f: Box<dyn FnOnce(&Shared) + Send>| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || f(&shared))
                .ctx(|| format!("start the {name} thread"))
        };
        // From here on, dropping `pool` (on an error) stops what started.
        let mut threads = pool.threads.lock();
        for _ in 0..commit {
            threads.push(spawn("caskade-commit", Box::new(|s| s.serve(&s.commit)))?);
        }
        for _ in 0..merge {
            threads.push(spawn("caskade-merge", Box::new(|s| s.serve(&s.merge)))?);
        }
        threads.push(spawn("caskade-janitor", Box::new(|s| s.serve(&s.janitor)))?);
        threads.push(spawn("caskade-timer", Box::new(|s| s.run_timer()))?);
        drop(threads);
        Ok(Workers(Arc::new(pool)))
    }

    /// Number of OS threads the pool runs.
    pub fn threads(&self) -> usize {
        self.0.count
    }

    /// Registers an engine: its periodic jobs start. Returns its slot.
    pub(super) fn register(&self, engine: Weak<Inner>, opts: &Options) -> Arc<Slot> {
        let now = Some(Instant::now());
        let slot = Arc::new(Slot {
            engine,
            state: Mutex::new(SlotState {
                last_sweep: now,
                last_merge_check: now,
                ..SlotState::default()
            }),
            idle: Condvar::new(),
        });
        let shared = &self.0.shared;
        if let Durability::EveryMs(ms) = opts.fsync {
            shared.add_timer(&slot, Job::Sync, Duration::from_millis(ms.max(1)));
        }
        shared.add_timer(&slot, Job::Janitor, janitor_tick(opts));
        slot
    }

    /// Queues `job` for the engine of `slot` (at most once).
    pub(super) fn schedule(&self, slot: &Arc<Slot>, job: Job) {
        self.0.shared.schedule(slot, job, Waker::Other);
    }

    /// Queues the commit job of the engine of `slot` (at most once);
    /// `by_worker`: the caller is a commit worker ending a commit job (see
    /// [`Shared::schedule`]).
    pub(super) fn schedule_commit(&self, slot: &Arc<Slot>, by_worker: bool) {
        let who = if by_worker { Waker::Own } else { Waker::Other };
        self.0.shared.schedule(slot, Job::Commit, who);
    }

    /// What the commit workers did since the pool started.
    pub fn commit_counts(&self) -> CommitCounts {
        let c = &self.0.shared.counts;
        CommitCounts {
            jobs: c.jobs.load(Ordering::Relaxed),
            idle: c.idle.load(Ordering::Relaxed),
            wakes: c.wakes.load(Ordering::Relaxed),
        }
    }

    /// Takes `n` bytes from the node's merge budget, sleeping as needed.
    pub(super) fn merge_budget(&self, n: u64) {
        self.0.shared.budget.take(n);
    }
}

/// How often the janitor visits an engine.
pub(super) fn janitor_tick(opts: &Options) -> Duration {
    let sweep = Duration::from_millis(opts.sweep_interval_ms.max(10));
    let merge = Duration::from_millis(opts.merge.check_interval_ms.max(10));
    sweep.min(merge).min(Duration::from_secs(1))
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &self.shared;
        s.stopping.store(true, Ordering::Release);
        for q in [&s.commit, &s.janitor, &s.merge] {
            let _guard = q.jobs.lock();
            q.ready.notify_all();
        }
        {
            let _guard = s.timer.lock();
            s.timer_changed.notify_all();
        }
        let me = std::thread::current().id();
        for t in self.threads.lock().drain(..) {
            // Never join oneself (a pool thread dropping the last handle).
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        // Queued jobs and timers hold slots, not engines: dropping them is
        // all there is to do.
        s.timer.lock().clear();
        for q in [&s.commit, &s.janitor, &s.merge] {
            q.jobs.lock().clear();
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.0.count)
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they share one pool.
impl PartialEq for Workers {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
