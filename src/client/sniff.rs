//! Telling a plaintext client that the server it dialed speaks TLS.
//!
//! A plaintext client's connections go through [`Connector`]: hyper's own
//! TCP connector (same name resolution, `TCP_NODELAY`, connect errors) with
//! the first bytes the server sends looked at. A TLS server answers the
//! client's HTTP/2 preface (which it cannot parse) with a TLS alert record
//! (`15 03 03 00 02 ...`); an HTTP/2 server's first bytes are a `SETTINGS`
//! frame header whose first byte is 0 (a frame of 1.3 MB or more, above
//! HTTP/2's initial 16 KiB limit, cannot come first). So a first byte
//! `0x15` (alert) or `0x16` (handshake), followed by `0x03` when that byte
//! came too, proves the server speaks TLS.
//!
//! Until those first bytes are seen, only the 24-byte HTTP/2 preface is
//! written (further writes wait), so a TLS server's reset cannot make a
//! write fail before its alert is read; should a read or write fail first
//! anyway, the bytes already received are looked at (a peek). The cost: a
//! new plaintext connection sends its first request once the server's
//! `SETTINGS` arrived (which an HTTP/2 server sends on accept), not along
//! with the preface.
//!
//! Invariant: the address is then remembered ([`speaks_tls`]) until a later
//! connection to it sees a non-TLS first byte, and the connection fails
//! with [`SPEAKS_TLS`]; `map_status` (src/client/outcome.rs) turns any
//! transport failure of a call to that address into
//! `Error::Unreachable` with that reason (nothing was processed: a TLS
//! server never parsed the request), however hyper reported it (a closed
//! connection, or HTTP/2 `FRAME_SIZE_ERROR` when the alert was read as a
//! frame header).

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::Uri;

/// Why a plaintext client cannot talk to a TLS server, as printed.
pub const SPEAKS_TLS: &str = "the server speaks TLS and this client does not: set tls.ca \
     (or --tls-ca, or CASKADE_CLI_TLS_CA) to the CA certificate that signed the server's certificate";

/// Addresses (`host:port` as dialed) whose server answered with TLS.
static TLS_SERVERS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether the last connection made to `addr` found a TLS server.
pub fn speaks_tls(addr: &str) -> bool {
    TLS_SERVERS.lock().contains(addr)
}

/// Records what the first bytes from `addr` said.
fn record(addr: &str, tls: bool) {
    let mut set = TLS_SERVERS.lock();
    if tls {
        set.insert(addr.to_string());
    } else if !set.is_empty() {
        set.remove(addr);
    }
}

/// Whether `first` (the first bytes a server sent, at least one) opens a
/// TLS record: an alert or a handshake, TLS major version 3.
fn is_tls_record(first: &[u8]) -> bool {
    matches!(first.first(), Some(0x15 | 0x16)) && first.get(1).is_none_or(|&b| b == 0x03)
}

/// hyper's TCP connector, whose connections check the server's first bytes.
#[derive(Clone)]
pub struct Connector(
    /// The TCP connector.
    HttpConnector,
);

impl Connector {
    /// A connector with `TCP_NODELAY` as given (the connect timeout is
    /// applied by tonic around it).
    pub fn new(nodelay: bool) -> Connector {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(nodelay);
        Connector(http)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Sniff>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let addr = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let connect = self.0.call(uri);
        Box::pin(async move {
            let tcp = connect.await?.into_inner();
            Ok(TokioIo::new(Sniff {
                inner: tcp,
                addr,
                checked: false,
                written: 0,
                writer: None,
            }))
        })
    }
}

/// A TCP connection whose first bytes from the server are checked.
pub struct Sniff {
    /// The connection.
    inner: tokio::net::TcpStream,
    /// The address dialed, for [`record`].
    addr: String,
    /// Whether the first bytes were seen.
    checked: bool,
    /// Bytes written before they were (at most [`PREFACE_LEN`]).
    written: usize,
    /// The writer waiting for them.
    writer: Option<std::task::Waker>,
}

/// Length of the HTTP/2 client preface (`PRI * HTTP/2.0...`): all that is
/// written before the server's first bytes are seen, so a TLS server's
/// alert is read before any write can fail on its reset.
const PREFACE_LEN: usize = 24;

impl AsyncRead for Sniff {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = result {
            return this.on_error(cx, e);
        }
        if !this.checked
            && let Poll::Ready(Ok(())) = &result
        {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.checked = true;
                if let Some(w) = this.writer.take() {
                    w.wake();
                }
                let tls = is_tls_record(new);
                record(&this.addr, tls);
                if tls {
                    return Poll::Ready(Err(io::Error::other(SPEAKS_TLS)));
                }
            }
        }
        result
    }
}

impl Sniff {
    /// A read or write failed before the server's first bytes were seen (the TLS
    /// server closed the connection after its alert, and the reset came
    /// first): looks at the bytes already received, without taking them.
    fn on_error<T>(&mut self, cx: &mut Context<'_>, err: io::Error) -> Poll<io::Result<T>> {
        if !self.checked {
            let mut first = [0u8; 2];
            let mut buf = ReadBuf::new(&mut first);
            if let Poll::Ready(Ok(_)) = self.inner.poll_peek(cx, &mut buf)
                && !buf.filled().is_empty()
            {
                self.checked = true;
                if let Some(w) = self.writer.take() {
                    w.wake();
                }
                let tls = is_tls_record(buf.filled());
                record(&self.addr, tls);
                if tls {
                    return Poll::Ready(Err(io::Error::other(SPEAKS_TLS)));
                }
            }
        }
        Poll::Ready(Err(err))
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut len = buf.len();
        if !this.checked {
            if this.written >= PREFACE_LEN {
                // Woken by the read that sees the server's first bytes.
                this.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            len = len.min(PREFACE_LEN - this.written);
        }
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..len]) {
            Poll::Ready(Ok(n)) => {
                if !this.checked {
                    this.written += n;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => this.on_error(cx, e),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.checked {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => this.on_error(cx, e),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => this.on_error(cx, e),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_records_and_http2_frames() {
        // A TLS 1.2/1.3 alert and a ServerHello record.
        assert!(is_tls_record(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]));
        assert!(is_tls_record(&[0x16, 0x03, 0x01]));
        assert!(is_tls_record(&[0x15]));
        // An HTTP/2 SETTINGS frame header (length 18), and other bytes.
        assert!(!is_tls_record(&[0x00, 0x00, 0x12, 0x04, 0x00]));
        assert!(!is_tls_record(&[0x15, 0x00]));
        assert!(!is_tls_record(b"HTTP/1.1 400"));
    }

    #[test]
    fn an_address_is_remembered_until_it_answers_plaintext() {
        let addr = "sniff.test:1";
        assert!(!speaks_tls(addr));
        record(addr, true);
        assert!(speaks_tls(addr));
        record(addr, false);
        assert!(!speaks_tls(addr));
    }
}
