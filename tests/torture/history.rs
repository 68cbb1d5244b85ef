//! The history of a torture run: every client operation with its
//! invocation and completion times and its outcome, as Jepsen records it.
//!
//! - An operation is `ok` (it happened, with the recorded result), `fail`
//!   (it certainly did not happen: the client or the server said nothing
//!   was written) or `info` (unknown: it may or may not have happened, at
//!   any instant after its invocation).
//! - Values written are unique per run (`<client>-<seq>`), so a read names
//!   the one write that produced it.
//! - On disk a history is JSON lines, one event per line in time order:
//!   `{"type":"invoke",...}` then `{"type":"ok"|"fail"|"info",...}` of the
//!   same `process`. A process has at most one operation outstanding; after
//!   an `info` the client continues as a new process (Jepsen's convention),
//!   since the old one may still be in flight.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Precondition of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cond {
    /// Unconditional.
    Always,
    /// Only if the key is absent (NX).
    Nx,
    /// Only if the key is present (XX).
    Xx,
}

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum Func {
    /// `SET key value [NX|XX] [PX ttl]`.
    Set {
        /// The value written (its id; large values carry it as a prefix).
        value: String,
        /// Precondition.
        cond: Cond,
    },
    /// `GET key`.
    Get,
    /// `DEL key` (one key).
    Del,
    /// `PEXPIRE key ttl`: 0 deletes; any other TTL used here outlives the
    /// run, so it only reports whether the key existed.
    Expire {
        /// The TTL in ms.
        ttl_ms: u64,
    },
}

impl Func {
    /// Whether the operation may change the key.
    pub fn is_write(&self) -> bool {
        !matches!(self, Func::Get)
    }

    /// The value a set writes.
    pub fn value(&self) -> Option<&str> {
        match self {
            Func::Set { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// The result of an operation that completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// Set: whether it was written (false: NX/XX did not hold).
    Written(bool),
    /// Get: the value read (its id), `None` for no such key.
    Value(Option<String>),
    /// Del / Expire: whether the key existed.
    Existed(bool),
    /// Happened, but the result for this key is not known (one key of a
    /// multi-key `DEL` that deleted some but not all of its keys).
    Done,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened, with this result.
    Ok(Ret),
    /// It certainly did not happen; the error.
    Fail(String),
    /// Unknown; the error (timeout, connection lost, ...).
    Info(String),
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index in the history.
    pub id: usize,
    /// The client (thread) that ran it.
    pub client: usize,
    /// Jepsen's process: the client's incarnation (a new one after `info`).
    pub process: u64,
    /// The key.
    pub key: String,
    /// What it did.
    pub f: Func,
    /// Invocation, ns since the run started.
    pub invoke: u64,
    /// Completion, ns since the run started.
    pub complete: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// Whether the operation may have taken effect (ok or info).
    pub fn may_have_happened(&self) -> bool {
        !matches!(self.outcome, Outcome::Fail(_))
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        let f = match &self.f {
            Func::Set { value, cond } => format!("set {value} {cond:?}"),
            Func::Get => "get".into(),
            Func::Del => "del".into(),
            Func::Expire { ttl_ms } => format!("expire {ttl_ms}"),
        };
        let out = match &self.outcome {
            Outcome::Ok(r) => format!("ok {r:?}"),
            Outcome::Fail(e) => format!("fail ({e})"),
            Outcome::Info(e) => format!("info ({e})"),
        };
        format!(
            "[{:>9.3}s .. {:>9.3}s] client {} process {} key {} {f} -> {out}",
            self.invoke as f64 / 1e9,
            self.complete as f64 / 1e9,
            self.client,
            self.process,
            self.key,
        )
    }
}

/// One JSON line.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Event {
    /// invoke | ok | fail | info.
    #[serde(rename = "type")]
    kind: String,
    /// The client.
    client: usize,
    /// The process.
    process: u64,
    /// The key.
    key: String,
    /// What it does.
    #[serde(flatten)]
    f: Func,
    /// ns since the start.
    time: u64,
    /// Result of an `ok`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    result: Option<Ret>,
    /// Error of a `fail` or `info`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    error: Option<String>,
}

/// A whole history.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Operations by id.
    pub ops: Vec<Op>,
}

impl History {
    /// Adds an operation; returns its id.
    pub fn push(&mut self, mut op: Op) -> usize {
        op.id = self.ops.len();
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Operations on `key`, by invocation time.
    pub fn by_key(&self) -> HashMap<&str, Vec<&Op>> {
        let mut m: HashMap<&str, Vec<&Op>> = HashMap::new();
        for op in &self.ops {
            m.entry(op.key.as_str()).or_default().push(op);
        }
        for v in m.values_mut() {
            v.sort_by_key(|o| (o.invoke, o.id));
        }
        m
    }

    /// Writes the JSON lines file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut events: Vec<(u64, u8, Event)> = Vec::with_capacity(self.ops.len() * 2);
        for op in &self.ops {
            let base = Event {
                kind: "invoke".into(),
                client: op.client,
                process: op.process,
                key: op.key.clone(),
                f: op.f.clone(),
                time: op.invoke,
                result: None,
                error: None,
            };
            let mut done = base.clone();
            done.time = op.complete;
            match &op.outcome {
                Outcome::Ok(r) => {
                    done.kind = "ok".into();
                    done.result = Some(r.clone());
                }
                Outcome::Fail(e) => {
                    done.kind = "fail".into();
                    done.error = Some(e.clone());
                }
                Outcome::Info(e) => {
                    done.kind = "info".into();
                    done.error = Some(e.clone());
                }
            }
            events.push((op.invoke, 0, base));
            events.push((op.complete, 1, done));
        }
        events.sort_by_key(|(t, k, _)| (*t, *k));
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (_, _, e) in events {
            serde_json::to_writer(&mut out, &e)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Reads a JSON lines file written by [`History::save`] (or by hand):
    /// pairs each completion with its process's open invocation; an
    /// invocation never completed is `info`.
    pub fn load(path: &Path) -> Result<History, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut h = History::default();
        let mut open: HashMap<u64, Op> = HashMap::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let e: Event =
                serde_json::from_str(&line).map_err(|err| format!("line {}: {err}", n + 1))?;
            if e.kind == "invoke" {
                let op = Op {
                    id: 0,
                    client: e.client,
                    process: e.process,
                    key: e.key,
                    f: e.f,
                    invoke: e.time,
                    complete: u64::MAX,
                    outcome: Outcome::Info("never completed".into()),
                };
                if open.insert(e.process, op).is_some() {
                    return Err(format!(
                        "line {}: process {} invoked twice",
                        n + 1,
                        e.process
                    ));
                }
                continue;
            }
            let mut op = open
                .remove(&e.process)
                .ok_or_else(|| format!("line {}: completion without invocation", n + 1))?;
            op.complete = e.time;
            op.outcome = match e.kind.as_str() {
                "ok" => Outcome::Ok(
                    e.result
                        .ok_or_else(|| format!("line {}: ok without result", n + 1))?,
                ),
                "fail" => Outcome::Fail(e.error.unwrap_or_default()),
                "info" => Outcome::Info(e.error.unwrap_or_default()),
                other => return Err(format!("line {}: unknown type {other}", n + 1)),
            };
            h.push(op);
        }
        let mut rest: Vec<Op> = open.into_values().collect();
        rest.sort_by_key(|o| o.invoke);
        for op in rest {
            h.push(op);
        }
        Ok(h)
    }
}
