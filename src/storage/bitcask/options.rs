//! Tuning options of the Bitcask engine, as they appear under `storage:` in
//! the YAML configuration. Every field has a documented default.

use serde::{Deserialize, Serialize};

use crate::storage::{Durability, Limits};

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
    /// Bytes of hot values kept in the LRU cache; 0 disables it. Default 64 MiB.
    pub cache_bytes: u64,
    /// Key and value size limits.
    pub limits: Limits,
    /// Background merge (compaction) settings.
    pub merge: MergeOptions,
    /// How often the background sweep looks for expired keys, in ms. Default 1000.
    pub sweep_interval_ms: u64,
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
