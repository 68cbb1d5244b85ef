//! The client commands of a node (`set`, `get`, `del`, `expire`, `ttl`,
//! `exists`, `flush`, `status`): edge validation, routing to the replica of
//! the key's partition, and the hand-off of engine work (group commit or
//! tokio's blocking pool).
//!
//! Invariants:
//! - no fsync and no segment roll on a runtime worker: writes go through
//!   [`Engine::submit`] (group commit; under `every_ms` / `never` a
//!   submitted write is one `write(2)` to the page cache on the caller's
//!   thread) or, when it declines, to the blocking pool;
//! - a `get` that memory answers ([`Engine::get_cached`]) stays on the
//!   caller's thread; one whose value is not cached reads the disk (a
//!   page fault on the segment's map or a `pread` that may wait for the
//!   device when the data set exceeds the page cache), so it goes to the
//!   blocking pool: a runtime worker never waits for the device.

use std::sync::Arc;

use bytes::Bytes;

use super::{Acks, Consistency, Node, SetArgs};
use crate::cluster::{Role, partition_for};
use crate::error::{Error, Result};
use crate::storage::{self, Engine, SetOptions, Submitted, Ttl, WriteOp};

impl Node {
    /// Writes `key = value`. Returns false when the condition did not hold.
    pub async fn set(&self, key: Bytes, value: Bytes, args: SetArgs) -> Result<bool> {
        self.limits.check_key(&key)?;
        self.limits.check_value(&value)?;
        let expire_at_ms = match args.ttl_ms {
            None => None,
            Some(0) => return Err(Error::InvalidInput("TTL must be at least 1 ms".into())),
            Some(ttl) => Some(self.expire_at(ttl)?),
        };
        let opts = SetOptions {
            expire_at_ms,
            condition: args.condition,
        };
        if let Some(r) = &self.replication {
            let p = partition_for(&key, self.partition_count);
            return r.write(p, key, WriteOp::Set(value, opts), args.acks).await;
        }
        let engine = self.writable(&key, args.acks)?;
        write(engine, key, WriteOp::Set(value, opts)).await
    }

    /// [`Node::set`] of every `(key, value)` of `pairs` with no TTL and no
    /// condition, answers in order. Standalone, the pairs of one partition
    /// are submitted to its engine together ([`Engine::submit_many`]: under
    /// `every_ms` one writer-mutex take and one `write(2)` per partition
    /// instead of one per key); in a cluster each pair is one `set`.
    pub async fn set_many(&self, pairs: &[(Bytes, Bytes)], acks: Acks) -> Vec<Result<()>> {
        let args = SetArgs {
            ttl_ms: None,
            condition: storage::Condition::Always,
            acks,
        };
        if let [(key, value)] = pairs {
            // One pair (no pipelining): nothing to group.
            return vec![self.set(key.clone(), value.clone(), args).await.map(|_| ())];
        }
        if self.replication.is_some() {
            let each = pairs.iter().map(|(k, v)| async move {
                self.set(k.clone(), v.clone(), args).await.map(|_| ())
            });
            return futures_util::future::join_all(each).await;
        }
        let mut results: Vec<Option<Result<()>>> = (0..pairs.len()).map(|_| None).collect();
        // Each engine and the indexes of its pairs, in order.
        let mut groups: Vec<(Arc<dyn Engine>, Vec<usize>)> = Vec::new();
        for (i, (key, value)) in pairs.iter().enumerate() {
            let engine = self
                .limits
                .check_key(key)
                .and_then(|()| self.limits.check_value(value))
                .map_err(Error::from)
                .and_then(|()| self.writable(key, acks));
            match engine {
                Err(e) => results[i] = Some(Err(e)),
                Ok(engine) => match groups.iter_mut().find(|(e, _)| Arc::ptr_eq(e, &engine)) {
                    Some((_, of)) => of.push(i),
                    None => groups.push((engine, vec![i])),
                },
            }
        }
        let opts = SetOptions {
            expire_at_ms: None,
            condition: storage::Condition::Always,
        };
        let mut queued = Vec::new();
        let mut declined = Vec::new();
        for (engine, of) in groups {
            let ops: Vec<WriteOp> = of
                .iter()
                .map(|&i| WriteOp::Set(pairs[i].1.clone(), opts))
                .collect();
            let submitted = {
                let refs: Vec<(&[u8], &WriteOp)> = of
                    .iter()
                    .zip(&ops)
                    .map(|(&i, op)| (&pairs[i].0[..], op))
                    .collect();
                engine.submit_many(&refs)
            };
            for ((&i, answer), op) in of.iter().zip(submitted).zip(ops) {
                match answer {
                    Ok(Submitted::Done(_)) => results[i] = Some(Ok(())),
                    Ok(Submitted::Queued(c)) => queued.push((i, c)),
                    Ok(Submitted::Blocking) => declined.push((i, engine.clone(), op)),
                    Err(e) => results[i] = Some(Err(e.into())),
                }
            }
        }
        for (i, c) in queued {
            results[i] = Some(c.wait().await.map(|_| ()).map_err(Error::from));
        }
        // Declined ops run in order, each after the ones before it.
        for (i, engine, op) in declined {
            let key = pairs[i].0.clone();
            results[i] = Some(blocking(move || engine.write(&key, op)).await.map(|_| ()));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a write was not run".into()))))
            .collect()
    }

    /// Reads `key`.
    pub async fn get(&self, key: Bytes, consistency: Consistency) -> Result<Option<Bytes>> {
        self.limits.check_key(&key)?;
        let engine = self.readable(&key, consistency)?;
        self.barrier(&key, consistency).await?;
        if let Some(answer) = engine.get_cached(&key)? {
            return Ok(answer);
        }
        // Not cached: the read may wait for the device (see the module doc).
        blocking(move || engine.get(&key)).await
    }

    /// [`Node::get`] of every key of `keys`, answers in order. Standalone,
    /// the keys that memory answers ([`Engine::get_cached`]) are answered
    /// in one pass on the caller's thread, with no future per key; the
    /// others read the disk on the blocking pool, as `get` does. In a
    /// cluster each key is one `get`.
    pub async fn get_many(
        &self,
        keys: &[Bytes],
        consistency: Consistency,
    ) -> Vec<Result<Option<Bytes>>> {
        if self.replication.is_some() {
            let each = keys.iter().map(|k| self.get(k.clone(), consistency));
            return futures_util::future::join_all(each).await;
        }
        let mut results = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let cached = self
                .limits
                .check_key(key)
                .map_err(Error::from)
                .and_then(|()| self.readable(key, consistency))
                .and_then(|engine| match engine.get_cached(key) {
                    Ok(Some(answer)) => Ok(Some(answer)),
                    Ok(None) => {
                        misses.push((i, engine));
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                });
            results.push(cached);
        }
        if !misses.is_empty() {
            // Not cached: the reads may wait for the device (module doc).
            let reads = misses.into_iter().map(|(i, engine)| {
                let key = keys[i].clone();
                async move { (i, blocking(move || engine.get(&key)).await) }
            });
            for (i, r) in futures_util::future::join_all(reads).await {
                results[i] = r.map(Some);
            }
        }
        results
            .into_iter()
            .map(|r| r.and_then(|a| a.ok_or_else(|| Error::Internal("a read was not run".into()))))
            .collect()
    }

    /// Deletes `keys`; returns how many existed.
    pub async fn del(&self, keys: Vec<Bytes>, acks: Acks) -> Result<u64> {
        if let Some(r) = &self.replication {
            // Validate every key first, so a bad one fails the request as a
            // whole before anything is written.
            // and leadership of every key's partition is checked before
            // anything is written.
            let targets = self.many(keys, |key| self.writable(key, acks))?;
            let total = targets.len();
            let mut deleted = 0;
            for (done, (_, key)) in targets.into_iter().enumerate() {
                let p = partition_for(&key, self.partition_count);
                match r.write(p, key, WriteOp::Delete, acks).await {
                    Ok(existed) => deleted += u64::from(existed),
                    Err(e) => return Err(e.after_partial_write(done, total)),
                }
            }
            return Ok(deleted);
        }
        let targets = self.many(keys, |key| self.writable(key, acks))?;
        // Submit the deletes before awaiting any, so they share group
        // commits. From the first one the engine declines on, the rest run
        // in order in one blocking call (one hand-off, not one per key).
        let mut deleted = 0;
        let mut queued = Vec::with_capacity(targets.len());
        let mut rest = Vec::new();
        for (engine, key) in targets {
            if !rest.is_empty() {
                rest.push((engine, key));
                continue;
            }
            match engine.submit(&key, &WriteOp::Delete)? {
                Submitted::Done(w) => deleted += u64::from(w.done),
                Submitted::Queued(c) => queued.push(c),
                Submitted::Blocking => rest.push((engine, key)),
            }
        }
        for c in queued {
            deleted += u64::from(c.wait().await?.done);
        }
        if !rest.is_empty() {
            deleted += blocking(move || {
                let mut n = 0;
                for (engine, key) in rest {
                    n += u64::from(engine.delete(&key)?);
                }
                Ok(n)
            })
            .await?;
        }
        Ok(deleted)
    }

    /// Makes `key` expire `ttl_ms` from now (0: delete it now). Returns
    /// whether the key existed.
    pub async fn expire(&self, key: Bytes, ttl_ms: u64, acks: Acks) -> Result<bool> {
        self.limits.check_key(&key)?;
        let at = if ttl_ms == 0 {
            self.clock.now_ms()
        } else {
            self.expire_at(ttl_ms)?
        };
        if let Some(r) = &self.replication {
            let p = partition_for(&key, self.partition_count);
            return r.write(p, key, WriteOp::Expire(at), acks).await;
        }
        let engine = self.writable(&key, acks)?;
        write(engine, key, WriteOp::Expire(at)).await
    }

    /// The time to live of `key`.
    pub async fn ttl(&self, key: Bytes, consistency: Consistency) -> Result<Ttl> {
        self.limits.check_key(&key)?;
        let engine = self.readable(&key, consistency)?;
        self.barrier(&key, consistency).await?;
        if let Some(ttl) = engine.ttl_cached(&key)? {
            return Ok(ttl);
        }
        blocking(move || engine.ttl(&key)).await
    }

    /// How many of `keys` exist (a repeated key counts each time).
    pub async fn exists(&self, keys: Vec<Bytes>, consistency: Consistency) -> Result<u64> {
        let targets = self.many(keys, |key| self.readable(key, consistency))?;
        for (_, key) in &targets {
            self.barrier(key, consistency).await?;
        }
        let mut count = 0;
        let mut uncached = Vec::new();
        for (engine, key) in targets {
            match engine.ttl_cached(&key)? {
                Some(ttl) => count += u64::from(ttl != Ttl::Missing),
                None => uncached.push((engine, key)),
            }
        }
        if uncached.is_empty() {
            return Ok(count);
        }
        blocking(move || {
            for (engine, key) in uncached {
                count += u64::from(engine.exists(&key)?);
            }
            Ok(count)
        })
        .await
    }

    /// The engines of the partitions hosted here, by partition id
    /// (standalone: all; cluster: those open now).
    pub(super) fn engines(&self) -> Vec<(u32, Arc<dyn Engine>)> {
        match &self.replication {
            Some(r) => r
                .hosted_ids()
                .into_iter()
                .filter_map(|p| r.engine(p).ok().map(|e| (p, e)))
                .collect(),
            None => self
                .replicas
                .iter()
                .map(|r| (r.partition, r.engine.clone()))
                .collect(),
        }
    }

    /// Ids of the partitions hosted here, ascending (standalone: all).
    pub fn hosted(&self) -> Vec<u32> {
        self.engines().into_iter().map(|(p, _)| p).collect()
    }

    /// fsyncs every partition hosted here (used on shutdown).
    pub async fn flush(&self) -> Result<()> {
        let engines: Vec<_> = self.engines().into_iter().map(|(_, e)| e).collect();
        blocking(move || {
            for engine in engines {
                engine.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Engine status of every partition hosted here, by partition id.
    pub async fn status(&self) -> Result<Vec<(u32, storage::Status)>> {
        let engines = self.engines();
        blocking(move || engines.iter().map(|(p, e)| Ok((*p, e.status()?))).collect()).await
    }

    /// In a cluster, a leader read waits until the leader has committed the
    /// log it took over with (see [`ReplicaManager::read_barrier`]): reads
    /// answer from the applied keydir, which lags the log until then.
    /// Every `consistency: leader` read path calls it before it looks at
    /// the engine, the cached fast paths included.
    pub(super) async fn barrier(&self, key: &[u8], consistency: Consistency) -> Result<()> {
        match (&self.replication, consistency) {
            (Some(r), Consistency::Leader) => {
                r.read_barrier(partition_for(key, self.partition_count))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// `now + ttl_ms`, refused when it does not fit a signed 64-bit count of
    /// milliseconds (as Redis refuses such TTLs).
    fn expire_at(&self, ttl_ms: u64) -> Result<u64> {
        self.clock
            .now_ms()
            .checked_add(ttl_ms)
            .filter(|&at| at <= i64::MAX as u64)
            .ok_or_else(|| Error::InvalidInput(format!("TTL of {ttl_ms} ms is out of range")))
    }

    /// Validates every key and resolves its engine, all before any is
    /// touched, so a multi-key request fails as a whole.
    pub(super) fn many(
        &self,
        keys: Vec<Bytes>,
        resolve: impl Fn(&[u8]) -> Result<Arc<dyn Engine>>,
    ) -> Result<Vec<(Arc<dyn Engine>, Bytes)>> {
        if keys.is_empty() {
            return Err(Error::InvalidInput("at least one key is required".into()));
        }
        // Every key is valid before any is resolved: a bad key fails the
        // request as INVALID_ARGUMENT, never as NOT_LEADER for an earlier
        // key (which would make a router write that key elsewhere first).
        for key in &keys {
            self.limits.check_key(key)?;
        }
        keys.into_iter()
            .map(|key| Ok((resolve(&key)?, key)))
            .collect()
    }

    /// The engine for a write to `key`, if this node leads its partition and
    /// can satisfy `acks`.
    pub(super) fn writable(&self, key: &[u8], acks: Acks) -> Result<Arc<dyn Engine>> {
        let p = partition_for(key, self.partition_count);
        match self.coordinator.role(p) {
            Role::Leader {
                isr, min_insync, ..
            } => {
                if acks == Acks::All && isr < min_insync {
                    return Err(Error::NotEnoughReplicas {
                        partition: p,
                        isr,
                        min_insync,
                    });
                }
                self.replica(p)
            }
            Role::NotLeader { leader } => Err(Error::NotLeader {
                partition: p,
                leader,
            }),
        }
    }

    /// The engine for a read of `key` at `consistency`.
    pub(super) fn readable(&self, key: &[u8], consistency: Consistency) -> Result<Arc<dyn Engine>> {
        let p = partition_for(key, self.partition_count);
        match (self.coordinator.role(p), consistency) {
            (Role::Leader { .. }, _) | (Role::NotLeader { .. }, Consistency::Any) => {
                self.replica(p)
            }
            (Role::NotLeader { leader }, Consistency::Leader) => Err(Error::NotLeader {
                partition: p,
                leader,
            }),
        }
    }

    /// The local replica of partition `p`; in a cluster, `NOT_LEADER`
    /// naming the leader when it is not hosted here.
    fn replica(&self, p: u32) -> Result<Arc<dyn Engine>> {
        if let Some(r) = &self.replication {
            return r.engine(p);
        }
        self.replicas
            .get(p as usize)
            .map(|r| r.engine.clone())
            .ok_or_else(|| Error::Internal(format!("partition {p} is not hosted on this node")))
    }
}

/// Performs one write: submitted to the engine's group commit when it
/// takes it (no thread hand-off; the completion is awaited), otherwise run
/// on the blocking pool. Returns the write's answer.
async fn write(engine: Arc<dyn Engine>, key: Bytes, op: WriteOp) -> Result<bool> {
    Ok(write_op(engine, key, op).await?.done)
}

/// [`write`] with the whole answer (old value, number).
pub(super) async fn write_op(
    engine: Arc<dyn Engine>,
    key: Bytes,
    op: WriteOp,
) -> Result<storage::Written> {
    match engine.submit(&key, &op)? {
        Submitted::Done(w) => Ok(w),
        Submitted::Queued(c) => Ok(c.wait().await?),
        Submitted::Blocking => blocking(move || engine.write(&key, op)).await,
    }
}

/// Runs blocking engine work on tokio's blocking pool and maps its error.
pub(super) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> storage::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Error::from),
        Err(e) => Err(Error::Internal(format!("storage task failed: {e}"))),
    }
}
