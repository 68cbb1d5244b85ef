//! Telling a wire connection (src/frames.rs) from gRPC on a plaintext
//! listener: the forward wire on the client port, the fetch wire on the
//! replication port.
//!
//! Invariants:
//! - a connection is told apart by its first byte, peeked through
//!   [`Conn`] (so under the handshake deadline and eviction, as a read):
//!   [`WIRE_FIRST`] (no HTTP/2 client, whose preface starts `PRI`, nor
//!   TLS, `0x16`, sends it) goes to the wire's server, any other byte
//!   hands the connection to tonic untouched;
//! - a wire's whole preface and greeting are read through [`Conn`] too
//!   ([`greeted`]: the handshake deadline until its handshake bytes are
//!   in, then the idle timeout, as an HTTP/2 connection after its
//!   preface); other bytes than the preface close the connection;
//! - from the end of its greeting to its end a wire connection counts as
//!   busy, as an HTTP/2 connection with a request open does: never closed
//!   as idle nor evicted for a newcomer;
//! - once the listener's stop signal fires it accepts nothing more, and a
//!   connection not yet told apart is closed; with a [`Drain`] every task
//!   is tracked by its tracker and dropped when its token is cancelled
//!   (the client listener drains and aborts them at shutdown); without
//!   one, as on the replication listener, the served connections end on
//!   the stop signal themselves (src/replication/fetch_wire.rs);
//! - never used with TLS: a plaintext wire would bypass the listener's
//!   certificates.

use std::io;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{Active, Conn};
use crate::frames::{Frames, GREETING_MAX, codec, keepalive};

/// The first byte of every wire's preface (`CSKD...`).
pub const WIRE_FIRST: u8 = b'C';

/// How a listener ends its wire tasks at shutdown: it waits on `tasks`,
/// and cancels `abort` to drop the ones still running past its grace.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Every task of the listener's connections, from accept to end.
    pub tasks: TaskTracker,
    /// Cancelled to drop them.
    pub abort: CancellationToken,
}

impl Drain {
    /// Closes the tracker and waits until no task is left running.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs `task` tracked and until `abort` is cancelled, or untracked
    /// to its end without a drain.
    fn spawn(drain: &Option<Drain>, task: impl Future<Output = ()> + Send + 'static) {
        match drain {
            Some(d) => {
                let abort = d.abort.clone();
                d.tasks.spawn(async move {
                    tokio::select! {
                        () = task => {}
                        () = abort.cancelled() => {}
                    }
                });
            }
            None => {
                tokio::spawn(task);
            }
        }
    }
}

/// The listener's connections for tonic, with wire connections (first
/// byte [`WIRE_FIRST`]) taken out and handed to `serve`; each accepted
/// connection's task runs under `drain` (see [`Drain`]) if one is given.
/// Accepting stops when `stop` turns true.
pub fn sniffed<F, Fut>(
    incoming: impl Stream<Item = io::Result<Conn>> + Send + 'static,
    stop: watch::Receiver<bool>,
    drain: Option<Drain>,
    serve: F,
) -> impl Stream<Item = io::Result<Conn>>
where
    F: Fn(Conn) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(16);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let mut shutdown = std::pin::pin!(stopping(stop.clone()));
        loop {
            // Shutting down, or tonic dropped its end: stop accepting (the
            // listener closes with `incoming`).
            let next = tokio::select! {
                next = incoming.next() => next,
                () = tx.closed() => None,
                () = &mut shutdown => None,
            };
            let Some(next) = next else { break };
            let mut conn = match next {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    continue;
                }
            };
            let (tx, stop, serve) = (tx.clone(), stop.clone(), serve.clone());
            // Under the drain from here, so it also waits for connections
            // still being told apart.
            Drain::spawn(&drain, async move {
                // Under the handshake deadline and eviction, as a read; a
                // connection still silent at shutdown is closed (tonic
                // takes no new ones then either).
                let first = tokio::select! {
                    first = conn.peek_first() => first,
                    () = stopping(stop) => return,
                };
                match first {
                    Ok(Some(WIRE_FIRST)) => serve(conn).await,
                    Ok(Some(_)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(None) | Err(_) => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A wire connection past its preface and greeting.
pub struct Greeted {
    /// The framed connection; frames of at most [`GREETING_MAX`] bytes
    /// until the server raises the limit.
    pub frames: Frames<Conn>,
    /// The greeting.
    pub greeting: Bytes,
    /// The connection counts as busy while this lives.
    pub busy: Active,
}

/// Reads `preface` and the greeting from `conn` (under its handshake
/// deadline); `None` when the bytes are not that preface, or the
/// connection ended first. The connection is then marked handshaken and
/// busy.
pub async fn greeted(mut conn: Conn, preface: &[u8; 8]) -> Option<Greeted> {
    let mut got = [0u8; 8];
    conn.read_exact(&mut got).await.ok()?;
    if &got != preface {
        return None;
    }
    keepalive(conn.stream());
    let mut frames = Framed::new(conn, codec(GREETING_MAX));
    let greeting = frames.next().await?.ok()?;
    let state = frames.get_ref().state().clone();
    state.mark_handshaken();
    let busy = state.begin();
    Some(Greeted {
        frames,
        greeting: greeting.freeze(),
        busy,
    })
}

/// Completes once `stop` turns true (never when its sender is gone
/// without it).
pub async fn stopping(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}
