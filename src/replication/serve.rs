//! The leader side of fetching: answers a follower's long-poll fetch for
//! every partition of its incremental fetch session ([`super::session`]),
//! within the message limit.
//!
//! Invariants:
//! - every partition of the session is noted as fetched at the follower's
//!   offset (the one the request sent, or the one remembered) at every
//!   request, so an idle follower that is caught up stays in the ISR and
//!   the high watermark sees it; the long poll wakes on records of any of
//!   them;
//! - an incremental answer leaves a partition out only when it has no
//!   records, no error, and the high watermark last sent to the follower
//!   in this session (see [`super::session`] for when that counts as
//!   sent) is the current one;
//! - a fetch answer always fits the message limit ([`ReplicaManager::message_limit`],
//!   which leaves room for the largest record), whatever the value sizes;
//! - each partition of a request is served or refused on its own: one
//!   refusal does not fail the others;
//! - records served to a replica being added by a reassignment come out of
//!   the node's throttle ([`super::throttle`]); no other record does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use super::partition::{Partition, check_epoch};
use super::session::{FetchCounts, Fetched};
use super::{ReadBudget, ReplicaLog, ReplicaManager, in_place};
use crate::error::{Error, Result};
use crate::proto::replication as pb;

/// Bytes of a fetch answer's message reserved for everything but records.
const ENVELOPE: usize = 64 << 10;
/// Bytes reserved per partition of a fetch answer (ids, offsets, an error).
const PER_PARTITION: usize = 512;

impl ReplicaManager {
    /// Answers one fetch of a session on the leader (long poll). The
    /// request opens or continues an incremental fetch session
    /// ([`super::session`]); every partition of the session is served or
    /// refused on its own (the ones the request did not list at their
    /// remembered offset), and the answer goes out as soon as one of them
    /// has records past its offset (or was refused, or lost this node's
    /// leadership, or, in an incremental session, has a high watermark the
    /// follower was not sent), else after `max_wait_ms`. A full request is
    /// answered for every partition, in its order; an incremental one only
    /// for partitions with records, news of the high watermark, or an
    /// error. `turn` (the stream's answer count) picks the partition read
    /// first; `stream` numbers the fetch stream ([`Self::open_fetch_stream`],
    /// 0 in tests that call this directly).
    ///
    /// The answer fits the message limit ([`Self::message_limit`]): its
    /// records share a byte budget of at most `fetch_max_bytes`, the first
    /// record of the answer is always included (the limit leaves room for
    /// the largest record), and a later partition's record only if it fits
    /// what is left.
    pub async fn fetch(
        self: &Arc<Self>,
        req: pb::FetchRequest,
        turn: usize,
        stream: u64,
    ) -> Result<pb::FetchResponse> {
        let stats = &self.fetch_sessions.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats
            .request_entries
            .fetch_add(req.partitions.len() as u64, Ordering::Relaxed);
        stats
            .request_bytes
            .fetch_add(req.encoded_len() as u64, Ordering::Relaxed);
        let session = match self.fetch_sessions.begin(&req, stream) {
            Ok(t) => t,
            Err(e) => {
                stats.session_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(follower = req.follower_id, "{}", e.message);
                let answer = pb::FetchResponse {
                    session_id: req.session_id,
                    error_reason: e.reason.to_string(),
                    error_message: e.message,
                    ..Default::default()
                };
                stats
                    .answer_bytes
                    .fetch_add(answer.encoded_len() as u64, Ordering::Relaxed);
                return Ok(answer);
            }
        };
        if session.full {
            stats.full_requests.fetch_add(1, Ordering::Relaxed);
        }
        let lease = self.lease();
        let mut slots = Vec::with_capacity(session.parts.len());
        let mut commits = Vec::new();
        for &(p, f) in &session.parts {
            let noted = self.partition(p).and_then(|part| {
                if !lease {
                    return Err(self.not_leader(part.as_ref()));
                }
                let note = part.note_fetch(
                    &self.me.id,
                    &req.follower_id,
                    f.offset,
                    f.leader_epoch,
                    self.opts.min_insync,
                )?;
                Ok((part.clone(), note))
            });
            match noted {
                Ok((part, note)) => {
                    if let Some((hw, epoch)) = note.commit {
                        commits.push((part.clone(), hw, epoch));
                    }
                    if let Some(isr) = note.isr_change {
                        let why = format!("{} caught up", req.follower_id);
                        self.spawn_isr_change(part.clone(), isr, &why);
                    }
                    slots.push(Ok((part, f)));
                }
                Err(e) => slots.push(Err((p, e))),
            }
        }
        for (part, hw, epoch) in commits {
            self.commit(&part, hw, epoch);
        }
        // Partitions this follower is being added to by a reassignment:
        // their records come out of the node's throttle (`throttle.rs`).
        let throttled: HashSet<u32> = slots
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .filter(|(part, _)| self.adding(part, &req.follower_id))
            .map(|(part, _)| part.id)
            .collect();
        let starved = |p: u32| throttled.contains(&p) && self.throttle.available() == Some(0);

        let served: Vec<_> = slots.iter().filter_map(|s| s.as_ref().ok()).collect();
        // (A leadership change during the wait ends it too: see
        // `wait_for_records`.) A high watermark that is news to an
        // incremental session's follower is answered at once: a full
        // request's answer carries every one anyway.
        let full = session.full;
        let ready = |(part, f): &&(Arc<Partition>, Fetched)| {
            (part.log.written_end() > f.offset && !starved(part.id))
                || (!full && f.hw_sent != Some(part.progress.borrow().hw))
        };
        let refused = served.len() < slots.len();
        if !refused && !served.is_empty() && !served.iter().any(ready) {
            let wait = Duration::from_millis(u64::from(req.max_wait_ms).min(10_000));
            // A throttled partition with records waits for the bucket,
            // not for more records.
            let refill = served
                .iter()
                .any(|(part, f)| starved(part.id) && part.log.written_end() > f.offset)
                .then(|| self.throttle.wait_for(4096).max(Duration::from_millis(1)));
            let waits = served
                .iter()
                .filter(|(part, _)| !starved(part.id))
                .map(|(part, f)| {
                    Box::pin(part.wait_for_records(f.offset, f.leader_epoch))
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
                })
                .chain(refill.map(|d| {
                    Box::pin(tokio::time::sleep(d))
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
                }))
                .collect::<Vec<_>>();
            if waits.is_empty() {
                tokio::time::sleep(wait).await;
            } else {
                let _ = tokio::time::timeout(wait, futures_util::future::select_all(waits)).await;
            }
        }

        // Leadership may have moved during the wait: refuse what is no
        // longer ours, read the rest (from the logs' tails in memory, or
        // in place: see below).
        let mut reads = Vec::new();
        for slot in &mut slots {
            let Ok((part, f)) = slot else {
                continue;
            };
            let mine = self
                .leading(part)
                .and_then(|mine| check_epoch(part.id, f.leader_epoch, mine));
            if let Err(e) = mine {
                *slot = Err((part.id, e));
            } else if part.log.written_end() > f.offset {
                reads.push((
                    part.id,
                    part.log.clone(),
                    f.offset,
                    throttled.contains(&part.id),
                ));
            }
        }
        // The answer's hard budget: `fetch_max_bytes` (or less, as asked),
        // never more than fits the message limit with the envelope.
        let hard = self.answer_budget(slots.len());
        let max = (req.max_bytes as usize).clamp(1, self.opts.fetch_max_bytes.max(1).min(hard));
        let share = (max / reads.len().max(1)).max(1);
        // Each answer starts with another partition, so one with large
        // records cannot keep the others out.
        if !reads.is_empty() {
            let first = turn % reads.len();
            reads.rotate_left(first);
        }
        // A follower in sync reads the last batches written: the log keeps
        // them in memory, so the round is answered here without I/O. Any
        // other read (a follower catching up, a throttled one) runs in
        // place, off the runtime's worker.
        let from_memory = if reads.is_empty() {
            Some(HashMap::new())
        } else if reads.iter().any(|r| r.3) {
            None
        } else {
            read_memory(&reads, share, max)
                .inspect(|_| _ = stats.memory_rounds.fetch_add(1, Ordering::Relaxed))
        };
        let mut read = match from_memory {
            Some(read) => read,
            None => {
                let throttle = self.throttle.clone();
                in_place(move || {
                    let mut used = 0usize;
                    let mut out = HashMap::with_capacity(reads.len());
                    for (p, log, offset, throttled) in reads {
                        let mut want = share;
                        if throttled && let Some(tokens) = throttle.available() {
                            if tokens == 0 {
                                continue;
                            }
                            want = want.min(tokens);
                        }
                        let budget = ReadBudget {
                            want,
                            room: max.saturating_sub(used),
                            first: used == 0,
                        };
                        let r = log.read_raw(offset, budget).map_err(Error::from);
                        if let Ok((records, _)) = &r {
                            used = used.saturating_add(records.len());
                            if throttled {
                                throttle.take(records.len());
                            }
                        }
                        out.insert(p, r);
                    }
                    Ok::<_, Error>(out)
                })
                .await?
            }
        };

        let partitions = slots
            .into_iter()
            .filter_map(|slot| {
                let d = match slot {
                    Ok((part, f)) => {
                        let end = part.log.written_end();
                        let hw = part.progress.borrow().hw;
                        match read.remove(&part.id).unwrap_or(Ok((Bytes::new(), 0))) {
                            // Nothing new for the follower of an
                            // incremental session: left out.
                            Ok((records, _))
                                if !full && records.is_empty() && f.hw_sent == Some(hw) =>
                            {
                                return None;
                            }
                            Ok((records, record_count)) => pb::PartitionData {
                                partition: part.id,
                                high_watermark: hw,
                                log_end_offset: end,
                                records,
                                record_count,
                                ..Default::default()
                            },
                            Err(e) => refusal(part.id, &e),
                        }
                    }
                    Err((p, e)) => refusal(p, &e),
                };
                Some(d)
            })
            .collect();
        let mut answer = pb::FetchResponse {
            partitions,
            session_id: session.id,
            ..Default::default()
        };
        self.fit(&mut answer);
        self.fetch_sessions.sent(
            &session,
            answer
                .partitions
                .iter()
                .filter(|d| d.error_reason.is_empty())
                .map(|d| (d.partition, d.high_watermark)),
        );
        stats
            .answer_entries
            .fetch_add(answer.partitions.len() as u64, Ordering::Relaxed);
        stats
            .answer_bytes
            .fetch_add(answer.encoded_len() as u64, Ordering::Relaxed);
        Ok(answer)
    }

    /// Whether `follower` is being added to `part` (led here) by a
    /// reassignment, so its catch-up is throttled.
    fn adding(&self, part: &Partition, follower: &str) -> bool {
        match &part.state.lock().role {
            super::partition::RoleState::Leader(l) => super::throttle::is_adding(
                follower,
                &l.replicas,
                &l.isr,
                self.opts.replication_factor as usize,
            ),
            _ => false,
        }
    }

    /// A number for a fetch stream being opened (higher than any before):
    /// a session refuses requests from streams older than its newest.
    pub fn open_fetch_stream(&self) -> u64 {
        self.fetch_sessions.open_stream()
    }

    /// Counters of the fetch traffic served here as a leader.
    pub fn fetch_counts(&self) -> FetchCounts {
        self.fetch_sessions.stats.counts()
    }

    /// The largest fetch answer (and request) on the wire: the gRPC default
    /// of 4 MiB, or more when the largest record needs it (a record is
    /// never split, and the first record of an answer is always sent).
    pub fn message_limit(&self) -> usize {
        (4usize << 20).max(self.max_record.saturating_add(ENVELOPE))
    }

    /// The record bytes an answer for `partitions` partitions may carry:
    /// the message limit less the envelope (at least the largest record).
    fn answer_budget(&self, partitions: usize) -> usize {
        self.message_limit()
            .saturating_sub(ENVELOPE)
            .saturating_sub(partitions.saturating_mul(PER_PARTITION))
            .max(self.max_record)
    }

    /// Makes sure `answer` fits the message limit, whatever the envelope
    /// estimate said: drops the records of its last partitions (never the
    /// first partition with records) until it does. Their followers fetch
    /// them again next time.
    fn fit(&self, answer: &mut pb::FetchResponse) {
        let limit = self.message_limit();
        let mut len = answer.encoded_len();
        if len <= limit {
            return;
        }
        let with_records: Vec<usize> = (0..answer.partitions.len())
            .filter(|&i| !answer.partitions[i].records.is_empty())
            .collect();
        for &i in with_records.iter().skip(1).rev() {
            let d = &mut answer.partitions[i];
            tracing::warn!(
                partition = d.partition,
                "fetch answer of {len} bytes is over the {limit}-byte limit: records left out"
            );
            d.records = Bytes::new();
            d.record_count = 0;
            len = answer.encoded_len();
            if len <= limit {
                return;
            }
        }
    }
}

/// A partition's entry in a fetch answer that refuses it with `e`.
fn refusal(partition: u32, e: &Error) -> pb::PartitionData {
    pb::PartitionData {
        partition,
        error_reason: e.reason().to_string(),
        error_message: e.message(),
        ..Default::default()
    }
}

/// One partition's read of a fetch round: partition, log, offset, whether
/// the throttle applies.
type Read = (u32, Arc<dyn ReplicaLog>, u64, bool);

/// The reads of a round answered from the logs' tails in memory
/// ([`ReplicaLog::read_raw_memory`]), with the budgets the read in place
/// would give them; `None` when one of them is not there (then the round
/// reads in place). No I/O.
fn read_memory(
    reads: &[Read],
    share: usize,
    max: usize,
) -> Option<HashMap<u32, Result<(Bytes, u32)>>> {
    let mut used = 0usize;
    let mut out = HashMap::with_capacity(reads.len());
    for (p, log, offset, _) in reads {
        let budget = ReadBudget {
            want: share,
            room: max.saturating_sub(used),
            first: used == 0,
        };
        let r = log.read_raw_memory(*offset, budget)?.map_err(Error::from);
        if let Ok((records, _)) = &r {
            used = used.saturating_add(records.len());
        }
        out.insert(*p, r);
    }
    Some(out)
}
