//! Forwards of many RESP connections to one leader, coalesced: the `GET`s
//! and plain `SET`s that [`KvService::get_many`] / [`KvService::set_many`]
//! must forward join a lane per leader (and per caller's credentials), and
//! one pump task per lane sends what waits there as one `MGet` / `MSet`.
//!
//! Why: without it every forwarded command of every connection was its own
//! gRPC request (tonic's buffer task, the HTTP/2 connection tasks of both
//! nodes, a spawned request task on the leader, about 6 system calls and 5
//! task wake-ups across threads), and at 50 connections through three
//! nodes that cost more CPU than the commands themselves (docs/BENCHMARKS.md,
//! "Cluster latency (session 10)"). Now a lane sends one batch at a time:
//! a command arriving while its lane's batch is on the way waits for it and
//! leaves with the next one, together with every other command that came
//! meanwhile. An idle lane sends at once (no timer, no added delay beyond
//! the pump's wake-up).
//!
//! Invariants:
//! - answers are exactly those of the uncoalesced forwards
//!   (src/server/service/batch.rs): a failed `MGet` falls back to one
//!   forwarded `Get` per key, each answered on its own; an `MSet` refused
//!   with `NOT_LEADER` (the leader checks every key's partition before
//!   writing any, so nothing was written) falls back to one forwarded `Set`
//!   per key; any other `MSet` failure is every key's answer (an unknown
//!   outcome, as that of one failed forwarded `Set`);
//! - commands of different callers' credentials never share a request
//!   (the leader checks the request's one `authorization`);
//! - a batch carries at most `limits.max_keys_per_request` (and
//!   [`MAX_KEYS`]) keys, and at most [`MAX_BYTES`] of keys and values
//!   unless it is a single command, so it fits the leader's limits
//!   whenever the commands alone do;
//! - a lane has at most one batch on the way, and a pump runs while its
//!   lane has commands waiting (the one that finds the lane idle starts
//!   it); a pump that dies (panic, runtime shutdown) answers what waits
//!   with an error instead of leaving it waiting, and the next command
//!   starts a new pump;
//! - a command whose caller stopped waiting (its connection task was
//!   dropped) is not sent.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{KvService, Leader};
use crate::error::Error;
use crate::proto;

/// Most keys one coalesced forward carries.
pub const MAX_KEYS: usize = 256;

/// Most key and value bytes one coalesced forward carries (a single
/// command may carry more: its own limits apply).
pub const MAX_BYTES: usize = 32 << 10;

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
}

/// The commands waiting for one leader, and whether a pump runs.
pub(super) struct Lane<T> {
    /// Queue and pump flag, under one lock.
    state: Mutex<LaneState<T>>,
}

/// What a lane's lock guards.
struct LaneState<T> {
    /// Commands not sent yet, in arrival order.
    queue: Vec<Item<T>>,
    /// A pump task runs (and will look at the queue again).
    pumping: bool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            state: Mutex::new(LaneState {
                queue: Vec::new(),
                pumping: false,
            }),
        }
    }
}

impl<T> Lane<T> {
    /// Queues `items`; true when the caller must start the pump.
    fn push(&self, items: Vec<Item<T>>) -> bool {
        let mut s = self.state.lock();
        s.queue.extend(items);
        !std::mem::replace(&mut s.pumping, true)
    }

    /// The next batch (at most `max_keys` keys, [`MAX_BYTES`] bytes unless
    /// one command), dropping commands nobody waits for; `None`, and the
    /// pump stops, when nothing waits.
    fn next(&self, max_keys: usize) -> Option<Vec<Item<T>>> {
        let mut s = self.state.lock();
        s.queue.retain(|it| !it.answer.is_closed());
        if s.queue.is_empty() {
            s.pumping = false;
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
}

/// Answers what waits in a lane with an error if its pump dies (dropped
/// while armed): the waiters get "abandoned", the next command starts a
/// new pump.
struct PumpGuard<'a, T> {
    /// The pump's lane.
    lane: &'a Lane<T>,
    /// Still running (disarmed when the pump ends normally).
    armed: bool,
}

impl<T> Drop for PumpGuard<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            let mut s = self.lane.state.lock();
            s.pumping = false;
            s.queue.clear();
        }
    }
}

/// The key of a lane: the leader's address and the caller's credentials.
type LaneKey = (String, Option<Arc<str>>);

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
    /// Sends `batch` (one leader) and answers each command.
    fn send(svc: &KvService, batch: Vec<Item<Self>>) -> impl Future<Output = ()> + Send;
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
                });
        }
        for (addr, items) in by_leader {
            let lane = T::lanes(&self.lanes)
                .lock()
                .entry((addr, credentials.clone()))
                .or_default()
                .clone();
            if lane.push(items) {
                let svc = self.clone();
                let pump = async move { svc.pump(&lane).await };
                tokio::spawn(crate::auth::with_caller(credentials.clone(), pump));
            }
        }
        join_all(answers)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|_| Err(abandoned())))
            .collect()
    }

    /// Sends the batches of `lane` one after the other until it is empty.
    async fn pump<T: Kind>(&self, lane: &Lane<T>) {
        let mut guard = PumpGuard { lane, armed: true };
        loop {
            pump_pause().await;
            let Some(batch) = lane.next(self.max_keys.clamp(1, MAX_KEYS)) else {
                break;
            };
            T::send(self, batch).await;
        }
        guard.armed = false;
    }
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

    async fn send(svc: &KvService, batch: Vec<Item<Self>>) {
        let q = proto::MGetRequest {
            keys: batch.iter().map(|it| it.key.clone()).collect(),
            consistency: 0,
        };
        let reply = svc
            .forward(
                &batch[0].leader,
                q,
                |mut c, q| async move { c.m_get(q).await },
            )
            .await;
        match reply {
            Ok(r) if r.values.len() == batch.len() => {
                for (it, v) in batch.into_iter().zip(r.values) {
                    let _ = it.answer.send(Ok(v.value));
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

    async fn send(svc: &KvService, batch: Vec<Item<Self>>) {
        let q = proto::MSetRequest {
            pairs: batch
                .iter()
                .map(|it| proto::KeyValue {
                    key: it.key.clone(),
                    value: it.value.clone(),
                })
                .collect(),
            acks: 0,
        };
        let reply = svc
            .forward(
                &batch[0].leader,
                q,
                |mut c, q| async move { c.m_set(q).await },
            )
            .await;
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
        };
        (it, rx)
    }

    /// The first push starts the pump, later ones join its queue; batches
    /// respect the key and byte caps but always carry one command; the
    /// pump stops on an empty queue and a push after that starts it again.
    #[test]
    fn lane_batches_within_caps_and_restarts_its_pump() {
        let lane: Lane<()> = Lane::default();
        let mut rxs = Vec::new();
        let (a, ra) = item("a", 10);
        assert!(lane.push(vec![a]));
        rxs.push(ra);
        for i in 0..4 {
            let (it, rx) = item(&format!("k{i}"), 10);
            assert!(!lane.push(vec![it]));
            rxs.push(rx);
        }
        let (big, rb) = item("big", MAX_BYTES);
        assert!(!lane.push(vec![big]));
        rxs.push(rb);
        let sizes: Vec<usize> = std::iter::from_fn(|| lane.next(3).map(|b| b.len())).collect();
        // 3 keys (cap), then 2 small ones (the big one would pass the byte
        // cap), then the big one alone.
        assert_eq!(sizes, vec![3, 2, 1]);
        let (c, _rc) = item("c", 1);
        assert!(lane.push(vec![c]));
    }

    /// A command whose waiter is gone is not sent; a pump that dies
    /// answers the waiting ones (their senders dropped) and frees the lane.
    #[test]
    fn lane_drops_abandoned_commands_and_survives_a_dead_pump() {
        let lane: Lane<()> = Lane::default();
        let (a, ra) = item("a", 1);
        let (b, rb) = item("b", 1);
        assert!(lane.push(vec![a, b]));
        drop(ra);
        let batch = lane.next(10).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(&batch[0].key[..], b"b");
        drop(batch);
        assert!(rb.blocking_recv().is_err());
        let (c, mut rc) = item("c", 1);
        assert!(!lane.push(vec![c]));
        drop(PumpGuard {
            lane: &lane,
            armed: true,
        });
        assert!(rc.try_recv().is_err());
        assert!(lane.state.lock().queue.is_empty());
        let (d, _rd) = item("d", 1);
        assert!(lane.push(vec![d]), "a new pump starts after a dead one");
    }
}
