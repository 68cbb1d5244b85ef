//! Connection limits of a listener, taken after `accept` (docs/SECURITY.md,
//! "Listener limits"; settings in [`crate::config::limits`]).
//!
//! A [`Tracker`] books every open connection of one listener: its peer
//! address, whether it finished its handshake, how many requests it has in
//! progress and since when it has had none. [`incoming`] accepts every
//! connection first and only then decides, so connections that hold a slot
//! without using it cannot keep a client out, as they did when the slot was
//! taken before `accept` (1,024 idle TCP connections locked every client
//! out).
//!
//! Invariants:
//! - at most `max` connections are open per listener, and at most
//!   `per_ip` per peer IP address (0 = no cap);
//! - a connection from an address already at `per_ip` is closed at once;
//!   the ones that address holds stay;
//! - a connection arriving when the listener is at `max` evicts the oldest
//!   connection that has not finished its handshake, else the oldest with
//!   no request in progress; if every connection has a request in
//!   progress, the new one is closed at once. So a client that completes
//!   its handshake always gets in while the listener is full of idle or
//!   half-open connections;
//! - a connection that has not sent `handshake_bytes` bytes (the 24-byte
//!   HTTP/2 preface and the 9-byte header of its first frame) within
//!   `handshake` is closed;
//! - a connection with no request in progress for `idle` is closed (HTTP/2
//!   pings are no requests); a request is in progress from the moment its
//!   headers are handed to the service until its response body ends;
//! - a closed or evicted connection's slot is released exactly once.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a gRPC client sends before its handshake counts as done: the
/// HTTP/2 preface (24) and the header of its first frame, SETTINGS (9).
pub const HTTP2_HANDSHAKE_BYTES: usize = 24 + 9;

/// The connection limits of one listener.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one IP address; 0 = no cap.
    pub per_ip: usize,
    /// Time a connection gets to send `handshake_bytes`; `None` = forever.
    pub handshake: Option<Duration>,
    /// Bytes that complete the handshake (0: done when accepted).
    pub handshake_bytes: usize,
    /// Time a connection may go without a request in progress; `None` =
    /// forever.
    pub idle: Option<Duration>,
}

/// Why a connection was closed at `accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds `per_ip` connections already.
    PerIp,
    /// The listener is full of connections with requests in progress.
    Full,
}

/// The open connections of one listener.
pub struct Tracker {
    /// The listener's name, for logs (`client`, `replication`, ...).
    name: &'static str,
    /// The limits.
    limits: ConnLimits,
    /// The book, under a lock held for a few map operations.
    book: Mutex<Book>,
    /// Connections closed at `accept` or evicted since start.
    refused: AtomicU64,
}

/// What a [`Tracker`] knows, under its lock.
#[derive(Default)]
struct Book {
    /// The next connection id (ids grow: the smallest is the oldest).
    next: u64,
    /// Open connections by id.
    open: BTreeMap<u64, Arc<ConnState>>,
    /// Open connections per peer address.
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection, as its tracker, its socket and its requests see it.
#[derive(Debug)]
pub struct ConnState {
    /// Its id in the tracker.
    id: u64,
    /// The peer's address.
    ip: IpAddr,
    /// When it was accepted.
    opened: Instant,
    /// Whether it sent its handshake bytes.
    handshaken: AtomicBool,
    /// Requests in progress.
    active: AtomicUsize,
    /// Ms after `opened` when its last request ended (0 before any).
    idle_since_ms: AtomicU64,
    /// Set when it is evicted: its socket fails its next read or write.
    killed: AtomicBool,
    /// The task reading its socket, woken by an eviction or the end of its
    /// last request (so the idle timer starts).
    waker: AtomicWaker,
}

impl ConnState {
    /// Marks the handshake done: a protocol whose first bytes are fewer
    /// than the listener's `handshake_bytes` (the forward wire,
    /// src/server/service/wire.rs) says so once its greeting was read.
    pub fn mark_handshaken(&self) {
        self.handshaken.store(true, Ordering::Release);
    }

    /// Marks a request in progress until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }

    /// The time after which this connection is closed, as things stand.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if !self.handshaken.load(Ordering::Acquire) {
            return limits.handshake.map(|d| self.opened + d);
        }
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        limits.idle.map(|d| self.opened + since + d)
    }
}

/// A request in progress on a connection (see [`ConnState::begin`]).
#[derive(Debug)]
pub struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        let c = &self.0;
        if c.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(c.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            c.idle_since_ms.store(ms, Ordering::Release);
            c.waker.wake();
        }
    }
}

/// A connection's place in its tracker, given back on drop.
pub struct Slot {
    /// The tracker.
    tracker: Arc<Tracker>,
    /// The connection.
    state: Arc<ConnState>,
}

impl Slot {
    /// The connection's state.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tracker.book.lock().remove(self.state.id);
    }
}

impl Book {
    /// Removes connection `id` if it is still booked.
    fn remove(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let c = self.open.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
        Some(c)
    }
}

impl Tracker {
    /// A tracker of the listener `name` with `limits`.
    pub fn new(name: &'static str, limits: ConnLimits) -> Arc<Self> {
        Arc::new(Tracker {
            name,
            limits,
            book: Mutex::new(Book::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.book.lock().open.len()
    }

    /// Connections closed at `accept` or evicted since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Books a connection just accepted from `peer`, evicting one if the
    /// listener is full (see the module invariants).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refused> {
        let ip = peer.ip();
        let mut book = self.book.lock();
        let from_ip = book.per_ip.get(&ip).copied().unwrap_or(0);
        if self.limits.per_ip > 0 && from_ip >= self.limits.per_ip {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(listener = self.name, %peer, "connection refused: per-address cap");
            return Err(Refused::PerIp);
        }
        if book.open.len() >= self.limits.max {
            let victim = book
                .open
                .values()
                .find(|c| !c.handshaken.load(Ordering::Acquire))
                .or_else(|| {
                    book.open
                        .values()
                        .find(|c| c.active.load(Ordering::Acquire) == 0)
                })
                .map(|c| c.id);
            let Some(victim) = victim.and_then(|id| book.remove(id)) else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = self.name, %peer, "connection refused: listener full");
                return Err(Refused::Full);
            };
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                listener = self.name,
                evicted = %victim.ip,
                "listener full: oldest idle connection closed"
            );
            victim.killed.store(true, Ordering::Release);
            victim.waker.wake();
        }
        let id = book.next;
        book.next += 1;
        let state = Arc::new(ConnState {
            id,
            ip,
            opened: Instant::now(),
            handshaken: AtomicBool::new(self.limits.handshake_bytes == 0),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        book.open.insert(id, state.clone());
        *book.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            tracker: self.clone(),
            state,
        })
    }
}

/// Accepted connections of `listener` that `tracker` admitted, with
/// `TCP_NODELAY` set (a request/response protocol must not wait on Nagle).
/// The others are closed as soon as they are accepted. Dropping the
/// stream (tonic does on shutdown) closes the listener.
pub fn incoming(
    listener: TcpListener,
    tracker: Arc<Tracker>,
) -> impl futures_util::Stream<Item = io::Result<Conn>> {
    futures_util::stream::unfold((listener, tracker), |(listener, tracker)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
                    }
                    let Ok(slot) = tracker.admit(peer) else {
                        continue; // dropped: closed
                    };
                    let conn = Conn::new(stream, slot, tracker.limits.clone());
                    return Some((Ok(conn), (listener, tracker)));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(listener = tracker.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// An admitted TCP connection: fails its reads and writes once it is
/// evicted or its handshake or idle time is up, which ends it.
pub struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Its place in the tracker, held for its lifetime.
    slot: Slot,
    /// The listener's limits.
    limits: ConnLimits,
    /// Bytes read until the handshake is done.
    read: usize,
    /// The timer of the current deadline.
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// What a request learns of its connection (tonic's `ConnectInfo`).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The addresses (also inserted on its own, for `Request::remote_addr`).
    pub tcp: TcpConnectInfo,
    /// The connection's state, to mark requests in progress.
    pub state: Arc<ConnState>,
}

impl Conn {
    /// Wraps `stream`, admitted with `slot`.
    fn new(stream: TcpStream, slot: Slot, limits: ConnLimits) -> Self {
        Conn {
            stream,
            slot,
            limits,
            read: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The first byte the peer sent, left unread (`None`: it closed
    /// first), waited for as a read is: the handshake deadline and an
    /// eviction end the wait with an error.
    pub async fn peek_first(&mut self) -> io::Result<Option<u8>> {
        std::future::poll_fn(|cx| {
            if let Some(e) = self.check(cx) {
                return Poll::Ready(Err(e));
            }
            let mut first = [0u8; 1];
            let mut buf = ReadBuf::new(&mut first);
            match self.stream.poll_peek(cx, &mut buf) {
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(Some(first[0]))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// The connection's state (requests in progress, handshake).
    pub fn state(&self) -> &Arc<ConnState> {
        &self.slot.state
    }

    /// An error if this connection must end now; otherwise arms the timer
    /// of its next deadline (and registers the task for an eviction).
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let state = self.slot.state.clone();
        state.waker.register(cx.waker());
        if state.killed.load(Ordering::Acquire) {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: the listener is at its connection cap",
            ));
        }
        let deadline = state.deadline(&self.limits)?;
        if Instant::now() >= deadline {
            let what = if state.handshaken.load(Ordering::Acquire) {
                "idle timeout"
            } else {
                "handshake timeout"
            };
            return Some(io::Error::new(io::ErrorKind::TimedOut, what));
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        // Pending: registers the task to be woken at the deadline.
        let _ = self.timer.as_mut().poll(cx);
        None
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            state: self.slot.state.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let state = &this.slot.state;
        if !state.handshaken.load(Ordering::Relaxed) {
            this.read += buf.filled().len() - before;
            if this.read >= this.limits.handshake_bytes {
                state.handshaken.store(true, Ordering::Release);
            }
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.state.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.state.killed.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
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

/// A tower layer for a gRPC server fed by [`incoming`]: marks each request
/// in progress on its connection (until its response body ends) and, with
/// a semaphore, takes an in-flight slot before the request body is
/// decoded (the slot is held until the response headers are ready).
#[derive(Clone, Default)]
pub struct RequestLayer {
    /// In-flight slots shared by every connection of the listener.
    in_flight: Option<Arc<Semaphore>>,
}

impl RequestLayer {
    /// A layer taking a slot of `in_flight` (if any) before decoding.
    pub fn new(in_flight: Option<Arc<Semaphore>>) -> Self {
        RequestLayer { in_flight }
    }
}

impl<S> tower_layer::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> RequestService<S> {
        RequestService {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

/// The service of [`RequestLayer`].
#[derive(Clone)]
pub struct RequestService<S> {
    /// The service decoding and answering requests.
    inner: S,
    /// In-flight slots.
    in_flight: Option<Arc<Semaphore>>,
}

impl<S> tonic::codegen::Service<http::Request<tonic::body::Body>> for RequestService<S>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // Over TLS tonic wraps the connection's info in `TlsConnectInfo`.
        let info = req.extensions().get::<ConnInfo>().cloned().or_else(|| {
            req.extensions()
                .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(|t| t.get_ref().clone())
        });
        let active = info.as_ref().map(|i| i.state.begin());
        if let Some(info) = info {
            req.extensions_mut().insert(info.tcp);
        }
        // The clone is not ready: keep the one that is (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            let _slot = match in_flight {
                Some(s) => s.acquire_owned().await.ok(),
                None => None,
            };
            let response = inner.call(req).await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Tracked {
                    inner: body,
                    _active: active,
                })
            }))
        })
    }
}

/// A response body that keeps its request in progress until it ends.
struct Tracked {
    /// The body.
    inner: tonic::body::Body,
    /// Dropped with the body.
    _active: Option<Active>,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> ConnLimits {
        ConnLimits {
            max,
            per_ip,
            handshake: None,
            handshake_bytes: HTTP2_HANDSHAKE_BYTES,
            idle: None,
        }
    }

    fn peer(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn full_listener_evicts_the_oldest_half_open_then_idle_connection() {
        let t = Tracker::new("test", limits(2, 0));
        let a = t.admit(peer([10, 0, 0, 1], 1)).unwrap();
        let b = t.admit(peer([10, 0, 0, 1], 2)).unwrap();
        b.state().handshaken.store(true, Ordering::Release);
        a.state().handshaken.store(true, Ordering::Release);
        let _busy_a = a.state().begin();
        // a is busy, b idle: b goes.
        let c = t.admit(peer([10, 0, 0, 2], 1)).unwrap();
        assert!(b.state().killed.load(Ordering::Acquire));
        assert!(!a.state().killed.load(Ordering::Acquire));
        assert_eq!(t.open(), 2);
        // c is half-open: it goes before the busy a.
        let d = t.admit(peer([10, 0, 0, 3], 1)).unwrap();
        assert!(c.state().killed.load(Ordering::Acquire));
        d.state().handshaken.store(true, Ordering::Release);
        let _busy_d = d.state().begin();
        // Everyone busy: the newcomer is refused.
        assert_eq!(t.admit(peer([10, 0, 0, 4], 1)).err(), Some(Refused::Full));
        drop(b);
        drop(c);
        assert_eq!(t.open(), 2, "evicted slots are released once");
        assert_eq!(t.refused(), 3);
    }

    #[test]
    fn per_ip_cap_refuses_the_newcomer_and_frees_on_close() {
        let t = Tracker::new("test", limits(100, 2));
        let a = t.admit(peer([10, 0, 0, 1], 1)).unwrap();
        let _b = t.admit(peer([10, 0, 0, 1], 2)).unwrap();
        assert_eq!(t.admit(peer([10, 0, 0, 1], 3)).err(), Some(Refused::PerIp));
        let _other = t.admit(peer([10, 0, 0, 2], 1)).unwrap();
        assert!(!a.state().killed.load(Ordering::Acquire));
        drop(a);
        let _c = t.admit(peer([10, 0, 0, 1], 4)).unwrap();
        assert_eq!(t.open(), 3);
    }
}
