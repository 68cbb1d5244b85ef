//! Deciding a write: the entry points of the write path ([`Inner::submit`]
//! for async callers, [`Inner::write`] blocking) and how they find the
//! key's newest state and turn it into a record.
//!
//! Invariants:
//! - a write is decided under the writer mutex on the key's newest state:
//!   the newest unapplied record of the key (`Writer::unapplied`) if there
//!   is one, else the keydir; so two writes of one key decided one after the
//!   other see each other, applied or not (conditional sets, `INCRBY`,
//!   `APPEND`, ...; the decisions themselves are `storage/ops.rs`);
//! - a decision that writes nothing (an `NX` that did not hold, a refused
//!   `INCRBY`) but rests on a record whose batch is in flight waits for that
//!   batch and decides again, so it never answers from a write that fails;
//! - the async path never reads the disk and never fsyncs: it declines
//!   (`Submitted::Blocking`) when the decision needs a value that memory
//!   does not hold; under `always` it queues the record for a commit
//!   worker. Under `every_ms` and `never` it writes the batch itself
//!   when no flush is running and the batch fits the active segment:
//!   one `write(2)` to the page cache (no fsync, no roll), which costs
//!   less than waking any other thread for it (docs/BENCHMARKS.md,
//!   "caskade vs Redis over RESP"); otherwise it queues it for a commit
//!   worker;
//! - `submit_many` decides its ops in order under one take of the writer
//!   mutex, each exactly as `submit` would op after op, their records in
//!   one batch (one `write(2)` under `every_ms` / `never`); once an op
//!   declines, the ops after it are not started and decline too, so the
//!   caller's blocking writes keep the order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use bytes::Bytes;

use super::record::Kind;
use super::writer::{Batch, State, Writer};
use super::{Completion, Inner, Submitted};
use crate::storage::{
    Condition, Current, Durability, Effect, Error, Reply, Result, WriteOp, Written, decide,
};

/// One submitted op after its decision.
enum Step {
    /// Answered (or declined, or refused) without a record.
    Ready(Result<Submitted>),
    /// Its record is in the batch being built.
    Queued(Completion),
}

/// The unapplied record a decision rests on: its batch and its offset.
type Dependency = (Arc<Batch>, u64);

/// The record a write decided to append: kind, value, expiry (0 = never).
type Action = (Kind, Bytes, u64);

/// A decided write: the record to append (if any), the caller's answer (or
/// the error refusing the op), and the unapplied record the answer rests on.
type Decision = (Option<Action>, Result<Reply>, Option<Dependency>);

/// How much of a key's current state a decision needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Whether it exists, and its expiry.
    Presence,
    /// Its value too, read from disk if need be.
    Value,
    /// Its value too, but only if memory holds it (the async path).
    ValueInMemory,
}

/// The record of a decided [`Effect`].
fn action(effect: Effect) -> Action {
    match effect {
        Effect::Put(v, at) => (Kind::Put, v, at),
        Effect::Reexpire(v, at) => (Kind::Expire, v, at),
        Effect::Delete => (Kind::Delete, Bytes::new(), 0),
    }
}

impl Inner {
    /// The newest state of `key`: unapplied writes first, then the keydir.
    /// Also returns the batch that state depends on, if it is not applied.
    /// `Ok(None)` only under [`Need::ValueInMemory`], when the value would
    /// have to be read from disk.
    #[allow(clippy::type_complexity)]
    fn current(
        &self,
        w: &Writer,
        key: &[u8],
        now: u64,
        need: Need,
    ) -> Result<Option<(Option<Current>, Option<Dependency>)>> {
        let live = |at: u64| at == 0 || at > now;
        if let Some(u) = w.unapplied.get(key) {
            let state = match &u.state {
                State::Value(v, at) if live(*at) => Some(Current {
                    value: Some(v.clone()),
                    expire_at: *at,
                }),
                State::Stored(e) if live(e.expire_at) => Some(Current {
                    value: match need {
                        Need::Presence => None,
                        Need::ValueInMemory => return Ok(None),
                        // Pending records are above the commit point, which
                        // merge never touches: the segment is there.
                        Need::Value => Some(self.read_value(key, *e)?.ok_or_else(|| {
                            Error::Corrupt("an uncommitted record's segment is gone".into())
                        })?),
                    },
                    expire_at: e.expire_at,
                }),
                _ => None,
            };
            return Ok(Some((state, Some((u.batch.clone(), u.offset)))));
        }
        // One take of the shard lock and one probe for the entry and, when
        // only memory may answer, its cached value.
        let (entry, cached) = {
            let mut shard = self.keydir.shard(key);
            let Some(entry) = shard.get(key) else {
                return Ok(Some((None, None)));
            };
            if entry.expired(now) {
                return Ok(Some((None, None)));
            }
            let cached = match need {
                Need::ValueInMemory => shard.cached_at(key, entry),
                Need::Presence | Need::Value => None,
            };
            (entry, cached)
        };
        let value = match need {
            Need::Presence => None,
            Need::ValueInMemory => match cached {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            // The writer mutex is held, so no write can move this key; a
            // merge may move the record, hence the retry through `get`.
            Need::Value => match self.read_value(key, entry)? {
                Some(v) => Some(v),
                None => self.get(key)?,
            },
        };
        let cur = Current {
            value,
            expire_at: entry.expire_at,
        };
        Ok(Some((Some(cur), None)))
    }

    /// Decides `op` on `key` now, under the writer mutex: the record to
    /// write (if any), the answer, and the unapplied record the answer rests
    /// on. Reads the current value (from disk under [`Need::Value`]) only
    /// for the ops that need it ([`WriteOp::needs_value`]). `Ok(None)`: the
    /// decision needs a disk read and `in_memory` forbids it.
    fn decide_now(
        &self,
        w: &Writer,
        key: &[u8],
        op: &WriteOp,
        in_memory: bool,
    ) -> Result<Option<Decision>> {
        match op {
            // An unconditional set that does not expire at once needs no
            // look at the current state (nor the clock, without a TTL):
            // the fast path.
            WriteOp::Set(v, opts)
                if opts.condition == Condition::Always
                    && opts.expire_at_ms.is_none_or(|at| at > self.clock.now_ms()) =>
            {
                let put = (Kind::Put, v.clone(), opts.expire_at_ms.unwrap_or(0));
                let reply = Reply {
                    done: true,
                    ..Reply::default()
                };
                Ok(Some((Some(put), Ok(reply), None)))
            }
            _ => {
                let now = self.clock.now_ms();
                let need = match (op.needs_value(), in_memory) {
                    (false, _) => Need::Presence,
                    (true, false) => Need::Value,
                    (true, true) => Need::ValueInMemory,
                };
                let Some((cur, dep)) = self.current(w, key, now, need)? else {
                    return Ok(None);
                };
                Ok(Some(match decide(op, cur, now, &self.opts.limits) {
                    Ok((effect, reply)) => (effect.map(action), Ok(reply), dep),
                    // A refusal writes nothing, but rests on the state read,
                    // as an answer does.
                    Err(e) => (None, Err(e), dep),
                }))
            }
        }
    }

    /// Checks a write's key and value against the limits.
    fn check_op(&self, key: &[u8], op: &WriteOp) -> Result<()> {
        self.opts.limits.check_key(key)?;
        if let Some(v) = op.value() {
            self.opts.limits.check_value(v)?;
        }
        if let WriteOp::ExpireIf(_, flags) = op {
            flags.check()?;
        }
        Ok(())
    }

    /// See [`Bitcask::submit`].
    /// `leader`: the leader epoch the write is stamped with (replica mode;
    /// see [`Inner::check_role`]).
    pub(super) fn submit(
        &self,
        key: &[u8],
        op: &WriteOp,
        leader: Option<u32>,
    ) -> Result<Submitted> {
        self.check_op(key, op)?;
        let mut w = self.writer.lock();
        let step = self.submit_step(&mut w, key, op, leader);
        let mut answers = self.finish_submits(w, vec![step]);
        answers.pop().unwrap_or(Ok(Submitted::Blocking))
    }

    /// See [`Bitcask::submit_many`]: every op decided under one take of the
    /// writer mutex, in order, their records in one batch, which the caller
    /// writes itself (one `write(2)`) under `every_ms` / `never` when
    /// [`Inner::submit`] would, else a commit worker leads it.
    pub(super) fn submit_many(
        &self,
        ops: &[(&[u8], &WriteOp)],
        leader: Option<u32>,
    ) -> Vec<Result<Submitted>> {
        let mut steps = Vec::with_capacity(ops.len());
        let mut w = self.writer.lock();
        for (key, op) in ops {
            let blocked = matches!(steps.last(), Some(Step::Ready(Ok(Submitted::Blocking))));
            steps.push(if blocked {
                // Not started: run after the declined op, in order.
                Step::Ready(Ok(Submitted::Blocking))
            } else {
                match self.check_op(key, op) {
                    Ok(()) => self.submit_step(&mut w, key, op, leader),
                    Err(e) => Step::Ready(Err(e)),
                }
            });
        }
        self.finish_submits(w, steps)
    }

    /// Decides one submitted op under the writer mutex and queues its
    /// record, if any, in the batch being built.
    fn submit_step(
        &self,
        w: &mut MutexGuard<'_, Writer>,
        key: &[u8],
        op: &WriteOp,
        leader: Option<u32>,
    ) -> Step {
        let decided = w
            .check_writable()
            .and_then(|()| self.check_role(leader))
            .and_then(|()| {
                if w.truncating {
                    // Waiting for the truncation needs a blocking thread.
                    return Ok(None);
                }
                self.decide_now(w, key, op, true)
            });
        let decision = match decided {
            Err(e) => return Step::Ready(Err(e)),
            // The value is on disk only: read it on a blocking thread.
            Ok(None) => return Step::Ready(Ok(Submitted::Blocking)),
            Ok(Some(decision)) => decision,
        };
        match decision {
            (None, answer, dep) => Step::Ready(match dep {
                Some((batch, _)) if !batch.is_done() => Ok(Submitted::Blocking),
                Some((_, offset)) => answer.map(|r| Submitted::Done(Written::new(r, offset + 1))),
                None => answer.map(|r| Submitted::Done(Written::new(r, self.applied_end(w)))),
            }),
            (Some((kind, value, expire_at)), answer, _) => match answer {
                Err(e) => Step::Ready(Err(e)),
                Ok(reply) => {
                    let (batch, index, offset) = w.enqueue(key, kind, value, expire_at);
                    Step::Queued(Completion {
                        batch,
                        index,
                        written: Written::new(reply, offset + 1),
                    })
                }
            },
        }
    }

    /// Ends a submission: with records queued, writes their batch here
    /// under `every_ms` / `never` when no flush runs and it fits the active
    /// segment (no fsync to share, no roll: one `write(2)` to the page
    /// cache, cheaper than any hand-off to another thread), else queues the
    /// engine once for a commit worker. Releases the writer mutex.
    fn finish_submits(
        &self,
        mut w: MutexGuard<'_, Writer>,
        steps: Vec<Step>,
    ) -> Vec<Result<Submitted>> {
        let queued = steps.iter().any(|s| matches!(s, Step::Queued(_)));
        let here = queued
            && self.opts.fsync != Durability::Always
            && !w.flushing
            && w.active.len() + w.buf.len() as u64 <= self.opts.segment_bytes;
        if here {
            self.lead(&mut w);
        }
        // A commit worker leads it (unless a blocking writer does first):
        // queued once per batch, not while a flush runs (see
        // `Inner::call_leader`). The wake-up happens outside the mutex.
        let call = queued && !here && w.needs_leader();
        drop(w);
        if call {
            self.workers.schedule_commit(&self.slot, false);
        }
        steps
            .into_iter()
            .map(|step| match step {
                Step::Ready(answer) => answer,
                Step::Queued(c) if here => c
                    .batch
                    .result_for(c.index)
                    .map(|()| Submitted::Done(c.written)),
                Step::Queued(c) => Ok(Submitted::Queued(c)),
            })
            .collect()
    }

    /// Decides and performs a write. Returns the answer the caller reports
    /// and the offset below which every record the answer rests on is (see
    /// [`Written`]).
    pub(super) fn write(&self, key: &[u8], op: WriteOp, leader: Option<u32>) -> Result<Written> {
        self.check_op(key, &op)?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = self.write_inner(key, op, leader);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// [`Self::write`] once counted in `in_flight`.
    fn write_inner(&self, key: &[u8], op: WriteOp, leader: Option<u32>) -> Result<Written> {
        let mut w = self.writer.lock();
        loop {
            while w.truncating {
                self.batch_done.wait(&mut w);
            }
            w.check_writable()?;
            self.check_role(leader)?;
            let Some(decision) = self.decide_now(&w, key, &op, false)? else {
                return Err(Error::Corrupt(
                    "a write could not read its key's value".into(),
                ));
            };
            match decision {
                (None, answer, dep) => {
                    // Nothing to write, but the answer may rest on a record
                    // that is not written yet: wait for it, then decide again.
                    match dep {
                        Some((batch, _)) if !batch.is_done() => {
                            self.wait_batch(&mut w, &batch);
                            continue;
                        }
                        Some((_, offset)) => return Ok(Written::new(answer?, offset + 1)),
                        None => return Ok(Written::new(answer?, self.applied_end(&w))),
                    }
                }
                (Some((kind, value, expire_at)), answer, _) => {
                    let reply = answer?;
                    let (batch, index, offset) = w.enqueue(key, kind, value, expire_at);
                    self.enqueued.notify_one();
                    self.wait_batch(&mut w, &batch);
                    return batch
                        .result_for(index)
                        .map(|()| Written::new(reply, offset + 1));
                }
            }
        }
    }
}
