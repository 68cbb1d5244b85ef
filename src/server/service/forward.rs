//! The leader's side of `Forward` (proto/kv.proto): the `MGet` / `MSet`
//! that another node forwards for its RESP connections arrive as messages
//! of one long-lived stream per lane (src/server/service/coalesce.rs; or
//! of a forward wire connection, src/server/service/wire.rs, whose
//! messages are served by the same [`serve`])
//! instead of one unary call each, which cost this node an HTTP/2 request
//! (5 frames, header coding), a spawned task and a tower stack apiece
//! (docs/BENCHMARKS.md, "Forward streams (session 11)").
//!
//! Invariants:
//! - each message is served by the unary handler of its request
//!   ([`KvService::m_get_rpc`] / [`KvService::m_set_rpc`]) with the
//!   `caskade-forwarded` mark: the same limits, slots, metrics, per-key
//!   `NOT_LEADER` checks, and never forwarded again;
//! - authorization is checked per message exactly as the unary call's
//!   would be ([`crate::auth::grpc`]): the stream's `authorization` (read
//!   once, at open) is verified again for every message (a lockout of
//!   the peer's address or a wrong password refuses it) and the user must
//!   hold the unary method's permission (`MGet`: read, `MSet`: write); a
//!   refusal is that message's error status, counted in the method's
//!   figures as the unary call's refusal is, and the stream stays open;
//! - a stream holds at most [`MAX_IN_FLIGHT`] messages being served, and
//!   reads no more until one is answered; each message is at most the
//!   listener's `max_message_bytes` (tonic refuses larger ones) and names
//!   at most `limits.max_keys_per_request` keys; answers wait for HTTP/2
//!   flow control, so a peer that does not read them stops the stream;
//! - when the server starts shutting down it reads no more messages,
//!   answers those it read and ends the stream with OK: a message without
//!   an answer then was not processed (the lane resends it as a unary
//!   request, which finds the leader gone as before streams);
//! - every message gets exactly one answer carrying its id; the answer's
//!   error carries the status code, message and `caskade-*` metadata the
//!   unary call would have answered, so the lane maps it as it maps a
//!   failed unary call.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{FORWARDED, KvService};
use crate::auth::Authenticator;
use crate::error::Error;
use crate::proto;
use crate::proto::forward_request::Request as Ask;
use crate::proto::forward_response::Reply;
use crate::server::metrics::Command;

/// Most messages of one stream served at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// The answers of one `Forward` stream.
pub type Answers = Pin<Box<dyn Stream<Item = Result<proto::ForwardResponse, Status>> + Send>>;

/// Who opened a stream, to check each of its messages as a unary call.
#[derive(Clone)]
pub(super) struct Caller {
    /// The node's users; `None`: authentication is off.
    auth: Option<Arc<Authenticator>>,
    /// The stream's `authorization` value, as sent at open.
    header: Option<Arc<[u8]>>,
    /// The peer's address (its failed logins are counted and limited).
    peer: Option<IpAddr>,
}

impl Caller {
    /// The caller of a forward wire connection (src/server/service/wire.rs)
    /// that greeted with `header` from `peer`.
    pub(super) fn new(
        auth: Option<Arc<Authenticator>>,
        header: Option<Arc<[u8]>>,
        peer: Option<IpAddr>,
    ) -> Caller {
        Caller { auth, header, peer }
    }

    /// What [`crate::auth::grpc::Guarded`] would answer a unary call of
    /// `method` with these credentials: `Ok` to serve it, else the refusal
    /// and how long the check took.
    pub(super) async fn check(
        &self,
        method: &str,
    ) -> Result<(), (crate::auth::AuthError, Duration)> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let started = Instant::now();
        let need = crate::auth::permissions::grpc(method);
        let checked = match &self.header {
            None => Err(crate::auth::AuthError::Missing),
            Some(h) => match auth.verify_basic(self.peer, h).await {
                Ok(p) => p.check(need, method),
                Err(e) => Err(e),
            },
        };
        checked.map_err(|e| {
            tracing::debug!(method, "forwarded message refused: {e}");
            (e, started.elapsed())
        })
    }
}

impl KvService {
    /// `Forward`: serves the stream's messages (see the module doc).
    pub(super) async fn forward_rpc(
        &self,
        request: Request<Streaming<proto::ForwardRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let timer = self.metrics.requests.start(Command::Forward);
        if let Some(refusal) = refused_by_failpoint() {
            timer.finish(&Err::<(), _>(Error::Internal(refusal.message().into())));
            return Err(refusal);
        }
        timer.finish(&crate::Result::Ok(()));
        let caller = Caller {
            auth: self.auth.clone(),
            header: request
                .metadata()
                .get("authorization")
                .map(|v| Arc::from(v.as_bytes())),
            peer: request.remote_addr().map(|a| a.ip()),
        };
        let mut stop = self.stopping.clone();
        let stopping = async move {
            if stop.wait_for(|s| *s).await.is_err() {
                // No shutdown signal (a service built without one).
                std::future::pending::<()>().await;
            }
        };
        let svc = self.clone();
        let answers = request
            .into_inner()
            .take_until(stopping)
            .map(move |m| serve(svc.clone(), caller.clone(), m))
            .buffer_unordered(MAX_IN_FLIGHT)
            // A transport error or an oversized message ends the stream.
            .scan(false, |ended, a| {
                let out = (!*ended).then_some(a);
                *ended = out.as_ref().is_some_and(Result::is_err);
                std::future::ready(out)
            });
        Ok(Response::new(Box::pin(answers)))
    }
}

impl KvService {
    /// A message refused by [`Caller::check`], counted as the unary call's
    /// refusal would be (src/auth/grpc.rs).
    pub(super) fn refused(
        &self,
        method: &str,
        e: &crate::auth::AuthError,
        took: Duration,
    ) -> Status {
        self.metrics.requests.refused(method, &Error::from(e), took);
        e.to_status()
    }
}

/// Serves one message of a stream: its answer, or the stream's error.
pub(super) async fn serve(
    svc: KvService,
    caller: Caller,
    message: Result<proto::ForwardRequest, Status>,
) -> Result<proto::ForwardResponse, Status> {
    let m = message?;
    forward_pause().await?;
    let reply = match m.request {
        Some(Ask::MGet(q)) => match caller.check("MGet").await {
            Ok(()) => svc
                .m_get_rpc(marked(q))
                .await
                .map(|r| Reply::MGet(r.into_inner())),
            Err((e, took)) => Err(svc.refused("MGet", &e, took)),
        },
        Some(Ask::MSet(q)) => match caller.check("MSet").await {
            Ok(()) => svc
                .m_set_rpc(marked(q))
                .await
                .map(|r| Reply::MSet(r.into_inner())),
            Err((e, took)) => Err(svc.refused("MSet", &e, took)),
        },
        None => Err(Status::from(Error::InvalidInput(
            "a forwarded message carries neither MGet nor MSet".into(),
        ))),
    };
    Ok(proto::ForwardResponse {
        id: m.id,
        reply: Some(reply.unwrap_or_else(|s| Reply::Error(to_message(&s)))),
    })
}

/// `q` as a unary request forwarded by another node.
fn marked<Q>(q: Q) -> Request<Q> {
    let mut r = Request::new(q);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// `status` as a message: code, text and `caskade-*` metadata.
pub(super) fn to_message(status: &Status) -> proto::ForwardError {
    proto::ForwardError {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata: crate::frames::status_metadata(status),
    }
}

/// The status a [`proto::ForwardError`] carries (metadata that is not
/// valid as such is left out).
pub(super) fn from_message(e: proto::ForwardError) -> Status {
    crate::frames::status_from_parts(e.code, e.message, e.metadata)
}

/// Test builds only: the failpoint `server::forward_refuse` (`return`)
/// makes this node answer `Forward` with UNIMPLEMENTED, as a node of a
/// version without it does (tests/resp/resp_cluster.rs).
pub(super) fn refused_by_failpoint() -> Option<Status> {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("server::forward_refuse", |_| Some(Status::unimplemented(
            "failpoint server::forward_refuse"
        )));
    }
    None
}

/// Test builds only: the failpoint `server::forward_break` (`return`)
/// ends the stream with an error when a message arrives, before it is
/// served (a stream broken mid-batch, tests/resp/resp_cluster.rs); the
/// failpoint `server::forward_slow` (`return(ms)`) holds each message
/// that long before it is served (a message in flight
/// at shutdown, tests/server/server_wire.rs).
async fn forward_pause() -> Result<(), Status> {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("server::forward_break", |_| Err(Status::unavailable(
            "the forward stream broke (failpoint server::forward_break)"
        )));
        let slow = || -> Option<u64> {
            fail::fail_point!("server::forward_slow", |ms| ms.and_then(|m| m.parse().ok()));
            None
        };
        if let Some(ms) = slow() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status survives the trip through a message: code, text and the
    /// metadata `Error::from` reads (here NOT_LEADER's partition and
    /// leader), and nothing else.
    #[test]
    fn a_status_survives_the_trip_through_a_message() {
        let mut s = Status::from(Error::NotLeader {
            partition: 3,
            leader: Some("10.0.0.2:7379".into()),
        });
        s.metadata_mut()
            .insert("other", tonic::metadata::MetadataValue::from_static("x"));
        let m = to_message(&s);
        assert_eq!(m.metadata.len(), 3, "{:?}", m.metadata);
        let back = from_message(m);
        assert_eq!(back.code(), s.code());
        assert_eq!(back.message(), s.message());
        assert!(back.metadata().get("other").is_none());
        assert_eq!(
            Error::from(back),
            Error::NotLeader {
                partition: 3,
                leader: Some("10.0.0.2:7379".into()),
            }
        );
    }
}
