//! Clock skew (`clock-skew` scenario): one node runs with its wall clock
//! moved by a seeded skew (libfaketime, `LD_PRELOAD` with `FAKETIME`; the
//! monotonic clocks are left alone, `FAKETIME_DONT_FAKE_MONOTONIC=1`, as on
//! a host whose NTP is wrong), while leaders are killed and restarted so
//! that leadership, and with it the clock that sets and judges TTLs, moves
//! between skewed and true nodes.
//!
//! What is promised (docs/RELIABILITY.md): TTLs follow the answering
//! node's clock; nothing else depends on the wall clock (leases and
//! timeouts use monotonic/boot clocks). So the checker splits the keys:
//! - keys without TTLs (most of the key space) keep every guarantee: no
//!   acknowledged write lost, linearizable, no failed write visible, high
//!   watermark monotonic, replicas identical;
//! - keys with short TTLs (`GET`, and `SET NX` followed, when it wrote, by
//!   a `PEXPIRE` of 1-3 s from the same client: each value lives about
//!   its TTL) are checked by [`ttl_violations`]: a value that a `PEXPIRE ttl`
//!   certainly applied to is not read later than `ttl + |skew| + margin`
//!   after that `PEXPIRE` completed (and no failed write is visible).
//!   Expiring early is allowed (a skewed clock ahead of the setter's).

use std::collections::HashSet;

use super::history::{Func, History, Op, Outcome, Ret};
use super::nemesis::Ctx;

/// libfaketime, the multi-threaded build (the server is multi-threaded),
/// as Debian installs it: `/usr/lib/<multiarch triple>/faketime/`, the
/// triple that of this machine's architecture (`x86_64-linux-gnu`, ...),
/// not a foreign one a multiarch install may add (the loader would skip
/// it and the node would run unskewed). scripts/ensure-deps.sh looks for
/// the same file. `None` when it is not installed.
pub fn libfaketime() -> Option<std::path::PathBuf> {
    const FILE: &str = "faketime/libfaketimeMT.so.1";
    let triple = format!("{}-linux-", std::env::consts::ARCH);
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|dir| dir.ok())
        .filter(|dir| dir.file_name().to_string_lossy().starts_with(&triple))
        .map(|dir| dir.path().join(FILE))
        .find(|path| path.exists())
}

/// Margin of the TTL check beyond the skew: request latency, a
/// millisecond clock, a leader change between the `PEXPIRE` and the read.
pub const MARGIN_MS: u64 = 1000;

/// Whether libfaketime is installed; the reason when not.
pub fn available() -> Result<(), String> {
    match libfaketime() {
        Some(_) => Ok(()),
        None => Err(
            "/usr/lib/<arch>-linux-*/faketime/libfaketimeMT.so.1 not installed (apt-get install libfaketime)"
                .into(),
        ),
    }
}

/// The skew of the scenario's skewed node, in ms (drawn from the seed by
/// [`clock_skew`]; `+` is ahead).
pub fn skew_ms(seed: u64) -> i64 {
    let mut rng = super::runner::Rng::new(seed ^ 0x5EED);
    match rng.below(2) {
        0 => 3000,
        _ => -3000,
    }
}

/// The faults: node `s` (seeded) restarted with a skewed wall clock, then
/// leader kills and restarts until the deadline.
pub fn clock_skew(ctx: &mut Ctx) {
    let n = ctx.cluster.specs.len();
    let s = ctx.rng.below(n as u64) as usize;
    let skew = skew_ms(ctx.seed);
    // FAKETIME="+3": seconds ahead of the real clock, fixed.
    let spec = format!("{:+}", skew as f64 / 1000.0);
    let Some(lib) = libfaketime() else {
        panic!("clock-skew runs only where libfaketime is installed (skew::available)");
    };
    ctx.env[s] = vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), spec.clone()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ];
    ctx.kill(s);
    ctx.start(s);
    let id = ctx.id(s);
    ctx.note(format!(
        "{id} runs with its wall clock at {spec} s (libfaketime)"
    ));
    loop {
        ctx.pause_ms(500, 1500);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, std::time::Duration::from_secs(10)) {
            ctx.kill(l);
            ctx.pause_ms(1000, 2500);
            ctx.start(l);
        }
        if !ctx.more() {
            break;
        }
    }
}

/// Reads of TTL keys that saw a value after its TTL, skew and margin
/// elapsed. `keys`: the TTL keys; `slack_ms`: |skew| + margin.
///
/// A `PEXPIRE` E certainly applied to value v (written by W) when E
/// answered "existed", W completed before E was invoked, and no other
/// `SET` of the key that may have written (acknowledged as written, or
/// unknown) may fall between them (none
/// was invoked before E completed and completed, or may complete, after W
/// was invoked). v then expires at most `ttl` after E's answer on the
/// setter's clock; a later `PEXPIRE` may extend it, so the bound is the
/// latest `complete + ttl` over every `PEXPIRE` that may have happened
/// after W was invoked (an unknown one: no bound).
pub fn ttl_violations(h: &History, keys: &HashSet<String>, slack_ms: u64) -> Vec<String> {
    let by_key = h.by_key();
    let mut out = Vec::new();
    // Reads of a value with a known expiry bound, and of those, how many
    // came after the bound (within the slack).
    let (mut bounded, mut late, mut latest) = (0, 0, 0u64);
    for key in keys {
        let Some(ops) = by_key.get(key.as_str()) else {
            continue;
        };
        for r in ops {
            let Outcome::Ok(Ret::Value(Some(v))) = &r.outcome else {
                continue;
            };
            if !matches!(r.f, Func::Get) {
                continue;
            }
            let Some(w) = ops.iter().find(|o| o.f.value() == Some(v.as_str())) else {
                continue;
            };
            if let Some(bound) = expiry_bound(ops, w) {
                bounded += 1;
                late += usize::from(r.invoke > bound);
                latest = latest.max(r.invoke.saturating_sub(bound));
                let limit = bound + slack_ms * 1_000_000;
                if r.invoke > limit {
                    out.push(format!(
                        "key {key}: {} read {:.3} s after its TTL ran out ({:.3} s; slack {slack_ms} ms): {}",
                        v,
                        (r.invoke - bound) as f64 / 1e9,
                        bound as f64 / 1e9,
                        r.describe()
                    ));
                }
            }
        }
    }
    if !keys.is_empty() {
        eprintln!(
            "  TTL keys: {bounded} reads of a value with a known expiry, {late} of them after it, at most {} ms (allowed: {slack_ms} ms)",
            latest / 1_000_000
        );
    }
    out
}

/// The latest instant (ns) value `w` may still be live on the setter's
/// clock, when some `PEXPIRE` certainly applied to it.
fn expiry_bound(ops: &[&Op], w: &Op) -> Option<u64> {
    let applied = ops.iter().any(|e| {
        matches!(e.f, Func::Expire { ttl_ms } if ttl_ms > 0)
            && matches!(e.outcome, Outcome::Ok(Ret::Existed(true)))
            && e.invoke > w.complete
            && !ops.iter().any(|s| {
                s.id != w.id
                    && matches!(s.f, Func::Set { .. })
                    && s.may_have_happened()
                    && s.outcome != Outcome::Ok(Ret::Written(false))
                    && s.invoke < e.complete
                    && (matches!(s.outcome, Outcome::Info(_)) || s.complete > w.invoke)
            })
    });
    if !applied {
        return None;
    }
    let mut bound = 0u64;
    for e in ops {
        let Func::Expire { ttl_ms } = e.f else {
            continue;
        };
        if !e.may_have_happened() || e.complete < w.invoke {
            continue;
        }
        if matches!(e.outcome, Outcome::Info(_)) {
            return None;
        }
        bound = bound.max(e.complete + ttl_ms * 1_000_000);
    }
    Some(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Cond;

    const S: u64 = 1_000_000_000;

    fn op(f: Func, invoke: u64, complete: u64, outcome: Outcome) -> Op {
        Op {
            id: 0,
            client: 0,
            process: 0,
            key: "k".into(),
            f,
            invoke,
            complete,
            outcome,
        }
    }

    fn set(v: &str, i: u64, c: u64) -> Op {
        let f = Func::Set {
            value: v.into(),
            cond: Cond::Always,
        };
        op(f, i, c, Outcome::Ok(Ret::Written(true)))
    }

    fn expire(ttl_ms: u64, i: u64, c: u64, outcome: Outcome) -> Op {
        op(Func::Expire { ttl_ms }, i, c, outcome)
    }

    fn get(v: Option<&str>, i: u64, c: u64) -> Op {
        op(
            Func::Get,
            i,
            c,
            Outcome::Ok(Ret::Value(v.map(String::from))),
        )
    }

    fn check(ops: Vec<Op>) -> Vec<String> {
        let mut h = History::default();
        for o in ops {
            h.push(o);
        }
        ttl_violations(&h, &HashSet::from(["k".to_string()]), 1000)
    }

    #[test]
    fn ttl_read_after_expiry_is_rejected() {
        // Expire 1 s answered at 2 s: bound 3 s, + 1 s slack; read at 5 s.
        let ops = vec![
            set("a", 0, S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            get(Some("a"), 5 * S, 5 * S + 1),
        ];
        assert_eq!(check(ops).len(), 1);
    }

    #[test]
    fn ttl_reads_within_slack_or_uncertain_are_accepted() {
        // Read within TTL + slack.
        let ops = vec![
            set("a", 0, S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            get(Some("a"), 4 * S - 1, 4 * S),
        ];
        assert!(check(ops).is_empty());
        // A later expire may have extended the TTL.
        let ops = vec![
            set("a", 0, S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            expire(3000, 2 * S + 1, 3 * S, Outcome::Ok(Ret::Existed(true))),
            get(Some("a"), 6 * S, 6 * S + 1),
        ];
        assert!(check(ops).is_empty());
        // An unknown expire: no bound.
        let ops = vec![
            set("a", 0, S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            expire(1000, 3 * S, 9 * S, Outcome::Info("timeout".into())),
            get(Some("a"), 20 * S, 20 * S + 1),
        ];
        assert!(check(ops).is_empty());
        // A set overlapping the expire: it may have hit the other value.
        let ops = vec![
            set("a", 0, S),
            set("b", S / 2, 3 * S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            get(Some("a"), 9 * S, 9 * S + 1),
        ];
        assert!(check(ops).is_empty());
        // Reading absent (expired early) is always fine.
        let ops = vec![
            set("a", 0, S),
            expire(1000, 2 * S, 2 * S, Outcome::Ok(Ret::Existed(true))),
            get(None, 2 * S, 2 * S + 1),
        ];
        assert!(check(ops).is_empty());
    }
}
