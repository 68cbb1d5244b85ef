//! The partition table follows this node's assignments: a state that adds
//! this node to a partition's `replicas` opens its engine, one that
//! removes it closes it (ending its role first: a write in flight is
//! answered), one that adds it again reopens the data it kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tempfile::TempDir;

use super::{FakeCluster, set, wait_until};
use crate::cluster::{Coordinator, LeaderAndIsr, NodeAddr, Role};
use crate::config::ClusterOptions;
use crate::error::{Error, Result};
use crate::node::Acks;
use crate::replication::{Engines, ReplicaLog, ReplicaManager};
use crate::storage::{Bitcask, Durability, Options, SystemClock};

/// Real engines under one temporary directory, counting opens and closes.
struct Dirs {
    /// Holds `<p>/` per partition.
    root: TempDir,
    /// Engines open now.
    open: Mutex<HashMap<u32, Arc<Bitcask>>>,
    /// Every open and close, in order: `(partition, true = open)`.
    events: Mutex<Vec<(u32, bool)>>,
}

impl Engines for Dirs {
    fn open(&self, p: u32) -> Result<Arc<dyn ReplicaLog>> {
        let opts = Options {
            fsync: Durability::Never,
            ..Options::default()
        };
        let dir = self.root.path().join(p.to_string());
        let e = Arc::new(Bitcask::open_replica(dir, opts, Arc::new(SystemClock))?);
        self.open.lock().insert(p, e.clone());
        self.events.lock().push((p, true));
        Ok(e)
    }

    fn close(&self, p: u32, _log: &Arc<dyn ReplicaLog>) -> Result<()> {
        if let Some(e) = self.open.lock().remove(&p) {
            e.close()?;
        }
        self.events.lock().push((p, false));
        Ok(())
    }
}

/// Node `id` with its own client address (port `port`); nothing listens
/// on its replication address.
fn node_at(id: &str, port: u16) -> NodeAddr {
    NodeAddr {
        id: id.into(),
        client_addr: format!("127.0.0.1:{port}"),
        replication_addr: "127.0.0.1:1".into(),
    }
}

/// Partition `p`'s state: `leader` at `epoch`, `replicas`, all in sync.
fn st(p: u32, leader: &str, epoch: u32, replicas: &[&str]) -> LeaderAndIsr {
    let r: Vec<String> = replicas.iter().map(|s| s.to_string()).collect();
    LeaderAndIsr {
        partition: p,
        leader: Some(leader.into()),
        leader_epoch: epoch,
        replicas: r.clone(),
        isr: r,
        controller_epoch: 1,
        zk_version: epoch as i32,
        leader_node_epoch: 0,
    }
}

fn nodes() -> Vec<NodeAddr> {
    vec![node_at("a", 7001), node_at("b", 7002), node_at("c", 7003)]
}

/// Node `a` over 4 partitions, none open; `min_insync` 2, acks waits of
/// 20 s (longer than any wait of the test).
fn manager() -> (Arc<ReplicaManager>, Arc<Dirs>) {
    let dirs = Arc::new(Dirs {
        root: TempDir::new().unwrap(),
        open: Mutex::new(HashMap::new()),
        events: Mutex::new(Vec::new()),
    });
    let opts = ClusterOptions {
        min_insync: 2,
        ..ClusterOptions::default()
    };
    let m = ReplicaManager::hosting(
        node_at("a", 7001),
        opts,
        4,
        dirs.clone(),
        Vec::new(),
        Duration::from_secs(20),
        2 << 20,
    );
    m.attach(Arc::new(FakeCluster));
    (m, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_changes_open_and_close_engines_and_a_write_in_flight_is_answered() {
    let (m, dirs) = manager();
    assert_eq!(m.hosted_ids(), Vec::<u32>::new());
    // a leads 0, follows 2; 1 and 3 are not assigned to it.
    m.leader_and_isr(
        1,
        0,
        vec![
            st(0, "a", 1, &["a", "b"]),
            st(1, "b", 1, &["b", "c"]),
            st(2, "b", 1, &["b", "a"]),
            st(3, "c", 1, &["c", "b"]),
        ],
        nodes(),
    )
    .unwrap();
    wait_until("0 and 2 open", || m.hosted_ids() == vec![0, 2]).await;
    wait_until("a leads 0", || matches!(m.role(0), Role::Leader { .. })).await;
    // (0 and 2 open concurrently, in either order.)
    dirs.events.lock().sort();
    assert_eq!(*dirs.events.lock(), vec![(0, true), (2, true)]);
    assert_eq!(dirs.open.lock().len(), 2);
    // Not hosted: NOT_LEADER naming the leader's client address.
    let b = Some("127.0.0.1:7002".to_string());
    let c = Some("127.0.0.1:7003".to_string());
    assert_eq!(m.role(1), Role::NotLeader { leader: b.clone() });
    assert_eq!(m.role(3), Role::NotLeader { leader: c });
    assert_eq!(
        m.engine(1).err(),
        Some(Error::NotLeader {
            partition: 1,
            leader: b.clone()
        })
    );
    let states = m.partitions();
    let offsets: Vec<usize> = states.iter().map(|s| s.offsets.len()).collect();
    // 0: a's own log end (its follower b has not fetched since the
    // leadership began, so the leader reports no offset for it); 1, 3:
    // nothing here; 2: a's own log end.
    assert_eq!(offsets, vec![1, 0, 1, 0]);
    assert_eq!(states[3].leader.as_deref(), Some("c"));

    // An `acks: all` write on 0 waits for b, which never fetches.
    let acked = m
        .write(0, Bytes::from("k"), set("v"), Acks::Leader)
        .await
        .unwrap();
    assert!(acked);
    let waiting = {
        let m = m.clone();
        tokio::spawn(async move { m.write(0, Bytes::from("k2"), set("v2"), Acks::All).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());

    // 0 moves to b and c: a closes it; the write in flight is answered.
    m.leader_and_isr(1, 0, vec![st(0, "b", 2, &["b", "c"])], nodes())
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the write in flight is answered")
        .unwrap();
    assert!(matches!(answer, Err(Error::Unavailable(_))), "{answer:?}");
    wait_until("0 closed", || m.hosted_ids() == vec![2]).await;
    wait_until("0's engine closed", || dirs.events.lock().len() == 3).await;
    assert_eq!(*dirs.events.lock(), vec![(0, true), (2, true), (0, false)]);
    assert_eq!(
        m.write(0, Bytes::from("k3"), set("v3"), Acks::Leader)
            .await
            .unwrap_err(),
        Error::NotLeader {
            partition: 0,
            leader: b.clone()
        }
    );
    assert_eq!(m.role(0), Role::NotLeader { leader: b.clone() });
    assert_eq!(m.log_end_offsets(&[0, 1, 2]).len(), 1);
    // The data directory stays.
    assert!(dirs.root.path().join("0").is_dir());

    // Assigned again (b leads): the kept log is reopened, 2 records.
    m.leader_and_isr(1, 0, vec![st(0, "b", 3, &["b", "a"])], nodes())
        .unwrap();
    wait_until("0 open again", || m.hosted_ids() == vec![0, 2]).await;
    assert_eq!(
        *dirs.events.lock(),
        vec![(0, true), (2, true), (0, false), (0, true)]
    );
    assert_eq!(m.partition(0).unwrap().log.written_end(), 2);
    assert_eq!(m.role(0), Role::NotLeader { leader: b });
}

/// States arriving while an engine opens are not lost: the newest wins,
/// and a notice's grant reaches the replica once it is open.
#[tokio::test(flavor = "current_thread")]
async fn states_arriving_while_an_engine_opens_are_applied_newest_first() {
    let (m, dirs) = manager();
    // On a current-thread runtime nothing runs until this task yields:
    // both notices arrive before the engine is open.
    m.leader_and_isr(1, 0, vec![st(1, "b", 1, &["b", "a"])], nodes())
        .unwrap();
    m.leader_and_isr(1, 0, vec![st(1, "a", 2, &["a", "b"])], nodes())
        .unwrap();
    assert_eq!(m.hosted_ids(), Vec::<u32>::new());
    wait_until("a leads 1 at epoch 2", || {
        matches!(m.role(1), Role::Leader { epoch: 2, .. })
    })
    .await;
    assert_eq!(m.hosted_ids(), vec![1]);
    assert_eq!(*dirs.events.lock(), vec![(1, true)]);
    // Added and removed before its worker ran: never opened.
    m.leader_and_isr(1, 0, vec![st(3, "b", 1, &["b", "a"])], nodes())
        .unwrap();
    m.leader_and_isr(1, 0, vec![st(3, "b", 2, &["b", "c"])], nodes())
        .unwrap();
    // An older state arriving late changes nothing.
    m.leader_and_isr(1, 0, vec![st(3, "b", 1, &["b", "a"])], nodes())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(m.hosted_ids(), vec![1]);
    assert_eq!(*dirs.events.lock(), vec![(1, true)]);
    assert_eq!(m.learned(3).map(|s| s.leader_epoch), Some(2));
}

/// A leader write paused after its leadership check while its partition
/// is closed (this node left its replicas): once released it is refused,
/// and nothing reaches the engine it was admitted to.
#[cfg(feature = "failpoints")]
#[test]
fn a_write_paused_while_its_partition_closes_is_refused_and_not_written() {
    use super::pause_at;
    let _one = super::FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    let rt = super::runtime(4);
    let (m, dirs) = {
        let _in = rt.enter();
        manager()
    };
    rt.block_on(async {
        m.leader_and_isr(1, 0, vec![st(0, "a", 1, &["a", "b"])], nodes())
            .unwrap();
        wait_until("a leads 0", || matches!(m.role(0), Role::Leader { .. })).await;
    });
    let engine = dirs.open.lock()[&0].clone();

    let (reached, release) = pause_at("replication::write_after_check");
    let paused = {
        let m = m.clone();
        rt.spawn(async move {
            m.write(0, Bytes::from("k"), set("zombie"), Acks::Leader)
                .await
        })
    };
    reached.recv_timeout(Duration::from_secs(10)).unwrap();
    fail::remove("replication::write_after_check");

    rt.block_on(async {
        m.leader_and_isr(1, 0, vec![st(0, "b", 2, &["b", "c"])], nodes())
            .unwrap();
        wait_until("0's engine closed", || dirs.events.lock().len() == 2).await;
    });
    assert_eq!(m.hosted_ids(), Vec::<u32>::new());
    release.send(()).unwrap();
    let answer = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), paused).await })
        .expect("the paused write is answered")
        .unwrap();
    assert_eq!(
        answer,
        Err(Error::NotLeader {
            partition: 0,
            leader: Some("127.0.0.1:7002".into())
        })
    );
    assert_eq!(engine.written_end(), 0);
    assert_eq!(engine.read_log(0, usize::MAX).unwrap().len(), 0);
    drop(rt);
}
