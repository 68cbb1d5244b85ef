//! A lane's connection to its leader: the batches of a lane
//! (src/server/service/coalesce.rs) travel as messages of one long-lived
//! connection instead of one unary `MGet` / `MSet` call each (HEADERS,
//! DATA and trailers, and a spawned task and a tower stack on the leader).
//! Without TLS that is the forward wire (src/server/service/wire.rs: its
//! own TCP connection, no HTTP/2); with TLS, and for
//! [`RETRY_STREAM_AFTER`] after a leader did not speak the wire or
//! refused the lane's credentials at its greeting, a `Forward` stream
//! (proto/kv.proto), one HTTP/2 DATA frame each way.
//!
//! The wire's rules follow the stream's, below: a leader that does not
//! speak it, or refuses it with `UNIMPLEMENTED` / `PERMISSION_DENIED`,
//! gets the stream (then unary calls, as the stream's rules say); a
//! leader that cannot be reached is answered `NOT_LEADER` naming it,
//! without a stream or unary attempt; credentials refused at the greeting
//! are the batch's answer, as at a stream's open, and the lane then uses
//! its stream for [`RETRY_STREAM_AFTER`] (whose open the leader refuses
//! alike while the nodes disagree on `auth:`, over one HTTP/2 connection
//! rather than a TCP connection per batch); a batch the leader ended
//! the wire without processing (its end frame) is sent as the unary
//! request; a wire that closes after a batch was sent is that batch's
//! failure, which may or may not have been applied.
//!
//! Invariants of the stream:
//! - a lane's stream is opened lazily, by the lane's first batch, with the
//!   metadata of a unary forward (`caskade-forwarded`, the caller's
//!   `authorization`), and carries one message at a time (a lane has one
//!   batch on the way);
//! - a batch that was not sent on a stream (none could be opened, the
//!   open stream was found ended, or the leader ended it OK without
//!   answering, which proves the message unprocessed) is sent as the
//!   unary request instead: its answer is exactly the unary one (a leader
//!   that could not be reached at all is answered as the unary call
//!   would be, `NOT_LEADER` naming it, without a second attempt; a leader
//!   that refused the stream's credentials, `UNAUTHENTICATED`, with that
//!   refusal: the unary call, with the same credentials from the same
//!   address, would be refused alike, one more failed login there);
//! - once a message was sent, a broken stream (an error, a reset, an
//!   answer with another id) is that batch's failure, mapped as a failed
//!   unary call whose request may have been processed: never
//!   `UNREACHABLE`/`NOT_LEADER` (nothing is resent), so the lane's rules
//!   for a failed `MGet` / `MSet` apply unchanged; the stream is dropped
//!   and the next batch opens a new one;
//! - a leader that refuses the stream with UNIMPLEMENTED (an older
//!   version) or PERMISSION_DENIED (an older version, to which `Forward`
//!   is an unknown method needing `admin`) gets unary requests from this
//!   lane for [`RETRY_STREAM_AFTER`], then the stream is tried again; only
//!   this lane (one leader, one caller's credentials) switches, and only
//!   on a refused open: a refused message (e.g. `PERMISSION_DENIED` for a
//!   user the leader lets do less) is that batch's answer, and the stream
//!   stays open (tests/security/security_resp_cluster.rs).

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::wire::{Exchanged, Opened, Wire};
use super::{FORWARD_TIMEOUT, KvService, Leader, forward, forward_failure};
use crate::error::Error;
use crate::proto;
use crate::proto::forward_request::Request as Ask;
use crate::proto::forward_response::Reply;

/// How long a lane whose leader refused `Forward` sends unary requests
/// before it tries a stream again (a rolling upgrade restarts the leader).
pub const RETRY_STREAM_AFTER: Duration = Duration::from_secs(30);

/// A lane's connection to its leader: its wire connection or stream, or
/// why there is none.
#[derive(Default)]
pub(super) struct Conn {
    /// The open wire connection, if any (src/server/service/wire.rs).
    wire: Option<Wire>,
    /// Until then, no wire (the leader does not speak it, or refused
    /// the credentials at the wire's greeting).
    stream_until: Option<Instant>,
    /// The open stream, if any.
    open: Option<Open>,
    /// Until then, unary requests only (the leader refused the stream).
    unary_until: Option<Instant>,
}

impl Conn {
    /// Drops the open wire connection and stream (the next batch opens
    /// new ones).
    fn close(&mut self) {
        self.wire = None;
        self.open = None;
    }
}

/// An open `Forward` stream.
struct Open {
    /// Messages to the leader (piped into the request body by hyper).
    tx: mpsc::Sender<proto::ForwardRequest>,
    /// The leader's answers.
    rx: Streaming<proto::ForwardResponse>,
    /// The id of the next message.
    next_id: u64,
}

impl KvService {
    /// Sends `ask` to `leader` as one message of `conn`'s wire connection
    /// or stream (opened first if none is open) and reads its answer,
    /// `pick`ed out of the reply (`None` from `pick`: an answer of the
    /// wrong kind). `None`: nothing was processed (see the module doc);
    /// send the unary request.
    pub(super) async fn over_stream<R>(
        &self,
        conn: &mut Conn,
        leader: &Leader,
        ask: Ask,
        pick: fn(Reply) -> Option<R>,
    ) -> Option<crate::Result<R>> {
        let answer = match self.over_wire(conn, leader, ask).await {
            Ok(answer) => answer?,
            Err(ask) => self.stream_exchange(conn, leader, ask).await?,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Some(Err(e)),
        };
        Some(match answer {
            Some(Reply::Error(e)) => Err(forward_failure(leader, forward::from_message(e))),
            Some(r) => pick(r).ok_or_else(|| {
                conn.close();
                Error::Internal(format!(
                    "the leader at {} answered a forwarded message with the wrong kind of \
                     reply",
                    leader.addr
                ))
            }),
            None => {
                conn.close();
                Err(Error::Internal(format!(
                    "the leader at {} answered a forwarded message with no reply",
                    leader.addr
                )))
            }
        })
    }

    /// Sends `ask` over `conn`'s wire connection (opened first if none is
    /// open). `Err(ask)`: not sent, use the stream (no wire with TLS, or
    /// the leader does not speak it); `Ok(None)`: not processed, send the
    /// unary request; `Ok(Some(..))`: the reply, or the failure.
    async fn over_wire(
        &self,
        conn: &mut Conn,
        leader: &Leader,
        ask: Ask,
    ) -> Result<Option<crate::Result<Option<Reply>>>, Ask> {
        if crate::tls::node_tls()
            || conn.stream_until.is_some_and(|t| Instant::now() < t)
            || super::wire::off_by_failpoint()
        {
            return Err(ask);
        }
        // Readable before anything was asked: ended (idle timeout, restart).
        if let Some(w) = &mut conn.wire
            && w.ended()
        {
            conn.wire = None;
        }
        if conn.wire.is_none() {
            let credentials = crate::auth::forwarded_credentials();
            match Wire::open(&leader.addr, credentials.as_deref().map(str::as_bytes)).await {
                Opened::Wire(w) => {
                    tracing::debug!("opened a forward wire to the leader at {}", leader.addr);
                    conn.wire = Some(w);
                    // A stream kept from a time without the wire: closed,
                    // not holding a stream slot at the leader.
                    conn.open = None;
                }
                Opened::Refused(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unimplemented | tonic::Code::PermissionDenied
                    ) =>
                {
                    self.no_wire(conn, leader, s.message());
                    return Err(ask);
                }
                // Credentials refused: what the stream's open (and the
                // unary call) would answer. The next batches try the
                // stream: refused alike while the nodes disagree, but
                // without a TCP connection to the leader per batch.
                Opened::Refused(s) if s.code() == tonic::Code::Unauthenticated => {
                    tracing::debug!(
                        "the leader at {} refused a forward wire's credentials ({}); a forward \
                         stream for {} s",
                        leader.addr,
                        s.message(),
                        RETRY_STREAM_AFTER.as_secs()
                    );
                    conn.stream_until = Some(Instant::now() + RETRY_STREAM_AFTER);
                    return Ok(Some(Err(forward_failure(leader, s))));
                }
                // Any other refusal of the greeting: that batch's answer.
                Opened::Refused(s) => {
                    return Ok(Some(Err(forward_failure(leader, s))));
                }
                Opened::NotSpoken(why) => {
                    self.no_wire(conn, leader, &why);
                    return Err(ask);
                }
                // Nothing sent: what the unary call answers an unreachable
                // leader, without another connection attempt.
                Opened::Unreachable(why) => {
                    tracing::debug!("the leader at {} is unreachable: {why}", leader.addr);
                    return Ok(Some(Err(Error::NotLeader {
                        partition: leader.partition,
                        leader: Some(leader.addr.clone()),
                    })));
                }
            }
        }
        let Some(w) = conn.wire.as_mut() else {
            return Err(ask);
        };
        Ok(match w.exchange(ask).await {
            Err(ask) => {
                conn.wire = None;
                return Err(ask);
            }
            Ok(Exchanged::Answer(a)) => Some(Ok(a.reply)),
            Ok(Exchanged::Unprocessed) => {
                conn.wire = None;
                None
            }
            Ok(Exchanged::Broken(why)) => {
                conn.wire = None;
                Some(Err(Error::Unavailable(format!(
                    "the forward connection to {} broke mid-request ({why}); the request may \
                     or may not have been applied",
                    leader.addr
                ))))
            }
        })
    }

    /// Records that `leader` does not speak the wire: `conn` uses its
    /// stream for [`RETRY_STREAM_AFTER`].
    fn no_wire(&self, conn: &mut Conn, leader: &Leader, why: &str) {
        tracing::info!(
            "the leader at {} does not take a forward wire ({why}); a forward stream for {} s",
            leader.addr,
            RETRY_STREAM_AFTER.as_secs()
        );
        conn.stream_until = Some(Instant::now() + RETRY_STREAM_AFTER);
    }

    /// Sends `ask` as one message of `conn`'s stream (opened first if none
    /// is open) and reads its reply. `None`: not processed, send the unary
    /// request.
    async fn stream_exchange(
        &self,
        conn: &mut Conn,
        leader: &Leader,
        ask: Ask,
    ) -> Option<crate::Result<Option<Reply>>> {
        if conn.unary_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        // An answer, an end or an error before anything was asked: the
        // stream is over (e.g. the leader restarted meanwhile).
        if let Some(o) = &mut conn.open
            && o.rx.message().now_or_never().is_some()
        {
            conn.open = None;
        }
        if conn.open.is_none() {
            match self.open_stream(conn, leader).await {
                Ok(o) => conn.open = Some(o),
                Err(answer) => return answer,
            }
        }
        let o = conn.open.as_mut()?;
        let id = o.next_id;
        o.next_id += 1;
        let message = proto::ForwardRequest {
            id,
            request: Some(ask),
        };
        if o.tx.send(message).await.is_err() {
            // The body's pipe is gone: the message never left.
            conn.open = None;
            return None;
        }
        match o.rx.message().await {
            Ok(Some(a)) if a.id == id => Some(Ok(a.reply)),
            // Ended OK: the leader answers every message it read first.
            Ok(None) => {
                conn.open = None;
                None
            }
            Ok(Some(a)) => {
                conn.open = None;
                Some(Err(Error::Unavailable(format!(
                    "the leader at {} answered forwarded message {} instead of {id}; the \
                     request may or may not have been applied",
                    leader.addr, a.id
                ))))
            }
            Err(status) => {
                conn.open = None;
                Some(Err(broken(leader, status)))
            }
        }
    }

    /// Opens a stream to `leader` with the caller's credentials. When it
    /// cannot: `Err(Some(e))` if the leader could not be reached (`e` is
    /// what the unary call would answer: `NOT_LEADER` naming it), else
    /// `Err(None)`: send the unary call (and `conn` is unary-only for a
    /// while if the leader refused the method).
    async fn open_stream<R>(
        &self,
        conn: &mut Conn,
        leader: &Leader,
    ) -> Result<Open, Option<crate::Result<R>>> {
        let Ok(mut client) = self.peer(&leader.addr) else {
            return Err(None);
        };
        let (tx, rx) = mpsc::channel(1);
        let request = super::forwarded_request(tokio_stream::wrappers::ReceiverStream::new(rx));
        match client.forward(request).await {
            Ok(r) => {
                tracing::debug!("opened a forward stream to the leader at {}", leader.addr);
                Ok(Open {
                    tx,
                    rx: r.into_inner(),
                    next_id: 0,
                })
            }
            Err(s) => {
                if matches!(
                    s.code(),
                    tonic::Code::Unimplemented | tonic::Code::PermissionDenied
                ) {
                    tracing::info!(
                        "the leader at {} refused a forward stream ({}); unary forwards for {} s",
                        leader.addr,
                        s.message(),
                        RETRY_STREAM_AFTER.as_secs()
                    );
                    conn.unary_until = Some(Instant::now() + RETRY_STREAM_AFTER);
                    return Err(None);
                }
                // Not reachable (nothing sent): the unary call's answer
                // without a second connection attempt (another connect
                // timeout to a leader that does not answer). Credentials
                // refused: the unary call's answer too, without counting
                // a second failed login against this node's address there.
                match forward_failure(leader, s) {
                    e @ (Error::NotLeader { .. } | Error::Unauthenticated(_)) => Err(Some(Err(e))),
                    _ => Err(None),
                }
            }
        }
    }
}

/// The failure of a message sent on a stream that then broke: the client's
/// mapping, except that nothing proves the message unprocessed, so never
/// `UNREACHABLE` (which a forward would answer as `NOT_LEADER`, resent).
fn broken(leader: &Leader, status: Status) -> Error {
    let addr = leader.addr.as_str();
    match crate::client::map_status(addr, FORWARD_TIMEOUT, status) {
        Error::Unreachable { reason, .. } => Error::Unavailable(format!(
            "the forward stream to {addr} broke mid-request ({reason}); the request may or may \
             not have been applied"
        )),
        e => e,
    }
}
