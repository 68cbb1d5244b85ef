//! One partition replica: its role (leader, follower, neither), the
//! leader's view of its followers, the high watermark, and the waits built
//! on them (acks, long polls, the new leader's read barrier).
//!
//! Invariants:
//! - the role follows the newest [`LeaderAndIsr`] known (`known`); a state
//!   is newer when its leader epoch is higher, or equal with a higher znode
//!   version. [`Partition::reconcile`] makes the role match it, one
//!   transition at a time (the `transition` lock);
//! - the ISR used for the high watermark is the one ZooKeeper holds: a
//!   change counts only after its compare-and-set succeeded;
//! - the high watermark is `min(log end)` over the ISR and the follower
//!   whose addition to the ISR is in flight (KIP-497: once proposed it may
//!   be in sync in ZooKeeper, and a controller may elect it), moves only
//!   forward,
//!   and only while the ISR has at least `min_insync` members, so committed
//!   data is always on `min_insync` replicas; it is published (`progress`)
//!   only after the engine applied and persisted it, so an acknowledged
//!   `acks: all` write is readable at once;
//! - a leader reads only once its high watermark reached the log end it had
//!   when it took over (`epoch_start`): before that, a committed write of the
//!   previous leader may not be applied here yet;
//! - lock order: `state`, then `progress` (the high-watermark watch, whose
//!   `borrow` holds its read lock). Nothing takes `state` while it holds a
//!   `progress` borrow: with a watermark publisher waiting to write, readers
//!   queue behind it and the two orders deadlock (it froze a node under
//!   `SET`+`WAIT`; test `hosted_state_does_not_hold_the_high_watermark_while_taking_the_state_lock`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::log::ReplicaLog;
use crate::cluster::LeaderAndIsr;
use crate::error::{Error, Result};

/// What the replica is doing, as acks waiters and readers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Committed offset (published after the engine applied it).
    pub hw: u64,
    /// `Some(epoch)` while leading at that epoch.
    pub leading: Option<u32>,
    /// The first epoch of the current leadership: a leader that moves to
    /// a higher epoch without stepping down (a reassignment step keeps its
    /// leader) still answers the writes it admitted at an earlier epoch
    /// since then, as their records stay in its log.
    pub since: u32,
}

/// The leader's record of one follower.
#[derive(Clone, Copy, Debug)]
pub struct FollowerProgress {
    /// The follower's log end offset (the offset of its last fetch).
    pub leo: u64,
    /// Last time its log end reached the leader's.
    pub caught_up_at: Instant,
    /// When it last fetched, and the leader's log end then.
    pub last_fetch: Option<(Instant, u64)>,
}

/// Leader-only state.
#[derive(Debug)]
pub struct LeaderState {
    /// Leader epoch.
    pub epoch: u32,
    /// Node epoch of the registration the leadership was given to.
    pub node_epoch: i64,
    /// In-sync replicas as ZooKeeper holds them, this node included.
    pub isr: Vec<String>,
    /// Version of the state znode `isr` was written at.
    pub zk_version: i32,
    /// Controller epoch of the state.
    pub controller_epoch: u64,
    /// Assigned replicas.
    pub replicas: Vec<String>,
    /// Log end offset when this node took over.
    pub epoch_start: u64,
    /// Every other replica's progress.
    pub followers: HashMap<String, FollowerProgress>,
    /// An ISR change is on its way to ZooKeeper.
    pub isr_change_in_flight: bool,
    /// The follower that change adds, if it is an addition: the high
    /// watermark counts it from the moment it is proposed (KIP-497's
    /// maximal ISR), so the high watermark never advances past a replica
    /// that ZooKeeper may already list as in sync.
    pub joining: Option<String>,
}

/// The role of the replica.
#[derive(Debug)]
pub enum RoleState {
    /// Not a replica, or the partition is offline.
    Idle,
    /// Leading.
    Leader(LeaderState),
    /// Following `leader` at `epoch`, in this node's fetch session with it.
    Follower {
        /// Leader node id.
        leader: String,
        /// Leader epoch.
        epoch: u32,
    },
}

/// Mutable state behind the partition lock.
#[derive(Debug)]
pub struct State {
    /// The newest partition state known.
    pub known: Option<LeaderAndIsr>,
    /// What this replica does.
    pub role: RoleState,
    /// Set by `fence`: leadership suspended until a new state arrives.
    pub fenced: bool,
    /// The highest leader epoch a controller notice for this node's
    /// current registration made it leader at; the replica leads only at
    /// this epoch (cleared by a new registration).
    pub granted: Option<u32>,
    /// No longer hosted here: its engine is closing or closed, and no
    /// role is taken again (see `hosting`).
    pub closed: bool,
}

/// One partition replica on this node.
pub struct Partition {
    /// Partition id.
    pub id: u32,
    /// Its log.
    pub log: Arc<dyn ReplicaLog>,
    /// Role and leader state.
    pub state: Mutex<State>,
    /// Serialises role transitions.
    pub transition: tokio::sync::Mutex<()>,
    /// High watermark and leadership, for waiters.
    pub progress: watch::Sender<Progress>,
    /// The log end offset, for long-polling fetches.
    pub log_end: watch::Sender<u64>,
    /// Serialises follower appends with role transitions.
    pub append: Arc<tokio::sync::Mutex<()>>,
    /// `acks: all` writes waiting for the high watermark.
    acks: Mutex<AckWaiters>,
    /// Writes in flight and the leadership handover mark (`drain.rs`).
    pub gate: super::drain::Gate,
}

/// `acks: all` writes waiting for the high watermark to cover them, by
/// `(until, arrival)`, so a high-watermark move wakes exactly the writes it
/// covers (not every waiter, as a watch channel would).
#[derive(Default)]
pub struct AckWaiters {
    /// Each waiter's wake-up: `true` once covered, `false` when leadership
    /// ended first.
    waiting: BTreeMap<(u64, u64), oneshot::Sender<bool>>,
    /// Arrival counter, so equal offsets keep distinct entries.
    seq: u64,
}

impl AckWaiters {
    /// Wakes every waiter with `until <= hw`.
    fn release(&mut self, hw: u64) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > hw {
                break;
            }
            let _ = entry.remove().send(true);
        }
    }

    /// Fails every waiter (leadership ended).
    fn fail_all(&mut self) {
        for (_, done) in std::mem::take(&mut self.waiting) {
            let _ = done.send(false);
        }
    }
}

/// What an `acks: all` write gets back from [`Partition::wait_ack`].
pub enum Ack {
    /// The high watermark already covers it.
    Covered,
    /// This replica no longer leads at the write's epoch.
    LeadershipLost,
    /// Resolves to `true` once covered, `false` (or closed) when
    /// leadership ended first.
    Wait(oneshot::Receiver<bool>),
}

/// The outcome of recording a follower's fetch.
pub struct FetchNote {
    /// A higher high watermark to commit, if any, and the leader epoch to
    /// commit it at.
    pub commit: Option<(u64, u32)>,
    /// An ISR change to propose (the new ISR), if any.
    pub isr_change: Option<Vec<String>>,
}

impl Partition {
    /// A replica over `log`, idle.
    pub fn new(id: u32, log: Arc<dyn ReplicaLog>) -> Partition {
        let hw = log.committed();
        let end = log.written_end();
        Partition {
            id,
            log,
            state: Mutex::new(State {
                known: None,
                role: RoleState::Idle,
                fenced: false,
                granted: None,
                closed: false,
            }),
            transition: tokio::sync::Mutex::new(()),
            progress: watch::Sender::new(Progress {
                hw,
                leading: None,
                since: 0,
            }),
            log_end: watch::Sender::new(end),
            append: Arc::new(tokio::sync::Mutex::new(())),
            acks: Mutex::new(AckWaiters::default()),
            gate: Default::default(),
        }
    }

    /// Records `state` if it is newer than the one known, or the same one
    /// re-read after this replica was fenced (its role is reconciled
    /// again: it leads only if it holds a grant of that epoch). Returns
    /// whether it did.
    pub fn learn(&self, state: LeaderAndIsr) -> bool {
        let mut s = self.state.lock();
        let newer = match &s.known {
            None => true,
            Some(k) => {
                let (new, old) = (
                    (state.leader_epoch, state.zk_version),
                    (k.leader_epoch, k.zk_version),
                );
                new > old || (new == old && s.fenced)
            }
        };
        if newer {
            s.known = Some(state);
            s.fenced = false;
        }
        newer
    }

    /// Records a notice's grant of leadership at `epoch`; true when it is
    /// new (higher than any grant held).
    pub fn grant(&self, epoch: u32) -> bool {
        let mut s = self.state.lock();
        if s.granted.is_some_and(|g| g >= epoch) {
            return false;
        }
        s.granted = Some(epoch);
        true
    }

    /// The leader epoch while leading and not fenced.
    pub fn leading_epoch(&self) -> Option<u32> {
        let s = self.state.lock();
        match &s.role {
            RoleState::Leader(l) if !s.fenced => Some(l.epoch),
            _ => None,
        }
    }

    /// Stops leading at once (fenced): waiters fail, writes are refused.
    pub fn fence(&self) -> bool {
        let mut s = self.state.lock();
        let was_leading = matches!(s.role, RoleState::Leader(_)) && !s.fenced;
        s.fenced = true;
        drop(s);
        if was_leading {
            self.stop_leading();
        }
        was_leading
    }

    /// Publishes that this replica no longer leads, and fails the writes
    /// waiting for their acknowledgement.
    pub fn stop_leading(&self) {
        self.progress.send_modify(|p| p.leading = None);
        self.acks.lock().fail_all();
    }

    /// Registers an `acks: all` write at `epoch` that is covered once the
    /// high watermark reaches `until`.
    pub fn wait_ack(&self, epoch: u32, until: u64) -> Ack {
        let mut acks = self.acks.lock();
        // Read under the lock: `publish_hw` and `stop_leading` update
        // `progress` before they take it, so no wake-up is missed.
        let p = *self.progress.borrow();
        if p.leading.is_none_or(|l| l < epoch) || p.since > epoch {
            return Ack::LeadershipLost;
        }
        if p.hw >= until {
            return Ack::Covered;
        }
        if acks.waiting.len() >= 1024 && acks.waiting.len().is_power_of_two() {
            // Writes that timed out leave closed senders behind.
            acks.waiting.retain(|_, done| !done.is_closed());
        }
        let (done, rx) = oneshot::channel();
        acks.seq += 1;
        let seq = acks.seq;
        acks.waiting.insert((until, seq), done);
        Ack::Wait(rx)
    }

    /// Publishes the log's current end (wakes long-polling fetches).
    pub fn publish_log_end(&self) {
        let end = self.log.written_end();
        self.log_end.send_if_modified(|e| {
            if end != *e {
                *e = end;
                true
            } else {
                false
            }
        });
    }

    /// Waits until the log ends past `offset`, or this replica no longer
    /// leads at `epoch` (a long-polling fetch).
    pub async fn wait_for_records(&self, offset: u64, epoch: u32) {
        let mut end = self.log_end.subscribe();
        let mut leading = self.progress.subscribe();
        tokio::select! {
            _ = end.wait_for(|e| *e > offset) => {}
            _ = leading.wait_for(|p| p.leading != Some(epoch)) => {}
        }
    }

    /// Whether this replica follows `leader` at `epoch` (checked under the
    /// `append` lock before anything is appended or truncated).
    pub fn follows(&self, leader: &str, epoch: u32) -> bool {
        matches!(
            &self.state.lock().role,
            RoleState::Follower { leader: l, epoch: e } if l == leader && *e == epoch
        )
    }

    /// Publishes a committed high watermark and wakes the writes it covers.
    pub fn publish_hw(&self, hw: u64) {
        let moved = self.progress.send_if_modified(|p| {
            if hw > p.hw {
                p.hw = hw;
                true
            } else {
                false
            }
        });
        if moved {
            self.acks.lock().release(hw);
        }
    }

    /// The high watermark the leader may move to now, if higher than the
    /// published one: `min` log end over the ISR, with at least
    /// `min_insync` members; with the leader epoch it is computed at.
    pub fn hw_candidate(&self, me: &str, min_insync: u32) -> Option<(u64, u32)> {
        let s = self.state.lock();
        let RoleState::Leader(l) = &s.role else {
            return None;
        };
        if (l.isr.len() as u32) < min_insync {
            return None;
        }
        let mut hw = self.log.written_end();
        for id in l.isr.iter().chain(&l.joining) {
            if id == me {
                continue;
            }
            hw = hw.min(l.followers.get(id).map_or(0, |f| f.leo));
        }
        (hw > self.progress.borrow().hw).then_some((hw, l.epoch))
    }

    /// Records a fetch of `follower` at `offset` (its log end) on the
    /// leader. Fails when this replica does not lead at `epoch`.
    pub fn note_fetch(
        &self,
        me: &str,
        follower: &str,
        offset: u64,
        epoch: u32,
        min_insync: u32,
    ) -> Result<FetchNote> {
        let now = Instant::now();
        let end = self.log.written_end();
        let hw = self.progress.borrow().hw;
        let isr_change = {
            let mut s = self.state.lock();
            let fenced = s.fenced;
            let l = match &mut s.role {
                RoleState::Leader(l) if !fenced => l,
                _ => {
                    return Err(Error::NotLeader {
                        partition: self.id,
                        leader: None,
                    });
                }
            };
            check_epoch(self.id, epoch, l.epoch)?;
            if !l.replicas.iter().any(|r| r == follower) {
                return Err(Error::InvalidInput(format!(
                    "{follower} is not a replica of partition {}",
                    self.id
                )));
            }
            if offset > end {
                return Err(Error::InvalidInput(format!(
                    "partition {}: fetch offset {offset} is beyond the leader's log end {end}",
                    self.id
                )));
            }
            let f = l
                .followers
                .entry(follower.to_string())
                .or_insert(FollowerProgress {
                    leo: 0,
                    caught_up_at: now,
                    last_fetch: None,
                });
            f.leo = offset;
            if offset >= end {
                f.caught_up_at = now;
            } else if let Some((at, end_then)) = f.last_fetch
                && offset >= end_then
            {
                f.caught_up_at = f.caught_up_at.max(at);
            }
            f.last_fetch = Some((now, end));
            let joins = !l.isr.iter().any(|r| r == follower)
                && offset >= hw
                && offset >= l.epoch_start
                && !l.isr_change_in_flight;
            if joins {
                l.isr_change_in_flight = true;
                l.joining = Some(follower.to_string());
                let mut isr = l.isr.clone();
                isr.push(follower.to_string());
                Some(isr)
            } else {
                None
            }
        };
        Ok(FetchNote {
            commit: self.hw_candidate(me, min_insync),
            isr_change,
        })
    }

    /// Followers of the ISR that lagged past `lag`: the ISR without them,
    /// if any must go and no change is in flight.
    pub fn shrink_candidate(&self, me: &str, lag: Duration) -> Option<Vec<String>> {
        let now = Instant::now();
        let end = self.log.written_end();
        let mut s = self.state.lock();
        let fenced = s.fenced;
        let RoleState::Leader(l) = &mut s.role else {
            return None;
        };
        if fenced || l.isr_change_in_flight {
            return None;
        }
        let keep: Vec<String> = l
            .isr
            .iter()
            .filter(|id| {
                if *id == me {
                    return true;
                }
                match l.followers.get(*id) {
                    Some(f) => f.leo >= end || now.duration_since(f.caught_up_at) <= lag,
                    None => true,
                }
            })
            .cloned()
            .collect();
        if keep.len() == l.isr.len() {
            return None;
        }
        l.isr_change_in_flight = true;
        Some(keep)
    }

    /// The proposed state for an ISR change, from the leader's state.
    pub fn isr_proposal(&self, isr: Vec<String>, me: &str) -> Option<LeaderAndIsr> {
        let s = self.state.lock();
        let RoleState::Leader(l) = &s.role else {
            return None;
        };
        Some(LeaderAndIsr {
            partition: self.id,
            leader: Some(me.to_string()),
            leader_epoch: l.epoch,
            replicas: l.replicas.clone(),
            isr,
            controller_epoch: l.controller_epoch,
            zk_version: l.zk_version,
            leader_node_epoch: l.node_epoch,
        })
    }

    /// Adopts an ISR written to ZooKeeper at `zk_version` (by this leader).
    /// Returns false when leadership changed meanwhile.
    pub fn adopt_isr(&self, epoch: u32, isr: Vec<String>, zk_version: i32) -> bool {
        let mut s = self.state.lock();
        let State { role, known, .. } = &mut *s;
        let RoleState::Leader(l) = role else {
            return false;
        };
        if l.epoch != epoch {
            return false;
        }
        l.isr_change_in_flight = false;
        l.joining = None;
        if zk_version <= l.zk_version {
            return true;
        }
        l.isr = isr.clone();
        l.zk_version = zk_version;
        if let Some(k) = known
            && k.leader_epoch == epoch
            && k.zk_version < zk_version
        {
            k.isr = isr;
            k.zk_version = zk_version;
        }
        true
    }

    /// Clears the in-flight flag after a failed ISR change.
    pub fn isr_change_failed(&self) {
        if let RoleState::Leader(l) = &mut self.state.lock().role {
            l.isr_change_in_flight = false;
            l.joining = None;
        }
    }

    /// Log end offsets this node knows: its own and, when leading, each
    /// follower's.
    pub fn offsets(&self, me: &str) -> Vec<(String, u64)> {
        let mut out = vec![(me.to_string(), self.log.written_end())];
        if let RoleState::Leader(l) = &self.state.lock().role {
            // Only followers that fetched since this leadership began: one
            // that never did has no position to report (a replica being
            // added shows as not started, not as caught up at 0).
            let mut f: Vec<_> = l
                .followers
                .iter()
                .filter(|(_, p)| p.last_fetch.is_some())
                .map(|(id, p)| (id.clone(), p.leo))
                .collect();
            f.sort();
            out.extend(f);
        }
        out
    }
}

/// Fencing of a caller's leader epoch against this leader's.
pub fn check_epoch(partition: u32, theirs: u32, mine: u32) -> Result<()> {
    if theirs < mine {
        return Err(Error::FencedEpoch(format!(
            "partition {partition}: leader epoch {theirs} is older than {mine}"
        )));
    }
    if theirs > mine {
        return Err(Error::UnknownEpoch(format!(
            "partition {partition}: leader epoch {theirs} is newer than {mine}"
        )));
    }
    Ok(())
}
