//! The elected controller's event loop: the watches of `/controller`,
//! `/nodes`, `/draining`, `/isr_change` and `/admin/reassign`, the tick,
//! and the live-node bookkeeping each event updates.

use std::collections::BTreeSet;

use zookeeper_client as zk;

use super::super::decide::{self, Live};
use super::super::drain;
use super::super::reassign_ctl;
use super::super::session_over;
use super::super::znode::{self, ControllerZnode, decode};
use super::{Controller, Exit, FullTo, RETRY, TICK};
use crate::cluster::NodeAddr;

impl Controller {
    pub(super) async fn control(&mut self) -> Result<std::convert::Infallible, Exit> {
        let paths = self.shared.paths.clone();
        let ctrl_path = paths.controller();
        let (data, stat, ctrl_watch) = self
            .client
            .get_and_watch_data(&ctrl_path)
            .await
            .map_err(|e| Exit::zk(&format!("read {ctrl_path}"), e))?;
        let holder: ControllerZnode = decode(&ctrl_path, &data)?;
        if stat.ephemeral_owner != self.client.session_id().0
            || holder.controller_epoch != self.won.epoch
        {
            return Err(Exit::Deposed(format!(
                "{ctrl_path} is held by {} at epoch {}",
                holder.node_id, holder.controller_epoch
            )));
        }
        let ctrl_changed = ctrl_watch.changed();
        tokio::pin!(ctrl_changed);

        let nodes_path = paths.nodes();
        let (ids, stat, watcher) = self
            .client
            .get_and_watch_children(&nodes_path)
            .await
            .map_err(|e| Exit::zk(&format!("watch {nodes_path}"), e))?;
        let mut nodes_changed = Box::pin(watcher.changed());
        self.registrations
            .update(&self.client, &paths, &ids, &stat)
            .await?;
        self.set_live(self.registrations.list());
        let mut draining_changed = Box::pin(self.watch_draining().await?.changed());
        // Notifications already there are covered by the full reconcile.
        let mut isr_changed = Box::pin(self.take_isr_changes().await?.1.changed());
        let mut reassign_changed =
            Box::pin(reassign_ctl::watch(&self.client, &paths).await?.changed());
        tracing::info!(
            "controller epoch {}: live nodes [{}]",
            self.won.epoch,
            self.live_ids().into_iter().collect::<Vec<_>>().join(", ")
        );
        self.reconcile(FullTo::All).await?;

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                event = &mut ctrl_changed => {
                    if event.session_state.is_terminated() {
                        return Err(Exit::Session(zk::Error::SessionExpired));
                    }
                    return Err(Exit::Deposed(format!("{ctrl_path} changed ({:?})", event.event_type)));
                }
                event = &mut nodes_changed => {
                    if event.session_state.is_terminated() {
                        return Err(Exit::Session(zk::Error::SessionExpired));
                    }
                    let (ids, stat, watcher) = znode::retry_loss(|| self.client.get_and_watch_children(&nodes_path))
                        .await
                        .map_err(|e| Exit::zk(&format!("watch {nodes_path}"), e))?;
                    nodes_changed = Box::pin(watcher.changed());
                    let before_epochs = self.epochs.clone();
                    let before = self.live_ids();
                    self.registrations.update(&self.client, &paths, &ids, &stat).await?;
                    self.set_live(self.registrations.list());
                    let after = self.live_ids();
                    let bounced = decide::bounced(&before_epochs, &self.epochs);
                    let mut joined: BTreeSet<String> = after.difference(&before).cloned().collect();
                    joined.extend(bounced.iter().cloned());
                    let left: Vec<String> = before.difference(&after).cloned().collect();
                    if joined.is_empty() && left.is_empty() {
                        continue;
                    }
                    tracing::info!(
                        "nodes joined [{}], left [{}], bounced (new node epoch) [{}]; live [{}]",
                        joined.iter().cloned().collect::<Vec<_>>().join(", "),
                        left.join(", "),
                        bounced.iter().cloned().collect::<Vec<_>>().join(", "),
                        after.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                    if !bounced.is_empty() {
                        // Leave, then join: first as if they were gone.
                        self.leaving = bounced;
                        let left = self.reconcile(FullTo::Nodes(BTreeSet::new())).await;
                        self.leaving.clear();
                        left?;
                    }
                    self.reconcile(FullTo::Nodes(joined)).await?;
                }
                event = &mut draining_changed => {
                    if event.session_state.is_terminated() {
                        return Err(Exit::Session(zk::Error::SessionExpired));
                    }
                    draining_changed = Box::pin(self.watch_draining().await?.changed());
                    self.reconcile(FullTo::Nodes(BTreeSet::new())).await?;
                }
                event = &mut isr_changed => {
                    if event.session_state.is_terminated() {
                        return Err(Exit::Session(zk::Error::SessionExpired));
                    }
                    let (ids, watcher) = self.take_isr_changes().await?;
                    isr_changed = Box::pin(watcher.changed());
                    if !ids.is_empty() {
                        self.reconcile_some(Some(ids), FullTo::Nodes(BTreeSet::new())).await?;
                    }
                }
                event = &mut reassign_changed => {
                    if event.session_state.is_terminated() {
                        return Err(Exit::Session(zk::Error::SessionExpired));
                    }
                    reassign_changed =
                        Box::pin(reassign_ctl::watch(&self.client, &paths).await?.changed());
                    self.reconcile(FullTo::Nodes(BTreeSet::new())).await?;
                }
                _ = tokio::time::sleep(RETRY), if self.conflicts => {
                    self.reconcile(FullTo::Nodes(BTreeSet::new())).await?;
                }
                _ = tick.tick() => {
                    self.reconcile(FullTo::Nodes(BTreeSet::new())).await?;
                }
            }
        }
    }

    /// Reads the controlled-shutdown markers and watches `/draining` for
    /// the next change (one-shot watch).
    async fn watch_draining(&mut self) -> Result<zk::OneshotWatcher, Exit> {
        let paths = self.shared.paths.clone();
        let path = paths.draining();
        znode::mkdir(&self.client, &self.shared.paths, &path)
            .await
            .map_err(|e| Exit::zk(&format!("create {path}"), e))?;
        let (ids, _, watcher) = znode::retry_loss(|| self.client.get_and_watch_children(&path))
            .await
            .map_err(|e| Exit::zk(&format!("watch {path}"), e))?;
        let markers = znode::read_draining(&self.client, &paths, &ids).await?;
        let before = drain::current(&self.draining, &self.epochs);
        self.draining = markers;
        let now = drain::current(&self.draining, &self.epochs);
        let started: Vec<String> = now.difference(&before).cloned().collect();
        if !started.is_empty() {
            tracing::info!(
                "controlled shutdown of [{}]: moving their leaderships away",
                started.join(", ")
            );
        }
        Ok(watcher)
    }

    /// Takes the ISR change notifications (`/isr_change/*`): lists them,
    /// watching for the next (one-shot watch), and deletes them. Returns
    /// the partitions they name, to be read after the deletion (a change
    /// written after the read leaves a new notification).
    async fn take_isr_changes(&mut self) -> Result<(Vec<u32>, zk::OneshotWatcher), Exit> {
        let path = self.shared.paths.isr_change();
        znode::mkdir(&self.client, &self.shared.paths, &path)
            .await
            .map_err(|e| Exit::zk(&format!("create {path}"), e))?;
        let (names, _, watcher) = znode::retry_loss(|| self.client.get_and_watch_children(&path))
            .await
            .map_err(|e| Exit::zk(&format!("watch {path}"), e))?;
        let deleted = znode::windowed(&names, znode::READ_WINDOW, |name| {
            self.client.delete(&format!("{path}/{name}"), None)
        })
        .await;
        for (name, r) in names.iter().zip(deleted) {
            match r {
                Ok(()) | Err(zk::Error::NoNode) => {}
                // Left for the next event or tick; the partition is read now.
                Err(e) if !session_over(&e) => {
                    tracing::debug!("cannot delete {path}/{name}: {e}")
                }
                Err(e) => return Err(Exit::zk(&format!("delete {path}/{name}"), e)),
            }
        }
        let mut ids: Vec<u32> = names
            .iter()
            .filter_map(|n| znode::isr_change_partition(n))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok((ids, watcher))
    }

    /// The nodes in controlled shutdown (markers of their current
    /// registration).
    pub(super) fn draining_ids(&self) -> BTreeSet<String> {
        drain::current(&self.draining, &self.epochs)
    }

    /// Records the live nodes and their node epochs; drops the notices
    /// of registrations that are gone.
    fn set_live(&mut self, nodes: Vec<(NodeAddr, i64)>) {
        self.epochs = nodes.iter().map(|(n, e)| (n.id.clone(), *e)).collect();
        self.live = nodes.into_iter().map(|(n, _)| (n.id.clone(), n)).collect();
        self.notices.retain(&self.epochs);
    }

    fn live_ids(&self) -> BTreeSet<String> {
        self.live.keys().cloned().collect()
    }

    /// The live nodes and node epochs the decisions see: without the nodes
    /// being handled as leaving.
    pub(super) fn live_epochs(&self) -> Live {
        let mut live = self.epochs.clone();
        live.retain(|id, _| !self.leaving.contains(id));
        live
    }
}
