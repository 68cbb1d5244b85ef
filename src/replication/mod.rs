//! Replication: Kafka-style leader/follower log replication of every
//! partition hosted here, driven by the partition states the controller
//! hands out through ZooKeeper.
//!
//! [`ReplicaManager`] is the cluster-mode
//! [`Coordinator`](crate::cluster::Coordinator) of the request path and the
//! [`StateListener`](crate::cluster::StateListener) of the ZooKeeper layer. For each
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
//! - as follower it runs a fetcher ([`fetcher`]; without TLS over the
//!   fetch wire, [`fetch_wire`], else a `Fetch` stream) that first truncates its
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

mod coordinator;
mod divergence;
mod drain;
pub mod fetch_wire;
mod fetcher;
mod hosting;
mod leader_path;
mod log;
mod notices;
mod partition;
mod relead;
mod roles;
mod serve;
pub mod service;
mod session;
mod throttle;

pub use coordinator::Listener;
pub use hosting::Engines;
pub use log::{ReadBudget, ReplicaLog, epoch_end};
pub use partition::Progress;
pub use session::FetchCounts;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use self::partition::Partition;
use crate::cluster::{BoxFuture, LeaderAndIsr, NodeAddr};
use crate::config::ClusterOptions;
use crate::error::{Error, Result};

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
    /// How this node's fetch sessions travel (wire or stream), and the
    /// fetch wire connections it served.
    pub fetch_figures: fetch_wire::FetchFigures,
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
            fetch_figures: Default::default(),
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
