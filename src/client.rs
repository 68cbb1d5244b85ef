//! The Rust client of the `caskade.v1.Kv` API, used by the CLI, the load
//! generator and the tests.
//!
//! - Connections are lazy: creating a [`Client`] never fails because the
//!   server is down; each call connects if needed, and a server that comes
//!   back is reached again without building a new client.
//! - Every failure is an [`Error`]: statuses from a caskade server are
//!   rebuilt from their `caskade-reason` (src/error.rs); transport failures
//!   by what they prove ([`map_status`], src/client/outcome.rs): a failure
//!   to connect, or a server refusing the request before processing it,
//!   becomes [`Error::Unreachable`] ("nothing sent"); a client-side deadline
//!   [`Error::Timeout`]; anything lost after the request may have left
//!   [`Error::Unavailable`] ("may or may not have been applied").
//! - Routing: every keyed call goes through `Client::keyed`. The client
//!   learns the partition map from `Metadata` on first use (from the first
//!   seed address that answers), sends each key straight to its
//!   partition's leader ([`crate::cluster::partition_for`]), and on
//!   `NOT_LEADER` or an unreachable leader refreshes the map and retries,
//!   backing off from [`FIRST_BACKOFF`] to at most [`MAX_BACKOFF`], for as
//!   long as the call's timeout allows: a failover shorter than the timeout
//!   is hidden from the caller. Both errors mean nothing was written, so a
//!   retried write is never applied twice. Invariant: a call is retried
//!   only after an error for which [`Error::nothing_applied`] holds; an
//!   unknown outcome (timeout, connection lost mid-request) is returned to
//!   the caller, never re-sent. A standalone server's map names itself for
//!   every partition, so the same path serves both.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::cluster::partition_for;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::node::{Acks, Consistency};
use crate::proto;
use crate::proto::kv_client::KvClient;
use crate::storage::Condition;

mod admin;
mod ops;
mod outcome;
mod sniff;

pub use outcome::map_status;

/// The gRPC stub of one server: every request carries the client's
/// credentials ([`Credentials`]).
pub type Stub = KvClient<InterceptedService<Channel, Credentials>>;

/// Adds `authorization: Basic ...` (src/auth.rs) to every request when the
/// client has a password; the value is never logged or displayed.
#[derive(Clone, Default)]
pub struct Credentials(Option<tonic::metadata::AsciiMetadataValue>);

impl Credentials {
    /// The credentials of `auth` (`None` when it has no password; an empty
    /// user is `default`).
    pub fn new(auth: &crate::config::auth::ClientAuth) -> Result<Credentials> {
        if auth.password.is_empty() {
            return Ok(Credentials(None));
        }
        let user = if auth.user.is_empty() {
            "default"
        } else {
            &auth.user
        };
        let value = crate::auth::basic(user, auth.password.as_bytes())
            .parse()
            .map_err(|_| Error::InvalidInput("credentials are not ASCII".into()))?;
        Ok(Credentials(Some(value)))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// Options of a [`Client::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Time to live in ms (at least 1); `None` keeps the key forever.
    pub ttl_ms: Option<u64>,
    /// Precondition (NX / XX).
    pub condition: Condition,
    /// Acknowledgement; `None` uses the client's default.
    pub acks: Option<Acks>,
}

/// Time to live as `TTL` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTtl {
    /// No such key.
    Missing,
    /// The key never expires.
    Persistent,
    /// Milliseconds left.
    Ms(u64),
}

/// First pause before a keyed call is retried because its leader moved or is
/// down; it doubles on each retry up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between two attempts of a keyed call, so a new leader is
/// found within this much of the cluster electing it.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The partition map as the client last learned it.
#[derive(Default)]
struct Routes {
    /// Partition count; 0 until the map is known.
    partitions: u32,
    /// Client address of each partition's leader (`None` while offline).
    leaders: Vec<Option<String>>,
    /// Every node's client address, for metadata refreshes.
    nodes: Vec<String>,
    /// Connections by address.
    conns: HashMap<String, Stub>,
}

/// A connection to a caskade server (standalone) or cluster.
#[derive(Clone)]
pub struct Client {
    /// The seed address connected to first.
    addr: String,
    /// Seed addresses, in order.
    seeds: Vec<String>,
    /// The gRPC stub of the first seed; cloning it shares the connection.
    kv: Stub,
    /// Endpoint settings for further connections.
    connect_timeout: Duration,
    /// TLS of every connection (`tls:` of the config), `None` for plaintext.
    tls: Option<ClientTlsConfig>,
    /// The partition map and connections to leaders.
    routes: Arc<RwLock<Routes>>,
    /// Per-request deadline, for error messages.
    timeout: Duration,
    /// Default write acknowledgement.
    acks: Acks,
    /// Default read consistency.
    consistency: Consistency,
    /// Sent with every request.
    credentials: Credentials,
}

impl Client {
    /// A client for `config.addrs[0]`, connecting on first use. Must be
    /// called within a tokio runtime (the connection task is spawned on it).
    pub fn new(config: &ClientConfig) -> Result<Client> {
        let addr = config
            .addrs
            .first()
            .ok_or_else(|| Error::InvalidInput("no server address given".into()))?
            .clone();
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let tls =
            crate::tls::load_client(&config.tls).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let credentials = Credentials::new(&config.auth)?;
        let kv = connect(&addr, connect_timeout, timeout, tls.as_ref(), &credentials)?;
        let mut routes = Routes::default();
        routes.conns.insert(addr.clone(), kv.clone());
        Ok(Client {
            addr,
            seeds: config.addrs.clone(),
            kv,
            connect_timeout,
            tls,
            routes: Arc::new(RwLock::new(routes)),
            timeout,
            acks: config.acks,
            consistency: config.consistency,
            credentials,
        })
    }

    /// A client for one address with default settings.
    pub fn for_addr(addr: impl Into<String>) -> Result<Client> {
        Client::new(&ClientConfig {
            addrs: vec![addr.into()],
            ..ClientConfig::default()
        })
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The gRPC stub of the first seed address, unrouted (its connection,
    /// TLS and credentials shared with this client): for callers that
    /// must send every request to that one server (`caskade-cli probe`).
    pub fn seed_stub(&self) -> Stub {
        self.kv.clone()
    }

    /// A connection to `addr`, made lazily and shared.
    fn conn(&self, addr: &str) -> Result<Stub> {
        if let Some(c) = self.routes.read().conns.get(addr) {
            return Ok(c.clone());
        }
        let c = connect(
            addr,
            self.connect_timeout,
            self.timeout,
            self.tls.as_ref(),
            &self.credentials,
        )?;
        self.routes
            .write()
            .conns
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The address of the leader of `key`'s partition, as last learned.
    fn route(&self, key: &[u8]) -> Option<String> {
        let r = self.routes.read();
        if r.partitions == 0 {
            return None;
        }
        r.leaders
            .get(partition_for(key, r.partitions) as usize)
            .cloned()
            .flatten()
    }

    /// Re-learns the partition map from the first node that answers
    /// (seeds first, then every node known).
    async fn refresh(&self) -> Result<()> {
        let mut candidates = self.seeds.clone();
        candidates.extend(self.routes.read().nodes.iter().cloned());
        let mut last = None;
        for addr in candidates {
            let mut c = self.conn(&addr)?;
            match c.metadata(proto::MetadataRequest {}).await {
                Ok(reply) => {
                    self.learn(&reply.into_inner());
                    return Ok(());
                }
                Err(status) => last = Some(map_status(&addr, self.timeout, status)),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidInput("no server address given".into())))
    }

    /// Stores the partition map of a `Metadata` answer.
    fn learn(&self, m: &proto::MetadataResponse) {
        let addr_of: HashMap<&str, &str> = m
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.client_addr.as_str()))
            .collect();
        let mut leaders = vec![None; m.partition_count as usize];
        for p in &m.partitions {
            if let Some(slot) = leaders.get_mut(p.id as usize) {
                *slot = addr_of.get(p.leader.as_str()).map(|a| a.to_string());
            }
        }
        let mut r = self.routes.write();
        r.partitions = m.partition_count;
        r.leaders = leaders;
        r.nodes = m.nodes.iter().map(|n| n.client_addr.clone()).collect();
    }

    /// Runs a keyed call on the leader of `key`'s partition, refreshing the
    /// map and retrying when the leader moved or cannot be reached.
    async fn keyed<Q, A, F, Fut>(&self, key: &[u8], request: Q, call: F) -> Result<A>
    where
        Q: Clone,
        F: Fn(Stub, Q) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<A>, tonic::Status>>,
    {
        if self.routes.read().partitions == 0 {
            // Unknown map: the seed answers (and forwards) meanwhile.
            let _ = self.refresh().await;
        }
        let started = tokio::time::Instant::now();
        let mut hint: Option<String> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut first = true;
        loop {
            let addr = hint
                .take()
                .or_else(|| self.route(key))
                .unwrap_or_else(|| self.addr.clone());
            let err = match call(self.conn(&addr)?, request.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => map_status(&addr, self.timeout, status),
            };
            let pause = match &err {
                // The first redirect to a named leader goes at once; later
                // ones (leadership moving under us) back off.
                Error::NotLeader {
                    leader: Some(leader),
                    ..
                } => {
                    hint = Some(leader.clone());
                    if first { Duration::ZERO } else { backoff }
                }
                // An election is under way.
                Error::NotLeader { leader: None, .. } => backoff,
                // Another node may lead soon: only worth a wait in a cluster.
                Error::Unreachable { .. } if self.routes.read().nodes.len() > 1 => backoff,
                // Anything else may have been applied (a connection lost
                // after sending, a timeout) or is final: a write must not
                // be sent twice, so the caller gets the error.
                _ => return Err(err),
            };
            // Only errors proving the request was not applied are retried.
            debug_assert!(err.nothing_applied(), "retrying after {err:?}");
            // Retry only within the call's timeout, and never sleep just to
            // give up afterwards.
            if started.elapsed() + pause >= self.timeout {
                return Err(err);
            }
            first = false;
            tokio::time::sleep(pause).await;
            if !pause.is_zero() {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            if hint.is_none() {
                let _ = self.refresh().await;
            }
        }
    }

    /// A connection for calls not tied to a key.
    fn any(&self) -> Stub {
        self.kv.clone()
    }

    /// Maps a failed call's status to an [`Error`].
    fn error(&self, status: tonic::Status) -> Error {
        map_status(&self.addr, self.timeout, status)
    }

    /// Round trip without touching storage.
    pub async fn ping(&self) -> Result<()> {
        self.any()
            .ping(proto::PingRequest {})
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// Writes `key = value`; false when the precondition did not hold.
    pub async fn set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        opts: SetOptions,
    ) -> Result<bool> {
        let key = key.into();
        let condition = match opts.condition {
            Condition::Always => proto::Condition::Always,
            Condition::IfAbsent => proto::Condition::IfAbsent,
            Condition::IfPresent => proto::Condition::IfPresent,
        };
        let request = proto::SetRequest {
            value: value.into(),
            ttl_ms: opts.ttl_ms,
            condition: condition.into(),
            acks: acks(opts.acks.unwrap_or(self.acks)).into(),
            key: key.clone(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.set(q).await })
            .await?;
        Ok(reply.written)
    }

    /// The value of `key`, `None` if absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        let key = key.into();
        let request = proto::GetRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.get(q).await })
            .await?;
        Ok(reply.value)
    }

    /// Deletes `keys`; how many existed.
    pub async fn del(&self, keys: Vec<Bytes>) -> Result<u64> {
        let first = keys.first().cloned().unwrap_or_default();
        let request = proto::DelRequest {
            keys,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&first, request, |mut c, q| async move { c.del(q).await })
            .await?;
        Ok(reply.deleted)
    }

    /// Makes `key` expire in `ttl_ms` (0 deletes it); whether it existed.
    pub async fn expire(&self, key: impl Into<Bytes>, ttl_ms: u64) -> Result<bool> {
        let key = key.into();
        let request = proto::ExpireRequest {
            key: key.clone(),
            ttl_ms,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.expire(q).await })
            .await?;
        Ok(reply.existed)
    }

    /// The time to live of `key`.
    pub async fn ttl(&self, key: impl Into<Bytes>) -> Result<KeyTtl> {
        let key = key.into();
        let request = proto::TtlRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.ttl(q).await })
            .await?;
        Ok(match reply.ttl_ms {
            -2 => KeyTtl::Missing,
            -1 => KeyTtl::Persistent,
            ms => {
                KeyTtl::Ms(u64::try_from(ms).map_err(|_| {
                    Error::Internal(format!("server sent an invalid TTL of {ms} ms"))
                })?)
            }
        })
    }

    /// How many of `keys` exist.
    pub async fn exists(&self, keys: Vec<Bytes>) -> Result<u64> {
        let first = keys.first().cloned().unwrap_or_default();
        let request = proto::ExistsRequest {
            keys,
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(&first, request, |mut c, q| async move { c.exists(q).await })
            .await?;
        Ok(reply.count)
    }

    /// The figures of the node this client talks to (its first seed), in
    /// sections, as `caskade-cli info` prints them.
    pub async fn info(&self) -> Result<proto::InfoResponse> {
        let reply = self
            .any()
            .info(proto::InfoRequest {})
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }

    /// The partition map.
    pub async fn metadata(&self) -> Result<proto::MetadataResponse> {
        let reply = self
            .any()
            .metadata(proto::MetadataRequest {})
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner())
    }
}

/// A lazy connection to `addr`, over TLS with `tls`, presenting
/// `credentials` on every request.
fn connect(
    addr: &str,
    connect_timeout: Duration,
    timeout: Duration,
    tls: Option<&ClientTlsConfig>,
    credentials: &Credentials,
) -> Result<Stub> {
    let endpoint = crate::tls::endpoint(addr, tls)
        .map_err(|e| Error::InvalidInput(format!("invalid server address '{addr}': {e}")))?
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false);
    // Plaintext connections check that the server does not speak TLS
    // (src/client/sniff.rs), for a clear error.
    let channel = match tls {
        Some(_) => endpoint.connect_lazy(),
        None => endpoint.connect_with_connector_lazy(sniff::Connector::new(true)),
    };
    Ok(KvClient::with_interceptor(channel, credentials.clone())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The wire form of [`Acks`].
fn acks(a: Acks) -> proto::Acks {
    match a {
        Acks::Leader => proto::Acks::Leader,
        Acks::All => proto::Acks::All,
    }
}

/// The wire form of [`Consistency`].
fn consistency(c: Consistency) -> proto::Consistency {
    match c {
        Consistency::Leader => proto::Consistency::Leader,
        Consistency::Any => proto::Consistency::Any,
    }
}
