//! What the controller and the leaders' peers ask of this node: KIP-101
//! epoch end offsets, log end offsets for elections, and the controller's
//! `leader_and_isr` notices (checked against the controller epoch and this
//! node's registration), with the re-reads and node lists they carry.

use std::sync::Arc;

use super::partition::{Partition, check_epoch};
use std::sync::atomic::Ordering;

use super::partition::RoleState;
use super::{ReplicaManager, epoch_end};
use crate::cluster::{LeaderAndIsr, NodeAddr, PartitionState, ReplicaOffsets};
use crate::error::{Error, Result};
use crate::proto::replication as pb;

impl ReplicaManager {
    /// KIP-101: the end offset of an epoch in this leader's log, for every
    /// partition of a batched request (each answered or refused in its own
    /// entry, as fetch does), or for the single partition of an older
    /// follower's request (refused with the call's error).
    pub fn epoch_end_offset(
        &self,
        req: pb::EpochEndOffsetRequest,
    ) -> Result<pb::EpochEndOffsetResponse> {
        if req.partitions.is_empty() {
            let (found, _) =
                self.epoch_end_of(req.partition, req.current_leader_epoch, req.leader_epoch)?;
            return Ok(pb::EpochEndOffsetResponse {
                found: found.is_some(),
                leader_epoch: found.map_or(0, |f| f.0),
                end_offset: found.map_or(0, |f| f.1),
                partitions: Vec::new(),
            });
        }
        let partitions = req
            .partitions
            .into_iter()
            .map(
                |q| match self.epoch_end_of(q.partition, q.current_leader_epoch, q.leader_epoch) {
                    Ok((found, log_end)) => pb::EpochEnd {
                        partition: q.partition,
                        found: found.is_some(),
                        leader_epoch: found.map_or(0, |f| f.0),
                        end_offset: found.map_or(0, |f| f.1),
                        log_end_offset: log_end,
                        ..Default::default()
                    },
                    Err(e) => pb::EpochEnd {
                        partition: q.partition,
                        error_reason: e.reason().to_string(),
                        error_message: e.message(),
                        ..Default::default()
                    },
                },
            )
            .collect();
        Ok(pb::EpochEndOffsetResponse {
            partitions,
            ..Default::default()
        })
    }

    /// The largest epoch `<= epoch` in the log of partition `p` led here
    /// and where it ends (`None`: no such epoch), with the log end offset;
    /// refused unless this node leads `p` at the caller's `current` epoch.
    fn epoch_end_of(&self, p: u32, current: u32, epoch: u32) -> Result<(Option<(u32, u64)>, u64)> {
        let part = self.partition(p)?;
        let mine = self.leading(&part)?;
        check_epoch(part.id, current, mine)?;
        let end = part.log.written_end();
        let mut starts = part.log.epoch_starts()?;
        if starts.last().is_none_or(|&(e, _)| e < mine) {
            starts.push((mine, end));
        }
        Ok((epoch_end(&starts, epoch, end), end))
    }

    /// Log end offsets of `partitions` hosted here.
    pub fn log_end_offsets(&self, partitions: &[u32]) -> Vec<ReplicaOffsets> {
        partitions
            .iter()
            .filter_map(|&p| self.partition(p).ok())
            .map(|part| ReplicaOffsets {
                partition: part.id,
                log_end_offset: part.log.written_end(),
                last_epoch: part
                    .log
                    .epoch_starts()
                    .ok()
                    .and_then(|s| s.last().map(|&(e, _)| e))
                    .unwrap_or(0),
                high_watermark: part.log.committed(),
            })
            .collect()
    }

    /// [`ReplicaManager::notice`] without routing leaders.
    pub fn leader_and_isr(
        self: &Arc<Self>,
        controller_epoch: u64,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        nodes: Vec<NodeAddr>,
    ) -> Result<()> {
        self.notice(controller_epoch, node_epoch, states, Vec::new(), nodes)
    }

    /// A controller notice for this node's registration at `node_epoch`:
    /// refuses a deposed controller and another registration's notice,
    /// then applies `states` (granting the leaderships it names) and
    /// learns the routing `leaders`.
    pub fn notice(
        self: &Arc<Self>,
        controller_epoch: u64,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        leaders: Vec<Arc<crate::cluster::Leaders>>,
        nodes: Vec<NodeAddr>,
    ) -> Result<()> {
        fail::fail_point!("replication::leader_and_isr", |_| Err(Error::Unavailable(
            "failpoint replication::leader_and_isr: notice dropped".into()
        )));
        let registration = self.node_epoch.lock();
        let mine = *registration;
        if node_epoch != mine {
            return Err(Error::StaleController(format!(
                "notice for node epoch {node_epoch}, but this node is registered at node epoch \
                 {mine}"
            )));
        }
        let seen = self
            .controller_epoch
            .fetch_max(controller_epoch, Ordering::SeqCst);
        if controller_epoch < seen {
            return Err(Error::StaleController(format!(
                "notice from controller epoch {controller_epoch}, but epoch {seen} was seen"
            )));
        }
        self.learn_nodes(nodes);
        self.learn_leaders(leaders);
        self.apply_states(states, true);
        drop(registration);
        Ok(())
    }

    /// A new registration of this node at `node_epoch`: grants of earlier
    /// registrations are void.
    pub(super) fn registered(&self, node_epoch: i64) {
        let mut registration = self.node_epoch.lock();
        *registration = node_epoch;
        self.void_grants();
    }

    /// Re-reads the states of `partitions` from ZooKeeper (their leaders
    /// keep refusing this follower) and applies them, in the background.
    pub(super) fn reread(self: &Arc<Self>, partitions: Vec<u32>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        tracing::info!(
            "partitions {partitions:?}: the leader keeps refusing this follower's epoch; \
             re-reading their state from ZooKeeper"
        );
        let me = self.clone();
        tokio::spawn(async move {
            match cluster.read_states(partitions).await {
                Ok(states) => me.apply_states(states, false),
                Err(e) => tracing::warn!("cannot re-read partition states: {e}"),
            }
        });
    }

    /// The state of a partition hosted here, as its replica knows it.
    pub(super) fn hosted_state(&self, part: &Partition) -> PartitionState {
        let known = part.state.lock().known.clone();
        let (mut leader, leader_epoch, replicas, mut isr) = match known {
            Some(k) => (k.leader, k.leader_epoch, k.replicas, k.isr),
            None => (None, 0, Vec::new(), Vec::new()),
        };
        // A fenced node does not advertise its own leadership: it knows it
        // may be stale.
        if leader.as_deref() == Some(self.me.id.as_str())
            && (part.leading_epoch().is_none() || !self.lease())
        {
            leader = None;
        }
        if let RoleState::Leader(l) = &part.state.lock().role {
            isr = l.isr.clone();
        }
        // Read (and let go of) the high watermark before `offsets` takes
        // the state lock: `hw_candidate` takes state, then the watermark,
        // and a watermark writer waiting between the two would deadlock
        // all three (parking_lot queues new readers behind a writer).
        let high_watermark = part.progress.borrow().hw;
        PartitionState {
            id: part.id,
            leader,
            leader_epoch,
            replicas,
            isr,
            high_watermark,
            offsets: {
                // A test pauses here (tests.rs, hosted_state_..._lock).
                fail::fail_point!("replication::hosted_state_offsets");
                part.offsets(&self.me.id)
            },
        }
    }

    /// Remembers the addresses of `nodes`.
    pub(super) fn learn_nodes(&self, nodes: Vec<NodeAddr>) {
        if nodes.is_empty() {
            return;
        }
        let mut map = self.nodes.write();
        for n in nodes {
            map.insert(n.id.clone(), n);
        }
    }
}
