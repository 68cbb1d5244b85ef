//! Where a follower's log diverges from its leader's, and the truncation
//! there: one partition's leader-epoch lookup (KIP-101, with KIP-279's
//! loop) is a state machine ([`Lookup`]); [`truncate_to_leader`] drives
//! the lookups of a fetch session's partitions in rounds, every partition
//! still looking sharing one `EpochEndOffset` call per round (never one
//! call per partition), and truncates each log once its lookup is over.
//!
//! The lookup asks for the end offset of the follower's last epoch. If the
//! leader answers with that epoch, the logs agree up to the smaller of
//! both ends of it. If it answers with an older epoch the follower lacks,
//! the follower asks again about its own newest epoch below that one (each
//! question names a strictly smaller epoch, so the lookup ends). If the
//! leader has no epoch at or below it, nothing of the follower's log is in
//! the leader's.
//!
//! Invariants:
//! - a session makes one `EpochEndOffset` call per round, whatever its
//!   number of partitions; each round makes every partition answered
//!   progress (a question about a strictly smaller epoch, or an end), so a
//!   lookup ends; a partition refused by the leader fails alone;
//! - truncations run under the partition's `append` lock, and only while
//!   it still follows the session's leader at the member's epoch;
//! - the decision never truncates below the commit point unless the
//!   leader's log ends below it (an unclean election: [`Decision::Unclean`]);
//!   a divergence below the commit point with a leader log covering it
//!   keeps the committed records ([`Decision::Divergent`]);
//! - a leader answer that would not make the next question smaller (a
//!   leader answering an epoch above the one asked) is an error, not a loop.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;
use tonic::transport::Channel;

use super::fetcher::Session;
use super::log::epoch_end;
use super::partition::Partition;
use crate::error::{Error, Result};
use crate::proto::replication::replication_client::ReplicationClient;
use crate::proto::replication::{EpochEnd, EpochEndOffsetRequest, EpochQuery};

/// What to do with the follower's log once the lookup ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The log agrees with the leader's up to its end: nothing to truncate.
    Keep,
    /// Truncate to `target` (not below the commit point).
    Truncate {
        /// The first offset removed.
        target: u64,
    },
    /// The epochs say the log diverges at `at`, below the commit point,
    /// yet the leader's log reaches past the commit point: committed
    /// records should agree. Keep them (truncating to `committed` at most)
    /// and log the divergence as an error.
    Divergent {
        /// Where the epochs say the logs diverge.
        at: u64,
        /// The follower's commit point.
        committed: u64,
        /// The leader's log end offset.
        leader_end: u64,
    },
    /// Unclean election: the leader's log ends below the commit point.
    /// Truncate to `target`, below it, and log the records lost.
    Unclean {
        /// The first offset removed.
        target: u64,
        /// The leader's log end offset.
        leader_end: u64,
    },
}

/// The next step of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask the leader about this epoch ([`Lookup::asking`]).
    Ask(u32),
    /// The lookup is over.
    Done(Decision),
}

/// One answer of the leader about one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The leader has an epoch at or below the one asked.
    pub found: bool,
    /// That epoch.
    pub epoch: u32,
    /// Where it ends in the leader's log.
    pub end: u64,
    /// The leader's log end offset, when the answer carries it (a leader
    /// that predates batched lookups does not).
    pub log_end: Option<u64>,
}

/// One partition's lookup in progress.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The follower's `(epoch, first offset)` runs, ascending, not empty.
    starts: Vec<(u32, u64)>,
    /// The follower's log end offset.
    end: u64,
    /// The follower's commit point.
    committed: u64,
    /// The epoch asked about next.
    asking: u32,
    /// The agreement point found, while asking only for the leader's log
    /// end (`asking == u32::MAX`: its answer's end offset is the log end).
    agreed: Option<u64>,
}

impl Lookup {
    /// Starts the lookup of a log with epoch runs `starts`, log end `end`
    /// and commit point `committed`; an empty log has nothing to look up.
    pub fn start(starts: Vec<(u32, u64)>, end: u64, committed: u64) -> (Lookup, Step) {
        let asking = starts.last().map_or(0, |&(e, _)| e);
        let lookup = Lookup {
            starts,
            end,
            committed,
            asking,
            agreed: None,
        };
        let step = match lookup.starts.is_empty() {
            true => Step::Done(Decision::Keep),
            false => Step::Ask(asking),
        };
        (lookup, step)
    }

    /// The epoch to ask about.
    pub fn asking(&self) -> u32 {
        self.asking
    }

    /// Takes the leader's answer to [`Lookup::asking`].
    pub fn answer(&mut self, a: Answer) -> Result<Step> {
        if let Some(agreed) = self.agreed {
            return Ok(Step::Done(self.decide(agreed, a.end)));
        }
        let first = self.starts.first().map_or(0, |s| s.1);
        let agreed = if !a.found {
            // The leader has no epoch at or below ours: nothing of ours is
            // in its log.
            first
        } else {
            match epoch_end(&self.starts, a.epoch, self.end) {
                Some((e, mine)) if e == a.epoch => mine.min(a.end),
                // We lack their epoch: ask about our newest one below it.
                Some((e, _)) if e < self.asking => {
                    self.asking = e;
                    return Ok(Step::Ask(e));
                }
                Some(_) => {
                    return Err(Error::Internal(format!(
                        "the leader answered epoch {} to a question about epoch {}",
                        a.epoch, self.asking
                    )));
                }
                None => first.min(a.end),
            }
        };
        if agreed >= self.committed {
            return Ok(Step::Done(self.decide(agreed, u64::MAX)));
        }
        match a.log_end {
            Some(leader_end) => Ok(Step::Done(self.decide(agreed, leader_end))),
            None => {
                // Below our commit point: only the leader's log end tells
                // a clean election from an unclean one.
                self.agreed = Some(agreed);
                self.asking = u32::MAX;
                Ok(Step::Ask(u32::MAX))
            }
        }
    }

    /// The decision for agreement point `agreed` and leader log end
    /// `leader_end` (only looked at below the commit point).
    fn decide(&self, agreed: u64, leader_end: u64) -> Decision {
        let (end, committed) = (self.end, self.committed);
        if agreed < committed {
            if leader_end >= committed {
                return Decision::Divergent {
                    at: agreed,
                    committed,
                    leader_end,
                };
            }
            return Decision::Unclean {
                target: agreed.min(leader_end),
                leader_end,
            };
        }
        match agreed >= end {
            true => Decision::Keep,
            false => Decision::Truncate { target: agreed },
        }
    }
}

/// A partition of a session looking for where its log diverges.
struct Looking {
    /// The replica.
    part: Arc<Partition>,
    /// Its member epoch.
    epoch: u32,
    /// The lookup.
    lookup: Lookup,
}

/// Truncates the log of each of `due` to the last offset where it agrees
/// with the leader's (leader-epoch truncation), then lets it fetch. The
/// lookups run in rounds: one `EpochEndOffset` call per round carries
/// every partition still looking, so a failover costs as many round trips
/// as the longest lookup, whatever the number of partitions. Fails only
/// when the leader is unreachable (the whole session waits).
pub(super) async fn truncate_to_leader(
    client: &mut ReplicationClient<Channel>,
    s: &Session,
    due: Vec<(Arc<Partition>, u32)>,
) -> Result<()> {
    let mut looking = Vec::with_capacity(due.len());
    let mut decided = Vec::new();
    for (part, epoch) in due {
        match part.log.epoch_starts() {
            Ok(starts) => {
                let end = part.log.written_end();
                let (lookup, step) = Lookup::start(starts, end, part.log.committed());
                match step {
                    Step::Ask(_) => looking.push(Looking {
                        part,
                        epoch,
                        lookup,
                    }),
                    Step::Done(d) => decided.push((part, epoch, d)),
                }
            }
            Err(e) => s.fail(part.id, epoch, &e.into()),
        }
    }
    settle(s, std::mem::take(&mut decided)).await;
    while !looking.is_empty() {
        let queries: Vec<EpochQuery> = looking
            .iter()
            .map(|l| EpochQuery {
                partition: l.part.id,
                current_leader_epoch: l.epoch,
                leader_epoch: l.lookup.asking(),
            })
            .collect();
        // The single-partition fields carry the first query: a leader that
        // predates batching answers that one (one partition per round).
        let req = EpochEndOffsetRequest {
            partition: queries[0].partition,
            current_leader_epoch: queries[0].current_leader_epoch,
            leader_epoch: queries[0].leader_epoch,
            partitions: queries,
        };
        let resp = match client.epoch_end_offset(req).await.map_err(Error::from) {
            Ok(r) => r.into_inner(),
            Err(e @ Error::Unavailable(_)) => return Err(e),
            Err(e) => {
                for l in looking {
                    s.fail(l.part.id, l.epoch, &e);
                }
                return Ok(());
            }
        };
        let mut answers: HashMap<u32, Result<Answer>> = resp
            .partitions
            .iter()
            .map(|a| (a.partition, answer(a)))
            .collect();
        if resp.partitions.is_empty() {
            let legacy = Answer {
                found: resp.found,
                epoch: resp.leader_epoch,
                end: resp.end_offset,
                log_end: None,
            };
            answers.insert(looking[0].part.id, Ok(legacy));
        }
        let mut next = Vec::with_capacity(looking.len());
        let mut progress = false;
        for mut l in looking {
            let Some(a) = answers.remove(&l.part.id) else {
                next.push(l);
                continue;
            };
            progress = true;
            match a.and_then(|a| l.lookup.answer(a)) {
                Ok(Step::Ask(_)) => next.push(l),
                Ok(Step::Done(d)) => decided.push((l.part, l.epoch, d)),
                Err(e) => s.fail(l.part.id, l.epoch, &e),
            }
        }
        looking = next;
        if !progress {
            let e = Error::Internal(format!("{} answered no partition asked about", s.leader));
            for l in looking.drain(..) {
                s.fail(l.part.id, l.epoch, &e);
            }
        }
        settle(s, std::mem::take(&mut decided)).await;
    }
    Ok(())
}

/// One partition's entry of a batched lookup answer.
fn answer(a: &EpochEnd) -> Result<Answer> {
    if !a.error_reason.is_empty() {
        let e = Error::from_reason(&a.error_reason, a.error_message.clone(), a.partition);
        return Err(e);
    }
    Ok(Answer {
        found: a.found,
        epoch: a.leader_epoch,
        end: a.end_offset,
        log_end: Some(a.log_end_offset),
    })
}

/// Carries out the lookups' `decided` truncations (concurrently: local
/// disk work only) and lets each partition fetch, or fails it.
async fn settle(s: &Session, decided: Vec<(Arc<Partition>, u32, Decision)>) {
    let done =
        futures_util::future::join_all(decided.into_iter().map(|(part, epoch, d)| async move {
            let r = carry_out(&part, &s.leader, epoch, d).await;
            (part, epoch, r)
        }))
        .await;
    for (part, epoch, r) in done {
        match r {
            Ok(()) => s.start_fetching(part.id, epoch),
            Err(e) => s.fail(part.id, epoch, &e),
        }
    }
}

/// Truncates `part`'s log as `decision` says (following `leader` at
/// `epoch`), logging what it drops.
async fn carry_out(part: &Arc<Partition>, leader: &str, epoch: u32, d: Decision) -> Result<()> {
    let id = part.id;
    let my_end = part.log.written_end();
    let target = match d {
        Decision::Keep => my_end,
        Decision::Truncate { target } => target,
        Decision::Divergent {
            at,
            committed,
            leader_end,
        } => {
            // The epoch lookup says our log diverges from the leader's at
            // `at`, below records we committed: committed records are on
            // every ISR member, so they should agree. Keep them (a
            // committed record is never dropped in a clean election), but
            // say so loudly: this is a replica divergence to investigate.
            tracing::error!(
                partition = id,
                "REPLICA DIVERGENCE: the leader's epoch history says this log diverges at \
                 offset {at}, below its committed offset {committed} (log end {my_end}, \
                 leader's log end {leader_end}, epoch {epoch}); keeping the committed \
                 records {at}..{committed} unchecked and truncating to {committed}"
            );
            committed
        }
        Decision::Unclean { target, leader_end } => {
            tracing::error!(
                partition = id,
                "DATA LOSS: the leader's log ends at {leader_end}, below this replica's \
                 committed offset {}; dropping offsets {target}..{my_end} (unclean \
                 leader election)",
                part.log.committed()
            );
            return truncate_following(part, leader, epoch, target, true).await;
        }
    };
    if target >= my_end {
        tracing::info!(
            partition = id,
            "log agrees with the leader's up to its end {my_end}: nothing to truncate; catching \
             up from there (epoch {epoch})"
        );
        return Ok(());
    }
    tracing::warn!(
        partition = id,
        "truncating the log from {my_end} to {target}, where it diverges from the leader's \
         (epoch {epoch})"
    );
    truncate_following(part, leader, epoch, target, false).await
}

/// Truncates `part`'s log to `target` (below the commit point only if
/// `unclean`) under its `append` lock, if it still follows `leader` at
/// `epoch`; otherwise does nothing (a newer role owns the log).
async fn truncate_following(
    part: &Arc<Partition>,
    leader: &str,
    epoch: u32,
    target: u64,
    unclean: bool,
) -> Result<()> {
    let Some(guard) = still_following(part, leader, epoch).await else {
        return Ok(());
    };
    let log = part.log.clone();
    super::blocking(move || {
        let _guard = guard;
        match unclean {
            true => log.truncate_unclean_to(target),
            false => log.truncate_to(target),
        }
    })
    .await?;
    part.publish_log_end();
    Ok(())
}

/// The `append` lock of `part`, if it still follows `leader` at `epoch`.
async fn still_following(
    part: &Arc<Partition>,
    leader: &str,
    epoch: u32,
) -> Option<OwnedMutexGuard<()>> {
    let guard = part.append.clone().lock_owned().await;
    part.follows(leader, epoch).then_some(guard)
}

#[cfg(test)]
mod tests {
    use super::{Answer, Decision, Lookup, Step};

    /// The leader `(epoch, first offset)` runs and log end a test answers from.
    fn leader(starts: &[(u32, u64)], end: u64, asked: u32, with_end: bool) -> Answer {
        let found = super::epoch_end(starts, asked, end);
        Answer {
            found: found.is_some(),
            epoch: found.map_or(0, |f| f.0),
            end: found.map_or(0, |f| f.1),
            log_end: with_end.then_some(end),
        }
    }

    /// Runs a lookup against a leader; returns the epochs asked and the
    /// decision.
    fn lookup(
        mine: &[(u32, u64)],
        end: u64,
        committed: u64,
        theirs: &[(u32, u64)],
        their_end: u64,
        with_end: bool,
    ) -> (Vec<u32>, Decision) {
        let (mut l, mut step) = Lookup::start(mine.to_vec(), end, committed);
        let mut asked = Vec::new();
        loop {
            match step {
                Step::Done(d) => return (asked, d),
                Step::Ask(e) => {
                    assert_eq!(e, l.asking());
                    asked.push(e);
                    step = l.answer(leader(theirs, their_end, e, with_end)).unwrap();
                }
            }
        }
    }

    #[test]
    fn kip_279_asks_smaller_epochs_until_both_name_one() {
        let mine = [(1, 0), (3, 2), (5, 4)];
        let theirs = [(1, 0), (2, 1), (4, 3), (6, 5)];
        let (asked, d) = lookup(&mine, 5, 0, &theirs, 6, true);
        assert_eq!(asked, vec![5, 3, 1]);
        assert_eq!(d, Decision::Truncate { target: 1 });
        // One round when the leader has our last epoch; nothing when it
        // reaches past our end.
        let (asked, d) = lookup(&[(1, 0), (2, 3)], 5, 0, &[(1, 0), (3, 3)], 4, true);
        assert_eq!((asked, d), (vec![2], Decision::Truncate { target: 3 }));
        let (asked, d) = lookup(&[(1, 0)], 2, 0, &[(1, 0), (2, 4)], 5, true);
        assert_eq!((asked, d), (vec![1], Decision::Keep));
        // No epoch of ours at or below theirs: everything goes.
        let (asked, d) = lookup(&[(2, 0)], 3, 0, &[(3, 0)], 4, true);
        assert_eq!((asked, d), (vec![2], Decision::Truncate { target: 0 }));
        // An empty log asks nothing.
        let (l, step) = Lookup::start(Vec::new(), 0, 0);
        assert_eq!(step, Step::Done(Decision::Keep));
        assert_eq!(l.asking(), 0);
    }

    #[test]
    fn below_the_commit_point_the_leaders_log_end_decides() {
        // The leader's log ends below our commit point: unclean.
        let unclean = Decision::Unclean {
            target: 2,
            leader_end: 3,
        };
        let (asked, d) = lookup(&[(1, 0)], 5, 5, &[(1, 0), (2, 2)], 3, true);
        assert_eq!((asked, d), (vec![1], unclean));
        // From a leader whose answers lack the log end, one more question.
        let (asked, d) = lookup(&[(1, 0)], 5, 5, &[(1, 0), (2, 2)], 3, false);
        assert_eq!((asked, d), (vec![1, u32::MAX], unclean));
        // The leader's log covers our commit point: the committed records
        // stay (and the divergence is reported).
        let (asked, d) = lookup(&[(1, 0), (3, 4)], 6, 5, &[(1, 0), (2, 2)], 9, true);
        let divergent = Decision::Divergent {
            at: 2,
            committed: 5,
            leader_end: 9,
        };
        assert_eq!((asked, d), (vec![3, 1], divergent));
    }

    #[test]
    fn an_answer_above_the_epoch_asked_is_an_error() {
        let (mut l, step) = Lookup::start(vec![(1, 0), (3, 2)], 4, 0);
        assert_eq!(step, Step::Ask(3));
        let bogus = Answer {
            found: true,
            epoch: 7,
            end: 9,
            log_end: Some(9),
        };
        assert!(l.answer(bogus).is_err());
    }
}
