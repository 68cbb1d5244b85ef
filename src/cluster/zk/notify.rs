//! The controller's notices (`leader_and_isr`) to nodes: one mailbox per
//! live node registration, one delivery task per mailbox.
//!
//! A mailbox holds, per partition, the newest state the node has not
//! acknowledged yet (newer: higher leader epoch, or the same with a higher
//! znode version), the routing maps (`cluster::Leaders`) it has not
//! acknowledged (`Arc`s: one map per notice round, shared by every
//! mailbox, never copied per node), and the live nodes last announced. Its task sends them
//! all in one notice; on success it removes the states that notice carried
//! (unless a newer one replaced them meanwhile), on failure it waits
//! (100 ms, doubling, at most 1 s) and sends again, with whatever arrived
//! meanwhile in the same notice.
//!
//! Invariants:
//! - Controller notices are retried until the node acknowledges them or
//!   leaves: a state is dropped from a mailbox only once a notice carrying
//!   it (or a newer state of its partition) was acknowledged, or when the
//!   node is no longer live under the node epoch the mailbox was made for
//!   (that registration is gone; a new one is sent the full state).
//! - Every notice carries the node epoch of the registration it is for;
//!   a node refuses notices for another registration, so nothing meant for
//!   a previous incarnation can give leadership to a new one.
//! - At most one notice per node is in flight: a node sees its notices in
//!   the order they were sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cluster::{LeaderAndIsr, Leaders, NodeAddr, NodeRpc};

/// How long a node may take to answer one notice.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after the first failed notice to a node; doubled after each
/// further failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between two notices to a node that does not acknowledge.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What one node still has to acknowledge.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The newest unacknowledged state per partition.
    states: BTreeMap<u32, LeaderAndIsr>,
    /// Unacknowledged routing maps, oldest first (shared with the other
    /// mailboxes of the same round; a full map drops those before it).
    leaders: Vec<Arc<Leaders>>,
    /// The live nodes to announce (the latest list).
    nodes: Vec<NodeAddr>,
}

impl Pending {
    /// Adds `states` (a newer state of a partition replaces an older one;
    /// an older one is ignored), the routing map `leaders` and the live
    /// `nodes`.
    pub fn add(
        &mut self,
        states: Vec<LeaderAndIsr>,
        leaders: Option<Arc<Leaders>>,
        nodes: Vec<NodeAddr>,
    ) {
        if let Some(m) = leaders.filter(|m| !m.is_empty()) {
            if m.full {
                self.leaders.clear();
            }
            self.leaders.push(m);
        }
        for s in states {
            let newer = self.states.get(&s.partition).is_none_or(|old| {
                (s.leader_epoch, s.zk_version) >= (old.leader_epoch, old.zk_version)
            });
            if newer {
                self.states.insert(s.partition, s);
            }
        }
        self.nodes = nodes;
    }

    /// The next notice: every pending state and routing map, and the
    /// live nodes. `None` when nothing is pending.
    pub fn batch(&self) -> Option<Batch> {
        if self.states.is_empty() && self.leaders.is_empty() {
            return None;
        }
        Some((
            self.states.values().cloned().collect(),
            self.leaders.clone(),
            self.nodes.clone(),
        ))
    }

    /// A notice carrying `sent` and the maps `maps` was acknowledged:
    /// those states are done, unless a newer one of their partition
    /// arrived meanwhile, and so are those maps.
    pub fn acked(&mut self, sent: &[LeaderAndIsr], maps: &[Arc<Leaders>]) {
        for s in sent {
            if self.states.get(&s.partition) == Some(s) {
                self.states.remove(&s.partition);
            }
        }
        self.leaders
            .retain(|m| !maps.iter().any(|sent| Arc::ptr_eq(m, sent)));
    }
}

/// One notice: full states, routing maps, live nodes.
pub(crate) type Batch = (Vec<LeaderAndIsr>, Vec<Arc<Leaders>>, Vec<NodeAddr>);

/// One node registration's mailbox.
struct Mailbox {
    /// The node epoch the notices are for.
    node_epoch: i64,
    /// What it has not acknowledged.
    pending: Arc<Mutex<Pending>>,
    /// Wakes the delivery task when something was added.
    wake: Arc<Notify>,
    /// The delivery task (aborted when the mailbox goes).
    task: JoinHandle<()>,
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every mailbox of one controller; dropping it stops every delivery.
pub(crate) struct Notifier {
    /// How notices travel.
    rpc: Arc<dyn NodeRpc>,
    /// The controller epoch stamped on every notice.
    controller_epoch: u64,
    /// Pauses after failures: the first, and the longest.
    backoff: (Duration, Duration),
    /// Mailboxes by node id.
    boxes: BTreeMap<String, Mailbox>,
}

impl Notifier {
    /// A notifier for the controller elected at `controller_epoch`.
    pub fn new(rpc: Arc<dyn NodeRpc>, controller_epoch: u64) -> Notifier {
        Notifier::with_backoff(rpc, controller_epoch, FIRST_BACKOFF, MAX_BACKOFF)
    }

    /// [`Notifier::new`] with other pauses after failures (tests).
    pub fn with_backoff(
        rpc: Arc<dyn NodeRpc>,
        controller_epoch: u64,
        first: Duration,
        max: Duration,
    ) -> Notifier {
        Notifier {
            rpc,
            controller_epoch,
            backoff: (first, max),
            boxes: BTreeMap::new(),
        }
    }

    /// Drops the mailboxes of nodes that are not in `live` (node id ->
    /// node epoch) under the node epoch they were made for.
    pub fn retain(&mut self, live: &BTreeMap<String, i64>) {
        self.boxes
            .retain(|id, b| live.get(id) == Some(&b.node_epoch));
    }

    /// Queues `states`, the routing map `leaders` (shared, not copied)
    /// and the live `nodes` for `node`, registered at `node_epoch`, and
    /// wakes its delivery.
    pub fn send(
        &mut self,
        node: &NodeAddr,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        leaders: Option<Arc<Leaders>>,
        nodes: Vec<NodeAddr>,
    ) {
        if states.is_empty() && leaders.as_ref().is_none_or(|m| m.is_empty()) {
            return;
        }
        if self
            .boxes
            .get(&node.id)
            .is_some_and(|b| b.node_epoch != node_epoch || b.task.is_finished())
        {
            self.boxes.remove(&node.id);
        }
        let mailbox = self.boxes.entry(node.id.clone()).or_insert_with(|| {
            let pending = Arc::new(Mutex::new(Pending::default()));
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(deliver(Delivery {
                rpc: self.rpc.clone(),
                node: node.clone(),
                controller_epoch: self.controller_epoch,
                node_epoch,
                backoff: self.backoff,
                pending: pending.clone(),
                wake: wake.clone(),
            }));
            Mailbox {
                node_epoch,
                pending,
                wake,
                task,
            }
        });
        mailbox.pending.lock().add(states, leaders, nodes);
        mailbox.wake.notify_one();
    }

    /// Whether `node` has states it has not acknowledged.
    #[cfg(test)]
    pub fn pending(&self, node: &str) -> usize {
        self.boxes
            .get(node)
            .map_or(0, |b| b.pending.lock().states.len())
    }
}

/// What a delivery task needs.
struct Delivery {
    /// How notices travel.
    rpc: Arc<dyn NodeRpc>,
    /// The receiver.
    node: NodeAddr,
    /// Stamped on every notice.
    controller_epoch: u64,
    /// The receiver's registration the notices are for.
    node_epoch: i64,
    /// Pauses after failures: the first, and the longest.
    backoff: (Duration, Duration),
    /// What the receiver has not acknowledged.
    pending: Arc<Mutex<Pending>>,
    /// Rung when something was added.
    wake: Arc<Notify>,
}

/// Sends the pending states of one node until they are acknowledged,
/// forever (the task is aborted when the node leaves or the controller
/// stops).
async fn deliver(d: Delivery) {
    let mut failures: u32 = 0;
    loop {
        let batch = d.pending.lock().batch();
        let Some((states, maps, nodes)) = batch else {
            d.wake.notified().await;
            continue;
        };
        let call = d.rpc.leader_and_isr(
            d.node.clone(),
            d.controller_epoch,
            d.node_epoch,
            states.clone(),
            maps.clone(),
            nodes,
        );
        let outcome = match tokio::time::timeout(NOTICE_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(crate::Error::Timeout(format!(
                "no answer within {} ms",
                NOTICE_TIMEOUT.as_millis()
            ))),
        };
        match outcome {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        "leader_and_isr to {} acknowledged after {failures} failed attempts",
                        d.node.id
                    );
                }
                failures = 0;
                d.pending.lock().acked(&states, &maps);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let shift = failures.saturating_sub(1).min(16);
                let pause = d.backoff.0.saturating_mul(1 << shift).min(d.backoff.1);
                if failures <= 5 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        "leader_and_isr to {} (node epoch {}) failed (attempt {failures}, \
                         {} partitions): {e}; retrying in {} ms",
                        d.node.id,
                        d.node_epoch,
                        states.len(),
                        pause.as_millis()
                    );
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cluster::{BoxFuture, ReplicaOffsets};

    fn st(p: u32, epoch: u32, version: i32) -> LeaderAndIsr {
        LeaderAndIsr {
            partition: p,
            leader: Some("n1".into()),
            leader_epoch: epoch,
            replicas: vec!["n1".into(), "n2".into()],
            isr: vec!["n1".into(), "n2".into()],
            controller_epoch: 1,
            zk_version: version,
            leader_node_epoch: 11,
        }
    }

    fn node(id: &str) -> NodeAddr {
        NodeAddr {
            id: id.into(),
            client_addr: format!("{id}:1"),
            replication_addr: format!("{id}:2"),
        }
    }

    #[test]
    fn newer_states_replace_older_and_an_ack_removes_only_what_was_sent() {
        let mut p = Pending::default();
        assert_eq!(p.batch(), None);
        p.add(vec![st(0, 2, 5), st(1, 1, 1)], None, vec![node("n1")]);
        p.add(vec![st(0, 1, 9)], None, vec![node("n1"), node("n2")]);
        let (sent, _, nodes) = p.batch().unwrap();
        assert_eq!(sent, vec![st(0, 2, 5), st(1, 1, 1)]);
        assert_eq!(nodes, vec![node("n1"), node("n2")]);
        // A newer state of partition 1 arrives while the notice is out.
        p.add(vec![st(1, 1, 2)], None, vec![node("n1")]);
        p.acked(&sent, &[]);
        assert_eq!(p.batch().unwrap().0, vec![st(1, 1, 2)]);
        p.acked(&[st(1, 1, 2)], &[]);
        assert_eq!(p.batch(), None);
    }

    /// Routing maps queue as shared `Arc`s: a full map drops the maps
    /// before it, an acknowledgement removes exactly the maps it carried.
    #[test]
    fn routing_maps_are_shared_and_a_full_map_supersedes_older_ones() {
        let mut p = Pending::default();
        let delta = Arc::new(Leaders::of(&[st(0, 2, 1)], false));
        let full = Arc::new(Leaders::of(&[st(0, 3, 1), st(1, 1, 1)], true));
        let later = Arc::new(Leaders::of(&[st(1, 2, 1)], false));
        p.add(Vec::new(), Some(delta.clone()), vec![]);
        p.add(Vec::new(), Some(full.clone()), vec![]);
        let (states, maps, _) = p.batch().unwrap();
        assert!(states.is_empty());
        assert_eq!(maps.len(), 1);
        assert!(
            Arc::ptr_eq(&maps[0], &full),
            "the full map itself, not a copy"
        );
        p.add(Vec::new(), Some(later.clone()), vec![]);
        p.acked(&states, &maps);
        let (_, maps, _) = p.batch().unwrap();
        assert_eq!(maps.len(), 1);
        assert!(Arc::ptr_eq(&maps[0], &later));
        p.acked(&[], &maps);
        assert_eq!(p.batch(), None);
    }

    /// Refuses the first `refuse` notices, records every call.
    struct Flaky {
        refuse: usize,
        calls: AtomicUsize,
        got: parking_lot::Mutex<Vec<(String, i64, Vec<u32>)>>,
    }

    impl NodeRpc for Flaky {
        fn log_end_offsets(
            &self,
            _: NodeAddr,
            _: u64,
            _: Vec<u32>,
        ) -> BoxFuture<'static, crate::Result<Vec<ReplicaOffsets>>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn leader_and_isr(
            &self,
            node: NodeAddr,
            _: u64,
            node_epoch: i64,
            states: Vec<LeaderAndIsr>,
            _: Vec<Arc<Leaders>>,
            _: Vec<NodeAddr>,
        ) -> BoxFuture<'static, crate::Result<()>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.got.lock().push((
                node.id,
                node_epoch,
                states.iter().map(|s| s.partition).collect(),
            ));
            let refuse = n < self.refuse;
            Box::pin(async move {
                if refuse {
                    Err(crate::Error::Unavailable("refused".into()))
                } else {
                    Ok(())
                }
            })
        }
    }

    /// A node that refuses 7 notices in a row (the controller used to
    /// give up after 3) gets the states in the 8th, batched with what
    /// was queued meanwhile; nothing is sent once it acknowledged.
    #[tokio::test]
    async fn notices_are_resent_until_acknowledged() {
        let rpc = Arc::new(Flaky {
            refuse: 7,
            calls: AtomicUsize::new(0),
            got: parking_lot::Mutex::new(Vec::new()),
        });
        let ms = Duration::from_millis(1);
        let mut n = Notifier::with_backoff(rpc.clone(), 3, ms, ms * 4);
        n.send(&node("n2"), 42, vec![st(0, 2, 1)], None, vec![node("n2")]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        n.send(&node("n2"), 42, vec![st(1, 3, 1)], None, vec![node("n2")]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while n.pending("n2") > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never delivered");
            tokio::time::sleep(ms).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = rpc.got.lock().clone();
        assert_eq!(got.len(), 8, "{got:?}");
        assert!(got.iter().all(|(id, e, _)| id == "n2" && *e == 42));
        assert_eq!(got[7].2, vec![0, 1]);
    }

    /// A node registered again (new node epoch) or gone loses its mailbox:
    /// nothing meant for the old registration is sent any more.
    #[tokio::test]
    async fn a_new_registration_drops_the_old_mailbox() {
        let rpc = Arc::new(Flaky {
            refuse: usize::MAX,
            calls: AtomicUsize::new(0),
            got: parking_lot::Mutex::new(Vec::new()),
        });
        let ms = Duration::from_millis(1);
        let mut n = Notifier::with_backoff(rpc.clone(), 3, ms, ms);
        n.send(&node("n2"), 42, vec![st(0, 2, 1)], None, vec![]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        n.retain(&[("n2".to_string(), 43)].into());
        assert_eq!(n.pending("n2"), 0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = rpc.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(rpc.calls.load(Ordering::SeqCst), before);
        assert!(rpc.got.lock().iter().all(|(_, e, _)| *e == 42));
    }
}
