//! The fetch wire: a follower's fetch session (src/replication/fetcher.rs)
//! on a TCP connection of its own to the leader's replication port, in
//! length-prefixed frames (src/frames.rs), instead of a `Fetch` stream
//! over HTTP/2.
//!
//! Why: on a `Fetch` stream each round (a request, its long-poll answer)
//! passes the HTTP/2 connection task of both nodes and the stream's task
//! on the leader. On the wire the follower's session task writes its
//! request and reads the answer itself, and the leader serves each request
//! on the connection's task; an `acks: all` write waits for these rounds
//! (docs/BENCHMARKS.md, "Run 12 (session 17)").
//!
//! The protocol (proto/replication.proto, `FetchWireFrame`; plaintext
//! only: with `tls:` set followers keep their `Fetch` streams, whose
//! caller the leader knows from its certificate):
//! - the follower sends [`PREFACE`] and a greeting frame (reserved: empty;
//!   at most [`crate::frames::GREETING_MAX`] bytes); the leader answers
//!   with an empty frame (open) or a `FetchWireFrame` carrying an error
//!   (refused) and ends;
//! - then each follower frame is a `FetchRequest`, answered by one
//!   `FetchWireFrame`: the `FetchResponse` the `Fetch` stream would send,
//!   or the error that would end it (then the connection ends). Frames are
//!   at most [`ReplicaManager::message_limit`] bytes both ways, as the
//!   stream's messages, and 16 bytes for the frame's own envelope;
//! - a follower that receives nothing of an answer for its long poll
//!   (`fetch_max_wait_ms`) and [`ANSWER_GRACE`] drops the connection and
//!   repeats the request on a new one (a frozen or vanished leader, which
//!   HTTP/2 pings would find on a stream); an answer whose bytes keep
//!   coming is waited for however large it is.
//!
//! Invariants:
//! - a request is served exactly as a message of a `Fetch` stream: the
//!   same caller check, partition-count check and [`ReplicaManager::fetch`]
//!   with a fetch-stream id of the connection's own (so a late request on
//!   a connection the follower left is refused as on an old stream);
//! - one request at a time; while it long-polls, anything readable from
//!   the follower (EOF, a frame out of turn) ends the connection, as a
//!   cancelled stream ends the poll;
//! - the connection's fetch-stream id is taken before the greeting is
//!   answered, so a connection the follower opened later has a newer id;
//! - at the listener's stop the connection ends at once, without an
//!   answer (one being written is abandoned): a fetch is repeated by the
//!   follower's session (same session epoch), never lost;
//! - a follower tries the wire first (plaintext only) and uses a `Fetch`
//!   stream for [`STREAM_AFTER_NO_WIRE`] when the leader does not speak it
//!   (an older version closes the connection or answers no frame of ours)
//!   or refuses it with `UNIMPLEMENTED` or `PERMISSION_DENIED`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Status;

use super::ReplicaManager;
use crate::error::{Error, Result};
use crate::frames::{self, Frames};
use crate::proto::replication as pb;
use crate::tls::gate::{Caller, Gate};

/// The first bytes of a fetch wire connection.
pub const PREFACE: &[u8; 8] = b"CSKDFCH1";

/// What a `FetchWireFrame` adds to the `FetchResponse` it carries (a tag
/// and a length: 6 bytes at most): frames may be this much above the
/// message limit the answer was cut to, so that every answer a `Fetch`
/// stream would carry fits a frame.
const FRAME_SLACK: usize = 16;

/// How long a follower whose leader did not speak the wire fetches over a
/// `Fetch` stream before it tries the wire again (a rolling upgrade
/// restarts the leader).
pub const STREAM_AFTER_NO_WIRE: Duration = Duration::from_secs(30);

/// How this node's fetch sessions travelled, and how many wire
/// connections it served as a leader (`INFO` replication section).
#[derive(Debug, Default)]
pub struct FetchFigures {
    /// Fetch wire connections this node opened as a follower.
    pub wire_opened: AtomicU64,
    /// `Fetch` streams this node opened as a follower.
    pub streams_opened: AtomicU64,
    /// Fetch wire connections this node served as a leader (greeted).
    pub wire_served: AtomicU64,
}

/// [`FetchFigures`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchTransports {
    /// Fetch wire connections this node opened as a follower.
    pub wire_opened: u64,
    /// `Fetch` streams this node opened as a follower.
    pub streams_opened: u64,
    /// Fetch wire connections this node served as a leader (greeted).
    pub wire_served: u64,
}

impl FetchFigures {
    /// The figures now.
    pub fn read(&self) -> FetchTransports {
        FetchTransports {
            wire_opened: self.wire_opened.load(Ordering::Relaxed),
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            wire_served: self.wire_served.load(Ordering::Relaxed),
        }
    }
}

/// `status` as a frame of the leader.
fn error_frame(status: &Status) -> Bytes {
    let frame = pb::FetchWireFrame {
        frame: Some(pb::fetch_wire_frame::Frame::Error(wire_status(status))),
    };
    Bytes::from(frame.encode_to_vec())
}

/// `status` as a [`pb::WireStatus`].
fn wire_status(status: &Status) -> pb::WireStatus {
    pb::WireStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata: frames::status_metadata(status),
    }
}

/// The status a [`pb::WireStatus`] carries.
fn from_wire_status(s: pb::WireStatus) -> Status {
    frames::status_from_parts(s.code, s.message, s.metadata)
}

/// Serves one fetch wire connection past its greeting (see the module
/// doc) until the follower leaves, an error ends it, or `stop` completes
/// (then at once, wherever it is: an answer being written is abandoned,
/// and the follower repeats its request). `max_partitions` bounds a
/// request's partitions (`limits.fetch_max_partitions`).
pub async fn serve<T>(
    manager: Arc<ReplicaManager>,
    frames: Frames<T>,
    max_partitions: usize,
    stop: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if refused_by_failpoint() {
        // As a node of a version without the wire: closed unanswered.
        return;
    }
    tokio::select! {
        biased;
        () = stop => {}
        () = serve_requests(manager, frames, max_partitions) => {}
    }
}

/// The requests of one connection, answered in turn (see [`serve`]).
async fn serve_requests<T>(
    manager: Arc<ReplicaManager>,
    mut frames: Frames<T>,
    max_partitions: usize,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let limit = manager.message_limit();
    frames.codec_mut().set_max_frame_length(limit + FRAME_SLACK);
    // Taken before the follower can send anything: a connection opened
    // later always has a newer id, as a stream's id is taken before its
    // response headers, so a late request on a connection the follower
    // left is refused (session.rs).
    let stream = manager.open_fetch_stream();
    if frames.send(Bytes::new()).await.is_err() {
        return;
    }
    manager
        .fetch_figures
        .wire_served
        .fetch_add(1, Ordering::Relaxed);
    let mut turn = 0usize;
    loop {
        let bytes = match frames.next().await {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::debug!("fetch wire connection ended: {e}");
                return;
            }
            None => return,
        };
        let refused = match pb::FetchRequest::decode(bytes) {
            Err(e) => Err(Status::invalid_argument(format!(
                "a fetch wire frame is no FetchRequest: {e}"
            ))),
            Ok(req) => match Gate::admit_fetch(&Caller::Unknown, &req.follower_id) {
                Err(why) => Err(Status::permission_denied(why)),
                Ok(()) => super::service::check_fetch(&req, max_partitions).map(|()| req),
            },
        };
        let req = match refused {
            Ok(req) => req,
            Err(status) => {
                tracing::warn!("fetch wire request refused: {}", status.message());
                let _ = frames.send(error_frame(&status)).await;
                return;
            }
        };
        let answer = tokio::select! {
            a = manager.fetch(req, turn, stream) => a,
            // The follower left, or spoke out of turn: the poll ends.
            _ = frames.next() => return,
        };
        turn = turn.wrapping_add(1);
        let frame = match answer {
            Ok(response) => {
                let frame = pb::FetchWireFrame {
                    frame: Some(pb::fetch_wire_frame::Frame::Response(response)),
                };
                if frame.encoded_len() > limit + FRAME_SLACK {
                    // Never: answers are cut to fit the limit (mod.rs).
                    let status = Status::resource_exhausted(format!(
                        "a fetch answer of {} bytes is above the message limit ({limit})",
                        frame.encoded_len()
                    ));
                    let _ = frames.send(error_frame(&status)).await;
                    return;
                }
                Bytes::from(frame.encode_to_vec())
            }
            Err(e) => {
                let _ = frames.send(error_frame(&Status::from(e))).await;
                return;
            }
        };
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// Test builds only: the failpoint `replication::fetch_wire_refuse`
/// (`return`) makes this node close fetch wire connections unanswered, as
/// a node of a version without the wire does.
fn refused_by_failpoint() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("replication::fetch_wire_refuse", |_| true);
    }
    false
}

/// Test builds only: the failpoint `replication::fetch_wire_off`
/// (`return`) makes this node fetch over `Fetch` streams, as with TLS.
pub(super) fn off_by_failpoint() -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("replication::fetch_wire_off", |_| true);
    }
    false
}

/// A follower's open fetch wire connection to one leader.
pub(super) struct FetchWire {
    /// The framed socket.
    frames: Frames,
    /// Longest the leader may take to answer a request: its long poll,
    /// and [`ANSWER_GRACE`].
    answer_within: Duration,
}

/// How much longer than its long poll (`fetch_max_wait_ms`) a leader may
/// take to answer before the follower gives up on the connection (a
/// frozen or vanished leader; on a `Fetch` stream HTTP/2 pings find it
/// within 3 s). The request is then repeated on a new connection.
pub const ANSWER_GRACE: Duration = Duration::from_secs(3);

/// What opening a fetch wire connection gave.
pub(super) enum Opened {
    /// Open.
    Wire(FetchWire),
    /// The leader does not take the wire: fetch over a stream.
    NoWire(String),
    /// The leader cannot be reached, or refused the wire otherwise.
    Failed(Error),
}

impl FetchWire {
    /// Connects to the leader's replication port `addr`; answers may be
    /// `limit` bytes long (the message limit) and must come within
    /// `max_wait` (`fetch_max_wait_ms`) and [`ANSWER_GRACE`].
    pub(super) async fn open(addr: &str, limit: usize, max_wait: Duration) -> Opened {
        let refusal = |b: Bytes| {
            let frame = pb::FetchWireFrame::decode(b).ok()?;
            match frame.frame? {
                pb::fetch_wire_frame::Frame::Error(s) => Some(from_wire_status(s)),
                pb::fetch_wire_frame::Frame::Response(_) => None,
            }
        };
        match frames::open(addr, PREFACE, Bytes::new(), refusal, limit + FRAME_SLACK).await {
            frames::Opened::Open(frames) => Opened::Wire(FetchWire {
                frames,
                answer_within: max_wait + ANSWER_GRACE,
            }),
            frames::Opened::Refused(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unimplemented | tonic::Code::PermissionDenied
                ) =>
            {
                Opened::NoWire(s.message().to_string())
            }
            frames::Opened::Refused(s) => Opened::Failed(Error::from(s)),
            frames::Opened::NotSpoken(why) => Opened::NoWire(why),
            frames::Opened::Unreachable(why) => Opened::Failed(Error::Unavailable(format!(
                "cannot reach the leader's replication port {addr}: {why}"
            ))),
        }
    }

    /// Sends `req`.
    pub(super) async fn send(&mut self, req: &pb::FetchRequest) -> Result<()> {
        self.send_frame(Bytes::from(req.encode_to_vec())).await
    }

    /// Sends `frame` as it is (an encoded request; a test's malformed one).
    pub(super) async fn send_frame(&mut self, frame: Bytes) -> Result<()> {
        self.frames
            .send(frame)
            .await
            .map_err(|e| Error::Unavailable(format!("fetch wire: {e}")))
    }

    /// The answer to the request sent last; the leader's error as sent.
    /// Fails when nothing of it arrived for `answer_within`: a large
    /// answer may take longer in all, as long as its bytes keep coming.
    pub(super) async fn recv(&mut self, leader: &str) -> Result<pb::FetchResponse> {
        let mut buffered = self.frames.read_buffer().len();
        let next = loop {
            // Cancel-safe: bytes read so far stay in the read buffer.
            match tokio::time::timeout(self.answer_within, self.frames.next()).await {
                Ok(next) => break next,
                Err(_) if self.frames.read_buffer().len() != buffered => {
                    buffered = self.frames.read_buffer().len();
                }
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "{leader} sent nothing of a fetch answer for {} ms",
                        self.answer_within.as_millis()
                    )));
                }
            }
        };
        let bytes = match next {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(Error::Unavailable(format!("fetch wire to {leader}: {e}"))),
            None => {
                return Err(Error::Unavailable(format!(
                    "{leader} closed the fetch wire connection"
                )));
            }
        };
        let frame = pb::FetchWireFrame::decode(bytes.freeze())
            .map_err(|e| Error::Internal(format!("a fetch wire answer of {leader}: {e}")))?;
        match frame.frame {
            Some(pb::fetch_wire_frame::Frame::Response(r)) => Ok(r),
            Some(pb::fetch_wire_frame::Frame::Error(s)) => Err(Error::from(from_wire_status(s))),
            None => Err(Error::Internal(format!(
                "an empty fetch wire answer of {leader}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A leader on a fresh port that reads the preface and greeting, then
    /// does what `then` does with the socket; awaited by the test.
    async fn fake_leader<F, Fut>(then: F) -> (String, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 8];
            socket.read_exact(&mut preface).await.unwrap();
            assert_eq!(&preface, PREFACE);
            let mut greeting = [0u8; 4];
            socket.read_exact(&mut greeting).await.unwrap();
            assert_eq!(greeting, [0, 0, 0, 0], "an empty greeting");
            then(socket).await;
        });
        (addr, task)
    }

    /// A leader that opens the wire and then never answers: the follower
    /// gives up after its long poll and [`ANSWER_GRACE`], with an error
    /// naming the leader (the session then repeats the request on a new
    /// connection), instead of waiting forever.
    #[tokio::test]
    async fn a_leader_that_never_answers_is_given_up_after_the_poll_and_the_grace() {
        let (addr, leader) = fake_leader(|mut s| async move {
            s.write_all(&[0, 0, 0, 0]).await.unwrap();
            // Hold the connection open, reading the request, answering nothing.
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
        let Opened::Wire(mut w) = FetchWire::open(&addr, 1 << 20, Duration::from_millis(100)).await
        else {
            panic!("not opened");
        };
        w.send(&pb::FetchRequest::default()).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            w.recv("node-2").await,
            Err(Error::Unavailable(
                "node-2 sent nothing of a fetch answer for 3100 ms".into()
            ))
        );
        assert!(started.elapsed() >= Duration::from_millis(3100));
        leader.abort();
    }

    /// An answer that takes longer than the wait in all but keeps coming
    /// (a large answer on a slow link) is waited for: half of it arrives
    /// early, the rest after the first 3 s window ended.
    #[tokio::test]
    async fn an_answer_still_arriving_is_waited_for() {
        let answer = pb::FetchWireFrame {
            frame: Some(pb::fetch_wire_frame::Frame::Response(pb::FetchResponse {
                session_id: 7,
                error_message: "x".repeat(100),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let (addr, leader) = fake_leader(move |mut s| async move {
            s.write_all(&[0, 0, 0, 0]).await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let len = u32::try_from(answer.len()).unwrap().to_be_bytes();
            s.write_all(&len).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.write_all(&answer[..50]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3000)).await;
            s.write_all(&answer[50..]).await.unwrap();
        })
        .await;
        let Opened::Wire(mut w) = FetchWire::open(&addr, 1 << 20, Duration::ZERO).await else {
            panic!("not opened");
        };
        w.send(&pb::FetchRequest::default()).await.unwrap();
        let started = std::time::Instant::now();
        let got = w.recv("node-2").await.unwrap();
        assert_eq!((got.session_id, got.error_message.len()), (7, 100));
        assert!(started.elapsed() >= Duration::from_millis(3400));
        leader.await.unwrap();
    }

    /// A leader that closes the connection after the greeting (an older
    /// version's listener) does not take the wire; a refusal with
    /// UNIMPLEMENTED does not either; another refusal is the error; a
    /// closed port is unreachable.
    #[tokio::test]
    async fn opening_tells_no_wire_from_refused_and_unreachable() {
        let (addr, leader) = fake_leader(|s| async move { drop(s) }).await;
        let opened = FetchWire::open(&addr, 1 << 20, Duration::from_millis(100)).await;
        assert!(
            matches!(&opened, Opened::NoWire(why) if why == "the connection was closed"),
            "closed unanswered"
        );
        leader.await.unwrap();

        for (status, no_wire) in [
            (Status::unimplemented("no fetch wire here"), true),
            (Status::resource_exhausted("too many connections"), false),
        ] {
            let frame = error_frame(&status);
            let (addr, leader) = fake_leader(move |mut s| async move {
                let len = u32::try_from(frame.len()).unwrap().to_be_bytes();
                s.write_all(&len).await.unwrap();
                s.write_all(&frame).await.unwrap();
            })
            .await;
            match FetchWire::open(&addr, 1 << 20, Duration::from_millis(100)).await {
                Opened::NoWire(why) => {
                    assert!(no_wire);
                    assert_eq!(why, "no fetch wire here");
                }
                Opened::Failed(e) => {
                    assert!(!no_wire);
                    assert_eq!(e.to_string(), "unavailable: too many connections");
                }
                Opened::Wire(_) => panic!("opened"),
            }
            leader.await.unwrap();
        }

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let opened = FetchWire::open(&addr, 1 << 20, Duration::from_millis(100)).await;
        assert!(
            matches!(&opened, Opened::Failed(Error::Unavailable(m)) if m.starts_with(&format!("cannot reach the leader's replication port {addr}"))),
            "unreachable"
        );
    }
}
