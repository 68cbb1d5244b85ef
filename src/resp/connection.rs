//! One RESP client: read, cut into commands, execute, answer, repeat.
//!
//! Pipelining: every command of one read is executed and answered in the
//! order sent, all answers written with one `write_all`. Consecutive key
//! commands ([`commands::keys_of`]) form a batch whose futures are polled
//! together (`join_all`, which polls them in order): each write is offered
//! to its partition's group commit on its first poll, before any of them is
//! awaited, so the writes of a batch share fsyncs instead of paying one
//! each. A batch never holds two commands on the same key unless both are
//! reads: a command touching a key an earlier command of the batch wrote,
//! or writing a key an earlier one read, starts a new batch, which runs
//! after the previous one has answered. So for any key, commands run in
//! the order sent; commands on different keys within a batch may run in
//! any order, which no client can observe since none of their answers was
//! sent yet. Connection commands (`SELECT`, `HELLO`, `CLIENT`, ...) run
//! alone, in order. A batch's `GET key`s and plain `SET key value`s go to
//! the service together ([`commands::run_batch`]): in a cluster, those for
//! partitions another node leads are forwarded to it in one request.
//!
//! Nothing of a batch changes threads on its way: the connection task
//! parses, runs the reads (memory, or the page cache), submits the writes
//! (the batch's plain `SET`s of one partition together: one `write(2)` per
//! partition under `every_ms`/`never`, a shared group commit under
//! `always`) and writes every answer with one `write_all`.
//!
//! Per command the path allocates nothing of its own beyond the parser's
//! argument vector: [`commands::keys_of`] returns an iterator, the batch's
//! conflict check uses one foldhash map per read, cleared between batches,
//! the frames vector is kept across reads, and `WAIT`'s record of written
//! partitions is updated once per partition and batch. A read's last
//! command, when it is alone (every read without pipelining), skips the
//! conflict check, which it cannot fail, and, with authentication off, the
//! caller scope: the common case pays for no batch machinery.
//!
//! Authentication (src/resp/auth.rs): with users configured, a command
//! joins a batch only if the connection's user may run it; every other
//! command is answered alone, in order, through [`auth::gate`]. Commands
//! run with the connection's credentials as the caller's, so what they
//! forward to a leader is checked as this user.
//!
//! Invariants:
//! - a QUIT or a protocol error ends the connection after the answers of
//!   the commands before it are written; commands after it are dropped;
//! - a read never waits on another connection: each connection is its own
//!   task, and a slow client only delays itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::Shared;
use super::parse::{Frame, Limits, Parser};
use super::reply::Reply;
use super::{admin, auth, commands};

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// Largest single reservation for a frame still arriving (a large bulk
/// grows the buffer in steps of this, not all at once).
const MAX_RESERVE: usize = 1 << 20;

/// What one connection remembers.
pub struct Client {
    /// `CLIENT ID`.
    pub id: u64,
    /// The peer's address.
    pub peer: SocketAddr,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Bytes>,
    /// Protocol version: 2, or 3 after `HELLO 3`.
    pub resp: u8,
    /// When it connected.
    pub since: Instant,
    /// Partitions this connection wrote to (`WAIT`).
    pub written: HashSet<u32>,
    /// Set by `QUIT`: close once the answers are written.
    pub quit: bool,
    /// The logged-in user (`AUTH`, `HELLO ... AUTH`); `None` before.
    pub user: Option<Arc<crate::auth::Principal>>,
    /// The user's `authorization` value, sent with forwarded requests.
    pub credentials: Option<Arc<str>>,
}

/// Serves one connection until it closes, errs, idles out or the listener
/// shuts down. Returns `true` when the server ends it (`QUIT`, a protocol
/// error) and the caller should shut the stream down (FIN, TLS
/// `close_notify`). The caller owns the stream, so it can give the
/// connection's place back (`maxclients`, the per-address cap) before the
/// client sees the close: a client that reconnects at once is not refused
/// for its own old connection.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> bool {
    let mut client = Client {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        peer,
        name: None,
        lib_name: None,
        lib_ver: None,
        resp: 2,
        since: Instant::now(),
        written: HashSet::new(),
        quit: false,
        user: None,
        credentials: None,
    };
    let mut parser = Parser::new(Limits {
        max_bulk: shared.opts.proto_max_bulk_len,
        max_args: shared.opts.max_args,
    });
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let idle = (shared.opts.timeout > 0).then(|| Duration::from_secs(shared.opts.timeout));
    // The commands of one read; kept across reads (no allocation per read).
    let mut frames = Vec::new();
    // One wait for the shutdown signal for the connection's life: made
    // per read, it would join and leave the channel's waiter list (a
    // mutex every connection shares) once per command.
    let stop = stopped.wait_for(|s| *s);
    tokio::pin!(stop);
    loop {
        let want = parser.need().saturating_sub(buf.len());
        buf.reserve(want.clamp(READ_CHUNK, MAX_RESERVE));
        let read = async {
            match idle {
                Some(t) => tokio::time::timeout(t, stream.read_buf(&mut buf))
                    .await
                    .unwrap_or(Ok(0)),
                None => stream.read_buf(&mut buf).await,
            }
        };
        let n = tokio::select! {
            r = read => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%peer, "RESP read failed: {e}");
                    return false;
                }
            },
            _ = &mut stop => return false,
        };
        if n == 0 {
            return false; // EOF (or idle timeout): a partial frame is dropped.
        }
        let mut error = None;
        loop {
            match parser.next(&mut buf) {
                Ok(Some(f)) if f.is_empty() => {}
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        execute(shared, &mut client, &frames, &mut out).await;
        // Now: the frames are slices of `buf`'s block, and while any is
        // alive the next `reserve` cannot reuse that block (it would
        // allocate a new one on every read).
        frames.clear();
        if let Some(e) = &error {
            tracing::debug!(%peer, "RESP protocol error: {e}");
            shared.error_replies.fetch_add(1, Ordering::Relaxed);
            Reply::err(e).encode(client.resp, &mut out);
        }
        if let Err(e) = stream.write_all(&out).await {
            tracing::debug!(%peer, "RESP write failed: {e}");
            return false;
        }
        out.clear();
        if error.is_some() || client.quit {
            return true;
        }
    }
}

/// Executes `frames` in order, appending each answer to `out` (see the
/// module doc for how key commands are batched).
async fn execute(shared: &Shared, client: &mut Client, frames: &[Frame], out: &mut BytesMut) {
    let mut i = 0;
    let mut batch = Batch::default();
    while i < frames.len() && !client.quit {
        batch.clear();
        let mut j = i;
        if i + 1 == frames.len() {
            // The read's last command alone (every read without
            // pipelining): nothing to conflict with, no key set to keep.
            if auth::passes(shared, client, &frames[i]) && commands::keys_of(&frames[i]).is_some() {
                j += 1;
            }
        } else {
            while j < frames.len()
                && auth::passes(shared, client, &frames[j])
                && batch.admit(&frames[j])
            {
                j += 1;
            }
        }
        let caller = client.credentials.clone();
        if j == i {
            let reply = match auth::gate(shared, client, &frames[i]).await {
                Some(reply) => reply,
                None => {
                    crate::auth::with_caller(caller, admin::run(shared, client, &frames[i])).await
                }
            };
            shared.commands.fetch_add(1, Ordering::Relaxed);
            if reply.is_error() {
                shared.error_replies.fetch_add(1, Ordering::Relaxed);
            }
            reply.encode(client.resp, out);
            i += 1;
            continue;
        }
        let batch_of = commands::run_batch(shared, &frames[i..j]);
        // No credentials (authentication off): no caller scope to enter on
        // every poll; a connection's task runs in no outer scope, so what
        // the batch sees is the same (`forwarded_credentials` is `None`).
        let replies = match caller {
            Some(_) => crate::auth::with_caller(caller, batch_of).await,
            None => batch_of.await,
        };
        shared.commands.fetch_add((j - i) as u64, Ordering::Relaxed);
        // Partitions below 128 already noted for this batch.
        let mut noted = 0u128;
        let mut errors = 0;
        for (f, reply) in frames[i..j].iter().zip(replies) {
            if reply.is_error() {
                errors += 1;
            } else if let Some((keys, true)) = commands::keys_of(f) {
                for k in keys {
                    let p = shared.node_partition(k);
                    let bit = 1u128.checked_shl(p).unwrap_or(0);
                    if noted & bit == 0 {
                        noted |= bit;
                        client.written.insert(p);
                    }
                }
            }
            reply.encode(client.resp, out);
        }
        if errors > 0 {
            shared.error_replies.fetch_add(errors, Ordering::Relaxed);
        }
        i = j;
    }
}

/// The keys a batch touches so far, and whether any command wrote each.
/// Kept across the batches of one read (its memory is reused).
#[derive(Default)]
struct Batch<'a> {
    /// Key -> written by a command of the batch. foldhash, randomly
    /// seeded: a few ns per 16-byte key, where SipHash took about 20 and a
    /// linear scan of a 16-command pipeline about 15 `memcmp`s per command.
    keys: HashMap<&'a [u8], bool, foldhash::fast::RandomState>,
}

impl<'a> Batch<'a> {
    /// Empties the batch, keeping its memory.
    fn clear(&mut self) {
        self.keys.clear();
    }

    /// Whether a command of the batch wrote `key` (`None`: not touched).
    fn written(&self, key: &[u8]) -> Option<bool> {
        self.keys.get(key).copied()
    }

    /// Adds `frame` if it is a key command that does not conflict with the
    /// batch (see the module doc); false leaves the batch unchanged.
    fn admit(&mut self, frame: &'a [Bytes]) -> bool {
        let Some((keys, write)) = commands::keys_of(frame) else {
            return false;
        };
        let conflict = keys
            .clone()
            .any(|k| self.written(k).is_some_and(|w| w || write));
        if conflict {
            return false;
        }
        for k in keys {
            *self.keys.entry(k).or_insert(false) |= write;
        }
        true
    }
}

impl Shared {
    /// The partition of `key`.
    pub(super) fn node_partition(&self, key: &[u8]) -> u32 {
        crate::cluster::partition_for(key, self.node.partition_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Frame {
        args.iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    /// Reads of one key share a batch; a write after a read or any command
    /// after a write of the same key does not join; non-key commands never
    /// join. The same after 40 keys, and after `clear` nothing is
    /// remembered.
    #[test]
    fn batch_admits_only_commands_without_conflict() {
        for n in [3usize, 40] {
            let frames: Vec<Frame> = (0..n)
                .map(|i| cmd(&["SET", &format!("k{i}"), "v"]))
                .chain([
                    cmd(&["get", "r"]),
                    cmd(&["GET", "r"]),
                    cmd(&["mget", "r", "x"]),
                    cmd(&["set", "r", "v"]),
                    cmd(&["get", "k1"]),
                    cmd(&["del", "k0"]),
                    cmd(&["mset", "y", "1", "k2", "2"]),
                    cmd(&["ping"]),
                ])
                .collect();
            let mut batch = Batch::default();
            for f in &frames[..n] {
                assert!(batch.admit(f), "{n}: distinct keys");
            }
            let admitted: Vec<bool> = frames[n..].iter().map(|f| batch.admit(f)).collect();
            assert_eq!(
                admitted,
                [true, true, true, false, false, false, false, false],
                "{n} keys before"
            );
            assert_eq!(batch.written(b"k0"), Some(true));
            assert_eq!(batch.written(b"x"), Some(false));
            assert_eq!(batch.written(b"y"), None, "a refused command notes nothing");
            batch.clear();
            assert_eq!(batch.written(b"k0"), None);
            assert!(batch.admit(&frames[n + 3]), "{n}: after clear");
        }
    }
}
