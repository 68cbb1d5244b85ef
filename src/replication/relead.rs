//! A leader named again at a higher epoch that keeps it leader (a
//! reassignment step: `cluster/zk/reassign.rs`) leads on without stepping
//! down.
//!
//! Invariants:
//! - only a replica that leads now, unfenced, at a lower epoch leads on;
//!   anything else takes the full transition (`become_leader`);
//! - the engine moves to the new epoch before the leader state does: a
//!   write admitted at the old epoch that has not reached the engine yet
//!   is refused there (`NOT_LEADER`, nothing written, the client retries);
//!   one that reached it is acknowledged once the high watermark covers
//!   it (`Progress::since` keeps the leadership's first epoch);
//! - added replicas join the followers at log end 0 (holding the merge
//!   horizon back until they fetch), removed ones leave.

use std::sync::Arc;
use std::time::Instant;

use super::partition::{self, Partition, RoleState};
use super::{ReplicaManager, blocking};
use crate::cluster::LeaderAndIsr;
use crate::error::Error;

impl ReplicaManager {
    /// Leads `part` on at the higher epoch of `target` without stepping
    /// down, if it leads now, unfenced (a reassignment step that keeps the
    /// leader): the engine moves to the new epoch, the leader state takes
    /// the new replicas (added ones start at log end 0, so they hold the
    /// merge horizon back), ISR and version; writes admitted at the old
    /// epoch are still answered once the high watermark covers them.
    /// False when the full transition is needed.
    pub(super) async fn lead_on(
        self: &Arc<Self>,
        part: &Arc<Partition>,
        target: &LeaderAndIsr,
    ) -> bool {
        let old = match &part.state.lock().role {
            RoleState::Leader(l) if l.epoch < target.leader_epoch => l.epoch,
            _ => return false,
        };
        // The watch's read guard must be gone before `leading_epoch` takes
        // the state lock (lock order, partition.rs): a temporary in the
        // first operand of `||` would live through the second.
        let leading = part.progress.borrow().leading;
        if leading != Some(old) || part.leading_epoch() != Some(old) {
            return false;
        }
        let log = part.log.clone();
        let epoch = target.leader_epoch;
        if let Err(e) = blocking(move || log.set_epoch(epoch).map_err(Error::from)).await {
            tracing::error!(partition = part.id, "cannot lead on at epoch {epoch}: {e}");
            return false;
        }
        {
            let mut s = part.state.lock();
            let RoleState::Leader(l) = &mut s.role else {
                return false;
            };
            l.epoch = epoch;
            l.node_epoch = target.leader_node_epoch;
            l.isr = target.isr.clone();
            l.zk_version = target.zk_version;
            l.controller_epoch = target.controller_epoch;
            l.replicas = target.replicas.clone();
            l.followers.retain(|r, _| target.replicas.contains(r));
            let now = Instant::now();
            for r in target.replicas.iter().filter(|r| **r != self.me.id) {
                l.followers
                    .entry(r.clone())
                    .or_insert(partition::FollowerProgress {
                        leo: 0,
                        caught_up_at: now,
                        last_fetch: None,
                    });
            }
            if l.joining
                .as_ref()
                .is_some_and(|j| !target.replicas.contains(j))
            {
                l.joining = None;
            }
        }
        part.progress.send_modify(|p| p.leading = Some(epoch));
        tracing::info!(
            partition = part.id,
            "leading on at epoch {epoch} (from {old}), replicas [{}], ISR [{}]",
            target.replicas.join(","),
            target.isr.join(",")
        );
        self.advance_hw(part);
        true
    }
}
