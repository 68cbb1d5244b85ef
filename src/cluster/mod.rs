//! Cluster coordination as the request path sees it: who leads each
//! partition, at which epoch, with which in-sync replicas.
//!
//! The [`Coordinator`] trait is what [`crate::node::Node`] asks before it
//! serves a request. Two implementations are planned:
//!
//! - [`LocalCoordinator`] (here): standalone mode. This node leads every
//!   partition at a fixed epoch; the ISR is this node alone and `min_insync`
//!   is 1, so `acks: all` and `acks: leader` are both satisfied by the local
//!   write, and both read consistencies are served locally.
//! - the cluster coordinator in [`crate::replication`]: partition state
//!   pushed by the controller ([`LeaderAndIsr`] notices), leadership held
//!   only while the ZooKeeper session is healthy.
//!
//! The ZooKeeper side (`zk`: session, membership, controller election,
//! partition state with compare-and-set) talks to the replication side
//! through two seams defined here: [`StateListener`] (the ZooKeeper layer
//! hands partition states to this node's replicas) and [`NodeRpc`] (the
//! controller reaches other nodes).
//!
//! Invariants every implementation keeps:
//! - [`Coordinator::role`] is cheap (no I/O, no allocation on the leader
//!   path): it runs on every request.
//! - A node answers `Leader` for a partition only while it holds that
//!   leadership at the returned epoch; once fenced it answers `NotLeader`.

use serde::{Deserialize, Serialize};

mod leaders;
mod local;
mod partitioner;
pub mod plan;
pub mod rpc;
pub mod zk;

pub use leaders::{LeaderEntry, Leaders};
pub use local::LocalCoordinator;
pub use partitioner::{PARTITIONER, fnv1a64, partition_for};
pub use rpc::GrpcNodeRpc;
pub use zk::{IN_PROGRESS, IsrUpdate, NONE_IN_PROGRESS, ReassignStatus, Reassignment, ZkCluster};

/// What this node is for one partition, right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node leads the partition.
    Leader {
        /// The leader epoch, stamped on every record written.
        epoch: u32,
        /// In-sync replicas, this node included.
        isr: u32,
        /// In-sync replicas an `acks: all` write needs.
        min_insync: u32,
    },
    /// Another node (or none) leads the partition.
    NotLeader {
        /// Client address of the leader, when known.
        leader: Option<String>,
    },
}

/// A node of the cluster, as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// `host:port` clients connect to.
    pub client_addr: String,
}

/// The full state of one partition, for `Metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// Partition id, `0..partition_count`.
    pub id: u32,
    /// Node id of the leader, `None` while there is none.
    pub leader: Option<String>,
    /// The current leader epoch.
    pub leader_epoch: u32,
    /// Node ids of the assigned replicas.
    pub replicas: Vec<String>,
    /// Node ids of the in-sync replicas.
    pub isr: Vec<String>,
    /// Committed offset as this node knows it (0 when unknown).
    pub high_watermark: u64,
    /// Log end offsets this node knows: its own replica's, and every
    /// follower's fetch position when it leads the partition.
    pub offsets: Vec<(String, u64)>,
}

/// A node's addresses, as registered in `/nodes/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Node id.
    pub id: String,
    /// `host:port` of the client API.
    pub client_addr: String,
    /// `host:port` of the node-to-node replication service.
    pub replication_addr: String,
}

/// The state of one partition as stored in `/partitions/<p>/state`, plus
/// the assigned replicas and the znode version it was read or written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAndIsr {
    /// Partition id.
    pub partition: u32,
    /// Node id of the leader; `None` while the partition is offline.
    pub leader: Option<String>,
    /// Bumped by the controller on every leader change.
    pub leader_epoch: u32,
    /// Assigned replicas (`/partitions/<p>/replicas`); the first one is the
    /// preferred leader.
    pub replicas: Vec<String>,
    /// In-sync replicas, the leader included.
    pub isr: Vec<String>,
    /// Epoch of the controller that wrote the state.
    pub controller_epoch: u64,
    /// Version of the state znode; compare-and-set starts from it.
    pub zk_version: i32,
    /// Node epoch (czxid of `/nodes/<leader>`, KIP-380) of the leader's
    /// registration this leadership was given to; 0 when there is no
    /// leader (or the state predates node epochs). A leader whose current
    /// registration has another node epoch bounced: the controller elects
    /// again.
    pub leader_node_epoch: i64,
}

/// Log position of one partition replica, as the controller asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaOffsets {
    /// Partition id.
    pub partition: u32,
    /// Offset the next record will get.
    pub log_end_offset: u64,
    /// Leader epoch of the last record (0 for an empty log).
    pub last_epoch: u32,
    /// The replica's high watermark.
    pub high_watermark: u64,
}

/// A leader's answer to a leadership handover (`replication/drain.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Partitions whose admitted writes are answered and whose high
    /// watermark covers their log end.
    pub settled: Vec<u32>,
    /// Partitions still settling when the timeout expired.
    pub behind: Vec<u32>,
}

/// What the ZooKeeper layer tells this node's replicas. Implemented by the
/// replication manager.
pub trait StateListener: Send + Sync + 'static {
    /// This node registered anew (a new session) at `node_epoch`, the
    /// czxid of its `/nodes/<id>`: leaderships given to earlier
    /// registrations are void. Called before the states of the new
    /// session are applied.
    fn registered(&self, node_epoch: i64);

    /// Partition states read from ZooKeeper (a session starts, the lease
    /// is renewed, a follower asks again). A state older than the one
    /// known (lower `leader_epoch`, or same epoch and lower `zk_version`)
    /// is ignored. These states may make this node follow, never lead: a
    /// node leads only at an epoch a controller notice for its current
    /// registration gave it. `nodes` are the live nodes.
    fn apply(&self, states: Vec<LeaderAndIsr>, nodes: Vec<NodeAddr>);

    /// The partitions this node hosts or has learned it is a replica of:
    /// what a new session or a renewed lease reads again from ZooKeeper
    /// (their `replicas` and `state`, fresh), instead of every partition's
    /// `replicas`. Partitions assigned to this node that it has not learned
    /// of come in the controller's notice to a node that (re)joined.
    /// `None` (the default): not known, every partition's `replicas` is
    /// read.
    fn replica_of(&self) -> Option<Vec<u32>> {
        None
    }

    /// The session is gone (expired, or silent past its timeout on this
    /// node's own timer): stop acting as leader of anything at once.
    fn fence(&self, why: &str);

    /// The reassignment throttle (`/admin/reassign`'s
    /// `throttle_bytes_per_sec`, 0 = unthrottled, also while there is no
    /// reassignment): what this node, as leader, may serve per second to
    /// replicas being added, all partitions together.
    fn reassign_throttle(&self, _bytes_per_sec: u64) {}
}

/// A boxed future, for the object-safe async seams.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How the controller reaches other nodes (gRPC in production).
pub trait NodeRpc: Send + Sync + 'static {
    /// The log end offsets of `partitions` on `node`.
    fn log_end_offsets(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        partitions: Vec<u32>,
    ) -> BoxFuture<'static, crate::Result<Vec<ReplicaOffsets>>>;

    /// Tells `node`, registered at `node_epoch`, the new state of
    /// `states` (the partitions it hosts) and the `leaders` of changed
    /// partitions, for routing (maps shared by every node's notice, oldest
    /// first); one call per node.
    fn leader_and_isr(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        leaders: Vec<std::sync::Arc<Leaders>>,
        nodes: Vec<NodeAddr>,
    ) -> BoxFuture<'static, crate::Result<()>>;

    /// Asks `node`, registered at `node_epoch`, to hand over the
    /// leadership of `partitions` (id, leader epoch it leads at): it stops
    /// admitting writes on them and answers once they settled, at most
    /// `timeout` later (`replication/drain.rs`). The default: not
    /// supported (the controller moves the leadership without it).
    fn handover(
        &self,
        node: NodeAddr,
        _controller_epoch: u64,
        _node_epoch: i64,
        _partitions: Vec<(u32, u32)>,
        _timeout: std::time::Duration,
    ) -> BoxFuture<'static, crate::Result<Settled>> {
        Box::pin(async move {
            Err(crate::Error::Unavailable(format!(
                "no handover to node {}",
                node.id
            )))
        })
    }
}

/// The source of partition leadership for a node.
pub trait Coordinator: Send + Sync + 'static {
    /// `"standalone"` or `"cluster"`.
    fn mode(&self) -> &'static str;

    /// This node's role for partition `partition`.
    fn role(&self, partition: u32) -> Role;

    /// The nodes known to be part of the cluster.
    fn nodes(&self) -> Vec<NodeInfo>;

    /// The state of every partition, ordered by id.
    fn partitions(&self) -> Vec<PartitionState>;

    /// The size of `partition`'s in-sync replica set as
    /// [`Coordinator::partitions`] reports it (0 when unknown), without
    /// building every partition's state: `WAIT` asks this per command.
    fn isr_len(&self, partition: u32) -> usize {
        self.partitions()
            .get(partition as usize)
            .map_or(0, |p| p.isr.len())
    }

    /// In-sync replicas an `acks: all` write needs (`cluster.min_insync`;
    /// 1 standalone): every write acknowledged under `acks: all` is on at
    /// least this many replicas, whatever this node knows of the ISR.
    fn min_insync(&self) -> u32 {
        1
    }

    /// Node id of the controller, when there is one.
    fn controller(&self) -> Option<String> {
        None
    }
}
