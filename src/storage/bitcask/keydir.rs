//! The keydir: where the live (applied) version of every key is on disk, and
//! the LRU cache of hot values.
//!
//! Both are split into [`SHARDS`] shards by a hash of the key; one mutex per
//! shard guards the shard's map *and* its cache, so that "update the entry
//! and invalidate the cached value" is atomic with respect to readers. A
//! reader that misses the cache reads the disk without any lock, then
//! re-checks that the entry did not move before it fills the cache, so a
//! stale value can never be cached.
//!
//! The lock is a `parking_lot::Mutex`, not a tokio one: critical sections
//! are a hash lookup or two and never await or do I/O.
//!
//! RAM per key is a headline figure. A shard keeps its entries in a slab of
//! 48-byte slots (key inline up to 16 bytes, [`Key`], plus the 24-byte
//! [`Entry`]) and finds them through a hash table of 4-byte slot numbers, so
//! the half-empty space a power-of-two table has after doubling costs 5
//! bytes a bucket, not 49. Both arrays live on [`PageAlloc`]: capacity not yet
//! written costs no RSS, and a resize gives the old block back to the OS.

use std::hash::{BuildHasher, Hash};

use allocator_api2::vec::Vec as AVec;
use bytes::Bytes;
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::pagealloc::PageAlloc;

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// A key as stored in memory: inline up to 16 bytes, on the heap beyond.
pub type Key = SmallVec<[u8; 16]>;

/// Where the live version of a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Segment id (see `Segment::id`).
    pub seg: u32,
    /// Byte position of the record in the segment.
    pub pos: u32,
    /// Length of the whole record.
    pub len: u32,
    /// Absolute expiry in Unix ms; 0 = never.
    pub expire_at: u64,
}

impl Entry {
    /// Whether the entry is expired at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expire_at != 0 && self.expire_at <= now
    }

    /// Whether the entry points at this record.
    pub fn is_at(&self, seg: u32, pos: u32) -> bool {
        self.seg == seg && self.pos == pos
    }
}

/// A keydir slot: a key and where its live record is.
struct Slot {
    /// The key; empty when the slot is free.
    key: Key,
    /// The location.
    entry: Entry,
}

/// One shard: its part of the keydir and of the cache.
pub struct Shard {
    /// Slot numbers, hashed by their slot's key.
    index: HashTable<u32, PageAlloc>,
    /// The entries; free slots are listed in `free`.
    slots: AVec<Slot, PageAlloc>,
    /// Free slot numbers, reused first.
    free: Vec<u32>,
    /// Hashes keys for `index` (seeded apart from the shard choice).
    hasher: FixedState,
    /// Hot values, keyed like the map; `None` when caching is off.
    cache: Option<LruCache<Key, Bytes>>,
    /// Bytes of values (plus keys) in the cache.
    cache_used: usize,
    /// The cache's budget for this shard.
    cache_budget: usize,
    /// Entries with an expiry, so the sweep can skip shards without any.
    pub with_ttl: usize,
}

/// Seed of the per-shard table hash (the shard choice uses another).
const TABLE_SEED: u64 = 0x6b65_7964_6972_0001;

impl Shard {
    /// An empty shard with a cache budget of `cache_budget` bytes.
    fn new(cache_budget: usize, cached: bool) -> Shard {
        Shard {
            index: HashTable::new_in(PageAlloc),
            slots: AVec::new_in(PageAlloc),
            free: Vec::new(),
            hasher: FixedState::with_seed(TABLE_SEED),
            cache: cached.then(LruCache::unbounded),
            cache_used: 0,
            cache_budget,
            with_ttl: 0,
        }
    }

    /// The table hash of `key`.
    fn hash(hasher: &FixedState, key: &[u8]) -> u64 {
        hasher.hash_one(key)
    }

    /// The slot number holding `key`.
    fn find(&self, key: &[u8]) -> Option<u32> {
        let h = Self::hash(&self.hasher, key);
        self.index
            .find(h, |&i| self.slots[i as usize].key.as_slice() == key)
            .copied()
    }

    /// The entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.find(key).map(|i| self.slots[i as usize].entry)
    }

    /// The entry for `key`, to change in place.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let i = self.find(key)?;
        Some(&mut self.slots[i as usize].entry)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Every key and entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.index.iter().map(|&i| {
            let s = &self.slots[i as usize];
            (s.key.as_slice(), &s.entry)
        })
    }

    /// Inserts or replaces the entry for `key`, invalidating any cached value.
    /// Returns the entry it replaced.
    pub fn insert(&mut self, key: &[u8], entry: Entry) -> Option<Entry> {
        self.uncache(key);
        if entry.expire_at != 0 {
            self.with_ttl += 1;
        }
        let old = match self.find(key) {
            Some(i) => Some(std::mem::replace(&mut self.slots[i as usize].entry, entry)),
            None => {
                let slot = Slot {
                    key: Key::from_slice(key),
                    entry,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        (self.slots.len() - 1) as u32
                    }
                };
                let Shard {
                    index,
                    slots,
                    hasher,
                    ..
                } = self;
                let h = Self::hash(hasher, key);
                index.insert_unique(h, i, |&j| Self::hash(hasher, &slots[j as usize].key));
                None
            }
        };
        if let Some(old) = old
            && old.expire_at != 0
        {
            self.with_ttl -= 1;
        }
        old
    }

    /// Removes `key`, invalidating any cached value. Returns its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        self.uncache(key);
        let h = Self::hash(&self.hasher, key);
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(h, |&i| slots[i as usize].key.as_slice() == key)
            .ok()?;
        let (i, _) = found.remove();
        let slot = &mut self.slots[i as usize];
        slot.key = Key::new();
        let old = slot.entry;
        self.free.push(i);
        if old.expire_at != 0 {
            self.with_ttl -= 1;
        }
        Some(old)
    }

    /// Drops the cached value of `key`, if any.
    fn uncache(&mut self, key: &[u8]) {
        if let Some(cache) = &mut self.cache
            && let Some(v) = cache.pop(key)
        {
            self.cache_used -= v.len() + key.len();
        }
    }

    /// The cached value of `key`, marking it recently used.
    pub fn cached(&mut self, key: &[u8]) -> Option<Bytes> {
        self.cache.as_mut()?.get(key).cloned()
    }

    /// Caches `value` for `key`, evicting least recently used values to stay
    /// within the budget. Values larger than an eighth of the budget are not
    /// cached, so one large value cannot flush the whole shard.
    pub fn cache(&mut self, key: &[u8], value: &Bytes) {
        let cost = value.len() + key.len();
        let Some(cache) = &mut self.cache else { return };
        if cost > self.cache_budget / 8 {
            return;
        }
        if let Some(old) = cache.put(Key::from_slice(key), value.clone()) {
            self.cache_used -= old.len() + key.len();
        }
        self.cache_used += cost;
        while self.cache_used > self.cache_budget {
            match cache.pop_lru() {
                Some((k, v)) => self.cache_used -= v.len() + k.len(),
                None => break,
            }
        }
    }

    /// Removes the entries expired at `now` and returns them with their keys.
    pub fn drain_expired(&mut self, now: u64) -> Vec<(Key, Entry)> {
        if self.with_ttl == 0 {
            return Vec::new();
        }
        let expired: Vec<Key> = self
            .iter()
            .filter(|(_, e)| e.expired(now))
            .map(|(k, _)| Key::from_slice(k))
            .collect();
        expired
            .into_iter()
            .filter_map(|k| self.remove(&k).map(|e| (k, e)))
            .collect()
    }
}

/// The sharded keydir and cache.
pub struct KeyDir {
    /// The shards.
    shards: Vec<Mutex<Shard>>,
    /// Hash used to pick a shard (seeded apart from the shards' tables).
    hasher: FixedState,
}

impl KeyDir {
    /// An empty keydir with a cache of `cache_bytes` in total (0 = no cache).
    pub fn new(cache_bytes: u64) -> KeyDir {
        let budget = (cache_bytes as usize) / SHARDS;
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard::new(budget, cache_bytes > 0)))
            .collect();
        KeyDir {
            shards,
            hasher: FixedState::with_seed(0x0063_6173_6b61_6465),
        }
    }

    /// The shard `key` belongs to, locked.
    pub fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let i = std::hash::Hasher::finish(&h) as usize & (SHARDS - 1);
        self.shards[i].lock()
    }

    /// Shard `i`, locked; for whole-keydir walks (sweep, merge, status).
    pub fn shard_at(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock()
    }

    /// The entry for `key`, if any (expired ones included).
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.shard(key).get(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Replaces every shard's entries with `fresh`'s, shard by shard, and
    /// empties the cache. Each key switches atomically.
    pub fn replace_with(&self, fresh: KeyDir) {
        for (mine, theirs) in self.shards.iter().zip(fresh.shards) {
            let theirs = theirs.into_inner();
            let mut s = mine.lock();
            s.index = theirs.index;
            s.slots = theirs.slots;
            s.free = theirs.free;
            s.with_ttl = theirs.with_ttl;
            if let Some(c) = &mut s.cache {
                c.clear();
            }
            s.cache_used = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seg: u32, expire_at: u64) -> Entry {
        Entry {
            seg,
            pos: 0,
            len: 10,
            expire_at,
        }
    }

    #[test]
    fn slots_are_reused_and_lookups_exact() {
        let kd = KeyDir::new(0);
        let mut s = kd.shard_at(0);
        for i in 0..1000u32 {
            assert_eq!(s.insert(&i.to_le_bytes(), entry(i, 0)), None);
        }
        for i in (0..1000u32).step_by(2) {
            assert_eq!(s.remove(&i.to_le_bytes()), Some(entry(i, 0)));
        }
        assert_eq!(s.len(), 500);
        for i in 1000..1500u32 {
            s.insert(&i.to_le_bytes(), entry(i, 0));
        }
        assert_eq!(s.slots.len(), 1000, "freed slots were reused");
        for i in 0..1500u32 {
            let want = (i >= 1000 || i % 2 == 1).then(|| entry(i, 0));
            assert_eq!(s.get(&i.to_le_bytes()), want, "key {i}");
        }
        assert_eq!(s.iter().count(), 1000);
    }

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn insert_invalidates_cache() {
        let kd = KeyDir::new(1 << 20);
        let mut s = kd.shard(b"k");
        s.insert(b"k", entry(1, 0));
        s.cache(b"k", &Bytes::from_static(b"old"));
        assert_eq!(s.cached(b"k"), Some(Bytes::from_static(b"old")));
        s.insert(b"k", entry(2, 0));
        assert_eq!(s.cached(b"k"), None);
    }

    #[test]
    fn cache_stays_within_budget() {
        let kd = KeyDir::new((SHARDS * 1000) as u64);
        let mut s = kd.shard(b"x");
        for i in 0..100u32 {
            s.cache(&i.to_le_bytes(), &Bytes::from(vec![0u8; 96]));
        }
        assert!(s.cache_used <= 1000, "used {}", s.cache_used);
        assert_eq!(s.cache_used, 10 * 100);
    }

    #[test]
    fn sweep_counts_ttl_entries() {
        let kd = KeyDir::new(0);
        let mut s = kd.shard(b"a");
        s.insert(b"a", entry(1, 50));
        s.insert(b"a", entry(1, 0));
        assert_eq!(s.with_ttl, 0);
        s.insert(b"a", entry(1, 50));
        assert_eq!(s.with_ttl, 1);
        assert_eq!(s.drain_expired(49).len(), 0);
        assert_eq!(s.drain_expired(50).len(), 1);
        assert_eq!(s.with_ttl, 0);
        assert_eq!(s.len(), 0);
    }
}
