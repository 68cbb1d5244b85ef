//! Client calls of the Redis string RPCs (issue 11). Single-key calls route
//! to the key's leader and retry as every keyed call does
//! (`Client::keyed`); `mget`/`mset` go to the leader of the first key,
//! which serves or forwards each partition's keys; `dbsize` asks the seed
//! node only (its own count, see docs/API.md).

use bytes::Bytes;

use super::{Client, acks, consistency};
use crate::error::{Error, Result};
use crate::node::{ExpireTime, GetExpiry, SetOutcome, SetWith};
use crate::proto;
use crate::storage::{Condition, ExpireFlags, Expiry};

/// The wire form of an expiry.
fn wire(t: ExpireTime) -> proto::ExpireTime {
    use proto::expire_time::When;
    proto::ExpireTime {
        when: Some(match t {
            ExpireTime::In(ms) => When::TtlMs(ms),
            ExpireTime::At(ms) => When::AtMs(ms),
        }),
    }
}

impl Client {
    /// `SET` with every option; `args.acks` is used as given.
    pub async fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        args: SetWith,
    ) -> Result<SetOutcome> {
        let key = key.into();
        let condition = match args.condition {
            Condition::Always => proto::Condition::Always,
            Condition::IfAbsent => proto::Condition::IfAbsent,
            Condition::IfPresent => proto::Condition::IfPresent,
        };
        let request = proto::SetWithRequest {
            key: key.clone(),
            value: value.into(),
            expire: args.expire.map(wire),
            keep_ttl: args.keep_ttl,
            condition: condition.into(),
            get: args.get,
            acks: acks(args.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.set_with(q).await })
            .await?;
        Ok(SetOutcome {
            written: reply.written,
            old: reply.old_value,
        })
    }

    /// `GETDEL`: the old value.
    pub async fn getdel(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        let key = key.into();
        let request = proto::KeyWriteRequest {
            key: key.clone(),
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.get_del(q).await })
            .await?;
        Ok(reply.value)
    }

    /// `GETEX`: the value, changing the expiry as `expiry` says.
    pub async fn getex(&self, key: impl Into<Bytes>, expiry: GetExpiry) -> Result<Option<Bytes>> {
        let key = key.into();
        let (expire, persist) = match expiry {
            GetExpiry::Keep => (None, false),
            GetExpiry::Persist => (None, true),
            GetExpiry::Set(t) => (Some(wire(t)), false),
        };
        let request = proto::GetExRequest {
            key: key.clone(),
            expire,
            persist,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.get_ex(q).await })
            .await?;
        Ok(reply.value)
    }

    /// `EXPIRE` and friends with NX/XX/GT/LT: whether the expiry was set.
    pub async fn expire_with(
        &self,
        key: impl Into<Bytes>,
        when: ExpireTime,
        flags: ExpireFlags,
    ) -> Result<bool> {
        let key = key.into();
        let request = proto::ExpireWithRequest {
            key: key.clone(),
            when: Some(wire(when)),
            nx: flags.nx,
            xx: flags.xx,
            gt: flags.gt,
            lt: flags.lt,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(
                &key,
                request,
                |mut c, q| async move { c.expire_with(q).await },
            )
            .await?;
        Ok(reply.done)
    }

    /// `PERSIST`: whether an expiry was removed.
    pub async fn persist(&self, key: impl Into<Bytes>) -> Result<bool> {
        let key = key.into();
        let request = proto::KeyWriteRequest {
            key: key.clone(),
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.persist(q).await })
            .await?;
        Ok(reply.done)
    }

    /// `INCRBY`: the new value.
    pub async fn incr_by(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64> {
        let key = key.into();
        let request = proto::IncrByRequest {
            key: key.clone(),
            delta,
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.incr_by(q).await })
            .await?;
        Ok(reply.value)
    }

    /// `APPEND`: the new length.
    pub async fn append(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let key = key.into();
        let request = proto::AppendRequest {
            key: key.clone(),
            value: value.into(),
            acks: acks(self.acks).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.append(q).await })
            .await?;
        non_negative(reply.value)
    }

    /// `STRLEN`.
    pub async fn strlen(&self, key: impl Into<Bytes>) -> Result<u64> {
        let key = key.into();
        let request = proto::KeyReadRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(&key, request, |mut c, q| async move { c.strlen(q).await })
            .await?;
        non_negative(reply.value)
    }

    /// `PEXPIRETIME`.
    pub async fn expire_time(&self, key: impl Into<Bytes>) -> Result<Expiry> {
        let key = key.into();
        let request = proto::KeyReadRequest {
            key: key.clone(),
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(
                &key,
                request,
                |mut c, q| async move { c.expire_time(q).await },
            )
            .await?;
        Ok(match reply.value {
            -2 => Expiry::Missing,
            -1 => Expiry::Persistent,
            at => Expiry::At(non_negative(at)?),
        })
    }

    /// `MGET`: one answer per key, in order.
    pub async fn mget(&self, keys: Vec<Bytes>) -> Result<Vec<Option<Bytes>>> {
        let first = keys.first().cloned().unwrap_or_default();
        let n = keys.len();
        let request = proto::MGetRequest {
            keys,
            consistency: consistency(self.consistency).into(),
        };
        let reply = self
            .keyed(&first, request, |mut c, q| async move { c.m_get(q).await })
            .await?;
        if reply.values.len() != n {
            return Err(Error::Internal(format!(
                "MGET of {n} keys answered {} values",
                reply.values.len()
            )));
        }
        Ok(reply.values.into_iter().map(|m| m.value).collect())
    }

    /// `MSET` (not atomic across keys).
    pub async fn mset(&self, pairs: Vec<(Bytes, Bytes)>) -> Result<()> {
        let first = pairs.first().map(|p| p.0.clone()).unwrap_or_default();
        let request = proto::MSetRequest {
            pairs: pairs
                .into_iter()
                .map(|(key, value)| proto::KeyValue { key, value })
                .collect(),
            acks: acks(self.acks).into(),
        };
        self.keyed(&first, request, |mut c, q| async move { c.m_set(q).await })
            .await?;
        Ok(())
    }

    /// `DBSIZE` of the node this client talks to (its first seed).
    pub async fn dbsize(&self) -> Result<u64> {
        let reply = self
            .any()
            .db_size(proto::DbSizeRequest {})
            .await
            .map_err(|s| self.error(s))?;
        non_negative(reply.into_inner().value)
    }
}

/// A count or instant the server sent, which cannot be negative.
fn non_negative(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Internal(format!("server sent a negative count {v}")))
}
