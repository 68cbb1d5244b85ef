//! The controller's decisions, free of I/O: replica assignment, leader
//! election on node loss, ISR shrinking, preferred-leader moves. The
//! controller (`controller.rs`) reads ZooKeeper and asks nodes for offsets,
//! then calls these functions and writes what they return.
//!
//! Rules:
//! - Assignment: partition `p` gets `replication_factor` nodes of the
//!   live nodes sorted by id (byte order), starting at index `p mod n`
//!   and wrapping: leaders and followers are spread evenly.
//! - Election (the leader is not live): the candidates are the live ISR
//!   members; the one with the highest log end offset wins, a tie goes to
//!   the one listed first in `replicas`, a candidate whose offset is
//!   unknown (it did not answer) ranks below every one that answered. The
//!   new state is `{leader, leader_epoch + 1, isr ∩ live}`.
//! - No live ISR member: the partition goes offline (`leader: None`,
//!   `leader_epoch + 1`) and keeps its last ISR, so that the first ISR
//!   member to come back is elected cleanly (as Kafka does). With
//!   `unclean_leader_election`, the live replica with the highest log end
//!   offset is elected instead, with `isr = [it]`: records it lacks are
//!   lost, which is logged at error level.
//! - A dead follower leaves the ISR, at the same leader epoch.
//! - Preferred leader: when `replicas[0]` is live, in the ISR and not the
//!   leader, leadership moves to it (`leader_epoch + 1`, ISR unchanged).
//!
//! Every returned state carries the `zk_version` it was decided from: the
//! controller writes it with compare-and-set on that version.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::cluster::LeaderAndIsr;

/// Log end offsets the controller learned: `(partition, node) -> offset`.
pub(crate) type Offsets = HashMap<(u32, String), u64>;

/// The replicas of partition `p` over `nodes` (sorted by id).
pub(crate) fn assign(nodes: &[String], p: u32, replication_factor: usize) -> Vec<String> {
    let n = nodes.len();
    if n == 0 {
        return Vec::new();
    }
    let start = p as usize % n;
    (0..replication_factor.min(n))
        .map(|i| nodes[(start + i) % n].clone())
        .collect()
}

/// Why the controller changes a partition's state; its `Display` is the
/// log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A live ISR member was elected leader.
    Elected {
        /// The new leader and its log end offset (None: it did not answer).
        chosen: (String, Option<u64>),
        /// The other candidates and their offsets.
        others: Vec<(String, Option<u64>)>,
    },
    /// No ISR member is live; a replica outside the ISR was elected.
    Unclean {
        /// The new leader and its log end offset.
        chosen: (String, Option<u64>),
        /// The ISR it is not part of.
        old_isr: Vec<String>,
    },
    /// No ISR member is live: no leader.
    Offline,
    /// Dead followers left the ISR.
    IsrShrink {
        /// The nodes removed.
        removed: Vec<String>,
    },
    /// Leadership moved back to the preferred replica.
    Preferred {
        /// The previous leader.
        from: Option<String>,
    },
}

/// A new state for one partition, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The state to write (its `zk_version` is the one to compare with).
    pub state: LeaderAndIsr,
    /// Why.
    pub reason: Reason,
}

/// `node-2 (log end 1042)`.
fn with_offset(f: &mut fmt::Formatter<'_>, (node, leo): &(String, Option<u64>)) -> fmt::Result {
    match leo {
        Some(o) => write!(f, "{node} (log end {o})"),
        None => write!(f, "{node} (log end unknown)"),
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.state;
        write!(f, "partition {}: ", s.partition)?;
        match &self.reason {
            Reason::Elected { chosen, others } => {
                write!(f, "leader ")?;
                with_offset(f, chosen)?;
                if others.is_empty() {
                    write!(f, ", the only live in-sync replica")?;
                } else {
                    write!(f, " chosen over ")?;
                    for (i, o) in others.iter().enumerate() {
                        if i > 0 {
                            write!(f, ", ")?;
                        }
                        with_offset(f, o)?;
                    }
                }
                write!(f, ", epoch {}", s.leader_epoch)
            }
            Reason::Unclean { chosen, old_isr } => {
                write!(f, "UNCLEAN leader election: ")?;
                with_offset(f, chosen)?;
                write!(
                    f,
                    " elected although not in the ISR [{}]; records it lacks are lost, epoch {}",
                    old_isr.join(", "),
                    s.leader_epoch
                )
            }
            Reason::Offline => write!(
                f,
                "offline: no live in-sync replica (isr [{}]), epoch {}",
                s.isr.join(", "),
                s.leader_epoch
            ),
            Reason::IsrShrink { removed } => write!(
                f,
                "{} left the ISR (not live), isr [{}], epoch {}",
                removed.join(", "),
                s.isr.join(", "),
                s.leader_epoch
            ),
            Reason::Preferred { from } => write!(
                f,
                "leadership moved to preferred replica {} (from {}), epoch {}",
                s.leader.as_deref().unwrap_or("none"),
                from.as_deref().unwrap_or("none"),
                s.leader_epoch
            ),
        }
    }
}

/// The nodes whose log end offset the election of `state` needs: none
/// when its leader is live; the live ISR members otherwise; with
/// `unclean` and no live ISR member, the live replicas.
pub(crate) fn wants_offsets(
    state: &LeaderAndIsr,
    live: &BTreeSet<String>,
    unclean: bool,
) -> Vec<String> {
    if state.leader.as_ref().is_some_and(|l| live.contains(l)) {
        return Vec::new();
    }
    let isr = live_isr(state, live);
    if !isr.is_empty() {
        return isr;
    }
    if unclean {
        return state
            .replicas
            .iter()
            .filter(|r| live.contains(*r))
            .cloned()
            .collect();
    }
    Vec::new()
}

/// Live ISR members, in `replicas` order (ISR members missing from
/// `replicas`, which should not exist, come last).
fn live_isr(state: &LeaderAndIsr, live: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = state
        .replicas
        .iter()
        .filter(|r| live.contains(*r) && state.isr.contains(r))
        .cloned()
        .collect();
    for m in &state.isr {
        if live.contains(m) && !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// Picks the candidate with the highest known offset (first wins a tie).
fn pick(p: u32, candidates: &[String], offsets: &Offsets) -> (usize, Vec<(String, Option<u64>)>) {
    let ranked: Vec<(String, Option<u64>)> = candidates
        .iter()
        .map(|c| (c.clone(), offsets.get(&(p, c.clone())).copied()))
        .collect();
    let mut best = 0;
    for (i, (_, leo)) in ranked.iter().enumerate() {
        // `Option` orders None below every Some; strict > keeps the first.
        if *leo > ranked[best].1 {
            best = i;
        }
    }
    (best, ranked)
}

/// The change `state` needs now that `live` are the live nodes, if any:
/// an election when the leader is not live, an ISR shrink when followers
/// are not live. `controller_epoch` is stamped on the new state.
pub(crate) fn failover(
    state: &LeaderAndIsr,
    live: &BTreeSet<String>,
    offsets: &Offsets,
    unclean: bool,
    controller_epoch: u64,
) -> Option<Decision> {
    let p = state.partition;
    let leader_live = state.leader.as_ref().is_some_and(|l| live.contains(l));
    let mut next = state.clone();
    next.controller_epoch = controller_epoch;
    if leader_live {
        let removed: Vec<String> = state
            .isr
            .iter()
            .filter(|m| !live.contains(*m))
            .cloned()
            .collect();
        if removed.is_empty() {
            return None;
        }
        next.isr.retain(|m| live.contains(m));
        return Some(Decision {
            state: next,
            reason: Reason::IsrShrink { removed },
        });
    }
    let candidates = live_isr(state, live);
    if !candidates.is_empty() {
        let (best, mut ranked) = pick(p, &candidates, offsets);
        let chosen = ranked.remove(best);
        next.leader = Some(chosen.0.clone());
        next.leader_epoch = state.leader_epoch + 1;
        next.isr.retain(|m| live.contains(m));
        return Some(Decision {
            state: next,
            reason: Reason::Elected {
                chosen,
                others: ranked,
            },
        });
    }
    let replicas: Vec<String> = state
        .replicas
        .iter()
        .filter(|r| live.contains(*r))
        .cloned()
        .collect();
    if unclean && !replicas.is_empty() {
        let (best, mut ranked) = pick(p, &replicas, offsets);
        let chosen = ranked.remove(best);
        next.leader = Some(chosen.0.clone());
        next.leader_epoch = state.leader_epoch + 1;
        next.isr = vec![chosen.0.clone()];
        return Some(Decision {
            state: next,
            reason: Reason::Unclean {
                chosen,
                old_isr: state.isr.clone(),
            },
        });
    }
    // Already offline: nothing new.
    state.leader.as_ref()?;
    next.leader = None;
    next.leader_epoch = state.leader_epoch + 1;
    Some(Decision {
        state: next,
        reason: Reason::Offline,
    })
}

/// Moves leadership of `state` to its preferred replica when that replica
/// is live, in the ISR and not the leader.
pub(crate) fn preferred(
    state: &LeaderAndIsr,
    live: &BTreeSet<String>,
    controller_epoch: u64,
) -> Option<Decision> {
    let first = state.replicas.first()?;
    if state.leader.as_ref() == Some(first) || !live.contains(first) || !state.isr.contains(first) {
        return None;
    }
    let mut next = state.clone();
    next.leader = Some(first.clone());
    next.leader_epoch = state.leader_epoch + 1;
    next.controller_epoch = controller_epoch;
    Some(Decision {
        state: next,
        reason: Reason::Preferred {
            from: state.leader.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn live(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn state(leader: Option<&str>, epoch: u32, replicas: &[&str], isr: &[&str]) -> LeaderAndIsr {
        LeaderAndIsr {
            partition: 3,
            leader: leader.map(str::to_string),
            leader_epoch: epoch,
            replicas: s(replicas),
            isr: s(isr),
            controller_epoch: 1,
            zk_version: 7,
        }
    }

    fn offsets(v: &[(&str, u64)]) -> Offsets {
        v.iter().map(|(n, o)| ((3, n.to_string()), *o)).collect()
    }

    #[test]
    fn assignment_rotates_over_sorted_nodes() {
        let nodes = s(&["n1", "n2", "n3"]);
        let got: Vec<Vec<String>> = (0..4).map(|p| assign(&nodes, p, 3)).collect();
        assert_eq!(
            got,
            vec![
                s(&["n1", "n2", "n3"]),
                s(&["n2", "n3", "n1"]),
                s(&["n3", "n1", "n2"]),
                s(&["n1", "n2", "n3"]),
            ]
        );
        let five = s(&["a", "b", "c", "d", "e"]);
        assert_eq!(assign(&five, 4, 2), s(&["e", "a"]));
        assert_eq!(assign(&five, 7, 3), s(&["c", "d", "e"]));
        assert_eq!(assign(&[], 0, 3), Vec::<String>::new());
    }

    #[test]
    fn highest_offset_wins_and_the_line_names_both() {
        let st = state(Some("n1"), 3, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let l = live(&["n2", "n3"]);
        assert_eq!(wants_offsets(&st, &l, false), s(&["n2", "n3"]));
        let d = failover(&st, &l, &offsets(&[("n2", 1040), ("n3", 1042)]), false, 9).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n3"));
        assert_eq!(d.state.leader_epoch, 4);
        assert_eq!(d.state.isr, s(&["n2", "n3"]));
        assert_eq!(d.state.controller_epoch, 9);
        assert_eq!(d.state.zk_version, 7);
        assert_eq!(
            d.to_string(),
            "partition 3: leader n3 (log end 1042) chosen over n2 (log end 1040), epoch 4"
        );
    }

    #[test]
    fn ties_go_to_replica_order_and_unknown_ranks_last() {
        let st = state(Some("n1"), 1, &["n1", "n3", "n2"], &["n1", "n2", "n3"]);
        let l = live(&["n2", "n3"]);
        let d = failover(&st, &l, &offsets(&[("n2", 5), ("n3", 5)]), false, 1).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n3"));
        assert_eq!(d.state.isr, s(&["n2", "n3"]));
        let d = failover(&st, &l, &offsets(&[("n2", 0)]), false, 1).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n2"));
        assert_eq!(
            d.to_string(),
            "partition 3: leader n2 (log end 0) chosen over n3 (log end unknown), epoch 2"
        );
        let d = failover(&st, &live(&["n2"]), &Offsets::new(), false, 1).unwrap();
        assert_eq!(
            d.to_string(),
            "partition 3: leader n2 (log end unknown), the only live in-sync replica, epoch 2"
        );
    }

    #[test]
    fn no_live_isr_goes_offline_keeping_the_isr_unless_unclean() {
        let st = state(Some("n1"), 2, &["n1", "n2", "n3"], &["n1"]);
        let l = live(&["n2", "n3"]);
        assert_eq!(wants_offsets(&st, &l, false), Vec::<String>::new());
        let d = failover(&st, &l, &Offsets::new(), false, 1).unwrap();
        assert_eq!(d.state.leader, None);
        assert_eq!(d.state.leader_epoch, 3);
        assert_eq!(d.state.isr, s(&["n1"]));
        assert_eq!(d.reason, Reason::Offline);
        // Offline stays offline without churn.
        assert_eq!(failover(&d.state, &l, &Offsets::new(), false, 1), None);
        // The ISR member comes back: elected.
        let back = failover(&d.state, &live(&["n1", "n2"]), &Offsets::new(), false, 1).unwrap();
        assert_eq!(back.state.leader.as_deref(), Some("n1"));
        assert_eq!(back.state.leader_epoch, 4);

        assert_eq!(wants_offsets(&st, &l, true), s(&["n2", "n3"]));
        let d = failover(&st, &l, &offsets(&[("n2", 10), ("n3", 12)]), true, 1).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n3"));
        assert_eq!(d.state.isr, s(&["n3"]));
        assert_eq!(d.state.leader_epoch, 3);
        assert_eq!(
            d.to_string(),
            "partition 3: UNCLEAN leader election: n3 (log end 12) elected although not in the ISR [n1]; records it lacks are lost, epoch 3"
        );
    }

    #[test]
    fn dead_follower_leaves_the_isr_at_the_same_epoch() {
        let st = state(Some("n1"), 2, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let l = live(&["n1", "n2"]);
        assert_eq!(wants_offsets(&st, &l, false), Vec::<String>::new());
        let d = failover(&st, &l, &Offsets::new(), false, 4).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n1"));
        assert_eq!(d.state.leader_epoch, 2);
        assert_eq!(d.state.isr, s(&["n1", "n2"]));
        assert_eq!(
            d.to_string(),
            "partition 3: n3 left the ISR (not live), isr [n1, n2], epoch 2"
        );
        assert_eq!(failover(&d.state, &l, &Offsets::new(), false, 4), None);
    }

    #[test]
    fn preferred_leader_needs_to_be_live_and_in_sync() {
        let st = state(Some("n2"), 5, &["n1", "n2", "n3"], &["n2", "n3"]);
        assert_eq!(preferred(&st, &live(&["n1", "n2", "n3"]), 1), None);
        let st = state(Some("n2"), 5, &["n1", "n2", "n3"], &["n2", "n3", "n1"]);
        assert_eq!(preferred(&st, &live(&["n2", "n3"]), 1), None);
        let d = preferred(&st, &live(&["n1", "n2", "n3"]), 2).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n1"));
        assert_eq!(d.state.leader_epoch, 6);
        assert_eq!(d.state.isr, s(&["n2", "n3", "n1"]));
        assert_eq!(
            d.to_string(),
            "partition 3: leadership moved to preferred replica n1 (from n2), epoch 6"
        );
        let led = state(Some("n1"), 5, &["n1", "n2"], &["n1", "n2"]);
        assert_eq!(preferred(&led, &live(&["n1", "n2"]), 1), None);
    }
}
