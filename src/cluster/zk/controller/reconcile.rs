//! One reconciliation: read the states, create missing partitions, decide
//! (failover, reassignment steps, preferred leaders), and re-read and decide
//! again where a compare-and-set write conflicted. A decision that moves
//! a leadership off a live leader (reassignment step, preferred-leader
//! move) is written only after that leader handed the partition over
//! (`handover.rs`), bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use zookeeper_client as zk;

use super::super::decide::{self, Decision, Offsets, Reason};
use super::super::drain;
use super::super::handover;
use super::super::reassign_ctl;
use super::super::znode::{self, StateZnode, encode};
use super::{BATCH, Controller, Exit, FullTo, RETRY, ROUNDS};
use crate::cluster::LeaderAndIsr;

impl Controller {
    /// One reconciliation (see the module doc): read, create, elect,
    /// rebalance, write, notify.
    pub(super) async fn reconcile(&mut self, full_to: FullTo) -> Result<(), Exit> {
        self.reconcile_some(None, full_to).await
    }

    /// A reconciliation of partitions `only` (an ISR change notification:
    /// no creation), or of every partition.
    pub(super) async fn reconcile_some(
        &mut self,
        only: Option<Vec<u32>>,
        full_to: FullTo,
    ) -> Result<(), Exit> {
        let paths = self.shared.paths.clone();
        let every = only.is_none();
        let ids = match only {
            Some(ids) => ids,
            None => znode::list_partitions(&self.client, &paths).await?,
        };
        let unknown: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|p| !self.replicas.contains_key(p))
            .collect();
        if !unknown.is_empty() {
            let read = znode::read_replicas(&self.client, &paths, &unknown).await?;
            self.replicas.extend(read);
        }
        let mut states = znode::read_states(&self.client, &paths, &self.replicas, &ids).await?;
        let mut changed = BTreeSet::new();

        let missing: Vec<u32> = (0..self.shared.partition_count)
            .filter(|p| every && !states.contains_key(p))
            .collect();
        if !missing.is_empty() {
            let created = self.create_partitions(&missing).await?;
            changed.extend(created.keys().copied());
            states.extend(created);
        }

        if every {
            self.conflicts = false;
        }
        changed.extend(self.decide_and_write(&mut states, false).await?);
        let live = self.live_epochs();
        let ctx = reassign_ctl::Ctx {
            client: &self.client,
            paths: &paths,
            epoch_version: self.won.epoch_version,
            controller_epoch: self.won.epoch,
            live: &live,
            rpc: &self.shared.rpc,
            addrs: &self.live,
        };
        let driven = reassign_ctl::drive(&ctx, &mut states, every, &mut self.replicas).await?;
        changed.extend(driven.changed);
        if self.shared.opts.preferred_leader_rebalance {
            changed.extend(self.decide_and_write(&mut states, true).await?);
        }
        self.notify(&states, &changed, &driven.removed, full_to);
        Ok(())
    }

    /// Creates partitions `ids` (replicas, state) over the live nodes, if
    /// enough are live. Returns the states created.
    async fn create_partitions(
        &mut self,
        ids: &[u32],
    ) -> Result<BTreeMap<u32, LeaderAndIsr>, Exit> {
        let rf = self.shared.opts.replication_factor as usize;
        let live = self.live_epochs();
        let nodes: Vec<String> = live.keys().cloned().collect();
        // `initial_nodes`: a cluster started on more nodes than the
        // replication factor spreads over all of them.
        let need = rf.max(self.shared.opts.initial_nodes as usize);
        if nodes.len() < need {
            if self.waiting_logged != Some(nodes.len()) {
                self.waiting_logged = Some(nodes.len());
                tracing::info!(
                    "waiting for {need} live nodes (replication factor {rf}, initial_nodes) to \
                     assign {} partitions; {} live: [{}]",
                    ids.len(),
                    nodes.len(),
                    nodes.join(", ")
                );
            }
            return Ok(BTreeMap::new());
        }
        self.waiting_logged = None;
        let paths = self.shared.paths.clone();
        let epoch_path = paths.controller_epoch();
        let persistent = paths.options(zk::CreateMode::Persistent);
        let planned: Vec<LeaderAndIsr> = ids
            .iter()
            .map(|&p| {
                let replicas = decide::assign(&nodes, p, rf);
                let leader = replicas.first().cloned();
                LeaderAndIsr {
                    partition: p,
                    leader_node_epoch: leader
                        .as_ref()
                        .and_then(|l| live.get(l).copied())
                        .unwrap_or(0),
                    leader,
                    leader_epoch: 1,
                    isr: replicas.clone(),
                    replicas,
                    controller_epoch: self.won.epoch,
                    zk_version: 0,
                }
            })
            .collect();
        let chunks: Vec<&[LeaderAndIsr]> = planned.chunks(BATCH).collect();
        let answers = self
            .fenced_multis(&chunks, |w, s| {
                let p = s.partition;
                w.add_create(&paths.partition(p), &[], &persistent)?;
                w.add_create(&paths.replicas(p), &encode(&s.replicas), &persistent)?;
                w.add_create(&paths.state(p), &encode(&StateZnode::of(s)), &persistent)
                    .map(drop)
            })
            .await;
        let mut created = BTreeMap::new();
        let mut unsure = Vec::new();
        for (chunk, answer) in chunks.into_iter().zip(answers) {
            match answer? {
                Ok(_) => {
                    for s in chunk {
                        tracing::debug!(
                            "partition {}: replicas [{}], leader {}, epoch 1",
                            s.partition,
                            s.replicas.join(", "),
                            s.replicas.first().map(String::as_str).unwrap_or("none")
                        );
                        self.replicas.insert(s.partition, s.replicas.clone());
                        created.insert(s.partition, s.clone());
                    }
                }
                Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
                    return Err(Exit::Deposed(format!(
                        "{epoch_path} moved past version {} ({source})",
                        self.won.epoch_version
                    )));
                }
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NodeExists,
                    ..
                })
                | Err(zk::MultiWriteError::RequestFailed {
                    source: zk::Error::ConnectionLoss,
                }) => unsure.extend(chunk.iter().map(|s| s.partition)),
                Err(e) => return Err(Exit::zk("create partitions", e.into())),
            }
        }
        if !unsure.is_empty() {
            // Created by a lost answer or by someone else: take what is there.
            let read = znode::read_replicas(&self.client, &paths, &unsure).await?;
            self.replicas.extend(read);
            created
                .extend(znode::read_states(&self.client, &paths, &self.replicas, &unsure).await?);
        }
        if !created.is_empty() {
            tracing::info!(
                "assigned {} partitions over [{}], replication factor {rf}",
                created.len(),
                nodes.join(", ")
            );
        }
        Ok(created)
    }

    /// Decides (failover, or preferred-leader moves when `preferred`) for
    /// every partition in `states`, writes the decisions, and re-reads and
    /// decides again where a write conflicted. Updates `states`; returns
    /// the partitions changed.
    async fn decide_and_write(
        &mut self,
        states: &mut BTreeMap<u32, LeaderAndIsr>,
        preferred: bool,
    ) -> Result<BTreeSet<u32>, Exit> {
        let unclean = self.shared.opts.unclean_leader_election;
        let live = self.live_epochs();
        let draining = self.draining_ids();
        let mut changed = BTreeSet::new();
        let mut todo: Vec<u32> = states.keys().copied().collect();
        for _ in 0..ROUNDS {
            let offsets = if preferred {
                Offsets::new()
            } else {
                let mut asks: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                for p in &todo {
                    for n in drain::wants_offsets(&states[p], &live, &draining, unclean) {
                        asks.entry(n).or_default().push(*p);
                    }
                }
                self.ask_offsets(asks).await
            };
            let decisions: Vec<Decision> = todo
                .iter()
                .filter_map(|p| {
                    if preferred {
                        drain::preferred(&states[p], &live, &draining, self.won.epoch)
                    } else {
                        drain::failover(
                            &states[p],
                            &live,
                            &draining,
                            &offsets,
                            unclean,
                            self.won.epoch,
                        )
                    }
                })
                .collect();
            if decisions.is_empty() {
                return Ok(changed);
            }
            // Tests widen the window between a decision and its write.
            if let Some(pause) = failpoint_pause() {
                tokio::time::sleep(pause).await;
            }
            if preferred {
                // A preferred-leader move takes the leadership off a live
                // leader: it hands over first (`handover.rs`).
                let moving = handover::moves(states, decisions.iter().map(|d| &d.state), &live);
                handover::hand_over(&self.shared.rpc, self.won.epoch, &self.live, &live, &moving)
                    .await;
            }
            let (written, unsure) = self.write(decisions).await?;
            log_decisions(&written);
            for d in written {
                changed.insert(d.state.partition);
                states.insert(d.state.partition, d.state);
            }
            if unsure.is_empty() {
                return Ok(changed);
            }
            let ids: Vec<u32> = unsure.iter().map(|d| d.state.partition).collect();
            let fresh =
                znode::read_states(&self.client, &self.shared.paths, &self.replicas, &ids).await?;
            todo.clear();
            for d in unsure {
                let p = d.state.partition;
                let Some(now) = fresh.get(&p) else { continue };
                if now.zk_version > d.state.zk_version && znode::same_content(now, &d.state) {
                    // The write landed; only its answer was lost.
                    let mut d = d;
                    d.state.zk_version = now.zk_version;
                    log_decisions(std::slice::from_ref(&d));
                    changed.insert(p);
                    states.insert(p, d.state);
                } else {
                    states.insert(p, now.clone());
                    todo.push(p);
                }
            }
            if todo.is_empty() {
                return Ok(changed);
            }
        }
        tracing::warn!(
            "partitions {todo:?} still conflict after {ROUNDS} rounds; retrying in {} s",
            RETRY.as_secs()
        );
        self.conflicts = true;
        Ok(changed)
    }
}

/// The pause the failpoint `controller::before_state_write` asks for
/// (`return(MS)`), if armed.
fn failpoint_pause() -> Option<Duration> {
    fail::fail_point!("controller::before_state_write", |ms| {
        ms.and_then(|m| m.parse().ok()).map(Duration::from_millis)
    });
    None
}

/// Logs written decisions: elections and preferred-leader moves one line
/// each at info, unclean elections at error, offline partitions at warn;
/// ISR shrinks one line each at debug and one summary at info (a node
/// loss shrinks the ISR of most partitions).
fn log_decisions(written: &[Decision]) {
    let mut shrunk = 0;
    let mut moved = 0;
    for d in written {
        match d.reason {
            Reason::Unclean { .. } => tracing::error!("{d}"),
            Reason::Offline => tracing::warn!("{d}"),
            Reason::IsrShrink { .. } => {
                shrunk += 1;
                tracing::debug!("{d}");
            }
            Reason::Elected { .. } | Reason::Preferred { .. } => tracing::info!("{d}"),
            Reason::Drained {
                chosen: Some(_), ..
            } => {
                moved += 1;
                tracing::debug!("{d}");
            }
            Reason::Drained { chosen: None, .. } => {
                shrunk += 1;
                tracing::debug!("{d}");
            }
        }
    }
    if shrunk > 0 {
        tracing::info!(
            "removed nodes that are not live or shutting down from the ISR of {shrunk} partitions"
        );
    }
    if moved > 0 {
        tracing::info!("controlled shutdown: moved the leadership of {moved} partitions");
    }
}
