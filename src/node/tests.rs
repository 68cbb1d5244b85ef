use bytes::Bytes;

use super::*;
use crate::cluster::Role;
use crate::config::EngineKind;
use crate::storage::{ManualClock, Ttl};

fn node(dir: &Path, clock: Arc<ManualClock>) -> Node {
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    Node::open_standalone(&config, "127.0.0.1:7379".into(), clock).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

const SET: SetArgs = SetArgs {
    ttl_ms: None,
    condition: Condition::Always,
    acks: Acks::All,
};

#[tokio::test]
async fn commands_and_ttl_with_a_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let n = node(dir.path(), clock.clone());
    assert!(n.set(b("a"), b("1"), SET).await.unwrap());
    assert_eq!(
        n.get(b("a"), Consistency::Leader).await.unwrap(),
        Some(b("1"))
    );
    let nx = SetArgs {
        condition: Condition::IfAbsent,
        ..SET
    };
    assert!(!n.set(b("a"), b("2"), nx).await.unwrap());
    assert_eq!(
        n.ttl(b("a"), Consistency::Any).await.unwrap(),
        Ttl::Persistent
    );
    assert!(n.expire(b("a"), 1500, Acks::Leader).await.unwrap());
    assert_eq!(
        n.ttl(b("a"), Consistency::Leader).await.unwrap(),
        Ttl::ExpiresInMs(1500)
    );
    clock.advance(1500);
    assert_eq!(n.get(b("a"), Consistency::Leader).await.unwrap(), None);
    assert_eq!(
        n.ttl(b("a"), Consistency::Leader).await.unwrap(),
        Ttl::Missing
    );
    n.set(b("x"), b("1"), SET).await.unwrap();
    n.set(b("y"), b("1"), SET).await.unwrap();
    let keys = vec![b("x"), b("y"), b("x"), b("z")];
    assert_eq!(
        n.exists(keys.clone(), Consistency::Leader).await.unwrap(),
        3
    );
    assert_eq!(n.del(keys, Acks::All).await.unwrap(), 2);
}

#[tokio::test]
async fn edge_validation_messages() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), Arc::new(ManualClock::new(5)));
    let err = |r: Result<bool>| r.unwrap_err().to_string();
    assert_eq!(err(n.set(b(""), b("v"), SET).await), "empty key");
    assert_eq!(
        err(n.set(Bytes::from(vec![b'k'; 1025]), b("v"), SET).await),
        "key is 1025 bytes, the limit is 1024"
    );
    assert_eq!(
        err(n
            .set(b("k"), Bytes::from(vec![0; (1 << 20) + 1]), SET)
            .await),
        "value is 1048577 bytes, the limit is 1048576"
    );
    let ttl = |ms| SetArgs {
        ttl_ms: Some(ms),
        ..SET
    };
    assert_eq!(
        err(n.set(b("k"), b("v"), ttl(0)).await),
        "TTL must be at least 1 ms"
    );
    assert_eq!(
        err(n.set(b("k"), b("v"), ttl(u64::MAX)).await),
        "TTL of 18446744073709551615 ms is out of range"
    );
    assert_eq!(
        err(n.expire(b("k"), i64::MAX as u64, Acks::All).await),
        "TTL of 9223372036854775807 ms is out of range"
    );
    assert_eq!(
        n.del(vec![], Acks::All).await.unwrap_err().to_string(),
        "at least one key is required"
    );
}

/// A coordinator with one fixed role for every partition: the
/// cluster-facing paths of the node, driven without a cluster.
struct FixedRole(Role);

impl Coordinator for FixedRole {
    fn mode(&self) -> &'static str {
        "cluster"
    }
    fn role(&self, _partition: u32) -> Role {
        self.0.clone()
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        Vec::new()
    }
    fn partitions(&self) -> Vec<PartitionState> {
        Vec::new()
    }
}

fn node_with(dir: &Path, role: Role) -> Node {
    let config = Config {
        data_dir: dir.to_path_buf(),
        engine: EngineKind::Memory,
        ..Config::default()
    };
    let info = NodeInfo {
        id: "n2".into(),
        client_addr: "10.0.0.2:7379".into(),
    };
    Node::open(
        &config,
        info,
        Arc::new(FixedRole(role)),
        Arc::new(ManualClock::new(0)),
    )
    .unwrap()
}

#[tokio::test]
async fn follower_refuses_writes_and_leader_reads_but_serves_any() {
    let dir = tempfile::tempdir().unwrap();
    let n = node_with(
        dir.path(),
        Role::NotLeader {
            leader: Some("10.0.0.1:7379".into()),
        },
    );
    // "hello" hashes to partition 3 of 8 (see the partitioner's tests).
    let not_leader = Error::NotLeader {
        partition: 3,
        leader: Some("10.0.0.1:7379".into()),
    };
    assert_eq!(
        n.set(b("hello"), b("1"), SET).await.unwrap_err(),
        not_leader
    );
    assert_eq!(
        n.del(vec![b("hello")], Acks::Leader).await.unwrap_err(),
        not_leader
    );
    assert_eq!(
        n.expire(b("hello"), 5, Acks::All).await.unwrap_err(),
        not_leader
    );
    assert_eq!(
        n.get(b("hello"), Consistency::Leader).await.unwrap_err(),
        not_leader
    );
    assert_eq!(n.get(b("hello"), Consistency::Any).await.unwrap(), None);
    assert_eq!(
        n.ttl(b("hello"), Consistency::Any).await.unwrap(),
        Ttl::Missing
    );
    assert_eq!(
        n.exists(vec![b("hello")], Consistency::Any).await.unwrap(),
        0
    );
    assert_eq!(n.mode(), "cluster");
}

#[tokio::test]
async fn acks_all_needs_min_insync() {
    let dir = tempfile::tempdir().unwrap();
    let n = node_with(
        dir.path(),
        Role::Leader {
            epoch: 4,
            isr: 1,
            min_insync: 2,
        },
    );
    assert_eq!(
        n.set(b("hello"), b("1"), SET).await.unwrap_err(),
        Error::NotEnoughReplicas {
            partition: 3,
            isr: 1,
            min_insync: 2
        }
    );
    // Nothing was written; acks: leader is accepted.
    assert_eq!(n.get(b("hello"), Consistency::Leader).await.unwrap(), None);
    let leader_acks = SetArgs {
        acks: Acks::Leader,
        ..SET
    };
    assert!(n.set(b("hello"), b("1"), leader_acks).await.unwrap());
    assert_eq!(
        n.get(b("hello"), Consistency::Leader).await.unwrap(),
        Some(b("1"))
    );
}

#[test]
fn second_open_of_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = node(dir.path(), Arc::new(ManualClock::new(0)));
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let err = Node::open_standalone(&config, "x:1".into(), Arc::new(ManualClock::new(0)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("is in use by another caskade-server"), "{err}");
}

#[test]
fn partition_count_cannot_change() {
    let dir = tempfile::tempdir().unwrap();
    drop(node(dir.path(), Arc::new(ManualClock::new(0))));
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        partitions: 16,
        ..Config::default()
    };
    let err = Node::open_standalone(&config, "x:1".into(), Arc::new(ManualClock::new(0)))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "data directory {} holds 8 partitions but the configuration asks for 16; \
             the partition count cannot change (keys would move)",
            dir.path().display()
        )
    );
}
