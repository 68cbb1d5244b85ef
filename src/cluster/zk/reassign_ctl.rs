//! The controller's side of replica reassignment (`reassign.rs` has the
//! format, the steps and why): on every reconciliation it reads
//! `<root>/admin/reassign`, decides the next step of each listed partition
//! with [`reassign::next`], writes the new states and `replicas` together,
//! and removes the partitions that are done from the znode.
//!
//! Invariants:
//! - a state and its `replicas` are written in one multi that starts with
//!   the check of `/controller_epoch`'s version (a deposed controller
//!   writes nothing) and sets the state with compare-and-set on its znode
//!   version; a conflicting or unknown outcome is read back from
//!   ZooKeeper, and the controller's `replicas` cache follows what was
//!   written or read;
//! - the znode is rewritten (partitions removed) or deleted only with
//!   compare-and-set on the version it was read at, so a throttle change
//!   or a cancel written meanwhile is never overwritten;
//! - nothing is kept in memory between reconciliations: a new controller
//!   resumes from ZooKeeper alone;
//! - a step that moves the leadership away from a live leader (Lead, or a
//!   Revert that moves it back) is written only after that leader handed
//!   the partition over, or after the handover's bounded wait
//!   (`handover.rs`), so no `acks: all` write in flight there fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use zookeeper_client as zk;

use super::controller::BATCH;
use super::decide::Live;
use super::handover;
use super::reassign::{self, Phase, ReassignZnode, Step};
use super::znode::{self, Paths, StateZnode, decode, encode};
use crate::cluster::{LeaderAndIsr, NodeAddr, NodeRpc};
use crate::error::Error;

/// Rounds of decide-and-write per reconciliation (a partition can go
/// Lead -> Shrink -> Done, or Revert -> Done, in one).
const ROUNDS: usize = 4;

/// What the controller passes in.
pub(crate) struct Ctx<'a> {
    /// The controller's session.
    pub client: &'a zk::Client,
    /// Znode paths.
    pub paths: &'a Paths,
    /// Version of `/controller_epoch` the controller was elected at.
    pub epoch_version: i32,
    /// The controller epoch stamped on states.
    pub controller_epoch: u64,
    /// Live nodes (node id -> node epoch).
    pub live: &'a Live,
    /// How the controller calls nodes (the leadership handover).
    pub rpc: &'a Arc<dyn NodeRpc>,
    /// Live nodes' addresses.
    pub addrs: &'a BTreeMap<String, NodeAddr>,
}

/// Why driving stopped.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `/controller_epoch` moved: another controller was elected.
    Deposed(String),
    /// A ZooKeeper error while doing the named thing.
    Zk(String, zk::Error),
    /// Anything else.
    Other(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Other(e)
    }
}

/// `<root>/admin/reassign`.
pub(crate) fn path(paths: &Paths) -> String {
    format!("{}/admin/reassign", paths.root)
}

/// What a drive changed.
#[derive(Debug, Default)]
pub(crate) struct Driven {
    /// Partitions whose state changed (to notify).
    pub changed: BTreeSet<u32>,
    /// Per partition, the nodes a step removed from `replicas`: they are
    /// in no replica set of the new state, yet must learn it (to close the
    /// replica and delete its directory).
    pub removed: BTreeMap<u32, Vec<String>>,
}

/// Drives every partition listed in `/admin/reassign` as far as it can go
/// now. `states` holds every partition (`every`) or only those of a
/// partial reconciliation (an ISR change notification): a listed
/// partition missing from a partial `states` is left for later, never
/// dropped. Updates `states` and the `replicas` cache.
pub(crate) async fn drive(
    ctx: &Ctx<'_>,
    states: &mut BTreeMap<u32, LeaderAndIsr>,
    every: bool,
    replicas: &mut BTreeMap<u32, Vec<String>>,
) -> Result<Driven, Failure> {
    let path = path(ctx.paths);
    let (data, stat) = match znode::retry_loss(|| ctx.client.get_data(&path)).await {
        Ok(x) => x,
        Err(zk::Error::NoNode) => return Ok(Driven::default()),
        Err(e) => return Err(Failure::Zk(format!("read {path}"), e)),
    };
    let z: ReassignZnode = match decode(&path, &data) {
        Ok(z) => z,
        Err(e) => {
            tracing::error!("reassignment ignored: {e}");
            return Ok(Driven::default());
        }
    };
    let mut finished: Vec<String> = Vec::new();
    let mut todo: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, target) in &z.partitions {
        match k.parse::<u32>() {
            Ok(p) if states.contains_key(&p) => {
                todo.insert(p, target.clone());
            }
            Ok(_) if !every => {}
            _ => {
                tracing::error!("reassignment of partition {k:?}: no such partition; dropped");
                finished.push(k.clone());
            }
        }
    }
    let mut driven = Driven::default();
    for _ in 0..ROUNDS {
        let mut writes = Vec::new();
        for (&p, target) in &todo {
            match reassign::next(
                &states[&p],
                target,
                z.cancel,
                ctx.live,
                ctx.controller_epoch,
            ) {
                Step::Wait(why) => tracing::debug!("partition {p}: reassignment: {why}"),
                Step::Done => {
                    if z.cancel {
                        tracing::info!("partition {p}: reassignment cancelled");
                    } else {
                        tracing::info!(
                            "partition {p}: reassignment to [{}] done",
                            target.join(", ")
                        );
                    }
                    finished.push(p.to_string());
                }
                Step::Invalid(why) => {
                    tracing::error!("partition {p}: reassignment refused: {why}; dropped");
                    finished.push(p.to_string());
                }
                Step::Write(phase, s) => writes.push((phase, s)),
            }
        }
        todo.retain(|p, _| !finished.contains(&p.to_string()));
        if writes.is_empty() {
            break;
        }
        // A step that moves the leadership off a live leader (Lead, a
        // Revert that moves it back) waits for that leader to hand over.
        let moving = handover::moves(states, writes.iter().map(|(_, s)| s), ctx.live);
        handover::hand_over(ctx.rpc, ctx.controller_epoch, ctx.addrs, ctx.live, &moving).await;
        let (written, unsure) = write(ctx, &writes).await?;
        for (phase, s) in written {
            tracing::info!(
                "partition {}: reassignment step {phase:?}: replicas [{}], isr [{}], leader {}, \
                 epoch {}",
                s.partition,
                s.replicas.join(", "),
                s.isr.join(", "),
                s.leader.as_deref().unwrap_or("none"),
                s.leader_epoch
            );
            driven.note_removed(replicas.get(&s.partition), &s);
            replicas.insert(s.partition, s.replicas.clone());
            driven.changed.insert(s.partition);
            states.insert(s.partition, s);
        }
        if !unsure.is_empty() {
            let fresh_replicas = znode::read_replicas(ctx.client, ctx.paths, &unsure).await?;
            let before: BTreeMap<u32, Vec<String>> = unsure
                .iter()
                .filter_map(|p| replicas.get(p).map(|r| (*p, r.clone())))
                .collect();
            replicas.extend(fresh_replicas);
            let fresh = znode::read_states(ctx.client, ctx.paths, replicas, &unsure).await?;
            for (p, s) in fresh {
                if states.get(&p) != Some(&s) {
                    driven.note_removed(before.get(&p), &s);
                    driven.changed.insert(p);
                }
                states.insert(p, s);
            }
        }
    }
    if !finished.is_empty() {
        remove(ctx, &path, z, stat.version, &finished).await?;
    }
    Ok(driven)
}

impl Driven {
    /// Notes the nodes of `before` that `now` no longer lists as replicas.
    fn note_removed(&mut self, before: Option<&Vec<String>>, now: &LeaderAndIsr) {
        let gone: Vec<String> = before
            .into_iter()
            .flatten()
            .filter(|n| !now.replicas.contains(n))
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.removed.entry(now.partition).or_default().extend(gone);
        }
    }
}

/// Writes each state with its `replicas`, [`BATCH`] partitions per multi.
/// Returns those written (with their new `zk_version`) and the ids of
/// those that conflicted or whose outcome is unknown.
async fn write(
    ctx: &Ctx<'_>,
    writes: &[(Phase, LeaderAndIsr)],
) -> Result<(Vec<(Phase, LeaderAndIsr)>, Vec<u32>), Failure> {
    let epoch_path = ctx.paths.controller_epoch();
    let mut pending = Vec::new();
    for chunk in writes.chunks(BATCH) {
        let mut w = ctx.client.new_multi_writer();
        let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
            w.add_check_version(&epoch_path, ctx.epoch_version)?;
            for (_, s) in chunk {
                let p = s.partition;
                w.add_set_data(
                    &ctx.paths.state(p),
                    &encode(&StateZnode::of(s)),
                    Some(s.zk_version),
                )?;
                w.add_set_data(&ctx.paths.replicas(p), &encode(&s.replicas), None)?;
            }
            Ok(())
        };
        build(&mut w).map_err(|e| Failure::Zk("build a multi".into(), e))?;
        pending.push((chunk, w.commit()));
    }
    let mut written = Vec::new();
    let mut unsure = Vec::new();
    for (chunk, fut) in pending {
        match fut.await {
            Ok(results) => {
                for (i, (phase, s)) in chunk.iter().enumerate() {
                    match results.get(1 + 2 * i) {
                        Some(zk::MultiWriteResult::SetData { stat }) => {
                            let mut s = s.clone();
                            s.zk_version = stat.version;
                            written.push((*phase, s));
                        }
                        _ => unsure.push(s.partition),
                    }
                }
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
                return Err(Failure::Deposed(format!(
                    "{epoch_path} moved past version {} ({source}); reassignment writes refused",
                    ctx.epoch_version
                )));
            }
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion | zk::Error::NoNode,
                ..
            })
            | Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::ConnectionLoss,
            }) => unsure.extend(chunk.iter().map(|(_, s)| s.partition)),
            Err(e) => return Err(Failure::Zk("write reassignment states".into(), e.into())),
        }
    }
    Ok((written, unsure))
}

/// Removes `finished` from the znode read as `z` at `version`, or deletes
/// it when nothing is left; a version conflict leaves it for the next
/// reconciliation (those partitions are found done again).
async fn remove(
    ctx: &Ctx<'_>,
    path: &str,
    mut z: ReassignZnode,
    version: i32,
    finished: &[String],
) -> Result<(), Failure> {
    z.partitions.retain(|k, _| !finished.contains(k));
    let outcome = if z.partitions.is_empty() {
        ctx.client.delete(path, Some(version)).await
    } else {
        ctx.client
            .set_data(path, &encode(&z), Some(version))
            .await
            .map(|_| ())
    };
    match outcome {
        Ok(()) => {
            if z.partitions.is_empty() {
                tracing::info!(
                    "reassignment {}: {path} deleted",
                    if z.cancel { "cancelled" } else { "complete" }
                );
            }
            Ok(())
        }
        Err(zk::Error::BadVersion | zk::Error::NoNode | zk::Error::ConnectionLoss) => Ok(()),
        Err(e) => Err(Failure::Zk(format!("update {path}"), e)),
    }
}

/// Watches `/admin/reassign` for its next creation, change or deletion
/// (one-shot).
pub(crate) async fn watch(
    ctx_client: &zk::Client,
    paths: &Paths,
) -> Result<zk::OneshotWatcher, Failure> {
    let path = path(paths);
    znode::retry_loss(|| ctx_client.check_and_watch_stat(&path))
        .await
        .map(|(_, w)| w)
        .map_err(|e| Failure::Zk(format!("watch {path}"), e))
}
