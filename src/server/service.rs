//! The `caskade.v1.Kv` gRPC service: decodes requests, applies the server's
//! default `acks` / `consistency`, calls the [`Node`], encodes replies.
//!
//! Invariants:
//! - a request naming more than `limits.max_keys_per_request` keys is
//!   refused with `INVALID_ARGUMENT` before any of them is touched;
//! - at most `server.max_in_flight` requests run at once (a tokio semaphore;
//!   a waiting request holds no engine resources);
//! - every error leaves through `impl From<Error> for Status` (src/error.rs),
//!   so clients always get a `caskade-reason`;
//! - handlers never block: the node runs engine calls on the blocking pool;
//! - a request for a partition led by another node is forwarded to that
//!   leader once (marked `caskade-forwarded`); a forwarded request is never
//!   forwarded again, so a moving leadership cannot make it loop;
//! - a forward's failure is mapped as the client maps it
//!   ([`crate::client::map_status`]), except that a leader which provably
//!   did not get the request (unreachable) is answered as `NOT_LEADER`
//!   naming it, as without a forward (nothing applied either way; the
//!   client never tried to connect there itself); a multi-key `DEL` that
//!   fails after some keys were written never answers an error that claims
//!   nothing was ([`Error::after_partial_write`]);
//! - an enum field a request carries (`condition`, `acks`, `consistency`)
//!   with a value this server does not know is refused with
//!   `INVALID_ARGUMENT` before anything runs, never read as the default;
//! - every request is timed into the node's [`Metrics`] from its arrival
//!   (before it waits for a slot) to its answer, with its outcome, by
//!   array index: no allocation, no lock (src/server/metrics.rs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::Error;
use crate::node::{Acks, Consistency, Node, SetArgs};
use crate::proto;
use crate::proto::kv_client::KvClient;
use crate::proto::kv_server::Kv;
use crate::server::metrics::{Command, Metrics};
use crate::storage::{Condition, Ttl};

mod batch;
mod coalesce;
mod forward;
mod lane_stream;
mod ops;
pub mod wire;

/// The service object tonic clones per connection (cheap: a few `Arc`s).
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
    /// Clients of the other nodes, for forwarding, by address.
    peers: Arc<Mutex<HashMap<String, KvClient<Channel>>>>,
    /// Request figures, and what `Info` reports.
    metrics: Arc<Metrics>,
    /// Most keys one request may name (`limits.max_keys_per_request`).
    max_keys: usize,
    /// Slots in `in_flight` (`server.max_in_flight`): the most one batch
    /// of [`KvService::get_many`] / [`KvService::set_many`] takes.
    slots: u32,
    /// Forwards of [`KvService::get_many`] / [`KvService::set_many`],
    /// coalesced per leader across connections (`service/coalesce.rs`).
    lanes: Arc<coalesce::Lanes>,
    /// The users `Forward` checks each message against (the ones the
    /// listener's [`crate::auth::grpc::Guarded`] checks); `None`: off.
    auth: Option<Arc<crate::auth::Authenticator>>,
    /// Turns true when the server starts shutting down: `Forward` streams
    /// then stop reading and end (service/forward.rs).
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Deadline of a forwarded request (for error messages; the caller's own
/// deadline applies as well).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata key marking a request forwarded by another node: it is served
/// here or refused, never forwarded again (no loops while leadership moves).
const FORWARDED: &str = "caskade-forwarded";

/// `message` as a request to a leader: marked forwarded (the leader never
/// forwards it again) and carrying the caller's credentials
/// (src/auth.rs), so the leader checks the same user.
fn forwarded_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(c) = crate::auth::forwarded_credentials()
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(&*c)
    {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// The answer of a forward to `leader` that failed with `status`: the
/// client's mapping (src/client/outcome.rs), UNREACHABLE only when the
/// leader provably did not process the request (answered as `NOT_LEADER`
/// naming it), else an unknown outcome, passed on as is.
fn forward_failure(leader: &Leader, status: Status) -> Error {
    let addr = leader.addr.as_str();
    match crate::client::map_status(addr, FORWARD_TIMEOUT, status) {
        Error::Unreachable { reason, .. } => {
            tracing::debug!("the leader at {addr} is unreachable: {reason}");
            Error::NotLeader {
                partition: leader.partition,
                leader: Some(leader.addr.clone()),
            }
        }
        e => e,
    }
}

/// Whether `request` was forwarded by another node.
fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// Where a request goes when this node does not lead its partition.
#[derive(Clone)]
struct Leader {
    /// The key's partition.
    partition: u32,
    /// The leader's client address.
    addr: String,
}

/// The leader named by a `NOT_LEADER` error, when forwarding applies.
fn leader_of<T>(result: &crate::Result<T>) -> Option<Leader> {
    match result {
        Err(Error::NotLeader {
            partition,
            leader: Some(addr),
        }) => Some(Leader {
            partition: *partition,
            addr: addr.clone(),
        }),
        _ => None,
    }
}

impl KvService {
    /// A service over `node` running at most `max_in_flight` requests,
    /// recording them into `metrics`.
    pub fn new(
        node: Arc<Node>,
        max_in_flight: usize,
        default_acks: Acks,
        default_consistency: Consistency,
        metrics: Arc<Metrics>,
    ) -> Self {
        KvService {
            node,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            default_acks,
            default_consistency,
            peers: Arc::default(),
            metrics,
            max_keys: crate::config::limits::Limits::default().max_keys_per_request,
            slots: u32::try_from(max_in_flight).unwrap_or(u32::MAX),
            lanes: Arc::default(),
            auth: None,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Checks each `Forward` message's credentials with `auth` (the
    /// listener's authenticator; `None`: authentication off).
    pub fn with_auth(mut self, auth: Option<Arc<crate::auth::Authenticator>>) -> Self {
        self.auth = auth;
        self
    }

    /// Ends `Forward` streams once `stopping` turns true (server shutdown).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The acknowledgement a request that names none gets.
    pub fn default_acks(&self) -> Acks {
        self.default_acks
    }

    /// Refuses requests naming more than `max_keys` keys (`MGET`, `MSET`,
    /// `DEL`, `EXISTS`) with `INVALID_ARGUMENT`.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// `INVALID_ARGUMENT` if a request names more than `max_keys` keys.
    fn check_keys(&self, count: usize) -> crate::Result<()> {
        if count > self.max_keys {
            return Err(Error::InvalidInput(format!(
                "too many keys in one request: {count}, at most {} \
                 (limits.max_keys_per_request)",
                self.max_keys
            )));
        }
        Ok(())
    }

    /// A client of the node at `addr` (connections are made lazily and
    /// shared).
    fn peer(&self, addr: &str) -> crate::Result<KvClient<Channel>> {
        let mut peers = self.peers.lock();
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        // With TLS, this node's certificate is presented (crate::tls).
        let channel = crate::tls::node_endpoint(addr)
            .map_err(|e| Error::Internal(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = KvClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// A multi-key count (`DEL`, `EXISTS`) whose keys are led by several
    /// nodes: one partition at a time (as `MGet` and `MSet`), `local` with
    /// the partition's keys where this node leads it, `remote(leader,
    /// keys)` with them elsewhere: one call per partition, not per key.
    async fn per_partition<L, LF, R, RF>(
        &self,
        keys: Vec<bytes::Bytes>,
        local: L,
        remote: R,
    ) -> crate::Result<u64>
    where
        L: Fn(Vec<bytes::Bytes>) -> LF,
        LF: Future<Output = crate::Result<u64>>,
        R: Fn(Leader, Vec<bytes::Bytes>) -> RF,
        RF: Future<Output = crate::Result<u64>>,
    {
        let mut total = 0;
        let mut done = 0;
        let count = keys.len();
        for (_, idx) in self.by_partition(&keys) {
            let part: Vec<bytes::Bytes> = idx.iter().map(|&i| keys[i].clone()).collect();
            let one = local(part.clone()).await;
            let r = match leader_of(&one) {
                Some(addr) => remote(addr, part).await,
                None => one,
            };
            // Keys already done: NOT_LEADER, or UNREACHABLE from the
            // forward, would claim nothing was.
            total += r.map_err(|e| e.after_partial_write(done, count))?;
            done += idx.len();
        }
        Ok(total)
    }

    /// Sends `message` to `leader` with `call`, marked as forwarded. A
    /// leader that provably did not get it (not reachable: killed, and its
    /// session has not expired yet, so no other leader exists) answers as
    /// if no forward had been tried: `NOT_LEADER` naming it.
    async fn forward<Q, A, F, Fut>(&self, leader: &Leader, message: Q, call: F) -> crate::Result<A>
    where
        F: FnOnce(KvClient<Channel>, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<A>, Status>>,
    {
        let addr = leader.addr.as_str();
        let client = self.peer(addr)?;
        let request = forwarded_request(message);
        tracing::debug!("forwarding to the leader at {addr}");
        match call(client, request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(forward_failure(leader, status)),
        }
    }

    /// Runs `f` once a slot is free, mapping its error to a status, and
    /// records it as a request of `command`.
    async fn run<T, F>(&self, command: Command, f: F) -> Result<Response<T>, Status>
    where
        F: Future<Output = crate::Result<T>>,
    {
        let timer = self.metrics.requests.start(command);
        let result = match self.in_flight.acquire().await {
            Ok(_slot) => f.await,
            Err(_) => Err(stopping()),
        };
        timer.finish(&result);
        result.map(Response::new).map_err(failed)
    }

    /// The request's acks, or the default.
    fn acks(&self, raw: i32) -> crate::Result<Acks> {
        match proto::Acks::try_from(raw) {
            Ok(proto::Acks::Unspecified) => Ok(self.default_acks),
            Ok(proto::Acks::Leader) => Ok(Acks::Leader),
            Ok(proto::Acks::All) => Ok(Acks::All),
            Err(_) => Err(Error::InvalidInput(format!(
                "unknown acks {raw}: expected 0 (server default), 1 (leader) or 2 (all)"
            ))),
        }
    }

    /// The request's consistency, or the default.
    fn consistency(&self, raw: i32) -> crate::Result<Consistency> {
        match proto::Consistency::try_from(raw) {
            Ok(proto::Consistency::Unspecified) => Ok(self.default_consistency),
            Ok(proto::Consistency::Leader) => Ok(Consistency::Leader),
            Ok(proto::Consistency::Any) => Ok(Consistency::Any),
            Err(_) => Err(Error::InvalidInput(format!(
                "unknown consistency {raw}: expected 0 (server default), 1 (leader) or 2 (any)"
            ))),
        }
    }
}

/// The refusal of a request that finds the slots closed: the server is
/// shutting down.
fn stopping() -> Error {
    Error::Unavailable("server is shutting down".into())
}

/// A request's error as its answer, logged at debug level.
fn failed(err: Error) -> Status {
    tracing::debug!(reason = err.reason(), "request failed: {err}");
    Status::from(err)
}

/// Test builds only: the failpoint `server::after_write` (`return(MS)`)
/// holds the reply of an applied `Set` for MS ms, so a test can kill the
/// server after the write and before the answer (tests/cli/client_outcome.rs).
/// It logs one line when it starts waiting, which the test waits for.
async fn after_write_pause() {
    #[cfg(feature = "failpoints")]
    {
        let pause = (|| {
            fail::fail_point!("server::after_write", |ms| {
                ms.and_then(|m| m.parse().ok()).map(Duration::from_millis)
            });
            None
        })();
        if let Some(pause) = pause {
            tracing::info!("failpoint server::after_write: holding the reply for {pause:?}");
            tokio::time::sleep(pause).await;
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
        let timer = self.metrics.requests.start(Command::Ping);
        timer.finish(&crate::Result::Ok(()));
        Ok(Response::new(proto::PingResponse {}))
    }

    #[instrument(level = "debug", skip_all)]
    async fn info(
        &self,
        _request: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        let timer = self.metrics.requests.start(Command::Info);
        let result = self.metrics.collect().await;
        timer.finish(&result);
        Ok(Response::new(result?.info()))
    }

    #[instrument(level = "debug", skip_all, fields(key_len, value_len))]
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        let span = tracing::Span::current();
        span.record("key_len", r.key.len());
        span.record("value_len", r.value.len());
        self.run(Command::Set, async {
            let args = SetArgs {
                ttl_ms: r.ttl_ms,
                condition: condition(r.condition)?,
                acks: self.acks(r.acks)?,
            };
            let result = self.node.set(r.key.clone(), r.value.clone(), args).await;
            if result.is_ok() {
                after_write_pause().await;
            }
            if let Some(addr) = leader_of(&result).filter(|_| again) {
                return self
                    .forward(&addr, r, |mut c, q| async move { c.set(q).await })
                    .await;
            }
            Ok(proto::SetResponse { written: result? })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len))]
    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        tracing::Span::current().record("key_len", r.key.len());
        self.run(Command::Get, async {
            let result = self
                .node
                .get(r.key.clone(), self.consistency(r.consistency)?)
                .await;
            if let Some(addr) = leader_of(&result).filter(|_| again) {
                return self
                    .forward(&addr, r, |mut c, q| async move { c.get(q).await })
                    .await;
            }
            Ok(proto::GetResponse { value: result? })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(keys))]
    async fn del(
        &self,
        request: Request<proto::DelRequest>,
    ) -> Result<Response<proto::DelResponse>, Status> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        tracing::Span::current().record("keys", r.keys.len());
        self.run(Command::Del, async {
            self.check_keys(r.keys.len())?;
            let acks = self.acks(r.acks)?;
            let result = self.node.del(r.keys.clone(), acks).await;
            if leader_of(&result).is_none() || !again {
                return Ok(proto::DelResponse { deleted: result? });
            }
            let deleted = self
                .per_partition(
                    r.keys,
                    |keys| self.node.del(keys, acks),
                    |addr, keys| async move {
                        let q = proto::DelRequest { keys, acks: r.acks };
                        let reply = self
                            .forward(&addr, q, |mut c, q| async move { c.del(q).await })
                            .await?;
                        Ok(reply.deleted)
                    },
                )
                .await?;
            Ok(proto::DelResponse { deleted })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len, ttl_ms))]
    async fn expire(
        &self,
        request: Request<proto::ExpireRequest>,
    ) -> Result<Response<proto::ExpireResponse>, Status> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        let span = tracing::Span::current();
        span.record("key_len", r.key.len());
        span.record("ttl_ms", r.ttl_ms);
        self.run(Command::Expire, async {
            let result = self
                .node
                .expire(r.key.clone(), r.ttl_ms, self.acks(r.acks)?)
                .await;
            if let Some(addr) = leader_of(&result).filter(|_| again) {
                return self
                    .forward(&addr, r, |mut c, q| async move { c.expire(q).await })
                    .await;
            }
            Ok(proto::ExpireResponse { existed: result? })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(key_len))]
    async fn ttl(
        &self,
        request: Request<proto::TtlRequest>,
    ) -> Result<Response<proto::TtlResponse>, Status> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        tracing::Span::current().record("key_len", r.key.len());
        self.run(Command::Ttl, async {
            let result = self
                .node
                .ttl(r.key.clone(), self.consistency(r.consistency)?)
                .await;
            if let Some(addr) = leader_of(&result).filter(|_| again) {
                return self
                    .forward(&addr, r, |mut c, q| async move { c.ttl(q).await })
                    .await;
            }
            let ttl_ms = match result? {
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
        let again = !forwarded(&request);
        let r = request.into_inner();
        tracing::Span::current().record("keys", r.keys.len());
        self.run(Command::Exists, async {
            self.check_keys(r.keys.len())?;
            let consistency = self.consistency(r.consistency)?;
            let result = self.node.exists(r.keys.clone(), consistency).await;
            if leader_of(&result).is_none() || !again {
                return Ok(proto::ExistsResponse { count: result? });
            }
            let count = self
                .per_partition(
                    r.keys,
                    |keys| self.node.exists(keys, consistency),
                    |addr, keys| async move {
                        let q = proto::ExistsRequest {
                            keys,
                            consistency: r.consistency,
                        };
                        let reply = self
                            .forward(&addr, q, |mut c, q| async move { c.exists(q).await })
                            .await?;
                        Ok(reply.count)
                    },
                )
                .await?;
            Ok(proto::ExistsResponse { count })
        })
        .await
    }

    async fn reassign(
        &self,
        request: Request<proto::ReassignRequest>,
    ) -> Result<Response<proto::ReassignResponse>, Status> {
        super::admin::reassign(&self.node, request.into_inner()).await
    }

    async fn reassign_status(
        &self,
        _request: Request<proto::ReassignStatusRequest>,
    ) -> Result<Response<proto::ReassignStatusResponse>, Status> {
        super::admin::status(&self.node).await
    }

    async fn reassign_cancel(
        &self,
        _request: Request<proto::ReassignCancelRequest>,
    ) -> Result<Response<proto::ReassignStatusResponse>, Status> {
        super::admin::cancel(&self.node).await
    }

    async fn reassign_throttle(
        &self,
        request: Request<proto::ReassignThrottleRequest>,
    ) -> Result<Response<proto::ReassignStatusResponse>, Status> {
        super::admin::throttle(&self.node, request.into_inner()).await
    }

    async fn decommission(
        &self,
        request: Request<proto::DecommissionRequest>,
    ) -> Result<Response<proto::ReassignStatusResponse>, Status> {
        super::admin::decommission(&self.node, request.into_inner()).await
    }

    #[instrument(level = "debug", skip_all)]
    async fn metadata(
        &self,
        _request: Request<proto::MetadataRequest>,
    ) -> Result<Response<proto::MetadataResponse>, Status> {
        self.metrics
            .requests
            .start(Command::Metadata)
            .finish(&crate::Result::Ok(()));
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

    // Redis string RPCs (issue 11): handlers in service/ops.rs.

    async fn set_with(
        &self,
        request: Request<proto::SetWithRequest>,
    ) -> Result<Response<proto::SetWithResponse>, Status> {
        self.set_with_rpc(request).await
    }

    async fn get_del(
        &self,
        request: Request<proto::KeyWriteRequest>,
    ) -> Result<Response<proto::ValueResponse>, Status> {
        self.get_del_rpc(request).await
    }

    async fn get_ex(
        &self,
        request: Request<proto::GetExRequest>,
    ) -> Result<Response<proto::ValueResponse>, Status> {
        self.get_ex_rpc(request).await
    }

    async fn expire_with(
        &self,
        request: Request<proto::ExpireWithRequest>,
    ) -> Result<Response<proto::FlagResponse>, Status> {
        self.expire_with_rpc(request).await
    }

    async fn persist(
        &self,
        request: Request<proto::KeyWriteRequest>,
    ) -> Result<Response<proto::FlagResponse>, Status> {
        self.persist_rpc(request).await
    }

    async fn incr_by(
        &self,
        request: Request<proto::IncrByRequest>,
    ) -> Result<Response<proto::IntResponse>, Status> {
        self.incr_by_rpc(request).await
    }

    async fn append(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Result<Response<proto::IntResponse>, Status> {
        self.append_rpc(request).await
    }

    async fn strlen(
        &self,
        request: Request<proto::KeyReadRequest>,
    ) -> Result<Response<proto::IntResponse>, Status> {
        self.strlen_rpc(request).await
    }

    async fn expire_time(
        &self,
        request: Request<proto::KeyReadRequest>,
    ) -> Result<Response<proto::IntResponse>, Status> {
        self.expire_time_rpc(request).await
    }

    async fn m_get(
        &self,
        request: Request<proto::MGetRequest>,
    ) -> Result<Response<proto::MGetResponse>, Status> {
        self.m_get_rpc(request).await
    }

    async fn m_set(
        &self,
        request: Request<proto::MSetRequest>,
    ) -> Result<Response<proto::MSetResponse>, Status> {
        self.m_set_rpc(request).await
    }

    async fn db_size(
        &self,
        request: Request<proto::DbSizeRequest>,
    ) -> Result<Response<proto::IntResponse>, Status> {
        self.db_size_rpc(request).await
    }

    type ForwardStream = forward::Answers;

    async fn forward(
        &self,
        request: Request<tonic::Streaming<proto::ForwardRequest>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        self.forward_rpc(request).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::Config;
    use crate::storage::SystemClock;

    fn service(dir: &std::path::Path) -> KvService {
        let config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let node =
            Node::open_standalone(&config, "127.0.0.1:1".into(), Arc::new(SystemClock)).unwrap();
        let node = Arc::new(node);
        let metrics = Metrics::new(node.clone(), None);
        KvService::new(node, 4, Acks::Leader, Consistency::Leader, metrics)
    }

    /// Two keys in different partitions, the first one's partition the
    /// lower (partitions are visited in order).
    fn keys_in_two_partitions(svc: &KvService) -> (Bytes, Bytes) {
        let n = svc.node.partition_count();
        let part = |k: &Bytes| crate::cluster::partition_for(k, n);
        let a = Bytes::from_static(b"a");
        (0..1000)
            .map(|i| Bytes::from(format!("b{i}")))
            .find(|b| part(b) > part(&a))
            .map(|b| (a, b))
            .expect("a key in a higher partition")
    }

    /// `DEL a b`: `a` is deleted here, `b`'s leader cannot be reached. The
    /// answer must not be UNREACHABLE ("nothing sent"): a client would retry
    /// the whole DEL and count `a` as absent.
    #[tokio::test]
    async fn del_failing_after_a_key_was_written_is_not_nothing_sent() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (a, b) = keys_in_two_partitions(&svc);
        let first = a.clone();
        let err = svc
            .per_partition(
                vec![a, b],
                |keys| {
                    let first = first.clone();
                    async move {
                        if keys == [first] {
                            Ok(1)
                        } else {
                            Err(Error::NotLeader {
                                partition: 1,
                                leader: Some("127.0.0.1:2".into()),
                            })
                        }
                    }
                },
                |leader, _keys| async move {
                    Err(Error::Unreachable {
                        addr: leader.addr,
                        reason: "connection refused".into(),
                    })
                },
            )
            .await
            .unwrap_err();
        assert!(!err.nothing_applied(), "{err:?}");
        assert_eq!(
            err,
            Error::Unavailable(
                "1 of 2 keys were written before this failed: could not connect to caskade at \
                 127.0.0.1:2: connection refused; retry the rest"
                    .into()
            )
        );
    }

    /// A partition whose own call fails part-way (`1 of 2` of its keys)
    /// after another partition's 2 keys were written: the answer counts
    /// for the whole request, `3 of 4`.
    #[tokio::test]
    async fn a_partitions_own_partial_write_counts_in_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let n = svc.node.partition_count();
        let part = |k: &Bytes| crate::cluster::partition_for(k, n);
        let keys: Vec<Bytes> = (0..1000).map(|i| Bytes::from(format!("k{i}"))).collect();
        let first = part(&keys[0]);
        let other = keys.iter().map(part).find(|&p| p != first).unwrap();
        let (low, high) = (first.min(other), first.max(other));
        let pick = |p: u32| -> Vec<Bytes> {
            keys.iter()
                .filter(|k| part(k) == p)
                .take(2)
                .cloned()
                .collect()
        };
        let request: Vec<Bytes> = [pick(low), pick(high)].concat();
        let err = svc
            .per_partition(
                request,
                |keys| async move {
                    if part(&keys[0]) == low {
                        Ok(2)
                    } else {
                        Err(Error::Unreachable {
                            addr: "127.0.0.1:2".into(),
                            reason: "connection refused".into(),
                        }
                        .after_partial_write(1, 2))
                    }
                },
                |_leader, _keys| async move { Ok(0) },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::Unavailable(
                "3 of 4 keys were written before this failed: could not connect to caskade at \
                 127.0.0.1:2: connection refused; retry the rest"
                    .into()
            )
        );
    }

    /// A multi-key `DEL`/`EXISTS` whose keys this node does not all lead
    /// costs one call per partition, with that partition's keys, not one
    /// per key (each a forward to another node in a cluster).
    #[tokio::test]
    async fn multi_key_counts_go_one_call_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let keys: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("k{i}"))).collect();
        let n = svc.node.partition_count();
        let mut expected: Vec<Vec<Bytes>> = Vec::new();
        for p in 0..n {
            let part: Vec<Bytes> = keys
                .iter()
                .filter(|k| crate::cluster::partition_for(k, n) == p)
                .cloned()
                .collect();
            if !part.is_empty() {
                expected.push(part);
            }
        }
        assert!(expected.len() > 1, "40 keys fall in one partition");
        let local = parking_lot::Mutex::new(Vec::new());
        let remote = parking_lot::Mutex::new(Vec::new());
        let total = svc
            .per_partition(
                keys.clone(),
                |part| {
                    local.lock().push(part.clone());
                    async move {
                        Err(Error::NotLeader {
                            partition: 0,
                            leader: Some("127.0.0.1:2".into()),
                        })
                    }
                },
                |_leader, part| {
                    remote.lock().push(part.clone());
                    async move { Ok(part.len() as u64) }
                },
            )
            .await
            .unwrap();
        assert_eq!(total, 40);
        assert_eq!(*local.lock(), expected);
        assert_eq!(*remote.lock(), expected);
    }

    /// An empty `get_many` / `set_many` (a RESP batch without that kind)
    /// answers nothing at once: it waits for no slot, even with every slot
    /// held, and records no request; a batch of one key is served and
    /// recorded once.
    #[tokio::test]
    async fn empty_batches_do_nothing() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let held = svc.in_flight.clone().acquire_many_owned(4).await.unwrap();
        assert_eq!(svc.get_many(&[]).now_or_never().map(|a| a.len()), Some(0));
        assert_eq!(svc.set_many(&[]).now_or_never().map(|a| a.len()), Some(0));
        let recorded = |svc: &KvService| -> u64 {
            svc.metrics
                .requests
                .snapshot()
                .iter()
                .flatten()
                .map(|h| h.count())
                .sum()
        };
        assert_eq!(recorded(&svc), 0);
        drop(held);
        let pair = (Bytes::from_static(b"k"), Bytes::from_static(b"v"));
        assert!(svc.set_many(&[pair]).await[0].is_ok());
        let got = svc.get_many(&[Bytes::from_static(b"k")]).await;
        assert_eq!(got[0].as_ref().ok(), Some(&Some(Bytes::from_static(b"v"))));
        assert_eq!(recorded(&svc), 2);
    }

    /// `set_one` / `get_one` (a RESP read of one `SET` or `GET`) answer as
    /// a batch of one did: the value written and read back, a too-long key
    /// refused, each request recorded once under its command and outcome,
    /// and with the slots closed (shutdown) an `UNAVAILABLE` refusal.
    #[tokio::test]
    async fn one_key_requests_answer_and_record_as_a_batch_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (k, v) = (Bytes::from_static(b"k"), Bytes::from_static(b"v"));
        assert_eq!(svc.set_one(&k, &v).await.ok(), Some(()));
        assert_eq!(svc.get_one(&k).await.ok(), Some(Some(v.clone())));
        assert_eq!(
            svc.get_one(&Bytes::from_static(b"absent")).await.ok(),
            Some(None)
        );
        let long = Bytes::from(vec![b'x'; 2000]);
        let refused = svc.get_one(&long).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        svc.in_flight.close();
        let stopped = svc.set_one(&k, &v).await.unwrap_err();
        assert_eq!(stopped.code(), tonic::Code::Unavailable);
        assert!(
            stopped.message().contains("server is shutting down"),
            "{stopped:?}"
        );
        let counts = svc.metrics.requests.snapshot();
        let count = |c: Command, outcome: &str| {
            let o = crate::server::metrics::OUTCOMES
                .iter()
                .position(|x| *x == outcome)
                .unwrap();
            counts[c as usize][o].count()
        };
        assert_eq!(count(Command::Set, "ok"), 1);
        assert_eq!(count(Command::Set, "unavailable"), 1);
        assert_eq!(count(Command::Get, "ok"), 2);
        assert_eq!(count(Command::Get, "invalid_argument"), 1);
        let total: u64 = counts.iter().flatten().map(|h| h.count()).sum();
        assert_eq!(total, 5, "nothing else recorded");
    }
}
