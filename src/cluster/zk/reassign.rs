//! Replica reassignment (KIP-455 style): the controller moves the replicas
//! of the partitions listed in `<root>/admin/reassign` to their target
//! lists, one state at a time, and every node learns the throttle from the
//! same znode.
//!
//! `<root>/admin/reassign` (written by the admin RPC; unknown fields are
//! kept when the controller rewrites it):
//!
//! ```text
//! {"version":1,"throttle_bytes_per_sec":10485760,"cancel":false,
//!  "partitions":{"3":["node-1","node-2","node-4"]}}
//! ```
//!
//! Steps of one partition with original replicas `O` and target `T`
//! (`|T| = |O|`, distinct), each a new state at `leader_epoch + 1`,
//! written with compare-and-set together with `replicas` in one multi that
//! starts with the controller-epoch check ([`next`] decides, pure):
//! 1. `replicas := O ++ (T − O)` (the added replicas appended, in `T`
//!    order), ISR and leader unchanged ([`Phase::Expand`]);
//! 2. wait until every added replica is in the ISR (the leader adds it
//!    once it caught up, as any follower);
//! 3. if the leader is not in `T`: leadership to the first member of `T`
//!    that is live and in the ISR ([`Phase::Lead`]);
//! 4. `replicas := T`, `ISR := ISR ∩ T` ([`Phase::Shrink`]);
//! 5. the partition is removed from the znode (compare-and-set on its
//!    version); the znode is deleted once no partition is left.
//!
//! Where a partition stands is derived from ZooKeeper alone, so a new
//! controller resumes any reassignment: `replicas = O ++ A` with `|O| =
//! |T|` and `A = T − O` (as sets, `A` non-empty) is "in progress" (`O` is
//! its first `|T|` entries); `replicas = T` (same order) is finished;
//! anything else has not started.
//!
//! Cancel (`"cancel": true`): a partition in progress goes back to `O`
//! (leadership first moves to a live ISR member of `O` if an added replica
//! leads, in the same state), ISR ∩ O ([`Phase::Revert`]); a partition
//! not started, or finished, is left as it is. The znode is then deleted.
//!
//! Throttle: every node watches the znode ([`watch_throttle`]) and hands
//! `throttle_bytes_per_sec` (0, or no znode: unthrottled) to its replicas,
//! which limit what a leader serves to replicas being added (those past
//! the first `replication_factor` entries of `replicas`, outside the ISR).
//!
//! Notices: each state written here is a changed state of the
//! reconciliation, and the controller sends changed states to every live
//! node (`controller.rs`), so the nodes of old ∪ new replicas all learn
//! every step (a node added opens its engine, a node removed closes it and
//! deletes its directory, `replication/hosting.rs`). A narrower notice
//! scheme must keep sending each step to old ∪ new.
//!
//! Invariants:
//! - every state written here has a higher leader epoch than the one it
//!   replaces, and `replicas` changes only together with such a state;
//! - a replica is removed (step 4) only after every added replica joined
//!   the ISR, and never while it leads;
//! - the ISR never gains a member here (only leaders expand it) and keeps
//!   the leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use super::Shared;
use super::decide::Live;
use crate::cluster::LeaderAndIsr;

/// Data of `<root>/admin/reassign`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReassignZnode {
    /// Format version (1).
    #[serde(default)]
    pub version: u32,
    /// Bytes per second a leader node serves to replicas being added;
    /// 0 = unthrottled.
    #[serde(default)]
    pub throttle_bytes_per_sec: u64,
    /// Revert the partitions not finished, then delete the znode.
    #[serde(default)]
    pub cancel: bool,
    /// Partition id (decimal) -> target replicas (first = preferred).
    #[serde(default)]
    pub partitions: BTreeMap<String, Vec<String>>,
    /// Fields this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Which step a written state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Step 1: the added replicas join `replicas`.
    Expand,
    /// Step 3: leadership moves into the target.
    Lead,
    /// Step 4: `replicas := target`.
    Shrink,
    /// Same replicas, new order (the target is a permutation).
    Reorder,
    /// Cancel: back to the original replicas.
    Revert,
}

/// What a partition under reassignment needs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to write yet (why).
    Wait(String),
    /// Write this state (its `replicas` included), compare-and-set on its
    /// `zk_version`.
    Write(Phase, LeaderAndIsr),
    /// Finished (or cancelled, or nothing to do): leaves the znode.
    Done,
    /// The target cannot be applied (why): leaves the znode, logged.
    Invalid(String),
}

/// `replicas = O ++ A` of a reassignment to `target` in progress: `O`.
pub(crate) fn original<'a>(replicas: &'a [String], target: &[String]) -> Option<&'a [String]> {
    let n = target.len();
    if replicas.len() <= n {
        return None;
    }
    let (o, a) = replicas.split_at(n);
    let want: Vec<&String> = target.iter().filter(|t| !o.contains(t)).collect();
    (a.len() == want.len() && want.iter().all(|w| a.contains(w))).then_some(o)
}

/// The next step of the partition in `state` towards `target` (or back,
/// with `cancel`). `live`: live nodes and node epochs; `controller_epoch`
/// is stamped on what is written.
pub(crate) fn next(
    state: &LeaderAndIsr,
    target: &[String],
    cancel: bool,
    live: &Live,
    controller_epoch: u64,
) -> Step {
    let r = &state.replicas;
    let mut seen = target.to_vec();
    seen.sort();
    seen.dedup();
    if target.is_empty() || seen.len() != target.len() {
        return Step::Invalid(format!(
            "target [{}] is empty or names a node twice",
            target.join(", ")
        ));
    }
    let Some(next_epoch) = state.leader_epoch.checked_add(1) else {
        return Step::Invalid(format!(
            "leader epoch {} of partition {} is at its maximum (crafted or corrupt state)",
            state.leader_epoch, state.partition
        ));
    };
    let bump = |replicas: Vec<String>, isr: Vec<String>| {
        let mut s = state.clone();
        s.replicas = replicas;
        s.isr = isr;
        s.leader_epoch = next_epoch;
        s.controller_epoch = controller_epoch;
        s
    };
    if r == target {
        return Step::Done;
    }
    let Some(o) = original(r, target) else {
        // Not started (or a permutation of the target).
        if cancel {
            return Step::Done;
        }
        if r.len() != target.len() {
            return Step::Invalid(format!(
                "target [{}] has {} replicas, the partition has {}",
                target.join(", "),
                target.len(),
                r.len()
            ));
        }
        if state.leader.is_none() {
            return Step::Wait("offline".into());
        }
        let mut grown = r.clone();
        grown.extend(target.iter().filter(|t| !r.contains(t)).cloned());
        let phase = if grown.len() == r.len() {
            grown = target.to_vec();
            Phase::Reorder
        } else {
            Phase::Expand
        };
        return Step::Write(phase, bump(grown, state.isr.clone()));
    };
    let within = |set: &[String]| -> Vec<String> {
        state
            .isr
            .iter()
            .filter(|m| set.contains(m))
            .cloned()
            .collect()
    };
    // A live ISR member of `set`, in `set`'s order, to lead.
    let successor = |set: &[String]| -> Option<(String, i64)> {
        set.iter()
            .filter(|n| state.isr.contains(n))
            .find_map(|n| live.get(n).map(|e| (n.clone(), *e)))
    };
    let (keep, phase): (&[String], Phase) = if cancel {
        (o, Phase::Revert)
    } else {
        let behind: Vec<&String> = r[o.len()..]
            .iter()
            .filter(|a| !state.isr.contains(a))
            .collect();
        if !behind.is_empty() {
            return Step::Wait(format!(
                "waiting for [{}] to catch up",
                behind
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        (target, Phase::Shrink)
    };
    let Some(leader) = &state.leader else {
        return Step::Wait("offline".into());
    };
    if !keep.contains(leader) {
        let Some((next_leader, node_epoch)) = successor(keep) else {
            return Step::Wait(format!("no live in-sync replica of [{}]", keep.join(", ")));
        };
        let mut s = bump(r.clone(), state.isr.clone());
        s.leader = Some(next_leader);
        s.leader_node_epoch = node_epoch;
        if cancel {
            // Revert and move the leadership back in one state.
            s.replicas = keep.to_vec();
            s.isr = within(keep);
            return Step::Write(Phase::Revert, s);
        }
        return Step::Write(Phase::Lead, s);
    }
    Step::Write(phase, bump(keep.to_vec(), within(keep)))
}

/// Watches `<root>/admin/reassign` for this session and hands its
/// throttle to the listener (0 while there is no znode), again on every
/// change. Ends with the session.
pub(crate) async fn watch_throttle(shared: Arc<Shared>, client: zk::Client) {
    let path = format!("{}/admin/reassign", shared.paths.root);
    let mut last = None;
    loop {
        let (throttle, watcher) = match client.check_and_watch_stat(&path).await {
            Ok((None, w)) => (0, w),
            Ok((Some(_), _)) => match client.get_and_watch_data(&path).await {
                Ok((data, _, w)) => {
                    let z: Option<ReassignZnode> = super::znode::decode(&path, &data)
                        .map_err(|e| tracing::warn!("{e}"))
                        .ok();
                    (z.map_or(0, |z| z.throttle_bytes_per_sec), w)
                }
                Err(zk::Error::NoNode) => continue,
                Err(e) if super::session_over(&e) => return,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            Err(e) if super::session_over(&e) => return,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if last != Some(throttle) {
            last = Some(throttle);
            tracing::info!("reassignment throttle: {throttle} bytes/s (0 = unthrottled)");
            shared.listener.reassign_throttle(throttle);
        }
        let event = watcher.changed().await;
        if event.session_state.is_terminated() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{live, s, state};
    use super::*;

    fn st(leader: &str, epoch: u32, replicas: &[&str], isr: &[&str]) -> LeaderAndIsr {
        state(Some(leader), epoch, replicas, isr)
    }

    fn written(step: Step) -> (Phase, LeaderAndIsr) {
        match step {
            Step::Write(p, s) => (p, s),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    /// The full walk of one partition from [n1,n2,n3] to [n1,n2,n4] led by
    /// n3 (leaving): expand, wait, lead, shrink, done; each a new epoch.
    #[test]
    fn a_move_goes_expand_wait_lead_shrink_done() {
        let l = live(&["n1", "n2", "n3", "n4"]);
        let t = s(&["n1", "n2", "n4"]);
        let s0 = st("n3", 5, &["n1", "n2", "n3"], &["n3", "n1", "n2"]);
        let (p, s1) = written(next(&s0, &t, false, &l, 9));
        assert_eq!(p, Phase::Expand);
        assert_eq!(s1.replicas, s(&["n1", "n2", "n3", "n4"]));
        assert_eq!(s1.isr, s(&["n3", "n1", "n2"]));
        assert_eq!((s1.leader_epoch, s1.controller_epoch), (6, 9));
        assert_eq!(s1.leader.as_deref(), Some("n3"));
        assert_eq!(s1.leader_node_epoch, s0.leader_node_epoch);
        assert_eq!(
            original(&s1.replicas, &t),
            Some(&s(&["n1", "n2", "n3"])[..])
        );

        assert_eq!(
            next(&s1, &t, false, &l, 9),
            Step::Wait("waiting for [n4] to catch up".into())
        );
        let mut s2 = s1.clone();
        s2.isr.push("n4".into());
        s2.zk_version += 1;
        let (p, s3) = written(next(&s2, &t, false, &l, 9));
        assert_eq!(p, Phase::Lead);
        assert_eq!(s3.leader.as_deref(), Some("n1"));
        assert_eq!(s3.leader_node_epoch, l["n1"]);
        assert_eq!(s3.leader_epoch, 7);
        assert_eq!(s3.replicas, s1.replicas);
        let (p, s4) = written(next(&s3, &t, false, &l, 9));
        assert_eq!(p, Phase::Shrink);
        assert_eq!(s4.replicas, t);
        assert_eq!(s4.isr, s(&["n1", "n2", "n4"]));
        assert_eq!((s4.leader.as_deref(), s4.leader_epoch), (Some("n1"), 8));
        assert_eq!(next(&s4, &t, false, &l, 9), Step::Done);
    }

    /// The leader stays (it is in the target): no Lead step.
    #[test]
    fn a_leader_in_the_target_keeps_leading() {
        let l = live(&["n1", "n2", "n3", "n4"]);
        let t = s(&["n4", "n1", "n2"]);
        let s1 = st(
            "n1",
            2,
            &["n1", "n2", "n3", "n4"],
            &["n1", "n2", "n3", "n4"],
        );
        let (p, s2) = written(next(&s1, &t, false, &l, 1));
        assert_eq!(p, Phase::Shrink);
        assert_eq!(s2.replicas, t);
        assert_eq!(s2.isr, s(&["n1", "n2", "n4"]));
        assert_eq!((s2.leader.as_deref(), s2.leader_epoch), (Some("n1"), 3));
    }

    #[test]
    fn cancel_reverts_to_the_original_and_moves_leadership_back() {
        let l = live(&["n1", "n2", "n3", "n4"]);
        let t = s(&["n1", "n2", "n4"]);
        // Catching up: back to [n1,n2,n3].
        let a = st("n3", 6, &["n1", "n2", "n3", "n4"], &["n3", "n1"]);
        let (p, b) = written(next(&a, &t, true, &l, 2));
        assert_eq!(p, Phase::Revert);
        assert_eq!(b.replicas, s(&["n1", "n2", "n3"]));
        assert_eq!((b.isr.clone(), b.leader_epoch), (s(&["n3", "n1"]), 7));
        assert_eq!(next(&b, &t, true, &l, 2), Step::Done);
        // The added replica leads (step 3 was done): leadership goes back.
        let c = st("n4", 7, &["n1", "n2", "n3", "n4"], &["n4", "n2", "n3"]);
        let (p, d) = written(next(&c, &t, true, &l, 2));
        assert_eq!(p, Phase::Revert);
        assert_eq!(d.leader.as_deref(), Some("n2"));
        assert_eq!(d.leader_node_epoch, l["n2"]);
        assert_eq!(d.replicas, s(&["n1", "n2", "n3"]));
        assert_eq!((d.isr.clone(), d.leader_epoch), (s(&["n2", "n3"]), 8));
        // Not started, or finished: nothing to do.
        let e = st("n1", 1, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        assert_eq!(next(&e, &t, true, &l, 2), Step::Done);
        let f = st("n1", 9, &["n1", "n2", "n4"], &["n1", "n2", "n4"]);
        assert_eq!(next(&f, &t, true, &l, 2), Step::Done);
    }

    #[test]
    fn a_leader_epoch_at_its_maximum_is_refused_not_wrapped() {
        let s0 = st("n1", u32::MAX, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let l = live(&["n1", "n2", "n3", "n4"]);
        assert_eq!(
            next(&s0, &s(&["n1", "n2", "n4"]), false, &l, 1),
            Step::Invalid(
                "leader epoch 4294967295 of partition 3 is at its maximum (crafted or corrupt \
                 state)"
                    .into()
            )
        );
    }

    #[test]
    fn waits_without_a_live_in_sync_target_leader_and_refuses_bad_targets() {
        let t = s(&["n1", "n2", "n4"]);
        let s1 = st("n3", 6, &["n1", "n2", "n3", "n4"], &["n3", "n4"]);
        // n4 is in sync but not live.
        assert_eq!(
            next(&s1, &t, false, &live(&["n1", "n2", "n3"]), 1),
            Step::Wait("no live in-sync replica of [n1, n2, n4]".into())
        );
        let s0 = st("n1", 1, &["n1", "n2", "n3"], &["n1", "n2", "n3"]);
        let l = live(&["n1", "n2", "n3", "n4"]);
        assert!(matches!(
            next(&s0, &s(&["n1", "n1", "n4"]), false, &l, 1),
            Step::Invalid(_)
        ));
        assert!(matches!(
            next(&s0, &s(&["n1", "n4"]), false, &l, 1),
            Step::Invalid(_)
        ));
        // A permutation only reorders.
        let (p, r) = written(next(&s0, &s(&["n3", "n1", "n2"]), false, &l, 1));
        assert_eq!(p, Phase::Reorder);
        assert_eq!(
            (r.replicas.clone(), r.leader_epoch),
            (s(&["n3", "n1", "n2"]), 2)
        );
        assert_eq!(next(&r, &s(&["n3", "n1", "n2"]), false, &l, 1), Step::Done);
    }

    #[test]
    fn the_znode_keeps_unknown_fields_and_defaults_missing_ones() {
        let z: ReassignZnode =
            serde_json::from_str(r#"{"partitions":{"3":["a","b"]},"started_ms":12}"#).unwrap();
        assert_eq!((z.throttle_bytes_per_sec, z.cancel), (0, false));
        assert_eq!(z.partitions["3"], s(&["a", "b"]));
        let back = serde_json::to_value(&z).unwrap();
        assert_eq!(back["started_ms"], 12);
    }
}
