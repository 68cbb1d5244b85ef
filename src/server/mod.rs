//! The gRPC server: accepts connections on a bound listener, serves the
//! `Kv` service, and shuts down gracefully when a future completes
//! (mini-redis style: the caller owns the listener and the signal).
//!
//! Lifecycle and invariants:
//! - at most `server.max_connections` connections are open, taken after
//!   `accept`, with the handshake and idle timeouts and the per-address cap
//!   of `limits:` ([`limits`]: a full listener evicts a half-open or idle
//!   connection for a newcomer); the replication listener likewise with
//!   `limits.replication_max_connections`;
//! - on both gRPC listeners, an in-flight slot is taken before a request
//!   body is decoded, and the HTTP/2 local-error and pending-accept reset
//!   stream limits are on (tonic turns the first off by default);
//! - every accepted socket has `TCP_NODELAY` (a request/response protocol
//!   must not wait on Nagle);
//! - when `shutdown` completes: the listener is closed at once (new clients
//!   get `connection refused`), open connections receive an HTTP/2 GOAWAY,
//!   in-flight requests run to completion for up to
//!   `server.shutdown_timeout_ms`, then every engine is flushed (fsync)
//!   before [`run`] returns. A request that was acknowledged is durable
//!   once `run` returns, whatever the fsync policy;
//! - without TLS the client listener also serves the forward wire of
//!   other nodes (src/server/service/wire.rs), told apart by its first
//!   bytes; its connections count against the same caps, and the drain
//!   waits for them as for gRPC requests;
//! - with `tls.cert` set both listeners speak TLS only (a plaintext client
//!   fails its handshake); the replication listener requires every caller
//!   to present a certificate signed by `tls.ca` (see [`crate::tls`]).

mod admin;
pub mod cluster;
pub mod limits;
pub mod metrics;
pub mod prometheus;
mod service;
pub mod sniff;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

pub use service::KvService;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::proto::kv_server::KvServer;
use crate::replication::ReplicaManager;
use crate::replication::service::ReplicationService;
use crate::server::metrics::Metrics;
use crate::tls::NodeTls;
use crate::tls::gate::Gate;

/// Serves `node` on `listener` until `shutdown` completes, then drains and
/// flushes. Returns once every engine is flushed. In cluster mode,
/// `replication` is the node-to-node listener and the replicas it serves;
/// it keeps serving while client requests drain. Requests are recorded
/// into `metrics` (see [`metrics`]; the Prometheus endpoint, when on, is
/// started by the caller with [`prometheus::serve`]).
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    config: &Config,
    replication: Option<(TcpListener, Arc<ReplicaManager>, Arc<Gate>)>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let tls = NodeTls::load(&config.tls, &config.node_id)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let stop_replication = tokio::sync::watch::Sender::new(false);
    if let Some((listener, manager, gate)) = replication {
        let mut stopped = stop_replication.subscribe();
        let l = &config.limits;
        let tracker = limits::Tracker::new(
            "replication",
            conn_limits(config, l.replication_max_connections),
        );
        let in_flight = Arc::new(Semaphore::new(l.replication_max_in_flight));
        let incoming = replication_incoming(
            listener,
            tracker,
            tls.is_none()
                .then(|| (manager.clone(), l.fetch_max_partitions)),
            stop_replication.subscribe(),
        );
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.replication_listener())
                .map_err(|e| Error::InvalidInput(format!("replication listener TLS: {e}")))?;
        }
        let server = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(2)))
            .timeout(Duration::from_millis(l.replication_request_timeout_ms))
            .max_concurrent_streams(l.replication_max_streams_per_connection)
            .http2_max_local_error_reset_streams(Some(l.http2_max_local_error_reset_streams))
            .http2_max_pending_accept_reset_streams(Some(l.http2_max_pending_accept_reset_streams))
            .layer(limits::RequestLayer::new(Some(in_flight)))
            .add_service(ReplicationService::server_limited(
                manager,
                gate,
                l.fetch_max_partitions,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("replication server failed: {e}");
            }
        });
    }
    let result = serve_clients(listener, node, config, tls, metrics, shutdown).await;
    stop_replication.send_replace(true);
    result
}

/// The replication listener's connections for tonic. With `fetch_wire`
/// (plaintext only: the replicas and `limits.fetch_max_partitions`), fetch
/// wire connections (src/replication/fetch_wire.rs) are told apart and
/// served beside tonic until `stop` turns true.
pub fn replication_incoming(
    listener: TcpListener,
    tracker: Arc<limits::Tracker>,
    fetch_wire: Option<(Arc<ReplicaManager>, usize)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> futures_util::stream::BoxStream<'static, std::io::Result<limits::Conn>> {
    let incoming = limits::incoming(listener, tracker);
    let Some((manager, max)) = fetch_wire else {
        return Box::pin(incoming);
    };
    Box::pin(sniff::sniffed(incoming, stop.clone(), None, move |conn| {
        serve_fetch_wire(manager.clone(), conn, max, stop.clone())
    }))
}

/// Serves one fetch wire connection of the replication listener, its
/// first byte peeked, until `stop` turns true.
async fn serve_fetch_wire(
    manager: Arc<ReplicaManager>,
    conn: limits::Conn,
    max_partitions: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::replication::fetch_wire;
    let greeted = tokio::select! {
        g = sniff::greeted(conn, fetch_wire::PREFACE) => g,
        () = sniff::stopping(stop.clone()) => None,
    };
    // Busy until it ends, as an HTTP/2 connection with a `Fetch` stream.
    let Some(sniff::Greeted { frames, busy, .. }) = greeted else {
        return;
    };
    fetch_wire::serve(manager, frames, max_partitions, sniff::stopping(stop)).await;
    drop(busy);
}

/// The client-facing half of [`run`].
async fn serve_clients(
    listener: TcpListener,
    node: Arc<Node>,
    config: &Config,
    tls: Option<Arc<NodeTls>>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let opts = &config.server;
    let max_message = config.max_message_bytes();
    // Requests the listener refuses (credentials, permissions) count in
    // their method's figures, as `unauthenticated` / `permission_denied`.
    let counted = metrics.clone();
    let refusals: crate::auth::grpc::OnRefusal = Arc::new(move |method, e, took| {
        counted
            .requests
            .refused(method, &crate::Error::from(e), took);
    });
    let service = KvService::new(
        node.clone(),
        opts.max_in_flight,
        config.default_acks,
        config.default_consistency,
        metrics,
    )
    .with_max_keys(config.limits.max_keys_per_request);
    // One authenticator (cache, failed logins) for the listener's check
    // and the per-message check of `Forward` streams.
    let auth = crate::auth::Authenticator::new(&config.auth);
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stopped_wires = stopped.clone();
    let service = service.with_auth(auth.clone()).with_shutdown(stopped);
    let wire_service = service.clone();
    let kv = KvServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let fired = Notify::new();
    let signal = async {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        stopping.send_replace(true);
        fired.notify_one();
    };
    let l = &config.limits;
    let tracker = limits::Tracker::new("client", conn_limits(config, opts.max_connections));
    // Slots taken before a request body is decoded; the service takes its
    // own `max_in_flight` slots again around the work (RESP shares those).
    let decoding = Arc::new(Semaphore::new(opts.max_in_flight));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.client_listener())
            .map_err(|e| Error::InvalidInput(format!("client listener TLS: {e}")))?;
    }
    let incoming = limits::incoming(listener, tracker);
    // Plaintext: forward wire connections (src/server/service/wire.rs) are
    // told apart and served beside tonic, tracked for the drain.
    let drain = sniff::Drain::default();
    let incoming: futures_util::stream::BoxStream<'static, std::io::Result<limits::Conn>> =
        if tls.is_none() {
            Box::pin(sniff::sniffed(
                incoming,
                stopped_wires,
                Some(drain.clone()),
                move |conn| wire_service.clone().serve_wire(conn, max_message),
            ))
        } else {
            Box::pin(incoming)
        };
    let serve = builder
        .timeout(Duration::from_millis(opts.request_timeout_ms))
        .max_concurrent_streams(opts.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .http2_max_local_error_reset_streams(Some(l.http2_max_local_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(l.http2_max_pending_accept_reset_streams))
        .layer(limits::RequestLayer::new(Some(decoding)))
        .add_service(crate::auth::grpc::Guarded::new(kv, auth).on_refusal(refusals))
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = Duration::from_millis(opts.shutdown_timeout_ms);
    let drained = async {
        let served = serve.await;
        // Wire connections end on the same signal, after their message.
        drain.wait().await;
        served
    };
    tokio::select! {
        result = drained => result.map_err(|e| Error::Internal(format!("server failed: {e}")))?,
        _ = async { fired.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(
                "in-flight requests did not finish within {} ms; closing their connections",
                grace.as_millis()
            );
            // Forward wire connections end here, before the flush: nothing
            // they serve afterwards can be acknowledged unflushed.
            drain.abort.cancel();
            drain.wait().await;
        }
    }
    node.flush().await?;
    tracing::info!("storage flushed; shutdown complete");
    Ok(())
}

/// The connection limits of a gRPC listener of `config` serving at most
/// `max` connections.
fn conn_limits(config: &Config, max: usize) -> limits::ConnLimits {
    let l = &config.limits;
    limits::ConnLimits {
        max,
        per_ip: l.max_connections_per_ip,
        handshake: Some(Duration::from_millis(l.handshake_timeout_ms)),
        handshake_bytes: limits::HTTP2_HANDSHAKE_BYTES,
        idle: (l.idle_timeout_ms > 0).then(|| Duration::from_millis(l.idle_timeout_ms)),
    }
}

/// Raises this process's soft limit of open files to its hard limit, and
/// warns when that is still below what `partitions` hosted here may need:
/// a node keeps 2-3 files open per hosted partition (its lock, active
/// segment and commit point; sealed segments are mapped, not open), plus
/// one per connection.
pub fn raise_open_files_limit(partitions: u32) {
    let want = u64::from(partitions) * 3 + 1024;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < want => tracing::warn!(
            "the open files limit is {limit}, below the ~{want} that {partitions} partitions may \
             need (3 each, plus connections): raise it (`ulimit -n`, systemd's LimitNOFILE)"
        ),
        Ok(limit) => tracing::debug!("open files limit {limit}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::net::TcpStream;

    use super::*;

    #[tokio::test]
    async fn node_to_node_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config::default();
        let tracker = limits::Tracker::new("replication", conn_limits(&config, 8));
        let mut incoming = std::pin::pin!(limits::incoming(listener, tracker));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.stream().nodelay().unwrap());
    }
}
