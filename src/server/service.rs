//! The `caskade.v1.Kv` gRPC service: decodes requests, applies the server's
//! default `acks` / `consistency`, calls the [`Node`], encodes replies.
//!
//! Invariants:
//! - at most `server.max_in_flight` requests run at once (a tokio semaphore;
//!   a waiting request holds no engine resources);
//! - every error leaves through `impl From<Error> for Status` (src/error.rs),
//!   so clients always get a `caskade-reason`;
//! - handlers never block: the node runs engine calls on the blocking pool.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::node::{Acks, Consistency, Node, SetArgs};
use crate::proto;
use crate::proto::kv_server::Kv;
use crate::storage::{Condition, Ttl};

/// The service object tonic clones per connection (cheap: two `Arc`s).
#[derive(Clone)]
pub struct KvService {
    /// The node requests are routed through.
    node: Arc<Node>,
    /// Slots for requests executing at once.
    in_flight: Arc<Semaphore>,
    /// `acks` applied when a request leaves it unspecified.
    default_acks: Acks,
    /// `consistency` applied when a request leaves it unspecified.
    default_consistency: Consistency,
}

impl KvService {
    /// A service over `node` running at most `max_in_flight` requests.
    pub fn new(
        node: Arc<Node>,
        max_in_flight: usize,
        default_acks: Acks,
        default_consistency: Consistency,
    ) -> Self {
        KvService {
            node,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            default_acks,
            default_consistency,
        }
    }

    /// Runs `f` once a slot is free, mapping its error to a status.
    async fn run<T, F>(&self, f: F) -> Result<Response<T>, Status>
    where
        F: Future<Output = crate::Result<T>>,
    {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Status::from(Error::Unavailable("server is shutting down".into())))?;
        match f.await {
            Ok(reply) => Ok(Response::new(reply)),
            Err(err) => {
                tracing::debug!(reason = err.reason(), "request failed: {err}");
                Err(err.into())
            }
        }
    }

    /// The request's acks, or the default.
    fn acks(&self, raw: i32) -> Acks {
        match proto::Acks::try_from(raw) {
            Ok(proto::Acks::Leader) => Acks::Leader,
            Ok(proto::Acks::All) => Acks::All,
            _ => self.default_acks,
        }
    }

    /// The request's consistency, or the default.
    fn consistency(&self, raw: i32) -> Consistency {
        match proto::Consistency::try_from(raw) {
            Ok(proto::Consistency::Leader) => Consistency::Leader,
            Ok(proto::Consistency::Any) => Consistency::Any,
            _ => self.default_consistency,
        }
    }
}

/// Decodes a precondition; unknown values are refused rather than ignored.
fn condition(raw: i32) -> crate::Result<Condition> {
    match proto::Condition::try_from(raw) {
        Ok(proto::Condition::Always) => Ok(Condition::Always),
        Ok(proto::Condition::IfAbsent) => Ok(Condition::IfAbsent),
        Ok(proto::Condition::IfPresent) => Ok(Condition::IfPresent),
        Err(_) => Err(Error::InvalidInput(format!("unknown condition {raw}"))),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    #[instrument(level = "trace", skip_all)]
    async fn ping(
        &self,
        _request: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingResponse>, Status> {
        Ok(Response::new(proto::PingResponse {}))
    }

    #[instrument(level = "debug", skip_all, fields(key_len, value_len))]
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::Span::current();
        span.record("key_len", r.key.len());
        span.record("value_len", r.value.len());
        self.run(async {
            let args = SetArgs {
                ttl_ms: r.ttl_ms,
                condition: condition(r.condition)?,
                acks: self.acks(r.acks),
            };
            let written = self.node.set(r.key, r.value, args).await?;
            Ok(proto::SetResponse { written })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len))]
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("key_len", r.key.len());
        self.run(async {
            let value = self
                .node
                .get(r.key, self.consistency(r.consistency))
                .await?;
            Ok(proto::GetResponse { value })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(keys))]
    async fn del(
        &self,
        request: Request<proto::DelRequest>,
    ) -> Result<Response<proto::DelResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("keys", r.keys.len());
        self.run(async {
            let deleted = self.node.del(r.keys, self.acks(r.acks)).await?;
            Ok(proto::DelResponse { deleted })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len, ttl_ms))]
    async fn expire(
        &self,
        request: Request<proto::ExpireRequest>,
    ) -> Result<Response<proto::ExpireResponse>, Status> {
        let r = request.into_inner();
        let span = tracing::Span::current();
        span.record("key_len", r.key.len());
        span.record("ttl_ms", r.ttl_ms);
        self.run(async {
            let existed = self.node.expire(r.key, r.ttl_ms, self.acks(r.acks)).await?;
            Ok(proto::ExpireResponse { existed })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len))]
    async fn ttl(
        &self,
        request: Request<proto::TtlRequest>,
    ) -> Result<Response<proto::TtlResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("key_len", r.key.len());
        self.run(async {
            let ttl = self
                .node
                .ttl(r.key, self.consistency(r.consistency))
                .await?;
            let ttl_ms = match ttl {
                Ttl::Missing => -2,
                Ttl::Persistent => -1,
                Ttl::ExpiresInMs(ms) => i64::try_from(ms).unwrap_or(i64::MAX),
            };
            Ok(proto::TtlResponse { ttl_ms })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(keys))]
    async fn exists(
        &self,
        request: Request<proto::ExistsRequest>,
    ) -> Result<Response<proto::ExistsResponse>, Status> {
        let r = request.into_inner();
        tracing::Span::current().record("keys", r.keys.len());
        self.run(async {
            let count = self
                .node
                .exists(r.keys, self.consistency(r.consistency))
                .await?;
            Ok(proto::ExistsResponse { count })
        })
        .await
    }

    #[instrument(level = "debug", skip_all)]
    async fn metadata(
        &self,
        _request: Request<proto::MetadataRequest>,
    ) -> Result<Response<proto::MetadataResponse>, Status> {
        let node = &self.node;
        let (nodes, partitions) = node.metadata();
        let limits = node.limits();
        Ok(Response::new(proto::MetadataResponse {
            node_id: node.info().id.clone(),
            mode: node.mode().into(),
            partitioner: crate::cluster::PARTITIONER.into(),
            partition_count: node.partition_count(),
            nodes: nodes
                .into_iter()
                .map(|n| proto::NodeInfo {
                    id: n.id,
                    client_addr: n.client_addr,
                })
                .collect(),
            partitions: partitions
                .into_iter()
                .map(|p| proto::PartitionInfo {
                    id: p.id,
                    leader: p.leader.unwrap_or_default(),
                    leader_epoch: u64::from(p.leader_epoch),
                    replicas: p.replicas,
                    isr: p.isr,
                    high_watermark: p.high_watermark,
                    offsets: p
                        .offsets
                        .into_iter()
                        .map(|(node_id, log_end_offset)| proto::ReplicaOffset {
                            node_id,
                            log_end_offset,
                        })
                        .collect(),
                })
                .collect(),
            controller: node.controller().unwrap_or_default(),
            limits: Some(proto::Limits {
                max_key_bytes: limits.max_key_bytes as u64,
                max_value_bytes: limits.max_value_bytes as u64,
            }),
        }))
    }
}
