//! The RESP listener: caskade spoken in the Redis protocol (RESP2, and
//! RESP3 after `HELLO 3`), so redis-cli, redis-benchmark and any Redis
//! client library can use a node. docs/API.md ("RESP") lists the commands
//! and every difference from Redis.
//!
//! Layout: [`parse`] cuts requests out of the byte stream, [`reply`]
//! encodes answers, [`table`] is the command table (arity, `COMMAND`
//! output; its rows in `rows`), `connection` runs one client (pipelining,
//! limits), `commands` the key commands (`options` those with options:
//! SET, GETEX, the EXPIRE family), `admin` the server and connection
//! commands.
//!
//! Every key command goes through the same [`KvService`] as the gRPC API
//! (its own instance on the same [`Node`] and [`Metrics`]): the same
//! defaults for `acks` and `consistency` (`default_acks`,
//! `default_consistency`), the same `max_in_flight` slots, the same
//! request figures, and the same forwarding of a request for a partition
//! led elsewhere to its leader.
//!
//! Invariants:
//! - at most `resp.maxclients` connections are served at once; one more is
//!   answered `-ERR max number of clients reached` and closed, as Redis;
//! - at most `limits.max_connections_per_ip` connections per peer address
//!   (0 = no cap); one more is answered
//!   `-ERR max number of clients per address reached` and closed;
//! - a connection idle for `resp.timeout` seconds (0 = never) is closed;
//! - a protocol error is answered in Redis' words after the answers of the
//!   commands that preceded it, then the connection is closed; nothing a
//!   client sends can panic the server or stall another connection;
//! - with `tls.cert` set the listener speaks TLS only (a client
//!   certificate is required with `tls.require_client_cert`); a client
//!   that has not finished its handshake within
//!   [`crate::tls::HANDSHAKE_TIMEOUT`] is disconnected; the two refusals
//!   above are sent inside TLS, after the handshake (bounded by the same
//!   timeout) and before a `close_notify`, never as plaintext on a TLS
//!   port (a TLS client reads Redis' error, as from a TLS redis-server);
//! - when `shutdown` completes the listener closes at once; each
//!   connection finishes the commands it has read, writes their answers
//!   and closes; [`serve`] returns when every connection is closed or
//!   after `server.shutdown_timeout_ms`. The caller flushes storage after
//!   (the gRPC server's shutdown does).

mod admin;
mod auth;
mod commands;
mod connection;
mod options;
pub mod parse;
pub mod reply;
mod rows;
pub mod split;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, EngineKind, RespOptions};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::server::KvService;
use crate::server::metrics::Metrics;
use crate::storage::Durability;

/// A RESP connection's place, counted in `maxclients` and (`_slot`) in the
/// per-address cap; given back on drop.
struct Seat {
    /// Holds the count of open connections.
    shared: Arc<Shared>,
    /// The place under the per-address cap (a refused one holds none).
    _slot: std::result::Result<crate::server::limits::Slot, crate::server::limits::Refused>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every connection of one listener shares.
pub struct Shared {
    /// The same service the gRPC API runs (defaults, slots, forwarding).
    svc: KvService,
    /// The node, for metadata (`INFO`, `WAIT`, `DBSIZE`).
    node: Arc<Node>,
    /// The node's figures (`INFO`).
    metrics: Arc<Metrics>,
    /// The listener's settings and limits.
    opts: RespOptions,
    /// The engines' fsync policy (`CONFIG GET appendfsync`, `INFO`).
    fsync: Durability,
    /// The storage engine (`INFO persistence`).
    engine: EngineKind,
    /// The longest value a write may carry (`storage.limits`).
    max_value: usize,
    /// The address bound.
    addr: SocketAddr,
    /// When the listener started (`INFO server`).
    started: Instant,
    /// Connections open now.
    clients: AtomicUsize,
    /// The next connection id (`CLIENT ID`), from 1.
    next_id: AtomicU64,
    /// Commands processed since start (`INFO stats`).
    commands: AtomicU64,
    /// Error replies sent since start, refusals before a command ran
    /// (arity, unknown command, `NOAUTH`, `NOPERM`, protocol errors) and
    /// failures of commands that ran alike (`INFO stats`
    /// `total_error_replies`, as Redis counts it).
    error_replies: AtomicU64,
    /// Connections accepted since start (`INFO stats`).
    accepted: AtomicU64,
    /// Users and permissions (src/resp/auth.rs); `None` = authentication off.
    auth: Option<Arc<crate::auth::Authenticator>>,
}

/// Binds the RESP listener of `config` (`None` when `resp.listen` is
/// empty). Bind before opening the node, so a bad address fails the start.
pub async fn bind(config: &Config) -> Result<Option<TcpListener>> {
    if config.resp.listen.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(&config.resp.listen)
        .await
        .map(Some)
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot listen for RESP on {}: {e}",
                config.resp.listen
            ))
        })
}

/// Serves RESP clients on `listener` until `shutdown` completes, then lets
/// each connection finish what it has read (see the module invariants).
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the RESP address: {e}")))?;
    let svc = KvService::new(
        node.clone(),
        config.server.max_in_flight,
        config.default_acks,
        config.default_consistency,
        metrics.clone(),
    )
    .with_max_keys(config.limits.max_keys_per_request);
    let shared = Arc::new(Shared {
        svc,
        node,
        metrics,
        opts: config.resp.clone(),
        fsync: config.storage.fsync,
        engine: config.engine,
        max_value: config.storage.limits.max_value_bytes,
        addr,
        started: Instant::now(),
        clients: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        commands: AtomicU64::new(0),
        error_replies: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        auth: crate::auth::Authenticator::new(&config.auth),
    });
    let tls = crate::tls::NodeTls::load(&config.tls, &config.node_id)
        .and_then(|t| t.map(|t| t.resp_acceptor()).transpose())
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    // The per-address cap (`limits.max_connections_per_ip`); the total is
    // `maxclients`, counted below as Redis does.
    let per_ip = crate::server::limits::Tracker::new(
        "resp",
        crate::server::limits::ConnLimits {
            max: usize::MAX,
            per_ip: config.limits.max_connections_per_ip,
            handshake: None,
            handshake_bytes: 0,
            idle: None,
        },
    );
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let slot = per_ip.admit(peer);
                    let open = shared.clients.fetch_add(1, Ordering::AcqRel);
                    let shared = shared.clone();
                    let stopped = stopped.clone();
                    let tls = tls.clone();
                    tasks.spawn(async move {
                        let refusal: Option<&[u8]> = if open >= shared.opts.maxclients {
                            Some(b"-ERR max number of clients reached\r\n")
                        } else if slot.is_err() {
                            Some(b"-ERR max number of clients per address reached\r\n")
                        } else {
                            None
                        };
                        // Dropped before the stream wherever the client can
                        // see the close (see `connection::run`).
                        let seat = Seat {
                            shared: shared.clone(),
                            _slot: slot,
                        };
                        if let Some(tls) = tls {
                            let handshake = tokio::time::timeout(
                                crate::tls::HANDSHAKE_TIMEOUT,
                                tls.accept(stream),
                            );
                            match (handshake.await, refusal) {
                                // The refusal inside TLS, then close_notify.
                                (Ok(Ok(mut stream)), Some(refusal)) => {
                                    let _ = stream.write_all(refusal).await;
                                    drop(seat);
                                    let _ = stream.shutdown().await;
                                }
                                (Ok(Ok(mut stream)), None) => {
                                    let close =
                                        connection::run(&mut stream, peer, &shared, stopped).await;
                                    drop(seat);
                                    if close {
                                        let _ = stream.shutdown().await;
                                    }
                                }
                                (Ok(Err(e)), _) => tracing::debug!(%peer, "RESP TLS handshake failed: {e}"),
                                (Err(_), _) => tracing::debug!(%peer, "RESP TLS handshake timed out"),
                            }
                        } else if let Some(refusal) = refusal {
                            let mut stream = stream;
                            let _ = stream.write_all(refusal).await;
                            drop(seat);
                        } else {
                            let mut stream = stream;
                            let close = connection::run(&mut stream, peer, &shared, stopped).await;
                            drop(seat);
                            if close {
                                let _ = stream.shutdown().await;
                            }
                        }
                    });
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!("RESP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    stop.send_replace(true);
    let grace = Duration::from_millis(config.server.shutdown_timeout_ms);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("RESP connections did not finish within {grace:?}; closing them");
        tasks.shutdown().await;
    }
    Ok(())
}
