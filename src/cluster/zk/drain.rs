//! Controlled shutdown (as Kafka's): a node about to stop asks the
//! controller to move the leadership of its partitions away first, so no
//! partition waits a session timeout for a new leader and no `acks: all`
//! write fails.
//!
//! Channel: the node creates the ephemeral znode `/draining/<id>` holding
//! `{"node_epoch": N}` (its current registration); the controller watches
//! the children of `/draining`. A znode rather than a gRPC call to the
//! controller: it survives a controller failover (a new controller reads
//! `/draining` like every other state; a call would have to be retried
//! against whoever holds `/controller`), it vanishes with the node's
//! session, and it costs no new RPC. The node learns the outcome from the
//! controller's notices, which it receives anyway (it leads nothing once
//! they arrive).
//!
//! Decisions (pure; `decide.rs` holds the rest): the draining nodes are
//! decided as if they were gone (a new leader among the other live ISR
//! members, chosen by log end offset; draining followers leave the ISR, so
//! `acks: all` does not wait on them), except where that would leave the
//! partition without a clean leader: then the draining node keeps (or, as
//! the only live ISR member, takes) the leadership, as Kafka keeps such
//! partitions on the broker being shut down until it stops. Preferred
//! leader moves never pick a draining node.
//!
//! Invariants:
//! - a draining node is never elected while another live ISR member
//!   exists, and never given leadership by a preferred-leader move;
//! - a marker counts only for the registration that wrote it (its node
//!   epoch is the node's current one): a restarted node is not draining
//!   because of a marker its previous session left before expiring.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::decide::{self, Decision, Live, Offsets, Reason};
use crate::cluster::LeaderAndIsr;

/// Data of `/draining/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DrainingZnode {
    /// Node epoch of the registration shutting down.
    pub node_epoch: i64,
}

/// The draining nodes that count: those whose marker names their current
/// registration.
pub(crate) fn current(markers: &[(String, i64)], live: &Live) -> BTreeSet<String> {
    markers
        .iter()
        .filter(|(id, e)| live.get(id) == Some(e))
        .map(|(id, _)| id.clone())
        .collect()
}

/// `live` without the draining nodes.
fn without(live: &Live, draining: &BTreeSet<String>) -> Live {
    live.iter()
        .filter(|(id, _)| !draining.contains(*id))
        .map(|(id, e)| (id.clone(), *e))
        .collect()
}

/// The nodes whose log end offsets [`failover`] may need.
pub(crate) fn wants_offsets(
    state: &LeaderAndIsr,
    live: &Live,
    draining: &BTreeSet<String>,
    unclean: bool,
) -> Vec<String> {
    let mut out = decide::wants_offsets(state, live, unclean);
    if !draining.is_empty() {
        for n in decide::wants_offsets(state, &without(live, draining), false) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// [`decide::failover`] with `draining` nodes in controlled shutdown (see
/// the module doc).
pub(crate) fn failover(
    state: &LeaderAndIsr,
    live: &Live,
    draining: &BTreeSet<String>,
    offsets: &Offsets,
    unclean: bool,
    controller_epoch: u64,
) -> Option<Decision> {
    let involved: Vec<String> = state
        .isr
        .iter()
        .chain(&state.leader)
        .filter(|n| draining.contains(*n) && live.contains_key(*n))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if involved.is_empty() {
        return decide::failover(state, live, offsets, unclean, controller_epoch);
    }
    let full = || decide::failover(state, live, offsets, unclean, controller_epoch);
    let d = decide::failover(
        state,
        &without(live, draining),
        offsets,
        false,
        controller_epoch,
    );
    let Some(mut d) = d else {
        return full();
    };
    match d.reason {
        // No other live ISR member: the draining node keeps or takes it.
        Reason::Offline | Reason::Unclean { .. } => full(),
        Reason::Elected { chosen, .. } if decide::leader_live(state, live) => {
            d.reason = Reason::Drained {
                nodes: involved,
                chosen: Some(chosen),
            };
            Some(d)
        }
        Reason::IsrShrink { .. } => {
            d.reason = Reason::Drained {
                nodes: involved,
                chosen: None,
            };
            Some(d)
        }
        // The leader died: an ordinary election that skipped the draining.
        _ => Some(d),
    }
}

/// [`decide::preferred`], never moving leadership to a draining node.
pub(crate) fn preferred(
    state: &LeaderAndIsr,
    live: &Live,
    draining: &BTreeSet<String>,
    controller_epoch: u64,
) -> Option<Decision> {
    if state.replicas.first().is_some_and(|r| draining.contains(r)) {
        return None;
    }
    decide::preferred(state, live, controller_epoch)
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{live, offsets, s, state};
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_draining_leader_hands_over_to_the_best_other_isr_member() {
        let st = state(Some("n1"), 4, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let l = live(&["n1", "n2", "n3"]);
        let d1 = set(&["n1"]);
        assert_eq!(wants_offsets(&st, &l, &d1, false), s(&["n2", "n3"]));
        let o = offsets(&[("n1", 90), ("n2", 90), ("n3", 89)]);
        let d = failover(&st, &l, &d1, &o, false, 6).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n2"));
        assert_eq!(d.state.leader_epoch, 5);
        assert_eq!(d.state.leader_node_epoch, 102);
        assert_eq!(d.state.isr, s(&["n2", "n3"]));
        assert_eq!(d.state.controller_epoch, 6);
        assert_eq!(
            d.to_string(),
            "partition 3: controlled shutdown of n1: leader n2 (log end 90), isr [n2, n3], epoch 5"
        );
        // Stable: the moved state needs nothing more, and the preferred
        // replica (draining) does not get it back.
        assert_eq!(failover(&d.state, &l, &d1, &o, false, 6), None);
        let mut back = d.state.clone();
        back.isr = s(&["n2", "n3", "n1"]);
        assert_eq!(preferred(&back, &l, &d1, 6), None);
        assert!(preferred(&back, &l, &BTreeSet::new(), 6).is_some());
    }

    #[test]
    fn a_draining_follower_leaves_the_isr_at_the_same_epoch() {
        let st = state(Some("n2"), 4, &["n1", "n2", "n3"], &["n2", "n3", "n1"]);
        let l = live(&["n1", "n2", "n3"]);
        let d = failover(&st, &l, &set(&["n1"]), &Offsets::new(), false, 6).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n2"));
        assert_eq!(d.state.leader_epoch, 4);
        assert_eq!(d.state.isr, s(&["n2", "n3"]));
        assert_eq!(
            d.to_string(),
            "partition 3: controlled shutdown of n1: isr [n2, n3], epoch 4"
        );
        // Not in the ISR any more: nothing to do.
        assert_eq!(
            failover(&d.state, &l, &set(&["n1"]), &Offsets::new(), false, 6),
            None
        );
    }

    #[test]
    fn the_only_live_isr_member_keeps_or_takes_the_leadership() {
        let l = live(&["n1", "n2", "n3"]);
        let sole = state(Some("n1"), 4, &["n1", "n2", "n3"], &["n1"]);
        // Even with unclean elections on: no unclean move off a live leader.
        assert_eq!(
            failover(&sole, &l, &set(&["n1"]), &Offsets::new(), true, 6),
            None
        );
        // The leader died and only a draining node is in sync: elected.
        let dead = state(Some("n3"), 4, &["n1", "n2", "n3"], &["n3", "n1"]);
        let d = failover(
            &dead,
            &live(&["n1", "n2"]),
            &set(&["n1"]),
            &Offsets::new(),
            false,
            6,
        )
        .unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n1"));
        assert_eq!(d.state.leader_epoch, 5);
        // Another live member: the draining one is skipped.
        let both = state(Some("n3"), 4, &["n1", "n2", "n3"], &["n3", "n1", "n2"]);
        let o = offsets(&[("n1", 50), ("n2", 40)]);
        let d = failover(&both, &live(&["n1", "n2"]), &set(&["n1"]), &o, false, 6).unwrap();
        assert_eq!(d.state.leader.as_deref(), Some("n2"));
        assert_eq!(d.state.isr, s(&["n2"]));
    }

    #[test]
    fn markers_count_only_for_the_registration_that_wrote_them() {
        let mut l = live(&["n1", "n2"]);
        let markers = vec![("n1".to_string(), 101), ("n2".to_string(), 102)];
        assert_eq!(current(&markers, &l), set(&["n1", "n2"]));
        l.insert("n2".into(), 900);
        assert_eq!(current(&markers, &l), set(&["n1"]));
        assert_eq!(current(&markers, &live(&["n3"])), BTreeSet::new());
    }
}
