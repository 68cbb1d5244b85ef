//! Checkers besides linearizability (see `linear.rs`):
//!
//! - [`lost_writes`]: after quiescence, each key's final value must be
//!   explained by a write that no acknowledged write strictly follows.
//!   Every other outcome means an acknowledged (`acks: all`) write was lost.
//! - [`failed_visible`]: a write that failed (certainly not applied) is
//!   never read, during the run or at the end.
//! - [`hw_violations`]: per node process and partition, the high watermark
//!   never goes backwards; and a leader at epoch `e` never has a log ending
//!   below a high watermark reported earlier at epoch `<= e` (committed
//!   records are on every later leader).
//! - [`compare_logs`]: after quiescence, every replica of a partition holds
//!   the same records, offset by offset (merge may have removed dead
//!   records on one replica and not another: records present on both must
//!   be identical, and replaying each log must give the same keys and
//!   values).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::history::{Func, History, Op, Outcome, Ret};

/// Whether `op` may have written the key, and what it leaves there.
fn effect(op: &Op) -> Option<Option<&str>> {
    if !op.may_have_happened() {
        return None;
    }
    match (&op.f, &op.outcome) {
        (Func::Set { .. }, Outcome::Ok(Ret::Written(false))) => None,
        (Func::Set { value, .. }, _) => Some(Some(value.as_str())),
        (Func::Del | Func::Expire { ttl_ms: 0 }, _) => Some(None),
        _ => None,
    }
}

/// Acknowledged writes that the final values contradict, one line each.
/// `final_reads` holds each key's value read after quiescence.
pub fn lost_writes(h: &History, final_reads: &[(String, Option<String>)]) -> Vec<String> {
    let by_key = h.by_key();
    let mut lost = Vec::new();
    for (key, fin) in final_reads {
        let ops = by_key.get(key.as_str()).cloned().unwrap_or_default();
        let writes: Vec<(&Op, Option<&str>)> = ops
            .iter()
            .filter_map(|o| effect(o).map(|e| (*o, e)))
            .collect();
        let acked: Vec<&Op> = writes
            .iter()
            .filter(|(o, _)| matches!(o.outcome, Outcome::Ok(_)))
            .map(|(o, _)| *o)
            .collect();
        // The latest instant a write producing the final value may have
        // completed: unknown writes may still be in flight (end of time);
        // the initial absent state "completed" before everything.
        let mut producer_end: Option<u64> = None;
        for (o, e) in &writes {
            if *e == fin.as_deref() {
                let end = match o.outcome {
                    Outcome::Info(_) => u64::MAX,
                    _ => o.complete,
                };
                producer_end = Some(producer_end.map_or(end, |p: u64| p.max(end)));
            }
        }
        // No producer (or only the initial absent state): every
        // acknowledged write is missing.
        let missing: Vec<&Op> = match producer_end {
            None => acked.clone(),
            Some(end) => acked.iter().filter(|a| a.invoke > end).copied().collect(),
        };
        for a in missing {
            lost.push(format!(
                "key {key}: final value {fin:?}, but this acknowledged write came later: {}",
                a.describe()
            ));
        }
    }
    lost
}

/// Reads (during the run or final) of a value whose write failed.
pub fn failed_visible(h: &History, final_reads: &[(String, Option<String>)]) -> Vec<String> {
    let failed: HashSet<&str> = h
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Fail(_)))
        .filter_map(|o| o.f.value())
        .collect();
    let mut out = Vec::new();
    for op in &h.ops {
        if let Outcome::Ok(Ret::Value(Some(v))) = &op.outcome
            && failed.contains(v.as_str())
        {
            out.push(format!("read of a failed write: {}", op.describe()));
        }
    }
    for (key, v) in final_reads {
        if let Some(v) = v
            && failed.contains(v.as_str())
        {
            out.push(format!("final value of {key} is a failed write: {v}"));
        }
    }
    out
}

/// One partition's state as one node reported it in `Metadata`.
#[derive(Clone, Debug)]
pub struct HwSample {
    /// The node answering.
    pub node: String,
    /// Its process id (a restart is a new incarnation).
    pub pid: i32,
    /// The partition.
    pub partition: u32,
    /// The leader epoch it knows.
    pub leader_epoch: u64,
    /// Whether it names itself leader.
    pub leads: bool,
    /// Its high watermark.
    pub hw: u64,
    /// Its own log end offset.
    pub log_end: u64,
    /// When the request was sent (ns since the start).
    pub sent: u64,
    /// When the answer came (ns since the start).
    pub received: u64,
}

/// High watermarks going backwards, and leaders missing committed records.
pub fn hw_violations(samples: &[HwSample]) -> Vec<String> {
    let mut out = Vec::new();
    let mut last: HashMap<(&str, i32, u32), &HwSample> = HashMap::new();
    let mut sorted: Vec<&HwSample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.sent);
    for s in &sorted {
        let k = (s.node.as_str(), s.pid, s.partition);
        if let Some(prev) = last.get(&k)
            && s.hw < prev.hw
        {
            out.push(format!(
                "partition {}: {} (pid {}) reported high watermark {} at {:.3}s after {} at {:.3}s",
                s.partition,
                s.node,
                s.pid,
                s.hw,
                s.sent as f64 / 1e9,
                prev.hw,
                prev.sent as f64 / 1e9
            ));
        }
        last.insert(k, s);
    }
    // Committed offsets known before each leader sample, per partition.
    for s in sorted.iter().filter(|s| s.leads) {
        let committed = sorted
            .iter()
            .filter(|t| {
                t.partition == s.partition
                    && t.received < s.sent
                    && t.leader_epoch <= s.leader_epoch
            })
            .max_by_key(|t| t.hw);
        if let Some(t) = committed
            && s.log_end < t.hw
        {
            out.push(format!(
                "partition {}: leader {} at epoch {} has log end {} at {:.3}s, below the \
                     high watermark {} that {} reported at epoch {} at {:.3}s",
                s.partition,
                s.node,
                s.leader_epoch,
                s.log_end,
                s.sent as f64 / 1e9,
                t.hw,
                t.node,
                t.leader_epoch,
                t.received as f64 / 1e9
            ));
        }
    }
    out
}

/// One record of a replica's log, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Offset.
    pub offset: u64,
    /// Leader epoch.
    pub epoch: u32,
    /// Record kind byte.
    pub kind: u8,
    /// Absolute expiry.
    pub expire_at_ms: u64,
    /// Key.
    pub key: Vec<u8>,
    /// crc32 of the value and its length.
    pub value: (u32, usize),
}

/// One replica's log.
#[derive(Clone, Debug)]
pub struct ReplicaLog {
    /// Node id.
    pub node: String,
    /// Its records in offset order.
    pub records: Vec<LogEntry>,
    /// Its commit point.
    pub committed: u64,
}

/// Differences between the replicas of one partition.
pub fn compare_logs(partition: u32, logs: &[ReplicaLog]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = logs.first() else {
        return out;
    };
    let state = |l: &ReplicaLog| {
        let mut m: BTreeMap<Vec<u8>, (u32, usize)> = BTreeMap::new();
        for r in &l.records {
            if r.kind == 2 {
                m.remove(&r.key);
            } else {
                m.insert(r.key.clone(), r.value);
            }
        }
        m
    };
    let first_state = state(first);
    for other in &logs[1..] {
        if other.committed != first.committed {
            out.push(format!(
                "partition {partition}: {} committed {} but {} committed {}",
                first.node, first.committed, other.node, other.committed
            ));
        }
        let a: BTreeMap<u64, &LogEntry> = first.records.iter().map(|r| (r.offset, r)).collect();
        let b: BTreeMap<u64, &LogEntry> = other.records.iter().map(|r| (r.offset, r)).collect();
        let end_a = first.records.last().map(|r| r.offset);
        let end_b = other.records.last().map(|r| r.offset);
        if end_a != end_b {
            out.push(format!(
                "partition {partition}: last offset {end_a:?} on {} but {end_b:?} on {}",
                first.node, other.node
            ));
        }
        for (off, ra) in &a {
            if let Some(rb) = b.get(off)
                && ra != rb
            {
                out.push(format!(
                    "partition {partition} offset {off}: {} has {ra:?}, {} has {rb:?}",
                    first.node, other.node
                ));
                if out.len() > 20 {
                    return out;
                }
            }
        }
        if state(other) != first_state {
            out.push(format!(
                "partition {partition}: replaying {} and {} gives different keys or values",
                first.node, other.node
            ));
        }
    }
    out
}
