//! Cluster-mode startup: binds the replication listener, opens the node's
//! replicas, joins ZooKeeper, and wires the ZooKeeper layer to replication.
//!
//! Order matters: the replication service must answer before this node
//! registers in ZooKeeper (the controller may ask it for offsets at once),
//! and the [`ReplicaManager`] must exist before ZooKeeper hands it states.

use std::sync::Arc;

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
    Ok(ClusterNode {
        node: Arc::new(node),
        manager,
        replication_listener,
        zk,
    })
}
