//! Controlled shutdown and leadership handover, replica side.
//!
//! ## Controlled shutdown
//!
//! Replica side (the controller's side is
//! `cluster/zk/drain.rs`; the sequence is driven by
//! `server::cluster::controlled_shutdown`).
//!
//! 1. [`ReplicaManager::begin_drain`]: from here on every write is refused
//!    with `NOT_LEADER` before anything is written (the client refreshes
//!    its map and retries), and this node follows nothing (so no leader
//!    adds it back to an ISR the controller is about to shrink).
//! 2. [`ReplicaManager::settle`]: waits until every write admitted before
//!    is answered and the high watermark of every partition led here
//!    covers its log end: every record this node wrote is on the other ISR
//!    members, so whichever of them the controller elects has it, and no
//!    `acks: all` write fails or is lost when leadership moves.
//! 3. The controller moves the leaderships; [`ReplicaManager::leaderships`]
//!    says what is still led here.
//!
//! Invariant: a write is either admitted before the draining flag is set
//! (then `settle` waits for its answer) or refused with nothing written:
//! the writer increments `admitted` before it reads the flag, `settle`
//! reads `admitted` after the flag is set (both sequentially consistent).
//!
//! ## Handover of single partitions
//!
//! The replica side of a leadership handover (the controller's side is
//! `cluster/zk/handover.rs`): the controlled shutdown above for one
//! partition instead of the whole node.
//!
//! Before the controller moves the leadership of a partition away from a
//! live leader (a reassignment's lead step, a cancel that moves it back, a
//! preferred-leader move), it calls `Handover` on the leader with the
//! leader epoch it is about to replace, and writes the new state only once
//! the answer came (or the call timed out: it then moves anyway, logged).
//! [`ReplicaManager::hand_over`]:
//! 1. marks each partition it leads at that epoch ([`Gate`]): from here on
//!    a write on it is refused with `NOT_LEADER` before anything is
//!    written (the client refreshes its map and retries, at the new leader
//!    once the notice is out);
//! 2. waits, bounded, until every write admitted on it before the mark is
//!    answered and its high watermark covers its log end: every record
//!    this leader wrote is on every ISR member, so the new leader (an ISR
//!    member) has it, and no `acks: all` write fails or is lost when the
//!    leadership moves;
//! 3. answers which partitions settled.
//!
//! The mark refuses writes while the partition is led at the marked epoch
//! and for at most [`HOLD`]: the new state normally arrives within
//! milliseconds and ends that leadership; if the controller never writes it
//! (deposed, or its compare-and-set lost), the partition takes writes
//! again after [`HOLD`] instead of staying closed. A later epoch (the
//! leader named again, `relead.rs`) is not marked.
//!
//! Invariant: a write on a marked partition is either admitted before the
//! mark (then the wait covers its answer) or refused with nothing written:
//! the writer increments the partition's `admitted` before it reads the
//! mark, the handover reads `admitted` after it set the mark (the mark's
//! mutex orders the two).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::ReplicaManager;
use super::partition::{Partition, RoleState};
use crate::cluster::Settled;
use crate::error::{Error, Result};

/// A write admitted past the draining check and its partition's gate;
/// counted (node and partition) until dropped.
pub(super) struct Admitted<'a> {
    /// The node's count.
    _node: Counted<'a>,
    /// The partition's count.
    _partition: Counted<'a>,
}

/// One unit of a count of writes in flight, given back when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    /// Counts one more in `n`.
    fn new(n: &'a AtomicUsize) -> Counted<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReplicaManager {
    /// Admits a write on `part`, or refuses it (`NOT_LEADER`, nothing
    /// written) once a controlled shutdown began or while its leadership
    /// is handed over.
    pub(super) fn admit<'a>(&'a self, part: &'a Partition) -> Result<Admitted<'a>> {
        let node = Counted::new(&self.admitted);
        if self.draining.load(Ordering::SeqCst) {
            return Err(self.not_leader(part));
        }
        let Some(partition) = part.gate.enter(part.leading_epoch()) else {
            return Err(self.not_leader(part));
        };
        Ok(Admitted {
            _node: node,
            _partition: partition,
        })
    }

    /// Whether a controlled shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts a controlled shutdown: refuses every later write and stops
    /// following.
    pub fn begin_drain(self: &Arc<Self>) {
        self.draining.store(true, Ordering::SeqCst);
        for part in &self.hosted() {
            if matches!(part.state.lock().role, RoleState::Follower { .. }) {
                let me = self.clone();
                let part = part.clone();
                tokio::spawn(async move { me.reconcile(&part).await });
            }
        }
    }

    /// Waits, at most `timeout`, until every admitted write was answered
    /// and the high watermark of every partition led here reached its log
    /// end. Returns the partitions led whose high watermark did not.
    pub async fn settle(&self, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.admitted.load(Ordering::SeqCst) == 0;
            let behind: Vec<u32> = self
                .hosted()
                .iter()
                .filter(|p| {
                    p.leading_epoch().is_some() && p.progress.borrow().hw < p.log.written_end()
                })
                .map(|p| p.id)
                .collect();
            if (idle && behind.is_empty()) || Instant::now() >= deadline {
                return behind;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The partitions this node leads now, each with its ISR.
    pub fn leaderships(&self) -> Vec<(u32, Vec<String>)> {
        self.hosted()
            .iter()
            .filter_map(|p| {
                let s = p.state.lock();
                match &s.role {
                    RoleState::Leader(l) if !s.fenced => Some((p.id, l.isr.clone())),
                    _ => None,
                }
            })
            .collect()
    }
}

/// How long a handover mark refuses writes when no new state ends the
/// leadership it marked.
pub const HOLD: Duration = Duration::from_secs(5);

/// The write gate of one partition: writes in flight and the handover
/// mark.
#[derive(Debug, Default)]
pub struct Gate {
    /// Writes admitted on the partition and not answered yet.
    admitted: AtomicUsize,
    /// The leader epoch being handed over, and until when writes at it are
    /// refused.
    mark: Mutex<Option<(u32, Instant)>>,
}

impl Gate {
    /// Counts a write at leader epoch `epoch`, or `None` (count undone)
    /// when that epoch is being handed over.
    fn enter(&self, epoch: Option<u32>) -> Option<Counted<'_>> {
        let ticket = Counted::new(&self.admitted);
        match *self.mark.lock() {
            Some((e, until)) if Some(e) == epoch && Instant::now() < until => None,
            _ => Some(ticket),
        }
    }

    /// Refuses every later write at `epoch` (for at most [`HOLD`]).
    fn close(&self, epoch: u32) {
        *self.mark.lock() = Some((epoch, Instant::now() + HOLD));
    }

    /// Writes admitted and not answered yet.
    fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

/// Whether `part` has nothing in flight and its high watermark covers its
/// log end.
fn settled(part: &Partition) -> bool {
    part.gate.in_flight() == 0 && part.progress.borrow().hw >= part.log.written_end()
}

impl ReplicaManager {
    /// The controller's `Handover` call for this node's registration at
    /// `node_epoch`: refuses a deposed controller and another
    /// registration's request (as notices), then [`Self::hand_over`].
    pub async fn handover(
        &self,
        controller_epoch: u64,
        node_epoch: i64,
        partitions: &[(u32, u32)],
        timeout: Duration,
    ) -> Result<Settled> {
        let mine = *self.node_epoch.lock();
        if node_epoch != mine {
            return Err(Error::StaleController(format!(
                "handover for node epoch {node_epoch}, but this node is registered at node \
                 epoch {mine}"
            )));
        }
        let seen = self
            .controller_epoch
            .fetch_max(controller_epoch, Ordering::SeqCst);
        if controller_epoch < seen {
            return Err(Error::StaleController(format!(
                "handover from controller epoch {controller_epoch}, but epoch {seen} was seen"
            )));
        }
        Ok(self.hand_over(partitions, timeout).await)
    }

    /// Hands over the leadership of `partitions` (id, leader epoch): each
    /// one led here, unfenced, at that epoch stops admitting writes; waits
    /// at most `timeout` until they settled (see the module doc).
    /// Partitions not led here at that epoch are in neither list.
    pub async fn hand_over(&self, partitions: &[(u32, u32)], timeout: Duration) -> Settled {
        let deadline = Instant::now() + timeout;
        let mut marked: Vec<Arc<Partition>> = Vec::new();
        for &(p, epoch) in partitions {
            let Ok(part) = self.partition(p) else {
                continue;
            };
            if part.leading_epoch() == Some(epoch) {
                part.gate.close(epoch);
                marked.push(part);
            } else {
                tracing::info!(
                    partition = p,
                    "handover of epoch {epoch} asked, but this node does not lead at it"
                );
            }
        }
        let started = Instant::now();
        loop {
            let behind: Vec<u32> = marked
                .iter()
                .filter(|p| !settled(p))
                .map(|p| p.id)
                .collect();
            if behind.is_empty() || Instant::now() >= deadline {
                let settled: Vec<u32> = marked
                    .iter()
                    .map(|p| p.id)
                    .filter(|p| !behind.contains(p))
                    .collect();
                tracing::info!(
                    "handover: partitions {settled:?} settled in {} ms{}",
                    started.elapsed().as_millis(),
                    if behind.is_empty() {
                        String::new()
                    } else {
                        format!(", {behind:?} not (timeout)")
                    }
                );
                return Settled { settled, behind };
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marked epoch refuses writes (its count given back at once);
    /// another epoch, or a write admitted before the mark, is counted
    /// until answered.
    #[test]
    fn the_gate_refuses_the_marked_epoch_and_counts_what_it_admitted() {
        let g = Gate::default();
        let before = g.enter(Some(4)).expect("no mark yet");
        assert_eq!(g.in_flight(), 1);
        g.close(4);
        assert!(g.enter(Some(4)).is_none());
        assert!(g.enter(None).is_some_and(|t| {
            drop(t);
            true
        }));
        assert_eq!(g.in_flight(), 1, "the refused write is not counted");
        let later = g.enter(Some(5)).expect("a later epoch is not marked");
        assert_eq!(g.in_flight(), 2);
        drop((before, later));
        assert_eq!(g.in_flight(), 0);
        // The mark lapses after HOLD.
        *g.mark.lock() = Some((4, Instant::now()));
        assert!(g.enter(Some(4)).is_some());
    }
}
