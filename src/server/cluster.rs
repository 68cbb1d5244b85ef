//! Cluster-mode startup: binds the replication listener, opens the node's
//! replicas, joins ZooKeeper, and wires the ZooKeeper layer to replication.
//!
//! Order matters: the replication service must answer before this node
//! registers in ZooKeeper (the controller may ask it for offsets at once),
//! and the [`ReplicaManager`] must exist before ZooKeeper hands it states.
//!
//! Stopping: [`controlled_shutdown`] moves this node's leaderships away
//! before the session is closed (see `cluster/zk/drain.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::cluster::{BoxFuture, LeaderAndIsr, NodeAddr};
use crate::cluster::{IsrUpdate, ZkCluster};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::replication::{ClusterHandle, IsrOutcome, Listener, ReplicaManager};
use crate::storage::Clock;

/// The ZooKeeper layer as replication sees it.
struct ZkHandle(Arc<ZkCluster>);

impl ClusterHandle for ZkHandle {
    fn lease_valid(&self) -> bool {
        self.0.lease_valid()
    }

    fn nodes(&self) -> Vec<NodeAddr> {
        self.0.nodes()
    }

    fn controller(&self) -> Option<String> {
        self.0.controller()
    }

    fn update_isr(&self, proposed: LeaderAndIsr) -> BoxFuture<'static, Result<IsrOutcome>> {
        let zk = self.0.clone();
        Box::pin(async move {
            Ok(match zk.update_isr(proposed).await? {
                IsrUpdate::Updated { zk_version } => IsrOutcome::Updated { zk_version },
                IsrUpdate::Conflict(current) => IsrOutcome::Conflict(current),
            })
        })
    }

    fn read_states(&self, partitions: Vec<u32>) -> BoxFuture<'static, Result<Vec<LeaderAndIsr>>> {
        let zk = self.0.clone();
        Box::pin(async move { zk.read_states(&partitions).await })
    }
}

/// ZooKeeper as the replication service's gate reads the controller.
struct ZkController(Arc<ZkCluster>);

impl crate::tls::gate::ControllerSource for ZkController {
    fn read_controller(&self) -> BoxFuture<'static, Result<crate::tls::gate::ControllerRead>> {
        let zk = self.0.clone();
        Box::pin(async move { zk.read_controller().await })
    }
}

/// A started cluster node.
pub struct ClusterNode {
    /// The node serving client requests.
    pub node: Arc<Node>,
    /// Its replicas.
    pub manager: Arc<ReplicaManager>,
    /// The replication listener, to hand to [`super::run`].
    pub replication_listener: TcpListener,
    /// The ZooKeeper session; shut it down first when stopping.
    pub zk: Arc<ZkCluster>,
    /// The replication service's authorization, checking controller
    /// notices against this ZooKeeper session.
    pub gate: Arc<crate::tls::gate::Gate>,
}

/// Opens the node's replicas and joins the cluster. `client_addr` is the
/// advertised client address.
pub async fn start(
    config: &Config,
    client_addr: String,
    clock: Arc<dyn Clock>,
) -> Result<ClusterNode> {
    let opts = config
        .cluster
        .clone()
        .ok_or_else(|| Error::InvalidInput("no `cluster:` section in the configuration".into()))?;
    let replication_listener = TcpListener::bind(&opts.replication_listen)
        .await
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot listen on {} (cluster.replication_listen): {e}",
                opts.replication_listen
            ))
        })?;
    let bound = replication_listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the replication address: {e}")))?;
    let me = NodeAddr {
        id: config.node_id.clone(),
        client_addr,
        replication_addr: if opts.replication_advertise.is_empty() {
            bound.to_string()
        } else {
            opts.replication_advertise.clone()
        },
    };
    let (node, manager) = {
        let config = config.clone();
        let me = me.clone();
        tokio::task::spawn_blocking(move || Node::open_cluster(&config, me, clock))
            .await
            .map_err(|e| Error::Internal(format!("startup failed: {e}")))??
    };
    let zk = ZkCluster::start(
        &opts,
        me,
        config.partitions,
        Arc::new(Listener(manager.clone())),
        Arc::new(crate::cluster::GrpcNodeRpc::new()),
    )
    .await?;
    manager.attach(Arc::new(ZkHandle(zk.clone())));
    let gate = crate::tls::gate::Gate::new();
    gate.attach(Arc::new(ZkController(zk.clone())));
    let mut node = node;
    node.attach_zk(zk.clone());
    Ok(ClusterNode {
        node: Arc::new(node),
        manager,
        replication_listener,
        zk,
        gate,
    })
}

/// Longest wait of a controlled shutdown for the controller to move this
/// node's leaderships away; then the node stops anyway, with a warning.
pub const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the writes admitted before a controlled shutdown to
/// be answered and committed (the rest of [`CONTROLLED_SHUTDOWN_TIMEOUT`]
/// is left for the controller).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a controlled shutdown achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Partitions this node led when it began.
    pub led_before: usize,
    /// Partitions it still leads (none after a complete one).
    pub still_led: Vec<u32>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Controlled shutdown (as Kafka's): refuses new writes, waits for the
/// admitted ones to commit, asks the controller (`/draining/<id>`) to move
/// every leadership of this node to another in-sync replica, and waits
/// until this node leads nothing it can give away (a partition with no
/// other live in-sync replica stays here), at most `timeout`. The caller
/// then closes the ZooKeeper session and stops serving.
pub async fn controlled_shutdown(
    zk: &ZkCluster,
    manager: &Arc<ReplicaManager>,
    timeout: Duration,
) -> ShutdownReport {
    let started = Instant::now();
    let deadline = started + timeout;
    let led_before = manager.leaderships().len();
    tracing::info!("controlled shutdown: moving the leadership of {led_before} partitions away");
    manager.begin_drain();
    let behind = manager.settle(SETTLE_TIMEOUT.min(timeout)).await;
    if !behind.is_empty() {
        tracing::warn!(
            "controlled shutdown: the in-sync replicas of partitions {behind:?} do not have \
             every record written here yet; moving on"
        );
    }
    let settled = started.elapsed();
    if let Err(e) = zk.announce_draining().await {
        tracing::warn!("controlled shutdown: cannot tell the controller: {e}");
    }
    tracing::info!(
        "controlled shutdown: writes settled in {} ms, controller told after {} ms",
        settled.as_millis(),
        started.elapsed().as_millis()
    );
    let movable = |led: &[(u32, Vec<String>)]| -> Vec<u32> {
        let live: Vec<String> = zk.nodes().into_iter().map(|n| n.id).collect();
        led.iter()
            .filter(|(_, isr)| isr.iter().any(|m| m != zk.node_id() && live.contains(m)))
            .map(|(p, _)| *p)
            .collect()
    };
    loop {
        let led = manager.leaderships();
        let waiting = movable(&led);
        if waiting.is_empty() || Instant::now() >= deadline {
            let still_led: Vec<u32> = led.iter().map(|(p, _)| *p).collect();
            let report = ShutdownReport {
                led_before,
                still_led,
                elapsed: started.elapsed(),
            };
            if !waiting.is_empty() {
                tracing::warn!(
                    "controlled shutdown: partitions {waiting:?} still led here after {} ms; \
                     stopping anyway (they fail over when the session closes)",
                    report.elapsed.as_millis()
                );
            } else if !report.still_led.is_empty() {
                tracing::warn!(
                    "controlled shutdown: partitions {:?} have no other live in-sync replica; \
                     they go offline when this node stops",
                    report.still_led
                );
            }
            tracing::info!(
                "controlled shutdown: {} of {led_before} leaderships moved in {} ms",
                led_before.saturating_sub(report.still_led.len()),
                report.elapsed.as_millis()
            );
            return report;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
