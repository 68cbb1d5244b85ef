//! The leader's write path: writes stamped with the leader epoch and
//! acknowledged as `acks` asks, the read barrier, high watermark moves and
//! commits, and ISR maintenance (shrinks and expands through ZooKeeper
//! compare-and-set).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::partition::{Ack, Partition, RoleState};
use super::{IsrOutcome, ReplicaManager, blocking};
use crate::error::{Error, Result};
use crate::node::Acks;
use crate::storage::{Submitted, WriteOp};

impl ReplicaManager {
    /// Writes `op` on `key` in partition `p` and waits as `acks` asks.
    ///
    /// No read barrier: the engine decides a state-dependent write on the
    /// whole log (see the module invariants), so a new leader's first
    /// writes already answer as if the log it took over with were applied;
    /// `written.until` covers the record the answer rests on.
    pub async fn write(&self, p: u32, key: Bytes, op: WriteOp, acks: Acks) -> Result<bool> {
        Ok(self.write_op(p, key, op, acks).await?.done)
    }

    /// [`ReplicaManager::write`] with the whole answer: the old value of
    /// `GETSET`/`GETDEL`, the new value of `INCRBY`, ... (see
    /// [`crate::storage::Written`]).
    pub async fn write_op(
        &self,
        p: u32,
        key: Bytes,
        op: WriteOp,
        acks: Acks,
    ) -> Result<crate::storage::Written> {
        let part = self.partition(p)?;
        let part = &part;
        let epoch = self.leading(part)?;
        let _admitted = self.admit(part)?;
        if acks == Acks::All {
            let isr = match &part.state.lock().role {
                RoleState::Leader(l) => l.isr.len() as u32,
                _ => 0,
            };
            if isr < self.opts.min_insync {
                return Err(Error::NotEnoughReplicas {
                    partition: p,
                    isr,
                    min_insync: self.opts.min_insync,
                });
            }
        }
        // A test pauses here to demote the replica between the leadership
        // check and the engine write: the engine refuses the stamped write.
        fail::fail_point!("replication::write_after_check");
        let log = part.log.clone();
        let refused = |e: crate::storage::Error| match e {
            crate::storage::Error::NotLeader(why) => {
                tracing::debug!(partition = p, "write refused by the engine: {why}");
                self.not_leader(part)
            }
            e => Error::from(e),
        };
        // The engine of a replica this node no longer hosts is closed: it
        // refuses a write before writing anything, so the answer is
        // NOT_LEADER (routers retry at the leader), not UNAVAILABLE.
        let unhosted = |e: crate::storage::Error| match e {
            crate::storage::Error::Closed if part.state.lock().closed => self.not_leader(part),
            e => refused(e),
        };
        let written = match log.submit_at(&key, &op, epoch).map_err(unhosted)? {
            Submitted::Done(w) => w,
            Submitted::Queued(c) => c.wait().await.map_err(refused)?,
            Submitted::Blocking => blocking(move || Ok::<_, Error>(log.write_op(&key, op, epoch)))
                .await?
                .map_err(unhosted)?,
        };
        part.publish_log_end();
        self.advance_hw(part);
        if acks == Acks::Leader {
            return Ok(written);
        }
        let covered = match part.wait_ack(epoch, written.until) {
            Ack::Covered => Ok(true),
            Ack::LeadershipLost => Ok(false),
            Ack::Wait(rx) => tokio::time::timeout(self.wait, rx)
                .await
                .map(|r| r.unwrap_or(false)),
        };
        match covered {
            Ok(true) => Ok(written),
            Ok(false) => Err(Error::Unavailable(format!(
                "leadership of partition {p} changed before the in-sync replicas confirmed \
                 the write; it may or may not be applied"
            ))),
            Err(_) => Err(Error::Timeout(format!(
                "the in-sync replicas of partition {p} did not confirm the write within {} ms; \
                 it may or may not be applied",
                self.wait.as_millis()
            ))),
        }
    }

    /// Waits until this leader may serve reads of `p` (its high watermark
    /// reached the log end it took over with).
    pub async fn read_barrier(&self, p: u32) -> Result<()> {
        let part = self.partition(p)?;
        let part = &part;
        let epoch = self.leading(part)?;
        let start = match &part.state.lock().role {
            RoleState::Leader(l) => l.epoch_start,
            _ => return Err(self.not_leader(part)),
        };
        let mut rx = part.progress.subscribe();
        let waited = tokio::time::timeout(
            self.wait,
            rx.wait_for(|pr| pr.hw >= start || pr.leading != Some(epoch)),
        )
        .await;
        match waited {
            Ok(Ok(pr)) if pr.hw >= start => Ok(()),
            Ok(_) => Err(self.not_leader(part)),
            Err(_) => Err(Error::Timeout(format!(
                "partition {p}: the new leader has not committed its log yet (high watermark \
                 {} of {start})",
                part.progress.borrow().hw
            ))),
        }
    }

    /// Moves the high watermark of `part` if the ISR allows it, commits it
    /// in the engine, then publishes it.
    pub(super) fn advance_hw(&self, part: &Arc<Partition>) {
        let Some((hw, epoch)) = part.hw_candidate(&self.me.id, self.opts.min_insync) else {
            return;
        };
        self.commit(part, hw, epoch);
    }

    /// Commits `hw` in the engine (memory only) as the leader at `epoch`
    /// and publishes what was committed. The engine refuses it once the
    /// replica left that role.
    pub(super) fn commit(&self, part: &Partition, hw: u64, epoch: u32) {
        match part.log.commit_at(hw, epoch) {
            Ok(c) => part.publish_hw(c),
            Err(crate::storage::Error::NotLeader(why)) => {
                tracing::debug!(partition = part.id, "commit of {hw} refused: {why}");
            }
            Err(e) => tracing::error!(partition = part.id, "committing offset {hw} failed: {e}"),
        }
    }

    /// One round of ISR maintenance: shrink lagging followers, and lower
    /// the merge horizon to the slowest replica.
    pub(super) fn maintain(self: &Arc<Self>) {
        let lag = Duration::from_millis(self.opts.replica_lag_ms);
        for part in &self.hosted() {
            if let RoleState::Leader(l) = &part.state.lock().role {
                let slowest = l
                    .replicas
                    .iter()
                    .filter(|r| **r != self.me.id)
                    .map(|r| l.followers.get(r).map_or(0, |f| f.leo))
                    .min()
                    .unwrap_or(u64::MAX);
                part.log.retain_from(slowest.min(part.progress.borrow().hw));
            }
            if let Some(isr) = part.shrink_candidate(&self.me.id, lag) {
                self.spawn_isr_change(part.clone(), isr, "lagging");
            }
        }
    }

    /// Proposes `isr` for `part` to ZooKeeper; it counts once written.
    pub(super) fn spawn_isr_change(
        self: &Arc<Self>,
        part: Arc<Partition>,
        isr: Vec<String>,
        why: &str,
    ) {
        let Some(cluster) = self.cluster.get().cloned() else {
            part.isr_change_failed();
            return;
        };
        let Some(proposal) = part.isr_proposal(isr.clone(), &self.me.id) else {
            part.isr_change_failed();
            return;
        };
        let me = self.clone();
        let why = why.to_string();
        tokio::spawn(async move {
            let epoch = proposal.leader_epoch;
            let old_version = proposal.zk_version;
            match cluster.update_isr(proposal).await {
                Ok(IsrOutcome::Updated { zk_version }) => {
                    tracing::info!(
                        partition = part.id,
                        "ISR is now [{}] ({why}; epoch {epoch}, state version {old_version} -> {zk_version})",
                        isr.join(",")
                    );
                    part.adopt_isr(epoch, isr, zk_version);
                    me.advance_hw(&part);
                }
                Ok(IsrOutcome::Conflict(current)) => {
                    tracing::info!(
                        partition = part.id,
                        "ISR change lost a compare-and-set race; adopting the current state"
                    );
                    part.isr_change_failed();
                    if current.leader_epoch == epoch
                        && current.leader.as_deref() == Some(me.me.id.as_str())
                    {
                        part.adopt_isr(epoch, current.isr.clone(), current.zk_version);
                    }
                    me.apply_states(vec![current], false);
                }
                Err(e) => {
                    part.isr_change_failed();
                    tracing::warn!(partition = part.id, "ISR change failed: {e}");
                }
            }
        });
    }
}
