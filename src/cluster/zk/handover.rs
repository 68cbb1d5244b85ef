//! Leadership handover, the controller's side (the replica's side, and
//! why: `replication/drain.rs`).
//!
//! Before the controller writes a state that moves the leadership of a
//! partition away from a live leader without that leader stopping (a
//! reassignment's lead step, a cancel that moves it back, a
//! preferred-leader move), it asks the leader to hand the partition over:
//! one `Handover` call per leader node carrying every partition moved off
//! it, all nodes at once. Each call names the leader epoch being replaced
//! and the node epoch of the registration that holds it; the leader stops
//! admitting writes on those partitions and answers once what it admitted
//! is answered and committed. The controller writes the new states after
//! the answers, or after [`SETTLE`] plus a margin without one (the leader
//! is slow or gone: the move goes ahead, logged, and writes still in
//! flight there may fail as before).
//!
//! Why a call rather than a znode marker (as `/draining` is): the wait is
//! the controller's, for one step it is about to write, and it must not
//! outlive the controller; a call ends with its caller, and a handed-over
//! partition that never gets its new state takes writes again on its own
//! (the leader's mark lapses). A marker would need a watch on every node
//! and a second znode for the answer.
//!
//! Invariants:
//! - only leaderships that move away from a live node are handed over
//!   (an election after a failure has no leader to ask); the state written
//!   afterwards is decided before the call and written with
//!   compare-and-set as before, so a handover never changes what is
//!   written, only when;
//! - the controller waits at most [`SETTLE`] plus [`MARGIN`] per round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::decide::Live;
use crate::cluster::{LeaderAndIsr, NodeAddr, NodeRpc};

/// Longest time a leader may take to settle what it hands over.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// Time allowed on top of [`SETTLE`] for the call itself.
pub(crate) const MARGIN: Duration = Duration::from_millis(500);

/// A leadership about to move away from a live node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Move {
    /// The partition.
    pub partition: u32,
    /// The node that leads it now.
    pub leader: String,
    /// The leader epoch it leads at (the one the new state replaces).
    pub leader_epoch: u32,
}

/// The moves among `next` (states about to be written) relative to
/// `current`: a partition whose leader changes from a node that is live
/// under the node epoch the leadership was given to.
pub(crate) fn moves<'a>(
    current: &BTreeMap<u32, LeaderAndIsr>,
    next: impl IntoIterator<Item = &'a LeaderAndIsr>,
    live: &Live,
) -> Vec<Move> {
    next.into_iter()
        .filter_map(|s| {
            let now = current.get(&s.partition)?;
            let leader = now.leader.as_ref()?;
            let moved = s.leader.as_ref() != Some(leader);
            let alive = live.get(leader) == Some(&now.leader_node_epoch);
            (moved && alive).then(|| Move {
                partition: s.partition,
                leader: leader.clone(),
                leader_epoch: now.leader_epoch,
            })
        })
        .collect()
}

/// Asks the leaders of `moves` to hand them over (one call per node, all
/// at once) and waits for the answers, at most [`SETTLE`] + [`MARGIN`].
/// Never fails: what did not settle is logged and moves anyway.
pub(crate) async fn hand_over(
    rpc: &Arc<dyn NodeRpc>,
    controller_epoch: u64,
    addrs: &BTreeMap<String, NodeAddr>,
    live: &Live,
    moves: &[Move],
) {
    if moves.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut by_node: BTreeMap<&str, Vec<(u32, u32)>> = BTreeMap::new();
    for m in moves {
        by_node
            .entry(m.leader.as_str())
            .or_default()
            .push((m.partition, m.leader_epoch));
    }
    let mut calls = JoinSet::new();
    for (node, partitions) in by_node {
        let (Some(addr), Some(&node_epoch)) = (addrs.get(node), live.get(node)) else {
            continue;
        };
        let call = rpc.handover(
            addr.clone(),
            controller_epoch,
            node_epoch,
            partitions.clone(),
            SETTLE,
        );
        let node = node.to_string();
        calls.spawn(async move {
            let answer = tokio::time::timeout(SETTLE + MARGIN, call).await;
            (node, partitions, answer)
        });
    }
    while let Some(done) = calls.join_next().await {
        let Ok((node, partitions, answer)) = done else {
            continue;
        };
        let ids: Vec<u32> = partitions.iter().map(|(p, _)| *p).collect();
        match answer {
            Ok(Ok(a)) if a.behind.is_empty() => tracing::info!(
                "handover: {node} settled partitions {:?} in {} ms",
                a.settled,
                started.elapsed().as_millis()
            ),
            Ok(Ok(a)) => tracing::warn!(
                "handover: {node} did not settle partitions {:?} within {} ms; moving them \
                 anyway (writes in flight there may fail)",
                a.behind,
                SETTLE.as_millis()
            ),
            Ok(Err(e)) => tracing::warn!(
                "handover of partitions {ids:?} by {node} failed: {e}; moving them anyway"
            ),
            Err(_) => tracing::warn!(
                "handover: {node} did not answer for partitions {ids:?} within {} ms; moving \
                 them anyway",
                (SETTLE + MARGIN).as_millis()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{live, state};
    use super::*;

    #[test]
    fn only_leaderships_leaving_a_live_registration_are_handed_over() {
        let l = live(&["n1", "n2", "n3"]);
        let mut current = BTreeMap::new();
        for (p, leader) in [(0, "n1"), (1, "n2"), (2, "n3")] {
            let mut s = state(Some(leader), 4, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
            s.partition = p;
            s.leader_node_epoch = l[leader];
            current.insert(p, s);
        }
        // p0 moves to n2; p1 stays with n2 at a new epoch; p2's leader n3
        // re-registered since it was given the leadership.
        let mut next: Vec<LeaderAndIsr> = current.values().cloned().collect();
        next[0].leader = Some("n2".into());
        next[1].leader_epoch = 5;
        next[2].leader = Some("n1".into());
        current.get_mut(&2).unwrap().leader_node_epoch = l["n3"] - 50;
        assert_eq!(
            moves(&current, &next, &l),
            vec![Move {
                partition: 0,
                leader: "n1".into(),
                leader_epoch: 4,
            }]
        );
    }
}
