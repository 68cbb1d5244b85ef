//! Replication: Kafka-style leader/follower log replication of every
//! partition hosted here, driven by the partition states the controller
//! hands out through ZooKeeper.
//!
//! [`ReplicaManager`] is the cluster-mode [`Coordinator`] of the request
//! path and the [`StateListener`] of the ZooKeeper layer. For each
//! partition hosted here (assigned to this node: [`hosting`] opens and
//! closes engines as assignments change) it keeps a
//! [`partition::Partition`]:
//!
//! - as leader it stamps its epoch on writes, serves followers' long-poll
//!   fetches ([`service`], [`serve`]) in incremental fetch sessions
//!   ([`session`], KIP-227: an idle partition costs no bytes per round,
//!   yet every partition of a session counts as fetched each round), tracks each follower's log end, moves the high
//!   watermark (`min` log end over the ISR, at least `min_insync` members),
//!   shrinks and expands the ISR through ZooKeeper compare-and-set, and
//!   answers `acks: all` writes once the high watermark covers them;
//! - as follower it runs a fetcher ([`fetcher`]) that first truncates its
//!   log where it diverges from the leader's (KIP-101/279 epoch lookups,
//!   [`divergence`], batched per leader: one call per round for every
//!   partition looking), then appends what it fetches and commits up to
//!   the leader's high watermark.
//!
//! Invariants:
//! - a partition's engine is open here iff this node is in its `replicas`
//!   as last learned, or it is being opened or closed (or no state of it
//!   was learned yet since startup); a partition not hosted here answers
//!   `NOT_LEADER` naming the leader learned (see [`hosting`]);
//! - a node acts as leader only while its ZooKeeper lease is valid
//!   ([`ClusterHandle::lease_valid`]) and it was not fenced since the last
//!   state it learned; both are checked on every request;
//! - a write refused with `NOT_ENOUGH_REPLICAS` was refused before anything
//!   was written; an `acks: all` write that cannot be confirmed after it
//!   was written fails with `TIMEOUT` or `UNAVAILABLE`, whose outcome is
//!   documented as unknown (docs/REPLICATION.md);
//! - a fetch answer always fits the message limit ([`ReplicaManager::message_limit`],
//!   which leaves room for the largest record), whatever the value sizes;
//! - controller notices older than the newest controller epoch seen are
//!   refused (`STALE_CONTROLLER_EPOCH`), and so are notices issued for
//!   another registration of this node (their node epoch is not this
//!   node's current one);
//! - a node never takes leadership from what it reads in ZooKeeper after a
//!   new session; only from a notice issued after its registration (node
//!   epoch). A notice for the current registration naming this node leader
//!   at epoch `e` is a *grant* of `e`; a new registration voids every
//!   grant. States read from ZooKeeper make this node follow, or resume a
//!   leadership it holds a grant for at that very epoch (after a lease
//!   lapse within one session); naming it leader otherwise, they leave the
//!   replica idle until the controller's notice arrives (notices are
//!   retried until acknowledged);
//! - a follower whose leader keeps answering FENCED_LEADER_EPOCH or
//!   NOT_LEADER re-reads the partition's state from ZooKeeper;
//! - a leader's answers, to reads and to state-dependent writes (DEL's
//!   count, SET NX/XX, EXPIRE's "existed"), are decided only on a state
//!   that includes every record of the log it took over with: reads wait
//!   for [`ReplicaManager::read_barrier`] (the high watermark reached the
//!   log end at takeover, so the applied keydir holds that log); writes are
//!   decided by the engine under its writer mutex on the newest record of
//!   the key in the whole log, committed or not (its `unapplied` state
//!   covers the records appended as a follower and those read back at
//!   open), and an `acks: all` answer that rests on an uncommitted record
//!   waits until the high watermark covers it ([`ReplicaManager::write`]);
//! - a leader named again at a higher epoch (a reassignment step that
//!   keeps it) leads on without stepping down: its engine moves to the new
//!   epoch, the writes it admitted since its leadership began
//!   (`Progress::since`) are still acknowledged once the high watermark
//!   covers them, replicas added to the partition join its followers at
//!   log end 0 (so they hold the merge horizon back), removed ones leave;
//! - what a leader serves to replicas being added by a reassignment is
//!   throttled per node ([`throttle`]); nothing else is;
//! - a leader's appends and commits carry its leader epoch and are refused
//!   by the engine once the replica left that role (`NOT_LEADER`, nothing
//!   written); a role change steps the engine down before anything else
//!   (the follower's truncation included), and the step-down first writes
//!   the appends already admitted, so no write of the old role lands after
//!   it, whenever its task resumes.

mod divergence;
mod drain;
mod fetcher;
mod hosting;
mod log;
mod partition;
mod relead;
mod serve;
pub mod service;
mod session;
mod throttle;

pub use hosting::Engines;
pub use log::{ReadBudget, ReplicaLog, epoch_end};
pub use partition::Progress;
pub use session::FetchCounts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use self::partition::{Ack, Partition, RoleState, check_epoch};
use crate::cluster::{
    BoxFuture, Coordinator, LeaderAndIsr, NodeAddr, NodeInfo, PartitionState, ReplicaOffsets, Role,
    StateListener,
};
use crate::config::ClusterOptions;
use crate::error::{Error, Result};
use crate::node::Acks;
use crate::proto::replication as pb;
use crate::storage::{Submitted, WriteOp};

/// The outcome of an ISR compare-and-set in ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsrOutcome {
    /// Written at this znode version.
    Updated {
        /// The new version.
        zk_version: i32,
    },
    /// Someone else wrote first; the current state.
    Conflict(LeaderAndIsr),
}

/// What replication needs from the ZooKeeper layer.
pub trait ClusterHandle: Send + Sync + 'static {
    /// Whether this node may act as a leader now.
    fn lease_valid(&self) -> bool;
    /// The live nodes.
    fn nodes(&self) -> Vec<NodeAddr>;
    /// The controller's node id.
    fn controller(&self) -> Option<String>;
    /// Compare-and-set of a partition's ISR.
    fn update_isr(&self, proposed: LeaderAndIsr) -> BoxFuture<'static, Result<IsrOutcome>>;
    /// The current states of `partitions` (those hosted here), read from
    /// ZooKeeper.
    fn read_states(&self, partitions: Vec<u32>) -> BoxFuture<'static, Result<Vec<LeaderAndIsr>>>;
}

/// Every partition replica of this node, and the cluster around them.
pub struct ReplicaManager {
    /// This node.
    me: NodeAddr,
    /// Cluster settings.
    opts: ClusterOptions,
    /// The partition count of the cluster (ids `0..count`).
    count: u32,
    /// The replicas whose engine is open here, by partition id (see
    /// [`hosting`]).
    hosted: RwLock<HashMap<u32, Arc<Partition>>>,
    /// The newest state learned of every partition, and the workers
    /// opening or closing engines.
    table: Mutex<hosting::Table>,
    /// Opens and closes engines.
    engines: Arc<dyn Engines>,
    /// The nodes last announced, by id.
    nodes: RwLock<HashMap<String, NodeAddr>>,
    /// The ZooKeeper layer, once started.
    cluster: OnceLock<Arc<dyn ClusterHandle>>,
    /// Newest controller epoch seen in a notice.
    controller_epoch: AtomicU64,
    /// Node epoch of this node's current registration (0 before the
    /// first): notices for another one are refused. Held while a notice is
    /// checked and applied, and while a new registration voids the grants,
    /// so no grant of an old registration survives a new one. A
    /// parking_lot mutex: never held across an await.
    node_epoch: Mutex<i64>,
    /// How long an `acks: all` write and a new leader's first read wait.
    wait: Duration,
    /// gRPC channels to other nodes' replication services.
    channels: fetcher::Channels,
    /// This node's fetch sessions, one per leader node it follows.
    sessions: fetcher::Sessions,
    /// The fetch sessions followers keep with this node as their leader.
    fetch_sessions: session::FetchSessions,
    /// The largest record the engines accept (header, maximal key and
    /// value): fetch answers and the message limit leave room for it.
    max_record: usize,
    /// Controlled shutdown (`drain.rs`): writes are refused, nothing is
    /// followed.
    draining: std::sync::atomic::AtomicBool,
    /// Writes admitted past the draining check and not answered yet.
    admitted: std::sync::atomic::AtomicUsize,
    /// The reassignment throttle of what this node serves as leader to
    /// replicas being added ([`throttle`]).
    throttle: Arc<throttle::Throttle>,
}

impl ReplicaManager {
    /// A manager for `logs` (one per partition, by id), all open from the
    /// start; a state that leaves this node out of a partition's replicas
    /// closes it (flushes it), one that lists it again reopens the same
    /// engine. Nothing leads until states arrive. `wait` bounds acks and
    /// read-barrier waits; `max_record` is the largest record the engines
    /// accept.
    pub fn new(
        me: NodeAddr,
        opts: ClusterOptions,
        logs: Vec<Arc<dyn ReplicaLog>>,
        wait: Duration,
        max_record: usize,
    ) -> Arc<ReplicaManager> {
        let count = logs.len() as u32;
        let open = logs.iter().cloned().enumerate().map(|(p, l)| (p as u32, l));
        let open: Vec<_> = open.collect();
        let engines = Arc::new(hosting::Preopened(logs));
        Self::hosting(me, opts, count, engines, open, wait, max_record)
    }

    /// A manager for `count` partitions whose engines `engines` opens and
    /// closes as this node's assignments change (see [`hosting`]); `open`
    /// are those already open (found on disk at startup).
    pub fn hosting(
        me: NodeAddr,
        opts: ClusterOptions,
        count: u32,
        engines: Arc<dyn Engines>,
        open: Vec<(u32, Arc<dyn ReplicaLog>)>,
        wait: Duration,
        max_record: usize,
    ) -> Arc<ReplicaManager> {
        let hosted = open
            .into_iter()
            .map(|(p, log)| (p, Arc::new(Partition::new(p, log))))
            .collect();
        let mut nodes = HashMap::new();
        nodes.insert(me.id.clone(), me.clone());
        Arc::new(ReplicaManager {
            me,
            opts,
            count,
            hosted: RwLock::new(hosted),
            table: Mutex::new(hosting::Table::default()),
            engines,
            nodes: RwLock::new(nodes),
            cluster: OnceLock::new(),
            controller_epoch: AtomicU64::new(0),
            node_epoch: Mutex::new(0),
            wait,
            channels: fetcher::Channels::default(),
            sessions: fetcher::Sessions::default(),
            fetch_sessions: session::FetchSessions::default(),
            max_record,
            draining: Default::default(),
            admitted: Default::default(),
            throttle: Default::default(),
        })
    }

    /// Attaches the ZooKeeper layer and starts the ISR maintenance task.
    pub fn attach(self: &Arc<Self>, cluster: Arc<dyn ClusterHandle>) {
        if self.cluster.set(cluster).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        let tick = Duration::from_millis((self.opts.replica_lag_ms / 4).clamp(50, 1000));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(m) = me.upgrade() else { return };
                m.maintain();
            }
        });
    }

    /// This node.
    pub fn me(&self) -> &NodeAddr {
        &self.me
    }

    /// The cluster settings.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Whether the ZooKeeper lease allows leading.
    fn lease(&self) -> bool {
        self.cluster.get().is_some_and(|c| c.lease_valid())
    }

    /// The client address of node `id`.
    fn client_addr(&self, id: &str) -> Option<String> {
        self.node(id).map(|n| n.client_addr)
    }

    /// The node `id`'s addresses.
    fn node(&self, id: &str) -> Option<NodeAddr> {
        if let Some(n) = self.nodes.read().get(id) {
            return Some(n.clone());
        }
        self.cluster.get()?.nodes().into_iter().find(|n| n.id == id)
    }

    /// `NOT_LEADER` for partition `p`, naming the leader when known.
    fn not_leader(&self, p: &Partition) -> Error {
        let leader = p
            .state
            .lock()
            .known
            .as_ref()
            .and_then(|k| k.leader.clone())
            .filter(|l| *l != self.me.id);
        Error::NotLeader {
            partition: p.id,
            leader: leader.and_then(|l| self.client_addr(&l)),
        }
    }

    /// The leader epoch of `p` if this node may lead it right now.
    fn leading(&self, p: &Partition) -> Result<u32> {
        match p.leading_epoch() {
            Some(epoch) if self.lease() => Ok(epoch),
            Some(_) => {
                if p.fence() {
                    tracing::warn!(
                        partition = p.id,
                        "ZooKeeper lease lapsed: no longer acting as leader"
                    );
                }
                Err(self.not_leader(p))
            }
            None => Err(self.not_leader(p)),
        }
    }

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
    fn advance_hw(&self, part: &Arc<Partition>) {
        let Some((hw, epoch)) = part.hw_candidate(&self.me.id, self.opts.min_insync) else {
            return;
        };
        self.commit(part, hw, epoch);
    }

    /// Commits `hw` in the engine (memory only) as the leader at `epoch`
    /// and publishes what was committed. The engine refuses it once the
    /// replica left that role.
    fn commit(&self, part: &Partition, hw: u64, epoch: u32) {
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
    fn maintain(self: &Arc<Self>) {
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
    fn spawn_isr_change(self: &Arc<Self>, part: Arc<Partition>, isr: Vec<String>, why: &str) {
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

    /// Makes the role of `part` match the newest state known.
    async fn reconcile(self: &Arc<Self>, part: &Arc<Partition>) {
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
    async fn stop_role(&self, part: &Arc<Partition>) {
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
    fn registered(&self, node_epoch: i64) {
        let mut registration = self.node_epoch.lock();
        *registration = node_epoch;
        self.void_grants();
    }

    /// Re-reads the states of `partitions` from ZooKeeper (their leaders
    /// keep refusing this follower) and applies them, in the background.
    fn reread(self: &Arc<Self>, partitions: Vec<u32>) {
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
    fn hosted_state(&self, part: &Partition) -> PartitionState {
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
        PartitionState {
            id: part.id,
            leader,
            leader_epoch,
            replicas,
            isr,
            high_watermark: part.progress.borrow().hw,
            offsets: part.offsets(&self.me.id),
        }
    }

    /// Remembers the addresses of `nodes`.
    fn learn_nodes(&self, nodes: Vec<NodeAddr>) {
        if nodes.is_empty() {
            return;
        }
        let mut map = self.nodes.write();
        for n in nodes {
            map.insert(n.id.clone(), n);
        }
    }
}

/// The [`StateListener`] the ZooKeeper layer is given: the manager behind
/// an `Arc`, so it can spawn role transitions.
pub struct Listener(pub Arc<ReplicaManager>);

impl StateListener for Listener {
    fn registered(&self, node_epoch: i64) {
        self.0.registered(node_epoch);
    }

    fn apply(&self, states: Vec<LeaderAndIsr>, nodes: Vec<NodeAddr>) {
        self.0.learn_nodes(nodes);
        self.0.apply_states(states, false);
    }

    fn replica_of(&self) -> Option<Vec<u32>> {
        Some(self.0.replica_of())
    }

    fn reassign_throttle(&self, bytes_per_sec: u64) {
        self.0.throttle.set_rate(bytes_per_sec);
    }

    fn fence(&self, why: &str) {
        let mut fenced = 0;
        for part in &self.0.hosted() {
            if part.fence() {
                fenced += 1;
            }
        }
        tracing::warn!("fenced: {why}; stopped leading {fenced} partition(s)");
    }
}

impl Coordinator for ReplicaManager {
    fn mode(&self) -> &'static str {
        "cluster"
    }

    fn role(&self, partition: u32) -> Role {
        let part = match self.partition(partition) {
            Ok(part) => part,
            Err(Error::NotLeader { leader, .. }) => return Role::NotLeader { leader },
            Err(_) => return Role::NotLeader { leader: None },
        };
        let part = &part;
        match self.leading(part) {
            Ok(epoch) => {
                let isr = match &part.state.lock().role {
                    RoleState::Leader(l) => l.isr.len() as u32,
                    _ => 0,
                };
                Role::Leader {
                    epoch,
                    isr,
                    min_insync: self.opts.min_insync,
                }
            }
            Err(Error::NotLeader { leader, .. }) => Role::NotLeader { leader },
            Err(_) => Role::NotLeader { leader: None },
        }
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        let live = match self.cluster.get() {
            Some(c) => c.nodes(),
            None => self.nodes.read().values().cloned().collect(),
        };
        let mut out: Vec<NodeInfo> = live
            .into_iter()
            .map(|n| NodeInfo {
                id: n.id,
                client_addr: n.client_addr,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every partition `0..count`: those hosted here as their replica
    /// knows them (with this node's log end), the others as last learned
    /// (no offsets: there is no log here).
    fn partitions(&self) -> Vec<PartitionState> {
        (0..self.count)
            .map(|p| match self.partition(p) {
                Ok(part) => self.hosted_state(&part),
                Err(_) => {
                    let (mut leader, mut leader_epoch, mut replicas, mut isr) =
                        match self.learned(p) {
                            Some(k) => (k.leader, k.leader_epoch, k.replicas, k.isr),
                            None => (None, 0, Vec::new(), Vec::new()),
                        };
                    // A routing entry newer than the full state (or the
                    // only thing known of a partition not hosted here):
                    // its leader and replicas (a routing entry has no ISR).
                    if let Some((l, e, r)) = self
                        .routed(p)
                        .filter(|(_, e, _)| *e > leader_epoch || replicas.is_empty())
                    {
                        (leader, leader_epoch, replicas, isr) = (l, e, r, Vec::new());
                    }
                    PartitionState {
                        id: p,
                        // Named leader of a partition it does not host (yet):
                        // it does not lead it.
                        leader: leader.filter(|l| *l != self.me.id),
                        leader_epoch,
                        replicas,
                        isr,
                        high_watermark: 0,
                        offsets: Vec::new(),
                    }
                }
            })
            .collect()
    }

    fn controller(&self) -> Option<String> {
        self.cluster.get().and_then(|c| c.controller())
    }
}

/// Runs blocking engine work on the current thread with
/// [`tokio::task::block_in_place`]: the worker first hands its other tasks
/// to another thread, so the runtime is not blocked, and the caller goes on
/// without a hand-off to the blocking pool and back (two thread wake-ups on
/// the replication round trip). On a current-thread runtime, where that is
/// not possible, it uses the blocking pool.
async fn in_place<T, E>(f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(move || f().map_err(Into::into))
        }
        _ => blocking(f).await,
    }
}

/// Runs blocking engine work off the runtime.
async fn blocking<T, E>(f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f().map_err(Into::into)).await {
        Ok(r) => r,
        Err(e) => Err(Error::Internal(format!("engine task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests;
