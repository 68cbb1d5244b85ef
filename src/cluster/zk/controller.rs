//! Controller election and the controller itself.
//!
//! Election: every node runs [`candidacy`]. A node wins by a multi that
//! creates the ephemeral `/controller` and bumps `/controller_epoch` with
//! compare-and-set on its version; the losers watch `/controller` and try
//! again when it vanishes. The winner keeps the version of
//! `/controller_epoch` it wrote: every later controller write is a multi
//! starting with a check of that version, so a deposed controller (one
//! whose epoch was bumped by a newer controller) cannot write anything.
//!
//! The controller reconciles every partition on election, on every change
//! of `/nodes`, `/draining` and `/admin/reassign` (one-shot watches,
//! re-armed on each read) and every [`TICK`] (5 minutes); it reconciles
//! only the partitions named by ISR change notifications when
//! `/isr_change` changes:
//! 1. reads every partition's state (pipelined gets in a window of
//!    `znode::READ_WINDOW`; the ISR is written by leaders, so state is
//!    always read fresh, never cached; `replicas` are cached: only the
//!    controller writes them, and the cache follows its own writes,
//!    `reassign_ctl.rs`);
//! 2. creates the partitions `0..partition_count` that are missing once
//!    `replication_factor` nodes are live;
//! 3. elects leaders where the leader is not live (log end offsets asked
//!    with one `log_end_offsets` call per node, concurrently) and removes
//!    dead followers from ISRs;
//! 4. drives the replica reassignments of `/admin/reassign` one step
//!    further (`reassign.rs`, `reassign_ctl.rs`; watched, so a new or
//!    changed reassignment starts a reconciliation), then moves leadership
//!    back to preferred replicas (when enabled);
//! 5. writes the new states with compare-and-set on each znode version, in
//!    multis of up to [`BATCH`] partitions, at most [`MULTI_WINDOW`] of
//!    them in flight (so the session's heartbeats, and other sessions'
//!    requests, never queue behind thousands of operations); a partition
//!    whose write conflicts is read again and decided again (after
//!    [`ROUNDS`], again [`RETRY`] later);
//! 6. queues for each live node the full states of the changed partitions
//!    it hosts (of every partition it hosts, after an election and to a
//!    node that joined), the leaders of the changed partitions (of every
//!    partition, after an election and to a node that joined) for routing,
//!    and the live nodes. The leaders are one compact map per notice round
//!    (`cluster::Leaders`, 16 bytes a partition, replica lists stored
//!    once), shared by every mailbox: a round costs one copy of each changed state per replica and one map,
//!    not N x P states. Each node's queue is delivered in one
//!    `leader_and_isr` at a time, retried with backoff until the node
//!    acknowledges it or leaves (`notify.rs`).
//!
//! Why an idle controller reads nothing: what the controller decides
//! depends on the live nodes (`/nodes`, watched), the controlled-shutdown
//! markers (`/draining`, watched), the partitions' existence (created by
//! the controller itself) and their states. A state changes only by a
//! controller write (the controller knows) or by a leader's ISR change,
//! and every ISR change is written in one multi with a sequential
//! `/isr_change/<p>-<seq>` znode (Kafka's `/isr_change_notification`).
//! The controller watches `/isr_change`; on a change it lists and deletes
//! the notifications, then reads and decides the partitions they name
//! (deleted before the read, so a change after the read leaves a new
//! notification and a new event). That catches what the old 3 s tick was
//! for: a preferred leader back in the ISR (moved back), an ISR member
//! needed by a controlled shutdown. The [`TICK`] stays as a safety net for
//! what no event says (a bug, a notification deleted by hand); at 5
//! minutes (Kafka's leader imbalance check interval) an idle cluster of
//! 100,000 partitions costs ZooKeeper ~330 reads per second on average
//! instead of ~7,000, and a cluster of 1,000 partitions ~3.
//!
//! Node epochs (KIP-380): the controller knows each live node's node
//! epoch (the czxid of `/nodes/<id>`). A node seen again under a new node
//! epoch bounced (restart, expired session): it is handled as a node that
//! left (a reconciliation without it: new leaders where it led, out of the
//! ISRs) and then joined (full state to its new registration). Leaderships
//! are stamped with the leader's node epoch, so a bounce the controller
//! did not see (it was elected later) is caught from the state itself
//! (`decide.rs`).
//!
//! Invariants:
//! - Controller notices are retried until the node acknowledges them or
//!   leaves; every notice names the node epoch it was issued for.
//! - A node never keeps, through the controller, a leadership given to an
//!   earlier registration of it: it gets a new leader epoch or none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use zookeeper_client as zk;

use super::decide::{self, Decision, Live, Offsets, Reason};
use super::drain;
use super::notify::Notifier;
use super::reassign_ctl;
use super::znode::{self, ControllerZnode, StateZnode, decode, encode, zk_error};
use super::{Shared, session_over};
use crate::cluster::{LeaderAndIsr, Leaders, NodeAddr};
use crate::error::Error;

/// Partitions per ZooKeeper multi.
pub(crate) const BATCH: usize = 100;

/// Multis one call (`create_partitions`, `write`) has made and not yet
/// seen answered, at most (`znode::windowed`): a creation multi is 301
/// operations, so at most ~1,200 of this session's operations sit in
/// ZooKeeper's queue ahead of anyone else's request.
pub(crate) const MULTI_WINDOW: usize = 4;

/// How often the controller re-reads every state: a safety net for
/// anything an event did not say (see the module doc). Every change the
/// controller acts on has an event (`/nodes`, `/draining`, the ISR change
/// notifications), so an idle cluster costs ZooKeeper one pass per tick.
pub(crate) const TICK: Duration = Duration::from_secs(300);

/// How soon a reconciliation that left write conflicts unresolved (after
/// [`ROUNDS`]) is tried again.
const RETRY: Duration = Duration::from_secs(3);

/// How long a node may take to report its log end offsets.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(3);

/// Rounds of decide-write-reread for partitions whose write conflicts,
/// per reconciliation.
const ROUNDS: usize = 5;

/// Why a controller stopped.
#[derive(Debug)]
enum Exit {
    /// The session is over; the supervisor starts a new one.
    Session(zk::Error),
    /// Another controller took over (epoch bumped, `/controller` gone).
    Deposed(String),
    /// Anything else; this node resigns and runs for election again.
    Failed(Error),
}

impl Exit {
    /// Classifies a ZooKeeper error met while doing `what`.
    fn zk(what: &str, e: zk::Error) -> Exit {
        if session_over(&e) {
            Exit::Session(e)
        } else {
            Exit::Failed(zk_error(what, e))
        }
    }
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        Exit::Failed(e)
    }
}

impl From<reassign_ctl::Failure> for Exit {
    fn from(f: reassign_ctl::Failure) -> Exit {
        match f {
            reassign_ctl::Failure::Deposed(why) => Exit::Deposed(why),
            reassign_ctl::Failure::Zk(what, e) => Exit::zk(&what, e),
            reassign_ctl::Failure::Other(e) => Exit::Failed(e),
        }
    }
}

/// A won election.
#[derive(Clone, Copy, Debug)]
struct Won {
    /// The controller epoch this node was elected at.
    epoch: u64,
    /// The version of `/controller_epoch` holding `epoch`.
    epoch_version: i32,
}

/// Runs for controller for as long as `client`'s session lives: campaigns,
/// controls when elected, follows the controller otherwise.
pub(crate) async fn candidacy(shared: Arc<Shared>, client: zk::Client) {
    loop {
        match campaign(&shared, &client).await {
            Ok(Some(won)) => {
                *shared.controller.write() = Some(shared.me.id.clone());
                tracing::info!("elected controller at controller epoch {}", won.epoch);
                let exit = Controller::new(shared.clone(), client.clone(), won)
                    .run()
                    .await;
                *shared.controller.write() = None;
                match exit {
                    Exit::Session(e) => {
                        tracing::warn!("controller stopped: ZooKeeper session over ({e})");
                        return;
                    }
                    Exit::Deposed(why) => {
                        tracing::warn!("deposed as controller (epoch {}): {why}", won.epoch);
                        resign(&shared, &client).await;
                    }
                    Exit::Failed(e) => {
                        tracing::error!("controller failed: {e}; resigning");
                        resign(&shared, &client).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(None) => {
                if !follow(&shared, &client).await {
                    return;
                }
            }
            Err(Exit::Session(_)) => return,
            Err(e) => {
                tracing::warn!("controller election: {e:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One attempt at `/controller`: `Some` when this node won, `None` when
/// another node holds it.
async fn campaign(shared: &Shared, client: &zk::Client) -> Result<Option<Won>, Exit> {
    let paths = &shared.paths;
    let epoch_path = paths.controller_epoch();
    let ctrl_path = paths.controller();
    loop {
        let (data, stat) = znode::retry_loss(|| client.get_data(&epoch_path))
            .await
            .map_err(|e| Exit::zk(&format!("read {epoch_path}"), e))?;
        let epoch: u64 = decode(&epoch_path, &data)?;
        let next = epoch + 1;
        let me = ControllerZnode {
            node_id: shared.me.id.clone(),
            controller_epoch: next,
        };
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let mut w = client.new_multi_writer();
        w.add_create(&ctrl_path, &encode(&me), &ephemeral)
            .map_err(|e| Exit::zk("build the election multi", e))?;
        w.add_set_data(&epoch_path, &encode(&next), Some(stat.version))
            .map_err(|e| Exit::zk("build the election multi", e))?;
        match w.commit().await {
            Ok(results) => {
                let epoch_version = match results.get(1) {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                    _ => stat.version + 1,
                };
                return Ok(Some(Won {
                    epoch: next,
                    epoch_version,
                }));
            }
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NodeExists,
            }) => return Ok(None),
            // Another node bumped the epoch meanwhile: try again.
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion,
                ..
            }) => continue,
            Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::ConnectionLoss,
            }) => {
                // Outcome unknown: won if /controller is ours at `next`.
                if let Some(won) = check_won(client, paths, next).await? {
                    return Ok(Some(won));
                }
            }
            Err(e) => return Err(Exit::zk("controller election", e.into())),
        }
    }
}

/// After an election multi with unknown outcome: whether `/controller` is
/// this session's at `epoch`, and the version of `/controller_epoch`.
async fn check_won(
    client: &zk::Client,
    paths: &super::Paths,
    epoch: u64,
) -> Result<Option<Won>, Exit> {
    let ctrl_path = paths.controller();
    let (data, stat) = match znode::retry_loss(|| client.get_data(&ctrl_path)).await {
        Ok(x) => x,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(e) => return Err(Exit::zk(&format!("read {ctrl_path}"), e)),
    };
    let holder: ControllerZnode = decode(&ctrl_path, &data)?;
    if stat.ephemeral_owner != client.session_id().0 || holder.controller_epoch != epoch {
        return Ok(None);
    }
    let epoch_path = paths.controller_epoch();
    let (data, stat) = znode::retry_loss(|| client.get_data(&epoch_path))
        .await
        .map_err(|e| Exit::zk(&format!("read {epoch_path}"), e))?;
    let current: u64 = decode(&epoch_path, &data)?;
    if current != epoch {
        return Ok(None);
    }
    Ok(Some(Won {
        epoch,
        epoch_version: stat.version,
    }))
}

/// Notes the current controller and waits until `/controller` changes.
/// False when the session is over.
async fn follow(shared: &Shared, client: &zk::Client) -> bool {
    let ctrl_path = shared.paths.controller();
    match client.get_and_watch_data(&ctrl_path).await {
        Ok((_, stat, _)) if stat.ephemeral_owner == client.session_id().0 => {
            // Ours without a controller running (an election answer lost
            // in a way `check_won` did not recognise): hand it back.
            tracing::warn!("{ctrl_path} is held by this session without a controller; resigning");
            resign(shared, client).await;
            true
        }
        Ok((data, _, watcher)) => {
            let holder = decode::<ControllerZnode>(&ctrl_path, &data)
                .map(|c| c.node_id)
                .map_err(|e| tracing::warn!("{e}"))
                .ok();
            *shared.controller.write() = holder;
            let event = watcher.changed().await;
            !event.session_state.is_terminated()
        }
        Err(zk::Error::NoNode) => {
            *shared.controller.write() = None;
            true
        }
        Err(e) if session_over(&e) => false,
        Err(e) => {
            tracing::debug!("cannot watch {ctrl_path}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            true
        }
    }
}

/// Deletes `/controller` if this session holds it, so that a new election
/// takes place.
async fn resign(shared: &Shared, client: &zk::Client) {
    let path = shared.paths.controller();
    if let Ok(Some(stat)) = znode::retry_loss(|| client.check_stat(&path)).await
        && stat.ephemeral_owner == client.session_id().0
    {
        match znode::retry_loss(|| client.delete(&path, Some(stat.version))).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => tracing::warn!("cannot resign as controller: {e}"),
        }
    }
}

/// Who gets the full state of every partition in a notice.
enum FullTo {
    /// Every live node (after an election).
    All,
    /// These nodes (they just joined).
    Nodes(BTreeSet<String>),
}

/// The elected controller.
struct Controller {
    /// Shared node state.
    shared: Arc<Shared>,
    /// The session the controller was elected in.
    client: zk::Client,
    /// The epoch it was elected at and the version of `/controller_epoch`.
    won: Won,
    /// Assigned replicas per partition (changed only by this controller's
    /// reassignment writes, which update it).
    replicas: BTreeMap<u32, Vec<String>>,
    /// Live nodes by id.
    live: BTreeMap<String, NodeAddr>,
    /// Node epoch of each live node's registration.
    epochs: Live,
    /// `/nodes/*` as last listed and read (only new entries are read).
    registrations: znode::Registrations,
    /// Nodes that bounced, left out of the reconciliation in progress (it
    /// handles them as gone).
    leaving: BTreeSet<String>,
    /// Controlled-shutdown markers (`/draining/*`): node id, node epoch.
    draining: Vec<(String, i64)>,
    /// Live node count last reported as too few for the initial
    /// assignment (to log that once per change).
    waiting_logged: Option<usize>,
    /// `leader_and_isr` notices not acknowledged yet, per node.
    notices: Notifier,
    /// The last reconciliation left write conflicts: try again after
    /// [`RETRY`].
    conflicts: bool,
}

impl Controller {
    fn new(shared: Arc<Shared>, client: zk::Client, won: Won) -> Controller {
        let notices = Notifier::new(shared.rpc.clone(), won.epoch);
        Controller {
            shared,
            client,
            won,
            notices,
            replicas: BTreeMap::new(),
            live: BTreeMap::new(),
            epochs: Live::new(),
            registrations: znode::Registrations::default(),
            leaving: BTreeSet::new(),
            draining: Vec::new(),
            waiting_logged: None,
            conflicts: false,
        }
    }

    /// Controls until deposed, failed or the session ends.
    async fn run(mut self) -> Exit {
        match self.control().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn control(&mut self) -> Result<std::convert::Infallible, Exit> {
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
        znode::mkdir(&self.client, &path)
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
        znode::mkdir(&self.client, &path)
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
    fn draining_ids(&self) -> BTreeSet<String> {
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
    fn live_epochs(&self) -> Live {
        let mut live = self.epochs.clone();
        live.retain(|id, _| !self.leaving.contains(id));
        live
    }

    /// One reconciliation (see the module doc): read, create, elect,
    /// rebalance, write, notify.
    async fn reconcile(&mut self, full_to: FullTo) -> Result<(), Exit> {
        self.reconcile_some(None, full_to).await
    }

    /// A reconciliation of partitions `only` (an ISR change notification:
    /// no creation), or of every partition.
    async fn reconcile_some(
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
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
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
        let answers = znode::windowed(&chunks, MULTI_WINDOW, |chunk| {
            let mut w = self.client.new_multi_writer();
            let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
                w.add_check_version(&epoch_path, self.won.epoch_version)?;
                for s in chunk.iter() {
                    let p = s.partition;
                    w.add_create(&paths.partition(p), &[], &persistent)?;
                    w.add_create(&paths.replicas(p), &encode(&s.replicas), &persistent)?;
                    w.add_create(&paths.state(p), &encode(&StateZnode::of(s)), &persistent)?;
                }
                Ok(())
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

    /// Writes `decisions` with compare-and-set, [`BATCH`] per multi, every
    /// multi in flight at once. Returns the decisions written (with their
    /// new `zk_version`) and those whose write conflicted or whose outcome
    /// is unknown.
    async fn write(
        &self,
        decisions: Vec<Decision>,
    ) -> Result<(Vec<Decision>, Vec<Decision>), Exit> {
        let paths = &self.shared.paths;
        let epoch_path = paths.controller_epoch();
        let chunks: Vec<&[Decision]> = decisions.chunks(BATCH).collect();
        let answers = znode::windowed(&chunks, MULTI_WINDOW, |chunk| {
            let mut w = self.client.new_multi_writer();
            let build = |w: &mut zk::MultiWriter<'_>| -> Result<(), zk::Error> {
                w.add_check_version(&epoch_path, self.won.epoch_version)?;
                for d in chunk.iter() {
                    let s = &d.state;
                    let data = encode(&StateZnode::of(s));
                    w.add_set_data(&paths.state(s.partition), &data, Some(s.zk_version))?;
                }
                Ok(())
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

    /// Asks every node in `asks` (one call per node, all at once) for the
    /// log end offsets of its partitions. Nodes that fail or time out are
    /// logged and left out.
    async fn ask_offsets(&self, asks: BTreeMap<String, Vec<u32>>) -> Offsets {
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
    fn notify(
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
