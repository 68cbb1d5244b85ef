//! The keydir: where the live (applied) version of every key is on disk, and
//! the engine's handle on the value cache ([`ValueCache`], shared by every
//! engine of a node).
//!
//! The keydir is split into [`SHARDS`] shards by a hash of the key, one
//! mutex each. A cached value is tagged with the location of the record it
//! was read from or written to and served only while the key's entry (read
//! under the shard mutex) still points there, so updating an entry needs no
//! cache invalidation and a stale value can never be served. A reader that
//! misses the cache reads the disk without any lock, then re-checks under
//! the shard mutex that the entry did not move before it fills the cache. A
//! local write offers its value ([`Shard::fill`]) in the same shard lock
//! scope that points the entry at its record (lock order: keydir shard,
//! then cache shard, as a lookup).
//!
//! Hash seeds are random (hash flooding): the shard choice and each
//! shard's table hash use per-keydir seeds and a per-process shared seed,
//! all drawn from the OS (`getrandom`), never fixed constants, so a client
//! cannot precompute keys that land in one shard or one bucket chain. The
//! keydir is rebuilt from disk at every open, so nothing persistent
//! depends on a seed.
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
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::cache::{self, ValueCache};
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

/// A written record's value to offer to the value cache: its key, where it
/// is, and the value (see [`KeyDir::fill`]).
pub type Fill = (Key, Entry, Bytes);

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
    hasher: SeedableRandomState,
    /// The value cache and this engine's id in it; `None` when caching is off.
    cache: Option<(ValueCache, u64)>,
    /// Entries with an expiry, so the sweep can skip shards without any.
    pub with_ttl: usize,
}

/// A hash builder with a fresh random per-hasher seed and this process's
/// random shared seed, both from the OS.
fn random_hasher() -> SeedableRandomState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random_u64()));
    SeedableRandomState::with_seed(os_random_u64(), shared)
}

/// 64 random bits from the OS. Should the OS source fail (it does not on
/// Linux once booted), falls back to foldhash's own per-process seeding,
/// which is randomized by address-space layout and the clock.
fn os_random_u64() -> u64 {
    let mut buf = [0u8; 8];
    match getrandom::getrandom(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => SeedableRandomState::random().hash_one(0u64),
    }
}

impl Shard {
    /// An empty shard using `cache`.
    fn new(cache: Option<(ValueCache, u64)>) -> Shard {
        Shard {
            index: HashTable::new_in(PageAlloc),
            slots: AVec::new_in(PageAlloc),
            free: Vec::new(),
            hasher: random_hasher(),
            cache,
            with_ttl: 0,
        }
    }

    /// The table hash of `key`.
    fn hash(hasher: &SeedableRandomState, key: &[u8]) -> u64 {
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

    /// Inserts or replaces the entry for `key` (a value cached for the old
    /// entry's location is no longer served). Returns the entry it replaced.
    pub fn insert(&mut self, key: &[u8], entry: Entry) -> Option<Entry> {
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

    /// Removes `key` (its cached value is no longer served). Returns its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
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

    /// The cached value of `key`'s live record, marking it recently used.
    #[cfg(test)]
    pub fn cached(&mut self, key: &[u8]) -> Option<Bytes> {
        let e = self.get(key)?;
        self.cached_at(key, e)
    }

    /// The cached value of `key`'s record at `entry`, marking it recently
    /// used: [`Shard::cached`] for a caller that has just found `entry`
    /// under this same lock, which saves a second probe of the table (a
    /// cold cache line per `GET`).
    pub fn cached_at(&mut self, key: &[u8], entry: Entry) -> Option<Bytes> {
        let (cache, engine) = self.cache.as_ref()?;
        cache.get(*engine, key, entry.seg, entry.pos)
    }

    /// Caches `value` as the value of `key`'s live record (a copy of it: the
    /// cache never pins the caller's read buffer). The caller has checked,
    /// under this shard's mutex, that the entry is the one it read.
    pub fn cache(&mut self, key: &[u8], value: &Bytes) {
        let Some((cache, engine)) = &self.cache else {
            return;
        };
        if let Some(e) = self.get(key) {
            cache.put(*engine, key, e.seg, e.pos, value);
        }
    }

    /// Offers `value`, the value of the record `entry` points at, just
    /// written and applied, to the value cache (a copy; a write-fill, not a
    /// miss). The caller holds this shard's mutex and has just made `entry`
    /// the key's entry.
    pub fn fill(&self, key: &[u8], entry: Entry, value: &[u8]) {
        if let Some((cache, engine)) = &self.cache {
            cache.fill(*engine, key, entry.seg, entry.pos, value);
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
    hasher: SeedableRandomState,
    /// The value cache and this engine's id in it (dropped from it with us).
    cache: Option<(ValueCache, u64)>,
}

impl KeyDir {
    /// An empty keydir with its own cache of `cache_bytes` (0 = no cache).
    #[cfg(test)]
    pub fn new(cache_bytes: u64) -> KeyDir {
        KeyDir::with_cache((cache_bytes > 0).then(|| ValueCache::new(cache_bytes)))
    }

    /// An empty keydir using `cache` (possibly shared with other engines).
    pub fn with_cache(cache: Option<ValueCache>) -> KeyDir {
        let engine = cache::engine_id();
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard::new(cache.clone().map(|c| (c, engine)))))
            .collect();
        KeyDir {
            shards,
            hasher: random_hasher(),
            cache: cache.map(|c| (c, engine)),
        }
    }

    /// An empty keydir without a cache that puts every key in the same
    /// shard as this one: the one to fill and hand to
    /// [`KeyDir::replace_with`] (the shard choice is seeded per keydir).
    pub fn empty_like(&self) -> KeyDir {
        KeyDir {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new(None))).collect(),
            hasher: self.hasher.clone(),
            cache: None,
        }
    }

    /// Hits and misses of the value cache (node-wide when it is shared);
    /// `(0, 0)` without a cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache.as_ref().map_or((0, 0), |(c, _)| c.stats())
    }

    /// Values offered to the value cache by writes (node-wide when it is
    /// shared); 0 without a cache.
    pub fn cache_fills(&self) -> u64 {
        self.cache.as_ref().map_or(0, |(c, _)| c.fills())
    }

    /// Offers `value`, the value of the written record at `entry`, to the
    /// value cache, without the keydir shard's mutex (the cache's location
    /// tag keeps a late fill from ever being served once the key moved).
    pub fn fill(&self, key: &[u8], entry: Entry, value: &[u8]) {
        if let Some((cache, engine)) = &self.cache {
            cache.fill(*engine, key, entry.seg, entry.pos, value);
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

    /// Replaces every shard's entries with `fresh`'s, shard by shard, then
    /// drops this engine's cached values. Each key switches atomically.
    /// `fresh` must come from [`KeyDir::empty_like`] on this keydir, or
    /// its keys would sit in shards this keydir never looks in.
    pub fn replace_with(&self, mut fresh: KeyDir) {
        for (mine, theirs) in self.shards.iter().zip(std::mem::take(&mut fresh.shards)) {
            let theirs = theirs.into_inner();
            let mut s = mine.lock();
            // The table was built with `fresh`'s table hash: it comes along.
            s.hasher = theirs.hasher;
            s.index = theirs.index;
            s.slots = theirs.slots;
            s.free = theirs.free;
            s.with_ttl = theirs.with_ttl;
        }
        // The fresh entries point at fresh segment ids, so no old value is
        // served; this only gives the memory back at once.
        if let Some((cache, engine)) = &self.cache {
            cache.purge(*engine);
        }
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        if let Some((cache, engine)) = &self.cache {
            cache.purge(*engine);
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

    /// The shard index `key` goes to in `kd`.
    fn shard_of(kd: &KeyDir, key: &[u8]) -> usize {
        let mut h = kd.hasher.build_hasher();
        key.hash(&mut h);
        std::hash::Hasher::finish(&h) as usize & (SHARDS - 1)
    }

    #[test]
    fn hash_seeds_are_random_per_keydir() {
        // With fixed seeds two keydirs put every key in the same shard and
        // give it the same table hash; with random ones, 64 keys agreeing
        // by chance has probability 64^-64.
        let (a, b) = (KeyDir::new(0), KeyDir::new(0));
        let keys: Vec<Vec<u8>> = (0..64u32)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        let same_shard = keys
            .iter()
            .filter(|k| shard_of(&a, k) == shard_of(&b, k))
            .count();
        assert!(
            same_shard < keys.len(),
            "shard choice is seeded identically"
        );
        let (sa, sb) = (a.shard_at(0), b.shard_at(0));
        let same_hash = keys
            .iter()
            .filter(|k| Shard::hash(&sa.hasher, k) == Shard::hash(&sb.hasher, k))
            .count();
        assert_eq!(same_hash, 0, "table hashes are seeded identically");
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
    fn a_new_entry_hides_the_cached_value() {
        let kd = KeyDir::new(1 << 20);
        let mut s = kd.shard(b"k");
        s.insert(b"k", entry(1, 0));
        s.cache(b"k", &Bytes::from_static(b"old"));
        assert_eq!(s.cached(b"k"), Some(Bytes::from_static(b"old")));
        let old = s.insert(b"k", entry(2, 0)).expect("replaced");
        // Asked with the entry it was cached at, the value is still found:
        // `cached_at` trusts its caller to pass the entry it just found.
        assert_eq!(s.cached_at(b"k", old), Some(Bytes::from_static(b"old")));
        assert_eq!(s.cached(b"k"), None, "the live entry is elsewhere");
        assert_eq!(s.cached_at(b"k", old), None, "the stale value was dropped");
        s.remove(b"k");
        s.cache(b"k", &Bytes::from_static(b"gone"));
        assert_eq!(s.cached(b"k"), None, "no entry, nothing cached");
    }

    #[test]
    fn engines_share_one_cache_and_drop_their_values() {
        let cache = ValueCache::new(1 << 20);
        let a = KeyDir::with_cache(Some(cache.clone()));
        let b = KeyDir::with_cache(Some(cache.clone()));
        for kd in [&a, &b] {
            let mut s = kd.shard(b"k");
            s.insert(b"k", entry(1, 0));
        }
        a.shard(b"k").cache(b"k", &Bytes::from_static(b"from a"));
        assert_eq!(b.shard(b"k").cached(b"k"), None, "same key, other engine");
        b.shard(b"k").cache(b"k", &Bytes::from_static(b"from b"));
        assert_eq!(cache.len(), 2);
        assert_eq!(a.shard(b"k").cached(b"k").as_deref(), Some(&b"from a"[..]));
        drop(a);
        assert_eq!(cache.len(), 1);
        assert_eq!(b.shard(b"k").cached(b"k").as_deref(), Some(&b"from b"[..]));
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
