//! Controlled shutdown, replica side (the controller's side is
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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::ReplicaManager;
use super::partition::{Partition, RoleState};
use crate::error::Result;

/// A write admitted past the draining check; counted until dropped.
pub(super) struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReplicaManager {
    /// Admits a write on `part`, or refuses it (`NOT_LEADER`, nothing
    /// written) once a controlled shutdown began.
    pub(super) fn admit(&self, part: &Partition) -> Result<Admitted<'_>> {
        self.admitted.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(&self.admitted);
        if self.draining.load(Ordering::SeqCst) {
            return Err(self.not_leader(part));
        }
        Ok(admitted)
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
