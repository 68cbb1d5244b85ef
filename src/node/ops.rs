//! The node's Redis-style string operations beyond get/set/del/expire:
//! `SET` with every option, `GETDEL`, `GETEX`, conditional `EXPIRE`,
//! `PERSIST`, `INCRBY`, `APPEND`, `STRLEN`, `EXPIRETIME`, `DBSIZE`, `MGET`
//! and `MSET`.
//!
//! Invariants:
//! - every read-modify-write (everything here but the reads) is decided by
//!   the partition leader's engine on the newest record of the key in its
//!   log, applied or not, under the engine's writer lock, exactly as `set`
//!   NX/XX is (`storage/ops.rs`); so concurrent `INCR`s never lose an
//!   update, and a new leader decides on the log it took over with;
//! - each produces at most one ordinary record (put, expire or delete), so
//!   followers replicate it unchanged and `acks: all` waits for that record
//!   as it does for `set`; a refused op (`NOT_INTEGER`, `OVERFLOW`, a value
//!   past the limit) writes nothing;
//! - an answer that rests on a record not yet written (a decision that
//!   wrote nothing, such as `GETEX` without options or a failing `INCR`)
//!   is given only once that record is written (the engine waits for its
//!   batch), and with `acks: all` once it is committed;
//! - a relative expiry is turned into an absolute instant on the node that
//!   decides (the leader, by the engines' clock) and must fit a signed
//!   64-bit millisecond count; an absolute one not in the future deletes
//!   the key (the value 0, "never", is never written as an instant);
//! - `MSET` is not atomic across keys: keys are validated and their
//!   partitions' leadership checked before anything is written, then each
//!   key is one write (a repeated key keeps its last value, as in Redis);
//!   the writes of all keys are in flight together, so one partition's
//!   keys share group commits. A failure after some keys were written
//!   answers as a multi-key `DEL` does ([`Error::after_partial_write`]).
//!   A concurrent reader may see some keys of an `MSET` and not others;
//! - `MGET` reads each key as `GET` does (leader reads pass the read
//!   barrier); the answers are in the order of the keys;
//! - `DBSIZE` counts the live (unexpired) keys of the partitions this
//!   node leads now; in a cluster, the sum over all nodes is the cluster's
//!   key count (each partition is counted at its leader only).

use std::sync::Arc;

use bytes::Bytes;

use super::{Acks, Consistency, Node, blocking, write_op};
use crate::cluster::{Role, partition_for};
use crate::error::{Error, Result};
use crate::storage::{
    Condition, Engine, ExpireFlags, Expiry, ExpiryChange, SetOptions, WriteOp, Written,
};

/// When a key expires, as a Redis command gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireTime {
    /// This many milliseconds from now, by the leader's clock (`EX`, `PX`,
    /// `EXPIRE`, `PEXPIRE`). Zero or negative is already past.
    In(i64),
    /// At this Unix time in milliseconds (`EXAT`, `PXAT`, `EXPIREAT`,
    /// `PEXPIREAT`). Zero or negative is already past.
    At(i64),
}

/// What `GETEX` does to the key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetExpiry {
    /// Nothing (`GETEX key`).
    Keep,
    /// Drops it (`PERSIST`).
    Persist,
    /// Sets it (`EX`/`PX`/`EXAT`/`PXAT`; must be positive, as Redis wants).
    Set(ExpireTime),
}

/// Options of [`Node::set_with`]: Redis' `SET` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetWith {
    /// `EX`/`PX`/`EXAT`/`PXAT` (must be positive); `None`: no expiry,
    /// unless `keep_ttl`.
    pub expire: Option<ExpireTime>,
    /// `KEEPTTL`: keep the key's current expiry (excludes `expire`).
    pub keep_ttl: bool,
    /// `NX` / `XX`.
    pub condition: Condition,
    /// `GET`: answer the old value.
    pub get: bool,
    /// Required acknowledgement.
    pub acks: Acks,
}

/// The answer of [`Node::set_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    /// Whether the value was written (`NX`/`XX` held).
    pub written: bool,
    /// The old value when `get` was asked (`None`: the key was absent).
    pub old: Option<Bytes>,
}

impl Node {
    /// `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT t|KEEPTTL]` (and
    /// `GETSET`, `SETNX`, `SETEX`, `PSETEX`).
    pub async fn set_with(&self, key: Bytes, value: Bytes, args: SetWith) -> Result<SetOutcome> {
        if args.keep_ttl && args.expire.is_some() {
            return Err(Error::InvalidInput("syntax error".into()));
        }
        let expire_at_ms = match args.expire {
            None => None,
            Some(t) => Some(self.positive_instant(t, "set")?),
        };
        let opts = SetOptions {
            expire_at_ms,
            condition: args.condition,
        };
        let op = match (args.get, args.keep_ttl) {
            // The plain form: an unconditional one skips the state lookup
            // (the engine's fast path).
            (false, false) => WriteOp::Set(value, opts),
            (get, keep_ttl) => WriteOp::SetExt {
                value,
                opts,
                keep_ttl,
                get,
            },
        };
        let w = self.write_key(key, op, args.acks).await?;
        Ok(SetOutcome {
            written: w.done,
            old: w.old,
        })
    }

    /// `GETDEL`: deletes `key`, answering its value (`None`: absent).
    pub async fn getdel(&self, key: Bytes, acks: Acks) -> Result<Option<Bytes>> {
        Ok(self.write_key(key, WriteOp::GetDel, acks).await?.old)
    }

    /// `GETEX`: the value of `key` (`None`: absent), changing its expiry
    /// as `expiry` says. Decided on the leader, as a write.
    pub async fn getex(&self, key: Bytes, expiry: GetExpiry, acks: Acks) -> Result<Option<Bytes>> {
        let change = match expiry {
            GetExpiry::Keep => ExpiryChange::Keep,
            GetExpiry::Persist => ExpiryChange::Persist,
            GetExpiry::Set(t) => ExpiryChange::At(self.positive_instant(t, "getex")?),
        };
        Ok(self.write_key(key, WriteOp::GetEx(change), acks).await?.old)
    }

    /// `EXPIRE`/`PEXPIRE`/`EXPIREAT`/`PEXPIREAT` with NX/XX/GT/LT: whether
    /// the expiry was set (false: no such key, or a condition failed). An
    /// instant not in the future deletes the key (answer true).
    pub async fn expire_with(
        &self,
        key: Bytes,
        when: ExpireTime,
        flags: ExpireFlags,
        acks: Acks,
    ) -> Result<bool> {
        flags.check()?;
        let at = self.instant(when, "expire")?;
        Ok(self
            .write_key(key, WriteOp::ExpireIf(at, flags), acks)
            .await?
            .done)
    }

    /// `PERSIST`: whether an expiry was removed.
    pub async fn persist(&self, key: Bytes, acks: Acks) -> Result<bool> {
        Ok(self.write_key(key, WriteOp::Persist, acks).await?.done)
    }

    /// `INCRBY` (`INCR` = 1, `DECR` = -1, `DECRBY n` = `-n`, where
    /// `n == i64::MIN` is [`Error::Overflow`] before it gets here): the new
    /// value. An absent key counts as 0; the key keeps its expiry.
    /// [`Error::NotInteger`] when the value is not an integer.
    pub async fn incr_by(&self, key: Bytes, delta: i64, acks: Acks) -> Result<i64> {
        Ok(self
            .write_key(key, WriteOp::IncrBy(delta), acks)
            .await?
            .number)
    }

    /// `APPEND`: the new length. An absent key counts as empty; the key
    /// keeps its expiry; a result past the value limit is refused.
    pub async fn append(&self, key: Bytes, value: Bytes, acks: Acks) -> Result<u64> {
        let w = self.write_key(key, WriteOp::Append(value), acks).await?;
        Ok(w.number as u64)
    }

    /// `STRLEN`: the length of the value (0 when absent).
    pub async fn strlen(&self, key: Bytes, consistency: Consistency) -> Result<u64> {
        Ok(self
            .get(key, consistency)
            .await?
            .map_or(0, |v| v.len() as u64))
    }

    /// `PEXPIRETIME` (and `EXPIRETIME`, in seconds, rounded to the nearest
    /// as Redis does, by the RESP listener): the
    /// absolute expiry of `key`.
    pub async fn expire_time(&self, key: Bytes, consistency: Consistency) -> Result<Expiry> {
        self.limits.check_key(&key)?;
        let engine = self.readable(&key, consistency)?;
        self.barrier(&key, consistency).await?;
        Ok(engine.expiry(&key)?)
    }

    /// `DBSIZE`: live keys in the partitions this node leads now (see the
    /// module docs for what it means in a cluster).
    pub async fn dbsize(&self) -> Result<u64> {
        let led: Vec<Arc<dyn Engine>> = self
            .engines()
            .into_iter()
            .filter(|(p, _)| matches!(self.coordinator.role(*p), Role::Leader { .. }))
            .map(|(_, e)| e)
            .collect();
        blocking(move || {
            let mut n = 0;
            for e in led {
                n += e.live_keys()?;
            }
            Ok(n)
        })
        .await
    }

    /// `MGET`: the value of each key, in order (`None`: absent).
    pub async fn mget(
        &self,
        keys: Vec<Bytes>,
        consistency: Consistency,
    ) -> Result<Vec<Option<Bytes>>> {
        let targets = self.many(keys, |key| self.readable(key, consistency))?;
        for (_, key) in &targets {
            self.barrier(key, consistency).await?;
        }
        let mut out = Vec::with_capacity(targets.len());
        let mut uncached = Vec::new();
        for (i, (engine, key)) in targets.into_iter().enumerate() {
            match engine.get_cached(&key)? {
                Some(v) => out.push(v),
                None => {
                    out.push(None);
                    uncached.push((i, engine, key));
                }
            }
        }
        if uncached.is_empty() {
            return Ok(out);
        }
        let read = blocking(move || {
            uncached
                .into_iter()
                .map(|(i, engine, key)| Ok((i, engine.get(&key)?)))
                .collect::<crate::storage::Result<Vec<_>>>()
        })
        .await?;
        for (i, v) in read {
            out[i] = v;
        }
        Ok(out)
    }

    /// `MSET`: writes every pair (not atomically; see the module docs).
    pub async fn mset(&self, pairs: Vec<(Bytes, Bytes)>, acks: Acks) -> Result<()> {
        for (_, value) in &pairs {
            self.limits.check_value(value)?;
        }
        // A repeated key keeps its last value; each key is written once,
        // so the writes may run concurrently.
        let mut last = std::collections::HashMap::with_capacity(pairs.len());
        let mut order = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            if last.insert(key.clone(), value).is_none() {
                order.push(key);
            }
        }
        let targets = self.many(order, |key| self.writable(key, acks))?;
        let total = targets.len();
        let writes = targets.into_iter().map(|(engine, key)| {
            let value = last.remove(&key).unwrap_or_default();
            let op = WriteOp::Set(value, SetOptions::default());
            async move {
                match &self.replication {
                    Some(r) => {
                        let p = partition_for(&key, self.partition_count);
                        r.write_op(p, key, op, acks).await
                    }
                    None => write_op(engine, key, op).await,
                }
            }
        });
        let results = futures_util::future::join_all(writes).await;
        let done = results.iter().filter(|r| r.is_ok()).count();
        match results.into_iter().find_map(|r| r.err()) {
            Some(e) => Err(e.after_partial_write(done, total)),
            None => Ok(()),
        }
    }

    /// Writes `op` on `key` at its partition's leader (here) and waits as
    /// `acks` asks; the engine decides it on the key's newest record.
    async fn write_key(&self, key: Bytes, op: WriteOp, acks: Acks) -> Result<Written> {
        self.limits.check_key(&key)?;
        if let Some(v) = op.value() {
            self.limits.check_value(v)?;
        }
        if let Some(r) = &self.replication {
            let p = partition_for(&key, self.partition_count);
            return r.write_op(p, key, op, acks).await;
        }
        let engine = self.writable(&key, acks)?;
        write_op(engine, key, op).await
    }

    /// The absolute instant of `t`, by the engines' clock; past instants
    /// come out as at most now (never 0, which means "no expiry").
    fn instant(&self, t: ExpireTime, command: &str) -> Result<u64> {
        let invalid = || Error::InvalidInput(format!("invalid expire time in '{command}' command"));
        match t {
            ExpireTime::In(ms) if ms <= 0 => Ok(self.clock.now_ms().max(1)),
            ExpireTime::In(ms) => self
                .clock
                .now_ms()
                .checked_add(ms as u64)
                .filter(|&at| at <= i64::MAX as u64)
                .ok_or_else(invalid),
            ExpireTime::At(ms) => Ok((ms.max(1)) as u64),
        }
    }

    /// [`Node::instant`] for `SET` and `GETEX`, which refuse a time that is
    /// not positive (as Redis does).
    fn positive_instant(&self, t: ExpireTime, command: &str) -> Result<u64> {
        match t {
            ExpireTime::In(ms) | ExpireTime::At(ms) if ms <= 0 => Err(Error::InvalidInput(
                format!("invalid expire time in '{command}' command"),
            )),
            t => self.instant(t, command),
        }
    }
}
