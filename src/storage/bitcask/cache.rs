//! The value cache: hot values in memory, one byte budget per node, shared
//! by every partition's engine.
//!
//! A node creates one [`ValueCache`] from `storage.cache_bytes` and hands it
//! to each engine in [`super::Options::shared_cache`]; an engine opened
//! without one (tests, tools) makes its own. The cache is split into
//! [`SHARDS`] LRU shards by a hash of (engine, key), each with its own mutex
//! and an equal part of the budget.
//!
//! The cache is filled two ways. A read that went to disk offers the value
//! it read ([`ValueCache::put`]). A write offers the value of the record it
//! wrote ([`ValueCache::fill`]), when the record is applied to the keydir:
//! in standalone mode when its batch is written (under the keydir shard
//! lock that points the entry at it), in replica mode when the commit point
//! passes it (after the commit released the writer mutex: the location tag
//! makes a late fill harmless), and only for a local write (a leader's),
//! whose value is in memory. A record appended from a leader is not
//! offered: a follower answers reads only under `consistency: any`, and
//! copying every replicated value on the fetch path would spend its CPU
//! and budget on values it may never serve (such reads fill the cache as
//! any read does). Recovery at open offers nothing. Without write-fills the
//! first `GET` of each key after its `SET` missed and went to the blocking
//! pool (two thread hand-offs; 43 % of redis-benchmark's GETs). A fill
//! costs the write one more probe of an LRU shard, a copy and an
//! allocation (none when it overwrites a cached value of the same length
//! that no reader holds: the copy goes into that value's block):
//! about 1 to 2 µs of server CPU per SET, against about 7 to
//! 8 µs saved per first GET (docs/BENCHMARKS.md, "caskade vs Redis over
//! RESP", run 3). A fill over a cached entry does not move it in the LRU
//! order: reads alone make a value recently used.
//!
//! Invariants:
//! - the bytes charged are what the process pays for the cache, not the
//!   payload: each entry is charged its value's and key's heap blocks as the
//!   allocator rounds them, plus [`ENTRY_OVERHEAD`] (the LRU node and the
//!   `Bytes` header, measured), and each shard is charged its hash table at
//!   its high-water size (the table never shrinks). A shard evicts least
//!   recently used values until its charge is within its part of the budget,
//!   so the whole cache stays within `cache_bytes` (test
//!   `tests/storage_cache_memory.rs` measures the allocations). The
//!   rounding modelled is glibc malloc's; under `caskade-server`'s
//!   jemalloc a block may hold up to a quarter more (docs/STORAGE.md);
//! - a cached value owns an exactly sized copy of its bytes: it never pins
//!   the read buffer or the write batch it came from (record header, key,
//!   neighbours, the client's request); a value is overwritten in place
//!   only while the cache alone holds it, so bytes a reader was given never
//!   change (a hit answers a value of at most [`COPY_MAX`] bytes with a
//!   copy, a longer one with a reference);
//! - a cached value is tagged with the location (segment id, position) of
//!   the record it was read from or written to, and served only while the
//!   key's keydir entry still points there (an overwrite, delete, expiry,
//!   merge or truncation moves or removes the entry, so the old value stops
//!   being served at once). Segment ids are never reused within an engine
//!   instance and each engine instance has its own id ([`engine_id`]), so a
//!   stale value can never be served; stale values are dropped when found,
//!   replaced when the key is cached again, or evicted as they age;
//! - values larger than an eighth of a shard's budget are not cached, so one
//!   value cannot flush a shard;
//! - hits and misses are counted per shard under the shard's mutex, which a
//!   lookup holds anyway: counting costs no atomic and no shared cache
//!   line. A hit is a read answered here; a miss is a read of a live key
//!   that went to disk, counted when its value is offered to the cache
//!   ([`ValueCache::put`]), so a read that looked twice counts once;
//!   [`ValueCache::stats`] sums the shards. A write-fill is not a read:
//!   neither a hit nor a miss; it is counted apart ([`ValueCache::fills`]).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use foldhash::fast::FixedState;
use lru::LruCache;
use parking_lot::Mutex;

use super::keydir::Key;

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// Bytes the allocator takes per entry besides the value's and key's own
/// blocks: the LRU node (key, value, two list pointers: 88 bytes, a 96-byte
/// block) and the `Bytes` shared header made on the first clone (24 bytes, a
/// 32-byte block; a value of at most [`COPY_MAX`] bytes is copied out, not
/// cloned, so it may never get one: the charge then errs by 32 bytes on the
/// safe side). Checked by `tests/storage_cache_memory.rs`.
pub const ENTRY_OVERHEAD: usize = 128;

/// Bytes of one hash-table bucket in an LRU shard: a key pointer and a node
/// pointer, plus one control byte.
const BUCKET_BYTES: usize = 2 * std::mem::size_of::<usize>() + 1;

/// Next engine instance id (see [`engine_id`]).
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);

/// A fresh id for an engine instance: its entries in a shared cache are
/// keyed by it.
pub fn engine_id() -> u64 {
    NEXT_ENGINE.fetch_add(1, Ordering::Relaxed)
}

/// Bytes the allocator (glibc malloc) uses for a block of `n` bytes: an
/// 8-byte header, rounded up to 16, at least 32; nothing for `n == 0`.
fn block(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// What caching `value` for a key of `key_len` bytes costs.
pub fn entry_charge(key_len: usize, value_len: usize) -> usize {
    // Keys up to 16 bytes live inline in the node.
    let key_heap = if key_len > 16 { block(key_len) } else { 0 };
    ENTRY_OVERHEAD + key_heap + block(value_len)
}

/// Bytes of an LRU shard's hash table after it held `n` entries at once
/// (hashbrown: buckets a power of two, at most 7/8 full, plus one group of
/// control bytes).
fn table_charge(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let buckets = if n < 4 {
        4
    } else if n < 8 {
        8
    } else {
        (n * 8).div_ceil(7).next_power_of_two()
    };
    buckets * BUCKET_BYTES + 16
}

/// A cache key: the engine instance and the key.
#[derive(PartialEq, Eq)]
struct CacheKey {
    /// The engine instance ([`engine_id`]).
    engine: u64,
    /// The key.
    key: Key,
}

/// The borrowed form of a cache key, so a lookup builds no [`Key`].
trait Lookup {
    /// The engine instance.
    fn engine(&self) -> u64;
    /// The key bytes.
    fn bytes(&self) -> &[u8];
}

impl Lookup for CacheKey {
    fn engine(&self) -> u64 {
        self.engine
    }
    fn bytes(&self) -> &[u8] {
        &self.key
    }
}

impl Lookup for (u64, &[u8]) {
    fn engine(&self) -> u64 {
        self.0
    }
    fn bytes(&self) -> &[u8] {
        self.1
    }
}

impl Hash for dyn Lookup + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.engine().hash(state);
        self.bytes().hash(state);
    }
}

impl PartialEq for dyn Lookup + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.engine() == other.engine() && self.bytes() == other.bytes()
    }
}

impl Eq for dyn Lookup + '_ {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn Lookup).hash(state);
    }
}

impl<'a> Borrow<dyn Lookup + 'a> for CacheKey {
    fn borrow(&self) -> &(dyn Lookup + 'a) {
        self
    }
}

/// A cached value and where it was read from.
struct Cached {
    /// The value, in its own exactly sized block.
    value: Bytes,
    /// Segment id of the record it was read from.
    seg: u32,
    /// Position of that record.
    pos: u32,
}

/// One LRU shard.
struct Shard {
    /// The values, least recently used first out.
    lru: LruCache<CacheKey, Cached, FixedState>,
    /// Bytes charged for the entries (not the table).
    entries: usize,
    /// Most entries the shard has held at once: its table's size.
    high_water: usize,
    /// This shard's part of the budget.
    budget: usize,
    /// Lookups answered from this shard.
    hits: u64,
    /// Values read from disk and offered to this shard.
    misses: u64,
    /// Values of records just written offered to this shard.
    fills: u64,
}

impl Shard {
    /// Bytes charged in all.
    fn charged(&self) -> usize {
        self.entries + table_charge(self.high_water)
    }

    /// Caches a copy of `value` for `key` of `engine` at (`seg`, `pos`),
    /// replacing the key's entry in place if it has one, then evicts least
    /// recently used values until the shard is within its budget. A value
    /// over an eighth of the budget is not cached. A `read` value becomes
    /// the most recently used; a written one replacing a cached entry keeps
    /// that entry's place (only reads make a value recently used: a value
    /// written often but never read ages out, and the write does not pay
    /// for moving the node, which writes two neighbours' cache lines).
    fn store(&mut self, engine: u64, key: &[u8], seg: u32, pos: u32, value: &[u8], read: bool) {
        let cost = entry_charge(key.len(), value.len());
        if cost > self.budget / 8 {
            return;
        }
        let lookup: &dyn Lookup = &(engine, key);
        let found = if read {
            self.lru.get_mut(lookup)
        } else {
            self.lru.peek_mut(lookup)
        };
        if let Some(c) = found {
            // Same node and key block: only the value changes.
            let old = entry_charge(key.len(), c.value.len());
            let value = overwrite(std::mem::take(&mut c.value), value);
            *c = Cached { value, seg, pos };
            self.entries = self.entries - old + cost;
        } else {
            let k = CacheKey {
                engine,
                key: Key::from_slice(key),
            };
            // An exactly sized block: never the buffer it came from.
            let value = Bytes::copy_from_slice(value);
            self.lru.put(k, Cached { value, seg, pos });
            self.entries += cost;
            self.high_water = self.high_water.max(self.lru.len());
        }
        while self.charged() > self.budget {
            match self.lru.pop_lru() {
                Some((k, v)) => self.entries -= entry_charge(k.key.len(), v.value.len()),
                None => break,
            }
        }
    }

    /// Drops `key`'s entry, if any.
    fn pop(&mut self, engine: u64, key: &[u8]) {
        let lookup: &dyn Lookup = &(engine, key);
        if let Some(old) = self.lru.pop(lookup) {
            self.entries -= entry_charge(key.len(), old.value.len());
        }
    }
}

/// `value` in an exactly sized block: `old`'s own, overwritten, when it has
/// the same length and nobody else holds it (a reader's clone is never
/// touched), else a new copy. An overwrite of a key with a value of the
/// same size (the common case of a write-fill) then costs no allocation
/// and no free: a free of a block another thread allocated costs more than
/// the copy (profile of `SET -P 16` under `always`, docs/BENCHMARKS.md
/// "`always` writes (session 12)").
fn overwrite(old: Bytes, value: &[u8]) -> Bytes {
    if old.len() == value.len()
        && let Ok(mut own) = old.try_into_mut()
    {
        own.copy_from_slice(value);
        return own.freeze();
    }
    Bytes::copy_from_slice(value)
}

/// Longest value a hit answers with a copy rather than a reference.
const COPY_MAX: usize = 512;

/// What a hit answers for the cached `value`, under the shard's mutex: a
/// copy if it is short (an allocation, and a copy of bytes the reply
/// reads anyway, on the reader's thread), else a reference. A reference
/// costs an atomic increment, and later a decrement, on the value's
/// shared header: one more cache line, which the node's threads pass back
/// and forth (`GET -P 16`: server CPU per request -20 % with copies,
/// docs/BENCHMARKS.md run 14). A value a reader holds a reference to
/// cannot be overwritten in place either.
fn served(value: &Bytes) -> Bytes {
    if value.len() <= COPY_MAX {
        Bytes::copy_from_slice(value)
    } else {
        value.clone()
    }
}

/// The shared part of a [`ValueCache`].
struct Shared {
    /// The shards.
    shards: Vec<Mutex<Shard>>,
    /// Picks a shard.
    hasher: FixedState,
    /// The whole budget in bytes.
    budget: u64,
    /// Each shard's part of it.
    part: usize,
}

/// A value cache with one byte budget, shared by the engines it is given to
/// (cloning the handle shares it).
#[derive(Clone)]
pub struct ValueCache(Arc<Shared>);

impl ValueCache {
    /// A cache of `budget` bytes in all.
    pub fn new(budget: u64) -> ValueCache {
        let part = (budget as usize) / SHARDS;
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded_with_hasher(FixedState::with_seed(0x7661_6c75_6573)),
                    entries: 0,
                    high_water: 0,
                    budget: part,
                    hits: 0,
                    misses: 0,
                    fills: 0,
                })
            })
            .collect();
        ValueCache(Arc::new(Shared {
            shards,
            hasher: FixedState::with_seed(0x0063_6163_6865),
            budget,
            part,
        }))
    }

    /// The budget in bytes.
    pub fn budget(&self) -> u64 {
        self.0.budget
    }

    /// Bytes charged now, over all shards (at most the budget).
    pub fn charged(&self) -> u64 {
        self.0
            .shards
            .iter()
            .map(|s| s.lock().charged() as u64)
            .sum()
    }

    /// Values cached now.
    pub fn len(&self) -> usize {
        self.0.shards.iter().map(|s| s.lock().lru.len()).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard of (engine, key).
    fn shard(&self, engine: u64, key: &[u8]) -> parking_lot::MutexGuard<'_, Shard> {
        let mut h = self.0.hasher.build_hasher();
        engine.hash(&mut h);
        key.hash(&mut h);
        self.0.shards[h.finish() as usize & (SHARDS - 1)].lock()
    }

    /// The value cached for `key` of `engine` if it was read from the record
    /// at (`seg`, `pos`), marking it recently used. A value from another
    /// location is stale: it is dropped.
    pub(super) fn get(&self, engine: u64, key: &[u8], seg: u32, pos: u32) -> Option<Bytes> {
        let mut shard = self.shard(engine, key);
        let lookup: &dyn Lookup = &(engine, key);
        let found = match shard.lru.get(lookup) {
            Some(c) if c.seg == seg && c.pos == pos => Some(served(&c.value)),
            Some(_) => {
                shard.pop(engine, key);
                None
            }
            None => None,
        };
        // A miss is counted by the `put` that follows the disk read: a read
        // may look here twice (the async fast path, then the blocking path)
        // but reads the disk once.
        if found.is_some() {
            shard.hits += 1;
        }
        found
    }

    /// Hits and misses since the cache was created, over all shards.
    pub fn stats(&self) -> (u64, u64) {
        self.0.shards.iter().fold((0, 0), |(h, m), s| {
            let s = s.lock();
            (h + s.hits, m + s.misses)
        })
    }

    /// Caches a copy of `value` for `key` of `engine`, read from the record
    /// at (`seg`, `pos`), evicting least recently used values to stay within
    /// the shard's budget. Counts a miss: the read went to disk.
    pub(super) fn put(&self, engine: u64, key: &[u8], seg: u32, pos: u32, value: &[u8]) {
        let mut shard = self.shard(engine, key);
        shard.misses += 1;
        shard.store(engine, key, seg, pos, value, true);
    }

    /// Caches a copy of `value` for `key` of `engine`, the value of the
    /// record just written at (`seg`, `pos`) (a write-fill: no read, so not
    /// a miss; counted in [`ValueCache::fills`]). Values too large to cache
    /// cost no lock.
    pub(super) fn fill(&self, engine: u64, key: &[u8], seg: u32, pos: u32, value: &[u8]) {
        if entry_charge(key.len(), value.len()) > self.0.part / 8 {
            return;
        }
        let mut shard = self.shard(engine, key);
        shard.fills += 1;
        shard.store(engine, key, seg, pos, value, false);
    }

    /// Values offered by writes ([`ValueCache::fill`]) since the cache was
    /// created, over all shards (too large ones not counted).
    pub fn fills(&self) -> u64 {
        self.0.shards.iter().map(|s| s.lock().fills).sum()
    }

    /// Drops every value of `engine` (it closed or rebuilt its keydir).
    pub(super) fn purge(&self, engine: u64) {
        for s in &self.0.shards {
            let mut s = s.lock();
            let mut freed = 0;
            s.lru.retain(|k, v| {
                let keep = k.engine != engine;
                if !keep {
                    freed += entry_charge(k.key.len(), v.value.len());
                }
                keep
            });
            s.entries -= freed;
        }
    }
}

impl std::fmt::Debug for ValueCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueCache")
            .field("budget", &self.budget())
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they share one cache.
impl PartialEq for ValueCache {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fill over a cached value of the same length writes the new value
    /// into the old one's block when nobody holds it; a value a reader
    /// holds is never changed (a new block is made), nor one of another
    /// length (its block would not be exactly sized). Values longer than
    /// [`COPY_MAX`], which readers get by reference.
    #[test]
    fn a_fill_of_the_same_length_reuses_the_block_nobody_holds() {
        const LONG: usize = COPY_MAX + 100;
        let c = ValueCache::new((SHARDS * 65536) as u64);
        c.fill(1, b"k", 0, 0, &[1u8; LONG]);
        let first = c.get(1, b"k", 0, 0).unwrap();
        let block = first.as_ptr();
        assert_eq!(
            c.get(1, b"k", 0, 0).unwrap().as_ptr(),
            block,
            "a long value is served by reference"
        );
        drop(first);
        c.fill(1, b"k", 0, 1, &[2u8; LONG]);
        let second = c.get(1, b"k", 0, 1).unwrap();
        assert_eq!(second, Bytes::from(vec![2u8; LONG]));
        assert_eq!(second.as_ptr(), block, "the unshared block was reused");
        // `second` is held: the next fill must not touch it.
        c.fill(1, b"k", 0, 2, &[3u8; LONG]);
        assert_eq!(
            second,
            Bytes::from(vec![2u8; LONG]),
            "a held value never changes"
        );
        let third = c.get(1, b"k", 0, 2).unwrap();
        assert_eq!(third, Bytes::from(vec![3u8; LONG]));
        assert_ne!(third.as_ptr(), block, "a held block is not reused");
        drop((second, third));
        let charged = c.charged();
        c.fill(1, b"k", 0, 3, &[4u8; 50]);
        assert_eq!(c.get(1, b"k", 0, 3).unwrap(), Bytes::from(vec![4u8; 50]));
        assert_eq!(
            charged - c.charged(),
            (entry_charge(1, LONG) - entry_charge(1, 50)) as u64,
            "another length: charged as its own exactly sized block"
        );
    }

    /// A value of at most [`COPY_MAX`] bytes is served as a copy: each
    /// hit its own block, never the cached one, so a fill of the same
    /// length always writes into the cached block, and a reader's copy
    /// keeps its bytes.
    #[test]
    fn a_short_value_is_served_as_a_copy() {
        let c = ValueCache::new((SHARDS * 65536) as u64);
        // Where the cache holds `k`'s value.
        let block = |c: &ValueCache| {
            c.0.shards.iter().find_map(|s| {
                let s = s.lock();
                s.lru
                    .peek(&(1u64, &b"k"[..]) as &dyn Lookup)
                    .map(|c| c.value.as_ptr())
            })
        };
        c.fill(1, b"k", 0, 0, &[1u8; COPY_MAX]);
        let cached = block(&c).expect("the value is cached");
        let (a, b) = (c.get(1, b"k", 0, 0).unwrap(), c.get(1, b"k", 0, 0).unwrap());
        assert_eq!(
            (&a[..], &b[..]),
            (&[1u8; COPY_MAX][..], &[1u8; COPY_MAX][..])
        );
        assert!(a.as_ptr() != cached && b.as_ptr() != cached && a.as_ptr() != b.as_ptr());
        c.fill(1, b"k", 0, 1, &[2u8; COPY_MAX]);
        assert_eq!(
            &a[..],
            &[1u8; COPY_MAX][..],
            "a reader's copy keeps its bytes"
        );
        assert_eq!(
            block(&c),
            Some(cached),
            "the fill wrote into the cached block"
        );
        assert_eq!(&c.get(1, b"k", 0, 1).unwrap()[..], &[2u8; COPY_MAX][..]);
        // One byte longer: served by reference.
        c.fill(1, b"l", 0, 0, &[5u8; COPY_MAX + 1]);
        let (a, b) = (c.get(1, b"l", 0, 0).unwrap(), c.get(1, b"l", 0, 0).unwrap());
        assert_eq!((a.len(), a.as_ptr()), (COPY_MAX + 1, b.as_ptr()));
    }

    #[test]
    fn stays_within_budget_and_serves_only_the_tagged_location() {
        let c = ValueCache::new((SHARDS * 8192) as u64);
        for i in 0..10_000u32 {
            c.put(1, &i.to_le_bytes(), 0, i, &[7u8; 100]);
        }
        assert!(
            c.charged() <= c.budget(),
            "{} > {}",
            c.charged(),
            c.budget()
        );
        assert!(c.len() > 1000, "{}", c.len());
        c.put(2, b"k", 3, 40, b"value");
        assert_eq!(c.get(2, b"k", 3, 40).as_deref(), Some(&b"value"[..]));
        assert_eq!(c.get(1, b"k", 3, 40), None, "another engine's key");
        assert_eq!(c.get(2, b"k", 3, 41), None, "another location");
        assert_eq!(c.get(2, b"k", 3, 40), None, "the stale value was dropped");
        let before = c.len();
        c.purge(1);
        assert_eq!(c.len(), 0);
        assert!(before > 0);
        assert_eq!(
            c.charged(),
            c.0.shards
                .iter()
                .map(|s| table_charge(s.lock().high_water) as u64)
                .sum::<u64>()
        );
    }

    /// One read that went to disk is one miss (the `put`), whatever the
    /// lookups before it; a read answered here is one hit.
    #[test]
    fn hits_and_misses_count_reads() {
        let c = ValueCache::new((SHARDS * 8192) as u64);
        assert_eq!(c.get(1, b"k", 0, 0), None);
        assert_eq!(c.get(1, b"k", 0, 0), None);
        c.put(1, b"k", 0, 0, b"v");
        assert!(c.get(1, b"k", 0, 0).is_some());
        assert!(c.get(1, b"k", 0, 0).is_some());
        assert_eq!(c.get(1, b"k", 0, 1), None, "stale: not a hit");
        c.put(1, b"big", 0, 0, &[0u8; 1024]); // too big to keep, still read
        assert_eq!(c.stats(), (2, 2));
    }

    /// A write-fill is neither a hit nor a miss; it replaces the key's
    /// entry in place (exact charge), is served only at its location, and
    /// keeps the shard within its budget.
    #[test]
    fn fills_are_not_misses_and_stay_within_budget() {
        let c = ValueCache::new((SHARDS * 8192) as u64);
        c.fill(1, b"k", 0, 0, b"v1");
        assert_eq!(c.stats(), (0, 0));
        assert_eq!(c.fills(), 1);
        assert_eq!(c.get(1, b"k", 0, 0).as_deref(), Some(&b"v1"[..]));
        let one = c.charged();
        c.fill(1, b"k", 0, 7, b"a longer value, another block");
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.charged() - one,
            (entry_charge(1, 29) - entry_charge(1, 2)) as u64
        );
        assert_eq!(c.get(1, b"k", 0, 0), None, "old location");
        c.fill(1, b"k", 0, 8, b"v3");
        assert_eq!(c.get(1, b"k", 0, 8).as_deref(), Some(&b"v3"[..]));
        assert_eq!(c.stats(), (2, 0));
        c.fill(1, b"big", 0, 0, &[0u8; 1024]);
        assert_eq!(c.get(1, b"big", 0, 0), None, "too large to cache");
        assert_eq!(c.fills(), 3, "a value too large is not counted");
        for i in 0..10_000u32 {
            c.fill(2, &i.to_le_bytes(), 1, i, &[7u8; 100]);
        }
        assert!(
            c.charged() <= c.budget(),
            "{} > {}",
            c.charged(),
            c.budget()
        );
        assert!(c.len() > 1000, "{}", c.len());
        let sum: usize =
            c.0.shards
                .iter()
                .map(|s| {
                    let s = s.lock();
                    s.lru
                        .iter()
                        .map(|(k, v)| entry_charge(k.key.len(), v.value.len()))
                        .sum::<usize>()
                })
                .sum();
        let entries: usize = c.0.shards.iter().map(|s| s.lock().entries).sum();
        assert_eq!(entries, sum, "the charge is the entries' charges");
        assert_eq!(c.stats().1, 0);
    }

    /// A read makes its value the most recently used; a write-fill over a
    /// cached entry keeps that entry's place in the LRU order.
    #[test]
    fn a_fill_keeps_its_place_a_read_moves_it() {
        let c = ValueCache::new((SHARDS * 8192) as u64);
        let mut s = c.0.shards[0].lock();
        let oldest = |s: &Shard| s.lru.peek_lru().map(|(k, _)| k.key.to_vec());
        s.store(1, b"a", 0, 0, b"1", true);
        s.store(1, b"b", 0, 1, b"2", true);
        s.store(1, b"a", 0, 2, b"3", false);
        assert_eq!(oldest(&s), Some(b"a".to_vec()), "a fill does not move it");
        assert_eq!(
            s.lru.peek(&(1u64, &b"a"[..]) as &dyn Lookup).map(|c| c.pos),
            Some(2)
        );
        s.store(1, b"a", 0, 3, b"4", true);
        assert_eq!(oldest(&s), Some(b"b".to_vec()), "a read does");
    }

    #[test]
    fn large_values_are_not_cached() {
        let c = ValueCache::new((SHARDS * 8192) as u64);
        c.put(1, b"big", 0, 0, &[0u8; 1024]);
        assert_eq!(c.get(1, b"big", 0, 0), None);
        c.put(1, b"small", 0, 0, &[0u8; 800]);
        assert!(c.get(1, b"small", 0, 0).is_some());
    }
}
