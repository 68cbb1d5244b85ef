//! What the controller sends out once it has decided: compare-and-set state
//! writes to ZooKeeper, log end offset queries to nodes, and the
//! `leader_and_isr` notices queued for every live node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::task::JoinSet;
use zookeeper_client as zk;

use super::super::decide::{Decision, Offsets};
use super::super::znode::{self, StateZnode, encode};
use super::{BATCH, Controller, Exit, FullTo, MULTI_WINDOW, OFFSETS_TIMEOUT};
use crate::cluster::{LeaderAndIsr, Leaders, NodeAddr};

impl Controller {
    /// Writes `decisions` with compare-and-set, [`BATCH`] per multi, every
    /// multi in flight at once. Returns the decisions written (with their
    /// new `zk_version`) and those whose write conflicted or whose outcome
    /// is unknown.
    pub(super) async fn write(
        &self,
        decisions: Vec<Decision>,
    ) -> Result<(Vec<Decision>, Vec<Decision>), Exit> {
        let paths = &self.shared.paths;
        let epoch_path = paths.controller_epoch();
        let chunks: Vec<&[Decision]> = decisions.chunks(BATCH).collect();
        let answers = self
            .fenced_multis(&chunks, |w, d| {
                let s = &d.state;
                w.add_set_data(
                    &paths.state(s.partition),
                    &encode(&StateZnode::of(s)),
                    Some(s.zk_version),
                )
                .map(drop)
            })
            .await;
        let mut written = Vec::new();
        let mut unsure = Vec::new();
        for (chunk, answer) in chunks.into_iter().zip(answers) {
            match answer? {
                Ok(results) => {
                    for (d, r) in chunk.iter().zip(results.iter().skip(1)) {
                        let mut d = d.clone();
                        match r {
                            zk::MultiWriteResult::SetData { stat } => {
                                d.state.zk_version = stat.version;
                                written.push(d);
                            }
                            _ => unsure.push(d),
                        }
                    }
                }
                Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => {
                    return Err(Exit::Deposed(format!(
                        "{epoch_path} moved past version {} ({source}); state writes refused",
                        self.won.epoch_version
                    )));
                }
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::BadVersion | zk::Error::NoNode,
                    ..
                })
                | Err(zk::MultiWriteError::RequestFailed {
                    source: zk::Error::ConnectionLoss,
                }) => unsure.extend(chunk.iter().cloned()),
                Err(e) => return Err(Exit::zk("write partition states", e.into())),
            }
        }
        Ok((written, unsure))
    }

    /// Sends one ZooKeeper multi per chunk, at most [`MULTI_WINDOW`] in
    /// flight (`znode::windowed`), each fenced: its first operation checks
    /// that `/controller_epoch` still has the version this controller won
    /// with, so a deposed controller's multis all fail whole; `add` adds a
    /// chunk item's operations after it. One answer per chunk, in order;
    /// an answer's results include the check's, first.
    pub(super) async fn fenced_multis<T>(
        &self,
        chunks: &[&[T]],
        add: impl Fn(&mut zk::MultiWriter<'_>, &T) -> Result<(), zk::Error>,
    ) -> Vec<Result<Result<Vec<zk::MultiWriteResult>, zk::MultiWriteError>, Exit>> {
        let epoch_path = self.shared.paths.controller_epoch();
        znode::windowed(chunks, MULTI_WINDOW, |chunk| {
            let mut w = self.client.new_multi_writer();
            let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
                w.add_check_version(&epoch_path, self.won.epoch_version)?;
                chunk.iter().try_for_each(|item| add(w, item))
            };
            // Sent now (when `commit` is called), answered when awaited.
            let sent = build(&mut w).map(|()| w.commit());
            async move {
                match sent {
                    Ok(answer) => Ok(answer.await),
                    Err(e) => Err(Exit::zk("build a multi", e)),
                }
            }
        })
        .await
    }

    /// Asks every node in `asks` (one call per node, all at once) for the
    /// log end offsets of its partitions. Nodes that fail or time out are
    /// logged and left out.
    pub(super) async fn ask_offsets(&self, asks: BTreeMap<String, Vec<u32>>) -> Offsets {
        let mut calls = JoinSet::new();
        for (node, partitions) in asks {
            let Some(addr) = self.live.get(&node) else {
                continue;
            };
            let call = self
                .shared
                .rpc
                .log_end_offsets(addr.clone(), self.won.epoch, partitions);
            calls.spawn(async move { (node, tokio::time::timeout(OFFSETS_TIMEOUT, call).await) });
        }
        let mut offsets = Offsets::new();
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((node, Ok(Ok(list)))) => {
                    for o in list {
                        offsets.insert((o.partition, node.clone()), o.log_end_offset);
                    }
                }
                Ok((node, Ok(Err(e)))) => {
                    tracing::warn!("node {node} did not report its log end offsets: {e}")
                }
                Ok((node, Err(_))) => tracing::warn!(
                    "node {node} did not report its log end offsets within {} ms",
                    OFFSETS_TIMEOUT.as_millis()
                ),
                Err(e) => tracing::warn!("log end offset query failed: {e}"),
            }
        }
        offsets
    }

    /// Queues for every live node (but those leaving) the full states of
    /// the changed partitions it hosts (all it hosts for the nodes in
    /// `full_to`), and for routing one map of the changed partitions'
    /// leaders (of every partition for the nodes in `full_to`), built
    /// once and shared by every mailbox; delivery retries until each node
    /// acknowledges. A node "hosts" a partition it is a replica of, in the
    /// ISR of, or the leader of; the nodes a reassignment step just removed
    /// from a partition's replicas (`removed`) get its full state too, so
    /// they close the replica and delete its directory.
    pub(super) fn notify(
        &mut self,
        states: &BTreeMap<u32, LeaderAndIsr>,
        changed: &BTreeSet<u32>,
        removed: &BTreeMap<u32, Vec<String>>,
        full_to: FullTo,
    ) {
        let nodes: Vec<NodeAddr> = self
            .live
            .values()
            .filter(|n| !self.leaving.contains(&n.id))
            .cloned()
            .collect();
        let is_full = |id: &str| match &full_to {
            FullTo::All => true,
            FullTo::Nodes(set) => set.contains(id),
        };
        let any_full = nodes.iter().any(|n| is_full(&n.id));
        // Per node, the states it gets in full (one pass over the states).
        let mut hosted: BTreeMap<&str, Vec<&LeaderAndIsr>> = BTreeMap::new();
        for s in states.values() {
            let wanted = changed.contains(&s.partition);
            let mut to: Vec<&str> = s
                .replicas
                .iter()
                .chain(&s.isr)
                .chain(&s.leader)
                .map(String::as_str)
                .filter(|id| wanted || (any_full && is_full(id)))
                .chain(
                    removed
                        .get(&s.partition)
                        .into_iter()
                        .flatten()
                        .map(String::as_str),
                )
                .collect();
            to.sort_unstable();
            to.dedup();
            for id in to {
                hosted.entry(id).or_default().push(s);
            }
        }
        let delta = Arc::new(Leaders::of(
            states.values().filter(|s| changed.contains(&s.partition)),
            false,
        ));
        let all = any_full.then(|| Arc::new(Leaders::of(states.values(), true)));
        for node in &nodes {
            let Some(&node_epoch) = self.epochs.get(&node.id) else {
                continue;
            };
            let payload: Vec<LeaderAndIsr> = hosted
                .get(node.id.as_str())
                .map(|v| v.iter().map(|s| (*s).clone()).collect())
                .unwrap_or_default();
            let leaders = match &all {
                Some(all) if is_full(&node.id) => all.clone(),
                _ => delta.clone(),
            };
            self.notices
                .send(node, node_epoch, payload, Some(leaders), nodes.clone());
        }
    }
}
