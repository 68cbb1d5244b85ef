//! [`NodeRpc`] over gRPC (`proto/replication.proto`): how the controller
//! asks nodes for log end offsets and sends them `LeaderAndIsr` notices.
//!
//! - One lazily connected tonic channel per node, cached by node id and
//!   replication address (a node that comes back on another address gets
//!   a new channel); a channel reconnects on its own after failures.
//! - Every call is bounded: [`CONNECT_TIMEOUT`] to connect,
//!   [`CALL_TIMEOUT`] for the whole call.
//! - Errors are the crate [`Error`], rebuilt from the gRPC status.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::Channel;

use crate::cluster::{
    BoxFuture, LeaderAndIsr, Leaders, NodeAddr, NodeRpc, ReplicaOffsets, Settled,
};
use crate::error::Error;
use crate::proto::replication as pb;
use crate::proto::replication::replication_client::ReplicationClient;

/// Longest time to establish a connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest time one controller call may take, connecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// [`NodeRpc`] over tonic.
#[derive(Debug, Default)]
pub struct GrpcNodeRpc {
    /// Channel per (node id, replication address). A parking_lot mutex:
    /// held only to look up or insert, never across an await.
    channels: Mutex<HashMap<(String, String), Channel>>,
}

impl GrpcNodeRpc {
    /// A client with no connection yet.
    pub fn new() -> GrpcNodeRpc {
        GrpcNodeRpc::default()
    }

    /// The client for `node`, creating its channel on first use.
    fn client(&self, node: &NodeAddr) -> crate::Result<ReplicationClient<Channel>> {
        let key = (node.id.clone(), node.replication_addr.clone());
        let mut channels = self.channels.lock();
        if let Some(ch) = channels.get(&key) {
            return Ok(ReplicationClient::new(ch.clone()));
        }
        // Drop a stale channel of the same node on another address.
        channels.retain(|(id, _), _| id != &node.id);
        // With TLS, this node's certificate is presented (crate::tls).
        let ch = crate::tls::node_endpoint(&node.replication_addr)
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "node {} has an invalid replication address {:?}: {e}",
                    node.id, node.replication_addr
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(key, ch.clone());
        Ok(ReplicationClient::new(ch))
    }
}

/// Bounds `call` by [`CALL_TIMEOUT`], naming `what` and the node.
async fn bounded<T>(
    node: &NodeAddr,
    what: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> crate::Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(status)) => Err(Error::from(status)),
        Err(_) => Err(Error::Timeout(format!(
            "{what} to node {} at {} took more than {} ms",
            node.id,
            node.replication_addr,
            CALL_TIMEOUT.as_millis()
        ))),
    }
}

impl NodeRpc for GrpcNodeRpc {
    fn handover(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        node_epoch: i64,
        partitions: Vec<(u32, u32)>,
        timeout: Duration,
    ) -> BoxFuture<'static, crate::Result<Settled>> {
        let client = self.client(&node);
        Box::pin(async move {
            let mut client = client?;
            let req = pb::HandoverRequest {
                controller_epoch,
                node_epoch,
                partitions: partitions
                    .into_iter()
                    .map(|(partition, leader_epoch)| pb::PartitionEpoch {
                        partition,
                        leader_epoch,
                    })
                    .collect(),
                timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            };
            let resp = bounded(&node, "Handover", client.handover(req)).await?;
            let r = resp.into_inner();
            Ok(Settled {
                settled: r.settled,
                behind: r.behind,
            })
        })
    }

    fn log_end_offsets(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        partitions: Vec<u32>,
    ) -> BoxFuture<'static, crate::Result<Vec<ReplicaOffsets>>> {
        let client = self.client(&node);
        Box::pin(async move {
            let mut client = client?;
            let req = pb::LogEndOffsetsRequest {
                controller_epoch,
                partitions,
            };
            let resp = bounded(&node, "LogEndOffsets", client.log_end_offsets(req)).await?;
            Ok(resp
                .into_inner()
                .partitions
                .into_iter()
                .map(|o| ReplicaOffsets {
                    partition: o.partition,
                    log_end_offset: o.log_end_offset,
                    last_epoch: o.last_epoch,
                    high_watermark: o.high_watermark,
                })
                .collect())
        })
    }

    fn leader_and_isr(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        leaders: Vec<std::sync::Arc<Leaders>>,
        nodes: Vec<NodeAddr>,
    ) -> BoxFuture<'static, crate::Result<()>> {
        let client = self.client(&node);
        Box::pin(async move {
            let mut client = client?;
            let leaders = match leaders.as_slice() {
                [one] => one.clone(),
                maps => std::sync::Arc::new(Leaders::merge(maps)),
            };
            let req = pb::LeaderAndIsrRequest {
                leader_ids: leaders.ids.clone(),
                leaders: leaders
                    .entries
                    .iter()
                    .map(|e| pb::PartitionLeader {
                        partition: e.partition,
                        leader_epoch: e.leader_epoch,
                        leader: e.leader,
                        replicas: e.replicas,
                    })
                    .collect(),
                leaders_full: leaders.full,
                replica_sets: leaders
                    .sets
                    .iter()
                    .map(|s| pb::ReplicaSet { nodes: s.clone() })
                    .collect(),
                controller_epoch,
                partitions: states
                    .into_iter()
                    .map(crate::replication::service::state_to_wire)
                    .collect(),
                nodes: nodes
                    .into_iter()
                    .map(|n| pb::NodeAddress {
                        id: n.id,
                        client_addr: n.client_addr,
                        replication_addr: n.replication_addr,
                    })
                    .collect(),
                node_epoch,
            };
            bounded(&node, "LeaderAndIsr", client.leader_and_isr(req)).await?;
            Ok(())
        })
    }
}
