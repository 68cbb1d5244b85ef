//! The reassignment admin RPCs of `caskade.v1.Kv` (`Reassign`,
//! `ReassignStatus`, `ReassignCancel`, `ReassignThrottle`, `Decommission`):
//! decoded here and run through this node's ZooKeeper session
//! (`cluster/zk/admin.rs`). Any node answers them; none is forwarded.
//!
//! Invariants:
//! - a standalone node answers `FAILED_PRECONDITION` ("reassignment needs a
//!   cluster");
//! - every error leaves through `impl From<Error> for Status`, as for the
//!   key-value RPCs.

use std::collections::BTreeMap;

use tonic::{Response, Status};

use crate::cluster::ReassignStatus;
use crate::error::Error;
use crate::node::Node;
use crate::proto;

/// The status answer of `s`.
fn status_reply(s: ReassignStatus) -> proto::ReassignStatusResponse {
    let mut reply = proto::ReassignStatusResponse {
        decommissioned: s.decommissioned,
        ..Default::default()
    };
    if let Some(r) = s.pending {
        reply.in_progress = true;
        reply.throttle_bytes_per_sec = r.throttle_bytes_per_sec;
        reply.cancel = r.cancel;
        reply.partitions = r
            .partitions
            .into_iter()
            .map(|(partition, replicas)| proto::PartitionTarget {
                partition,
                replicas,
            })
            .collect();
    }
    reply
}

/// Maps the outcome to a reply.
fn answer<T>(r: crate::Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| {
        tracing::debug!(reason = e.reason(), "admin request failed: {e}");
        Status::from(e)
    })
}

/// `Reassign`.
pub async fn reassign(
    node: &Node,
    r: proto::ReassignRequest,
) -> Result<Response<proto::ReassignResponse>, Status> {
    answer(
        async {
            let zk = node.zk()?;
            let mut partitions = BTreeMap::new();
            for t in r.partitions {
                if partitions.insert(t.partition, t.replicas).is_some() {
                    return Err(Error::InvalidInput(format!(
                        "partition {} is listed twice",
                        t.partition
                    )));
                }
            }
            zk.reassign(partitions, r.throttle_bytes_per_sec).await?;
            Ok(proto::ReassignResponse {})
        }
        .await,
    )
}

/// `ReassignStatus`.
pub async fn status(node: &Node) -> Result<Response<proto::ReassignStatusResponse>, Status> {
    answer(
        async {
            let s = node.zk()?.reassign_status().await?;
            Ok(status_reply(s))
        }
        .await,
    )
}

/// `ReassignCancel`.
pub async fn cancel(node: &Node) -> Result<Response<proto::ReassignStatusResponse>, Status> {
    answer(
        async {
            let zk = node.zk()?;
            zk.reassign_cancel().await?;
            Ok(status_reply(zk.reassign_status().await?))
        }
        .await,
    )
}

/// `ReassignThrottle`.
pub async fn throttle(
    node: &Node,
    r: proto::ReassignThrottleRequest,
) -> Result<Response<proto::ReassignStatusResponse>, Status> {
    answer(
        async {
            let zk = node.zk()?;
            zk.reassign_throttle(r.throttle_bytes_per_sec).await?;
            Ok(status_reply(zk.reassign_status().await?))
        }
        .await,
    )
}

/// `Decommission`.
pub async fn decommission(
    node: &Node,
    r: proto::DecommissionRequest,
) -> Result<Response<proto::ReassignStatusResponse>, Status> {
    answer(
        async {
            let zk = node.zk()?;
            zk.decommission(&r.node_id, !r.recommission).await?;
            Ok(status_reply(zk.reassign_status().await?))
        }
        .await,
    )
}
