//! The two faces the rest of the node sees: the [`StateListener`] the
//! ZooKeeper layer is given ([`Listener`]) and the [`Coordinator`] of the
//! request path.

use std::sync::Arc;

use super::ReplicaManager;
use super::partition::RoleState;
use crate::cluster::{
    Coordinator, LeaderAndIsr, NodeAddr, NodeInfo, PartitionState, Role, StateListener,
};
use crate::error::Error;

/// The [`StateListener`] the ZooKeeper layer is given: the manager behind
/// an `Arc`, so it can spawn role transitions.
pub struct Listener(pub Arc<ReplicaManager>);

impl StateListener for Listener {
    fn registered(&self, node_epoch: i64) {
        self.0.registered(node_epoch);
    }

    fn apply(&self, states: Vec<LeaderAndIsr>, nodes: Vec<NodeAddr>) {
        self.0.learn_nodes(nodes);
        self.0.apply_states(states, false);
    }

    fn replica_of(&self) -> Option<Vec<u32>> {
        Some(self.0.replica_of())
    }

    fn reassign_throttle(&self, bytes_per_sec: u64) {
        self.0.throttle.set_rate(bytes_per_sec);
    }

    fn fence(&self, why: &str) {
        let mut fenced = 0;
        for part in &self.0.hosted() {
            if part.fence() {
                fenced += 1;
            }
        }
        tracing::warn!("fenced: {why}; stopped leading {fenced} partition(s)");
    }
}

impl Coordinator for ReplicaManager {
    fn mode(&self) -> &'static str {
        "cluster"
    }

    fn role(&self, partition: u32) -> Role {
        let part = match self.partition(partition) {
            Ok(part) => part,
            Err(Error::NotLeader { leader, .. }) => return Role::NotLeader { leader },
            Err(_) => return Role::NotLeader { leader: None },
        };
        let part = &part;
        match self.leading(part) {
            Ok(epoch) => {
                let isr = match &part.state.lock().role {
                    RoleState::Leader(l) => l.isr.len() as u32,
                    _ => 0,
                };
                Role::Leader {
                    epoch,
                    isr,
                    min_insync: self.opts.min_insync,
                }
            }
            Err(Error::NotLeader { leader, .. }) => Role::NotLeader { leader },
            Err(_) => Role::NotLeader { leader: None },
        }
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        let live = match self.cluster.get() {
            Some(c) => c.nodes(),
            None => self.nodes.read().values().cloned().collect(),
        };
        let mut out: Vec<NodeInfo> = live
            .into_iter()
            .map(|n| NodeInfo {
                id: n.id,
                client_addr: n.client_addr,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every partition `0..count`: those hosted here as their replica
    /// knows them (with this node's log end), the others as last learned
    /// (no offsets: there is no log here).
    fn partitions(&self) -> Vec<PartitionState> {
        (0..self.count)
            .map(|p| match self.partition(p) {
                Ok(part) => self.hosted_state(&part),
                Err(_) => {
                    let (mut leader, mut leader_epoch, mut replicas, mut isr) =
                        match self.learned(p) {
                            Some(k) => (k.leader, k.leader_epoch, k.replicas, k.isr),
                            None => (None, 0, Vec::new(), Vec::new()),
                        };
                    // A routing entry newer than the full state (or the
                    // only thing known of a partition not hosted here):
                    // its leader and replicas (a routing entry has no ISR).
                    if let Some((l, e, r)) = self
                        .routed(p)
                        .filter(|(_, e, _)| *e > leader_epoch || replicas.is_empty())
                    {
                        (leader, leader_epoch, replicas, isr) = (l, e, r, Vec::new());
                    }
                    PartitionState {
                        id: p,
                        // Named leader of a partition it does not host (yet):
                        // it does not lead it.
                        leader: leader.filter(|l| *l != self.me.id),
                        leader_epoch,
                        replicas,
                        isr,
                        high_watermark: 0,
                        offsets: Vec::new(),
                    }
                }
            })
            .collect()
    }

    /// As [`Coordinator::partitions`] would report it: a hosted partition's
    /// ISR as its leader keeps it (or as last known), another's as last
    /// learned, none when a newer routing entry replaced that.
    fn isr_len(&self, partition: u32) -> usize {
        if partition >= self.count {
            return 0;
        }
        if let Ok(part) = self.partition(partition) {
            let state = part.state.lock();
            return match &state.role {
                RoleState::Leader(l) => l.isr.len(),
                _ => state.known.as_ref().map_or(0, |k| k.isr.len()),
            };
        }
        let (epoch, isr, no_replicas) = match self.learned(partition) {
            Some(k) => (k.leader_epoch, k.isr.len(), k.replicas.is_empty()),
            None => (0, 0, true),
        };
        match self.routed(partition) {
            Some((_, e, _)) if e > epoch || no_replicas => 0,
            _ => isr,
        }
    }

    fn min_insync(&self) -> u32 {
        self.opts.min_insync
    }

    fn controller(&self) -> Option<String> {
        self.cluster.get().and_then(|c| c.controller())
    }
}
