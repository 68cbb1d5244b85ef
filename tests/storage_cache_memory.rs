//! The value cache's memory, measured: a counting global allocator (this
//! test binary only) tracks the bytes malloc really holds (usable size plus
//! its 8-byte header per block), and the cache of two engines sharing one
//! node budget must stay within that budget, as charged and as measured.
//!
//! The tests take one lock: the allocator's counter is process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use caskade::storage::{Bitcask, Durability, Engine, ManualClock, Options, SetOptions};
use parking_lot::Mutex;
use tempfile::TempDir;

/// Counts the bytes of live heap blocks as malloc accounts them.
struct Counting;

/// Bytes of live blocks.
static LIVE: AtomicI64 = AtomicI64::new(0);

/// Bytes malloc uses for the block at `p`: its usable size and its header.
fn footprint(p: *mut u8) -> i64 {
    // SAFETY: `p` is a live block from the system allocator (malloc).
    (unsafe { libc::malloc_usable_size(p.cast()) } + 8) as i64
}

// SAFETY: every call is forwarded to `System`; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(footprint(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        LIVE.fetch_sub(footprint(p), Ordering::Relaxed);
        unsafe { System.dealloc(p, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(footprint(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = footprint(p);
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_add(footprint(q) - before, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One measurement at a time.
static GATE: Mutex<()> = Mutex::new(());

/// A fixed "now".
const T0: u64 = 1_767_225_600_000;

fn opts(cache_bytes: u64) -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        cache_bytes,
        sweep_interval_ms: 3_600_000,
        ..Options::default()
    };
    o.merge.dead_ratio = 0.0;
    o
}

fn open(dir: &Path, o: &Options) -> Bitcask {
    Bitcask::open_with_clock(dir, o.clone(), Arc::new(ManualClock::new(T0))).unwrap()
}

/// A 16-byte key and a `len`-byte value.
fn kv(i: usize, len: usize) -> (Vec<u8>, Bytes) {
    (
        format!("key-{i:012}").into_bytes(),
        Bytes::from(vec![b'a' + (i % 26) as u8; len]),
    )
}

fn fill(e: &Bitcask, n: usize, len: usize) {
    for i in 0..n {
        let (k, v) = kv(i, len);
        e.set(&k, v, SetOptions::default()).unwrap();
    }
}

/// Writes every key once more (each write fills the cache); returns the
/// heap growth. The keys exist already, so the keydir does not grow.
fn write_all(e: &Bitcask, n: usize, len: usize) -> i64 {
    let before = LIVE.load(Ordering::SeqCst);
    fill(e, n, len);
    LIVE.load(Ordering::SeqCst) - before
}

/// Reads every key once (each read fills the cache); returns the heap growth.
fn read_all(engines: &[&Bitcask], n: usize, len: usize) -> i64 {
    let before = LIVE.load(Ordering::SeqCst);
    for i in 0..n {
        for e in engines {
            let (k, v) = kv(i, len);
            assert_eq!(e.get(&k).unwrap(), Some(v));
        }
    }
    LIVE.load(Ordering::SeqCst) - before
}

#[test]
fn two_engines_sharing_a_budget_stay_within_it() {
    let _g = GATE.lock();
    let budget: u64 = 1 << 20;
    // Opened the way a node opens its partitions: one cache for all.
    let o = opts(budget).with_shared_cache();
    let cache = o.shared_cache.clone().expect("a shared cache");
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (a, b) = (open(da.path(), &o), open(db.path(), &o));
    // 100-byte values: many small entries, where overhead weighs most.
    let n = 12_000;
    fill(&a, n, 100);
    fill(&b, n, 100);
    // The writes filled the cache, within the budget.
    let charged = cache.charged();
    assert!(charged <= budget, "charged {charged} > budget {budget}");
    assert!(charged > budget * 9 / 10, "writes filled it: {charged}");
    // Reopened: the engines' values are dropped; reads fill the cache.
    drop((a, b));
    let (a, b) = (open(da.path(), &o), open(db.path(), &o));
    assert_eq!(cache.len(), 0);
    let grew = read_all(&[&a, &b], n, 100);
    let charged = cache.charged();
    assert!(charged <= budget, "charged {charged} > budget {budget}");
    assert!(
        charged > budget * 9 / 10,
        "the cache filled up: charged {charged}"
    );
    let slack = 64 << 10;
    assert!(
        grew <= (budget + slack) as i64,
        "the cache holds {grew} bytes of heap for a budget of {budget}"
    );
    // Both engines' recent values are served from the one cache.
    let (k, v) = kv(n - 1, 100);
    assert_eq!(a.get_cached(&k).unwrap(), Some(Some(v.clone())));
    assert_eq!(b.get_cached(&k).unwrap(), Some(Some(v)));
    // Closing an engine gives its part back.
    let before = cache.len();
    drop(a);
    assert!(cache.len() < before * 2 / 3, "{} of {before}", cache.len());
}

#[test]
fn the_charge_is_what_the_heap_pays() {
    let _g = GATE.lock();
    // No eviction: 2,000 entries in a 4 MiB cache.
    let budget: u64 = 4 << 20;
    let o = opts(budget).with_shared_cache();
    let cache = o.shared_cache.clone().expect("a shared cache");
    let dir = TempDir::new().unwrap();
    let e = open(dir.path(), &o);
    let mut e = e;
    for len in [1usize, 100, 1000] {
        fill(&e, 2000, len);
        // Filled by reads, then by writes, from empty each time (a reopen
        // drops the engine's values).
        for by_writes in [false, true] {
            drop(e);
            e = open(dir.path(), &o);
            assert_eq!(cache.len(), 0);
            let charged_before = cache.charged() as i64;
            let grew = if by_writes {
                write_all(&e, 2000, len)
            } else {
                read_all(&[&e], 2000, len)
            };
            let charged = cache.charged() as i64 - charged_before;
            assert_eq!(cache.len(), 2000, "{len}-byte values, writes {by_writes}");
            assert!(
                grew <= charged + (16 << 10),
                "{len}-byte values, writes {by_writes}: heap grew {grew}, charged {charged}"
            );
            assert!(
                grew >= charged * 7 / 10,
                "{len}-byte values, writes {by_writes}: charged {charged} for {grew} bytes of heap"
            );
        }
    }
}

/// Writes alone fill the cache within the budget, as charged and as
/// measured, and every value written is counted as a fill, none as a miss.
#[test]
fn writes_fill_the_cache_within_the_budget() {
    let _g = GATE.lock();
    let budget: u64 = 1 << 20;
    let o = opts(budget).with_shared_cache();
    let cache = o.shared_cache.clone().expect("a shared cache");
    let dir = TempDir::new().unwrap();
    let n = 12_000;
    let e = open(dir.path(), &o);
    fill(&e, n, 100);
    drop(e);
    let e = open(dir.path(), &o);
    assert_eq!(cache.len(), 0);
    let grew = write_all(&e, n, 100);
    let charged = cache.charged();
    assert!(charged <= budget, "charged {charged} > budget {budget}");
    assert!(charged > budget * 9 / 10, "writes filled it: {charged}");
    assert!(
        grew <= (budget + (64 << 10)) as i64,
        "the cache holds {grew} bytes of heap for a budget of {budget}"
    );
    let s = e.status().unwrap();
    assert_eq!(
        (s.cache_fills, s.cache_misses, s.cache_hits),
        (2 * n as u64, 0, 0)
    );
    // The newest writes are the ones cached.
    let (k, v) = kv(n - 1, 100);
    assert_eq!(e.get_cached(&k).unwrap(), Some(Some(v)));
}
