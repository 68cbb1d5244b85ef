//! The `GET`s and plain `SET`s of one pipelined RESP read
//! (src/resp/connection.rs), served as that many `Get` / `Set` requests of
//! this service (same defaults, slots, metrics and answers) except for the
//! forwarding: the keys of partitions led by one other node travel there
//! together, in one forwarded `MGet` / `MSet`, instead of one forwarded
//! request per key, and together with the forwards of every other
//! connection that wait for the same leader at that moment
//! (`coalesce.rs`). A pipeline of 16 commands through a node that leads a
//! third of the partitions took about 11 forwards; it takes at most one
//! per other node, and 50 single-command connections take about one per
//! other node and round trip instead of one per command.
//!
//! A batch of one key (every RESP read without pipelining) is
//! [`KvService::get_one`] / [`KvService::set_one`]: the same request with
//! one timer and none of a batch's vectors.
//!
//! Standalone, a batch's `SET`s of one partition reach its engine in one
//! submission ([`crate::node::Node::set_many`], `Engine::submit_many`):
//! one writer-mutex take and one `write(2)` per partition, not per key.
//!
//! Invariants:
//! - every key is tried here first, exactly as [`Kv::get`] / [`Kv::set`]
//!   do; only a key refused with `NOT_LEADER` naming a leader is
//!   forwarded, and a forwarded request is never forwarded again (the
//!   leader serves the whole group or refuses it);
//! - a grouped forward never gives a key a wrong answer (the fallbacks of
//!   `coalesce.rs`: a failed `MGet` is retried key by key, an `MSet`
//!   refused with `NOT_LEADER` too, any other `MSet` failure is every
//!   key's answer, an unknown outcome as that of one failed `Set`);
//! - every key is one request of its command in the metrics, timed from
//!   its arrival to its answer with its own outcome, and holds one
//!   `max_in_flight` slot meanwhile (a batch larger than
//!   `max_in_flight` holds them all).

use bytes::Bytes;
use tonic::Status;

use super::coalesce::Kind;
use super::{KvService, Leader, after_write_pause, failed, leader_of, stopping};
use crate::error::Error;
use crate::server::metrics::Command;

/// One answer per key of a batch.
type Answers<T> = Vec<Result<T, Status>>;

impl KvService {
    /// Slots a batch of `n` requests takes: one each, at most all of them.
    fn batch_slots(&self, n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX).min(self.slots)
    }

    /// `Get` of every key of `keys` (default consistency), in order. No
    /// keys: nothing is done (no clock read, no slot, no metric); one key:
    /// [`KvService::get_one`].
    pub async fn get_many(&self, keys: &[Bytes]) -> Answers<Option<Bytes>> {
        match keys {
            [] => return Vec::new(),
            [key] => return vec![self.get_one(key).await],
            _ => {}
        }
        let timers = self.metrics.requests.start_many(Command::Get, keys.len());
        let Ok(_slots) = self
            .in_flight
            .acquire_many(self.batch_slots(keys.len()))
            .await
        else {
            return finish(timers, shutting_down(keys.len()));
        };
        let consistency = self.default_consistency;
        let mut results = self.node.get_many(keys, consistency).await;
        let refused = refused(&results);
        let items = refused
            .iter()
            .map(|(i, leader)| (keys[*i].clone(), Bytes::new(), leader.clone()))
            .collect();
        let answers = self.coalesced::<Option<Bytes>>(items).await;
        for ((i, _), r) in refused.into_iter().zip(answers) {
            results[i] = r;
        }
        finish(timers, results)
    }

    /// `Set` of every `(key, value)` of `pairs` (no TTL, no condition,
    /// default acks), in order; `Ok(())` once written as the acks ask.
    /// The keys are distinct (the caller's batch never writes a key twice).
    /// No pairs: nothing is done; one pair: [`KvService::set_one`].
    pub async fn set_many(&self, pairs: &[(Bytes, Bytes)]) -> Answers<()> {
        match pairs {
            [] => return Vec::new(),
            [(key, value)] => return vec![self.set_one(key, value).await],
            _ => {}
        }
        let timers = self.metrics.requests.start_many(Command::Set, pairs.len());
        let Ok(_slots) = self
            .in_flight
            .acquire_many(self.batch_slots(pairs.len()))
            .await
        else {
            return finish(timers, shutting_down(pairs.len()));
        };
        let mut results = self.node.set_many(pairs, self.default_acks).await;
        if results.iter().any(|r| r.is_ok()) {
            after_write_pause().await;
        }
        let refused = refused(&results);
        let items = refused
            .iter()
            .map(|(i, leader)| (pairs[*i].0.clone(), pairs[*i].1.clone(), leader.clone()))
            .collect();
        let answers = self.coalesced::<()>(items).await;
        for ((i, _), r) in refused.into_iter().zip(answers) {
            results[i] = r;
        }
        finish(timers, results)
    }

    /// `Get` of `key` (default consistency): the request of a batch of one
    /// (a RESP read holding one `GET`, every read without pipelining),
    /// without a batch's vectors: one timer, one slot, the node's `get`,
    /// and a refusal naming a leader forwarded as a batch's would be.
    pub async fn get_one(&self, key: &Bytes) -> Result<Option<Bytes>, Status> {
        let timer = self.metrics.requests.start(Command::Get);
        let Ok(_slot) = self.in_flight.acquire().await else {
            return finish_one(timer, Err(stopping()));
        };
        let mut result = self.node.get(key.clone(), self.default_consistency).await;
        if let Some(leader) = leader_of(&result) {
            result = self.forward_one(key, Bytes::new(), leader).await;
        }
        finish_one(timer, result)
    }

    /// `Set` of `key` to `value` (no TTL, no condition, default acks) as
    /// [`KvService::get_one`] is a `Get`: the request of a batch of one.
    pub async fn set_one(&self, key: &Bytes, value: &Bytes) -> Result<(), Status> {
        let timer = self.metrics.requests.start(Command::Set);
        let Ok(_slot) = self.in_flight.acquire().await else {
            return finish_one(timer, Err(stopping()));
        };
        let args = crate::node::SetArgs {
            ttl_ms: None,
            condition: crate::storage::Condition::Always,
            acks: self.default_acks,
        };
        let mut result = self
            .node
            .set(key.clone(), value.clone(), args)
            .await
            .map(|_| ());
        if result.is_ok() {
            after_write_pause().await;
        }
        if let Some(leader) = leader_of(&result) {
            result = self.forward_one(key, value.clone(), leader).await;
        }
        finish_one(timer, result)
    }

    /// The answer of `leader` to `key` (with `value` for a `Set`), through
    /// the coalescer as a batch's refused keys go.
    async fn forward_one<T: Kind>(
        &self,
        key: &Bytes,
        value: Bytes,
        leader: Leader,
    ) -> crate::Result<T> {
        self.coalesced(vec![(key.clone(), value, leader)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a forwarded key got no answer".into())))
    }
}

/// The keys refused with `NOT_LEADER` naming a leader: (index, leader)
/// each, in order.
fn refused<T>(results: &[crate::Result<T>]) -> Vec<(usize, Leader)> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| leader_of(r).map(|l| (i, l)))
        .collect()
}

/// `n` [`stopping`] refusals.
fn shutting_down<T>(n: usize) -> Vec<crate::Result<T>> {
    (0..n).map(|_| Err(stopping())).collect()
}

/// Records one request's outcome and maps its error to a status, as
/// [`finish`] does for each key of a batch.
fn finish_one<T>(
    timer: crate::server::metrics::Timer<'_>,
    result: crate::Result<T>,
) -> Result<T, Status> {
    timer.finish(&result);
    result.map_err(failed)
}

/// Records each key's outcome and maps its error to a status, as
/// `KvService::run` does for one request.
fn finish<T>(
    timers: Vec<crate::server::metrics::Timer<'_>>,
    results: Vec<crate::Result<T>>,
) -> Answers<T> {
    let now = std::time::Instant::now();
    timers
        .into_iter()
        .zip(results)
        .map(|(timer, r)| {
            timer.finish_at(&r, now);
            r.map_err(failed)
        })
        .collect()
}
