//! The gRPC server: accepts connections on a bound listener, serves the
//! `Kv` service, and shuts down gracefully when a future completes
//! (mini-redis style: the caller owns the listener and the signal).
//!
//! Lifecycle and invariants:
//! - at most `server.max_connections` connections are open; the accept loop
//!   waits for a slot before accepting, so further clients queue in the
//!   kernel's backlog instead of costing memory here;
//! - every accepted socket has `TCP_NODELAY` (a request/response protocol
//!   must not wait on Nagle);
//! - when `shutdown` completes: the listener is closed at once (new clients
//!   get `connection refused`), open connections receive an HTTP/2 GOAWAY,
//!   in-flight requests run to completion for up to
//!   `server.shutdown_timeout_ms`, then every engine is flushed (fsync)
//!   before [`run`] returns. A request that was acknowledged is durable
//!   once `run` returns, whatever the fsync policy;
//! - with `tls.cert` set both listeners speak TLS only (a plaintext client
//!   fails its handshake); the replication listener requires every caller
//!   to present a certificate signed by `tls.ca` (see [`crate::tls`]).

mod admin;
pub mod cluster;
pub mod metrics;
pub mod prometheus;
mod service;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

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
            .add_service(ReplicationService::server(manager, gate))
            .serve_with_incoming_shutdown(nodelay_incoming(listener), async move {
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
    let service = KvService::new(
        node.clone(),
        opts.max_in_flight,
        config.default_acks,
        config.default_consistency,
        metrics,
    );
    let kv = KvServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let fired = Notify::new();
    let signal = async {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        fired.notify_one();
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.client_listener())
            .map_err(|e| Error::InvalidInput(format!("client listener TLS: {e}")))?;
    }
    let serve = builder
        .timeout(Duration::from_millis(opts.request_timeout_ms))
        .max_concurrent_streams(opts.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(crate::auth::grpc::Guarded::new(
            kv,
            crate::auth::Authenticator::new(&config.auth),
        ))
        .serve_with_incoming_shutdown(incoming(listener, opts.max_connections), signal);
    let grace = Duration::from_millis(opts.shutdown_timeout_ms);
    tokio::select! {
        result = serve => result.map_err(|e| Error::Internal(format!("server failed: {e}")))?,
        _ = async { fired.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(
                "in-flight requests did not finish within {} ms; closing their connections",
                grace.as_millis()
            );
        }
    }
    node.flush().await?;
    tracing::info!("storage flushed; shutdown complete");
    Ok(())
}

/// The node-to-node listener's accepted connections, with `TCP_NODELAY`
/// set. tonic's own `tcp_nodelay` only applies to listeners it binds: without
/// this, Nagle held small fetch answers back until the follower's delayed
/// ACK (40 ms), which was the p999 of every `acks: all` write.
fn nodelay_incoming(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = io::Result<TcpStream>> {
    futures_util::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(stream) = &conn
                && let Err(e) = stream.set_nodelay(true)
            {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
            conn
        },
    )
}

/// The stream of accepted connections, each holding a connection slot.
/// Dropping it (tonic does on shutdown) closes the listener.
fn incoming(
    listener: TcpListener,
    max_connections: usize,
) -> impl futures_util::Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return None; // never closed; keeps the types honest
        };
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    tracing::debug!(%peer, "connection accepted");
                    let conn = Conn {
                        stream,
                        _slot: slot,
                    };
                    return Some((Ok(conn), (listener, slots)));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// An accepted TCP connection and its connection slot, released on drop.
struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Held for the connection's lifetime.
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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

    use super::*;

    #[tokio::test]
    async fn node_to_node_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(nodelay_incoming(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
