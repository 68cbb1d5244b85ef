//! The engines under test behind one small interface, with durability
//! settings matched as closely as each engine allows (see `docs/BENCHMARKS.md`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{Bitcask, Durability, Engine, MergeOptions, Options, SetOptions};

/// Result type of this crate: errors are reported, not handled.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The durability policy of a benchmark cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// fsync before acknowledging each write.
    Always,
    /// fsync in the background every second.
    EverySec,
    /// Never fsync explicitly.
    Never,
}

impl Policy {
    /// Every policy, in table order.
    pub const ALL: [Policy; 3] = [Policy::Always, Policy::EverySec, Policy::Never];

    /// Label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            Policy::Always => "always",
            Policy::EverySec => "every_ms: 1000",
            Policy::Never => "never",
        }
    }
}

/// Which engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// caskade's Bitcask.
    Caskade,
    /// fjall (LSM tree).
    Fjall,
    /// sled (Bw-tree-like log-structured B+tree).
    Sled,
    /// redb (copy-on-write B-tree).
    Redb,
}

impl Kind {
    /// Name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Caskade => "caskade",
            Kind::Fjall => "fjall",
            Kind::Sled => "sled",
            Kind::Redb => "redb",
        }
    }
}

/// Engine-side cache budget used for every engine (caskade's default).
pub const CACHE_BYTES: u64 = 64 << 20;

/// A point reader; engines that need per-thread read state keep it here.
pub trait Reader {
    /// Looks `key` up; returns the value length (or `None` when absent).
    fn get(&mut self, key: &[u8]) -> Option<usize>;
}

/// One engine instance.
pub trait Kv: Send + Sync {
    /// Writes `key = value` under the instance's durability policy.
    fn put(&self, key: &[u8], value: &Bytes);
    /// A reader for one thread.
    fn reader(&self) -> Box<dyn Reader + '_>;
    /// Bulk load of keys `0..n` (no durability needed), for get benchmarks.
    fn load(&self, n: u64, value: &Bytes) {
        for i in 0..n {
            self.put(&crate::key(i), value);
        }
    }
    /// `(records_written, fsyncs)` so far, if the engine counts them.
    fn counters(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Opens `kind` in `dir` with `policy`. `cache_bytes` applies to caskade only
/// (peers keep [`CACHE_BYTES`]).
pub fn open(kind: Kind, dir: &Path, policy: Policy, cache_bytes: u64) -> Res<Box<dyn Kv>> {
    Ok(match kind {
        Kind::Caskade => Box::new(Caskade::open(dir, policy, cache_bytes)?),
        Kind::Fjall => Box::new(Fjall::open(dir, policy)?),
        Kind::Sled => Box::new(Sled::open(dir, policy)?),
        Kind::Redb => Box::new(Redb::open(dir, policy)?),
    })
}

// ---------------------------------------------------------------- caskade

/// caskade's Bitcask.
pub struct Caskade(pub Bitcask);

impl Caskade {
    /// Opens with the policy mapped to `Durability`; automatic merge off so a
    /// merge never runs inside a throughput cell.
    pub fn open(dir: &Path, policy: Policy, cache_bytes: u64) -> Res<Caskade> {
        let fsync = match policy {
            Policy::Always => Durability::Always,
            Policy::EverySec => Durability::EveryMs(1000),
            Policy::Never => Durability::Never,
        };
        let opts = Options {
            fsync,
            cache_bytes,
            merge: MergeOptions {
                dead_ratio: 0.0,
                ..MergeOptions::default()
            },
            ..Options::default()
        };
        Ok(Caskade(Bitcask::open(dir, opts)?))
    }
}

struct CaskadeReader<'a>(&'a Bitcask);

impl Reader for CaskadeReader<'_> {
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.get(key).expect("caskade get").map(|v| v.len())
    }
}

impl Kv for Caskade {
    fn put(&self, key: &[u8], value: &Bytes) {
        self.0
            .set(key, value.clone(), SetOptions::default())
            .expect("caskade set");
    }
    fn reader(&self) -> Box<dyn Reader + '_> {
        Box::new(CaskadeReader(&self.0))
    }
    fn counters(&self) -> Option<(u64, u64)> {
        let s = self.0.status().expect("caskade status");
        Some((s.records_written, s.fsyncs))
    }
}

// ---------------------------------------------------------------- periodic sync

/// A background thread calling `sync` every second, for peers without a
/// built-in periodic fsync (fjall, redb).
struct Syncer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(sync: impl Fn() + Send + 'static) -> Syncer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut next = Instant::now() + Duration::from_secs(1);
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                if Instant::now() >= next {
                    sync();
                    next += Duration::from_secs(1);
                }
            }
        });
        Syncer {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- fjall

/// fjall: `always` = insert then `persist(SyncData)`; `every_ms` = insert
/// (journal flushed to the OS) plus a thread calling `persist(SyncData)`
/// every second; `never` = insert only.
pub struct Fjall {
    _syncer: Option<Syncer>,
    db: fjall::Database,
    ks: fjall::Keyspace,
    policy: Policy,
}

impl Fjall {
    fn open(dir: &Path, policy: Policy) -> Res<Fjall> {
        let db = fjall::Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .open()?;
        let ks = db.keyspace("kv", fjall::KeyspaceCreateOptions::default)?;
        let syncer = (policy == Policy::EverySec).then(|| {
            let db = db.clone();
            Syncer::start(move || {
                db.persist(fjall::PersistMode::SyncData)
                    .expect("fjall sync")
            })
        });
        Ok(Fjall {
            _syncer: syncer,
            db,
            ks,
            policy,
        })
    }
}

struct FjallReader<'a>(&'a fjall::Keyspace);

impl Reader for FjallReader<'_> {
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.get(key).expect("fjall get").map(|v| v.len())
    }
}

impl Kv for Fjall {
    fn put(&self, key: &[u8], value: &Bytes) {
        self.ks.insert(key, value.as_ref()).expect("fjall insert");
        if self.policy == Policy::Always {
            self.db
                .persist(fjall::PersistMode::SyncData)
                .expect("fjall persist");
        }
    }
    fn reader(&self) -> Box<dyn Reader + '_> {
        Box::new(FjallReader(&self.ks))
    }
}

// ---------------------------------------------------------------- sled

/// sled: `always` = insert then `flush()`; `every_ms` = `flush_every_ms(1000)`;
/// `never` = `flush_every_ms(None)`.
pub struct Sled {
    db: sled::Db,
    policy: Policy,
}

impl Sled {
    fn open(dir: &Path, policy: Policy) -> Res<Sled> {
        let every = match policy {
            Policy::EverySec => Some(1000),
            _ => None,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(every)
            .open()?;
        Ok(Sled { db, policy })
    }
}

struct SledReader<'a>(&'a sled::Db);

impl Reader for SledReader<'_> {
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.get(key).expect("sled get").map(|v| v.len())
    }
}

impl Kv for Sled {
    fn put(&self, key: &[u8], value: &Bytes) {
        self.db.insert(key, value.as_ref()).expect("sled insert");
        if self.policy == Policy::Always {
            self.db.flush().expect("sled flush");
        }
    }
    fn reader(&self) -> Box<dyn Reader + '_> {
        Box::new(SledReader(&self.db))
    }
}

// ---------------------------------------------------------------- redb

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

/// redb: one write transaction per put; `always` = `Durability::Immediate`;
/// `every_ms` = `Durability::None` plus a thread committing an empty
/// `Immediate` transaction every second (which makes the earlier
/// non-durable commits durable); `never` = `Durability::None`.
pub struct Redb {
    _syncer: Option<Syncer>,
    db: Arc<redb::Database>,
    policy: Policy,
}

impl Redb {
    fn open(dir: &Path, policy: Policy) -> Res<Redb> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(
            redb::Database::builder()
                .set_cache_size(CACHE_BYTES as usize)
                .create(dir.join("data.redb"))?,
        );
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        let syncer = (policy == Policy::EverySec).then(|| {
            let db = db.clone();
            Syncer::start(move || {
                let mut tx = db.begin_write().expect("redb begin_write");
                tx.set_durability(redb::Durability::Immediate)
                    .expect("redb durability");
                tx.commit().expect("redb commit");
            })
        });
        Ok(Redb {
            _syncer: syncer,
            db,
            policy,
        })
    }

    fn write(&self, items: impl Iterator<Item = [u8; 16]>, value: &[u8], durable: bool) {
        let mut tx = self.db.begin_write().expect("redb begin_write");
        let d = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        tx.set_durability(d).expect("redb durability");
        {
            let mut t = tx.open_table(TABLE).expect("redb open_table");
            for k in items {
                t.insert(&k[..], value).expect("redb insert");
            }
        }
        tx.commit().expect("redb commit");
    }
}

/// A redb reader keeps one read transaction's table for the whole run (the
/// most favourable way to use redb for point reads; nothing writes meanwhile).
struct RedbReader(redb::ReadOnlyTable<&'static [u8], &'static [u8]>);

impl Reader for RedbReader {
    fn get(&mut self, key: &[u8]) -> Option<usize> {
        self.0.get(key).expect("redb get").map(|v| v.value().len())
    }
}

impl Kv for Redb {
    fn put(&self, key: &[u8], value: &Bytes) {
        let k: [u8; 16] = key.try_into().expect("16-byte key");
        self.write(std::iter::once(k), value, self.policy == Policy::Always);
    }
    fn reader(&self) -> Box<dyn Reader + '_> {
        let tx = redb::ReadableDatabase::begin_read(self.db.as_ref()).expect("redb begin_read");
        Box::new(RedbReader(tx.open_table(TABLE).expect("redb open_table")))
    }
    fn load(&self, n: u64, value: &Bytes) {
        let mut i = 0;
        while i < n {
            let end = (i + 10_000).min(n);
            self.write((i..end).map(crate::key), value, false);
            i = end;
        }
        self.write(std::iter::empty(), value, true);
    }
}
