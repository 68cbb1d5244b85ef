//! Role transitions of a hosted partition: reconciling its role with the
//! newest state known, stepping the engine down, becoming leader (at a new
//! epoch, or leading on at a higher one) and becoming follower.

use std::sync::Arc;
use std::time::Instant;

use super::partition::{self, Partition, RoleState};
use super::{ReplicaManager, blocking};
use crate::cluster::LeaderAndIsr;
use crate::error::Error;

impl ReplicaManager {
    /// Makes the role of `part` match the newest state known.
    pub(super) async fn reconcile(self: &Arc<Self>, part: &Arc<Partition>) {
        let _t = part.transition.lock().await;
        let Some(target) = part.state.lock().known.clone() else {
            return;
        };
        if part.state.lock().closed {
            // No longer hosted: its engine is closing or closed.
            return;
        }
        let mine = target.replicas.iter().any(|r| *r == self.me.id);
        let granted = part.state.lock().granted;
        match target.leader.as_deref() {
            Some(l) if l == self.me.id && mine && granted == Some(target.leader_epoch) => {
                self.become_leader(part, &target).await
            }
            Some(l) if l == self.me.id => {
                // Named leader by a ZooKeeper read, not by a notice for this
                // registration: wait for the controller's notice.
                self.stop_role(part).await;
                tracing::info!(
                    partition = part.id,
                    "ZooKeeper names this node leader at epoch {} without a notice for this \
                     registration; waiting for the controller",
                    target.leader_epoch
                );
            }
            Some(l) if mine && !self.is_draining() => {
                self.become_follower(part, l, target.leader_epoch).await
            }
            _ => {
                self.stop_role(part).await;
            }
        }
    }

    /// Ends the current role: fails leader waiters and steps the engine
    /// down (the leader writes it admitted are written first, later ones are
    /// refused), or stops the fetcher and waits for an append in progress.
    pub(super) async fn stop_role(&self, part: &Arc<Partition>) {
        let old = std::mem::replace(&mut part.state.lock().role, RoleState::Idle);
        match old {
            RoleState::Leader(l) => {
                part.stop_leading();
                tracing::info!(partition = part.id, "no longer leader (epoch {})", l.epoch);
            }
            RoleState::Follower { leader, .. } => {
                self.sessions.unfollow(&leader, part.id);
                // An append or truncation in progress finishes first; any
                // later one sees the role changed and does nothing.
                let _ = part.append.lock().await;
            }
            RoleState::Idle => {}
        }
        // Whatever the old role, the engine accepts no leader write from
        // here on (a no-op unless it led: nothing is queued).
        let log = part.log.clone();
        if let Err(e) = blocking(move || log.step_down()).await {
            tracing::error!(partition = part.id, "stepping the engine down: {e}");
        }
    }

    /// Takes leadership of `part` at `target.leader_epoch`.
    async fn become_leader(self: &Arc<Self>, part: &Arc<Partition>, target: &LeaderAndIsr) {
        let already = {
            let mut s = part.state.lock();
            match &mut s.role {
                RoleState::Leader(l) if l.epoch == target.leader_epoch => {
                    if target.zk_version > l.zk_version {
                        l.isr = target.isr.clone();
                        l.zk_version = target.zk_version;
                        l.controller_epoch = target.controller_epoch;
                    }
                    true
                }
                _ => false,
            }
        };
        if already {
            part.progress
                .send_modify(|p| p.leading = Some(target.leader_epoch));
            self.advance_hw(part);
            return;
        }
        if self.lead_on(part, target).await {
            return;
        }
        self.stop_role(part).await;
        let log = part.log.clone();
        let epoch = target.leader_epoch;
        if let Err(e) = blocking(move || log.set_epoch(epoch).map_err(Error::from)).await {
            tracing::error!(partition = part.id, "cannot lead at epoch {epoch}: {e}");
            return;
        }
        let start = part.log.written_end();
        let hw = part.log.committed();
        let now = Instant::now();
        let followers = target
            .replicas
            .iter()
            .filter(|r| **r != self.me.id)
            .map(|r| {
                (
                    r.clone(),
                    partition::FollowerProgress {
                        leo: 0,
                        caught_up_at: now,
                        last_fetch: None,
                    },
                )
            })
            .collect();
        part.state.lock().role = RoleState::Leader(partition::LeaderState {
            epoch,
            node_epoch: target.leader_node_epoch,
            isr: target.isr.clone(),
            zk_version: target.zk_version,
            controller_epoch: target.controller_epoch,
            replicas: target.replicas.clone(),
            epoch_start: start,
            followers,
            isr_change_in_flight: false,
            joining: None,
        });
        part.publish_hw(hw);
        part.progress.send_modify(|p| {
            p.leading = Some(epoch);
            p.since = epoch;
        });
        part.publish_log_end();
        tracing::info!(
            partition = part.id,
            "leading at epoch {epoch} from log end {start} (high watermark {hw}), ISR [{}]",
            target.isr.join(",")
        );
        self.advance_hw(part);
    }

    /// Follows `leader` at `epoch`.
    async fn become_follower(self: &Arc<Self>, part: &Arc<Partition>, leader: &str, epoch: u32) {
        let same = matches!(
            &part.state.lock().role,
            RoleState::Follower { leader: l, epoch: e, .. } if l == leader && *e == epoch
        );
        if same {
            return;
        }
        self.stop_role(part).await;
        part.state.lock().role = RoleState::Follower {
            leader: leader.to_string(),
            epoch,
        };
        tracing::info!(
            partition = part.id,
            "following {leader} at epoch {epoch} from log end {}",
            part.log.written_end()
        );
        self.sessions.follow(self, part.clone(), leader, epoch);
    }
}
