//! The ZooKeeper coordination of a cluster node: session, membership,
//! controller election, partition state. [`ZkCluster`] is the entry point.
//!
//! ZooKeeper layout under the cluster root (`ClusterOptions::root()`,
//! default `/caskade/<name>`), all data UTF-8 JSON (details and examples in
//! `znode.rs`):
//!
//! ```text
//! /nodes/<id>               ephemeral   {"id","client_addr","replication_addr"}
//! /controller               ephemeral   {"node_id","controller_epoch"}
//! /controller_epoch         persistent  a JSON number, bumped on every election
//! /draining/<id>            ephemeral   {"node_epoch"}: <id> is in controlled shutdown (drain.rs)
//! /isr_change/<p>-<seq>     persistent sequential, empty: a leader changed p's ISR (controller.rs)
//! /partitions/<p>/replicas  persistent  ["node-1","node-2",...] (first = preferred leader)
//! /partitions/<p>/state     persistent  {"leader":id|null,"leader_epoch","isr":[...],"controller_epoch","leader_node_epoch"}
//! /admin/reassign           persistent  {"version":1,"throttle_bytes_per_sec","cancel","partitions":{"<p>":[...]}} (admin.rs writes, reassign.rs executes)
//! /admin/decommissioned/<id> persistent {}: <id> gets no replicas from plans (admin.rs)
//! ```
//!
//! What runs where:
//! - every node: one session (`session.rs`), registered at `/nodes/<id>`;
//!   a heartbeat feeding the lease ([`ZkCluster::lease_valid`]); a
//!   watchdog that fences this node's leaderships when the lease lapses; a
//!   watch of `/nodes` (the [`ZkCluster::nodes`] cache); a controller
//!   candidacy;
//! - the node holding `/controller`: the controller (`controller.rs`),
//!   which assigns replicas, elects leaders and tells every node; and,
//!   with `cluster.auto_rebalance`, the auto rebalance (`rebalance.rs`),
//!   which writes a plan to `/admin/reassign` when a node hosts nothing.
//!
//! Session handling:
//! - connection loss (`ConnectionLoss`, state `Disconnected`): the session
//!   may still live. Reads are repeated; after a write whose outcome is
//!   unknown the znode is read back. The lease keeps running down on this
//!   node's clock and fences leadership if no answer comes in time.
//! - session expiry: ephemerals are gone, so are controllership and every
//!   leadership. The listener is fenced at once, then a new session is
//!   created, `/nodes/<id>` registered again (a new node epoch, told to
//!   the listener first), the states of the partitions the listener hosts
//!   read again and handed to it (to follow, never to lead), and the
//!   controller candidacy entered again. Only those partitions are read
//!   (`StateListener::replica_of`, ~3P/N of them), not every partition's
//!   `replicas`: a partition newly assigned to this node reaches it in the
//!   controller's notice to a node that joined or bounced (full states of
//!   the partitions it hosts), so a rejoin costs ZooKeeper ~3P/N reads per
//!   node, not P.
//!
//! Invariants:
//! - with `cluster.zk_auth`, the session is authenticated from its
//!   handshake on, and the cluster root's ACL is checked before anything
//!   is written in a session (`acl.rs`); every znode created carries the
//!   configured ACL (`znode.rs`).
//! - every controller write is a multi that starts with a version check of
//!   `/controller_epoch`: a deposed controller cannot write.
//! - every write of a partition state is a compare-and-set on its znode
//!   version (controller and leaders alike).
//! - a session's lease starts only after its partition states have been
//!   handed to the listener: a valid lease never goes with the states of
//!   an older session.
//! - [`StateListener::fence`] is called before any other node can have
//!   been given this node's leaderships (lease lapse, session expiry,
//!   shutdown). It may be called more than once for one loss.
//! - A node never takes leadership from what it reads in ZooKeeper after a
//!   new session; only from a notice issued after its registration (node
//!   epoch). Each registration has a node epoch (the czxid of
//!   `/nodes/<id>`, KIP-380); notices carry the node epoch they were issued
//!   for, states carry the node epoch their leader was elected under, and
//!   the controller treats a node whose node epoch changed as one that left
//!   and joined (`controller.rs`). States read from ZooKeeper only let a
//!   node follow, or resume a leadership a notice gave to the same
//!   registration at the same epoch (after a lease lapse in one session).
//! - Controller notices are retried until the node acknowledges them or
//!   leaves (`notify.rs`).
//! - An ISR update is written only by the registration the leadership was
//!   given to (`leader_node_epoch` equals this node's node epoch), in one
//!   multi with an ISR change notification (`/isr_change/<p>-<seq>`): the
//!   controller learns of every ISR change without re-reading states.

mod acl;
mod admin;
mod controller;
mod decide;
mod drain;
mod handover;
mod notify;
mod reassign;
mod reassign_ctl;
mod rebalance;
mod session;
mod znode;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use zookeeper_client as zk;

#[doc(hidden)]
pub use self::znode::reads;

pub use self::admin::{IN_PROGRESS, NONE_IN_PROGRESS, ReassignStatus, Reassignment};
use self::session::Lease;
use self::znode::{Paths, StateZnode, encode, zk_error};
use crate::cluster::{LeaderAndIsr, NodeAddr, NodeRpc, StateListener};
use crate::config::ClusterOptions;
use crate::error::Error;

/// Result of [`ZkCluster::update_isr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsrUpdate {
    /// The state was written; the state znode is now at `zk_version`.
    Updated {
        /// The new version of `/partitions/<p>/state`.
        zk_version: i32,
    },
    /// The state changed since it was read (a controller decision or
    /// another write): nothing was written. This is the current state.
    Conflict(LeaderAndIsr),
}

/// State shared by the [`ZkCluster`] handle and its background tasks.
pub(crate) struct Shared {
    /// The cluster options this node started with.
    opts: ClusterOptions,
    /// This node's ZooKeeper credentials (`cluster.zk_auth`); `None`
    /// without authentication.
    creds: Option<acl::Credentials>,
    /// Znode paths under the cluster root.
    paths: Paths,
    /// This node's addresses (`/nodes/<id>`).
    me: NodeAddr,
    /// Partitions the cluster is created with (the controller assigns
    /// `0..partition_count`).
    partition_count: u32,
    /// This node's replicas.
    listener: Arc<dyn StateListener>,
    /// How the controller reaches nodes.
    rpc: Arc<dyn NodeRpc>,
    /// Whether this node may act as a leader.
    lease: Lease,
    /// The current session's client; `None` between sessions and after
    /// shutdown. A parking_lot mutex: held only to clone or swap, never
    /// across an await.
    client: Mutex<Option<zk::Client>>,
    /// Live nodes, sorted by id, as last read from `/nodes`.
    nodes: RwLock<Vec<NodeAddr>>,
    /// Id of the controller, as last read from `/controller`.
    controller: RwLock<Option<String>>,
    /// Set by [`ZkCluster::shutdown`].
    stopping: AtomicBool,
    /// Node epoch (czxid of `/nodes/<id>`) of the current registration; 0
    /// before the first one.
    node_epoch: AtomicI64,
}

impl Shared {
    /// The negotiated (or, between sessions, configured) session timeout.
    fn session_timeout(&self) -> Duration {
        self.client
            .lock()
            .as_ref()
            .map(|c| c.session_timeout())
            .unwrap_or(Duration::from_millis(self.opts.session_timeout_ms))
    }

    /// The current session's client.
    fn client(&self) -> crate::Result<zk::Client> {
        self.client.lock().clone().ok_or_else(|| {
            Error::Unavailable(format!(
                "no ZooKeeper session (connect string {})",
                self.opts.zk_connect
            ))
        })
    }

    /// Fences this node's leaderships, unless shutting down already did.
    fn fence(&self, why: &str) {
        if !self.stopping.load(Ordering::SeqCst) {
            tracing::warn!("fencing: {why}");
            self.listener.fence(why);
        }
    }
}

/// Whether a ZooKeeper error means the session is over.
fn session_over(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::SessionExpired
            | zk::Error::ClientClosed
            | zk::Error::AuthFailed
            | zk::Error::NoHosts
    )
}

/// This node's membership in a ZooKeeper-coordinated cluster.
pub struct ZkCluster {
    /// State shared with the background tasks.
    shared: Arc<Shared>,
    /// Tells the background tasks to stop.
    stop: watch::Sender<bool>,
    /// The session supervisor and the lease watchdog.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ZkCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkCluster")
            .field("root", &self.shared.paths.root)
            .field("node", &self.shared.me.id)
            .finish()
    }
}

impl ZkCluster {
    /// Connects, creates the cluster root paths if missing, registers
    /// `/nodes/<id>` (ephemeral, JSON [`NodeAddr`]), reads the
    /// `/partitions/<p>/state` of the partitions the listener hosts
    /// ([`StateListener::replica_of`]; every partition listing this node
    /// when it does not say) and hands them to `listener.apply`, then runs the controller candidacy in the
    /// background.
    ///
    /// Fails with [`Error::Unavailable`] naming the connect string when
    /// ZooKeeper cannot be reached within about the session timeout, and
    /// when another live node is registered with the same id (after
    /// waiting one session timeout for a previous incarnation's session
    /// to expire); with [`Error::PermissionDenied`] when the cluster
    /// root's ACL does not let this node's ZooKeeper identity
    /// (`cluster.zk_auth`, or none) write, and with
    /// [`Error::Unauthenticated`] when ZooKeeper refuses the credentials.
    pub async fn start(
        opts: &ClusterOptions,
        me: NodeAddr,
        partition_count: u32,
        listener: Arc<dyn StateListener>,
        rpc: Arc<dyn NodeRpc>,
    ) -> crate::Result<Arc<ZkCluster>> {
        let creds = acl::Credentials::load(&opts.zk_auth)?;
        let paths = Paths::new(opts.root(), acl::Credentials::acl(creds.as_ref()));
        let far = [me.client_addr.as_str(), me.replication_addr.as_str()];
        if let Some(line) = acl::open_acl_warning(&paths.root, creds.as_ref(), &far) {
            tracing::warn!("{line}");
        }
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            creds,
            paths,
            me,
            partition_count,
            listener,
            rpc,
            lease: Lease::new(),
            client: Mutex::new(None),
            nodes: RwLock::new(Vec::new()),
            controller: RwLock::new(None),
            stopping: AtomicBool::new(false),
            node_epoch: AtomicI64::new(0),
        });
        let timeout = Duration::from_millis(opts.session_timeout_ms);
        let bound = timeout * 3 + Duration::from_secs(5);
        let client = match tokio::time::timeout(bound, establish(&shared)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                shared.client.lock().take();
                return Err(e);
            }
            Err(_) => {
                shared.client.lock().take();
                return Err(Error::Unavailable(format!(
                    "ZooKeeper at {} did not complete registration within {} ms",
                    opts.zk_connect,
                    bound.as_millis()
                )));
            }
        };
        tracing::info!(
            "registered as {} in ZooKeeper {} under {} (session {:#x}, timeout {} ms)",
            shared.me.id,
            opts.zk_connect,
            shared.paths.root,
            client.session_id().0,
            client.session_timeout().as_millis()
        );
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(supervise(shared.clone(), client, stop_rx.clone())),
            tokio::spawn(watchdog(shared.clone(), stop_rx)),
        ];
        Ok(Arc::new(ZkCluster {
            shared,
            stop,
            tasks: Mutex::new(tasks),
        }))
    }

    /// True while this node may act as a partition leader: a session is
    /// established and this node heard from ZooKeeper within the last
    /// 2/3 of the session timeout, on its own monotonic clock. Two atomic
    /// loads and a clock read.
    pub fn lease_valid(&self) -> bool {
        self.shared.lease.valid()
    }

    /// Whether this node's ZooKeeper session is connected now: a session
    /// exists (between sessions there is none) and its connection is up.
    pub fn session_connected(&self) -> bool {
        self.shared.client.lock().as_ref().is_some_and(|c| {
            matches!(
                c.state(),
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
            )
        })
    }

    /// The live nodes (registered in `/nodes`), sorted by id, as last seen
    /// by this node's watch.
    pub fn nodes(&self) -> Vec<NodeAddr> {
        self.shared.nodes.read().clone()
    }

    /// Id of the current controller, as last seen by this node.
    pub fn controller(&self) -> Option<String> {
        self.shared.controller.read().clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.me.id
    }

    /// The node epoch of this node's current registration (the czxid of
    /// `/nodes/<id>`); 0 before the first.
    pub fn node_epoch(&self) -> i64 {
        self.shared.node_epoch.load(Ordering::SeqCst)
    }

    /// The controller as ZooKeeper has it now, after a `sync` (so a
    /// notice's sender cannot be newer than what is read): the holder of
    /// `/controller` and its epoch (`None` while no node holds it), and
    /// the value of `/controller_epoch`. Authorizes controller notices
    /// (`tls::gate`).
    pub async fn read_controller(&self) -> crate::Result<(Option<(String, u64)>, u64)> {
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        let ctrl_path = paths.controller();
        let epoch_path = paths.controller_epoch();
        znode::retry_loss(|| client.sync(&ctrl_path))
            .await
            .map_err(|e| zk_error("sync", e))?;
        let holder = match znode::retry_loss(|| client.get_data(&ctrl_path)).await {
            Ok((data, _)) => {
                let c: znode::ControllerZnode = znode::decode(&ctrl_path, &data)?;
                Some((c.node_id, c.controller_epoch))
            }
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(zk_error(&format!("read {ctrl_path}"), e)),
        };
        let epoch = match znode::retry_loss(|| client.get_data(&epoch_path)).await {
            Ok((data, _)) => znode::decode(&epoch_path, &data)?,
            Err(zk::Error::NoNode) => 0,
            Err(e) => return Err(zk_error(&format!("read {epoch_path}"), e)),
        };
        Ok((holder, epoch))
    }

    /// Reads the states of `partitions` (those this node is a replica of)
    /// from ZooKeeper, for a follower whose leader keeps refusing its epoch.
    /// The caller hands them to its replicas like any ZooKeeper read: to
    /// follow, never to lead.
    pub async fn read_states(&self, partitions: &[u32]) -> crate::Result<Vec<LeaderAndIsr>> {
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        let mut replicas = znode::read_replicas(&client, paths, partitions).await?;
        replicas.retain(|_, r| r.iter().any(|n| *n == self.shared.me.id));
        let mine: Vec<u32> = replicas.keys().copied().collect();
        Ok(znode::read_states(&client, paths, &replicas, &mine)
            .await?
            .into_values()
            .collect())
    }

    /// The leader's ISR change: compare-and-set of `/partitions/<p>/state`
    /// at `proposed.zk_version`, writing `proposed`'s leader, leader epoch,
    /// ISR and controller epoch.
    ///
    /// `Conflict` carries the current state when the version moved on.
    /// After a connection loss the state is read back: if it holds what was
    /// proposed the update counts as done. An `Err` (no session, timeout)
    /// means the outcome is unknown: the write may still land, and the
    /// next compare-and-set finds out.
    pub async fn update_isr(&self, proposed: LeaderAndIsr) -> crate::Result<IsrUpdate> {
        if proposed.leader.as_deref() != Some(self.shared.me.id.as_str()) {
            return Err(Error::Internal(format!(
                "update_isr of partition {} by {} which is not its leader ({:?})",
                proposed.partition, self.shared.me.id, proposed.leader
            )));
        }
        let node_epoch = self.node_epoch();
        if proposed.leader_node_epoch != node_epoch {
            return Err(Error::Unavailable(format!(
                "update_isr of partition {}: the leadership was given to node epoch {}, this \
                 node is registered at node epoch {node_epoch}",
                proposed.partition, proposed.leader_node_epoch
            )));
        }
        let client = self.shared.client()?;
        let timeout = client.session_timeout();
        match tokio::time::timeout(timeout, update_isr(&self.shared, &client, &proposed)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Unavailable(format!(
                "ZooKeeper did not answer the ISR update of partition {} within {} ms",
                proposed.partition,
                timeout.as_millis()
            ))),
        }
    }

    /// Starts this node's controlled shutdown: creates the ephemeral
    /// `/draining/<id>` naming the current registration; the controller
    /// watches `/draining` and moves this node's leaderships away
    /// (`drain.rs`). Idempotent within a session; a marker left by an
    /// earlier session of this node is replaced.
    pub async fn announce_draining(&self) -> crate::Result<()> {
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        let path = paths.draining_node(&self.shared.me.id);
        let data = encode(&drain::DrainingZnode {
            node_epoch: self.node_epoch(),
        });
        let ephemeral = paths.options(zk::CreateMode::Ephemeral);
        // `/draining` was made when the session began (`establish`).
        for _ in 0..2 {
            match znode::retry_loss(|| client.create(&path, &data, &ephemeral)).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(zk_error(&format!("create {path}"), e)),
            }
            match znode::retry_loss(|| client.check_stat(&path)).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => return Ok(()),
                Ok(Some(stat)) => {
                    // An earlier session's marker, not expired yet.
                    match client.delete(&path, Some(stat.version)).await {
                        Ok(()) | Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(zk_error(&format!("delete {path}"), e)),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(zk_error(&format!("read {path}"), e)),
            }
        }
        Err(Error::Unavailable(format!("cannot create {path}")))
    }

    /// Closes the session (this node's ephemerals vanish at once) and stops
    /// the background tasks. The listener is fenced first.
    pub async fn shutdown(&self) {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        self.shared.listener.fence("shutting down");
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.lease.end();
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a ZooKeeper task did not stop within 5 s");
            }
        }
        *self.shared.controller.write() = None;
        // The session closes when the last client handle is dropped.
        let client = self.shared.client.lock().take();
        if let Some(client) = client {
            let mut states = client.state_watcher();
            drop(client);
            let closed = async {
                while !states.peek_state().is_terminated() {
                    states.changed().await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(3), closed)
                .await
                .is_err()
            {
                tracing::warn!("the ZooKeeper session did not close within 3 s");
            }
        }
        tracing::info!("left the cluster (ZooKeeper session closed)");
    }
}

impl Drop for ZkCluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Opens a session, creates the cluster's paths, registers this node,
/// reads the live nodes and this node's partition states and hands them to
/// the listener. Stores the client in `shared` and returns it.
async fn establish(shared: &Shared) -> crate::Result<zk::Client> {
    let timeout = Duration::from_millis(shared.opts.session_timeout_ms);
    let client = acl::connect(&shared.opts.zk_connect, timeout, shared.creds.as_ref()).await?;
    *shared.client.lock() = Some(client.clone());
    let paths = &shared.paths;
    // Before anything is created or written: a root this node may not
    // write refuses the start with one line (acl.rs).
    acl::check_root(&client, &paths.root, shared.creds.as_ref()).await?;
    let ensure = async {
        znode::mkdir(&client, paths, &paths.nodes()).await?;
        znode::mkdir(&client, paths, &paths.partitions()).await?;
        znode::mkdir(&client, paths, &paths.draining()).await?;
        znode::mkdir(&client, paths, &paths.isr_change()).await?;
        znode::create_if_missing(&client, paths, &paths.controller_epoch(), &encode(&0u64)).await
    };
    ensure
        .await
        .map_err(|e| zk_error(&format!("create {}", paths.root), e))?;
    let node_epoch = session::register(&client, paths, &shared.me).await?;
    shared.node_epoch.store(node_epoch, Ordering::SeqCst);
    shared.listener.registered(node_epoch);
    let sent = session::BootInstant::now();
    let nodes = znode::live_nodes(&client, paths).await?;
    *shared.nodes.write() = nodes.clone();
    let mine = shared.listener.replica_of();
    let states = znode::states_of(&client, paths, &shared.me.id, mine).await?;
    // The states make this node follow; it leads only once a notice for
    // this registration says so. They are applied before the lease starts,
    // so a node whose lease is valid never acts on the states of an older
    // session (before, a reader could see the lease valid and the new
    // states not yet applied: tests/cluster_zk.rs,
    // frozen_node_sees_its_lease_lapsed_on_resume).
    shared.listener.apply(states, nodes);
    // Registered, read and applied: the lease may start now (not earlier,
    // so a wait in `register` cannot lapse a lease nobody renews yet). It
    // counts from `sent`, so applying first costs it nothing.
    shared.lease.begin(client.session_timeout(), sent);
    Ok(client)
}

/// The ISR update itself (see [`ZkCluster::update_isr`]).
async fn update_isr(
    shared: &Shared,
    client: &zk::Client,
    proposed: &LeaderAndIsr,
) -> crate::Result<IsrUpdate> {
    let p = proposed.partition;
    let path = shared.paths.state(p);
    let data = encode(&StateZnode::of(proposed));
    // The state and the controller's ISR change notification, together.
    let note = shared.paths.isr_change_of(p);
    let sequential = shared.paths.options(zk::CreateMode::PersistentSequential);
    let mut w = client.new_multi_writer();
    w.add_set_data(&path, &data, Some(proposed.zk_version))
        .and_then(|()| w.add_create(&note, &[], &sequential))
        .map_err(|e| zk_error("build the ISR update", e))?;
    let unknown = match w.commit().await {
        Ok(results) => {
            let zk_version = match results.first() {
                Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                _ => proposed.zk_version.wrapping_add(1),
            };
            return Ok(IsrUpdate::Updated { zk_version });
        }
        Err(zk::MultiWriteError::OperationFailed {
            index: 0,
            source: zk::Error::BadVersion,
        }) => false,
        Err(zk::MultiWriteError::RequestFailed {
            source: zk::Error::ConnectionLoss,
        }) => true,
        Err(zk::MultiWriteError::OperationFailed {
            index: 0,
            source: zk::Error::NoNode,
        }) => {
            return Err(Error::InvalidInput(format!(
                "partition {p} has no state in ZooKeeper ({path})"
            )));
        }
        Err(e) => return Err(zk_error(&format!("write {path}"), e.into())),
    };
    let replicas = znode::read_replicas(client, &shared.paths, &[p]).await?;
    let current = znode::read_states(client, &shared.paths, &replicas, &[p])
        .await?
        .remove(&p)
        .ok_or_else(|| Error::InvalidInput(format!("partition {p} has no state in ZooKeeper")))?;
    if unknown
        && current.zk_version > proposed.zk_version
        && znode::same_content(&current, proposed)
    {
        return Ok(IsrUpdate::Updated {
            zk_version: current.zk_version,
        });
    }
    Ok(IsrUpdate::Conflict(current))
}

/// Runs one session after another until shutdown: the per-session tasks
/// (heartbeat, `/nodes` watch, controller candidacy) while the session
/// lives; on expiry, fences the listener and establishes a new session.
async fn supervise(shared: Arc<Shared>, mut client: zk::Client, mut stop: watch::Receiver<bool>) {
    loop {
        let mut tasks = JoinSet::new();
        tasks.spawn(heartbeat(shared.clone(), client.clone()));
        tasks.spawn(watch_nodes(shared.clone(), client.clone()));
        tasks.spawn(controller::candidacy(shared.clone(), client.clone()));
        tasks.spawn(reassign::watch_throttle(shared.clone(), client.clone()));
        tasks.spawn(rebalance::run(shared.clone(), client.clone()));
        let mut states = client.state_watcher();
        let mut state = client.state();
        while !state.is_terminated() {
            tokio::select! {
                s = states.changed() => {
                    state = s;
                    match s {
                        zk::SessionState::Disconnected => tracing::warn!(
                            "lost the connection to ZooKeeper; the session may still live"
                        ),
                        zk::SessionState::SyncConnected => {
                            tracing::info!("reconnected to ZooKeeper")
                        }
                        _ => {}
                    }
                }
                _ = stop.changed() => {
                    tasks.shutdown().await;
                    return;
                }
            }
        }
        tasks.shutdown().await;
        shared.lease.end();
        *shared.controller.write() = None;
        shared.client.lock().take();
        drop(client);
        shared.fence(match state {
            zk::SessionState::AuthFailed => "ZooKeeper authentication failed",
            zk::SessionState::Closed => "ZooKeeper session closed",
            _ => "ZooKeeper session expired",
        });
        client = loop {
            if *stop.borrow() {
                return;
            }
            let attempt = tokio::select! {
                r = establish(&shared) => r,
                _ = stop.changed() => return,
            };
            match attempt {
                Ok(c) => break c,
                Err(e) => {
                    shared.lease.end();
                    shared.client.lock().take();
                    tracing::warn!("cannot rejoin the cluster: {e}; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        tracing::info!(
            "rejoined the cluster with session {:#x}",
            client.session_id().0
        );
    }
}

/// Renews the lease every session timeout / 4 with an `exists` on the
/// cluster root. After a lapse, hands the current states to the listener
/// again (it was fenced).
async fn heartbeat(shared: Arc<Shared>, client: zk::Client) {
    let period = client.session_timeout() / 4;
    let root = shared.paths.root.clone();
    loop {
        let sent = Instant::now();
        let boot_sent = session::BootInstant::now();
        match tokio::time::timeout(period, client.check_stat(&root)).await {
            Ok(Ok(_)) => {
                if shared.lease.renew(boot_sent) {
                    tracing::info!("ZooKeeper answers again: lease renewed, re-reading states");
                    reapply(&shared, &client).await;
                }
            }
            Ok(Err(e)) if session_over(&e) => return,
            Ok(Err(e)) => tracing::debug!("heartbeat failed: {e}"),
            Err(_) => tracing::debug!("heartbeat unanswered for {} ms", period.as_millis()),
        }
        tokio::time::sleep_until((sent + period).into()).await;
    }
}

/// Reads the states of the partitions this node hosts again (the
/// listener's [`StateListener::replica_of`]) and hands them to the
/// listener with the live nodes (as the `/nodes` watch last read them).
async fn reapply(shared: &Shared, client: &zk::Client) {
    let read = async {
        let nodes = shared.nodes.read().clone();
        let mine = shared.listener.replica_of();
        let states = znode::states_of(client, &shared.paths, &shared.me.id, mine).await?;
        Ok::<_, Error>((states, nodes))
    };
    match read.await {
        Ok((states, nodes)) => shared.listener.apply(states, nodes),
        Err(e) => tracing::warn!("cannot re-read partition states: {e}"),
    }
}

/// Fences the listener when the lease lapses (once per lapse). Runs for
/// the life of the [`ZkCluster`], across sessions.
async fn watchdog(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match shared.lease.deadline() {
            Some(d) if Instant::now() < d => tokio::time::sleep_until(d.into()),
            // No session: the supervisor fenced when it ended.
            None => tokio::time::sleep(Duration::from_millis(20)),
            Some(_) => {
                if shared.lease.mark_lapsed() {
                    shared.fence(&format!(
                        "no answer from ZooKeeper within {} ms (2/3 of the session timeout)",
                        (shared.session_timeout() * 2 / 3).as_millis()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20))
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stop.changed() => return,
        }
    }
}

/// Keeps [`Shared::nodes`] up to date from a watch on `/nodes` (one-shot:
/// re-armed on every read), reading only the registrations that appeared
/// (`znode::Registrations`).
async fn watch_nodes(shared: Arc<Shared>, client: zk::Client) {
    let path = shared.paths.nodes();
    let mut registrations = znode::Registrations::default();
    loop {
        let watcher = match client.get_and_watch_children(&path).await {
            Ok((ids, stat, watcher)) => {
                match registrations
                    .update(&client, &shared.paths, &ids, &stat)
                    .await
                {
                    Ok(()) => *shared.nodes.write() = registrations.nodes(),
                    Err(e) => tracing::warn!("cannot read the live nodes: {e}"),
                }
                watcher
            }
            Err(e) if session_over(&e) => return,
            Err(e) => {
                tracing::debug!("cannot watch {path}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let event = watcher.changed().await;
        if event.session_state.is_terminated() {
            return;
        }
    }
}
