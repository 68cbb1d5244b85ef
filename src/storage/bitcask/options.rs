//! Tuning options of the Bitcask engine, as they appear under `storage:` in
//! the YAML configuration. Every field has a documented default.

use serde::{Deserialize, Serialize};

use super::cache::ValueCache;
use super::workers::Workers;
use crate::storage::{Durability, Limits, Result};

/// Options of a [`super::Bitcask`] engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// When writes are fsynced (`fsync: always | never | {every_ms: N}`).
    /// Default `{every_ms: 1000}`, as Redis' `appendfsync everysec`.
    pub fsync: Durability,
    /// A segment file is sealed and a new one started once it reaches this
    /// size. Default 128 MiB; at most 2 GiB (positions are 32-bit).
    pub segment_bytes: u64,
    /// Bytes the LRU value cache may use, per node (all partitions share
    /// one cache; see [`Options::with_shared_cache`]), counting what the
    /// process really pays: values, keys, allocator and per-entry overhead.
    /// 0 disables it. Default 64 MiB.
    pub cache_bytes: u64,
    /// Key and value size limits.
    pub limits: Limits,
    /// Background merge (compaction) settings.
    pub merge: MergeOptions,
    /// How often the background sweep looks for expired keys, in ms. Default 1000.
    pub sweep_interval_ms: u64,
    /// The node's background threads, shared by all its engines.
    pub background: BackgroundOptions,
    /// The value cache to use, shared with the node's other engines; when
    /// `None` the engine makes its own of `cache_bytes`. Not configuration
    /// (never read from or written to YAML): set by whoever opens the
    /// engines, through [`Options::with_shared_cache`].
    #[serde(skip)]
    pub shared_cache: Option<ValueCache>,
    /// The background thread pool to use, shared with the node's other
    /// engines; when `None` the engine starts a private one (four threads).
    /// Not configuration: set through [`Options::with_shared_workers`].
    #[serde(skip)]
    pub shared_workers: Option<Workers>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: Durability::EveryMs(1000),
            segment_bytes: 128 << 20,
            cache_bytes: 64 << 20,
            limits: Limits::default(),
            merge: MergeOptions::default(),
            sweep_interval_ms: 1000,
            background: BackgroundOptions::default(),
            shared_cache: None,
            shared_workers: None,
        }
    }
}

impl Options {
    /// These options with one value cache of `cache_bytes` that every engine
    /// opened with them (or clones of them) shares: a per-node budget. Keeps
    /// a cache already set; none when `cache_bytes` is 0.
    pub fn with_shared_cache(&self) -> Options {
        let mut o = self.clone();
        if o.shared_cache.is_none() && o.cache_bytes > 0 {
            o.shared_cache = Some(ValueCache::new(o.cache_bytes));
        }
        o
    }

    /// These options with one background thread pool (sized by
    /// `background`, with a merge budget of `merge.bytes_per_sec`) that every
    /// engine opened with them (or clones of them) shares: a fixed number of
    /// threads per node, whatever its number of partitions. Keeps a pool
    /// already set. The threads stop when the last engine and the last
    /// clone of these options are dropped.
    pub fn with_shared_workers(&self) -> Result<Options> {
        let mut o = self.clone();
        if o.shared_workers.is_none() {
            o.shared_workers = Some(Workers::new(&o)?);
        }
        Ok(o)
    }

    /// The pool an engine opened with these options uses.
    pub(super) fn workers(&self) -> Result<Workers> {
        match &self.shared_workers {
            Some(w) => Ok(w.clone()),
            None => Workers::private(self),
        }
    }

    /// The cache an engine opened with these options uses.
    pub(super) fn value_cache(&self) -> Option<ValueCache> {
        match &self.shared_cache {
            Some(c) => Some(c.clone()),
            None => (self.cache_bytes > 0).then(|| ValueCache::new(self.cache_bytes)),
        }
    }
}

/// When and how fast the background merge runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeOptions {
    /// Run merge on its own when this fraction of the sealed segments' bytes
    /// is dead (overwritten, deleted or expired). Default 0.5; 0 disables
    /// automatic merges (on-demand merges still run).
    pub dead_ratio: f64,
    /// ... and at least this many bytes are dead. Default 64 MiB.
    pub min_dead_bytes: u64,
    /// Merge reads and writes at most this many bytes per second, so that
    /// foreground latency stays close to idle. Default 64 MiB/s; 0 = unlimited.
    pub bytes_per_sec: u64,
    /// How often the background thread checks whether to merge, in ms. Default 5000.
    pub check_interval_ms: u64,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            dead_ratio: 0.5,
            min_dead_bytes: 64 << 20,
            bytes_per_sec: 64 << 20,
            check_interval_ms: 5000,
        }
    }
}

/// Sizes of the node's background thread pool (see [`Workers`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundOptions {
    /// Threads that lead the group commits of submitted writes (`always`)
    /// and run the periodic fsync (`every_ms`) of all the node's engines.
    /// 0 = from the number of cores, between 2 and 4. Default 0.
    pub commit_threads: usize,
    /// Threads that run merges (their bytes/s budget is per node). Default 1.
    pub merge_threads: usize,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            commit_threads: 0,
            merge_threads: 1,
        }
    }
}

impl BackgroundOptions {
    /// The number of commit workers to start.
    pub fn commit_threads(&self) -> usize {
        match self.commit_threads {
            0 => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 4),
            n => n,
        }
    }
}
