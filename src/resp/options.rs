//! The key commands with options: `SET`, `GETEX` and the `EXPIRE` family,
//! their options parsed in the order Redis 7 parses them, so a request
//! with several faults gets the error Redis gives first.
//!
//! Invariants:
//! - `SET` / `GETEX` options: a syntax error (an unknown option, `NX`
//!   with `XX`, two different expiry units, `KEEPTTL` or `PERSIST` with
//!   an expiry, an expiry without its number) is answered before the
//!   number is read; the same unit given twice keeps the last, as Redis;
//! - an expiry that is not a positive integer, or whose millisecond
//!   instant would not fit a signed 64-bit integer, is refused as
//!   `ERR invalid expire time in '<command>' command` (not an integer:
//!   `ERR value is not an integer or out of range`) and nothing is
//!   written; `GETEX` on a missing key answers nil before the number is
//!   looked at, as Redis;
//! - `EXPIRE` family: the NX/XX/GT/LT options are checked (`Unsupported
//!   option`, incompatible pairs) before the number; a time not in the
//!   future deletes the key (answer 1 if it existed);
//! - plain `SET` (no `GET`, `KEEPTTL`, `EXAT`, `PXAT`) is the gRPC `Set`,
//!   the node's fast path; every other form is `SetWith`, decided by the
//!   partition leader on the key's newest record.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tonic::Request;

use super::Shared;
use super::commands::{not_integer, status, syntax_error, value_too_long};
use super::parse::parse_i64;
use super::reply::Reply;
use crate::proto;
use crate::proto::expire_time::When;
use crate::proto::kv_server::Kv;

/// The unit of an expiry option.
#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Unit {
    /// `EX seconds` (from now).
    Ex,
    /// `PX milliseconds` (from now).
    Px,
    /// `EXAT unix-seconds`.
    ExAt,
    /// `PXAT unix-milliseconds`.
    PxAt,
}

/// The options of `SET` (`for_getex` false) or `GETEX` (true).
#[derive(Default)]
struct Options<'a> {
    /// `NX`.
    nx: bool,
    /// `XX`.
    xx: bool,
    /// `GET`.
    get: bool,
    /// `KEEPTTL`.
    keepttl: bool,
    /// `PERSIST` (GETEX only).
    persist: bool,
    /// The expiry option and its raw number.
    expire: Option<(Unit, &'a Bytes)>,
}

/// Parses `f[from..]` as Redis' `parseExtendedStringArgumentsOrReply`;
/// `None` is a syntax error.
fn parse_options(f: &[Bytes], from: usize, for_getex: bool) -> Option<Options<'_>> {
    let mut o = Options::default();
    let mut j = from;
    while j < f.len() {
        let opt = f[j].to_ascii_lowercase();
        let next = f.get(j + 1);
        let unit = match opt.as_slice() {
            b"ex" => Some(Unit::Ex),
            b"px" => Some(Unit::Px),
            b"exat" => Some(Unit::ExAt),
            b"pxat" => Some(Unit::PxAt),
            _ => None,
        };
        match (opt.as_slice(), unit) {
            (b"nx", _) if !o.xx && !for_getex => o.nx = true,
            (b"xx", _) if !o.nx && !for_getex => o.xx = true,
            (b"get", _) if !for_getex => o.get = true,
            (b"keepttl", _) if o.expire.is_none() && !for_getex => o.keepttl = true,
            (b"persist", _) if o.expire.is_none() && for_getex => o.persist = true,
            (_, Some(u))
                if !o.keepttl
                    && !o.persist
                    && o.expire.is_none_or(|(had, _)| had == u)
                    && next.is_some() =>
            {
                o.expire = next.map(|n| (u, n));
                j += 1;
            }
            _ => return None,
        }
        j += 1;
    }
    Some(o)
}

/// Now, in Unix milliseconds (this node's clock, for the overflow check
/// only; the leader turns a relative expiry into an instant).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `ERR invalid expire time in '<command>' command`.
fn invalid_expire(command: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{command}' command"))
}

/// The expiry of `SET` / `GETEX` as the node takes it, checked as Redis'
/// `getExpireMillisecondsOrReply`: positive, and its instant must fit.
fn positive_expiry(unit: Unit, raw: &Bytes, command: &str) -> Result<proto::ExpireTime, Reply> {
    let n = parse_i64(raw).ok_or_else(not_integer)?;
    let seconds = matches!(unit, Unit::Ex | Unit::ExAt);
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(invalid_expire(command));
    }
    let ms = if seconds { n * 1000 } else { n };
    let when = match unit {
        Unit::Ex | Unit::Px if ms > i64::MAX - now_ms() => return Err(invalid_expire(command)),
        Unit::Ex | Unit::Px => When::TtlMs(ms),
        Unit::ExAt | Unit::PxAt => When::AtMs(ms),
    };
    Ok(proto::ExpireTime { when: Some(when) })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
pub async fn set(sh: &Shared, f: &[Bytes]) -> Reply {
    let Some(o) = parse_options(f, 3, false) else {
        return syntax_error();
    };
    let expire = match o.expire {
        None => None,
        Some((unit, raw)) => match positive_expiry(unit, raw, "set") {
            Ok(t) => Some(t),
            Err(r) => return r,
        },
    };
    if let Some(r) = value_too_long(sh, &f[2]) {
        return r;
    }
    let condition = match (o.nx, o.xx) {
        (true, _) => proto::Condition::IfAbsent,
        (_, true) => proto::Condition::IfPresent,
        _ => proto::Condition::Always,
    };
    let relative = |t: &proto::ExpireTime| match t.when {
        Some(When::TtlMs(ms)) => Some(ms as u64),
        _ => None,
    };
    let plain = !o.get && !o.keepttl && expire.as_ref().is_none_or(|t| relative(t).is_some());
    if plain {
        let q = proto::SetRequest {
            key: f[1].clone(),
            value: f[2].clone(),
            ttl_ms: expire.as_ref().and_then(relative),
            condition: condition as i32,
            acks: 0,
        };
        return match sh.svc.set(Request::new(q)).await {
            Ok(r) if r.get_ref().written => Reply::OK,
            Ok(_) => Reply::Nil,
            Err(s) => status(s),
        };
    }
    let q = proto::SetWithRequest {
        key: f[1].clone(),
        value: f[2].clone(),
        expire,
        keep_ttl: o.keepttl,
        condition: condition as i32,
        get: o.get,
        acks: 0,
    };
    match sh.svc.set_with(Request::new(q)).await {
        // With GET: the old value, whether or not NX/XX let the write happen.
        Ok(r) if o.get => r.into_inner().old_value.map_or(Reply::Nil, Reply::Bulk),
        Ok(r) if r.get_ref().written => Reply::OK,
        Ok(_) => Reply::Nil,
        Err(s) => status(s),
    }
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
pub async fn getex(sh: &Shared, f: &[Bytes]) -> Reply {
    let Some(o) = parse_options(f, 2, true) else {
        return syntax_error();
    };
    let expire = match o.expire {
        None => None,
        Some((unit, raw)) => match positive_expiry(unit, raw, "getex") {
            Ok(t) => Some(t),
            // Redis looks the key up before the number: nil when missing.
            Err(e) => {
                let q = proto::ExistsRequest {
                    keys: vec![f[1].clone()],
                    consistency: 0,
                };
                return match sh.svc.exists(Request::new(q)).await {
                    Ok(r) if r.get_ref().count == 0 => Reply::Nil,
                    Ok(_) => e,
                    Err(s) => status(s),
                };
            }
        },
    };
    let q = proto::GetExRequest {
        key: f[1].clone(),
        expire,
        persist: o.persist,
        acks: 0,
    };
    match sh.svc.get_ex(Request::new(q)).await {
        Ok(r) => r.into_inner().value.map_or(Reply::Nil, Reply::Bulk),
        Err(s) => status(s),
    }
}

/// `EXPIRE key seconds` / `PEXPIRE key ms` / `EXPIREAT key unix-s` /
/// `PEXPIREAT key unix-ms`, each with `[NX|XX|GT|LT]`.
pub async fn expire(sh: &Shared, name: &str, f: &[Bytes]) -> Reply {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &f[3..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                let o = String::from_utf8_lossy(opt);
                return Reply::err(format!("Unsupported option {o}"));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("GT and LT options at the same time are not compatible");
    }
    let Some(n) = parse_i64(&f[2]) else {
        return not_integer();
    };
    let (seconds, relative) = match name {
        "expire" => (true, true),
        "pexpire" => (false, true),
        "expireat" => (true, false),
        _ => (false, false),
    };
    let ms = if seconds {
        match n.checked_mul(1000) {
            Some(ms) => ms,
            None => return invalid_expire(name),
        }
    } else {
        n
    };
    let when = if relative {
        if ms > i64::MAX - now_ms() {
            return invalid_expire(name);
        }
        When::TtlMs(ms)
    } else {
        When::AtMs(ms)
    };
    let q = proto::ExpireWithRequest {
        key: f[1].clone(),
        when: Some(proto::ExpireTime { when: Some(when) }),
        nx,
        xx,
        gt,
        lt,
        acks: 0,
    };
    match sh.svc.expire_with(Request::new(q)).await {
        Ok(r) => Reply::Int(i64::from(r.into_inner().done)),
        Err(s) => status(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<Bytes> {
        s.iter().map(|a| Bytes::from(a.to_string())).collect()
    }

    #[test]
    fn set_options_parse_as_redis() {
        let ok = |s: &[&str]| parse_options(&args(s), 3, false).is_some();
        assert!(ok(&["set", "k", "v", "NX", "GET", "EX", "1"]));
        assert!(ok(&["set", "k", "v", "ex", "1", "EX", "2"]));
        assert!(ok(&["set", "k", "v", "nx", "nx"]));
        assert!(!ok(&["set", "k", "v", "NX", "XX"]));
        assert!(!ok(&["set", "k", "v", "EX", "1", "PX", "2"]));
        assert!(!ok(&["set", "k", "v", "KEEPTTL", "EX", "2"]));
        assert!(!ok(&["set", "k", "v", "EX", "2", "KEEPTTL"]));
        assert!(!ok(&["set", "k", "v", "EX"]));
        assert!(!ok(&["set", "k", "v", "PERSIST"]));
        let twice = args(&["set", "k", "v", "ex", "1", "EX", "2"]);
        let o = parse_options(&twice, 3, false).unwrap();
        assert_eq!(
            o.expire.map(|(u, n)| (u, n.clone())),
            Some((Unit::Ex, Bytes::from("2")))
        );
        let getex = |s: &[&str]| parse_options(&args(s), 2, true).is_some();
        assert!(getex(&["getex", "k", "PERSIST", "persist"]));
        assert!(getex(&["getex", "k", "PXAT", "5"]));
        assert!(!getex(&["getex", "k", "NX"]));
        assert!(!getex(&["getex", "k", "GET"]));
        assert!(!getex(&["getex", "k", "PERSIST", "EX", "1"]));
        assert!(!getex(&["getex", "k", "EX", "1", "PERSIST"]));
    }

    #[test]
    fn expiry_bounds() {
        let b = |s: &str| Bytes::from(s.to_string());
        assert!(positive_expiry(Unit::Ex, &b("0"), "set").is_err());
        assert!(positive_expiry(Unit::Px, &b("-1"), "set").is_err());
        assert!(positive_expiry(Unit::Ex, &b("9223372036854776"), "set").is_err());
        assert!(positive_expiry(Unit::Px, &b("9223372036854775807"), "set").is_err());
        assert_eq!(
            positive_expiry(Unit::ExAt, &b("9223372036854775"), "set").unwrap(),
            proto::ExpireTime {
                when: Some(When::AtMs(9_223_372_036_854_775_000))
            }
        );
        assert_eq!(
            positive_expiry(Unit::Ex, &b("7"), "set").unwrap(),
            proto::ExpireTime {
                when: Some(When::TtlMs(7000))
            }
        );
    }
}
