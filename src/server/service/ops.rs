//! The handlers of the Redis string RPCs (`SetWith` ... `DbSize`, issue
//! 11): decode, call the [`Node`](crate::node::Node) operation, forward to
//! the partition's leader on `NOT_LEADER`, encode.
//!
//! Invariants (beyond those of the service):
//! - a single-key RPC is forwarded as `Set` is: once, marked
//!   `caskade-forwarded`, to the leader the `NOT_LEADER` names;
//! - `MGet`/`MSet` whose keys are not all led here are split by partition:
//!   each partition's keys are served here or forwarded, as one request, to
//!   its leader; `MGet` answers in the order of the request's keys; an
//!   `MSet` part that fails after other keys were written answers as a
//!   multi-key `DEL` does ([`Error::after_partial_write`]);
//! - `DbSize` is never forwarded: it counts the keys of the partitions the
//!   answering node leads.

use std::collections::BTreeMap;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::{KvService, forwarded, leader_of};
use crate::error::{Error, Result};
use crate::node::{ExpireTime, GetExpiry, SetWith};
use crate::proto;
use crate::server::metrics::Command;
use crate::storage::{ExpireFlags, Expiry};

/// A handler's reply.
type Reply<A> = std::result::Result<Response<A>, Status>;

/// Decodes an expiry; a message without its `when` is refused.
fn expire_time(t: Option<proto::ExpireTime>) -> Result<Option<ExpireTime>> {
    use proto::expire_time::When;
    match t {
        None => Ok(None),
        Some(proto::ExpireTime { when: None }) => Err(Error::InvalidInput(
            "an expiry needs ttl_ms or at_ms".into(),
        )),
        Some(proto::ExpireTime {
            when: Some(When::TtlMs(ms)),
        }) => Ok(Some(ExpireTime::In(ms))),
        Some(proto::ExpireTime {
            when: Some(When::AtMs(ms)),
        }) => Ok(Some(ExpireTime::At(ms))),
    }
}

impl KvService {
    /// A single-key RPC: `local` on this node, forwarded with `remote` to
    /// the leader a `NOT_LEADER` names (unless it was forwarded here),
    /// `encode` for the answer.
    async fn one<Q, A, T, L, LF, E, R, RF>(
        &self,
        command: Command,
        request: Request<Q>,
        local: L,
        encode: E,
        remote: R,
    ) -> Reply<A>
    where
        Q: Clone,
        L: FnOnce(Q) -> LF,
        LF: Future<Output = Result<T>>,
        E: FnOnce(T) -> A,
        R: FnOnce(proto::kv_client::KvClient<tonic::transport::Channel>, Request<Q>) -> RF,
        RF: Future<Output = std::result::Result<Response<A>, Status>>,
    {
        let again = !forwarded(&request);
        let r = request.into_inner();
        self.run(command, async {
            let result = local(r.clone()).await;
            if let Some(addr) = leader_of(&result).filter(|_| again) {
                return self.forward(&addr, r, remote).await;
            }
            Ok(encode(result?))
        })
        .await
    }

    /// `SetWith`.
    pub(super) async fn set_with_rpc(
        &self,
        request: Request<proto::SetWithRequest>,
    ) -> Reply<proto::SetWithResponse> {
        let local = |r: proto::SetWithRequest| async move {
            let args = SetWith {
                expire: expire_time(r.expire)?,
                keep_ttl: r.keep_ttl,
                condition: super::condition(r.condition)?,
                get: r.get,
                acks: self.acks(r.acks)?,
            };
            self.node.set_with(r.key, r.value, args).await
        };
        let encode = |o: crate::node::SetOutcome| proto::SetWithResponse {
            written: o.written,
            old_value: o.old,
        };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.set_with(q).await };
        self.one(Command::SetWith, request, local, encode, remote)
            .await
    }

    /// `GetDel`.
    pub(super) async fn get_del_rpc(
        &self,
        request: Request<proto::KeyWriteRequest>,
    ) -> Reply<proto::ValueResponse> {
        let local = |r: proto::KeyWriteRequest| async move {
            self.node.getdel(r.key, self.acks(r.acks)?).await
        };
        let encode = |value| proto::ValueResponse { value };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.get_del(q).await };
        self.one(Command::GetDel, request, local, encode, remote)
            .await
    }

    /// `GetEx`.
    pub(super) async fn get_ex_rpc(
        &self,
        request: Request<proto::GetExRequest>,
    ) -> Reply<proto::ValueResponse> {
        let local = |r: proto::GetExRequest| async move {
            let expiry = match (expire_time(r.expire)?, r.persist) {
                (Some(_), true) => return Err(Error::InvalidInput("syntax error".into())),
                (Some(t), false) => GetExpiry::Set(t),
                (None, true) => GetExpiry::Persist,
                (None, false) => GetExpiry::Keep,
            };
            self.node.getex(r.key, expiry, self.acks(r.acks)?).await
        };
        let encode = |value| proto::ValueResponse { value };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.get_ex(q).await };
        self.one(Command::GetEx, request, local, encode, remote)
            .await
    }

    /// `ExpireWith`.
    pub(super) async fn expire_with_rpc(
        &self,
        request: Request<proto::ExpireWithRequest>,
    ) -> Reply<proto::FlagResponse> {
        let local = |r: proto::ExpireWithRequest| async move {
            let when = expire_time(r.when)?
                .ok_or_else(|| Error::InvalidInput("an expiry is required".into()))?;
            let flags = ExpireFlags {
                nx: r.nx,
                xx: r.xx,
                gt: r.gt,
                lt: r.lt,
            };
            self.node
                .expire_with(r.key, when, flags, self.acks(r.acks)?)
                .await
        };
        let encode = |done| proto::FlagResponse { done };
        let remote =
            |mut c: proto::kv_client::KvClient<_>, q| async move { c.expire_with(q).await };
        self.one(Command::ExpireWith, request, local, encode, remote)
            .await
    }

    /// `Persist`.
    pub(super) async fn persist_rpc(
        &self,
        request: Request<proto::KeyWriteRequest>,
    ) -> Reply<proto::FlagResponse> {
        let local = |r: proto::KeyWriteRequest| async move {
            self.node.persist(r.key, self.acks(r.acks)?).await
        };
        let encode = |done| proto::FlagResponse { done };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.persist(q).await };
        self.one(Command::Persist, request, local, encode, remote)
            .await
    }

    /// `IncrBy`.
    pub(super) async fn incr_by_rpc(
        &self,
        request: Request<proto::IncrByRequest>,
    ) -> Reply<proto::IntResponse> {
        let local = |r: proto::IncrByRequest| async move {
            self.node.incr_by(r.key, r.delta, self.acks(r.acks)?).await
        };
        let encode = |value| proto::IntResponse { value };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.incr_by(q).await };
        self.one(Command::IncrBy, request, local, encode, remote)
            .await
    }

    /// `Append`.
    pub(super) async fn append_rpc(
        &self,
        request: Request<proto::AppendRequest>,
    ) -> Reply<proto::IntResponse> {
        let local = |r: proto::AppendRequest| async move {
            self.node.append(r.key, r.value, self.acks(r.acks)?).await
        };
        let encode = |len: u64| proto::IntResponse {
            value: i64::try_from(len).unwrap_or(i64::MAX),
        };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.append(q).await };
        self.one(Command::Append, request, local, encode, remote)
            .await
    }

    /// `Strlen`.
    pub(super) async fn strlen_rpc(
        &self,
        request: Request<proto::KeyReadRequest>,
    ) -> Reply<proto::IntResponse> {
        let local = |r: proto::KeyReadRequest| async move {
            self.node
                .strlen(r.key, self.consistency(r.consistency)?)
                .await
        };
        let encode = |len: u64| proto::IntResponse {
            value: i64::try_from(len).unwrap_or(i64::MAX),
        };
        let remote = |mut c: proto::kv_client::KvClient<_>, q| async move { c.strlen(q).await };
        self.one(Command::Strlen, request, local, encode, remote)
            .await
    }

    /// `ExpireTime`.
    pub(super) async fn expire_time_rpc(
        &self,
        request: Request<proto::KeyReadRequest>,
    ) -> Reply<proto::IntResponse> {
        let local = |r: proto::KeyReadRequest| async move {
            self.node
                .expire_time(r.key, self.consistency(r.consistency)?)
                .await
        };
        let encode = |e| proto::IntResponse {
            value: match e {
                Expiry::Missing => -2,
                Expiry::Persistent => -1,
                Expiry::At(at) => i64::try_from(at).unwrap_or(i64::MAX),
            },
        };
        let remote =
            |mut c: proto::kv_client::KvClient<_>, q| async move { c.expire_time(q).await };
        self.one(Command::ExpireTime, request, local, encode, remote)
            .await
    }

    /// Indexes of `keys` grouped by partition.
    pub(super) fn by_partition(&self, keys: &[Bytes]) -> BTreeMap<u32, Vec<usize>> {
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let p = crate::cluster::partition_for(key, self.node.partition_count());
            groups.entry(p).or_default().push(i);
        }
        groups
    }

    /// `MGet`.
    pub(super) async fn m_get_rpc(
        &self,
        request: Request<proto::MGetRequest>,
    ) -> Reply<proto::MGetResponse> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        self.run(Command::MGet, async {
            self.check_keys(r.keys.len())?;
            let consistency = self.consistency(r.consistency)?;
            let result = self.node.mget(r.keys.clone(), consistency).await;
            let values = if leader_of(&result).is_none() || !again {
                result?
            } else {
                let mut values = vec![None; r.keys.len()];
                for (_, idx) in self.by_partition(&r.keys) {
                    let keys: Vec<Bytes> = idx.iter().map(|&i| r.keys[i].clone()).collect();
                    let part = self.node.mget(keys.clone(), consistency).await;
                    let got: Vec<Option<Bytes>> = match leader_of(&part) {
                        Some(addr) => {
                            let q = proto::MGetRequest {
                                keys,
                                consistency: r.consistency,
                            };
                            let reply = self
                                .forward(&addr, q, |mut c, q| async move { c.m_get(q).await })
                                .await?;
                            reply.values.into_iter().map(|m| m.value).collect()
                        }
                        None => part?,
                    };
                    if got.len() != idx.len() {
                        return Err(Error::Internal(format!(
                            "MGet of {} keys answered {} values",
                            idx.len(),
                            got.len()
                        )));
                    }
                    for (i, v) in idx.into_iter().zip(got) {
                        values[i] = v;
                    }
                }
                values
            };
            Ok(proto::MGetResponse {
                values: values
                    .into_iter()
                    .map(|value| proto::MaybeValue { value })
                    .collect(),
            })
        })
        .await
    }

    /// `MSet`.
    pub(super) async fn m_set_rpc(
        &self,
        request: Request<proto::MSetRequest>,
    ) -> Reply<proto::MSetResponse> {
        let again = !forwarded(&request);
        let r = request.into_inner();
        self.run(Command::MSet, async {
            self.check_keys(r.pairs.len())?;
            let acks = self.acks(r.acks)?;
            let pairs = |idx: &[usize]| -> Vec<(Bytes, Bytes)> {
                idx.iter()
                    .map(|&i| (r.pairs[i].key.clone(), r.pairs[i].value.clone()))
                    .collect()
            };
            let all: Vec<usize> = (0..r.pairs.len()).collect();
            let result = self.node.mset(pairs(&all), acks).await;
            if leader_of(&result).is_none() || !again {
                result?;
                return Ok(proto::MSetResponse {});
            }
            let keys: Vec<Bytes> = r.pairs.iter().map(|kv| kv.key.clone()).collect();
            let total = keys.len();
            let mut done = 0;
            for (_, idx) in self.by_partition(&keys) {
                let part = self.node.mset(pairs(&idx), acks).await;
                let outcome = match leader_of(&part) {
                    Some(addr) => {
                        let q = proto::MSetRequest {
                            pairs: idx.iter().map(|&i| r.pairs[i].clone()).collect(),
                            acks: r.acks,
                        };
                        self.forward(&addr, q, |mut c, q| async move { c.m_set(q).await })
                            .await
                            .map(|_| ())
                    }
                    None => part,
                };
                outcome.map_err(|e| e.after_partial_write(done, total))?;
                done += idx.len();
            }
            Ok(proto::MSetResponse {})
        })
        .await
    }

    /// `DbSize`: never forwarded.
    pub(super) async fn db_size_rpc(
        &self,
        _request: Request<proto::DbSizeRequest>,
    ) -> Reply<proto::IntResponse> {
        self.run(Command::DbSize, async {
            let n = self.node.dbsize().await?;
            Ok(proto::IntResponse {
                value: i64::try_from(n).unwrap_or(i64::MAX),
            })
        })
        .await
    }
}
