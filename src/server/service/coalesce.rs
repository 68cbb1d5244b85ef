//! Forwards of many RESP connections to one leader, coalesced: the `GET`s
//! and plain `SET`s that [`KvService::get_many`] / [`KvService::set_many`]
//! must forward join a lane per leader (and per caller's credentials), and
//! the lane sends what waits there as one `MGet` / `MSet`, a message of
//! the lane's connection to that leader (`lane_stream.rs`: the forward
//! wire, `wire.rs`, or a `Forward` stream; a unary call to a leader that
//! serves neither).
//!
//! Why: without it every forwarded command of every connection was its own
//! gRPC request (tonic's buffer task, the HTTP/2 connection tasks of both
//! nodes, a spawned request task on the leader, about 6 system calls and 5
//! task wake-ups across threads), and at 50 connections through three
//! nodes that cost more CPU than the commands themselves (docs/BENCHMARKS.md,
//! "Cluster latency (session 10)", "Forward streams (session 11)"). Now a
//! lane sends one batch at a time: a command arriving while its lane's
//! batch is on the way waits for it and leaves with the next one, together
//! with every other command that came meanwhile. An idle lane sends at
//! once, from the task of the command that found it idle (no timer, no
//! spawned task: that cost ~20 µs p50 on an idle cluster).
//!
//! Invariants:
//! - answers are exactly those of the uncoalesced forwards
//!   (src/server/service/batch.rs): a failed `MGet` falls back to one
//!   forwarded `Get` per key, each answered on its own, unless the leader
//!   refused the credentials (`UNAUTHENTICATED`) or the permission
//!   (`PERMISSION_DENIED`: `Get` needs the read permission `MGet` needs):
//!   then that refusal is every key's answer, as each `Get` would be
//!   refused alike (and, for credentials, count one more failed login
//!   against this node's address at the leader, so one user's batch
//!   could lock out every user's forwards); an `MSet` refused
//!   with `NOT_LEADER` (the leader checks every key's partition before
//!   writing any, so nothing was written) falls back to one forwarded `Set`
//!   per key; any other `MSet` failure is every key's answer (an unknown
//!   outcome, as that of one failed forwarded `Set`); a batch whose stream
//!   broke after it was sent is such a failure (`lane_stream.rs`);
//! - commands of different callers' credentials never share a request or
//!   a stream (the leader checks the stream's one `authorization`);
//! - a batch carries at most `limits.max_keys_per_request` (and
//!   [`MAX_KEYS`]) keys, and at most [`MAX_BYTES`] of keys and values
//!   unless it is a single command, so it fits the leader's limits
//!   whenever the commands alone do;
//! - a lane has at most one batch on the way, and one pump while it has
//!   commands waiting. The command that finds the lane idle pumps it from
//!   its own task until its own commands are answered; if commands still
//!   wait then, the pump goes on in a spawned task (one per busy period)
//!   so that caller is not held by others' load;
//! - a dropped caller never strands waiting commands: a pump its task
//!   drops unfinished goes on in a spawned task (the batch on the way
//!   included); a pump that dies (panic, runtime shutdown) answers what
//!   waits with an error instead of leaving it waiting, and the next
//!   command starts a new pump;
//! - a command whose caller stopped waiting (its connection task was
//!   dropped) is not sent;
//! - a lane idle for [`LANE_IDLE`] (nothing queued since, nothing waiting
//!   or on the way) is removed, its stream closed, when the next new lane
//!   is made: the lanes, and the streams they hold open at each leader
//!   (`server.max_streams_per_connection`), are bounded by the leaders
//!   and credentials in use, not by all ever seen.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::lane_stream::Conn;
use super::{KvService, Leader};
use crate::error::Error;
use crate::proto;
use crate::proto::forward_request::Request as Ask;
use crate::proto::forward_response::Reply;

/// Most keys one coalesced forward carries.
pub const MAX_KEYS: usize = 256;

/// Most key and value bytes one coalesced forward carries (a single
/// command may carry more: its own limits apply).
pub const MAX_BYTES: usize = 32 << 10;

/// A lane with nothing to send for this long is removed, its stream
/// closed, the next time a lane is made.
pub const LANE_IDLE: Duration = Duration::from_secs(60);

/// One command waiting in a lane.
pub(super) struct Item<T> {
    /// The key.
    key: Bytes,
    /// The value (`SET`); empty for `GET`.
    value: Bytes,
    /// The leader named by the local refusal.
    leader: Leader,
    /// Where its answer goes.
    answer: oneshot::Sender<crate::Result<T>>,
    /// Its place in the lane's arrival order (set when queued).
    ticket: u64,
}

/// The commands waiting for one leader, whether a pump runs, the stream.
pub(super) struct Lane<T> {
    /// Queue, pump flag and idle connection, under one lock.
    state: Mutex<LaneState<T>>,
}

/// What a lane's lock guards.
struct LaneState<T> {
    /// Commands not sent yet, in arrival order.
    queue: Vec<Item<T>>,
    /// A pump runs (and will look at the queue again).
    pumping: bool,
    /// The ticket of the next command queued.
    tickets: u64,
    /// The lane's stream, while no pump holds it.
    conn: Conn,
    /// When commands last joined the queue.
    used: Instant,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            state: Mutex::new(LaneState {
                queue: Vec::new(),
                pumping: false,
                tickets: 0,
                conn: Conn::default(),
                used: Instant::now(),
            }),
        }
    }
}

impl<T> Lane<T> {
    /// Queues `items`; when the lane was idle, the caller must pump it:
    /// the connection and the ticket of the caller's last command.
    fn push(&self, items: Vec<Item<T>>) -> Option<(Conn, u64)> {
        let mut s = self.state.lock();
        s.used = Instant::now();
        for mut it in items {
            it.ticket = s.tickets;
            s.tickets += 1;
            s.queue.push(it);
        }
        let last = s.tickets.wrapping_sub(1);
        (!std::mem::replace(&mut s.pumping, true)).then(|| (std::mem::take(&mut s.conn), last))
    }

    /// The next batch (at most `max_keys` keys, [`MAX_BYTES`] bytes unless
    /// one command), dropping commands nobody waits for; `None`, and the
    /// pump stops, leaving `conn` to the lane, when nothing waits.
    fn next(&self, max_keys: usize, conn: &mut Conn) -> Option<Vec<Item<T>>> {
        let mut s = self.state.lock();
        s.queue.retain(|it| !it.answer.is_closed());
        if s.queue.is_empty() {
            s.pumping = false;
            s.conn = std::mem::take(conn);
            return None;
        }
        let mut bytes = 0usize;
        let mut n = 0;
        for it in &s.queue {
            let b = it.key.len() + it.value.len();
            if n > 0 && (n >= max_keys || bytes.saturating_add(b) > MAX_BYTES) {
                break;
            }
            bytes = bytes.saturating_add(b);
            n += 1;
        }
        Some(s.queue.drain(..n).collect())
    }

    /// Whether nothing was queued since `since` and nothing waits or is
    /// on the way: the lane can go.
    fn idle_since(&self, since: Instant) -> bool {
        let s = self.state.lock();
        !s.pumping && s.queue.is_empty() && s.used <= since
    }

    /// Whether commands wait (the pump must go on); when none does, the
    /// pump stops, leaving `conn` to the lane.
    fn waiting(&self, conn: &mut Conn) -> bool {
        let mut s = self.state.lock();
        s.queue.retain(|it| !it.answer.is_closed());
        if s.queue.is_empty() {
            s.pumping = false;
            s.conn = std::mem::take(conn);
            return false;
        }
        true
    }
}

/// Answers what waits in a lane with an error if its pump dies (dropped
/// while armed): the waiters get "abandoned", the next command starts a
/// new pump (and opens a new stream).
struct PumpGuard<T> {
    /// The pump's lane.
    lane: Arc<Lane<T>>,
    /// Still running (disarmed when the pump ends normally).
    armed: bool,
}

impl<T> Drop for PumpGuard<T> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.lane.state.lock();
            s.pumping = false;
            s.queue.clear();
        }
    }
}

/// A pump run by the task of the command that found its lane idle. If
/// that task drops it unfinished (its connection closed), the rest runs
/// on a spawned task: the batch on the way and the commands waiting are
/// answered as if nothing happened.
struct Inline {
    /// The pump's rest; `None` once it has finished.
    rest: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Future for Inline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(f) = &mut self.rest {
            std::task::ready!(f.as_mut().poll(cx));
            self.rest = None;
        }
        Poll::Ready(())
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(rest);
        }
        // Without a runtime `rest` is dropped: its guard answers the
        // waiters with an error.
    }
}

/// The key of a lane: the leader's address and the caller's credentials.
type LaneKey = (String, Option<Arc<str>>);

/// Removes the lanes idle for [`LANE_IDLE`] at `now` (their streams close
/// as their connections drop). A caller that took such a lane out of the
/// map just before still pumps it; later callers get a new lane.
fn sweep<T>(lanes: &mut HashMap<LaneKey, Arc<Lane<T>>>, now: Instant) {
    if let Some(since) = now.checked_sub(LANE_IDLE) {
        lanes.retain(|_, lane| !lane.idle_since(since));
    }
}

/// Every lane of a service (shared by its clones).
#[derive(Default)]
pub struct Lanes {
    /// `GET` lanes.
    gets: Mutex<HashMap<LaneKey, Arc<Lane<Option<Bytes>>>>>,
    /// `SET` lanes.
    sets: Mutex<HashMap<LaneKey, Arc<Lane<()>>>>,
}

/// A command kind that can be coalesced: where its lanes are and how a
/// batch is sent.
pub(super) trait Kind: Sized + Send + 'static {
    /// The lanes of this kind.
    fn lanes(l: &Lanes) -> &Mutex<HashMap<LaneKey, Arc<Lane<Self>>>>;
    /// Sends `batch` (one leader) over `conn` and answers each command.
    fn send(
        svc: &KvService,
        conn: &mut Conn,
        batch: Vec<Item<Self>>,
    ) -> impl Future<Output = ()> + Send;
}

/// The answer of a command whose batch was abandoned (its pump died).
fn abandoned() -> Error {
    Error::Unavailable(
        "the forward to the partition's leader was abandoned; a write may or may not be applied"
            .into(),
    )
}

impl KvService {
    /// Forwards each `(key, value, leader)` through the lane of its leader
    /// (see the module doc); the answers in order.
    pub(super) async fn coalesced<T: Kind>(
        &self,
        items: Vec<(Bytes, Bytes, Leader)>,
    ) -> Vec<crate::Result<T>> {
        if items.is_empty() {
            // Every key was answered here (standalone, or this node leads).
            return Vec::new();
        }
        let credentials = crate::auth::forwarded_credentials();
        let mut answers = Vec::with_capacity(items.len());
        let mut by_leader: HashMap<String, Vec<Item<T>>> = HashMap::new();
        for (key, value, leader) in items {
            let (answer, rx) = oneshot::channel();
            answers.push(rx);
            by_leader
                .entry(leader.addr.clone())
                .or_default()
                .push(Item {
                    key,
                    value,
                    leader,
                    answer,
                    ticket: 0,
                });
        }
        let mut pumps = Vec::new();
        for (addr, items) in by_leader {
            let lane = {
                let mut lanes = T::lanes(&self.lanes).lock();
                let key = (addr, credentials.clone());
                match lanes.get(&key) {
                    Some(lane) => lane.clone(),
                    None => {
                        sweep(&mut lanes, Instant::now());
                        lanes.entry(key).or_default().clone()
                    }
                }
            };
            if let Some((conn, own)) = lane.push(items) {
                let guard = PumpGuard { lane, armed: true };
                let pump = own_pump(self.clone(), guard, conn, own);
                pumps.push(Inline {
                    rest: Some(Box::pin(crate::auth::with_caller(
                        credentials.clone(),
                        pump,
                    ))),
                });
            }
        }
        let (answers, _) = futures_util::future::join(join_all(answers), join_all(pumps)).await;
        answers
            .into_iter()
            .map(|r| r.unwrap_or_else(|_| Err(abandoned())))
            .collect()
    }
}

/// The pump of the command whose last queued command has ticket `own`:
/// sends batches until that one's is answered, then leaves what still
/// waits to a spawned pump.
async fn own_pump<T: Kind>(svc: KvService, guard: PumpGuard<T>, mut conn: Conn, own: u64) {
    let mut guard = guard;
    let max_keys = svc.max_keys.clamp(1, MAX_KEYS);
    loop {
        pump_pause().await;
        let Some(batch) = guard.lane.next(max_keys, &mut conn) else {
            guard.armed = false;
            return;
        };
        let last = batch.last().map_or(0, |it| it.ticket);
        T::send(&svc, &mut conn, batch).await;
        if last >= own {
            break;
        }
    }
    if !guard.lane.waiting(&mut conn) {
        guard.armed = false;
        return;
    }
    let rest = async move { pump(&svc, guard, conn).await };
    tokio::spawn(crate::auth::with_caller(
        crate::auth::forwarded_credentials(),
        rest,
    ));
}

/// Sends the batches of `guard`'s lane one after the other until it is
/// empty.
async fn pump<T: Kind>(svc: &KvService, mut guard: PumpGuard<T>, mut conn: Conn) {
    let max_keys = svc.max_keys.clamp(1, MAX_KEYS);
    loop {
        pump_pause().await;
        let Some(batch) = guard.lane.next(max_keys, &mut conn) else {
            break;
        };
        T::send(svc, &mut conn, batch).await;
    }
    guard.armed = false;
}

/// Test builds only: the failpoint `server::coalesce_pause` (`return(MS)`)
/// makes a pump wait MS ms before taking each batch, so the commands of a
/// test arrive in one batch (tests/resp/resp_cluster.rs).
async fn pump_pause() {
    #[cfg(feature = "failpoints")]
    {
        let pause = (|| {
            fail::fail_point!("server::coalesce_pause", |ms| {
                ms.and_then(|m| m.parse().ok())
                    .map(std::time::Duration::from_millis)
            });
            None
        })();
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

impl Kind for Option<Bytes> {
    fn lanes(l: &Lanes) -> &Mutex<HashMap<LaneKey, Arc<Lane<Self>>>> {
        &l.gets
    }

    async fn send(svc: &KvService, conn: &mut Conn, batch: Vec<Item<Self>>) {
        let q = || proto::MGetRequest {
            keys: batch.iter().map(|it| it.key.clone()).collect(),
            consistency: 0,
        };
        let leader = &batch[0].leader;
        let pick = |r: Reply| match r {
            Reply::MGet(r) => Some(r),
            _ => None,
        };
        let reply = match svc.over_stream(conn, leader, Ask::MGet(q()), pick).await {
            Some(r) => r,
            None => {
                svc.forward(leader, q(), |mut c, q| async move { c.m_get(q).await })
                    .await
            }
        };
        match reply {
            Ok(r) if r.values.len() == batch.len() => {
                for (it, v) in batch.into_iter().zip(r.values) {
                    let _ = it.answer.send(Ok(v.value));
                }
            }
            // The same credentials from the same address: each Get would
            // be refused too, one more failed login at the leader apiece;
            // or the user may not read there, which Get needs as MGet does.
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                for it in batch {
                    let _ = it.answer.send(Err(e.clone()));
                }
            }
            // One forwarded Get per key, each answered on its own.
            _ => {
                let singles = batch.into_iter().map(|it| async move {
                    let q = proto::GetRequest {
                        key: it.key.clone(),
                        consistency: 0,
                    };
                    let r = svc
                        .forward(&it.leader, q, |mut c, q| async move { c.get(q).await })
                        .await;
                    let _ = it.answer.send(r.map(|g| g.value));
                });
                join_all(singles).await;
            }
        }
    }
}

impl Kind for () {
    fn lanes(l: &Lanes) -> &Mutex<HashMap<LaneKey, Arc<Lane<Self>>>> {
        &l.sets
    }

    async fn send(svc: &KvService, conn: &mut Conn, batch: Vec<Item<Self>>) {
        let q = || proto::MSetRequest {
            pairs: batch
                .iter()
                .map(|it| proto::KeyValue {
                    key: it.key.clone(),
                    value: it.value.clone(),
                })
                .collect(),
            acks: 0,
        };
        let leader = &batch[0].leader;
        let pick = |r: Reply| match r {
            Reply::MSet(r) => Some(r),
            _ => None,
        };
        let reply = match svc.over_stream(conn, leader, Ask::MSet(q()), pick).await {
            Some(r) => r,
            None => {
                svc.forward(leader, q(), |mut c, q| async move { c.m_set(q).await })
                    .await
            }
        };
        match reply {
            Ok(_) => {
                for it in batch {
                    let _ = it.answer.send(Ok(()));
                }
            }
            // Nothing was written: one forwarded Set per key.
            Err(Error::NotLeader { .. }) => {
                let singles = batch.into_iter().map(|it| async move {
                    let q = proto::SetRequest {
                        key: it.key.clone(),
                        value: it.value.clone(),
                        ttl_ms: None,
                        condition: proto::Condition::Always as i32,
                        acks: 0,
                    };
                    let r = svc
                        .forward(&it.leader, q, |mut c, q| async move { c.set(q).await })
                        .await;
                    let _ = it.answer.send(r.map(|_| ()));
                });
                join_all(singles).await;
            }
            Err(e) => {
                for it in batch {
                    let _ = it.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value_len: usize) -> (Item<()>, oneshot::Receiver<crate::Result<()>>) {
        let (answer, rx) = oneshot::channel();
        let it = Item {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from(vec![b'x'; value_len]),
            leader: Leader {
                partition: 0,
                addr: "127.0.0.1:1".into(),
            },
            answer,
            ticket: 0,
        };
        (it, rx)
    }

    /// Only lanes idle for [`LANE_IDLE`] go: not one used since, one whose
    /// pump runs, or one with commands waiting.
    #[test]
    fn sweep_removes_only_lanes_idle_long_enough() {
        let key = |n: &str| (n.to_string(), None);
        let mut lanes: HashMap<LaneKey, Arc<Lane<()>>> = HashMap::new();
        for n in ["idle", "recent", "pumping", "queued"] {
            lanes.insert(key(n), Arc::default());
        }
        let (a, _ra) = item("a", 1);
        let (_conn, _) = lanes[&key("pumping")].push(vec![a]).expect("pumps");
        lanes[&key("pumping")].state.lock().queue.clear();
        let (b, _rb) = item("b", 1);
        lanes[&key("queued")].state.lock().queue.push(b);
        let later = Instant::now() + LANE_IDLE + Duration::from_millis(1);
        lanes[&key("recent")].state.lock().used = later;
        sweep(&mut lanes, later);
        let mut left: Vec<&str> = lanes.keys().map(|(n, _)| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["pumping", "queued", "recent"]);
        sweep(&mut lanes, Instant::now());
        assert_eq!(lanes.len(), 3, "nothing is idle for long yet");
    }

    /// The first push makes its caller the pump (with the ticket of its
    /// last command), later ones join its queue; batches respect the key
    /// and byte caps but always carry one command; the pump stops on an
    /// empty queue and a push after that makes a new pump.
    #[test]
    fn lane_batches_within_caps_and_restarts_its_pump() {
        let lane: Lane<()> = Lane::default();
        let mut rxs = Vec::new();
        let (a, ra) = item("a", 10);
        let (a2, ra2) = item("a2", 10);
        let (mut conn, own) = lane.push(vec![a, a2]).expect("the first push pumps");
        assert_eq!(own, 1);
        rxs.extend([ra, ra2]);
        for i in 0..3 {
            let (it, rx) = item(&format!("k{i}"), 10);
            assert!(lane.push(vec![it]).is_none());
            rxs.push(rx);
        }
        let (big, rb) = item("big", MAX_BYTES);
        assert!(lane.push(vec![big]).is_none());
        rxs.push(rb);
        let batches: Vec<Vec<u64>> = std::iter::from_fn(|| {
            lane.next(3, &mut conn)
                .map(|b| b.iter().map(|it| it.ticket).collect())
        })
        .collect();
        // 3 keys (cap), then 2 small ones (the big one would pass the byte
        // cap), then the big one alone; tickets in arrival order.
        assert_eq!(batches, vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
        let (c, _rc) = item("c", 1);
        assert_eq!(lane.push(vec![c]).map(|(_, own)| own), Some(6));
    }

    /// A command whose waiter is gone is not sent; a pump that dies
    /// answers the waiting ones (their senders dropped) and frees the lane.
    #[test]
    fn lane_drops_abandoned_commands_and_survives_a_dead_pump() {
        let lane: Arc<Lane<()>> = Arc::default();
        let (a, ra) = item("a", 1);
        let (b, rb) = item("b", 1);
        let (mut conn, _) = lane.push(vec![a, b]).unwrap();
        drop(ra);
        let batch = lane.next(10, &mut conn).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0].key[..], b"b");
        drop(batch);
        assert!(rb.blocking_recv().is_err());
        let (c, mut rc) = item("c", 1);
        assert!(lane.push(vec![c]).is_none());
        assert!(lane.waiting(&mut conn), "c waits: the pump goes on");
        drop(PumpGuard {
            lane: lane.clone(),
            armed: true,
        });
        assert!(rc.try_recv().is_err());
        assert!(lane.state.lock().queue.is_empty());
        let (d, _rd) = item("d", 1);
        assert!(
            lane.push(vec![d]).is_some(),
            "a new pump starts after a dead one"
        );
    }

    /// An inline pump dropped unfinished by its caller's task goes on in a
    /// spawned task: what it was doing completes.
    #[tokio::test]
    async fn an_inline_pump_dropped_unfinished_goes_on() {
        let go = Arc::new(tokio::sync::Notify::new());
        let (done, finished) = oneshot::channel();
        let rest = {
            let go = go.clone();
            async move {
                go.notified().await;
                let _ = done.send(7);
            }
        };
        let mut pump = Inline {
            rest: Some(Box::pin(rest)),
        };
        assert!(futures_util::poll!(&mut pump).is_pending());
        drop(pump);
        go.notify_one();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), finished).await;
        assert_eq!(got.unwrap().unwrap(), 7);
    }
}
