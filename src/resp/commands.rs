//! The key commands: arguments checked and worded as Redis does, then one
//! call of the [`KvService`] the gRPC API runs (same defaults, forwarding
//! and metrics). They need no connection state, so a pipeline's key
//! commands can run together (src/resp/connection.rs).
//!
//! Invariants:
//! - arity, syntax and integer errors are decided here, before anything
//!   is sent to the node, in Redis' exact words;
//! - every refusal of the node leaves through [`refusal`]: `NOTLEADER`,
//!   `NOREPLICAS`, `READONLY` (disk full, or writes refused after a failed
//!   fsync), `NOPERM`, `NOAUTH` or `WRONGPASS` (a leader refusing what this
//!   node let through, or the credentials it forwarded) or
//!   `ERR <caskade's message>`;
//! - every read-modify-write (`GETSET`, `GETDEL`, `GETEX`, `INCR`...,
//!   `APPEND`, `PERSIST`, conditional `SET`/`EXPIRE`) is one call of the
//!   node operation that decides it atomically on the partition leader
//!   (src/node/ops.rs), forwarded there by a node that does not lead it;
//! - `MGET` reads its keys as a pipeline's `GET`s are read (one
//!   `get_many`: one forward message per other leader) and `MSET` splits its pairs by
//!   partition: keys of different partitions are allowed (no `CROSSSLOT`),
//!   and neither is atomic across partitions (docs/API.md).

use bytes::Bytes;
use tonic::{Request, Status};

use super::Shared;
use super::options;
use super::parse::parse_i64;
use super::reply::Reply;
use super::table;
use crate::auth::AuthError;
use crate::error::Error;
use crate::proto;
use crate::proto::kv_server::Kv;

/// Where a key command's keys are among its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The first argument.
    First,
    /// Every argument.
    All,
    /// Every other argument from the first (`MSET key value ...`).
    Pairs,
}

/// A key command's keys and whether it writes them; `None` for every other
/// command.
type Class = Option<(Shape, bool)>;

/// The class of the command named `name` (a row of the table).
fn class(name: &str) -> Class {
    let write = match name {
        "set" | "setnx" | "getset" | "mset" | "getdel" | "getex" | "expire" | "pexpire"
        | "expireat" | "pexpireat" | "persist" | "incr" | "decr" | "incrby" | "decrby"
        | "append" | "del" | "unlink" => true,
        "get" | "mget" | "exists" | "ttl" | "pttl" | "expiretime" | "pexpiretime" | "type"
        | "strlen" => false,
        _ => return None,
    };
    let shape = match name {
        "mget" | "exists" | "del" | "unlink" => Shape::All,
        "mset" => Shape::Pairs,
        _ => Shape::First,
    };
    Some((shape, write))
}

/// The keys of one key command, in argument order (see [`keys_of`]).
#[derive(Clone, Debug)]
pub struct Keys<'a> {
    /// The arguments not looked at yet.
    rest: std::slice::Iter<'a, Bytes>,
    /// Where the keys are among them.
    shape: Shape,
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let key = self.rest.next()?;
        match self.shape {
            Shape::First => self.rest = [].iter(),
            Shape::All => {}
            Shape::Pairs => {
                self.rest.next();
            }
        }
        Some(key)
    }
}

/// The keys of a key command and whether it writes them; `None` for every
/// other command (and for a key command with too few arguments, which is
/// answered alone). Allocates nothing: every command of a pipeline passes
/// here (src/resp/connection.rs).
pub fn keys_of(frame: &[Bytes]) -> Option<(Keys<'_>, bool)> {
    static CLASSES: std::sync::OnceLock<Vec<Class>> = std::sync::OnceLock::new();
    let i = table::index(frame.first()?)?;
    let classes = CLASSES.get_or_init(|| table::COMMANDS.iter().map(|s| class(s.name)).collect());
    let (shape, write) = (*classes.get(i)?)?;
    if !table::arity_ok(table::COMMANDS[i].arity, frame.len()) {
        return None;
    }
    let rest = frame.get(1..).unwrap_or_default().iter();
    Some((Keys { rest, shape }, write))
}

/// `ERR wrong number of arguments for 'x' command`.
pub fn arity_error(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// `ERR syntax error`.
pub fn syntax_error() -> Reply {
    Reply::err("syntax error")
}

/// `ERR value is not an integer or out of range`.
pub fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// The RESP answer to a caskade error (see the module invariants).
pub fn refusal(e: Error) -> Reply {
    match e {
        Error::NotLeader { .. } => Reply::Error(format!("NOTLEADER {e}")),
        Error::NotEnoughReplicas { .. } => Reply::Error(format!("NOREPLICAS {e} (min_insync)")),
        Error::DiskFull(m) => Reply::Error(format!("READONLY {m}")),
        // This node let the command through and the partition's leader,
        // configured with other permissions, refused it.
        Error::PermissionDenied(m) => Reply::Error(format!("NOPERM {m}")),
        // This node let the command through and the leader did not accept
        // the credentials forwarded with it (or that none were): the
        // leader's gRPC advice (metadata, caskade-cli settings) means
        // nothing to a Redis client, so the answer says what is wrong.
        Error::Unauthenticated(m) if m == AuthError::Missing.to_string() => Reply::Error(
            "NOAUTH the partition's leader requires authentication and this node, which has \
             no auth: users, has no credentials to forward: give every node the same auth: \
             section"
                .into(),
        ),
        Error::Unauthenticated(m) if m == AuthError::WrongPass.to_string() => Reply::Error(
            "WRONGPASS the partition's leader refused this user's credentials, which this \
             node accepted: give every node the same auth: section"
                .into(),
        ),
        Error::WritesRefused(m) => Reply::Error(format!("READONLY {m}")),
        e => Reply::err(e),
    }
}

/// A service error, as [`refusal`].
pub fn status(s: Status) -> Reply {
    refusal(Error::from(s))
}

/// The answer to a value longer than `storage.limits.max_value_bytes`
/// (checked here so the text names the setting), `None` if it fits.
pub fn value_too_long(sh: &Shared, value: &[u8]) -> Option<Reply> {
    (value.len() > sh.max_value).then(|| {
        Reply::err(format!(
            "value is {} bytes, the limit is {} (storage.limits.max_value_bytes)",
            value.len(),
            sh.max_value
        ))
    })
}

/// Runs one key command (its row exists and its arity was checked by
/// [`keys_of`]'s caller, or is checked here).
pub async fn run(sh: &Shared, f: &[Bytes]) -> Reply {
    let Some(spec) = f.first().and_then(|n| table::lookup(n)) else {
        return Reply::err("unknown command");
    };
    if !table::arity_ok(spec.arity, f.len()) {
        return arity_error(spec.name);
    }
    let svc = &sh.svc;
    match spec.name {
        "get" => match svc.get(get_req(&f[1])).await {
            Ok(r) => r.into_inner().value.map_or(Reply::Nil, Reply::Bulk),
            Err(s) => status(s),
        },
        "strlen" => match svc.strlen(Request::new(read_req(&f[1]))).await {
            Ok(r) => Reply::Int(r.into_inner().value),
            Err(s) => status(s),
        },
        "expiretime" | "pexpiretime" => {
            match svc.expire_time(Request::new(read_req(&f[1]))).await {
                Ok(r) => match r.into_inner().value {
                    ms if ms < 0 || spec.name == "pexpiretime" => Reply::Int(ms),
                    // Rounded to the nearest second, as Redis does.
                    ms => Reply::Int(ms / 1000 + i64::from(ms % 1000 >= 500)),
                },
                Err(s) => status(s),
            }
        }
        // The keys go the way a pipeline's `GET`s go: answered from memory
        // in one pass where they can be, the others read or forwarded
        // together (one message per leader on its forward stream), not as
        // one unary `Get` per key.
        "mget" => {
            let mut values = Vec::with_capacity(f.len() - 1);
            for r in svc.get_many(&f[1..]).await {
                match r {
                    Ok(v) => values.push(v.map_or(Reply::Nil, Reply::Bulk)),
                    Err(s) => return status(s),
                }
            }
            Reply::Array(values)
        }
        "mset" => mset(sh, f).await,
        "set" => options::set(sh, f).await,
        "getex" => options::getex(sh, f).await,
        "expire" | "pexpire" | "expireat" | "pexpireat" => options::expire(sh, spec.name, f).await,
        "setnx" => {
            if let Some(r) = value_too_long(sh, &f[2]) {
                return r;
            }
            let q = proto::SetRequest {
                key: f[1].clone(),
                value: f[2].clone(),
                ttl_ms: None,
                condition: proto::Condition::IfAbsent as i32,
                acks: 0,
            };
            match svc.set(Request::new(q)).await {
                Ok(r) => Reply::Int(i64::from(r.into_inner().written)),
                Err(s) => status(s),
            }
        }
        "getset" => {
            if let Some(r) = value_too_long(sh, &f[2]) {
                return r;
            }
            let q = proto::SetWithRequest {
                key: f[1].clone(),
                value: f[2].clone(),
                expire: None,
                keep_ttl: false,
                condition: proto::Condition::Always as i32,
                get: true,
                acks: 0,
            };
            match svc.set_with(Request::new(q)).await {
                Ok(r) => r.into_inner().old_value.map_or(Reply::Nil, Reply::Bulk),
                Err(s) => status(s),
            }
        }
        "getdel" => match svc.get_del(Request::new(write_req(&f[1]))).await {
            Ok(r) => r.into_inner().value.map_or(Reply::Nil, Reply::Bulk),
            Err(s) => status(s),
        },
        "persist" => match svc.persist(Request::new(write_req(&f[1]))).await {
            Ok(r) => Reply::Int(i64::from(r.into_inner().done)),
            Err(s) => status(s),
        },
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match spec.name {
                "incr" => 1,
                "decr" => -1,
                _ => match (parse_i64(&f[2]), spec.name) {
                    (None, _) => return not_integer(),
                    // Redis' own words for the one decrement it cannot negate.
                    (Some(i64::MIN), "decrby") => return Reply::err("decrement would overflow"),
                    (Some(n), "decrby") => -n,
                    (Some(n), _) => n,
                },
            };
            let q = proto::IncrByRequest {
                key: f[1].clone(),
                delta,
                acks: 0,
            };
            match svc.incr_by(Request::new(q)).await {
                Ok(r) => Reply::Int(r.into_inner().value),
                Err(s) => status(s),
            }
        }
        "append" => {
            let q = proto::AppendRequest {
                key: f[1].clone(),
                value: f[2].clone(),
                acks: 0,
            };
            match svc.append(Request::new(q)).await {
                Ok(r) => Reply::Int(r.into_inner().value),
                Err(s) => status(s),
            }
        }
        "del" | "unlink" => {
            let q = proto::DelRequest {
                keys: f[1..].to_vec(),
                acks: 0,
            };
            match svc.del(Request::new(q)).await {
                Ok(r) => Reply::Int(r.into_inner().deleted as i64),
                Err(s) => status(s),
            }
        }
        "exists" => {
            let q = proto::ExistsRequest {
                keys: f[1..].to_vec(),
                consistency: 0,
            };
            match svc.exists(Request::new(q)).await {
                Ok(r) => Reply::Int(r.into_inner().count as i64),
                Err(s) => status(s),
            }
        }
        "type" => {
            let q = proto::ExistsRequest {
                keys: vec![f[1].clone()],
                consistency: 0,
            };
            match svc.exists(Request::new(q)).await {
                Ok(r) if r.get_ref().count > 0 => Reply::Simple("string"),
                Ok(_) => Reply::Simple("none"),
                Err(s) => status(s),
            }
        }
        "ttl" | "pttl" => {
            let q = proto::TtlRequest {
                key: f[1].clone(),
                consistency: 0,
            };
            match svc.ttl(Request::new(q)).await {
                Ok(r) => {
                    let ms = r.into_inner().ttl_ms;
                    Reply::Int(match (ms, spec.name) {
                        (ms, _) if ms < 0 => ms,
                        (ms, "ttl") => (ms + 500) / 1000,
                        (ms, _) => ms,
                    })
                }
                Err(s) => status(s),
            }
        }
        _ => Reply::err("unknown command"),
    }
}

/// Runs the key commands of one batch (src/resp/connection.rs), answers in
/// order. Its `GET key`s and plain `SET key value`s go to the service
/// together ([`crate::server::KvService::get_many`], `set_many`: the same
/// requests, with one forward per other leader instead of one per key,
/// coalesced with the forwards of other connections), also when there is
/// only one; every other command runs as [`run`]. A kind the batch does
/// not hold costs nothing: `get_many` and `set_many` return at once when
/// empty (before, an empty call read the clock twice and took the
/// in-flight semaphore; GET without pipelining: the server's user CPU per
/// request -20 % in the median of five before/after runs,
/// docs/BENCHMARKS.md run 15). A batch of one command (every read without
/// pipelining) goes straight to `get_one` / `set_one` or [`run`], with
/// none of the vectors that sort a batch by kind (with the batch-free
/// admission of src/resp/connection.rs: the server's user CPU per request
/// -20 % for SET and GET, docs/BENCHMARKS.md run 16).
pub async fn run_batch(sh: &Shared, frames: &[Vec<Bytes>]) -> Vec<Reply> {
    let plain_get = |f: &Vec<Bytes>| f.len() == 2 && f[0].eq_ignore_ascii_case(b"get");
    let plain_set = |f: &Vec<Bytes>| {
        f.len() == 3 && f[0].eq_ignore_ascii_case(b"set") && value_too_long(sh, &f[2]).is_none()
    };
    if let [f] = frames {
        // One command (every read without pipelining): no batch vectors.
        return vec![match () {
            _ if plain_get(f) => got(sh.svc.get_one(&f[1]).await),
            _ if plain_set(f) => stored(sh.svc.set_one(&f[1], &f[2]).await),
            _ => run(sh, f).await,
        }];
    }
    let (mut gets, mut sets, mut others) = (Vec::new(), Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate() {
        match () {
            _ if plain_get(f) => gets.push(i),
            _ if plain_set(f) => sets.push(i),
            _ => others.push(i),
        }
    }
    if gets.is_empty() && sets.is_empty() {
        return futures_util::future::join_all(frames.iter().map(|f| run(sh, f))).await;
    }
    let keys: Vec<Bytes> = gets.iter().map(|&i| frames[i][1].clone()).collect();
    let pairs: Vec<(Bytes, Bytes)> = sets
        .iter()
        .map(|&i| (frames[i][1].clone(), frames[i][2].clone()))
        .collect();
    let (gotten, set, ran) = tokio::join!(
        sh.svc.get_many(&keys),
        sh.svc.set_many(&pairs),
        futures_util::future::join_all(others.iter().map(|&i| run(sh, &frames[i]))),
    );
    let mut replies: Vec<Option<Reply>> = (0..frames.len()).map(|_| None).collect();
    for (&i, r) in gets.iter().zip(gotten) {
        replies[i] = Some(got(r));
    }
    for (&i, r) in sets.iter().zip(set) {
        replies[i] = Some(stored(r));
    }
    for (&i, r) in others.iter().zip(ran) {
        replies[i] = Some(r);
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Reply::err("internal error: a command was not run")))
        .collect()
}

/// The answer to a plain `GET`.
fn got(r: Result<Option<Bytes>, Status>) -> Reply {
    match r {
        Ok(v) => v.map_or(Reply::Nil, Reply::Bulk),
        Err(s) => status(s),
    }
}

/// The answer to a plain `SET`.
fn stored(r: Result<(), Status>) -> Reply {
    match r {
        Ok(()) => Reply::OK,
        Err(s) => status(s),
    }
}

/// `MSET key value [key value ...]`: every value checked against the limit
/// first, then the gRPC `MSet` (split by partition, each part written or
/// forwarded to its leader; not atomic across partitions).
async fn mset(sh: &Shared, f: &[Bytes]) -> Reply {
    if f.len().is_multiple_of(2) {
        return arity_error("mset");
    }
    let mut pairs = Vec::with_capacity(f.len() / 2);
    for kv in f[1..].chunks_exact(2) {
        if let Some(r) = value_too_long(sh, &kv[1]) {
            return r;
        }
        pairs.push(proto::KeyValue {
            key: kv[0].clone(),
            value: kv[1].clone(),
        });
    }
    let q = proto::MSetRequest { pairs, acks: 0 };
    match sh.svc.m_set(Request::new(q)).await {
        Ok(_) => Reply::OK,
        Err(s) => status(s),
    }
}

/// A `KeyRead` request for `key` with the default consistency.
fn read_req(key: &Bytes) -> proto::KeyReadRequest {
    proto::KeyReadRequest {
        key: key.clone(),
        consistency: 0,
    }
}

/// A `KeyWrite` request for `key` with the default acks.
fn write_req(key: &Bytes) -> proto::KeyWriteRequest {
    proto::KeyWriteRequest {
        key: key.clone(),
        acks: 0,
    }
}

/// A `Get` request for `key` with the default consistency.
fn get_req(key: &Bytes) -> Request<proto::GetRequest> {
    Request::new(proto::GetRequest {
        key: key.clone(),
        consistency: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(args: &[&str]) -> Vec<Bytes> {
        args.iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    fn keys(args: &[&str]) -> Option<(Vec<Vec<u8>>, bool)> {
        let f = frame(args);
        keys_of(&f).map(|(k, w)| (k.map(<[u8]>::to_vec).collect(), w))
    }

    fn v(ks: &[&str]) -> Vec<Vec<u8>> {
        ks.iter().map(|k| k.as_bytes().to_vec()).collect()
    }

    /// A leader's engine refusing writes after a failed fsync is `READONLY`
    /// with the storage layer's reason, here and through a forward (the
    /// status a leader answers), and by its variant: an `UNAVAILABLE` of
    /// the same words (an older leader's) is `ERR unavailable: ...`.
    #[test]
    fn writes_refused_is_readonly_by_its_variant_also_when_forwarded() {
        let why = "writes refused: fsync failed (Input/output error (os error 5)); reopen";
        let readonly = Reply::Error(format!("READONLY {why}"));
        assert_eq!(refusal(Error::WritesRefused(why.into())), readonly);
        assert_eq!(status(Error::WritesRefused(why.into()).into()), readonly);
        assert_eq!(
            refusal(Error::Unavailable(why.into())),
            Reply::Error(format!("ERR unavailable: {why}"))
        );
    }

    /// Every shape of key command, any case; not a key command, or a key
    /// command with too few arguments: `None`.
    #[test]
    fn keys_of_each_shape() {
        assert_eq!(keys(&["SET", "k", "v"]), Some((v(&["k"]), true)));
        assert_eq!(
            keys(&["set", "k", "v", "EX", "10"]),
            Some((v(&["k"]), true))
        );
        assert_eq!(keys(&["GeT", "k"]), Some((v(&["k"]), false)));
        assert_eq!(
            keys(&["mget", "a", "b", "c"]),
            Some((v(&["a", "b", "c"]), false))
        );
        assert_eq!(keys(&["DEL", "a", "b"]), Some((v(&["a", "b"]), true)));
        assert_eq!(keys(&["exists", "a"]), Some((v(&["a"]), false)));
        assert_eq!(
            keys(&["MSET", "a", "1", "b", "2"]),
            Some((v(&["a", "b"]), true))
        );
        assert_eq!(keys(&["mset", "a", "1", "b"]), Some((v(&["a", "b"]), true)));
        assert_eq!(keys(&["incrby", "n", "5"]), Some((v(&["n"]), true)));
        assert_eq!(keys(&["ttl", "n"]), Some((v(&["n"]), false)));
        assert_eq!(keys(&["get"]), None, "too few arguments");
        assert_eq!(keys(&["get", "a", "b"]), None, "too many arguments");
        assert_eq!(keys(&["ping"]), None);
        assert_eq!(keys(&["client", "info"]), None);
        assert_eq!(keys(&["nosuch", "k"]), None);
        assert_eq!(keys_of(&[]).map(|(k, w)| (k.count(), w)), None);
    }

    /// A leader's authentication refusal of a forwarded command is
    /// answered with Redis' prefixes and what to fix, not with the gRPC
    /// advice of its text; the leader's other refusals keep theirs.
    #[test]
    fn a_leaders_authentication_refusal_gets_a_redis_prefix() {
        let text = |e: Error| match refusal(e) {
            Reply::Error(m) => m,
            other => panic!("{other:?}"),
        };
        let missing = text(Error::Unauthenticated(AuthError::Missing.to_string()));
        assert!(
            missing.starts_with("NOAUTH the partition's leader"),
            "{missing}"
        );
        assert!(!missing.contains("metadata"), "{missing}");
        let wrong = text(Error::Unauthenticated(AuthError::WrongPass.to_string()));
        assert!(
            wrong.starts_with("WRONGPASS the partition's leader"),
            "{wrong}"
        );
        let throttled = AuthError::Throttled { retry_secs: 3 }.to_string();
        assert_eq!(
            text(Error::Unauthenticated(throttled.clone())),
            format!("ERR {throttled}")
        );
        assert_eq!(
            text(Error::PermissionDenied("no".into())),
            "NOPERM no".to_string()
        );
    }
}
