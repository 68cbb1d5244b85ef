//! Replication driven without a network: a [`ReplicaManager`] over real
//! engines in temporary directories, a fake ZooKeeper layer, and states
//! handed in as the controller's notices would be.

mod epochs;
mod hosting;
mod reassign;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tempfile::TempDir;

use super::partition::{FollowerProgress, LeaderState, Partition, RoleState};
use super::{ClusterHandle, IsrOutcome, ReplicaLog, ReplicaManager};
use crate::cluster::{BoxFuture, Coordinator, LeaderAndIsr, NodeAddr, Role};
use crate::config::ClusterOptions;
use crate::error::Result;
use crate::storage::{Bitcask, Durability, Options, SetOptions, SystemClock, WriteOp};

/// A ZooKeeper layer whose lease is always valid and whose ISR writes
/// always succeed.
struct FakeCluster;

impl ClusterHandle for FakeCluster {
    fn lease_valid(&self) -> bool {
        true
    }
    fn nodes(&self) -> Vec<NodeAddr> {
        vec![node("a"), node("b")]
    }
    fn controller(&self) -> Option<String> {
        None
    }
    fn update_isr(&self, proposed: LeaderAndIsr) -> BoxFuture<'static, Result<IsrOutcome>> {
        Box::pin(async move {
            Ok(IsrOutcome::Updated {
                zk_version: proposed.zk_version + 1,
            })
        })
    }
    fn read_states(&self, _partitions: Vec<u32>) -> BoxFuture<'static, Result<Vec<LeaderAndIsr>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Node `id`, at an address nothing listens on (port 1): a fetcher
/// following it fails to connect and retries, touching nothing.
fn node(id: &str) -> NodeAddr {
    NodeAddr {
        id: id.into(),
        client_addr: "127.0.0.1:1".into(),
        replication_addr: "127.0.0.1:1".into(),
    }
}

/// A replica-mode engine in a new temporary directory.
fn engine(fsync: Durability) -> (TempDir, Arc<Bitcask>) {
    let dir = TempDir::new().unwrap();
    let opts = Options {
        fsync,
        ..Options::default()
    };
    let e = Bitcask::open_replica(dir.path(), opts, Arc::new(SystemClock)).unwrap();
    (dir, Arc::new(e))
}

/// Partition 0's state: `leader` at `epoch`, replicas a and b.
fn state(leader: &str, epoch: u32, isr: &[&str]) -> LeaderAndIsr {
    LeaderAndIsr {
        partition: 0,
        leader: Some(leader.into()),
        leader_epoch: epoch,
        replicas: vec!["a".into(), "b".into()],
        isr: isr.iter().map(|s| s.to_string()).collect(),
        controller_epoch: 1,
        zk_version: epoch as i32,
        leader_node_epoch: 0,
    }
}

/// Polls `cond` every millisecond for up to 10 s.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `(offset, epoch, key)` of every record in `e`'s log.
#[cfg(feature = "failpoints")]
fn log_of(e: &Bitcask) -> Vec<(u64, u32, String)> {
    e.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.header.offset,
                r.header.epoch,
                String::from_utf8_lossy(r.key()).into_owned(),
            )
        })
        .collect()
}

fn set(v: &str) -> WriteOp {
    WriteOp::Set(Bytes::from(v.to_string()), SetOptions::default())
}

/// Bug 9 of issue 10, under both write paths (`always`: queued for the
/// committer; `every_ms`: the blocking write): a leader write paused after
/// its leadership check while the replica is demoted, truncated to the new
/// leader's log and given the new leader's record at the same offset. Once
/// released it must fail with `NOT_LEADER` and leave the follower log as
/// the new leader's.
#[cfg(feature = "failpoints")]
#[test]
fn a_demoted_leaders_paused_write_is_refused_and_not_in_the_follower_log() {
    for fsync in [Durability::Always, Durability::EveryMs(1000)] {
        demoted_write(fsync);
    }
}

/// A multi-threaded runtime with `workers` worker threads and every driver
/// enabled, as the tests below run their nodes on.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// Arms failpoint `name` to stop whoever reaches it: `reached` gets one
/// message per arrival, and each arrival waits for one message on
/// `release`. Returns `(reached, release)`.
#[cfg(feature = "failpoints")]
fn pause_at(name: &str) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (reached_tx, reached) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reached_tx = std::sync::Mutex::new(reached_tx);
    let released = std::sync::Mutex::new(released);
    fail::cfg_callback(name, move || {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = released.lock().unwrap().recv();
    })
    .unwrap();
    (reached, release)
}

/// Tests that arm failpoints in this process run one at a time.
#[cfg(feature = "failpoints")]
static FAILPOINT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(feature = "failpoints")]
fn demoted_write(fsync: Durability) {
    let _one = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());

    let rt = runtime(4);
    let (_dir, e) = engine(fsync);
    let opts = ClusterOptions {
        min_insync: 2,
        ..ClusterOptions::default()
    };
    let log: Arc<dyn ReplicaLog> = e.clone();
    let m = {
        let _in = rt.enter();
        ReplicaManager::new(node("a"), opts, vec![log], Duration::from_secs(2), 2 << 20)
    };
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        m.leader_and_isr(1, 0, vec![state("a", 1, &["a", "b"])], vec![node("b")])
            .unwrap();
        wait_until("a leads", || matches!(m.role(0), Role::Leader { .. })).await;
        // Offset 0, epoch 1: not committed (b never fetched).
        let acks = crate::node::Acks::Leader;
        assert!(
            m.write(0, Bytes::from("k0"), set("old"), acks)
                .await
                .unwrap()
        );
    });

    // The next write stops right after its leadership check.
    let (reached, release) = pause_at("replication::write_after_check");
    let paused = {
        let m = m.clone();
        rt.spawn(async move {
            m.write(
                0,
                Bytes::from("k1"),
                set("zombie"),
                crate::node::Acks::Leader,
            )
            .await
        })
    };
    reached.recv_timeout(Duration::from_secs(10)).unwrap();
    fail::remove("replication::write_after_check");

    // Meanwhile: b leads at epoch 2; a follows and truncates to b's log
    // (which lacks offset 0), then appends b's record at offset 0.
    let (_bdir, b) = engine(Durability::Never);
    b.set_epoch(2).unwrap();
    b.write(b"k9", set("new")).unwrap();
    let b_records: Vec<u8> = b
        .read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|r| r.raw.to_vec())
        .collect();
    rt.block_on(async {
        m.leader_and_isr(1, 0, vec![state("b", 2, &["b", "a"])], vec![node("b")])
            .unwrap();
        let part = m.partition(0).unwrap().clone();
        wait_until("a follows b", || part.follows("b", 2)).await;
    });
    e.truncate(0).unwrap();
    assert_eq!(e.append_replicated(&b_records).unwrap(), 1);

    release.send(()).unwrap();
    let answer = rt.block_on(paused).unwrap();
    assert!(
        matches!(answer, Err(crate::Error::NotLeader { partition: 0, .. })),
        "{fsync:?}: {answer:?}"
    );
    // Let anything still queued reach the disk before looking.
    crate::storage::Engine::flush(&*e).unwrap();
    assert_eq!(log_of(&e), vec![(0, 2, "k9".to_string())], "{fsync:?}");
    assert_eq!(e.written_end(), 1, "{fsync:?}");
    // A commit stamped with the old epoch is refused as well.
    assert!(matches!(
        e.commit_at(1, 1),
        Err(crate::storage::Error::NotLeader(_))
    ));
    assert_eq!(e.committed(), 0);
    drop(rt);
}

/// A partition over a fresh engine, leading at epoch 1 with `isr`, every
/// other replica of `replicas` known at log end 0.
fn leader_partition(isr: &[&str], replicas: &[&str]) -> (TempDir, Arc<Bitcask>, Partition) {
    let (dir, e) = engine(Durability::Never);
    e.set_epoch(1).unwrap();
    let log: Arc<dyn ReplicaLog> = e.clone();
    let part = Partition::new(0, log);
    let now = Instant::now();
    part.state.lock().role = RoleState::Leader(LeaderState {
        epoch: 1,
        node_epoch: 0,
        isr: isr.iter().map(|s| s.to_string()).collect(),
        zk_version: 1,
        controller_epoch: 1,
        replicas: replicas.iter().map(|s| s.to_string()).collect(),
        epoch_start: 0,
        followers: replicas
            .iter()
            .filter(|r| **r != "a")
            .map(|r| {
                (
                    r.to_string(),
                    FollowerProgress {
                        leo: 0,
                        caught_up_at: now,
                        last_fetch: None,
                    },
                )
            })
            .collect(),
        isr_change_in_flight: false,
        joining: None,
    });
    part.progress.send_modify(|p| p.leading = Some(1));
    (dir, e, part)
}

/// Bug 11 of issue 10 (KIP-497): while the compare-and-set adding a
/// follower to the ISR is in flight, the high watermark counts it, so it
/// does not advance past that follower on the old ISR alone.
#[test]
fn the_high_watermark_counts_a_pending_isr_addition() {
    let (_dir, e, part) = leader_partition(&["a", "b"], &["a", "b", "c"]);
    for k in ["k0", "k1"] {
        e.write_at(k.as_bytes(), set("v"), 1).unwrap();
    }
    // c catches up to 2: its addition goes to ZooKeeper.
    let note = part.note_fetch("a", "c", 2, 1, 1).unwrap();
    assert_eq!(
        note.isr_change,
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(note.commit, None, "b is still at 0");
    for k in ["k2", "k3"] {
        e.write_at(k.as_bytes(), set("v"), 1).unwrap();
    }
    // b reaches 4 while the addition is pending: c (at 2) holds it back.
    let note = part.note_fetch("a", "b", 4, 1, 1).unwrap();
    assert_eq!(note.isr_change, None);
    assert_eq!(note.commit, Some((2, 1)));
    part.publish_hw(2);
    // Written: c is a member; it reaching 4 moves the high watermark.
    assert!(part.adopt_isr(1, vec!["a".into(), "b".into(), "c".into()], 2));
    assert_eq!(part.hw_candidate("a", 1), None);
    let note = part.note_fetch("a", "c", 4, 1, 1).unwrap();
    assert_eq!(note.commit, Some((4, 1)));

    // A failed addition stops counting the follower.
    let (_dir, e, part) = leader_partition(&["a", "b"], &["a", "b", "c"]);
    e.write_at(b"k0", set("v"), 1).unwrap();
    let note = part.note_fetch("a", "c", 1, 1, 1).unwrap();
    assert!(note.isr_change.is_some());
    e.write_at(b"k1", set("v"), 1).unwrap();
    assert_eq!(
        part.note_fetch("a", "b", 2, 1, 1).unwrap().commit,
        Some((1, 1))
    );
    part.isr_change_failed();
    assert_eq!(part.hw_candidate("a", 1), Some((2, 1)));
}

/// Bug 13 of issue 10: four partitions led here, each with 1 MiB values.
/// Every answer fits the 4 MiB message limit; the first record of an
/// answer always goes, a later partition's only if it fits what is left,
/// and each answer starts with another partition.
#[test]
fn fetch_answers_fit_the_message_limit_with_maximal_values() {
    use crate::proto::replication as pb;
    use prost::Message;

    let rt = runtime(2);
    let mut dirs = Vec::new();
    let mut logs: Vec<Arc<dyn ReplicaLog>> = Vec::new();
    for _ in 0..4 {
        let (dir, e) = engine(Durability::Never);
        dirs.push(dir);
        logs.push(e);
    }
    let opts = ClusterOptions {
        min_insync: 2,
        fetch_max_bytes: (3 << 20) + (512 << 10),
        ..ClusterOptions::default()
    };
    let max_record = 1024 + (1 << 20) + 64;
    let m = {
        let _in = rt.enter();
        ReplicaManager::new(node("a"), opts, logs, Duration::from_secs(2), max_record)
    };
    assert_eq!(m.message_limit(), 4 << 20);
    let value = "x".repeat(1 << 20);
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        let states = (0..4)
            .map(|p| LeaderAndIsr {
                partition: p,
                ..state("a", 1, &["a", "b"])
            })
            .collect();
        m.leader_and_isr(1, 0, states, vec![node("b")]).unwrap();
        wait_until("a leads all", || {
            (0..4).all(|p| matches!(m.role(p), Role::Leader { .. }))
        })
        .await;
        for p in 0..4 {
            for n in 0..2 {
                let key = Bytes::from(format!("p{p}-{n}"));
                let acks = crate::node::Acks::Leader;
                m.write(p, key, set(&value), acks).await.unwrap();
            }
        }
        let request = pb::FetchRequest {
            follower_id: "b".into(),
            max_bytes: u32::MAX,
            max_wait_ms: 0,
            partitions: (0..4)
                .map(|partition| pb::PartitionFetch {
                    partition,
                    offset: 0,
                    leader_epoch: 1,
                })
                .collect(),
            ..Default::default()
        };
        for (turn, want) in [(0, [1, 1, 1, 0]), (1, [0, 1, 1, 1]), (3, [1, 1, 0, 1])] {
            let answer = m.fetch(request.clone(), turn, 0).await.unwrap();
            let counts: Vec<u32> = answer.partitions.iter().map(|d| d.record_count).collect();
            assert_eq!(counts, want, "turn {turn}");
            assert!(answer.encoded_len() <= 4 << 20, "{}", answer.encoded_len());
        }
    });
    drop(m);
    drop(rt);
}

/// A cluster node over two partitions in `dir`, with its manager attached
/// to the fake ZooKeeper layer; partition 0 led here, partition 1 by
/// `p1_leader`.
fn cluster_node(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    p1_leader: &str,
) -> (crate::node::Node, Arc<ReplicaManager>) {
    let config = crate::config::Config {
        data_dir: dir.to_path_buf(),
        partitions: 2,
        cluster: Some(ClusterOptions {
            min_insync: 1,
            ..ClusterOptions::default()
        }),
        ..crate::config::Config::default()
    };
    let _in = rt.enter();
    let (n, m) =
        crate::node::Node::open_cluster(&config, node("a"), Arc::new(SystemClock)).unwrap();
    m.attach(Arc::new(FakeCluster));
    let states = vec![
        state("a", 1, &["a"]),
        LeaderAndIsr {
            partition: 1,
            ..state(p1_leader, 1, &[p1_leader])
        },
    ];
    m.leader_and_isr(1, 0, states, vec![node("b")]).unwrap();
    rt.block_on(wait_until("the roles", || {
        matches!(m.role(0), Role::Leader { .. })
            && (p1_leader != "a" || matches!(m.role(1), Role::Leader { .. }))
    }));
    (n, m)
}

/// A key of partition `p` (of 2).
fn key_in(p: u32) -> Bytes {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| crate::cluster::partition_for(k.as_bytes(), 2) == p)
        .map(Bytes::from)
        .unwrap()
}

/// Bug 14 (b) of issue 10: `DEL a ""` with `a` led elsewhere is refused
/// as a bad request, not NOT_LEADER for `a` (on which a router forwarded
/// `a`, deleting it, and then failed on the empty key).
#[test]
fn a_multi_key_del_validates_every_key_before_leadership() {
    let rt = runtime(2);
    let dir = TempDir::new().unwrap();
    let (n, _m) = cluster_node(dir.path(), &rt, "b");
    let r = rt.block_on(n.del(vec![key_in(1), Bytes::new()], crate::node::Acks::Leader));
    assert!(matches!(r, Err(crate::Error::InvalidInput(_))), "{r:?}");
    drop(rt);
}

/// Bug 14 (b) of issue 10: a multi-key DEL that loses the leadership of
/// its second key's partition after deleting the first does not answer
/// NOT_LEADER (which promises nothing was written).
#[cfg(feature = "failpoints")]
#[test]
fn a_partly_applied_del_is_not_answered_not_leader() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    let _one = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime(4);
    let dir = TempDir::new().unwrap();
    let (n, m) = cluster_node(dir.path(), &rt, "a");
    let n = Arc::new(n);
    let acks = crate::node::Acks::Leader;
    let args = crate::node::SetArgs {
        ttl_ms: None,
        condition: crate::storage::Condition::Always,
        acks,
    };
    for p in 0..2 {
        assert!(
            rt.block_on(n.set(key_in(p), Bytes::from("v"), args))
                .unwrap()
        );
    }
    // The DEL's second write stops after its leadership check.
    let (reached_tx, reached) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let reached_tx = std::sync::Mutex::new(reached_tx);
    let released = std::sync::Mutex::new(released);
    let calls = AtomicUsize::new(0);
    fail::cfg_callback("replication::write_after_check", move || {
        if calls.fetch_add(1, Ordering::SeqCst) == 1 {
            let _ = reached_tx.lock().unwrap().send(());
            let _ = released.lock().unwrap().recv();
        }
    })
    .unwrap();
    let del = {
        let n = n.clone();
        rt.spawn(async move { n.del(vec![key_in(0), key_in(1)], acks).await })
    };
    reached.recv_timeout(Duration::from_secs(10)).unwrap();
    fail::remove("replication::write_after_check");
    rt.block_on(async {
        let moved = LeaderAndIsr {
            partition: 1,
            ..state("b", 2, &["b", "a"])
        };
        m.leader_and_isr(1, 0, vec![moved], vec![node("b")])
            .unwrap();
        let part = m.partition(1).unwrap().clone();
        wait_until("a follows b on partition 1", || part.follows("b", 2)).await;
    });
    release.send(()).unwrap();
    let r = rt.block_on(del).unwrap();
    match &r {
        Err(crate::Error::Unavailable(why)) => {
            assert!(why.starts_with("1 of 2 keys were written"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let consistency = crate::node::Consistency::Leader;
    assert_eq!(rt.block_on(n.get(key_in(0), consistency)).unwrap(), None);
    drop(rt);
}

/// Records of `keys` (each set to `v`) written by a leader at `epoch`, as
/// a follower fetches them.
fn leader_records(epoch: u32, keys: &[&str]) -> Vec<u8> {
    let (_dir, b) = engine(Durability::Never);
    b.set_epoch(epoch).unwrap();
    for k in keys {
        b.write(k.as_bytes(), set("v")).unwrap();
    }
    b.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .flat_map(|r| r.raw.to_vec())
        .collect()
}

/// A node `a` over partition 0 of 1 whose log holds `keys` (set by the
/// leader b at epoch 1) above its commit point 0, then made leader at
/// epoch 2 with `isr`; `wait` bounds the barrier.
fn takeover_node(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    keys: &[&str],
    isr: &[&str],
) -> (crate::node::Node, Arc<ReplicaManager>) {
    let config = crate::config::Config {
        data_dir: dir.to_path_buf(),
        partitions: 1,
        server: crate::config::ServerOptions {
            request_timeout_ms: 300,
            ..Default::default()
        },
        cluster: Some(ClusterOptions {
            min_insync: 1,
            ..ClusterOptions::default()
        }),
        ..crate::config::Config::default()
    };
    let _in = rt.enter();
    let (n, m) =
        crate::node::Node::open_cluster(&config, node("a"), Arc::new(SystemClock)).unwrap();
    m.attach(Arc::new(FakeCluster));
    m.leader_and_isr(1, 0, vec![state("b", 1, &["b", "a"])], vec![node("b")])
        .unwrap();
    // A fresh data directory: the notice assigning partition 0 opens its
    // engine, in the background.
    rt.block_on(wait_until("partition 0 is open", || m.partition(0).is_ok()));
    let part = m.partition(0).unwrap().clone();
    rt.block_on(wait_until("a follows b", || part.follows("b", 1)));
    let records = leader_records(1, keys);
    assert_eq!(part.log.append(&records, 0).unwrap(), keys.len());
    assert_eq!(part.log.committed(), 0);
    m.leader_and_isr(1, 0, vec![state("a", 2, isr)], vec![node("b")])
        .unwrap();
    rt.block_on(wait_until("a leads", || {
        matches!(m.role(0), Role::Leader { .. })
    }));
    (n, m)
}

/// Torture finding (pause-near-expiry, seed 947592418): a new leader's
/// answers to state-dependent writes (DEL's count, SET NX/XX, EXPIRE's
/// "existed") are decided on a state that includes every record of the
/// log it took over with, also the records it appended as a follower and
/// has not committed yet. Here the takeover commits at once (the ISR is
/// just this node).
#[test]
fn a_new_leaders_conditional_writes_see_its_uncommitted_log() {
    use crate::node::{Acks, Consistency, SetArgs};
    use crate::storage::Condition;
    let rt = runtime(2);
    let dir = TempDir::new().unwrap();
    let (n, _m) = takeover_node(dir.path(), &rt, &["d", "nx", "xx", "ex"], &["a"]);
    let args = |condition| SetArgs {
        ttl_ms: None,
        condition,
        acks: Acks::All,
    };
    rt.block_on(async {
        assert_eq!(n.del(vec![Bytes::from("d")], Acks::All).await.unwrap(), 1);
        let nx = n.set(
            Bytes::from("nx"),
            Bytes::from("w"),
            args(Condition::IfAbsent),
        );
        assert!(!nx.await.unwrap());
        let xx = n.set(
            Bytes::from("xx"),
            Bytes::from("w"),
            args(Condition::IfPresent),
        );
        assert!(xx.await.unwrap());
        assert!(
            n.expire(Bytes::from("ex"), 60_000, Acks::All)
                .await
                .unwrap()
        );
        let get = |k: &'static str| n.get(Bytes::from(k), Consistency::Leader);
        assert_eq!(get("d").await.unwrap(), None);
        assert_eq!(get("nx").await.unwrap(), Some(Bytes::from("v")));
        assert_eq!(get("xx").await.unwrap(), Some(Bytes::from("w")));
    });
    drop(rt);
}

/// The same takeover with a follower that never fetches: the high
/// watermark stays below the log end the leader took over with, so no
/// answer of this leader may be given from its committed state alone.
/// Reads wait for the barrier and time out; writes whose answer depends on
/// the key's state are decided on the whole log (`acks: leader` answers
/// at once, from the uncommitted records) or wait like reads.
#[test]
fn a_new_leader_behind_its_barrier_answers_nothing_from_the_committed_state_alone() {
    use crate::node::{Acks, Consistency, SetArgs};
    use crate::storage::Condition;
    let rt = runtime(2);
    let dir = TempDir::new().unwrap();
    let (n, m) = takeover_node(dir.path(), &rt, &["d", "nx", "xx", "ex"], &["a", "b"]);
    assert_eq!(m.partition(0).unwrap().progress.borrow().hw, 0);
    let args = |condition| SetArgs {
        ttl_ms: None,
        condition,
        acks: Acks::Leader,
    };
    rt.block_on(async {
        let get = n.get(Bytes::from("d"), Consistency::Leader).await;
        assert!(matches!(get, Err(crate::Error::Timeout(_))), "{get:?}");
        let del = n.del(vec![Bytes::from("d")], Acks::Leader).await;
        assert!(
            !matches!(del, Ok(0)),
            "DEL answered from the committed state: {del:?}"
        );
        let nx = n
            .set(
                Bytes::from("nx"),
                Bytes::from("w"),
                args(Condition::IfAbsent),
            )
            .await;
        assert!(
            !matches!(nx, Ok(true)),
            "SET NX answered from the committed state: {nx:?}"
        );
        let xx = n
            .set(
                Bytes::from("xx"),
                Bytes::from("w"),
                args(Condition::IfPresent),
            )
            .await;
        assert!(
            !matches!(xx, Ok(false)),
            "SET XX answered from the committed state: {xx:?}"
        );
        let ex = n.expire(Bytes::from("ex"), 60_000, Acks::Leader).await;
        assert!(
            !matches!(ex, Ok(false)),
            "EXPIRE answered from the committed state: {ex:?}"
        );
    });
    drop(rt);
}

/// The same decision after a restart: records above the commit point are
/// read back as pending at open, and a state-dependent write of the new
/// leader sees them.
#[test]
fn a_restarted_new_leaders_conditional_writes_see_its_uncommitted_log() {
    use crate::node::Acks;
    let rt = runtime(2);
    let dir = TempDir::new().unwrap();
    let opts = Options {
        fsync: Durability::Never,
        ..Options::default()
    };
    {
        let e = Bitcask::open_replica(dir.path(), opts.clone(), Arc::new(SystemClock)).unwrap();
        let records = leader_records(1, &["d", "xx"]);
        assert_eq!(e.append_replicated(&records).unwrap(), 2);
        crate::storage::Engine::flush(&e).unwrap();
    }
    let e = Arc::new(Bitcask::open_replica(dir.path(), opts, Arc::new(SystemClock)).unwrap());
    assert_eq!((e.committed(), e.written_end()), (0, 2));
    let log: Arc<dyn ReplicaLog> = e.clone();
    let cluster = ClusterOptions {
        min_insync: 1,
        ..ClusterOptions::default()
    };
    let m = {
        let _in = rt.enter();
        ReplicaManager::new(
            node("a"),
            cluster,
            vec![log],
            Duration::from_millis(300),
            2 << 20,
        )
    };
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        m.leader_and_isr(1, 0, vec![state("a", 2, &["a", "b"])], vec![node("b")])
            .unwrap();
        wait_until("a leads", || matches!(m.role(0), Role::Leader { .. })).await;
        assert_eq!(m.partition(0).unwrap().progress.borrow().hw, 0);
        let del = m.write(0, Bytes::from("d"), WriteOp::Delete, Acks::Leader);
        assert!(
            del.await.unwrap(),
            "DEL of a key set above the commit point"
        );
        let xx = WriteOp::Set(
            Bytes::from("w"),
            SetOptions {
                condition: crate::storage::Condition::IfPresent,
                ..SetOptions::default()
            },
        );
        let xx = m.write(0, Bytes::from("xx"), xx, Acks::Leader);
        assert!(
            xx.await.unwrap(),
            "SET XX of a key set above the commit point"
        );
    });
    drop(m);
    drop(rt);
}

/// `hosted_state` (behind `Metadata`, RESP `WAIT` and `INFO`) must not
/// hold the high watermark's read lock while it takes the partition's
/// state lock: `hw_candidate` takes them in the other order, and with a
/// `publish_hw` writer waiting in between (parking_lot's lock makes new
/// readers wait behind a waiting writer) the three deadlock, which froze a
/// node under SET + WAIT in the cluster benchmark. The failpoint holds
/// `hosted_state` just before it takes the state lock for the offsets; a
/// high watermark writer must still get through.
#[cfg(feature = "failpoints")]
#[test]
fn hosted_state_does_not_hold_the_high_watermark_while_taking_the_state_lock() {
    let _one = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime(2);
    let dir = TempDir::new().unwrap();
    let (_n, m) = takeover_node(dir.path(), &rt, &["d"], &["a", "b"]);
    let part = m.partition(0).unwrap();
    let name = "replication::hosted_state_offsets";
    let (reached, release) = pause_at(name);
    let writer_done = std::thread::scope(|s| {
        let reader = s.spawn(|| m.hosted_state(&part));
        reached
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("hosted_state reaches the failpoint");
        let (tx, rx) = std::sync::mpsc::channel();
        let p = &part;
        s.spawn(move || {
            p.progress.send_modify(|_| {});
            let _ = tx.send(());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(2)).is_ok();
        let _ = release.send(());
        reader.join().unwrap();
        fail::remove(name);
        done
    });
    assert!(
        writer_done,
        "a high watermark writer waited for hosted_state's read lock"
    );
    drop(rt);
}
