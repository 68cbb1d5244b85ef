//! Storage: the key-value engine one partition replica runs on.
//!
//! The [`Engine`] trait is the contract every layer above relies on; it has two
//! implementations: [`Bitcask`], the durable log-structured engine, and
//! [`Memory`], a plain in-memory map used as the reference model in tests.
//!
//! Durability contract (for [`Bitcask`]; see `docs/STORAGE.md`):
//! - a write that returned `Ok` survives a crash of the *process* under every
//!   [`Durability`] policy, because it has reached the operating system;
//! - it survives a crash of the *machine* once fsynced: before returning under
//!   [`Durability::Always`] (group commit), within `N` ms under
//!   [`Durability::EveryMs`], and whenever the OS decides under
//!   [`Durability::Never`];
//! - a write that returned `Err` was not applied and is never visible later.
//!
//! Time: expiry is an absolute wall-clock instant in milliseconds; engines
//! read "now" from a [`Clock`] so tests can move time by hand.

mod bitcask;
mod clock;
mod error;
mod histogram;
mod memory;
mod ops;
pub mod owner_only;

pub use bitcask::{
    BackgroundOptions, Bitcask, CommitCounts, Completion, Header, Kind, MergeOptions, MergeReport,
    Options, Record, Submitted, ValueCache, Workers,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result, Text};
pub use histogram::{BOUNDS_US, Histogram, HistogramSnapshot};
pub use memory::Memory;
pub use ops::{
    Current, Effect, ExpireFlags, ExpiryChange, Reply, WriteOp, Written, decide, parse_i64,
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// When a write must reach stable storage before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync before acknowledging; concurrent writers share one fsync.
    Always,
    /// fsync in the background every `N` milliseconds.
    EveryMs(u64),
    /// Never fsync explicitly; the operating system writes back when it likes.
    Never,
}

/// A precondition on a `set`, as Redis' `NX` / `XX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// Write unconditionally.
    #[default]
    Always,
    /// Write only if the key does not exist (`NX`).
    IfAbsent,
    /// Write only if the key exists (`XX`).
    IfPresent,
}

/// Options of a [`Engine::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Absolute expiry instant in Unix milliseconds; `None` keeps the key forever.
    pub expire_at_ms: Option<u64>,
    /// Precondition; when it does not hold nothing is written.
    pub condition: Condition,
}

/// The time to live of a key, as `TTL` answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// No such key (Redis answers -2).
    Missing,
    /// The key exists and never expires (Redis answers -1).
    Persistent,
    /// The key expires after this many milliseconds (always at least 1).
    ExpiresInMs(u64),
}

/// The absolute expiry of a key, as `EXPIRETIME` answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No such key (Redis answers -2).
    Missing,
    /// The key exists and never expires (Redis answers -1).
    Persistent,
    /// The key expires at this Unix time in ms.
    At(u64),
}

/// Upper bounds on what one record may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest key in bytes. Default 1024.
    pub max_key_bytes: usize,
    /// Longest value in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Checks a key against the limits: non-empty and not too long.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidInput("empty key".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::InvalidInput(format!(
                "key is {} bytes, the limit is {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Checks a value against the limits.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::InvalidInput(format!(
                "value is {} bytes, the limit is {}",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

/// A point-in-time summary of an engine, for `status` output and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Live keys in the keydir (expired keys not yet swept included).
    pub keys: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Bytes in segment files that merge would reclaim.
    pub dead_bytes: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Records written since open.
    pub records_written: u64,
    /// fsync calls on segment files since open.
    pub fsyncs: u64,
    /// Merges completed since open.
    pub merges: u64,
    /// Bytes of segments written by merges completed since open.
    pub merge_bytes_written: u64,
    /// Latency of the fsync calls on segment files since open.
    pub fsync_latency: HistogramSnapshot,
    /// Reads answered from the value cache since it was created. The cache
    /// is per node and shared by its engines: every engine of a node
    /// reports the same (node-wide) figure.
    pub cache_hits: u64,
    /// Reads of a live key whose value was not cached (read from disk),
    /// node-wide as `cache_hits`.
    pub cache_misses: u64,
    /// Values of records just written (local writes) offered to the value
    /// cache, node-wide as `cache_hits`. Not reads: neither hits nor misses.
    pub cache_fills: u64,
    /// Byte ranges found corrupt (checksum failure) at open; never served.
    pub corrupt_ranges: u64,
}

/// A key-value store for one partition replica.
///
/// Every method is safe to call from many threads. Methods may block on disk
/// I/O: async callers run them on a blocking thread, except `submit`,
/// `get_cached` and `ttl_cached`, which never do I/O (they decline what
/// would need it).
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, or `None` if it is absent or expired.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Writes `key = value`. Returns `false` (and writes nothing) when the
    /// precondition in `opts` does not hold.
    fn set(&self, key: &[u8], value: Bytes, opts: SetOptions) -> Result<bool>;

    /// Deletes `key`. Returns whether it existed (and was not expired).
    fn delete(&self, key: &[u8]) -> Result<bool>;

    /// Sets the absolute expiry of an existing key; an instant not in the
    /// future deletes the key. Returns whether the key existed.
    fn expire(&self, key: &[u8], expire_at_ms: u64) -> Result<bool>;

    /// The time to live of `key`.
    fn ttl(&self, key: &[u8]) -> Result<Ttl>;

    /// Decides and performs any [`WriteOp`] (blocking), deciding on the
    /// newest state of the key; see `storage/ops.rs` for each op's answer.
    fn write(&self, key: &[u8], op: WriteOp) -> Result<Written>;

    /// The absolute expiry of `key`. No I/O.
    fn expiry(&self, key: &[u8]) -> Result<Expiry>;

    /// How many live (not expired) keys the engine holds. No I/O.
    fn live_keys(&self) -> Result<u64> {
        Ok(self.keys()?.len() as u64)
    }

    /// Whether `key` exists and is not expired.
    fn exists(&self, key: &[u8]) -> Result<bool> {
        Ok(self.ttl(key)? != Ttl::Missing)
    }

    /// All live keys, in no particular order. Meant for tests and tools, not
    /// for the request path.
    fn keys(&self) -> Result<Vec<Bytes>>;

    /// Makes every acknowledged write durable (fsync), whatever the policy.
    fn flush(&self) -> Result<()>;

    /// A summary of the engine's state.
    fn status(&self) -> Result<Status>;

    /// The offset the next record will get, for engines with a log (`None`
    /// for the in-memory engine). Cheap: no I/O.
    fn log_end(&self) -> Option<u64> {
        None
    }

    /// Starts a write without blocking the calling thread on I/O (see
    /// [`Bitcask::submit`]); for callers on an async runtime. The default,
    /// for engines without such a path, is [`Submitted::Blocking`]: call
    /// the blocking method on a blocking thread.
    fn submit(&self, key: &[u8], op: &WriteOp) -> Result<Submitted> {
        let _ = (key, op);
        Ok(Submitted::Blocking)
    }

    /// [`Engine::submit`] of every op of `ops`, in order; once an op
    /// answers [`Submitted::Blocking`] the ops after it are not started and
    /// answer `Blocking` too (run the declined ones in order on a blocking
    /// thread). An engine may decide them together (Bitcask: one writer
    /// mutex take and one `write(2)` for all). The default submits them one
    /// by one.
    fn submit_many(&self, ops: &[(&[u8], &WriteOp)]) -> Vec<Result<Submitted>> {
        let mut out: Vec<Result<Submitted>> = Vec::with_capacity(ops.len());
        for (key, op) in ops {
            let blocked = matches!(out.last(), Some(Ok(Submitted::Blocking)));
            out.push(if blocked {
                Ok(Submitted::Blocking)
            } else {
                self.submit(key, op)
            });
        }
        out
    }

    /// [`Engine::get`] without I/O, for callers on an async runtime:
    /// `Some(answer)` when memory alone answers it (no such key, expired,
    /// or its value cached), `None` when the value must be read from disk
    /// (then call `get` on a blocking thread). The default never answers.
    fn get_cached(&self, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        let _ = key;
        Ok(None)
    }

    /// [`Engine::ttl`] without I/O, as [`Engine::get_cached`]. The default
    /// never answers.
    fn ttl_cached(&self, key: &[u8]) -> Result<Option<Ttl>> {
        let _ = key;
        Ok(None)
    }
}
