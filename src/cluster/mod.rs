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
//! - the ZooKeeper coordinator (cluster issue): partition state from
//!   `/partitions/<p>/state`, updated by watches.
//!
//! Invariants every implementation keeps:
//! - [`Coordinator::role`] is cheap (no I/O, no allocation on the leader
//!   path): it runs on every request.
//! - A node answers `Leader` for a partition only while it holds that
//!   leadership at the returned epoch; once fenced it answers `NotLeader`.

mod local;
mod partitioner;

pub use local::LocalCoordinator;
pub use partitioner::{PARTITIONER, fnv1a64, partition_for};

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
}
