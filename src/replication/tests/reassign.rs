//! A reassignment step seen by the leader: a state at a higher epoch that
//! keeps this node leader and adds a replica. The leader leads on without
//! stepping down (a write admitted at the old epoch is acknowledged), and
//! the added replica holds the merge horizon back from the moment it is
//! listed, so a tombstone it has not passed survives a merge.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::{FakeCluster, node, set};
use crate::cluster::{Coordinator, LeaderAndIsr, Role};
use crate::config::ClusterOptions;
use crate::node::Acks;
use crate::replication::{ReplicaLog, ReplicaManager};
use crate::storage::{Bitcask, Durability, Options, SystemClock, WriteOp};

fn st(epoch: u32, replicas: &[&str], isr: &[&str]) -> LeaderAndIsr {
    LeaderAndIsr {
        partition: 0,
        leader: Some("a".into()),
        leader_epoch: epoch,
        replicas: replicas.iter().map(|s| s.to_string()).collect(),
        isr: isr.iter().map(|s| s.to_string()).collect(),
        controller_epoch: 1,
        zk_version: epoch as i32,
        leader_node_epoch: 0,
    }
}

/// Offsets of the records of key `k` with an empty value (its delete).
fn tombstones(e: &Bitcask) -> Vec<u64> {
    e.read_log(0, usize::MAX)
        .unwrap()
        .iter()
        .filter(|r| r.key() == b"k" && r.value().is_empty())
        .map(|r| r.header.offset)
        .collect()
}

#[test]
fn a_kept_leader_leads_on_and_an_added_replica_holds_the_merge_horizon() {
    let rt = super::runtime(2);
    let dir = TempDir::new().unwrap();
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes: 512,
        ..Options::default()
    };
    o.merge.dead_ratio = 0.0;
    o.limits.max_value_bytes = 200;
    o.limits.max_key_bytes = 32;
    let e = Arc::new(Bitcask::open_replica(dir.path(), o, Arc::new(SystemClock)).unwrap());
    let opts = ClusterOptions {
        min_insync: 2,
        replication_factor: 2,
        ..ClusterOptions::default()
    };
    let logs: Vec<Arc<dyn ReplicaLog>> = vec![e.clone()];
    let m = ReplicaManager::new(node("a"), opts, logs, Duration::from_secs(5), 2 << 20);
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        m.leader_and_isr(1, 0, vec![st(1, &["a", "b"], &["a", "b"])], vec![])
            .unwrap();
        super::wait_until("leading", || {
            matches!(m.role(0), Role::Leader { epoch: 1, .. })
        })
        .await;
        let part = m.partition(0).unwrap();
        // An `acks: all` write at epoch 1 waits for b.
        let pending = {
            let m = m.clone();
            tokio::spawn(async move { m.write(0, Bytes::from("w"), set("1"), Acks::All).await })
        };
        super::wait_until("written", || e.written_end() == 1).await;
        // The reassignment adds d (past the replication factor: being
        // added) at epoch 2; a still leads.
        m.leader_and_isr(1, 0, vec![st(2, &["a", "b", "d"], &["a", "b"])], vec![])
            .unwrap();
        super::wait_until("leading at 2", || {
            matches!(m.role(0), Role::Leader { epoch: 2, .. })
        })
        .await;
        assert!(!pending.is_finished());
        // b fetches past the write at epoch 2: the epoch-1 write is
        // acknowledged (it never left this leader's log).
        let note = part.note_fetch("a", "b", 1, 2, 2).unwrap();
        assert_eq!(note.commit, Some((1, 2)));
        m.commit(&part, 1, 2);
        let answer = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(answer, Ok(true));

        // d fetched "k" = old (offset 1), then k is deleted (offset 2)
        // and overwritten keys fill sealed segments; b is at the end.
        m.write(0, Bytes::from("k"), set("old"), Acks::Leader)
            .await
            .unwrap();
        m.write(0, Bytes::from("k"), WriteOp::Delete, Acks::Leader)
            .await
            .unwrap();
        if part
            .note_fetch("a", "d", 2, 2, 2)
            .unwrap()
            .isr_change
            .is_some()
        {
            // Its addition to the ISR (d reached the high watermark) is
            // not written here: it stays out of the ISR.
            part.isr_change_failed();
        }
        for i in 0..40 {
            let v = "z".repeat(60);
            m.write(0, Bytes::from(format!("f{}", i % 3)), set(&v), Acks::Leader)
                .await
                .unwrap();
        }
        let end = e.written_end();
        let note = part.note_fetch("a", "b", end, 2, 2).unwrap();
        m.commit(&part, note.commit.unwrap().0, 2);
        assert_eq!(e.committed(), end);
        // Horizon: d at 2. The tombstone at 2 survives a merge.
        m.maintain();
        e.merge().unwrap();
        assert_eq!(tombstones(&e), vec![2]);
        // d passed it: the next merge may drop it.
        part.note_fetch("a", "d", end, 2, 2).unwrap();
        m.maintain();
        e.merge().unwrap();
        assert_eq!(tombstones(&e), Vec::<u64>::new());
    });
    drop(m);
    drop(rt);
}

/// Real engines under one directory that delete a partition's directory
/// on `remove`.
struct Dirs {
    /// Holds `<p>/`.
    root: TempDir,
    /// Engines open now.
    open: parking_lot::Mutex<std::collections::HashMap<u32, Arc<Bitcask>>>,
}

impl crate::replication::Engines for Dirs {
    fn open(&self, p: u32) -> crate::error::Result<Arc<dyn ReplicaLog>> {
        let o = Options {
            fsync: Durability::Never,
            ..Options::default()
        };
        let dir = self.root.path().join(p.to_string());
        let e = Arc::new(Bitcask::open_replica(dir, o, Arc::new(SystemClock))?);
        self.open.lock().insert(p, e.clone());
        Ok(e)
    }

    fn close(&self, p: u32, _log: &Arc<dyn ReplicaLog>) -> crate::error::Result<()> {
        if let Some(e) = self.open.lock().remove(&p) {
            e.close()?;
        }
        Ok(())
    }

    fn remove(&self, p: u32) -> crate::error::Result<()> {
        std::fs::remove_dir_all(self.root.path().join(p.to_string()))
            .map_err(|e| crate::error::Error::Unavailable(e.to_string()))
    }
}

/// A state that leaves this node out deletes the partition's directory
/// only when its leader epoch is above every epoch of the data: one at
/// the data's own epoch (a newer znode version, no new epoch) only closes
/// the engine, and the data is there when the node is listed again.
#[test]
fn a_removed_replica_deletes_its_directory_only_on_a_state_newer_than_its_data() {
    let rt = super::runtime(2);
    let dirs = Arc::new(Dirs {
        root: TempDir::new().unwrap(),
        open: Default::default(),
    });
    let opts = ClusterOptions {
        min_insync: 1,
        ..ClusterOptions::default()
    };
    let m = ReplicaManager::hosting(
        node("a"),
        opts,
        1,
        dirs.clone(),
        Vec::new(),
        Duration::from_secs(5),
        2 << 20,
    );
    let pdir = dirs.root.path().join("0");
    let at = |epoch: u32, version: i32, replicas: &[&str]| {
        let mut s = st(epoch, replicas, &replicas[..1]);
        s.leader = Some(replicas[0].to_string());
        s.zk_version = version;
        s
    };
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        m.leader_and_isr(1, 0, vec![at(3, 3, &["a", "b"])], vec![])
            .unwrap();
        super::wait_until("leading", || {
            matches!(m.role(0), Role::Leader { epoch: 3, .. })
        })
        .await;
        m.write(0, Bytes::from("k"), set("v"), Acks::Leader)
            .await
            .unwrap();
        // Left out at the data's own epoch: closed, the directory stays.
        m.leader_and_isr(1, 0, vec![at(3, 9, &["b", "c"])], vec![])
            .unwrap();
        super::wait_until("closed", || dirs.open.lock().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pdir.is_dir());
        // Listed again: the data is there.
        m.leader_and_isr(1, 0, vec![at(4, 10, &["b", "a"])], vec![])
            .unwrap();
        super::wait_until("open again", || m.hosted_ids() == vec![0]).await;
        assert_eq!(m.partition(0).unwrap().log.written_end(), 1);
        // Removed at epoch 5: closed and deleted.
        m.leader_and_isr(1, 0, vec![at(5, 11, &["b", "c"])], vec![])
            .unwrap();
        super::wait_until("deleted", || !pdir.exists()).await;
        assert!(m.hosted_ids().is_empty());
    });
    drop(m);
    drop(rt);
}
