//! Linearizability checker for a history of one register per key.
//!
//! The Wing-Gong algorithm with Lowe's memoization, as Porcupine runs it
//! ("Testing for Linearizability", Lowe 2017; "Faster linearizability
//! checking via P-compositionality", Horn and Kroening 2015): keys are
//! independent objects, so each key's sub-history is checked alone
//! (P-compositionality). Within a key, the search walks the time-ordered
//! list of call and return events, tries to linearize each pending call
//! (its effect must be allowed by the sequential model in the current
//! state), backtracks when a return is reached whose call has not been
//! linearized, and never explores the same (set of linearized operations,
//! register state) twice.
//!
//! Model: the register holds "absent" or a value id. `set` (NX/XX),
//! `get`, `del`, `expire 0` (delete) and `expire N` (a TTL longer than the
//! run: presence unchanged) as in [`step`].
//!
//! - One key of a multi-key `DEL` whose count does not say which keys
//!   existed is a delete with any result (`Ret::Done`).
//! - `fail` operations certainly did not happen: they are left out.
//! - `info` operations may have happened at any instant after their
//!   invocation, or never: their return is at the end of time and any
//!   result is allowed (a write linearized last is as good as never).
//!   `info` reads are left out (they cannot change anything).
//! - The search is bounded ([`MAX_STEPS`] per key): a key that exceeds it is
//!   reported as not decided, never as linearizable.

use std::collections::{HashMap, HashSet};

use super::history::{Cond, Func, History, Op, Outcome, Ret};

/// Search steps allowed per key before the checker gives up.
pub const MAX_STEPS: u64 = 20_000_000;

/// Result of checking one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists; `stuck` is the operation the longest partial
    /// linearization could not get past, `prefix` that linearization's last
    /// operations (ids, in order).
    Violation {
        /// The operation that could not be linearized.
        stuck: usize,
        /// The end of the longest partial linearization found.
        prefix: Vec<usize>,
    },
    /// The search exceeded [`MAX_STEPS`].
    Unknown,
}

/// What the whole history checked to.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys checked.
    pub keys: usize,
    /// Keys with no linearization, with a readable excerpt.
    pub violations: Vec<(String, String)>,
    /// Keys where the search gave up.
    pub undecided: Vec<String>,
}

impl Report {
    /// `yes`, `no` or `unknown`, for the scenario line.
    pub fn word(&self) -> &'static str {
        if !self.violations.is_empty() {
            "no"
        } else if !self.undecided.is_empty() {
            "unknown"
        } else {
            "yes"
        }
    }
}

/// Checks every key of `h`.
pub fn check(h: &History) -> Report {
    let mut report = Report::default();
    let mut keys: Vec<(&str, Vec<&Op>)> = h.by_key().into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, ops) in keys {
        report.keys += 1;
        match check_key(&ops) {
            Verdict::Linearizable => {}
            Verdict::Unknown => report.undecided.push(key.to_string()),
            Verdict::Violation { stuck, prefix } => {
                report
                    .violations
                    .push((key.to_string(), excerpt(h, &ops, stuck, &prefix)));
            }
        }
    }
    report
}

/// A readable account of a violation on one key.
fn excerpt(h: &History, ops: &[&Op], stuck: usize, prefix: &[usize]) -> String {
    let s = &h.ops[stuck];
    let mut out = format!(
        "key {}: no linearization gets past\n  {}\nlongest partial linearization ends with:\n",
        s.key,
        s.describe()
    );
    for id in prefix.iter().rev().take(12).rev() {
        out.push_str(&format!("  {}\n", h.ops[*id].describe()));
    }
    out.push_str("operations on the key concurrent with it (by invocation):\n");
    let from = s.invoke.saturating_sub(20_000_000);
    for op in ops
        .iter()
        .filter(|o| o.complete >= from && o.invoke <= s.complete)
        .take(40)
    {
        out.push_str(&format!("  {}\n", op.describe()));
    }
    out
}

/// Register state: absent, or the id of a value.
type State = Option<u32>;

/// One operation as the search sees it.
struct Call {
    /// Id in the history.
    id: usize,
    /// What it does, values interned.
    f: Step,
    /// Its result; `None` for `info` (anything goes).
    ret: Option<Ret>,
    /// Interned id of the value a get returned.
    read: State,
}

/// An operation with interned values.
enum Step {
    Set(u32, Cond),
    Get,
    Delete,
    ExpireKeep,
}

/// The sequential model: the state after `c` in state `s`, or `None` when
/// `c`'s recorded result is impossible in `s`.
fn step(s: State, c: &Call) -> Option<State> {
    let present = s.is_some();
    match (&c.f, &c.ret) {
        (Step::Set(v, cond), None) => Some(match cond {
            Cond::Always => Some(*v),
            Cond::Nx => s.or(Some(*v)),
            Cond::Xx => s.map(|_| *v),
        }),
        (Step::Set(v, cond), Some(Ret::Written(w))) => {
            let holds = match cond {
                Cond::Always => true,
                Cond::Nx => !present,
                Cond::Xx => present,
            };
            match (holds, *w) {
                (true, true) => Some(Some(*v)),
                (false, false) => Some(s),
                _ => None,
            }
        }
        (Step::Get, Some(Ret::Value(_))) => (c.read == s).then_some(s),
        (Step::Delete, None | Some(Ret::Done)) => Some(None),
        (Step::Delete, Some(Ret::Existed(e))) => (*e == present).then_some(None),
        (Step::ExpireKeep, None) => Some(s),
        (Step::ExpireKeep, Some(Ret::Existed(e))) => (*e == present).then_some(s),
        _ => None,
    }
}

/// Null link.
const NIL: usize = usize::MAX;

/// Checks one key's operations (any order).
pub fn check_key(ops: &[&Op]) -> Verdict {
    let mut intern: HashMap<String, u32> = HashMap::new();
    let mut id_of = |v: &str| -> u32 {
        let n = intern.len() as u32;
        *intern.entry(v.to_string()).or_insert(n)
    };
    let mut calls: Vec<Call> = Vec::new();
    let mut times: Vec<(u64, u64)> = Vec::new();
    for op in ops {
        let ret = match &op.outcome {
            Outcome::Fail(_) => continue,
            Outcome::Info(_) if op.f == Func::Get => continue,
            Outcome::Info(_) => None,
            Outcome::Ok(r) => Some(r.clone()),
        };
        let f = match &op.f {
            Func::Set { value, cond } => Step::Set(id_of(value), *cond),
            Func::Get => Step::Get,
            Func::Del | Func::Expire { ttl_ms: 0 } => Step::Delete,
            Func::Expire { .. } => Step::ExpireKeep,
        };
        let read = match &ret {
            Some(Ret::Value(Some(v))) => Some(id_of(v)),
            _ => None,
        };
        let complete = match op.outcome {
            Outcome::Info(_) => u64::MAX,
            _ => op.complete,
        };
        times.push((op.invoke, complete));
        calls.push(Call {
            id: op.id,
            f,
            ret,
            read,
        });
    }
    search(&calls, &times)
}

/// The Wing-Gong-Lowe search over `calls` with (invoke, complete) `times`.
fn search(calls: &[Call], times: &[(u64, u64)]) -> Verdict {
    let n = calls.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events: 2i = call of operation i, 2i+1 = its return. Node 0 is the
    // head; event e is node e+1.
    let mut events: Vec<usize> = (0..2 * n).collect();
    // Calls sort before returns at the same instant (treated as concurrent).
    events.sort_by_key(|&e| {
        let (inv, comp) = times[e / 2];
        if e % 2 == 0 { (inv, 0) } else { (comp, 1) }
    });
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = 0usize;
    for &e in &events {
        next[last] = e + 1;
        prev[e + 1] = last;
        last = e + 1;
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = q;
        if q != NIL {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, q) = (prev[node], next[node]);
        next[p] = node;
        if q != NIL {
            prev[q] = node;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (call node, state before it).
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut best: (usize, usize, Vec<usize>) = (0, NIL, Vec::new());
    let mut steps = 0u64;
    let mut node = next[0];
    while next[0] != NIL {
        steps += 1;
        if steps > MAX_STEPS {
            return Verdict::Unknown;
        }
        if node == NIL {
            // Unreachable: the list always ends with a return event.
            return Verdict::Unknown;
        }
        let e = node - 1;
        let i = e / 2;
        if e.is_multiple_of(2) {
            if let Some(s) = step(state, &calls[i]) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), s)) {
                    stack.push((node, state));
                    state = s;
                    linearized = lin;
                    unlink(&mut next, &mut prev, node);
                    unlink(&mut next, &mut prev, node + 1);
                    node = next[0];
                    continue;
                }
            }
            node = next[node];
        } else {
            // A return whose call is not linearized yet: this prefix is a
            // dead end.
            if best.1 == NIL || stack.len() > best.0 {
                best = (
                    stack.len(),
                    i,
                    stack.iter().map(|(c, _)| calls[(c - 1) / 2].id).collect(),
                );
            }
            let Some((call, s)) = stack.pop() else {
                return Verdict::Violation {
                    stuck: calls[best.1].id,
                    prefix: best.2,
                };
            };
            let j = (call - 1) / 2;
            state = s;
            linearized[j / 64] &= !(1 << (j % 64));
            relink(&mut next, &mut prev, call + 1);
            relink(&mut next, &mut prev, call);
            node = next[call];
        }
    }
    Verdict::Linearizable
}
