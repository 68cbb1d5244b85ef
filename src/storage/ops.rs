//! Write operations and how each is decided: the pure part of the write
//! path, shared by every engine.
//!
//! A write is a [`WriteOp`] on one key. The engine finds the key's newest
//! state (in Bitcask: the newest record of the key in its whole log, applied
//! or not, see `bitcask/writer.rs`), and [`decide`] turns op + state + now
//! into at most one [`Effect`] (one ordinary record: put, re-expire or
//! delete) and the caller's [`Reply`]. Nothing else is written, so followers
//! replicate an `INCR` or an `APPEND` as the plain put it produced, and
//! `acks` / consistency work for it exactly as for `SET`.
//!
//! Invariants:
//! - a decision reads only the key's newest state and the clock: two
//!   operations on one key decided one after the other under the engine's
//!   writer lock see each other's effect (8 tasks x 1,000 `INCR` = 8,000);
//! - an operation that fails ([`Error::NotInteger`], [`Error::Overflow`], an
//!   `APPEND` past the value limit) writes nothing;
//! - a value-changing operation keeps the key's expiry unless it says
//!   otherwise (`INCRBY`, `APPEND`, `SET KEEPTTL`), as Redis does; a plain
//!   `SET` drops it;
//! - an expiry not in the future deletes the key (`EXPIRE` with a past
//!   instant, `SET`/`GETEX` with `EXAT` in the past);
//! - `GT`/`LT` compare against the current expiry, a key without one
//!   counting as infinite (Redis 7).

use bytes::Bytes;

use super::{Condition, Error, Limits, Result, SetOptions};

/// A write request before it is decided (see `Bitcask::write`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// `set` with its options (no look at the old state when unconditional).
    Set(Bytes, SetOptions),
    /// `SET` with Redis' `GET` and `KEEPTTL` options; the answer carries the
    /// old value when `get`. With `keep_ttl`, `opts.expire_at_ms` is ignored
    /// and the key keeps its current expiry.
    SetExt {
        /// The new value.
        value: Bytes,
        /// Expiry and NX/XX.
        opts: SetOptions,
        /// Keep the current expiry (`KEEPTTL`).
        keep_ttl: bool,
        /// Answer the old value (`GET`, `GETSET`).
        get: bool,
    },
    /// `del`.
    Delete,
    /// `expire` to this absolute instant in Unix ms.
    Expire(u64),
    /// `EXPIRE`/`PEXPIREAT`... to this absolute instant, under NX/XX/GT/LT.
    ExpireIf(u64, ExpireFlags),
    /// `GETDEL`: delete, answering the old value.
    GetDel,
    /// `GETEX`: answer the value and change the expiry.
    GetEx(ExpiryChange),
    /// `PERSIST`: drop the expiry.
    Persist,
    /// `INCRBY` (and `INCR`, `DECR`, `DECRBY`): add to the integer value.
    IncrBy(i64),
    /// `APPEND`: append to the value (an absent key counts as empty).
    Append(Bytes),
}

impl WriteOp {
    /// Whether deciding the op needs the key's current value (not only
    /// whether it exists and its expiry).
    pub fn needs_value(&self) -> bool {
        match self {
            WriteOp::Set(..) | WriteOp::Delete => false,
            WriteOp::SetExt { get, .. } => *get,
            WriteOp::Expire(_)
            | WriteOp::ExpireIf(..)
            | WriteOp::GetDel
            | WriteOp::GetEx(_)
            | WriteOp::Persist
            | WriteOp::IncrBy(_)
            | WriteOp::Append(_) => true,
        }
    }

    /// The value the op carries, for the value size limit.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            WriteOp::Set(v, _) | WriteOp::SetExt { value: v, .. } | WriteOp::Append(v) => Some(v),
            _ => None,
        }
    }
}

/// Conditions of an `EXPIRE` (Redis 7's NX / XX / GT / LT). `NX` excludes
/// the others, `GT` excludes `LT` ([`ExpireFlags::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpireFlags {
    /// Only if the key has no expiry.
    pub nx: bool,
    /// Only if the key has an expiry.
    pub xx: bool,
    /// Only if the new expiry is later than the current one (none = infinite).
    pub gt: bool,
    /// Only if the new expiry is earlier than the current one (none = infinite).
    pub lt: bool,
}

impl ExpireFlags {
    /// Refuses the combinations Redis refuses, with its wording.
    pub fn check(&self) -> Result<()> {
        if self.nx && (self.xx || self.gt || self.lt) {
            return Err(Error::InvalidInput(
                "NX and XX, GT or LT options at the same time are not compatible".into(),
            ));
        }
        if self.gt && self.lt {
            return Err(Error::InvalidInput(
                "GT and LT options at the same time are not compatible".into(),
            ));
        }
        Ok(())
    }

    /// Whether the flags allow replacing expiry `current` (0 = none) by `at`.
    fn allow(&self, current: u64, at: u64) -> bool {
        let inf = |t: u64| if t == 0 { u64::MAX } else { t };
        !(self.nx && current != 0
            || self.xx && current == 0
            || self.gt && at <= inf(current)
            || self.lt && at >= inf(current))
    }
}

/// What `GETEX` does to the expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryChange {
    /// Nothing (plain `GETEX key`).
    Keep,
    /// Drop it (`PERSIST`).
    Persist,
    /// Expire at this absolute instant in Unix ms (not in the future: delete).
    At(u64),
}

/// The newest state of a key that a decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// The value; `None` when the op does not need it
    /// ([`WriteOp::needs_value`]).
    pub value: Option<Bytes>,
    /// Its expiry in Unix ms, 0 = never.
    pub expire_at: u64,
}

/// The one record a decided write appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Set the value with this expiry (0 = never).
    Put(Bytes, u64),
    /// Re-set the same value with a new expiry (0 = never): an `EXPIRE`
    /// record, self-contained as every record is.
    Reexpire(Bytes, u64),
    /// Remove the key.
    Delete,
}

/// The caller's answer to a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Whether the write happened: the set was done (conditions held), the
    /// key existed (`del`, `expire`), the expiry was set (`ExpireIf`) or
    /// removed (`Persist`).
    pub done: bool,
    /// The value before the write (`SetExt { get }`, `GetDel`, `GetEx`);
    /// `None` for other ops or when the key was absent.
    pub old: Option<Bytes>,
    /// `IncrBy`: the new value; `Append`: the new length; else 0.
    pub number: i64,
}

impl Reply {
    /// A yes/no answer.
    fn done(done: bool) -> Reply {
        Reply {
            done,
            ..Reply::default()
        }
    }
}

/// The outcome of [`Bitcask::write`](super::Bitcask::write) and
/// [`Engine::write`](super::Engine::write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Whether the write happened, as [`Reply::done`].
    pub done: bool,
    /// A log end offset such that every record the answer depends on (the
    /// one written, or the one the decision read) is below it. In replica
    /// mode the answer may be given once the commit point reaches it.
    pub until: u64,
    /// The old value, as [`Reply::old`].
    pub old: Option<Bytes>,
    /// The integer answer, as [`Reply::number`].
    pub number: i64,
}

impl Written {
    /// The written answer of `reply`, resting on records below `until`.
    pub fn new(reply: Reply, until: u64) -> Written {
        Written {
            done: reply.done,
            until,
            old: reply.old,
            number: reply.number,
        }
    }
}

/// Decides `op` on a key whose newest live state is `cur` (`None`: absent
/// or expired) at time `now`: the record to append, if any, and the answer,
/// or the error that refuses the op (nothing is then written).
pub fn decide(
    op: &WriteOp,
    cur: Option<Current>,
    now: u64,
    limits: &Limits,
) -> Result<(Option<Effect>, Reply)> {
    let exists = cur.is_some();
    let cur_at = cur.as_ref().map_or(0, |c| c.expire_at);
    let value = cur.and_then(|c| c.value);
    let delete_if = |exists: bool| exists.then_some(Effect::Delete);
    Ok(match op {
        WriteOp::Set(v, opts) => set(v, opts, exists, opts.expire_at_ms.unwrap_or(0), now),
        WriteOp::SetExt {
            value: v,
            opts,
            keep_ttl,
            get,
        } => {
            let at = match keep_ttl {
                true => cur_at,
                false => opts.expire_at_ms.unwrap_or(0),
            };
            let (effect, mut reply) = set(v, opts, exists, at, now);
            if *get {
                reply.old = value;
            }
            (effect, reply)
        }
        WriteOp::Delete => (delete_if(exists), Reply::done(exists)),
        WriteOp::Expire(at) => expire(*at, exists, value, now),
        WriteOp::ExpireIf(at, flags) => {
            if !exists || !flags.allow(cur_at, *at) {
                (None, Reply::done(false))
            } else {
                expire(*at, exists, value, now)
            }
        }
        WriteOp::GetDel => (
            delete_if(exists),
            Reply {
                done: exists,
                old: value,
                number: 0,
            },
        ),
        WriteOp::GetEx(change) => {
            let effect = match (change, &value) {
                (_, None) => None,
                (ExpiryChange::Keep, _) => None,
                (ExpiryChange::Persist, _) if cur_at == 0 => None,
                (ExpiryChange::Persist, Some(v)) => Some(Effect::Reexpire(v.clone(), 0)),
                (ExpiryChange::At(at), _) if *at <= now => Some(Effect::Delete),
                (ExpiryChange::At(at), Some(v)) => Some(Effect::Reexpire(v.clone(), *at)),
            };
            let reply = Reply {
                done: exists,
                old: value,
                number: 0,
            };
            (effect, reply)
        }
        WriteOp::Persist => match value {
            Some(v) if cur_at != 0 => (Some(Effect::Reexpire(v, 0)), Reply::done(true)),
            _ => (None, Reply::done(false)),
        },
        WriteOp::IncrBy(delta) => {
            let old = match &value {
                None => 0,
                Some(v) => parse_i64(v).ok_or(Error::NotInteger)?,
            };
            let new = old.checked_add(*delta).ok_or(Error::Overflow)?;
            let text = Bytes::from(new.to_string());
            let reply = Reply {
                done: true,
                old: None,
                number: new,
            };
            (Some(Effect::Put(text, cur_at)), reply)
        }
        WriteOp::Append(suffix) => {
            let old = value.unwrap_or_default();
            let len = old.len() + suffix.len();
            if len > limits.max_value_bytes {
                return Err(Error::InvalidInput(format!(
                    "string exceeds maximum allowed size: the value would be {len} bytes, \
                     the limit is {}",
                    limits.max_value_bytes
                )));
            }
            let mut new = Vec::with_capacity(len);
            new.extend_from_slice(&old);
            new.extend_from_slice(suffix);
            let reply = Reply {
                done: true,
                old: None,
                number: len as i64,
            };
            (Some(Effect::Put(Bytes::from(new), cur_at)), reply)
        }
    })
}

/// `SET` of `v` with expiry `at` (0 = never) under `opts.condition`.
fn set(v: &Bytes, opts: &SetOptions, exists: bool, at: u64, now: u64) -> (Option<Effect>, Reply) {
    let allowed = match opts.condition {
        Condition::Always => true,
        Condition::IfAbsent => !exists,
        Condition::IfPresent => exists,
    };
    if !allowed {
        return (None, Reply::done(false));
    }
    if at != 0 && at <= now {
        // Already expired: the set leaves the key absent.
        return (exists.then_some(Effect::Delete), Reply::done(true));
    }
    (Some(Effect::Put(v.clone(), at)), Reply::done(true))
}

/// `EXPIRE` to `at` of a key that exists when `exists`.
fn expire(at: u64, exists: bool, value: Option<Bytes>, now: u64) -> (Option<Effect>, Reply) {
    match value {
        _ if !exists => (None, Reply::done(false)),
        _ if at <= now => (Some(Effect::Delete), Reply::done(true)),
        v => (
            Some(Effect::Reexpire(v.unwrap_or_default(), at)),
            Reply::done(true),
        ),
    }
}

/// Parses a stored value as Redis' `string2ll` does: an optional `-`, then
/// digits without a leading zero (`0` alone is fine), no `+`, no spaces,
/// within `i64`. `None` otherwise.
pub fn parse_i64(v: &[u8]) -> Option<i64> {
    let (negative, digits) = match v {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = match negative {
            true => n.checked_mul(10)?.checked_sub(d)?,
            false => n.checked_mul(10)?.checked_add(d)?,
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn cur(v: &str, at: u64) -> Option<Current> {
        Some(Current {
            value: Some(b(v)),
            expire_at: at,
        })
    }

    const NOW: u64 = 1_000;

    fn run(op: WriteOp, c: Option<Current>) -> Result<(Option<Effect>, Reply)> {
        decide(&op, c, NOW, &Limits::default())
    }

    #[test]
    fn integers_parse_as_redis_does() {
        for (s, want) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("10", Some(10)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-0", None),
            ("01", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("1.5", None),
            ("abc", None),
        ] {
            assert_eq!(parse_i64(s.as_bytes()), want, "{s:?}");
        }
    }

    #[test]
    fn incrby_keeps_the_ttl_and_refuses_bad_values() {
        let (e, r) = run(WriteOp::IncrBy(5), cur("10", 5_000)).unwrap();
        assert_eq!(e, Some(Effect::Put(b("15"), 5_000)));
        assert_eq!(r.number, 15);
        let (e, r) = run(WriteOp::IncrBy(-3), None).unwrap();
        assert_eq!(e, Some(Effect::Put(b("-3"), 0)));
        assert_eq!(r.number, -3);
        assert_eq!(
            run(WriteOp::IncrBy(1), cur("x", 0))
                .unwrap_err()
                .to_string(),
            "value is not an integer or out of range"
        );
        assert_eq!(
            run(WriteOp::IncrBy(1), cur("9223372036854775807", 0))
                .unwrap_err()
                .to_string(),
            "increment or decrement would overflow"
        );
        assert_eq!(
            run(WriteOp::IncrBy(-1), cur("-9223372036854775808", 0))
                .unwrap_err()
                .to_string(),
            "increment or decrement would overflow"
        );
    }

    #[test]
    fn append_keeps_the_ttl_and_the_limit() {
        let (e, r) = run(WriteOp::Append(b("def")), cur("abc", 7_000)).unwrap();
        assert_eq!(e, Some(Effect::Put(b("abcdef"), 7_000)));
        assert_eq!(r.number, 6);
        let (e, r) = run(WriteOp::Append(b("xy")), None).unwrap();
        assert_eq!(e, Some(Effect::Put(b("xy"), 0)));
        assert_eq!(r.number, 2);
        let small = Limits {
            max_key_bytes: 10,
            max_value_bytes: 4,
        };
        assert!(matches!(
            decide(&WriteOp::Append(b("xy")), cur("abc", 0), NOW, &small),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn expire_conditions_follow_redis_7() {
        let f = |nx, xx, gt, lt| ExpireFlags { nx, xx, gt, lt };
        let cases = [
            // (flags, current expiry, new, applied)
            (f(true, false, false, false), 0, 2_000, true),
            (f(true, false, false, false), 3_000, 2_000, false),
            (f(false, true, false, false), 0, 2_000, false),
            (f(false, true, false, false), 3_000, 2_000, true),
            // GT: no expiry counts as infinite, so nothing is greater.
            (f(false, false, true, false), 0, 2_000, false),
            (f(false, false, true, false), 3_000, 4_000, true),
            (f(false, false, true, false), 3_000, 3_000, false),
            // LT: anything is less than infinite.
            (f(false, false, false, true), 0, 2_000, true),
            (f(false, false, false, true), 3_000, 2_000, true),
            (f(false, false, false, true), 3_000, 4_000, false),
            (f(false, true, false, true), 0, 2_000, false),
        ];
        for (flags, at, new, applied) in cases {
            let (e, r) = run(WriteOp::ExpireIf(new, flags), cur("v", at)).unwrap();
            assert_eq!(r.done, applied, "{flags:?} {at} {new}");
            let want = applied.then(|| Effect::Reexpire(b("v"), new));
            assert_eq!(e, want, "{flags:?} {at} {new}");
        }
        // A past instant deletes, once the condition holds.
        let (e, r) = run(WriteOp::ExpireIf(10, ExpireFlags::default()), cur("v", 0)).unwrap();
        assert_eq!((e, r.done), (Some(Effect::Delete), true));
        let (e, r) = run(
            WriteOp::ExpireIf(10, f(false, true, false, false)),
            cur("v", 0),
        )
        .unwrap();
        assert_eq!((e, r.done), (None, false));
        assert!(f(true, true, false, false).check().is_err());
        assert!(f(false, false, true, true).check().is_err());
        assert!(f(false, true, true, false).check().is_ok());
    }

    #[test]
    fn set_get_keepttl_getex_getdel_persist() {
        let ext = |cond, keep_ttl, get, at| WriteOp::SetExt {
            value: b("new"),
            opts: SetOptions {
                expire_at_ms: at,
                condition: cond,
            },
            keep_ttl,
            get,
        };
        let (e, r) = run(ext(Condition::Always, true, true, None), cur("old", 9_000)).unwrap();
        assert_eq!(e, Some(Effect::Put(b("new"), 9_000)));
        assert_eq!((r.done, r.old), (true, Some(b("old"))));
        // NX GET on an existing key: not set, old value answered.
        let (e, r) = run(ext(Condition::IfAbsent, false, true, None), cur("old", 0)).unwrap();
        assert_eq!((e, r.done, r.old), (None, false, Some(b("old"))));
        // EXAT in the past deletes an existing key.
        let (e, _) = run(ext(Condition::Always, false, false, Some(5)), cur("old", 0)).unwrap();
        assert_eq!(e, Some(Effect::Delete));
        let (e, r) = run(WriteOp::GetDel, cur("v", 0)).unwrap();
        assert_eq!((e, r.old), (Some(Effect::Delete), Some(b("v"))));
        let (e, r) = run(WriteOp::GetDel, None).unwrap();
        assert_eq!((e, r.old), (None, None));
        let (e, r) = run(WriteOp::GetEx(ExpiryChange::Persist), cur("v", 5_000)).unwrap();
        assert_eq!(
            (e, r.old),
            (Some(Effect::Reexpire(b("v"), 0)), Some(b("v")))
        );
        let (e, _) = run(WriteOp::GetEx(ExpiryChange::Persist), cur("v", 0)).unwrap();
        assert_eq!(e, None);
        let (e, _) = run(WriteOp::GetEx(ExpiryChange::At(NOW)), cur("v", 0)).unwrap();
        assert_eq!(e, Some(Effect::Delete));
        let (e, r) = run(WriteOp::Persist, cur("v", 5_000)).unwrap();
        assert_eq!((e, r.done), (Some(Effect::Reexpire(b("v"), 0)), true));
        let (e, r) = run(WriteOp::Persist, cur("v", 0)).unwrap();
        assert_eq!((e, r.done), (None, false));
    }
}
