//! A node: the partition replicas this process hosts, and the routing of
//! each request to the replica of the key's partition.
//!
//! Request path (the same in standalone and, later, in a cluster):
//! validate at the edge (key and value limits, TTL range) -> hash the key to
//! its partition ([`crate::cluster::partition_for`]) -> ask the
//! [`Coordinator`] for this node's role (`NOT_LEADER` otherwise; for
//! `acks: all`, `NOT_ENOUGH_REPLICAS` when the ISR is too small) -> offer
//! a write to the engine and await it ([`Engine::submit`]: no fsync and no
//! segment roll on the caller's thread; under `every_ms` / `never` Bitcask
//! does the one `write(2)` to the page cache there), answer a read from
//! memory when memory knows the answer ([`Engine::get_cached`],
//! [`Engine::ttl_cached`]), or else run the engine call on tokio's blocking
//! pool; a runtime worker never waits for the device (fsync, roll, or a
//! read of a value that is not cached).
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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod commands;
mod dirs;
mod ops;

pub use ops::{ExpireTime, GetExpiry, SetOutcome, SetWith};

use self::commands::{blocking, write_op};
use self::dirs::{PartitionDirs, check_layout, lock_dir, open_engine, restrict_data_dir};
use crate::cluster::{Coordinator, NodeAddr, NodeInfo, PartitionState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::replication::{Engines, ReplicaManager};
use crate::storage::{self, Clock, Condition, Engine, Limits, owner_only};

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

    /// `WAIT`'s answer for writes acknowledged under `acks`: the fewest
    /// replicas besides the leader in the in-sync replica sets of
    /// `partitions` (of every partition when there is none). A partition
    /// whose ISR this node does not know (one it does not host: it knows
    /// only its leader) counts the replicas every write acknowledged there
    /// is on: under `acks: all`, `min_insync` (the leader refuses such a
    /// write with fewer in sync), less the leader; under `acks: leader`,
    /// none.
    pub fn wait_count(&self, partitions: impl ExactSizeIterator<Item = u32>, acks: Acks) -> i64 {
        let floor = match acks {
            Acks::All => self.coordinator.min_insync().saturating_sub(1) as i64,
            Acks::Leader => 0,
        };
        let count = |p: u32| match self.coordinator.isr_len(p) {
            0 => floor,
            n => n as i64 - 1,
        };
        if partitions.len() == 0 {
            (0..self.partition_count()).map(count).min()
        } else {
            partitions.map(count).min()
        }
        .unwrap_or(0)
    }

    /// How this node's fetch sessions travelled and the fetch wire
    /// connections it served; `None` in standalone mode.
    pub fn fetch_figures(&self) -> Option<crate::replication::fetch_wire::FetchTransports> {
        self.replication.as_ref().map(|m| m.fetch_figures.read())
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
}

#[cfg(test)]
mod tests;
