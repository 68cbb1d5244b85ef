//! Which partitions this node hosts: the table of open replicas, opened
//! and closed as the assignments this node learns change.
//!
//! Every state this node learns (controller notices carry the full state
//! of the changed partitions this node hosts, ZooKeeper reads this node's
//! own) is kept in the learned view. Notices also carry, for routing, the
//! leader of every changed partition (`cluster::Leaders`, one map shared
//! by every node's notice; every partition after an election): kept in
//! `routes`. The newer of the two (by leader epoch) answers `NOT_LEADER`
//! naming the leader, and `Metadata`, for partitions whose engine is not
//! open here; a routing entry never opens or closes an engine. A partition whose newest learned state lists
//! this node in `replicas` gets its engine opened; one whose newest state
//! does not gets it closed.
//!
//! Invariants:
//! - a partition's engine is open (in `hosted`) iff this node is in its
//!   `replicas` as last learned, or it is being opened or closed, or no
//!   state of it was learned yet since startup (a data directory found at
//!   startup is opened before ZooKeeper is reached, so the controller's
//!   offset questions find its log);
//! - one worker per partition at a time (`busy`) opens or closes its
//!   engine, on the blocking pool, never on a runtime worker; after each
//!   step it looks at the newest learned state again, so a state arriving
//!   meanwhile is never lost (the newest wins) and the notice path never
//!   waits for an engine;
//! - an engine opened is given the newest learned state, and the grant of
//!   leadership a notice for this registration carried, under the table
//!   lock, before it enters `hosted`: every later state goes to it
//!   directly;
//! - closing first removes the replica from `hosted` (requests then get
//!   `NOT_LEADER` naming the leader, followers' fetches `NOT_LEADER`),
//!   then ends its role as a role change does (leader waiters fail, the
//!   engine steps down after the writes it admitted, the fetcher stops),
//!   marks it closed so no reconcile queued earlier gives it a role again,
//!   then closes the engine, then deletes the partition's data directory
//!   if the newest learned state still leaves this node out and its leader
//!   epoch is higher than every epoch in the data (a reassignment removes
//!   a replica with a new, higher epoch: `cluster/zk/reassign.rs`). Never
//!   on an older state: a state whose epoch the data already reaches keeps
//!   the directory (logged). A node that was down during its removal
//!   opens the directory found at startup and deletes it the same way
//!   once it learns the state. A node added later starts from an empty
//!   directory and fetches the leader's log from its start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::partition::Partition;
use super::{ReplicaLog, ReplicaManager, blocking};
use crate::cluster::{LeaderAndIsr, Leaders};
use crate::error::{Error, Result};

/// Opens and closes this node's partition engines (its data directory).
/// Both calls block on disk I/O: the manager runs them on the blocking
/// pool.
pub trait Engines: Send + Sync + 'static {
    /// Opens partition `p`'s engine in replica mode, creating its
    /// directory if needed.
    fn open(&self, p: u32) -> Result<Arc<dyn ReplicaLog>>;
    /// Closes partition `p`'s engine (writes what it admitted, stops its
    /// threads); its data stays on disk.
    fn close(&self, p: u32, log: &Arc<dyn ReplicaLog>) -> Result<()>;
    /// Deletes partition `p`'s data (its engine is closed): this node was
    /// removed from its replicas.
    fn remove(&self, p: u32) -> Result<()> {
        let _ = p;
        Ok(())
    }
}

/// Engines opened by the caller and handed over (tests): "opening" hands
/// the same engine out again, "closing" flushes it.
pub(super) struct Preopened(pub(super) Vec<Arc<dyn ReplicaLog>>);

impl Engines for Preopened {
    fn open(&self, p: u32) -> Result<Arc<dyn ReplicaLog>> {
        self.0
            .get(p as usize)
            .cloned()
            .ok_or_else(|| Error::InvalidInput(format!("no partition {p}")))
    }

    fn close(&self, _p: u32, log: &Arc<dyn ReplicaLog>) -> Result<()> {
        Ok(log.flush()?)
    }
}

/// The newest state learned of one partition.
#[derive(Clone, Debug)]
pub(super) struct Learned {
    /// The state.
    pub(super) state: LeaderAndIsr,
    /// The highest leader epoch a notice for this node's current
    /// registration granted it (carried to the replica once opened).
    pub(super) granted: Option<u32>,
}

/// The learned view and the open/close workers, behind one lock
/// (parking_lot: never held across an await).
#[derive(Default)]
pub(super) struct Table {
    /// The newest state of every partition learned, hosted or not.
    pub(super) learned: HashMap<u32, Learned>,
    /// Partitions whose worker is running.
    pub(super) busy: HashSet<u32>,
    /// Routing maps of the controller's notices (leaders of partitions
    /// not hosted here), oldest first; a full map drops those before it.
    pub(super) routes: Vec<Arc<Leaders>>,
}

/// Routing maps kept before they are merged into one.
const ROUTE_MAPS: usize = 16;

/// The newest routing entry of `p` in `table`'s maps.
fn routed(table: &Table, p: u32) -> Option<(Option<String>, u32)> {
    let mut best: Option<(Option<String>, u32)> = None;
    for m in &table.routes {
        if let Some(e) = m.get(p)
            && best
                .as_ref()
                .is_none_or(|(_, epoch)| e.leader_epoch >= *epoch)
        {
            best = Some((m.leader_of(e).map(String::from), e.leader_epoch));
        }
    }
    best
}

/// The next step of a partition's worker.
enum Step {
    /// Open its engine.
    Open,
    /// Close this replica (already out of `hosted`).
    Close(Arc<Partition>),
}

impl ReplicaManager {
    /// The partition `p` if its engine is open here; otherwise
    /// `NOT_LEADER` naming the leader this node learned (clients are
    /// forwarded to it, followers fetch elsewhere).
    pub(super) fn partition(&self, p: u32) -> Result<Arc<Partition>> {
        if let Some(part) = self.hosted.read().get(&p) {
            return Ok(part.clone());
        }
        if p >= self.count {
            return Err(Error::InvalidInput(format!("no partition {p}")));
        }
        Err(Error::NotLeader {
            partition: p,
            leader: self.learned_leader(p),
        })
    }

    /// The client address of the leader of `p` as learned (full state or
    /// routing entry, whichever has the higher leader epoch), unless it is
    /// this node.
    fn learned_leader(&self, p: u32) -> Option<String> {
        let leader = {
            let table = self.table.lock();
            let full = table
                .learned
                .get(&p)
                .map(|l| (l.state.leader.clone(), l.state.leader_epoch));
            match (full, routed(&table, p)) {
                (Some(f), Some(r)) if r.1 > f.1 => r.0,
                (Some(f), _) => f.0,
                (None, Some(r)) => r.0,
                (None, None) => None,
            }
        }
        .filter(|l| *l != self.me.id)?;
        self.client_addr(&leader)
    }

    /// The leader (`None`: offline), leader epoch and replicas of `p` in
    /// the routing maps, if any names it.
    pub(super) fn routed(&self, p: u32) -> Option<(Option<String>, u32, Vec<String>)> {
        let table = self.table.lock();
        let (leader, epoch) = routed(&table, p)?;
        let replicas = table
            .routes
            .iter()
            .rev()
            .find_map(|m| m.get(p).map(|e| m.replicas_of(e)))
            .unwrap_or_default();
        Some((leader, epoch, replicas))
    }

    /// Keeps the routing maps of a notice.
    pub(super) fn learn_leaders(&self, leaders: Vec<Arc<Leaders>>) {
        if leaders.is_empty() {
            return;
        }
        let mut table = self.table.lock();
        for m in leaders {
            if m.full {
                table.routes.clear();
            }
            table.routes.push(m);
        }
        if table.routes.len() > ROUTE_MAPS {
            let merged = Leaders::merge(&table.routes);
            table.routes = vec![Arc::new(merged)];
        }
    }

    /// The replicas open here, by partition id.
    pub(super) fn hosted(&self) -> Vec<Arc<Partition>> {
        let mut v: Vec<_> = self.hosted.read().values().cloned().collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// Ids of the partitions whose engine is open here, ascending.
    pub fn hosted_ids(&self) -> Vec<u32> {
        self.hosted().iter().map(|p| p.id).collect()
    }

    /// The engine of partition `p`, if open here (reads of the node).
    pub fn engine(&self, p: u32) -> Result<Arc<dyn crate::storage::Engine>> {
        let part = self.partition(p)?;
        let log: Arc<dyn crate::storage::Engine> = part.log.clone();
        Ok(log)
    }

    /// The newest state learned of `p`, hosted here or not.
    pub(super) fn learned(&self, p: u32) -> Option<LeaderAndIsr> {
        self.table.lock().learned.get(&p).map(|l| l.state.clone())
    }

    /// Learns `states` and reconciles the roles they change, opening or
    /// closing engines where this node's assignment changed. `notice`:
    /// they come from a controller notice for this node's current
    /// registration, so those naming this node leader grant it their
    /// epoch; otherwise (read from ZooKeeper) they grant nothing.
    pub(super) fn apply_states(self: &Arc<Self>, states: Vec<LeaderAndIsr>, notice: bool) {
        let mut table = self.table.lock();
        for state in states {
            let p = state.partition;
            if p >= self.count {
                continue;
            }
            let mine = state.replicas.iter().any(|r| *r == self.me.id);
            let leads = notice && state.leader.as_deref() == Some(self.me.id.as_str());
            let key = (state.leader_epoch, state.zk_version);
            match table.learned.get_mut(&p) {
                Some(l) => {
                    if key > (l.state.leader_epoch, l.state.zk_version) {
                        l.state = state.clone();
                    }
                    if leads && l.granted.is_none_or(|g| g < state.leader_epoch) {
                        l.granted = Some(state.leader_epoch);
                    }
                }
                None => {
                    table.learned.insert(
                        p,
                        Learned {
                            state: state.clone(),
                            granted: leads.then_some(state.leader_epoch),
                        },
                    );
                }
            }
            let hosted = self.hosted.read().get(&p).cloned();
            match hosted {
                Some(part) => {
                    let granted = leads && part.grant(state.leader_epoch);
                    if part.learn(state) || granted {
                        let me = self.clone();
                        tokio::spawn(async move { me.reconcile(&part).await });
                    }
                    if !mine {
                        self.start_worker(&mut table, p);
                    }
                }
                None if mine => self.start_worker(&mut table, p),
                None => {}
            }
        }
    }

    /// Starts `p`'s open/close worker unless it runs.
    fn start_worker(self: &Arc<Self>, table: &mut Table, p: u32) {
        if table.busy.insert(p) {
            let me = self.clone();
            tokio::spawn(async move { me.host_worker(p).await });
        }
    }

    /// Opens or closes `p`'s engine until it matches the newest learned
    /// assignment.
    async fn host_worker(self: Arc<Self>, p: u32) {
        loop {
            let step = {
                let mut table = self.table.lock();
                let want = table
                    .learned
                    .get(&p)
                    .is_some_and(|l| l.state.replicas.iter().any(|r| *r == self.me.id));
                let have = self.hosted.read().get(&p).cloned();
                match (want, have) {
                    (true, None) => Step::Open,
                    (false, Some(part)) => {
                        self.hosted.write().remove(&p);
                        Step::Close(part)
                    }
                    _ => {
                        table.busy.remove(&p);
                        return;
                    }
                }
            };
            match step {
                Step::Open => {
                    if !self.open_replica(p).await {
                        // A later state of `p` tries again.
                        self.table.lock().busy.remove(&p);
                        return;
                    }
                }
                Step::Close(part) => self.close_replica(part).await,
            }
        }
    }

    /// Opens `p`'s engine (blocking pool), gives it the newest learned
    /// state and grant, enters it in `hosted` and reconciles its role.
    /// False when the engine could not be opened.
    async fn open_replica(self: &Arc<Self>, p: u32) -> bool {
        fail::fail_point!("replication::open_replica", |_| {
            tracing::error!(partition = p, "failpoint: cannot open the engine");
            false
        });
        let engines = self.engines.clone();
        let log = match blocking(move || engines.open(p)).await {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(
                    partition = p,
                    "assigned to this node, but its engine cannot be opened: {e}"
                );
                return false;
            }
        };
        let part = Arc::new(Partition::new(p, log));
        {
            let table = self.table.lock();
            if let Some(l) = table.learned.get(&p) {
                part.learn(l.state.clone());
                if let Some(e) = l.granted {
                    part.grant(e);
                }
            }
            self.hosted.write().insert(p, part.clone());
        }
        tracing::info!(
            partition = p,
            "assigned to this node: engine open at log end {}",
            part.log.written_end()
        );
        self.reconcile(&part).await;
        true
    }

    /// Ends the role of `part` (already out of `hosted`) and closes its
    /// engine; the data stays.
    async fn close_replica(self: &Arc<Self>, part: Arc<Partition>) {
        {
            let _t = part.transition.lock().await;
            part.state.lock().closed = true;
            self.stop_role(&part).await;
        }
        let engines = self.engines.clone();
        let log = part.log.clone();
        let p = part.id;
        // The newest epoch of the data here: only a state newer than it
        // may remove the data.
        let last_epoch = log
            .epoch_starts()
            .ok()
            .and_then(|s| s.last().map(|&(e, _)| e))
            .unwrap_or(0);
        if let Err(e) = blocking(move || engines.close(p, &log)).await {
            tracing::error!(partition = p, "closing the engine: {e}");
            return;
        }
        // Still not listed (this worker alone opens it again, after this).
        let removed_at = self
            .table
            .lock()
            .learned
            .get(&p)
            .filter(|l| !l.state.replicas.iter().any(|r| *r == self.me.id))
            .map(|l| l.state.leader_epoch);
        match removed_at {
            Some(epoch) if epoch > last_epoch => {
                let engines = self.engines.clone();
                match blocking(move || engines.remove(p)).await {
                    Ok(()) => tracing::info!(
                        partition = p,
                        "removed from this node's replicas at epoch {epoch}: engine closed, data \
                         directory deleted"
                    ),
                    Err(e) => tracing::error!(
                        partition = p,
                        "removed from this node's replicas, but deleting its data failed: {e}"
                    ),
                }
            }
            Some(epoch) => tracing::warn!(
                partition = p,
                "not listed at epoch {epoch}, but its data here reaches epoch {last_epoch}: \
                 engine closed, data directory kept"
            ),
            None => tracing::info!(partition = p, "engine closed (listed again meanwhile)"),
        }
    }

    /// The partitions hosted here or learned to list this node as a
    /// replica, ascending: what a new session re-reads from ZooKeeper.
    pub(super) fn replica_of(&self) -> Vec<u32> {
        let table = self.table.lock();
        let mut ids: Vec<u32> = table
            .learned
            .iter()
            .filter(|(_, l)| l.state.replicas.contains(&self.me.id))
            .map(|(p, _)| *p)
            .chain(self.hosted.read().keys().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Voids the grants of earlier registrations, hosted or learned.
    pub(super) fn void_grants(&self) {
        let mut table = self.table.lock();
        for l in table.learned.values_mut() {
            l.granted = None;
        }
        for part in self.hosted.read().values() {
            part.state.lock().granted = None;
        }
    }
}
