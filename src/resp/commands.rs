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
//!   fsync) or `ERR <caskade's message>`.

use bytes::Bytes;
use tonic::{Request, Status};

use super::Shared;
use super::parse::parse_i64;
use super::reply::Reply;
use super::table;
use crate::error::Error;
use crate::proto;
use crate::proto::kv_server::Kv;

/// The keys of a key command and whether it writes them; `None` for every
/// other command (and for a key command with too few arguments, which is
/// answered alone).
pub fn keys_of(frame: &[Bytes]) -> Option<(Vec<&[u8]>, bool)> {
    let name = frame.first()?;
    let spec = table::lookup(name)?;
    if !table::arity_ok(spec.arity, frame.len()) {
        return None;
    }
    let write = match spec.name {
        "set" | "setnx" | "expire" | "pexpire" | "del" | "unlink" => true,
        "get" | "mget" | "exists" | "ttl" | "pttl" | "type" | "strlen" => false,
        _ => return None,
    };
    let keys = match spec.name {
        "mget" | "exists" | "del" | "unlink" => frame[1..].iter().map(|k| &k[..]).collect(),
        _ => vec![&frame[1][..]],
    };
    Some((keys, write))
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
        Error::Unavailable(m) if m.starts_with("writes refused") => {
            Reply::Error(format!("READONLY {m}"))
        }
        e => Reply::err(e),
    }
}

/// A service error, as [`refusal`].
fn status(s: Status) -> Reply {
    refusal(Error::from(s))
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
        "strlen" => match svc.get(get_req(&f[1])).await {
            Ok(r) => Reply::Int(r.into_inner().value.map_or(0, |v| v.len() as i64)),
            Err(s) => status(s),
        },
        "mget" => {
            let all = futures_util::future::join_all(f[1..].iter().map(|k| svc.get(get_req(k))));
            let mut values = Vec::with_capacity(f.len() - 1);
            for r in all.await {
                match r {
                    Ok(r) => values.push(r.into_inner().value.map_or(Reply::Nil, Reply::Bulk)),
                    Err(s) => return status(s),
                }
            }
            Reply::Array(values)
        }
        "set" => set(sh, f).await,
        "setnx" => {
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
        "expire" | "pexpire" => expire(sh, spec.name, f).await,
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

/// A `Get` request for `key` with the default consistency.
fn get_req(key: &Bytes) -> Request<proto::GetRequest> {
    Request::new(proto::GetRequest {
        key: key.clone(),
        consistency: 0,
    })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, its
/// options parsed as Redis 7 parses them (syntax first, numbers after).
async fn set(sh: &Shared, f: &[Bytes]) -> Reply {
    #[derive(PartialEq, Clone, Copy)]
    enum Unit {
        Ex,
        Px,
        ExAt,
        PxAt,
    }
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire: Option<(Unit, &Bytes)> = None;
    let mut j = 3;
    while j < f.len() {
        let opt = f[j].to_ascii_lowercase();
        let next = f.get(j + 1);
        match opt.as_slice() {
            b"nx" if !xx => nx = true,
            b"xx" if !nx => xx = true,
            b"get" => get = true,
            b"keepttl" if expire.is_none() => keepttl = true,
            b"ex" | b"px" | b"exat" | b"pxat" if !keepttl && expire.is_none() && next.is_some() => {
                let unit = match opt.as_slice() {
                    b"ex" => Unit::Ex,
                    b"px" => Unit::Px,
                    b"exat" => Unit::ExAt,
                    _ => Unit::PxAt,
                };
                expire = next.map(|n| (unit, n));
                j += 1;
            }
            _ => return syntax_error(),
        }
        j += 1;
    }
    let mut ttl_ms = None;
    if let Some((unit, raw)) = expire {
        let Some(n) = parse_i64(raw) else {
            return not_integer();
        };
        if n <= 0 {
            return Reply::err("invalid expire time in 'set' command");
        }
        match unit {
            Unit::Ex => match n.checked_mul(1000) {
                Some(ms) => ttl_ms = Some(ms as u64),
                None => return Reply::err("invalid expire time in 'set' command"),
            },
            Unit::Px => ttl_ms = Some(n as u64),
            // Wiring point (waiting for the atomic operations on Node):
            // EXAT / PXAT need an absolute expiry on the node.
            Unit::ExAt => return not_yet("SET", "EXAT"),
            Unit::PxAt => return not_yet("SET", "PXAT"),
        }
    }
    // Wiring points (waiting for the atomic operations on Node): GET needs
    // an atomic get-and-set, KEEPTTL a set that keeps the old expiry.
    if get {
        return not_yet("SET", "GET");
    }
    if keepttl {
        return not_yet("SET", "KEEPTTL");
    }
    if f[2].len() > sh.max_value {
        return Reply::err(format!(
            "value is {} bytes, the limit is {} (storage.limits.max_value_bytes)",
            f[2].len(),
            sh.max_value
        ));
    }
    let condition = match (nx, xx) {
        (true, _) => proto::Condition::IfAbsent,
        (_, true) => proto::Condition::IfPresent,
        _ => proto::Condition::Always,
    };
    let q = proto::SetRequest {
        key: f[1].clone(),
        value: f[2].clone(),
        ttl_ms,
        condition: condition as i32,
        acks: 0,
    };
    match sh.svc.set(Request::new(q)).await {
        Ok(r) if r.get_ref().written => Reply::OK,
        Ok(_) => Reply::Nil,
        Err(s) => status(s),
    }
}

/// `EXPIRE key seconds` / `PEXPIRE key ms` (without NX/XX/GT/LT yet).
async fn expire(sh: &Shared, name: &str, f: &[Bytes]) -> Reply {
    let Some(n) = parse_i64(&f[2]) else {
        return not_integer();
    };
    if f.len() > 3 {
        // Wiring point (waiting for the atomic operations on Node): the
        // NX / XX / GT / LT conditions.
        let opt = String::from_utf8_lossy(&f[3]).to_ascii_uppercase();
        return match opt.as_str() {
            "NX" | "XX" | "GT" | "LT" => not_yet(&name.to_ascii_uppercase(), &opt),
            _ => Reply::err(format!(
                "Unsupported option {}",
                String::from_utf8_lossy(&f[3])
            )),
        };
    }
    let ms = if name == "expire" {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    let Some(ms) = ms else {
        return Reply::err(format!("invalid expire time in '{name}' command"));
    };
    // Not in the future: Redis deletes the key (and answers 1 if it existed).
    let q = proto::ExpireRequest {
        key: f[1].clone(),
        ttl_ms: ms.max(0) as u64,
        acks: 0,
    };
    match sh.svc.expire(Request::new(q)).await {
        Ok(r) => Reply::Int(i64::from(r.into_inner().existed)),
        Err(s) => status(s),
    }
}

/// An option caskade does not offer yet.
fn not_yet(command: &str, option: &str) -> Reply {
    Reply::err(format!(
        "{command} option {option} is not supported by caskade yet"
    ))
}
