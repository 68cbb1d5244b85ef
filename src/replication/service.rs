//! The `caskade.replication.v1.Replication` gRPC service: followers'
//! fetches and epoch lookups, the controller's offset queries, notices and
//! leadership handovers.
//! Every error leaves through `impl From<Error> for Status`, so callers get
//! a `caskade-reason` (`FENCED_LEADER_EPOCH`, `NOT_LEADER`, ...).
//!
//! Every fetch and notice is authorized by its caller first
//! ([`crate::tls::gate`]): over TLS a node fetches only as itself
//! (`PERMISSION_DENIED` otherwise), and a notice of a controller epoch
//! newer than the one verified is checked against ZooKeeper, and over TLS
//! against its sender, before the manager sees it.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ReplicaManager;
use crate::cluster::{LeaderAndIsr, NodeAddr};
use crate::proto::replication as pb;
use crate::proto::replication::replication_server::Replication;
use crate::tls::gate::{Caller, Gate};

/// The service over a node's [`ReplicaManager`].
#[derive(Clone)]
pub struct ReplicationService {
    /// The replicas.
    manager: Arc<ReplicaManager>,
    /// Who may fetch as whom, and which notices are the controller's.
    gate: Arc<Gate>,
    /// Most partitions one `FetchRequest` may list (`limits.fetch_max_partitions`).
    max_fetch_partitions: usize,
}

impl ReplicationService {
    /// A service for `manager`, authorizing calls through `gate`; a fetch
    /// request may list `limits.fetch_max_partitions` (default) partitions.
    pub fn new(manager: Arc<ReplicaManager>, gate: Arc<Gate>) -> Self {
        ReplicationService {
            manager,
            gate,
            max_fetch_partitions: crate::config::limits::Limits::default().fetch_max_partitions,
        }
    }

    /// The tonic server wrapper, with message limits for fetched batches.
    pub fn server(
        manager: Arc<ReplicaManager>,
        gate: Arc<Gate>,
    ) -> pb::replication_server::ReplicationServer<ReplicationService> {
        let max = crate::config::limits::Limits::default().fetch_max_partitions;
        Self::server_limited(manager, gate, max)
    }

    /// [`Self::server`] where a `FetchRequest` may list at most
    /// `max_fetch_partitions` partitions.
    pub fn server_limited(
        manager: Arc<ReplicaManager>,
        gate: Arc<Gate>,
        max_fetch_partitions: usize,
    ) -> pb::replication_server::ReplicationServer<ReplicationService> {
        let limit = manager.message_limit();
        let mut svc = Self::new(manager, gate);
        svc.max_fetch_partitions = max_fetch_partitions;
        pb::replication_server::ReplicationServer::new(svc)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

/// Partition state from its wire form.
pub fn state_from_wire(p: pb::PartitionState, controller_epoch: u64) -> LeaderAndIsr {
    LeaderAndIsr {
        partition: p.partition,
        leader: (!p.leader.is_empty()).then_some(p.leader),
        leader_epoch: p.leader_epoch,
        replicas: p.replicas,
        isr: p.isr,
        controller_epoch,
        zk_version: p.zk_version,
        leader_node_epoch: p.leader_node_epoch,
    }
}

/// A notice's routing map from its wire form (none when empty). An index
/// outside `ids` counts as no node (offline leader, replica left out);
/// one outside `sets` as no replicas.
pub fn leaders_from_wire(
    ids: Vec<String>,
    sets: Vec<pb::ReplicaSet>,
    entries: Vec<pb::PartitionLeader>,
    full: bool,
) -> Vec<std::sync::Arc<crate::cluster::Leaders>> {
    if entries.is_empty() {
        return Vec::new();
    }
    let n = ids.len();
    let mut m = crate::cluster::Leaders {
        full,
        ids,
        sets: sets
            .into_iter()
            .map(|s| s.nodes.into_iter().filter(|&i| (i as usize) < n).collect())
            .collect(),
        entries: Vec::with_capacity(entries.len()),
    };
    for e in entries {
        let leader = if (e.leader as usize) <= n {
            e.leader
        } else {
            0
        };
        m.entries.push(crate::cluster::LeaderEntry {
            partition: e.partition,
            leader_epoch: e.leader_epoch,
            leader,
            replicas: e.replicas,
        });
    }
    m.sort();
    vec![std::sync::Arc::new(m)]
}

/// Partition state in its wire form.
pub fn state_to_wire(s: LeaderAndIsr) -> pb::PartitionState {
    pb::PartitionState {
        partition: s.partition,
        leader: s.leader.unwrap_or_default(),
        leader_epoch: s.leader_epoch,
        replicas: s.replicas,
        isr: s.isr,
        zk_version: s.zk_version,
        leader_node_epoch: s.leader_node_epoch,
    }
}

/// A node address from its wire form.
pub fn node_from_wire(n: pb::NodeAddress) -> NodeAddr {
    NodeAddr {
        id: n.id,
        client_addr: n.client_addr,
        replication_addr: n.replication_addr,
    }
}

/// A node address in its wire form.
pub fn node_to_wire(n: NodeAddr) -> pb::NodeAddress {
    pb::NodeAddress {
        id: n.id,
        client_addr: n.client_addr,
        replication_addr: n.replication_addr,
    }
}

/// Who sent `request`: over TLS, the node its certificate names (an
/// empty id, matching no node, when it names none); plaintext, unknown.
fn caller<T>(request: &Request<T>) -> Caller {
    if crate::tls::is_tls(request) {
        Caller::Node(crate::tls::peer_node_id(request).unwrap_or_default())
    } else {
        Caller::Unknown
    }
}

/// Refuses, before any work, a fetch request listing more than `max`
/// partitions (or forgetting more), or a partition twice: the stream ends
/// with `INVALID_ARGUMENT`. A follower never sends either.
pub(super) fn check_fetch(req: &pb::FetchRequest, max: usize) -> Result<(), Status> {
    if req.partitions.len() > max || req.forgotten.len() > max {
        return Err(Status::invalid_argument(format!(
            "fetch request lists {} partitions and forgets {}, at most {max} each \
             (limits.fetch_max_partitions)",
            req.partitions.len(),
            req.forgotten.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.partitions.len());
    for p in &req.partitions {
        if !seen.insert(p.partition) {
            return Err(Status::invalid_argument(format!(
                "fetch request lists partition {} twice",
                p.partition
            )));
        }
    }
    Ok(())
}

/// The stream of fetch answers.
type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<Streaming<pb::FetchRequest>>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let caller = caller(&request);
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let manager = self.manager.clone();
        let stream = manager.open_fetch_stream();
        let max_partitions = self.max_fetch_partitions;
        tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                let req = match requests.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if let Err(why) = Gate::admit_fetch(&caller, &req.follower_id) {
                    tracing::warn!("fetch refused: {why}");
                    let _ = tx.send(Err(Status::permission_denied(why))).await;
                    return;
                }
                if let Err(status) = check_fetch(&req, max_partitions) {
                    tracing::warn!(follower = req.follower_id, "{}", status.message());
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let answer = tokio::select! {
                    a = manager.fetch(req, turn, stream) => a.map_err(Status::from),
                    () = tx.closed() => return,
                };
                turn = turn.wrapping_add(1);
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn epoch_end_offset(
        &self,
        request: Request<pb::EpochEndOffsetRequest>,
    ) -> Result<Response<pb::EpochEndOffsetResponse>, Status> {
        let answer = self.manager.epoch_end_offset(request.into_inner())?;
        Ok(Response::new(answer))
    }

    async fn log_end_offsets(
        &self,
        request: Request<pb::LogEndOffsetsRequest>,
    ) -> Result<Response<pb::LogEndOffsetsResponse>, Status> {
        let r = request.into_inner();
        let partitions = self
            .manager
            .log_end_offsets(&r.partitions)
            .into_iter()
            .map(|o| pb::PartitionOffsets {
                partition: o.partition,
                log_end_offset: o.log_end_offset,
                last_epoch: o.last_epoch,
                high_watermark: o.high_watermark,
            })
            .collect();
        Ok(Response::new(pb::LogEndOffsetsResponse {
            node_id: self.manager.me().id.clone(),
            partitions,
        }))
    }

    async fn leader_and_isr(
        &self,
        request: Request<pb::LeaderAndIsrRequest>,
    ) -> Result<Response<pb::LeaderAndIsrResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let epoch = r.controller_epoch;
        if let Err(e) = self.gate.admit_notice(&caller, epoch).await {
            tracing::warn!(?caller, "controller notice refused: {e}");
            return Err(e.into());
        }
        let states = r
            .partitions
            .into_iter()
            .map(|p| state_from_wire(p, epoch))
            .collect();
        let nodes = r.nodes.into_iter().map(node_from_wire).collect();
        let leaders = leaders_from_wire(r.leader_ids, r.replica_sets, r.leaders, r.leaders_full);
        self.manager
            .notice(epoch, r.node_epoch, states, leaders, nodes)?;
        Ok(Response::new(pb::LeaderAndIsrResponse {}))
    }

    async fn handover(
        &self,
        request: Request<pb::HandoverRequest>,
    ) -> Result<Response<pb::HandoverResponse>, Status> {
        let r = request.into_inner();
        let partitions: Vec<(u32, u32)> = r
            .partitions
            .iter()
            .map(|p| (p.partition, p.leader_epoch))
            .collect();
        let timeout = std::time::Duration::from_millis(u64::from(r.timeout_ms));
        let s = self
            .manager
            .handover(r.controller_epoch, r.node_epoch, &partitions, timeout)
            .await?;
        Ok(Response::new(pb::HandoverResponse {
            settled: s.settled,
            behind: s.behind,
        }))
    }
}
