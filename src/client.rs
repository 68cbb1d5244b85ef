//! The Rust client of the `caskade.v1.Kv` API, used by the CLI, the load
//! generator and the tests.
//!
//! - Connections are lazy: creating a [`Client`] never fails because the
//!   server is down; each call connects if needed, and a server that comes
//!   back is reached again without building a new client.
//! - Every failure is an [`Error`]: statuses from a caskade server are
//!   rebuilt from their `caskade-reason` (src/error.rs); a failure to connect
//!   becomes [`Error::Unreachable`] with the address and the cause; a
//!   client-side deadline becomes [`Error::Timeout`].
//! - Routing hook: every keyed call goes through `Client::route`. Today it
//!   returns the one connection; the cluster client will fetch `Metadata`,
//!   route by [`crate::cluster::partition_for`] and refresh on `NOT_LEADER`
//!   there, without changing the call sites.

use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::node::{Acks, Consistency};
use crate::proto;
use crate::proto::kv_client::KvClient;
use crate::storage::Condition;

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

/// A connection to a caskade server (standalone) or cluster (later).
#[derive(Clone)]
pub struct Client {
    /// The address connected to.
    addr: String,
    /// The gRPC stub; cloning it shares the HTTP/2 connection.
    kv: KvClient<Channel>,
    /// Per-request deadline, for error messages.
    timeout: Duration,
    /// Default write acknowledgement.
    acks: Acks,
    /// Default read consistency.
    consistency: Consistency,
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
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::InvalidInput(format!("invalid server address '{addr}': {e}")))?
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms.max(1)))
            .timeout(timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        let kv = KvClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok(Client {
            addr,
            kv,
            timeout,
            acks: config.acks,
            consistency: config.consistency,
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

    /// The connection serving `key`: the routing hook (see the module doc).
    fn route(&self, _key: &[u8]) -> KvClient<Channel> {
        self.kv.clone()
    }

    /// A connection for calls not tied to a key.
    fn any(&self) -> KvClient<Channel> {
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
            .route(&key)
            .set(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().written)
    }

    /// The value of `key`, `None` if absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        let key = key.into();
        let request = proto::GetRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .route(&key)
            .get(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().value)
    }

    /// Deletes `keys`; how many existed.
    pub async fn del(&self, keys: Vec<Bytes>) -> Result<u64> {
        let first = keys.first().cloned().unwrap_or_default();
        let request = proto::DelRequest {
            keys,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .route(&first)
            .del(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().deleted)
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
            .route(&key)
            .expire(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().existed)
    }

    /// The time to live of `key`.
    pub async fn ttl(&self, key: impl Into<Bytes>) -> Result<KeyTtl> {
        let key = key.into();
        let request = proto::TtlRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .route(&key)
            .ttl(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(match reply.into_inner().ttl_ms {
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
            .route(&first)
            .exists(request)
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().count)
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

/// Maps the status of a failed call to `addr` to an [`Error`]: caskade's
/// own statuses by their reason, a connection failure to
/// [`Error::Unreachable`], the client's deadline to [`Error::Timeout`].
pub fn map_status(addr: &str, timeout: Duration, status: tonic::Status) -> Error {
    if status.metadata().get("caskade-reason").is_none() {
        if let Some(reason) = connect_failure(&status) {
            return Error::Unreachable {
                addr: addr.to_string(),
                reason,
            };
        }
        if status.code() == tonic::Code::Cancelled && status.message().contains("Timeout expired") {
            return Error::Timeout(format!(
                "no reply from {addr} within {} ms",
                timeout.as_millis()
            ));
        }
    }
    Error::from(status)
}

/// If `status` says the connection could not be made, why (lower-case, as
/// `connection refused`).
fn connect_failure(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let mut connect = false;
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            connect = true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::Other => io.to_string(),
                kind => kind.to_string(),
            });
        }
        if connect && err.to_string().contains("timed out") {
            return Some("connection timed out".into());
        }
        source = err.source();
    }
    // tonic reports "tcp connect error" without a typed source in some paths.
    let msg = status.message();
    if connect || msg.contains("tcp connect error") || msg.contains("error trying to connect") {
        return Some(msg.to_string());
    }
    None
}
