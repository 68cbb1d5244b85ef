//! Framed TCP connections beside gRPC, without HTTP/2: what the forward
//! wire (src/server/service/wire.rs, a node's forwarded `GET`s and `SET`s)
//! and the fetch wire (src/replication/fetch_wire.rs, a follower's fetch
//! session) share. Each is spoken on the port its gRPC service listens on,
//! told apart from gRPC by its first byte (src/server/sniff.rs).
//!
//! The shape of both: the connecting node sends an 8-byte preface naming
//! the protocol and its version, then a greeting frame (at most
//! [`GREETING_MAX`] bytes); the listening node answers the greeting with
//! an empty frame (open) or an encoded refusal, then they exchange
//! messages. A frame is a 4-byte big-endian length and that many bytes
//! ([`codec`], tokio-util's `LengthDelimitedCodec`).
//!
//! Invariants:
//! - a connecting node reads at most [`GREETING_MAX`] bytes of answer to
//!   its greeting, so another protocol's bytes (an HTTP/2 server's
//!   SETTINGS, a TLS alert that reads as a length of 350 MB) are taken as
//!   "not spoken", never as a frame to wait for or reserve memory for;
//! - both ends of a wire socket run TCP keepalive and a user timeout
//!   ([`keepalive`]), so a peer whose host vanished is found (in tens of
//!   seconds, where HTTP/2 pings take a few; a fetch wire follower also
//!   bounds each answer's wait, src/replication/fetch_wire.rs).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tonic::Status;

/// Longest a connecting node waits for a connection, and then for the
/// answer to its greeting.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes of a greeting (an `authorization` value: HTTP/2 caps a
/// header block at 16 KiB by default), and of the answer to it.
pub const GREETING_MAX: usize = 16 << 10;

/// A framed wire socket.
pub type Frames<T = TcpStream> = Framed<T, LengthDelimitedCodec>;

/// Length-prefixed frames of at most `max` bytes.
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

/// TCP keepalive of wire sockets, both sides: a peer whose host vanished
/// (no FIN, no RST) is found within about 10 + 3 x 5 s while the socket
/// is idle, and data it leaves unacknowledged for 25 s
/// (`TCP_USER_TIMEOUT`, Linux) ends the connection, so a write to it never
/// hangs for the kernel's ~15 min of retransmissions.
pub fn keepalive(socket: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let sock = socket2::SockRef::from(socket);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!("cannot set TCP keepalive on a wire socket: {e}");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(Duration::from_secs(25))) {
        tracing::debug!("cannot set TCP_USER_TIMEOUT on a wire socket: {e}");
    }
}

/// What opening a wire connection gave.
pub enum Opened {
    /// Open: frames may now be as long as `max_answer`.
    Open(Frames),
    /// The listening node refused the greeting with this status.
    Refused(Status),
    /// The listening node does not speak this wire (or did not answer in
    /// time).
    NotSpoken(String),
    /// No connection could be made.
    Unreachable(String),
}

/// Connects to `addr`, sends `preface` and `greeting`, and reads the
/// answer; a refusal is decoded by `refusal` (`None`: not a refusal of
/// this wire). Answers after the greeting may be `max_answer` bytes long.
pub async fn open(
    addr: &str,
    preface: &[u8],
    greeting: Bytes,
    refusal: fn(Bytes) -> Option<Status>,
    max_answer: usize,
) -> Opened {
    let connect = tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(addr));
    let mut socket = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Opened::Unreachable(e.to_string()),
        Err(_) => {
            return Opened::Unreachable(format!(
                "no connection within {} ms",
                OPEN_TIMEOUT.as_millis()
            ));
        }
    };
    let _ = socket.set_nodelay(true);
    keepalive(&socket);
    if let Err(e) = socket.write_all(preface).await {
        return Opened::NotSpoken(e.to_string());
    }
    let mut frames = Framed::new(socket, codec(GREETING_MAX));
    if let Err(e) = frames.send(greeting).await {
        return Opened::NotSpoken(e.to_string());
    }
    match tokio::time::timeout(OPEN_TIMEOUT, frames.next()).await {
        Ok(Some(Ok(b))) if b.is_empty() => {
            frames.codec_mut().set_max_frame_length(max_answer);
            Opened::Open(frames)
        }
        Ok(Some(Ok(b))) => match refusal(b.freeze()) {
            Some(status) => Opened::Refused(status),
            None => Opened::NotSpoken("an answer that is no greeting".into()),
        },
        Ok(Some(Err(e))) => Opened::NotSpoken(e.to_string()),
        Ok(None) => Opened::NotSpoken("the connection was closed".into()),
        Err(_) => Opened::NotSpoken(format!("no answer within {} ms", OPEN_TIMEOUT.as_millis())),
    }
}

/// The `caskade-*` metadata of `status` (what a unary status carries:
/// `caskade-reason`, `caskade-leader`, ...), for a wire message.
pub fn status_metadata(status: &Status) -> HashMap<String, String> {
    status
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.as_str(), v.to_str().ok()?)),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .filter(|(k, _)| k.starts_with("caskade-"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The status a wire message carries (metadata that is not valid as such
/// is left out).
pub fn status_from_parts(code: i32, message: String, metadata: HashMap<String, String>) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in metadata {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(v.as_str()),
        ) {
            md.insert(k, v);
        }
    }
    Status::with_metadata(tonic::Code::from_i32(code), message, md)
}
