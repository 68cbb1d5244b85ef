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
//! - Node epochs (KIP-380): live nodes come with the node epoch of their
//!   registration ([`Live`]), and every leadership given is stamped with
//!   its leader's (`leader_node_epoch`). A leader registered under another
//!   node epoch than its leadership's bounced (restart, expired session):
//!   it counts as a node that left and joined again, so its partitions get
//!   a new leader at `leader_epoch + 1` chosen among the other live ISR
//!   members, and it leaves the ISR; only when no other ISR member is live
//!   is it elected again (a new epoch, stamped with its new node epoch).
//!   It never keeps a leadership given to an earlier registration. A state
//!   without a stamp (0, written before node epochs) trusts any
//!   registration of its leader.
//! - [`bounced`]: between two reads of `/nodes`, a node whose node epoch
//!   changed; the controller handles it as leaving, then joining.
//!
//! Every returned state carries the `zk_version` it was decided from: the
//! controller writes it with compare-and-set on that version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::cluster::LeaderAndIsr;

/// Log end offsets the controller learned: `(partition, node) -> offset`.
pub(crate) type Offsets = HashMap<(u32, String), u64>;

/// Live nodes: node id -> node epoch of its current registration.
pub(crate) type Live = BTreeMap<String, i64>;

/// Nodes registered in both `before` and `after` under different node
/// epochs: they bounced (left and joined) between the two reads.
pub(crate) fn bounced(before: &Live, after: &Live) -> BTreeSet<String> {
    after
        .iter()
        .filter(|(id, e)| before.get(*id).is_some_and(|b| b != *e))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether the leader of `state` is live under the registration its
/// leadership was given to.
pub(crate) fn leader_live(state: &LeaderAndIsr, live: &Live) -> bool {
    state.leader.as_ref().is_some_and(|l| {
        live.get(l)
            .is_some_and(|&e| state.leader_node_epoch == 0 || state.leader_node_epoch == e)
    })
}

/// The leader of `state` when it is registered again under another node
/// epoch than its leadership's (it bounced).
fn stale_leader<'a>(state: &'a LeaderAndIsr, live: &Live) -> Option<&'a String> {
    state
        .leader
        .as_ref()
        .filter(|l| live.contains_key(*l) && !leader_live(state, live))
}

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
    /// Nodes in controlled shutdown gave up the leadership (`chosen` took
    /// it) or left the ISR (`drain.rs`).
    Drained {
        /// The nodes shutting down that this decision concerns.
        nodes: Vec<String>,
        /// The new leader and its log end offset, when leadership moved.
        chosen: Option<(String, Option<u64>)>,
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
            Reason::Drained { nodes, chosen } => {
                write!(f, "controlled shutdown of {}: ", nodes.join(", "))?;
                if let Some(chosen) = chosen {
                    write!(f, "leader ")?;
                    with_offset(f, chosen)?;
                    write!(f, ", ")?;
                }
                write!(f, "isr [{}], epoch {}", s.isr.join(", "), s.leader_epoch)
            }
        }
    }
}

/// The nodes whose log end offset the election of `state` needs: none
/// when its leader is live; the live ISR members otherwise; with
/// `unclean` and no live ISR member, the live replicas.
pub(crate) fn wants_offsets(state: &LeaderAndIsr, live: &Live, unclean: bool) -> Vec<String> {
    if leader_live(state, live) {
        return Vec::new();
    }
    let isr = candidates(state, live);
    if !isr.is_empty() {
        return isr;
    }
    if unclean {
        return state
            .replicas
            .iter()
            .filter(|r| live.contains_key(*r))
            .cloned()
            .collect();
    }
    Vec::new()
}

/// Live ISR members, in `replicas` order (ISR members missing from
/// `replicas`, which should not exist, come last).
fn live_isr(state: &LeaderAndIsr, live: &Live) -> Vec<String> {
    let mut out: Vec<String> = state
        .replicas
        .iter()
        .filter(|r| live.contains_key(*r) && state.isr.contains(r))
        .cloned()
        .collect();
    for m in &state.isr {
        if live.contains_key(m) && !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// The election candidates of `state` (its leader is not live): the live
/// ISR members but a bounced leader, or that leader alone when no other
/// member is live.
fn candidates(state: &LeaderAndIsr, live: &Live) -> Vec<String> {
    let isr = live_isr(state, live);
    match stale_leader(state, live) {
        Some(stale) if isr.iter().any(|m| m != stale) => {
            isr.into_iter().filter(|m| m != stale).collect()
        }
        _ => isr,
    }
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
    live: &Live,
    offsets: &Offsets,
    unclean: bool,
    controller_epoch: u64,
) -> Option<Decision> {
    let p = state.partition;
    let mut next = state.clone();
    next.controller_epoch = controller_epoch;
    if leader_live(state, live) {
        let removed: Vec<String> = state
            .isr
            .iter()
            .filter(|m| !live.contains_key(*m))
            .cloned()
            .collect();
        if removed.is_empty() {
            return None;
        }
        next.isr.retain(|m| live.contains_key(m));
        return Some(Decision {
            state: next,
            reason: Reason::IsrShrink { removed },
        });
    }
    let candidates = candidates(state, live);
    if !candidates.is_empty() {
        let (best, mut ranked) = pick(p, &candidates, offsets);
        let chosen = ranked.remove(best);
        let stale = stale_leader(state, live).filter(|s| **s != chosen.0);
        next.leader = Some(chosen.0.clone());
        next.leader_epoch = next_leader_epoch(state)?;
        next.leader_node_epoch = live.get(&chosen.0).copied().unwrap_or(0);
        next.isr
            .retain(|m| live.contains_key(m) && Some(m) != stale);
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
        .filter(|r| live.contains_key(*r))
        .cloned()
        .collect();
    if unclean && !replicas.is_empty() {
        let (best, mut ranked) = pick(p, &replicas, offsets);
        let chosen = ranked.remove(best);
        next.leader = Some(chosen.0.clone());
        next.leader_epoch = next_leader_epoch(state)?;
        next.leader_node_epoch = live.get(&chosen.0).copied().unwrap_or(0);
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
    next.leader_epoch = next_leader_epoch(state)?;
    next.leader_node_epoch = 0;
    Some(Decision {
        state: next,
        reason: Reason::Offline,
    })
}

/// The leader epoch after `state`'s, or `None` (logged as an error) when
/// it is at `u32::MAX`: a crafted or corrupt state in ZooKeeper gets no new
/// decision, never a wrapped epoch (which followers would take as older) or
/// a panic.
pub(crate) fn next_leader_epoch(state: &LeaderAndIsr) -> Option<u32> {
    let next = state.leader_epoch.checked_add(1);
    if next.is_none() {
        tracing::error!(
            "partition {}: leader epoch {} is at its maximum; no new leader can be elected \
             (the state in ZooKeeper is crafted or corrupt)",
            state.partition,
            state.leader_epoch
        );
    }
    next
}

/// The controller epoch after `epoch` (read from `path`), or an error when
/// it is at `u64::MAX` (crafted or corrupt): never a wrap or a panic.
pub(crate) fn next_controller_epoch(path: &str, epoch: u64) -> crate::Result<u64> {
    epoch.checked_add(1).ok_or_else(|| {
        crate::Error::Unavailable(format!(
            "ZooKeeper znode {path} holds controller epoch {epoch}, its maximum: no controller \
             can be elected (crafted or corrupt)"
        ))
    })
}

/// Moves leadership of `state` to its preferred replica when that replica
/// is live, in the ISR and not the leader.
pub(crate) fn preferred(
    state: &LeaderAndIsr,
    live: &Live,
    controller_epoch: u64,
) -> Option<Decision> {
    let first = state.replicas.first()?;
    let node_epoch = *live.get(first)?;
    if state.leader.as_ref() == Some(first) || !state.isr.contains(first) {
        return None;
    }
    let mut next = state.clone();
    next.leader = Some(first.clone());
    next.leader_epoch = next_leader_epoch(state)?;
    next.leader_node_epoch = node_epoch;
    next.controller_epoch = controller_epoch;
    Some(Decision {
        state: next,
        reason: Reason::Preferred {
            from: state.leader.clone(),
        },
    })
}

#[cfg(test)]
pub(super) mod tests {
    //! Fixtures shared with `drain.rs`'s tests: partition 3, node `nK`
    //! registered at node epoch 100 + K, state znode version 7.
    use super::*;

    pub(in crate::cluster::zk) fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Live nodes, each registered at node epoch 100 + its index in `v`.
    pub(in crate::cluster::zk) fn live(v: &[&str]) -> Live {
        v.iter().map(|x| (x.to_string(), node_epoch(x))).collect()
    }

    /// The node epoch `live` gives `id`: 100 + the digits of its name.
    fn node_epoch(id: &str) -> i64 {
        100 + id.trim_start_matches('n').parse::<i64>().unwrap_or(0)
    }

    pub(in crate::cluster::zk) fn state(
        leader: Option<&str>,
        epoch: u32,
        replicas: &[&str],
        isr: &[&str],
    ) -> LeaderAndIsr {
        LeaderAndIsr {
            partition: 3,
            leader: leader.map(str::to_string),
            leader_epoch: epoch,
            replicas: s(replicas),
            isr: s(isr),
            controller_epoch: 1,
            zk_version: 7,
            leader_node_epoch: leader.map_or(0, node_epoch),
        }
    }

    pub(in crate::cluster::zk) fn offsets(v: &[(&str, u64)]) -> Offsets {
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
    fn epochs_at_their_maximum_never_wrap() {
        let l = live(&["n1", "n2", "n3"]);
        // The leader n9 is gone: a failover would elect at leader_epoch + 1.
        let st = state(
            Some("n9"),
            u32::MAX,
            &["n9", "n2", "n3"],
            &["n9", "n2", "n3"],
        );
        assert_eq!(failover(&st, &l, &Offsets::new(), false, 1), None);
        let st = state(
            Some("n9"),
            u32::MAX - 1,
            &["n9", "n2", "n3"],
            &["n9", "n2", "n3"],
        );
        let d = failover(&st, &l, &Offsets::new(), false, 1).unwrap();
        assert_eq!(d.state.leader_epoch, u32::MAX);
        // The preferred replica n1 is back in the ISR: a move would bump it.
        let st = state(
            Some("n2"),
            u32::MAX,
            &["n1", "n2", "n3"],
            &["n1", "n2", "n3"],
        );
        assert_eq!(preferred(&st, &l, 1), None);
        assert_eq!(
            next_controller_epoch("/c/controller_epoch", u64::MAX)
                .unwrap_err()
                .to_string(),
            "unavailable: ZooKeeper znode /c/controller_epoch holds controller epoch \
             18446744073709551615, its maximum: no controller can be elected (crafted or corrupt)"
        );
        assert_eq!(
            next_controller_epoch("/c/controller_epoch", 41).unwrap(),
            42
        );
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

    /// KIP-380: a leader registered again under a new node epoch (a
    /// restart, or a zombie whose session expired) is a node that left
    /// and joined. It never keeps the leadership of its old registration:
    /// the other live ISR members elect a new leader at a new epoch, and
    /// it leaves the ISR.
    #[test]
    fn bounced_leader_is_replaced_at_a_new_epoch() {
        let st = state(Some("n1"), 3, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        assert_eq!(st.leader_node_epoch, 101);
        let same = live(&["n1", "n2", "n3"]);
        assert!(leader_live(&st, &same));
        assert_eq!(failover(&st, &same, &Offsets::new(), false, 9), None);

        let mut l = live(&["n1", "n2", "n3"]);
        l.insert("n1".into(), 201);
        assert!(!leader_live(&st, &l));
        assert_eq!(wants_offsets(&st, &l, false), s(&["n2", "n3"]));
        // Even with the highest offset, the bounced node is not a candidate.
        let o = offsets(&[("n1", 50), ("n2", 40), ("n3", 42)]);
        let d = failover(&st, &l, &o, false, 9).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n3"));
        assert_eq!(d.state.leader_epoch, 4);
        assert_eq!(d.state.leader_node_epoch, 103);
        assert_eq!(d.state.isr, s(&["n2", "n3"]));
        assert_eq!(
            d.to_string(),
            "partition 3: leader n3 (log end 42) chosen over n2 (log end 40), epoch 4"
        );
        // The new state is stable: no second election.
        assert_eq!(failover(&d.state, &l, &o, false, 9), None);
    }

    /// A bounced leader that is the only live ISR member is elected again,
    /// at a new epoch stamped with its new node epoch, never at the old.
    #[test]
    fn bounced_sole_isr_member_is_elected_again_at_a_new_epoch() {
        let st = state(Some("n1"), 5, &["n1", "n2", "n3"], &["n1"]);
        let mut l = live(&["n1", "n2", "n3"]);
        l.insert("n1".into(), 301);
        assert_eq!(wants_offsets(&st, &l, false), s(&["n1"]));
        let d = failover(&st, &l, &offsets(&[("n1", 7)]), false, 2).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n1"));
        assert_eq!(d.state.leader_epoch, 6);
        assert_eq!(d.state.leader_node_epoch, 301);
        assert_eq!(d.state.isr, s(&["n1"]));
        assert!(leader_live(&d.state, &l));
    }

    /// Every leadership given is stamped with its leader's node epoch;
    /// offline states carry none; an unstamped (pre node epoch) state
    /// trusts any registration of its leader.
    #[test]
    fn leaderships_carry_the_node_epoch_they_were_given_to() {
        let st = state(Some("n1"), 1, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let d = failover(&st, &live(&["n2", "n3"]), &Offsets::new(), false, 1).unwrap();
        assert_eq!(d.state.leader_node_epoch, 102);
        let off = failover(
            &state(Some("n1"), 1, &["n1", "n2"], &["n1"]),
            &live(&["n2"]),
            &Offsets::new(),
            false,
            1,
        )
        .unwrap();
        assert_eq!((off.state.leader, off.state.leader_node_epoch), (None, 0));
        let back = preferred(&d.state, &live(&["n1", "n2", "n3"]), 1);
        assert_eq!(back, None, "n1 left the ISR");
        let mut isr = d.state.clone();
        isr.isr = s(&["n2", "n3", "n1"]);
        let mut l = live(&["n1", "n2", "n3"]);
        l.insert("n1".into(), 401);
        let back = preferred(&isr, &l, 1).unwrap();
        assert_eq!(back.state.leader_node_epoch, 401);

        let mut legacy = st.clone();
        legacy.leader_node_epoch = 0;
        let mut l = live(&["n1", "n2"]);
        l.insert("n1".into(), 999);
        assert!(leader_live(&legacy, &l));
    }

    #[test]
    fn bounced_nodes_are_those_with_a_new_node_epoch() {
        let before = live(&["n1", "n2", "n3"]);
        let mut after = live(&["n1", "n2", "n4"]);
        after.insert("n2".into(), 502);
        assert_eq!(bounced(&before, &after), ["n2".to_string()].into());
        assert_eq!(bounced(&before, &before), BTreeSet::new());
    }
}
