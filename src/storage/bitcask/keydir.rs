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
//! RAM per key is a headline figure: an [`Entry`] is 24 bytes and keys of up
//! to 16 bytes are stored inline ([`Key`]), so a 16-byte key costs one
//! 48-byte bucket plus one control byte, divided by the table's load factor.

use std::hash::{BuildHasher, Hash};

use bytes::Bytes;
use hashbrown::HashMap;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

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

/// One shard: its part of the keydir and of the cache.
pub struct Shard {
    /// key -> location of the live record.
    pub map: HashMap<Key, Entry>,
    /// Hot values, keyed like the map; `None` when caching is off.
    cache: Option<LruCache<Key, Bytes>>,
    /// Bytes of values (plus keys) in the cache.
    cache_used: usize,
    /// The cache's budget for this shard.
    cache_budget: usize,
    /// Entries with an expiry, so the sweep can skip shards without any.
    pub with_ttl: usize,
}

impl Shard {
    /// Inserts or replaces the entry for `key`, invalidating any cached value.
    /// Returns the entry it replaced.
    pub fn insert(&mut self, key: &[u8], entry: Entry) -> Option<Entry> {
        self.uncache(key);
        if entry.expire_at != 0 {
            self.with_ttl += 1;
        }
        let old = self.map.insert(Key::from_slice(key), entry);
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
        let old = self.map.remove(key);
        if let Some(old) = old
            && old.expire_at != 0
        {
            self.with_ttl -= 1;
        }
        old
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
            .map
            .iter()
            .filter(|(_, e)| e.expired(now))
            .map(|(k, _)| k.clone())
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
    /// Hash used to pick a shard (independent of the maps' own hashing).
    hasher: foldhash::fast::FixedState,
}

impl KeyDir {
    /// An empty keydir with a cache of `cache_bytes` in total (0 = no cache).
    pub fn new(cache_bytes: u64) -> KeyDir {
        let budget = (cache_bytes as usize) / SHARDS;
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    cache: (cache_bytes > 0).then(LruCache::unbounded),
                    cache_used: 0,
                    cache_budget: budget,
                    with_ttl: 0,
                })
            })
            .collect();
        KeyDir {
            shards,
            hasher: foldhash::fast::FixedState::with_seed(0x0063_6173_6b61_6465),
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
        self.shard(key).map.get(key).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Replaces every shard's entries with `fresh`'s, shard by shard, and
    /// empties the cache. Each key switches atomically.
    pub fn replace_with(&self, fresh: KeyDir) {
        for (mine, theirs) in self.shards.iter().zip(fresh.shards) {
            let theirs = theirs.into_inner();
            let mut s = mine.lock();
            s.map = theirs.map;
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
        assert!(s.map.is_empty());
    }
}
