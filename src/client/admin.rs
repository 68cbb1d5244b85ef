//! The reassignment admin calls of [`Client`], sent to the node this client
//! talks to (any node answers them; they are not routed by key).

use std::collections::BTreeMap;

use super::Client;
use crate::error::Result;
use crate::proto;

impl Client {
    /// Starts a reassignment to `partitions`' target replicas.
    pub async fn reassign(
        &self,
        partitions: &BTreeMap<u32, Vec<String>>,
        throttle_bytes_per_sec: u64,
    ) -> Result<()> {
        let request = proto::ReassignRequest {
            partitions: partitions
                .iter()
                .map(|(p, r)| proto::PartitionTarget {
                    partition: *p,
                    replicas: r.clone(),
                })
                .collect(),
            throttle_bytes_per_sec,
        };
        self.any()
            .reassign(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// The reassignment in progress and the decommissioned nodes.
    pub async fn reassign_status(&self) -> Result<proto::ReassignStatusResponse> {
        let reply = self
            .any()
            .reassign_status(proto::ReassignStatusRequest {})
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }

    /// Cancels the reassignment in progress.
    pub async fn reassign_cancel(&self) -> Result<proto::ReassignStatusResponse> {
        let reply = self
            .any()
            .reassign_cancel(proto::ReassignCancelRequest {})
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }

    /// Changes the throttle of the reassignment in progress.
    pub async fn reassign_throttle(
        &self,
        throttle_bytes_per_sec: u64,
    ) -> Result<proto::ReassignStatusResponse> {
        let reply = self
            .any()
            .reassign_throttle(proto::ReassignThrottleRequest {
                throttle_bytes_per_sec,
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }

    /// Marks `node_id` decommissioned, or (`recommission`) removes the mark.
    pub async fn decommission(
        &self,
        node_id: &str,
        recommission: bool,
    ) -> Result<proto::ReassignStatusResponse> {
        let reply = self
            .any()
            .decommission(proto::DecommissionRequest {
                node_id: node_id.to_string(),
                recommission,
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }
}
