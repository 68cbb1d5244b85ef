//! The standalone coordinator: this node leads every partition.
//!
//! Invariants: the epoch is fixed ([`LocalCoordinator::EPOCH`]), the ISR is
//! `{this node}` and `min_insync` is 1, for every partition, forever. It is
//! the same [`Coordinator`] contract the ZooKeeper coordinator will fulfil,
//! so the request path is identical in standalone and in a cluster.

use super::{Coordinator, NodeInfo, PartitionState, Role};

/// Leadership of every partition, held locally.
#[derive(Clone, Debug)]
pub struct LocalCoordinator {
    /// This node.
    node: NodeInfo,
    /// Number of partitions.
    partition_count: u32,
}

impl LocalCoordinator {
    /// The leader epoch every partition has in standalone mode.
    pub const EPOCH: u32 = 1;

    /// A coordinator where `node` leads all `partition_count` partitions.
    pub fn new(node: NodeInfo, partition_count: u32) -> Self {
        LocalCoordinator {
            node,
            partition_count,
        }
    }
}

impl Coordinator for LocalCoordinator {
    fn mode(&self) -> &'static str {
        "standalone"
    }

    fn role(&self, partition: u32) -> Role {
        if partition < self.partition_count {
            Role::Leader {
                epoch: Self::EPOCH,
                isr: 1,
                min_insync: 1,
            }
        } else {
            Role::NotLeader { leader: None }
        }
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        vec![self.node.clone()]
    }

    fn partitions(&self) -> Vec<PartitionState> {
        (0..self.partition_count)
            .map(|id| PartitionState {
                id,
                leader: Some(self.node.id.clone()),
                leader_epoch: Self::EPOCH,
                replicas: vec![self.node.id.clone()],
                isr: vec![self.node.id.clone()],
                high_watermark: 0,
                offsets: Vec::new(),
            })
            .collect()
    }

    fn isr_len(&self, partition: u32) -> usize {
        usize::from(partition < self.partition_count)
    }
}
