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
//!   with an empty frame (open) or a `WireStatus` (refused) and ends;
//! - then each follower frame is a `FetchRequest`, answered by one
//!   `FetchWireFrame`: the `FetchResponse` the `Fetch` stream would send,
//!   or the error that would end it (then the connection ends). Frames are
//!   at most [`ReplicaManager::message_limit`] bytes both ways, as the
//!   stream's messages.
//!
//! Invariants:
//! - a request is served exactly as a message of a `Fetch` stream: the
//!   same caller check, partition-count check and [`ReplicaManager::fetch`]
//!   with a fetch-stream id of the connection's own (so a late request on
//!   a connection the follower left is refused as on an old stream);
//! - one request at a time; while it long-polls, anything readable from
//!   the follower (EOF, a frame out of turn) ends the connection, as a
//!   cancelled stream ends the poll;
//! - at the listener's stop the connection ends without an answer: a fetch
//!   is repeated by the follower's session (same session epoch), never
//!   lost;
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

impl FetchFigures {
    /// `(wire_opened, streams_opened, wire_served)` now.
    pub fn read(&self) -> (u64, u64, u64) {
        (
            self.wire_opened.load(Ordering::Relaxed),
            self.streams_opened.load(Ordering::Relaxed),
            self.wire_served.load(Ordering::Relaxed),
        )
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
/// doc) until the follower leaves, an error ends it, or `stop` completes.
/// `max_partitions` bounds a request's partitions
/// (`limits.fetch_max_partitions`).
pub async fn serve<T>(
    manager: Arc<ReplicaManager>,
    mut frames: Frames<T>,
    max_partitions: usize,
    stop: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if refused_by_failpoint() {
        // As a node of a version without the wire: closed unanswered.
        return;
    }
    let mut stop = std::pin::pin!(stop);
    let limit = manager.message_limit();
    frames.codec_mut().set_max_frame_length(limit);
    if frames.send(Bytes::new()).await.is_err() {
        return;
    }
    manager
        .fetch_figures
        .wire_served
        .fetch_add(1, Ordering::Relaxed);
    let stream = manager.open_fetch_stream();
    let mut turn = 0usize;
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut stop => return,
            frame = frames.next() => frame,
        };
        let bytes = match frame {
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
            () = &mut stop => return,
        };
        turn = turn.wrapping_add(1);
        let frame = match answer {
            Ok(response) => {
                let frame = pb::FetchWireFrame {
                    frame: Some(pb::fetch_wire_frame::Frame::Response(response)),
                };
                if frame.encoded_len() > limit {
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
}

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
    /// `limit` bytes long.
    pub(super) async fn open(addr: &str, limit: usize) -> Opened {
        let refusal = |b: Bytes| {
            let frame = pb::FetchWireFrame::decode(b).ok()?;
            match frame.frame? {
                pb::fetch_wire_frame::Frame::Error(s) => Some(from_wire_status(s)),
                pb::fetch_wire_frame::Frame::Response(_) => None,
            }
        };
        match frames::open(addr, PREFACE, Bytes::new(), refusal, limit).await {
            frames::Opened::Open(frames) => Opened::Wire(FetchWire { frames }),
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
        self.frames
            .send(Bytes::from(req.encode_to_vec()))
            .await
            .map_err(|e| Error::Unavailable(format!("fetch wire: {e}")))
    }

    /// The answer to the request sent last; the leader's error as sent.
    pub(super) async fn recv(&mut self, leader: &str) -> Result<pb::FetchResponse> {
        let bytes = match self.frames.next().await {
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
