//! A node: the partition replicas this process hosts, and the routing of
//! each request to the replica of the key's partition.
//!
//! Request path (the same in standalone and, later, in a cluster):
//! validate at the edge (key and value limits, TTL range) -> hash the key to
//! its partition ([`crate::cluster::partition_for`]) -> ask the
//! [`Coordinator`] for this node's role (`NOT_LEADER` otherwise; for
//! `acks: all`, `NOT_ENOUGH_REPLICAS` when the ISR is too small) -> offer
//! a write to the engine's group commit and await it ([`Engine::submit`]:
//! no I/O on the caller's thread; Bitcask takes it under `fsync: always`),
//! answer a read from memory when memory knows the answer
//! ([`Engine::get_cached`], [`Engine::ttl_cached`]), or else run the engine
//! call on tokio's blocking pool; a runtime worker never does disk I/O.
//!
//! Data directory layout:
//!
//! ```text
//! <data_dir>/LOCK               exclusive advisory lock held while the node runs
//! <data_dir>/layout.yaml        {format: 1, partitioner: fnv1a64-mod, partitions: N}
//! <data_dir>/partitions/<p>/    partition p's engine directory
//! ```
//!
//! Standalone, every partition is opened (and led) here. In a cluster only
//! the partitions assigned to this node are: those whose directory exists
//! at startup, then those the [`ReplicaManager`] learns are assigned here;
//! it closes the engine of a partition no longer assigned and keeps its
//! directory. A request for a partition not hosted here answers
//! `NOT_LEADER` naming its leader (the server forwards it).
//!
//! Invariants:
//! - at most one process serves a data directory (the `LOCK` file);
//! - in a cluster, the engines open are those of the partitions hosted
//!   here (`ReplicaManager::hosted_ids`); reads, `status` and `flush` see
//!   only those;
//! - the partition count of a data directory never changes (`layout.yaml`
//!   is checked at open), so a key always finds its partition;
//! - every TTL becomes an absolute instant `now + ttl` that fits in a signed
//!   64-bit millisecond count, computed with the engines' own clock;
//! - in a cluster, a leader's answers, to reads and to state-dependent
//!   writes (`del`'s count, `set` NX/XX, `expire`'s "existed"), are decided
//!   only on a state that includes every record of the log it took over
//!   with. `consistency: leader` reads (`get`, `ttl`, `exists`, cached or
//!   not) pass [`Node::barrier`] first. Writes do not need it: the engine
//!   decides them on the newest record of the key in its whole log, applied
//!   or not (see `ReplicaManager::write`), which is the state the barrier
//!   waits for; waiting for it would only delay the same answer.
//! - the Redis string operations (`INCRBY`, `APPEND`, `SET GET`, `MSET`, ...)
//!   live in `node/ops.rs` and follow the same rule; their own invariants are
//!   written there.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fs4::FileExt;
use serde::{Deserialize, Serialize};

mod ops;

pub use ops::{ExpireTime, GetExpiry, SetOutcome, SetWith};

use crate::cluster::{
    Coordinator, NodeAddr, NodeInfo, PARTITIONER, PartitionState, Role, partition_for,
};
use crate::config::{Config, EngineKind};
use crate::error::{Error, Result};
use crate::replication::{Engines, ReplicaLog, ReplicaManager};
use crate::storage::{
    self, Clock, Condition, Engine, Limits, SetOptions, Submitted, Ttl, WriteOp, owner_only,
};

/// How many replicas must have a write before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acks {
    /// The partition leader has applied it.
    Leader,
    /// Every in-sync replica has it, and there are at least `min_insync`.
    All,
}

/// Which replica may answer a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The partition leader, committed data only.
    Leader,
    /// Any replica, possibly stale.
    Any,
}

/// Options of a [`Node::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetArgs {
    /// Relative time to live in ms; `None` = no expiry. Must be at least 1.
    pub ttl_ms: Option<u64>,
    /// Precondition (NX / XX).
    pub condition: Condition,
    /// Required acknowledgement.
    pub acks: Acks,
}

/// One partition replica hosted here.
pub struct Replica {
    /// Partition id.
    pub partition: u32,
    /// Its storage engine.
    pub engine: Arc<dyn Engine>,
}

/// Contents of `layout.yaml`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    /// Layout format version, 1.
    format: u32,
    /// Name of the key -> partition scheme.
    partitioner: String,
    /// Partition count.
    partitions: u32,
}

/// The partitions this process hosts and the rules to reach them.
pub struct Node {
    /// This node as clients see it.
    info: NodeInfo,
    /// Number of partitions in the cluster.
    partition_count: u32,
    /// Standalone: every partition's replica, indexed by partition id.
    /// Cluster: empty; the [`ReplicaManager`] holds the replicas hosted
    /// here, which change with this node's assignments.
    replicas: Vec<Replica>,
    /// Who leads what.
    coordinator: Arc<dyn Coordinator>,
    /// Key and value limits checked at the edge.
    limits: Limits,
    /// The clock the engines use; TTLs are converted with it.
    clock: Arc<dyn Clock>,
    /// The data directory.
    data_dir: PathBuf,
    /// Cluster mode: the replication of every partition (`None` standalone).
    replication: Option<Arc<ReplicaManager>>,
    /// Cluster mode: this node's ZooKeeper session, for the admin RPCs
    /// (reassignment); `None` standalone.
    zk: Option<Arc<crate::cluster::ZkCluster>>,
    /// Holds the directory lock for the node's lifetime.
    _lock: File,
}

impl Node {
    /// Opens a standalone node: locks `config.data_dir`, checks its layout,
    /// opens one engine per partition and leads them all.
    /// `client_addr` is the address advertised to clients.
    pub fn open_standalone(
        config: &Config,
        client_addr: String,
        clock: Arc<dyn Clock>,
    ) -> Result<Node> {
        let info = NodeInfo {
            id: config.node_id.clone(),
            client_addr,
        };
        let coordinator = Arc::new(crate::cluster::LocalCoordinator::new(
            info.clone(),
            config.partitions,
        ));
        Self::open(config, info, coordinator, clock)
    }

    /// Opens a node hosting every partition, with leadership decided by
    /// `coordinator`.
    pub fn open(
        config: &Config,
        info: NodeInfo,
        coordinator: Arc<dyn Coordinator>,
        clock: Arc<dyn Clock>,
    ) -> Result<Node> {
        // One value cache and one background pool for the node (per-node budgets).
        let storage = config.storage.with_shared_cache().with_shared_workers()?;
        let (lock, replicas) = Self::open_partitions(config, |pdir| {
            open_engine(config.engine, pdir, &storage, clock.clone())
        })?;
        Ok(Node {
            info,
            partition_count: config.partitions,
            replicas,
            coordinator,
            limits: config.storage.limits,
            clock,
            data_dir: config.data_dir.clone(),
            replication: None,
            zk: None,
            _lock: lock,
        })
    }

    /// Opens a cluster node: the engines (replica mode: records visible
    /// once committed) of the partitions whose directory exists, led and
    /// followed as the [`ReplicaManager`] decides; the manager then opens
    /// the engines of the partitions assigned to this node and closes
    /// those no longer assigned to it, as it learns their states.
    /// `me` carries the advertised addresses. Nothing leads until the
    /// ZooKeeper layer is attached to the manager.
    pub fn open_cluster(
        config: &Config,
        me: NodeAddr,
        clock: Arc<dyn Clock>,
    ) -> Result<(Node, Arc<ReplicaManager>)> {
        let cluster = config.cluster.clone().ok_or_else(|| {
            Error::InvalidInput("cluster mode needs a `cluster:` configuration section".into())
        })?;
        let dir = &config.data_dir;
        owner_only::create_dir_all(dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        restrict_data_dir(dir)?;
        let lock = lock_dir(dir)?;
        check_layout(dir, config.partitions)?;
        let engines = Arc::new(PartitionDirs {
            dir: dir.join("partitions"),
            // One value cache and one background pool for the node (per-node budgets).
            storage: config.storage.with_shared_cache().with_shared_workers()?,
            clock: clock.clone(),
            open: parking_lot::Mutex::new(std::collections::HashMap::new()),
        });
        let mut open = Vec::new();
        for p in 0..config.partitions {
            if engines.dir.join(p.to_string()).is_dir() {
                open.push((p, engines.open(p)?));
            }
        }
        let wait = std::time::Duration::from_millis(config.server.request_timeout_ms);
        // Header (33 bytes) plus a maximal key and value, rounded up.
        let max_record =
            config.storage.limits.max_key_bytes + config.storage.limits.max_value_bytes + 64;
        let manager = ReplicaManager::hosting(
            me.clone(),
            cluster,
            config.partitions,
            engines,
            open,
            wait,
            max_record,
        );
        let node = Node {
            info: NodeInfo {
                id: me.id,
                client_addr: me.client_addr,
            },
            partition_count: config.partitions,
            replicas: Vec::new(),
            coordinator: manager.clone(),
            limits: config.storage.limits,
            clock,
            data_dir: config.data_dir.clone(),
            replication: Some(manager.clone()),
            zk: None,
            _lock: lock,
        };
        Ok((node, manager))
    }

    /// Locks the data directory, checks its layout and opens each
    /// partition's engine with `open`.
    fn open_partitions(
        config: &Config,
        mut open: impl FnMut(&Path) -> storage::Result<Arc<dyn Engine>>,
    ) -> Result<(File, Vec<Replica>)> {
        let dir = &config.data_dir;
        owner_only::create_dir_all(dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        restrict_data_dir(dir)?;
        let lock = lock_dir(dir)?;
        check_layout(dir, config.partitions)?;
        let mut replicas = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let pdir = dir.join("partitions").join(p.to_string());
            owner_only::create_dir_all(&pdir).map_err(|e| {
                Error::Unavailable(format!(
                    "cannot create partition directory {}: {e}",
                    pdir.display()
                ))
            })?;
            let engine = open(&pdir).map_err(|e| {
                Error::Unavailable(format!(
                    "cannot open partition {p} in {}: {e}",
                    pdir.display()
                ))
            })?;
            replicas.push(Replica {
                partition: p,
                engine,
            });
        }
        Ok((lock, replicas))
    }

    /// This node's id and client address.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The key and value limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// `"standalone"` or `"cluster"`.
    pub fn mode(&self) -> &'static str {
        self.coordinator.mode()
    }

    /// Gives the admin RPCs this node's ZooKeeper session (cluster mode).
    pub fn attach_zk(&mut self, zk: Arc<crate::cluster::ZkCluster>) {
        self.zk = Some(zk);
    }

    /// This node's ZooKeeper session; `FAILED_PRECONDITION` standalone.
    pub fn zk(&self) -> Result<&Arc<crate::cluster::ZkCluster>> {
        self.zk.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "reassignment needs a cluster: this node runs standalone (no `cluster:` section)"
                    .into(),
            )
        })
    }

    /// Node id of the controller, when there is one.
    pub fn controller(&self) -> Option<String> {
        self.coordinator.controller()
    }

    /// The nodes and the state of every partition, for `Metadata`.
    pub fn metadata(&self) -> (Vec<NodeInfo>, Vec<PartitionState>) {
        let mut partitions = self.coordinator.partitions();
        if self.replication.is_none() {
            // Standalone: every write is committed once written, so the
            // high watermark is the log end.
            for p in &mut partitions {
                let end = self
                    .replicas
                    .get(p.id as usize)
                    .and_then(|r| r.engine.log_end());
                if let Some(end) = end {
                    p.high_watermark = end;
                    p.offsets = vec![(self.info.id.clone(), end)];
                }
            }
        }
        (self.coordinator.nodes(), partitions)
    }

    /// Writes `key = value`. Returns false when the condition did not hold.
    pub async fn set(&self, key: Bytes, value: Bytes, args: SetArgs) -> Result<bool> {
        self.limits.check_key(&key)?;
        self.limits.check_value(&value)?;
        let expire_at_ms = match args.ttl_ms {
            None => None,
            Some(0) => return Err(Error::InvalidInput("TTL must be at least 1 ms".into())),
            Some(ttl) => Some(self.expire_at(ttl)?),
        };
        let opts = SetOptions {
            expire_at_ms,
            condition: args.condition,
        };
        if let Some(r) = &self.replication {
            let p = partition_for(&key, self.partition_count);
            return r.write(p, key, WriteOp::Set(value, opts), args.acks).await;
        }
        let engine = self.writable(&key, args.acks)?;
        write(engine, key, WriteOp::Set(value, opts)).await
    }

    /// Reads `key`.
    pub async fn get(&self, key: Bytes, consistency: Consistency) -> Result<Option<Bytes>> {
        self.limits.check_key(&key)?;
        let engine = self.readable(&key, consistency)?;
        self.barrier(&key, consistency).await?;
        if let Some(answer) = engine.get_cached(&key)? {
            return Ok(answer);
        }
        blocking(move || engine.get(&key)).await
    }

    /// Deletes `keys`; returns how many existed.
    pub async fn del(&self, keys: Vec<Bytes>, acks: Acks) -> Result<u64> {
        if let Some(r) = &self.replication {
            // Validate every key first, so a bad one fails the request as a
            // whole before anything is written.
            // and leadership of every key's partition is checked before
            // anything is written.
            let targets = self.many(keys, |key| self.writable(key, acks))?;
            let total = targets.len();
            let mut deleted = 0;
            for (done, (_, key)) in targets.into_iter().enumerate() {
                let p = partition_for(&key, self.partition_count);
                match r.write(p, key, WriteOp::Delete, acks).await {
                    Ok(existed) => deleted += u64::from(existed),
                    Err(e) => return Err(e.after_partial_write(done, total)),
                }
            }
            return Ok(deleted);
        }
        let targets = self.many(keys, |key| self.writable(key, acks))?;
        // Submit the deletes before awaiting any, so they share group
        // commits. From the first one the engine declines on, the rest run
        // in order in one blocking call (one hand-off, not one per key).
        let mut deleted = 0;
        let mut queued = Vec::with_capacity(targets.len());
        let mut rest = Vec::new();
        for (engine, key) in targets {
            if !rest.is_empty() {
                rest.push((engine, key));
                continue;
            }
            match engine.submit(&key, &WriteOp::Delete)? {
                Submitted::Done(w) => deleted += u64::from(w.done),
                Submitted::Queued(c) => queued.push(c),
                Submitted::Blocking => rest.push((engine, key)),
            }
        }
        for c in queued {
            deleted += u64::from(c.wait().await?.done);
        }
        if !rest.is_empty() {
            deleted += blocking(move || {
                let mut n = 0;
                for (engine, key) in rest {
                    n += u64::from(engine.delete(&key)?);
                }
                Ok(n)
            })
            .await?;
        }
        Ok(deleted)
    }

    /// Makes `key` expire `ttl_ms` from now (0: delete it now). Returns
    /// whether the key existed.
    pub async fn expire(&self, key: Bytes, ttl_ms: u64, acks: Acks) -> Result<bool> {
        self.limits.check_key(&key)?;
        let at = if ttl_ms == 0 {
            self.clock.now_ms()
        } else {
            self.expire_at(ttl_ms)?
        };
        if let Some(r) = &self.replication {
            let p = partition_for(&key, self.partition_count);
            return r.write(p, key, WriteOp::Expire(at), acks).await;
        }
        let engine = self.writable(&key, acks)?;
        write(engine, key, WriteOp::Expire(at)).await
    }

    /// The time to live of `key`.
    pub async fn ttl(&self, key: Bytes, consistency: Consistency) -> Result<Ttl> {
        self.limits.check_key(&key)?;
        let engine = self.readable(&key, consistency)?;
        self.barrier(&key, consistency).await?;
        if let Some(ttl) = engine.ttl_cached(&key)? {
            return Ok(ttl);
        }
        blocking(move || engine.ttl(&key)).await
    }

    /// How many of `keys` exist (a repeated key counts each time).
    pub async fn exists(&self, keys: Vec<Bytes>, consistency: Consistency) -> Result<u64> {
        let targets = self.many(keys, |key| self.readable(key, consistency))?;
        for (_, key) in &targets {
            self.barrier(key, consistency).await?;
        }
        let mut count = 0;
        let mut uncached = Vec::new();
        for (engine, key) in targets {
            match engine.ttl_cached(&key)? {
                Some(ttl) => count += u64::from(ttl != Ttl::Missing),
                None => uncached.push((engine, key)),
            }
        }
        if uncached.is_empty() {
            return Ok(count);
        }
        blocking(move || {
            for (engine, key) in uncached {
                count += u64::from(engine.exists(&key)?);
            }
            Ok(count)
        })
        .await
    }

    /// The engines of the partitions hosted here, by partition id
    /// (standalone: all; cluster: those open now).
    fn engines(&self) -> Vec<(u32, Arc<dyn Engine>)> {
        match &self.replication {
            Some(r) => r
                .hosted_ids()
                .into_iter()
                .filter_map(|p| r.engine(p).ok().map(|e| (p, e)))
                .collect(),
            None => self
                .replicas
                .iter()
                .map(|r| (r.partition, r.engine.clone()))
                .collect(),
        }
    }

    /// Ids of the partitions hosted here, ascending (standalone: all).
    pub fn hosted(&self) -> Vec<u32> {
        self.engines().into_iter().map(|(p, _)| p).collect()
    }

    /// fsyncs every partition hosted here (used on shutdown).
    pub async fn flush(&self) -> Result<()> {
        let engines: Vec<_> = self.engines().into_iter().map(|(_, e)| e).collect();
        blocking(move || {
            for engine in engines {
                engine.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Engine status of every partition hosted here, by partition id.
    pub async fn status(&self) -> Result<Vec<(u32, storage::Status)>> {
        let engines = self.engines();
        blocking(move || engines.iter().map(|(p, e)| Ok((*p, e.status()?))).collect()).await
    }

    /// In a cluster, a leader read waits until the leader has committed the
    /// log it took over with (see [`ReplicaManager::read_barrier`]): reads
    /// answer from the applied keydir, which lags the log until then.
    /// Every `consistency: leader` read path calls it before it looks at
    /// the engine, the cached fast paths included.
    async fn barrier(&self, key: &[u8], consistency: Consistency) -> Result<()> {
        match (&self.replication, consistency) {
            (Some(r), Consistency::Leader) => {
                r.read_barrier(partition_for(key, self.partition_count))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// `now + ttl_ms`, refused when it does not fit a signed 64-bit count of
    /// milliseconds (as Redis refuses such TTLs).
    fn expire_at(&self, ttl_ms: u64) -> Result<u64> {
        self.clock
            .now_ms()
            .checked_add(ttl_ms)
            .filter(|&at| at <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidInput(format!("TTL of {ttl_ms} ms is out of range")))
    }

    /// Validates every key and resolves its engine, all before any is
    /// touched, so a multi-key request fails as a whole.
    fn many(
        &self,
        keys: Vec<Bytes>,
        resolve: impl Fn(&[u8]) -> Result<Arc<dyn Engine>>,
    ) -> Result<Vec<(Arc<dyn Engine>, Bytes)>> {
        if keys.is_empty() {
            return Err(Error::InvalidInput("at least one key is required".into()));
        }
        // Every key is valid before any is resolved: a bad key fails the
        // request as INVALID_ARGUMENT, never as NOT_LEADER for an earlier
        // key (which would make a router write that key elsewhere first).
        for key in &keys {
            self.limits.check_key(key)?;
        }
        keys.into_iter()
            .map(|key| Ok((resolve(&key)?, key)))
            .collect()
    }

    /// The engine for a write to `key`, if this node leads its partition and
    /// can satisfy `acks`.
    fn writable(&self, key: &[u8], acks: Acks) -> Result<Arc<dyn Engine>> {
        let p = partition_for(key, self.partition_count);
        match self.coordinator.role(p) {
            Role::Leader {
                isr, min_insync, ..
            } => {
                if acks == Acks::All && isr < min_insync {
                    return Err(Error::NotEnoughReplicas {
                        partition: p,
                        isr,
                        min_insync,
                    });
                }
                self.replica(p)
            }
            Role::NotLeader { leader } => Err(Error::NotLeader {
                partition: p,
                leader,
            }),
        }
    }

    /// The engine for a read of `key` at `consistency`.
    fn readable(&self, key: &[u8], consistency: Consistency) -> Result<Arc<dyn Engine>> {
        let p = partition_for(key, self.partition_count);
        match (self.coordinator.role(p), consistency) {
            (Role::Leader { .. }, _) | (Role::NotLeader { .. }, Consistency::Any) => {
                self.replica(p)
            }
            (Role::NotLeader { leader }, Consistency::Leader) => Err(Error::NotLeader {
                partition: p,
                leader,
            }),
        }
    }

    /// The local replica of partition `p`; in a cluster, `NOT_LEADER`
    /// naming the leader when it is not hosted here.
    fn replica(&self, p: u32) -> Result<Arc<dyn Engine>> {
        if let Some(r) = &self.replication {
            return r.engine(p);
        }
        self.replicas
            .get(p as usize)
            .map(|r| r.engine.clone())
            .ok_or_else(|| Error::Internal(format!("partition {p} is not hosted on this node")))
    }
}

/// Performs one write: submitted to the engine's group commit when it
/// takes it (no thread hand-off; the completion is awaited), otherwise run
/// on the blocking pool. Returns the write's answer.
async fn write(engine: Arc<dyn Engine>, key: Bytes, op: WriteOp) -> Result<bool> {
    Ok(write_op(engine, key, op).await?.done)
}

/// [`write`] with the whole answer (old value, number).
async fn write_op(engine: Arc<dyn Engine>, key: Bytes, op: WriteOp) -> Result<storage::Written> {
    match engine.submit(&key, &op)? {
        Submitted::Done(w) => Ok(w),
        Submitted::Queued(c) => Ok(c.wait().await?),
        Submitted::Blocking => blocking(move || engine.write(&key, op)).await,
    }
}

/// Runs blocking engine work on tokio's blocking pool and maps its error.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> storage::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Error::from),
        Err(e) => Err(Error::Internal(format!("storage task failed: {e}"))),
    }
}

/// The partition directories of a cluster node (`<data_dir>/partitions`):
/// the [`ReplicaManager`] opens and closes their engines as this node's
/// assignments change. A partition this node was removed from has its
/// directory deleted (`replication/hosting.rs`).
struct PartitionDirs {
    /// `<data_dir>/partitions`.
    dir: PathBuf,
    /// Engine options (with the node's shared value cache).
    storage: storage::Options,
    /// The engines' clock.
    clock: Arc<dyn Clock>,
    /// The engines open now, by partition id, to close them explicitly
    /// (off the runtime) rather than wherever the last handle drops.
    open: parking_lot::Mutex<std::collections::HashMap<u32, Arc<storage::Bitcask>>>,
}

impl Engines for PartitionDirs {
    fn open(&self, p: u32) -> Result<Arc<dyn ReplicaLog>> {
        let pdir = self.dir.join(p.to_string());
        owner_only::create_dir_all(&pdir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create partition directory {}: {e}",
                pdir.display()
            ))
        })?;
        let engine =
            storage::Bitcask::open_replica(&pdir, self.storage.clone(), self.clock.clone())
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "cannot open partition {p} in {}: {e}",
                        pdir.display()
                    ))
                })?;
        let engine = Arc::new(engine);
        self.open.lock().insert(p, engine.clone());
        Ok(engine)
    }

    fn close(&self, p: u32, _log: &Arc<dyn ReplicaLog>) -> Result<()> {
        let engine = self.open.lock().remove(&p);
        match engine {
            Some(e) => Ok(e.close()?),
            None => Ok(()),
        }
    }

    fn remove(&self, p: u32) -> Result<()> {
        let pdir = self.dir.join(p.to_string());
        let gone = |e: std::io::Error| {
            Error::Unavailable(format!("cannot delete {}: {e}", pdir.display()))
        };
        match fs::remove_dir_all(&pdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(gone(e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(gone)
    }
}

/// Opens the engine of one partition. Switching the durable engine in is
/// this one function.
fn open_engine(
    kind: EngineKind,
    dir: &Path,
    options: &storage::Options,
    clock: Arc<dyn Clock>,
) -> storage::Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Bitcask => Ok(Arc::new(storage::Bitcask::open_with_clock(
            dir,
            options.clone(),
            clock,
        )?)),
        EngineKind::Memory => Ok(Arc::new(storage::Memory::new(clock, options.limits))),
    }
}

/// Makes the data directory private (`0700`) if it is not, with a warning.
fn restrict_data_dir(dir: &Path) -> Result<()> {
    match owner_only::restrict_dir(dir) {
        Ok(None) => Ok(()),
        Ok(Some(was)) => {
            tracing::warn!(
                "data directory {} was mode {was:04o}, readable by other users; set to 0700",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(Error::Unavailable(format!(
            "cannot make data directory {} private: {e}",
            dir.display()
        ))),
    }
}

/// Takes the exclusive lock on `<dir>/LOCK`.
fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = owner_only::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    // Qualified: std's inherent `File::try_lock` needs a newer rustc than
    // the workspace's rust-version.
    match FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(Error::Unavailable(format!(
            "data directory {} is in use by another caskade-server (lock on {} is held)",
            dir.display(),
            path.display()
        ))),
        Err(fs4::TryLockError::Error(e)) => Err(Error::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `layout.yaml` on first open; afterwards checks the partition
/// count has not changed.
fn check_layout(dir: &Path, partitions: u32) -> Result<()> {
    let path = dir.join("layout.yaml");
    let wanted = Layout {
        format: 1,
        partitioner: PARTITIONER.into(),
        partitions,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found: Layout = serde_yaml_ng::from_str(&text)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            if found.partitions != partitions {
                return Err(Error::InvalidInput(format!(
                    "data directory {} holds {} partitions but the configuration asks for {}; \
                     the partition count cannot change (keys would move)",
                    dir.display(),
                    found.partitions,
                    partitions
                )));
            }
            if found != wanted {
                return Err(Error::Corrupt(format!(
                    "{}: unsupported layout {found:?}",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_yaml_ng::to_string(&wanted)
                .map_err(|e| Error::Internal(format!("cannot encode layout: {e}")))?;
            write_durably(&path, text.as_bytes())
                .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))
        }
        Err(e) => Err(Error::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes a small file atomically: temp file, fsync, rename, fsync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = owner_only::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ManualClock;

    fn node(dir: &Path, clock: Arc<ManualClock>) -> Node {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        Node::open_standalone(&config, "127.0.0.1:7379".into(), clock).unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    const SET: SetArgs = SetArgs {
        ttl_ms: None,
        condition: Condition::Always,
        acks: Acks::All,
    };

    #[tokio::test]
    async fn commands_and_ttl_with_a_manual_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let n = node(dir.path(), clock.clone());
        assert!(n.set(b("a"), b("1"), SET).await.unwrap());
        assert_eq!(
            n.get(b("a"), Consistency::Leader).await.unwrap(),
            Some(b("1"))
        );
        let nx = SetArgs {
            condition: Condition::IfAbsent,
            ..SET
        };
        assert!(!n.set(b("a"), b("2"), nx).await.unwrap());
        assert_eq!(
            n.ttl(b("a"), Consistency::Any).await.unwrap(),
            Ttl::Persistent
        );
        assert!(n.expire(b("a"), 1500, Acks::Leader).await.unwrap());
        assert_eq!(
            n.ttl(b("a"), Consistency::Leader).await.unwrap(),
            Ttl::ExpiresInMs(1500)
        );
        clock.advance(1500);
        assert_eq!(n.get(b("a"), Consistency::Leader).await.unwrap(), None);
        assert_eq!(
            n.ttl(b("a"), Consistency::Leader).await.unwrap(),
            Ttl::Missing
        );
        n.set(b("x"), b("1"), SET).await.unwrap();
        n.set(b("y"), b("1"), SET).await.unwrap();
        let keys = vec![b("x"), b("y"), b("x"), b("z")];
        assert_eq!(
            n.exists(keys.clone(), Consistency::Leader).await.unwrap(),
            3
        );
        assert_eq!(n.del(keys, Acks::All).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn edge_validation_messages() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path(), Arc::new(ManualClock::new(5)));
        let err = |r: Result<bool>| r.unwrap_err().to_string();
        assert_eq!(err(n.set(b(""), b("v"), SET).await), "empty key");
        assert_eq!(
            err(n.set(Bytes::from(vec![b'k'; 1025]), b("v"), SET).await),
            "key is 1025 bytes, the limit is 1024"
        );
        assert_eq!(
            err(n
                .set(b("k"), Bytes::from(vec![0; (1 << 20) + 1]), SET)
                .await),
            "value is 1048577 bytes, the limit is 1048576"
        );
        let ttl = |ms| SetArgs {
            ttl_ms: Some(ms),
            ..SET
        };
        assert_eq!(
            err(n.set(b("k"), b("v"), ttl(0)).await),
            "TTL must be at least 1 ms"
        );
        assert_eq!(
            err(n.set(b("k"), b("v"), ttl(u64::MAX)).await),
            "TTL of 18446744073709551615 ms is out of range"
        );
        assert_eq!(
            err(n.expire(b("k"), i64::MAX as u64, Acks::All).await),
            "TTL of 9223372036854775807 ms is out of range"
        );
        assert_eq!(
            n.del(vec![], Acks::All).await.unwrap_err().to_string(),
            "at least one key is required"
        );
    }

    /// A coordinator with one fixed role for every partition: the
    /// cluster-facing paths of the node, driven without a cluster.
    struct FixedRole(Role);

    impl Coordinator for FixedRole {
        fn mode(&self) -> &'static str {
            "cluster"
        }
        fn role(&self, _partition: u32) -> Role {
            self.0.clone()
        }
        fn nodes(&self) -> Vec<NodeInfo> {
            Vec::new()
        }
        fn partitions(&self) -> Vec<PartitionState> {
            Vec::new()
        }
    }

    fn node_with(dir: &Path, role: Role) -> Node {
        let config = Config {
            data_dir: dir.to_path_buf(),
            engine: EngineKind::Memory,
            ..Config::default()
        };
        let info = NodeInfo {
            id: "n2".into(),
            client_addr: "10.0.0.2:7379".into(),
        };
        Node::open(
            &config,
            info,
            Arc::new(FixedRole(role)),
            Arc::new(ManualClock::new(0)),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn follower_refuses_writes_and_leader_reads_but_serves_any() {
        let dir = tempfile::tempdir().unwrap();
        let n = node_with(
            dir.path(),
            Role::NotLeader {
                leader: Some("10.0.0.1:7379".into()),
            },
        );
        // "hello" hashes to partition 3 of 8 (see the partitioner's tests).
        let not_leader = Error::NotLeader {
            partition: 3,
            leader: Some("10.0.0.1:7379".into()),
        };
        assert_eq!(
            n.set(b("hello"), b("1"), SET).await.unwrap_err(),
            not_leader
        );
        assert_eq!(
            n.del(vec![b("hello")], Acks::Leader).await.unwrap_err(),
            not_leader
        );
        assert_eq!(
            n.expire(b("hello"), 5, Acks::All).await.unwrap_err(),
            not_leader
        );
        assert_eq!(
            n.get(b("hello"), Consistency::Leader).await.unwrap_err(),
            not_leader
        );
        assert_eq!(n.get(b("hello"), Consistency::Any).await.unwrap(), None);
        assert_eq!(
            n.ttl(b("hello"), Consistency::Any).await.unwrap(),
            Ttl::Missing
        );
        assert_eq!(
            n.exists(vec![b("hello")], Consistency::Any).await.unwrap(),
            0
        );
        assert_eq!(n.mode(), "cluster");
    }

    #[tokio::test]
    async fn acks_all_needs_min_insync() {
        let dir = tempfile::tempdir().unwrap();
        let n = node_with(
            dir.path(),
            Role::Leader {
                epoch: 4,
                isr: 1,
                min_insync: 2,
            },
        );
        assert_eq!(
            n.set(b("hello"), b("1"), SET).await.unwrap_err(),
            Error::NotEnoughReplicas {
                partition: 3,
                isr: 1,
                min_insync: 2
            }
        );
        // Nothing was written; acks: leader is accepted.
        assert_eq!(n.get(b("hello"), Consistency::Leader).await.unwrap(), None);
        let leader_acks = SetArgs {
            acks: Acks::Leader,
            ..SET
        };
        assert!(n.set(b("hello"), b("1"), leader_acks).await.unwrap());
        assert_eq!(
            n.get(b("hello"), Consistency::Leader).await.unwrap(),
            Some(b("1"))
        );
    }

    #[test]
    fn second_open_of_a_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = node(dir.path(), Arc::new(ManualClock::new(0)));
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let err = Node::open_standalone(&config, "x:1".into(), Arc::new(ManualClock::new(0)))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is in use by another caskade-server"), "{err}");
    }

    #[test]
    fn partition_count_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        drop(node(dir.path(), Arc::new(ManualClock::new(0))));
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            partitions: 16,
            ..Config::default()
        };
        let err = Node::open_standalone(&config, "x:1".into(), Arc::new(ManualClock::new(0)))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "data directory {} holds 8 partitions but the configuration asks for 16; \
                 the partition count cannot change (keys would move)",
                dir.path().display()
            )
        );
    }
}
