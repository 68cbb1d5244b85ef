//! Leader-epoch truncation over the network (bug 14a of issue 10): a
//! follower node `a` and a leader node `b`, both real [`ReplicaManager`]s in
//! this process, `b` behind a real gRPC server that counts the
//! `EpochEndOffset` calls it serves. After a leader change the follower
//! finds where each partition's log diverges from the leader's in rounds,
//! one call per round for the whole fetch session, never one per partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use super::{FakeCluster, engine, node, set, state, wait_until};
use crate::cluster::{Coordinator, LeaderAndIsr, NodeAddr, Role};
use crate::config::ClusterOptions;
use crate::proto::replication as pb;
use crate::proto::replication::replication_server::Replication;
use crate::replication::service::ReplicationService;
use crate::replication::{ReplicaLog, ReplicaManager};
use crate::storage::{Bitcask, Durability};

/// One partition of a scenario.
#[derive(Clone, Copy)]
struct Spec {
    /// The follower's log as `(epoch, record count)` runs.
    a: &'static [(u32, u64)],
    /// The follower's commit point.
    a_committed: u64,
    /// The leader's log as `(epoch, record count)` runs.
    b: &'static [(u32, u64)],
    /// The leader's epoch.
    lead: u32,
    /// Where the follower's log must be truncated: it keeps its own
    /// records below this offset and fetches the leader's from there.
    target: u64,
}

/// `(offset, epoch, key, value)` of every record of `e`.
type Log = Vec<(u64, u32, String, String)>;

/// The records of `e`'s log.
fn records(e: &Bitcask) -> Log {
    crate::storage::Engine::flush(e).unwrap();
    e.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.header.offset,
                r.header.epoch,
                String::from_utf8_lossy(r.key()).into_owned(),
                String::from_utf8_lossy(&r.value()).into_owned(),
            )
        })
        .collect()
}

/// A replica-mode engine holding `runs`, each record keyed by its epoch
/// and offset and valued `who` (so a kept record tells from a fetched one),
/// committed up to `committed`.
fn build(runs: &[(u32, u64)], committed: u64, who: &str) -> (TempDir, Arc<Bitcask>) {
    let (dir, e) = engine(Durability::Never);
    let mut offset = 0u64;
    for &(epoch, n) in runs {
        e.set_epoch(epoch).unwrap();
        for _ in 0..n {
            let key = format!("e{epoch}-{offset}");
            e.write(key.as_bytes(), set(who)).unwrap();
            offset += 1;
        }
    }
    if committed > 0 {
        let last = runs.last().map_or(0, |r| r.0);
        assert_eq!(e.commit_at(committed, last).unwrap(), committed);
    }
    (dir, e)
}

/// `b`'s replication service, counting the `EpochEndOffset` calls served.
struct Counting {
    /// The real service.
    inner: ReplicationService,
    /// `EpochEndOffset` calls served.
    lookups: Arc<AtomicUsize>,
    /// Plays a leader that predates batched lookups: it does not know
    /// the request's `partitions` (a decoder skips an unknown field).
    legacy: bool,
}

#[tonic::async_trait]
impl Replication for Counting {
    type FetchStream = <ReplicationService as Replication>::FetchStream;

    async fn fetch(
        &self,
        request: tonic::Request<tonic::Streaming<pb::FetchRequest>>,
    ) -> Result<tonic::Response<Self::FetchStream>, tonic::Status> {
        self.inner.fetch(request).await
    }

    async fn epoch_end_offset(
        &self,
        request: tonic::Request<pb::EpochEndOffsetRequest>,
    ) -> Result<tonic::Response<pb::EpochEndOffsetResponse>, tonic::Status> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let mut request = request;
        if self.legacy {
            request.get_mut().partitions.clear();
        }
        self.inner.epoch_end_offset(request).await
    }

    async fn log_end_offsets(
        &self,
        request: tonic::Request<pb::LogEndOffsetsRequest>,
    ) -> Result<tonic::Response<pb::LogEndOffsetsResponse>, tonic::Status> {
        self.inner.log_end_offsets(request).await
    }

    async fn leader_and_isr(
        &self,
        request: tonic::Request<pb::LeaderAndIsrRequest>,
    ) -> Result<tonic::Response<pb::LeaderAndIsrResponse>, tonic::Status> {
        self.inner.leader_and_isr(request).await
    }

    async fn handover(
        &self,
        request: tonic::Request<pb::HandoverRequest>,
    ) -> Result<tonic::Response<pb::HandoverResponse>, tonic::Status> {
        self.inner.handover(request).await
    }
}

/// Partition `p`'s state: b leads at `epoch`, ISR b and a.
fn state_of(p: usize, epoch: u32) -> LeaderAndIsr {
    LeaderAndIsr {
        partition: p as u32,
        ..state("b", epoch, &["b", "a"])
    }
}

/// Runs `specs` (one per partition): `b` leads every partition, then `a`
/// follows `b` for all of them at once while `b`'s server is not yet
/// accepting, so the whole session looks up its epochs together once it
/// is. Checks every follower log against its spec once caught up, and
/// returns how many `EpochEndOffset` calls `b` served. `legacy`: `b`
/// answers as a leader that predates batched lookups.
fn run(specs: &[Spec], legacy: bool) -> usize {
    let rt = super::runtime(2);
    let mut dirs = Vec::new();
    let (mut a_logs, mut b_logs) = (Vec::new(), Vec::new());
    for s in specs {
        let (da, a) = build(s.a, s.a_committed, "a");
        let (db, b) = build(s.b, 0, "b");
        dirs.extend([da, db]);
        a_logs.push(a);
        b_logs.push(b);
    }
    let expected: Vec<Log> = specs
        .iter()
        .zip(a_logs.iter().zip(&b_logs))
        .map(|(s, (a, b))| {
            let mut log = records(a);
            log.truncate(s.target as usize);
            log.extend(records(b).into_iter().skip(s.target as usize));
            log
        })
        .collect();
    let opts = ClusterOptions {
        min_insync: 1,
        ..ClusterOptions::default()
    };
    let dyn_logs = |logs: &[Arc<Bitcask>]| -> Vec<Arc<dyn ReplicaLog>> {
        logs.iter()
            .map(|l| l.clone() as Arc<dyn ReplicaLog>)
            .collect()
    };
    let (a, b) = {
        let _in = rt.enter();
        let limit = 2 << 20;
        let wait = Duration::from_secs(2);
        (
            ReplicaManager::new(node("a"), opts.clone(), dyn_logs(&a_logs), wait, limit),
            ReplicaManager::new(node("b"), opts, dyn_logs(&b_logs), wait, limit),
        )
    };
    let lookups = Arc::new(AtomicUsize::new(0));
    let n = specs.len();
    rt.block_on(async {
        a.attach(Arc::new(FakeCluster));
        b.attach(Arc::new(FakeCluster));
        let states: Vec<LeaderAndIsr> = specs
            .iter()
            .enumerate()
            .map(|(p, s)| state_of(p, s.lead))
            .collect();
        b.leader_and_isr(1, 0, states.clone(), vec![node("a")])
            .unwrap();
        wait_until("b leads every partition", || {
            (0..n as u32).all(|p| matches!(b.role(p), Role::Leader { .. }))
        })
        .await;

        // b's address is bound but not listening: a's first lookups are
        // refused at connect time, before they reach the service.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b_addr = NodeAddr {
            replication_addr: socket.local_addr().unwrap().to_string(),
            ..node("b")
        };
        a.leader_and_isr(1, 0, states.clone(), vec![b_addr])
            .unwrap();
        wait_until("a follows b everywhere", || a.sessions.members("b") == n).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lookups.load(Ordering::SeqCst), 0);

        let listener = socket.listen(64).unwrap();
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let svc = Counting {
            inner: ReplicationService::new(b.clone(), crate::tls::gate::Gate::unchecked()),
            lookups: lookups.clone(),
            legacy,
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::replication_server::ReplicationServer::new(svc))
                .serve_with_incoming(incoming),
        );
        wait_until("a catches up with b", || {
            (0..n).all(|p| a_logs[p].written_end() == b_logs[p].written_end())
        })
        .await;
    });
    for (p, want) in expected.iter().enumerate() {
        assert_eq!(&records(&a_logs[p]), want, "partition {p}");
    }
    let served = lookups.load(Ordering::SeqCst);
    drop((a, b));
    drop(rt);
    drop(dirs);
    served
}

/// The follower led epoch 2 and wrote two records the new leader (epoch
/// 3) never got: one lookup round truncates them.
const DIVERGED_AT_2: Spec = Spec {
    a: &[(1, 3), (2, 2)],
    a_committed: 0,
    b: &[(1, 3), (3, 1)],
    lead: 3,
    target: 3,
};

/// Bug 14a of issue 10: eight partitions, all led by `b` after a failover,
/// all looked up in one `EpochEndOffset` call (the old follower made one
/// serial call per partition: 8).
#[test]
fn a_failover_looks_up_every_partition_of_a_leader_in_one_call() {
    let served = run(&[DIVERGED_AT_2; 8], false);
    assert_eq!(served, 1, "EpochEndOffset calls for 8 partitions");
}

/// Partitions whose divergence needs different numbers of lookups: 1, 2,
/// 3, none, an unclean election, a follower merely behind.
const ROUNDS: [Spec; 6] = [
    DIVERGED_AT_2,
    // Asks 3, told 2 (which it lacks), asks 1: diverges at 2.
    Spec {
        a: &[(1, 3), (3, 2)],
        a_committed: 0,
        b: &[(1, 2), (2, 2), (4, 1)],
        lead: 4,
        target: 2,
    },
    // Asks 5, told 4; asks 3, told 2; asks 1: diverges at 1.
    Spec {
        a: &[(1, 2), (3, 2), (5, 1)],
        a_committed: 0,
        b: &[(1, 1), (2, 2), (4, 2), (6, 1)],
        lead: 6,
        target: 1,
    },
    // An empty log asks nothing.
    Spec {
        a: &[],
        a_committed: 0,
        b: &[(1, 2)],
        lead: 1,
        target: 0,
    },
    // Unclean election: the leader's log ends at 3, below the
    // follower's commit point 5; the committed records above the
    // agreement point go (logged as data loss).
    Spec {
        a: &[(1, 5)],
        a_committed: 5,
        b: &[(1, 2), (2, 1)],
        lead: 2,
        target: 2,
    },
    // Merely behind: nothing to truncate.
    Spec {
        a: &[(1, 2)],
        a_committed: 0,
        b: &[(1, 4)],
        lead: 2,
        target: 2,
    },
];

/// KIP-279 in one batch: partitions whose divergence needs different
/// numbers of lookups (1, 2, 3, none, an unclean election, a follower
/// merely behind) are looked up together, one call per round: 3 calls
/// (the old follower made 9), and each log is truncated exactly where it
/// diverges.
#[test]
fn partitions_needing_different_rounds_share_each_call() {
    let served = run(&ROUNDS, false);
    assert_eq!(served, 3, "EpochEndOffset calls");
}

/// Compatibility: against a leader that predates batched lookups (it
/// answers only the single-partition fields), the follower still truncates
/// every log exactly where it diverges, one partition per call (9 calls:
/// one per question, and one more for the unclean election's log end).
#[test]
fn a_leader_without_batched_lookups_is_asked_one_partition_per_call() {
    let served = run(&ROUNDS, true);
    assert_eq!(served, 9, "EpochEndOffset calls");
}

/// The leader answers each partition of a batched lookup on its own: a
/// partition it leads is answered (with its log end), one it does not lead
/// is refused NOT_LEADER, a stale epoch FENCED_LEADER_EPOCH, an unknown
/// partition INVALID_ARGUMENT, in the request's order; the single-partition
/// form still answers as before.
#[test]
fn a_batched_lookup_answers_and_refuses_each_partition_on_its_own() {
    let rt = super::runtime(2);
    let (_d0, l0) = build(&[(1, 2), (3, 1)], 0, "b");
    let (_d1, l1) = build(&[], 0, "b");
    let logs: Vec<Arc<dyn ReplicaLog>> = vec![l0, l1];
    let b = {
        let _in = rt.enter();
        let opts = ClusterOptions::default();
        ReplicaManager::new(node("b"), opts, logs, Duration::from_secs(2), 2 << 20)
    };
    rt.block_on(async {
        b.attach(Arc::new(FakeCluster));
        let states = vec![state_of(0, 4), {
            let mut s = state_of(1, 2);
            s.leader = Some("a".into());
            s
        }];
        b.leader_and_isr(1, 0, states, vec![node("a")]).unwrap();
        wait_until("b leads 0", || matches!(b.role(0), Role::Leader { .. })).await;
    });
    let q = |partition, current_leader_epoch, leader_epoch| pb::EpochQuery {
        partition,
        current_leader_epoch,
        leader_epoch,
    };
    let answer = b
        .epoch_end_offset(pb::EpochEndOffsetRequest {
            partitions: vec![q(0, 4, 2), q(1, 2, 1), q(0, 3, 1), q(9, 4, 1), q(0, 4, 0)],
            ..Default::default()
        })
        .unwrap();
    let got: Vec<(u32, &str, bool, u32, u64, u64)> = answer
        .partitions
        .iter()
        .map(|a| {
            let r = a.error_reason.as_str();
            (
                a.partition,
                r,
                a.found,
                a.leader_epoch,
                a.end_offset,
                a.log_end_offset,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "", true, 1, 2, 3),
            (1, "NOT_LEADER", false, 0, 0, 0),
            (0, "FENCED_LEADER_EPOCH", false, 0, 0, 0),
            (9, "INVALID_ARGUMENT", false, 0, 0, 0),
            (0, "", false, 0, 0, 3),
        ]
    );
    assert_eq!(
        (answer.found, answer.leader_epoch, answer.end_offset),
        (false, 0, 0)
    );
    let single = b
        .epoch_end_offset(pb::EpochEndOffsetRequest {
            partition: 0,
            current_leader_epoch: 4,
            leader_epoch: 3,
            partitions: Vec::new(),
        })
        .unwrap();
    assert_eq!(
        (single.found, single.leader_epoch, single.end_offset),
        (true, 3, 3)
    );
    assert!(single.partitions.is_empty());
    let refused = b.epoch_end_offset(pb::EpochEndOffsetRequest {
        partition: 1,
        current_leader_epoch: 2,
        leader_epoch: 1,
        partitions: Vec::new(),
    });
    assert!(matches!(
        refused,
        Err(crate::Error::NotLeader { partition: 1, .. })
    ));
    drop(b);
    drop(rt);
}
