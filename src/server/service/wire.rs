//! The forward wire: a lane's forwards (src/server/service/coalesce.rs)
//! over a TCP connection of their own, on the leader's client port, in
//! length-prefixed frames, instead of a `Forward` stream over HTTP/2.
//!
//! Why: on a `Forward` stream every message passes the HTTP/2 connection
//! task of both nodes and a stream task on the leader (task hops each
//! way, and the h2 framing and flow control). On the wire the lane's pump
//! writes its message and reads the answer on its own task, and the
//! leader reads, serves and answers on the connection's task
//! (docs/BENCHMARKS.md, "Run 11 (session 16)").
//!
//! The protocol (plaintext only: with `tls:` set, lanes keep their
//! `Forward` streams; see docs/REPLICATION.md):
//! - the forwarding node connects to the leader's client port and sends
//!   [`PREFACE`], then a greeting frame: the caller's `authorization`
//!   value (empty: none), at most [`crate::frames::GREETING_MAX`] bytes;
//! - a frame is a 4-byte big-endian length and that many bytes; after the
//!   greeting the leader takes frames of at most the listener's
//!   `max_message_bytes` (as tonic takes messages), and a larger one ends
//!   the connection unanswered (a break, below);
//! - the leader answers the greeting with an empty frame (open) or an
//!   encoded [`proto::ForwardError`] (refused, as a `Forward` stream's open
//!   would be: the credentials are checked as the listener checks them,
//!   and a refusal counts in `forward_wire`'s figures), then ends the
//!   connection; an open connection counts one `forward_wire` call;
//! - then each frame from the forwarding node is an encoded
//!   [`proto::ForwardRequest`], answered by one frame, its
//!   [`proto::ForwardResponse`] (same id), served exactly as a message of
//!   a `Forward` stream ([`forward::serve`]: the same credentials check
//!   per message, marks, limits and figures); an answer above
//!   `max_message_bytes` is replaced by that message's
//!   `RESOURCE_EXHAUSTED` error;
//! - an empty frame from the leader after the greeting means it ended the
//!   connection OK and did not process the message on the way, if any
//!   (it stops reading when it starts shutting down: the lane sends that
//!   message unary, as for a stream ended OK); an end without it (EOF, a
//!   reset) is a broken connection: a message on the way may or may not
//!   have been processed.
//!
//! Invariants:
//! - the client listener tells a wire connection from gRPC by its first
//!   byte and reads its [`PREFACE`] and greeting under the handshake
//!   deadline (src/server/sniff.rs, shared with the fetch wire); once the
//!   server starts shutting down it accepts nothing more and a connection
//!   not yet told apart is closed;
//! - a wire connection is a connection of the listener like any other,
//!   counted against its caps and its per-address cap (one per lane: per
//!   forwarding node, leader, caller's credentials and GET or SET); from
//!   the end of its greeting to its end it counts as busy, as an HTTP/2 connection
//!   with an open `Forward` stream does: never closed as idle nor evicted
//!   for a newcomer, so it never ends between two messages without the
//!   end frame; a vanished peer is found by TCP keepalive
//!   ([`crate::frames::keepalive`]);
//! - one message at a time per connection (a lane has one batch on the
//!   way), served on the connection's task;
//! - when the server starts shutting down a wire connection stops reading,
//!   answers the message it is serving, sends the empty frame and ends;
//!   one still greeting ends at once; the server waits for its wire
//!   connections before the final flush, as it waits for gRPC requests,
//!   and drops those still running when the shutdown grace ends, before
//!   the flush;
//! - a node that forwards tries the wire first (plaintext only), and uses
//!   a `Forward` stream for [`lane_stream::RETRY_STREAM_AFTER`] when the
//!   leader does not speak it (an older version: it closes the connection
//!   or answers with no frame of ours), refuses it with `UNIMPLEMENTED`
//!   or `PERMISSION_DENIED`, or refuses the credentials at the greeting
//!   (that batch gets the refusal; see src/server/service/lane_stream.rs).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use prost::Message;
use tonic::Status;

use super::{KvService, forward};
use crate::frames::{self, Frames};
use crate::proto;
use crate::server::limits::Conn;
use crate::server::metrics::Command;
use crate::server::sniff::{Greeted, greeted, stopping};

/// The first bytes of a forward wire connection.
pub const PREFACE: &[u8; 8] = b"CSKDFWD1";

impl KvService {
    /// Serves one forward wire connection (see the module doc), its
    /// first byte peeked.
    pub(crate) async fn serve_wire(self, conn: Conn, max_message: usize) {
        let mut stopping = std::pin::pin!(stopping(self.stopping.clone()));
        let greeted = tokio::select! {
            g = greeted(conn, PREFACE) => g,
            () = &mut stopping => None,
        };
        // Busy from here to the end, as an HTTP/2 connection with a
        // `Forward` stream open: never closed as idle or evicted for a
        // newcomer while its credentials are checked or between two
        // messages, when it could not say whether the message on its way
        // was processed.
        let Some(Greeted {
            mut frames,
            greeting,
            busy: _busy,
        }) = greeted
        else {
            return;
        };
        if forward::refused_by_failpoint().is_some() {
            // As a node of a version without the wire: closed unanswered.
            return;
        }
        let peer = frames.get_ref().stream().peer_addr().ok().map(|a| a.ip());
        let caller = match self.open_wire(peer, &greeting).await {
            Ok(c) => c,
            Err(refusal) => {
                let _ = frames.send(refusal).await;
                return;
            }
        };
        frames.codec_mut().set_max_frame_length(max_message);
        if frames.send(Bytes::new()).await.is_err() {
            return;
        }
        tracing::debug!(?peer, "serving a forward wire connection");
        loop {
            let frame = tokio::select! {
                biased;
                () = &mut stopping => {
                    // Shutting down: the end, nothing on the way processed.
                    let _ = frames.send(Bytes::new()).await;
                    return;
                }
                frame = frames.next() => frame,
            };
            let bytes = match frame {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    tracing::debug!(?peer, "forward wire connection ended: {e}");
                    return;
                }
                None => return,
            };
            let message = proto::ForwardRequest::decode(bytes).map_err(|e| {
                Status::invalid_argument(format!("a forward wire frame is no ForwardRequest: {e}"))
            });
            let answer = match forward::serve(self.clone(), caller.clone(), message).await {
                Ok(a) => a,
                // Undecodable, or the failpoint that breaks a stream: the
                // connection ends without an answer, as the stream would.
                Err(status) => {
                    tracing::debug!(?peer, "forward wire connection broken: {status}");
                    return;
                }
            };
            if frames
                .send(encode_answer(answer, max_message))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Checks a wire connection's greeting as the listener checks a
    /// `Forward` stream's open: the caller to serve it for, or the refusal
    /// to answer (counted in `forward`'s figures).
    async fn open_wire(
        &self,
        peer: Option<IpAddr>,
        greeting: &[u8],
    ) -> Result<forward::Caller, Bytes> {
        let header = (!greeting.is_empty()).then(|| Arc::<[u8]>::from(greeting));
        let caller = forward::Caller::new(self.auth.clone(), header, peer);
        // Checked as a `Forward` stream's open; refused credentials count
        // as the listener's hook counts them, in `forward_wire`.
        if let Err((e, took)) = caller.check("Forward").await {
            return Err(encode_error(&self.refused("ForwardWire", &e, took)));
        }
        // Then as `forward_rpc` counts an open.
        let timer = self.metrics.requests.start(Command::ForwardWire);
        timer.finish(&crate::Result::Ok(()));
        Ok(caller)
    }
}

/// Test builds only: the failpoint `server::wire_off` (`return`) makes
/// this node forward over `Forward` streams, as with TLS
/// (tests/resp/resp_cluster.rs tests the streams so).
pub(super) fn off_by_failpoint() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("server::wire_off", |_| true);
    }
    false
}

/// `status` as the greeting's refusal.
fn encode_error(status: &Status) -> Bytes {
    Bytes::from(forward::to_message(status).encode_to_vec())
}

/// `answer` as a frame; an answer above `max_message` (what tonic would
/// refuse to send) is replaced by that message's error.
fn encode_answer(answer: proto::ForwardResponse, max_message: usize) -> Bytes {
    if answer.encoded_len() <= max_message {
        return Bytes::from(answer.encode_to_vec());
    }
    let status = Status::resource_exhausted(format!(
        "the answer is {} bytes, above the leader's max_message_bytes ({max_message})",
        answer.encoded_len()
    ));
    let error = proto::ForwardResponse {
        id: answer.id,
        reply: Some(proto::forward_response::Reply::Error(forward::to_message(
            &status,
        ))),
    };
    Bytes::from(error.encode_to_vec())
}

/// A forwarding node's open wire connection to one leader.
pub(super) struct Wire {
    /// The framed socket.
    frames: Frames,
    /// The id of the next message.
    next_id: u64,
}

/// What opening a wire connection gave.
pub(super) enum Opened {
    /// Open.
    Wire(Wire),
    /// The leader refused the greeting with this status.
    Refused(Status),
    /// The leader does not speak the wire (or did not answer in time).
    NotSpoken(String),
    /// No connection could be made.
    Unreachable(String),
}

/// What one exchange on a wire connection gave.
pub(super) enum Exchanged {
    /// The leader's answer.
    Answer(proto::ForwardResponse),
    /// The leader ended the connection OK without processing the message.
    Unprocessed,
    /// The connection broke after the message was sent.
    Broken(String),
}

impl Wire {
    /// Connects to `addr` and greets with `authorization`.
    pub(super) async fn open(addr: &str, authorization: Option<&[u8]>) -> Opened {
        let greeting = Bytes::copy_from_slice(authorization.unwrap_or_default());
        let refusal = |b: Bytes| {
            proto::ForwardError::decode(b)
                .ok()
                .map(forward::from_message)
        };
        // Answers may be as large as the leader lets them be.
        match frames::open(addr, PREFACE, greeting, refusal, u32::MAX as usize).await {
            frames::Opened::Open(frames) => Opened::Wire(Wire { frames, next_id: 0 }),
            frames::Opened::Refused(s) => Opened::Refused(s),
            frames::Opened::NotSpoken(why) => Opened::NotSpoken(why),
            frames::Opened::Unreachable(why) => Opened::Unreachable(why),
        }
    }

    /// Whether the leader ended the connection: anything readable before
    /// a message was sent (an end frame, EOF, an error) ends it.
    pub(super) fn ended(&mut self) -> bool {
        self.frames.next().now_or_never().is_some()
    }

    /// Sends `ask` and reads its answer. `Err(ask)`: it could not be sent
    /// (nothing left this node; the connection is over).
    pub(super) async fn exchange(
        &mut self,
        ask: proto::forward_request::Request,
    ) -> Result<Exchanged, proto::forward_request::Request> {
        let id = self.next_id;
        self.next_id += 1;
        let message = proto::ForwardRequest {
            id,
            request: Some(ask),
        };
        let frame = Bytes::from(message.encode_to_vec());
        let fed: io::Result<()> = self.frames.feed(frame).await;
        if let Err(e) = fed {
            // Queued in the write buffer only: nothing was written.
            tracing::debug!("forward wire: could not queue a message: {e}");
            let proto::ForwardRequest {
                request: Some(ask), ..
            } = message
            else {
                return Ok(Exchanged::Broken(e.to_string()));
            };
            return Err(ask);
        }
        let flushed = SinkExt::<Bytes>::flush(&mut self.frames).await;
        if let Err(e) = flushed {
            return Ok(Exchanged::Broken(e.to_string()));
        }
        Ok(match self.frames.next().await {
            Some(Ok(b)) if b.is_empty() => Exchanged::Unprocessed,
            Some(Ok(b)) => match proto::ForwardResponse::decode(b) {
                Ok(a) if a.id == id => Exchanged::Answer(a),
                Ok(a) => Exchanged::Broken(format!("answered message {} instead of {id}", a.id)),
                Err(e) => Exchanged::Broken(format!("an answer that does not decode: {e}")),
            },
            Some(Err(e)) => Exchanged::Broken(e.to_string()),
            None => Exchanged::Broken("the connection was closed".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    use super::*;
    use crate::frames::codec;

    /// A leader on a fresh port that reads the preface and the greeting,
    /// then does what `then` does with the framed socket; its task is
    /// awaited by the test, so that its assertions count.
    async fn fake_leader<F, Fut>(then: F) -> (String, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(Framed<TcpStream, LengthDelimitedCodec>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; PREFACE.len()];
            socket.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface, PREFACE);
            let mut frames = Framed::new(socket, codec(1 << 20));
            let greeting = frames.next().await.unwrap().unwrap();
            assert_eq!(&greeting[..], b"Basic dTpw");
            then(frames).await;
        });
        (addr, task)
    }

    /// A `MGet` of one key, as a lane sends it.
    fn ask() -> proto::forward_request::Request {
        proto::forward_request::Request::MGet(proto::MGetRequest {
            keys: vec![Bytes::from_static(b"k")],
            ..Default::default()
        })
    }

    /// The exchange of a wire opened to `addr`.
    async fn exchange_with(addr: &str) -> Exchanged {
        let Opened::Wire(mut w) = Wire::open(addr, Some(b"Basic dTpw")).await else {
            panic!("not opened");
        };
        match w.exchange(ask()).await {
            Ok(e) => e,
            Err(_) => panic!("not sent"),
        }
    }

    /// An answer with the message's id is the answer; the message arrives
    /// as sent, with id 0 first.
    #[tokio::test]
    async fn an_answer_with_the_id_is_the_answer() {
        let (addr, leader) = fake_leader(|mut f| async move {
            f.send(Bytes::new()).await.unwrap();
            let m = proto::ForwardRequest::decode(f.next().await.unwrap().unwrap()).unwrap();
            assert_eq!(m.id, 0);
            assert_eq!(m.request, Some(ask()));
            let a = proto::ForwardResponse {
                id: 0,
                reply: Some(proto::forward_response::Reply::MGet(Default::default())),
            };
            f.send(Bytes::from(a.encode_to_vec())).await.unwrap();
            let _ = f.next().await;
        })
        .await;
        let Exchanged::Answer(a) = exchange_with(&addr).await else {
            panic!("no answer");
        };
        assert_eq!(a.id, 0);
        leader.await.unwrap();
    }

    /// The leader's end frame says the message was not processed; an end
    /// without it (EOF after the message was read) says nothing: broken.
    #[tokio::test]
    async fn only_the_end_frame_proves_a_message_unprocessed() {
        let (addr, leader) = fake_leader(|mut f| async move {
            f.send(Bytes::new()).await.unwrap();
            let _ = f.next().await;
            f.send(Bytes::new()).await.unwrap();
        })
        .await;
        assert!(matches!(exchange_with(&addr).await, Exchanged::Unprocessed));
        leader.await.unwrap();
        let (addr, leader) = fake_leader(|mut f| async move {
            f.send(Bytes::new()).await.unwrap();
            assert!(f.next().await.unwrap().is_ok());
        })
        .await;
        let Exchanged::Broken(why) = exchange_with(&addr).await else {
            panic!("not broken");
        };
        assert_eq!(why, "the connection was closed");
        leader.await.unwrap();
        let (addr, leader) = fake_leader(|mut f| async move {
            f.send(Bytes::new()).await.unwrap();
            let _ = f.next().await;
            let a = proto::ForwardResponse {
                id: 5,
                reply: Some(proto::forward_response::Reply::MGet(Default::default())),
            };
            f.send(Bytes::from(a.encode_to_vec())).await.unwrap();
        })
        .await;
        let Exchanged::Broken(why) = exchange_with(&addr).await else {
            panic!("not broken");
        };
        assert_eq!(why, "answered message 5 instead of 0");
        leader.await.unwrap();
    }

    /// A refused greeting carries the leader's status; a leader that
    /// answers with bytes of another protocol, or closes, or says nothing,
    /// does not speak the wire; a closed port is unreachable.
    #[tokio::test]
    async fn opening_tells_refused_from_not_spoken_from_unreachable() {
        let (addr, leader) = fake_leader(|mut f| async move {
            let refusal = Status::unauthenticated("wrong password");
            f.send(encode_error(&refusal)).await.unwrap();
        })
        .await;
        let Opened::Refused(s) = Wire::open(&addr, Some(b"Basic dTpw")).await else {
            panic!("not refused");
        };
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert_eq!(s.message(), "wrong password");
        leader.await.unwrap();

        // A TLS server's alert (`15 03 03 00 02`): read as a frame length
        // of 350 MB, above what a greeting's answer may be.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&[0x15, 3, 3, 0, 2, 2, 80]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let Opened::NotSpoken(why) = Wire::open(&addr, None).await else {
            panic!("spoken");
        };
        assert!(why.contains("frame size too big"), "{why}");

        // An HTTP/2 server's first bytes (SETTINGS), then its close.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket
                .write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
                .await
                .unwrap();
        });
        assert!(matches!(
            Wire::open(&addr, Some(b"Basic dTpw")).await,
            Opened::NotSpoken(_)
        ));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let Opened::NotSpoken(why) = Wire::open(&addr, Some(b"Basic dTpw")).await else {
            panic!("spoken");
        };
        assert_eq!(why, "no answer within 1000 ms");
        silent.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(matches!(
            Wire::open(&addr, None).await,
            Opened::Unreachable(_)
        ));
    }

    /// An end frame or a close while no message is on the way is seen
    /// before the next message is sent.
    #[tokio::test]
    async fn an_ended_connection_is_seen_before_sending() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, leader) = fake_leader(|mut f| async move {
            f.send(Bytes::new()).await.unwrap();
            f.send(Bytes::new()).await.unwrap();
            let _ = rx.await;
        })
        .await;
        let Opened::Wire(mut w) = Wire::open(&addr, Some(b"Basic dTpw")).await else {
            panic!("not opened");
        };
        // The end frame may trail the greeting's answer by a moment.
        let mut ended = false;
        for _ in 0..100 {
            if w.ended() {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ended);
        let _ = tx.send(());
        leader.await.unwrap();
    }

    /// The preface cannot be mistaken for what else reaches the client
    /// port: an HTTP/2 preface or a TLS record.
    #[test]
    fn the_preface_is_neither_http2_nor_tls() {
        assert_ne!(PREFACE[0], b"PRI * HTTP/2.0"[0]);
        assert_ne!(PREFACE[0], 0x16);
        assert_ne!(PREFACE[0], 0x15);
    }

    /// An answer above the leader's message limit becomes that message's
    /// error, with its id, instead of a frame the limit forbids.
    #[test]
    fn an_answer_over_the_limit_is_an_error_with_its_id() {
        let big = proto::ForwardResponse {
            id: 7,
            reply: Some(proto::forward_response::Reply::MGet(proto::MGetResponse {
                values: vec![proto::MaybeValue {
                    value: Some(vec![0u8; 1000].into()),
                }],
            })),
        };
        let frame = encode_answer(big.clone(), 100_000);
        assert_eq!(proto::ForwardResponse::decode(frame).unwrap(), big);
        let frame = encode_answer(big, 500);
        let back = proto::ForwardResponse::decode(frame).unwrap();
        assert_eq!(back.id, 7);
        let Some(proto::forward_response::Reply::Error(e)) = back.reply else {
            panic!("not an error: {back:?}");
        };
        assert_eq!(e.code, tonic::Code::ResourceExhausted as i32);
        assert!(
            e.message.contains("max_message_bytes (500)"),
            "{}",
            e.message
        );
    }
}
