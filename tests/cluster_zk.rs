//! The ZooKeeper coordination layer ([`caskade::cluster::ZkCluster`])
//! against a real ZooKeeper (Debian's package, through `scripts/zk.sh`).
//!
//! Only the nodes' side is faked: a recording [`StateListener`] per node
//! and one [`NodeRpc`] per test that records the controller's calls and
//! answers configured log end offsets. ZooKeeper is never mocked.
//!
//! Tests that do not stop ZooKeeper share one standalone server (started
//! by the first, stopped when the last drops it), each under its own
//! cluster root and with its own node ids (log lines are matched by node
//! id). Session timeout 2000 ms everywhere: lease 1333 ms, heartbeat
//! 500 ms. Every test is bounded by [`TEST_BOUND`].

mod harness;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use caskade::cluster::{
    BoxFuture, IsrUpdate, LeaderAndIsr, NodeAddr, NodeRpc, ReplicaOffsets, StateListener, ZkCluster,
};
use caskade::config::ClusterOptions;
use caskade::{Error, Result};
use harness::zk::Zk;
use serde_json::{Value, json};

/// Longest time one test may take.
const TEST_BOUND: Duration = Duration::from_secs(50);

/// Session timeout of every node.
const SESSION_MS: u64 = 2000;

// ---------------------------------------------------------------------------
// Fakes of the node side.

/// What a node's listener was told.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    /// `apply(states, ids of nodes)`.
    Apply(Vec<LeaderAndIsr>, Vec<String>),
    /// `fence(why)`.
    Fence(String),
}

/// A [`StateListener`] that records every call.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    /// What `replica_of` answers (`None`: not known).
    hosts: Option<Vec<u32>>,
    /// The node this listener serves, once started: each `apply` then
    /// records whether the node's lease was valid when it was called.
    node: std::sync::OnceLock<Weak<ZkCluster>>,
    /// The lease at each `apply` after `node` was set.
    lease_at_apply: Mutex<Vec<bool>>,
}

impl StateListener for Recorder {
    fn registered(&self, _node_epoch: i64) {}

    fn replica_of(&self) -> Option<Vec<u32>> {
        self.hosts.clone()
    }

    fn apply(&self, states: Vec<LeaderAndIsr>, nodes: Vec<NodeAddr>) {
        if let Some(node) = self.node.get().and_then(Weak::upgrade) {
            self.lease_at_apply.lock().unwrap().push(node.lease_valid());
        }
        let ids = nodes.into_iter().map(|n| n.id).collect();
        self.events.lock().unwrap().push(Event::Apply(states, ids));
    }

    fn fence(&self, why: &str) {
        self.events
            .lock()
            .unwrap()
            .push(Event::Fence(why.to_string()));
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// A controller call.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    /// `log_end_offsets(node, partitions)`.
    Offsets { node: String, partitions: Vec<u32> },
    /// `leader_and_isr(node, controller_epoch, states, node ids)`.
    Notice {
        node: String,
        epoch: u64,
        states: Vec<LeaderAndIsr>,
        nodes: Vec<String>,
    },
}

/// A [`NodeRpc`] that records calls and answers configured offsets (0 when
/// not configured).
#[derive(Default)]
struct FakeRpc {
    offsets: Mutex<HashMap<(String, u32), u64>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeRpc {
    fn set_offset(&self, node: &str, partition: u32, leo: u64) {
        self.offsets
            .lock()
            .unwrap()
            .insert((node.to_string(), partition), leo);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// The offsets calls, sorted by node.
    fn offset_calls(&self) -> Vec<(String, Vec<u32>)> {
        let mut v: Vec<(String, Vec<u32>)> = self
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Offsets { node, partitions } => Some((node, partitions)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// The notices, in call order: (node, controller epoch, states, nodes).
    fn notices(&self) -> Vec<(String, u64, Vec<LeaderAndIsr>, Vec<String>)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Notice {
                    node,
                    epoch,
                    states,
                    nodes,
                } => Some((node, epoch, states, nodes)),
                _ => None,
            })
            .collect()
    }
}

impl NodeRpc for FakeRpc {
    fn log_end_offsets(
        &self,
        node: NodeAddr,
        _controller_epoch: u64,
        partitions: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ReplicaOffsets>>> {
        self.calls.lock().unwrap().push(Call::Offsets {
            node: node.id.clone(),
            partitions: partitions.clone(),
        });
        let offsets = self.offsets.lock().unwrap();
        let answer = partitions
            .iter()
            .map(|&p| ReplicaOffsets {
                partition: p,
                log_end_offset: offsets.get(&(node.id.clone(), p)).copied().unwrap_or(0),
                last_epoch: 1,
                high_watermark: 0,
            })
            .collect();
        Box::pin(async move { Ok(answer) })
    }

    fn leader_and_isr(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        _node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        _leaders: Vec<std::sync::Arc<caskade::cluster::Leaders>>,
        nodes: Vec<NodeAddr>,
    ) -> BoxFuture<'static, Result<()>> {
        self.calls.lock().unwrap().push(Call::Notice {
            node: node.id,
            epoch: controller_epoch,
            states,
            nodes: nodes.into_iter().map(|n| n.id).collect(),
        });
        Box::pin(async { Ok(()) })
    }
}

// ---------------------------------------------------------------------------
// Test plumbing.

/// Everything the nodes log, for the assertions on log lines.
static LOGS: Mutex<String> = Mutex::new(String::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&String::from_utf8_lossy(buf));
        // `CLUSTER_ZK_LOG=FILE` keeps a copy, for diagnosis.
        if let Some(path) = std::env::var_os("CLUSTER_ZK_LOG")
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines so far containing `needle`.
fn log_lines(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Log lines containing `needle`, once there are at least `want` of them
/// (or after 5 s). A node logs a decision after its ZooKeeper write
/// returns, so a test that has seen the written state may be ahead of the
/// log line; callers still assert the exact count.
async fn logged(needle: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = log_lines(needle);
        if lines.len() >= want || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a test body on a fresh runtime, bounded by [`TEST_BOUND`], with the
/// log captured.
fn run<F: Future<Output = ()>>(f: F) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("caskade=debug")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .init();
    });
    harness::runtime().block_on(async {
        tokio::time::timeout(TEST_BOUND, f)
            .await
            .expect("test did not finish in time")
    });
}

/// The ZooKeeper shared by the tests that leave it running: started by
/// the first test that asks, stopped when the last holder drops it.
fn shared_zk() -> Arc<Zk> {
    static SHARED: Mutex<Weak<Zk>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(zk) = slot.upgrade() {
        return zk;
    }
    let zk = Arc::new(Zk::standalone());
    *slot = Arc::downgrade(&zk);
    zk
}

/// Waits (polling, bounded by `within`) until `cond` holds.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cluster options of a test cluster.
fn options(connect: &str, root: &str) -> ClusterOptions {
    ClusterOptions {
        name: "test".into(),
        zk_connect: connect.into(),
        zk_root: root.into(),
        session_timeout_ms: SESSION_MS,
        replication_factor: 3,
        min_insync: 2,
        ..ClusterOptions::default()
    }
}

/// Addresses of node `id` (fake ports: the fake RPC never dials).
fn addr(id: &str) -> NodeAddr {
    NodeAddr {
        id: id.into(),
        client_addr: format!("{id}.client:7379"),
        replication_addr: format!("{id}.repl:7380"),
    }
}

/// A started node and its listener.
struct Node {
    zk: Arc<ZkCluster>,
    rec: Arc<Recorder>,
}

/// Starts node `id`.
async fn start(opts: &ClusterOptions, id: &str, partitions: u32, rpc: &Arc<FakeRpc>) -> Node {
    let rec = Arc::new(Recorder::default());
    let zk = ZkCluster::start(opts, addr(id), partitions, rec.clone(), rpc.clone())
        .await
        .unwrap_or_else(|e| panic!("node {id} did not start: {e}"));
    Node { zk, rec }
}

/// A plain ZooKeeper client, to look at and tamper with the znodes.
async fn raw(zk: &Zk) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_millis(SESSION_MS))
        .connect(&zk.connect_string())
        .await
        .expect("connect a raw ZooKeeper client")
}

/// The JSON in `path`, or `None` when the znode does not exist.
async fn read_json(c: &zookeeper_client::Client, path: &str) -> Option<Value> {
    match c.get_data(path).await {
        Ok((data, _)) => Some(serde_json::from_slice(&data).expect("znode holds JSON")),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("read {path}: {e}"),
    }
}

/// The state znode of partition `p` as JSON, without its
/// `leader_node_epoch` (checked here: the node epoch of the leader's
/// registration, 0 without a leader).
async fn state_json(c: &zookeeper_client::Client, root: &str, p: u32) -> Value {
    let v = read_json(c, &format!("{root}/partitions/{p}/state"))
        .await
        .unwrap_or_else(|| panic!("partition {p} has no state"));
    strip_node_epoch(v)
}

/// A state's JSON without `leader_node_epoch`, after checking it is
/// present, and set exactly when there is a leader.
fn strip_node_epoch(mut v: Value) -> Value {
    let e = v
        .as_object_mut()
        .and_then(|o| o.remove("leader_node_epoch"))
        .and_then(|e| e.as_i64())
        .unwrap_or_else(|| panic!("state without leader_node_epoch: {v}"));
    assert_eq!(
        v["leader"].is_null(),
        e == 0,
        "leader_node_epoch {e} in {v}"
    );
    v
}

/// The node epoch (czxid of `/nodes/<id>`) of `id`'s registration.
async fn node_epoch(c: &zookeeper_client::Client, root: &str, id: &str) -> i64 {
    let (_, stat) = c
        .get_data(&format!("{root}/nodes/{id}"))
        .await
        .expect("registered");
    stat.czxid
}

/// Polls the state znode of `p` until `cond` holds (bounded).
async fn wait_state(
    c: &zookeeper_client::Client,
    root: &str,
    p: u32,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = read_json(c, &format!("{root}/partitions/{p}/state")).await
            && cond(&strip_node_epoch(v.clone()))
        {
            return strip_node_epoch(v);
        }
        assert!(
            Instant::now() < deadline,
            "partition {p} state did not reach the expected value"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A state as the first controller writes it.
fn st(leader: Option<&str>, epoch: u32, isr: &[&str]) -> Value {
    json!({"leader": leader, "leader_epoch": epoch, "isr": isr, "controller_epoch": 1})
}

/// Starts three nodes `<prefix>-n1..3` with 8 partitions and waits for the
/// assignment (made by `<prefix>-n1`, the first node and so the
/// controller).
async fn three_nodes(
    opts: &ClusterOptions,
    prefix: &str,
    rpc: &Arc<FakeRpc>,
    c: &zookeeper_client::Client,
) -> Vec<Node> {
    let n1 = start(opts, &format!("{prefix}-n1"), 8, rpc).await;
    wait_until("n1 to be controller", Duration::from_secs(5), || {
        n1.zk.controller().as_deref() == Some(format!("{prefix}-n1").as_str())
    })
    .await;
    let n2 = start(opts, &format!("{prefix}-n2"), 8, rpc).await;
    let n3 = start(opts, &format!("{prefix}-n3"), 8, rpc).await;
    let root = opts.root();
    for p in 0..8 {
        wait_state(c, &root, p, Duration::from_secs(5), |_| true).await;
    }
    vec![n1, n2, n3]
}

// ---------------------------------------------------------------------------
// Tests.

/// A node registers its addresses under /nodes; a second live node with
/// the same id is refused with a clear error after one session timeout;
/// shutdown removes the registration at once.
#[test]
fn registration_and_duplicate_id_refused() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-reg");
        let rpc = Arc::new(FakeRpc::default());
        let n = start(&opts, "reg-1", 4, &rpc).await;
        assert!(n.zk.lease_valid());
        assert_eq!(
            read_json(&c, "/t-reg/nodes/reg-1").await,
            Some(
                json!({"id": "reg-1", "client_addr": "reg-1.client:7379", "replication_addr": "reg-1.repl:7380"})
            )
        );
        assert_eq!(n.zk.nodes(), vec![addr("reg-1")]);
        // The start handed the listener the (empty) state and the live nodes.
        assert_eq!(n.rec.events(), vec![Event::Apply(vec![], ids(&["reg-1"]))]);

        let t0 = Instant::now();
        let dup = ZkCluster::start(
            &opts,
            addr("reg-1"),
            4,
            Arc::new(Recorder::default()),
            rpc.clone(),
        )
        .await;
        let waited = t0.elapsed();
        let err = dup.expect_err("a second node reg-1 must be refused");
        let Error::Unavailable(msg) = &err else {
            panic!("unexpected error {err:?}")
        };
        assert!(
            msg.starts_with("node id \"reg-1\" is already registered in ZooKeeper (/t-reg/nodes/reg-1, session 0x"),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "by another live node; is another caskade-server running with this node_id?"
            ),
            "{msg}"
        );
        assert!(
            waited >= Duration::from_millis(SESSION_MS) && waited < Duration::from_secs(6),
            "refused after {waited:?}"
        );
        // The original is untouched.
        assert!(n.zk.lease_valid());
        assert_eq!(n.zk.nodes(), vec![addr("reg-1")]);

        n.zk.shutdown().await;
        assert!(!n.zk.lease_valid());
        assert_eq!(read_json(&c, "/t-reg/nodes/reg-1").await, None);
        assert_eq!(
            n.rec.events().last(),
            Some(&Event::Fence("shutting down".into()))
        );
    });
}

/// The first node becomes controller at epoch 1; when it leaves, the other
/// takes over at epoch 2.
#[test]
fn controller_election_bumps_the_epoch() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-elect");
        let rpc = Arc::new(FakeRpc::default());
        let a = start(&opts, "el-a", 4, &rpc).await;
        wait_until("el-a controller", Duration::from_secs(5), || {
            a.zk.controller().as_deref() == Some("el-a")
        })
        .await;
        assert_eq!(
            read_json(&c, "/t-elect/controller").await,
            Some(json!({"node_id": "el-a", "controller_epoch": 1}))
        );
        assert_eq!(
            read_json(&c, "/t-elect/controller_epoch").await,
            Some(json!(1))
        );

        let b = start(&opts, "el-b", 4, &rpc).await;
        wait_until(
            "el-b sees el-a as controller",
            Duration::from_secs(5),
            || b.zk.controller().as_deref() == Some("el-a"),
        )
        .await;
        wait_until("el-a sees both nodes", Duration::from_secs(5), || {
            a.zk.nodes() == vec![addr("el-a"), addr("el-b")]
        })
        .await;

        a.zk.shutdown().await;
        wait_until("el-b controller", Duration::from_secs(5), || {
            b.zk.controller().as_deref() == Some("el-b")
        })
        .await;
        assert_eq!(
            read_json(&c, "/t-elect/controller").await,
            Some(json!({"node_id": "el-b", "controller_epoch": 2}))
        );
        assert_eq!(
            read_json(&c, "/t-elect/controller_epoch").await,
            Some(json!(2))
        );
        assert_eq!(b.zk.nodes(), vec![addr("el-b")]);
        b.zk.shutdown().await;
    });
}

/// 8 partitions over 3 nodes: replicas rotate over the nodes sorted by
/// id, leader = first replica, epoch 1, ISR = replicas; every node gets
/// one notice with all 8 states.
#[test]
fn initial_assignment_of_8_partitions_over_3_nodes() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-assign");
        let rpc = Arc::new(FakeRpc::default());
        let n1 = start(&opts, "as-n1", 8, &rpc).await;
        wait_until("as-n1 controller", Duration::from_secs(5), || {
            n1.zk.controller().as_deref() == Some("as-n1")
        })
        .await;
        let n2 = start(&opts, "as-n2", 8, &rpc).await;
        // Two nodes are too few for replication factor 3: nothing assigned.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(read_json(&c, "/t-assign/partitions/0/state").await, None);
        let n3 = start(&opts, "as-n3", 8, &rpc).await;

        let rotations = [
            ["as-n1", "as-n2", "as-n3"],
            ["as-n2", "as-n3", "as-n1"],
            ["as-n3", "as-n1", "as-n2"],
        ];
        for p in 0..8u32 {
            let r = rotations[p as usize % 3];
            let state = wait_state(&c, "/t-assign", p, Duration::from_secs(5), |_| true).await;
            assert_eq!(state, st(Some(r[0]), 1, &r), "partition {p}");
            assert_eq!(
                read_json(&c, &format!("/t-assign/partitions/{p}/replicas")).await,
                Some(json!(r)),
                "partition {p}"
            );
        }

        wait_until("three notices", Duration::from_secs(5), || {
            rpc.notices().len() == 3
        })
        .await;
        let mut epochs = HashMap::new();
        for id in ["as-n1", "as-n2", "as-n3"] {
            epochs.insert(id.to_string(), node_epoch(&c, "/t-assign", id).await);
        }
        let mut notices = rpc.notices();
        notices.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (node, epoch, states, nodes)) in notices.into_iter().enumerate() {
            assert_eq!(node, format!("as-n{}", i + 1));
            assert_eq!(epoch, 1);
            assert_eq!(nodes, ids(&["as-n1", "as-n2", "as-n3"]));
            let expected: Vec<LeaderAndIsr> = (0..8u32)
                .map(|p| {
                    let r = ids(&rotations[p as usize % 3]);
                    LeaderAndIsr {
                        partition: p,
                        leader_node_epoch: epochs[&r[0]],
                        leader: Some(r[0].clone()),
                        leader_epoch: 1,
                        replicas: r.clone(),
                        isr: r,
                        controller_epoch: 1,
                        zk_version: 0,
                    }
                })
                .collect();
            assert_eq!(states, expected);
        }
        assert_eq!(rpc.offset_calls(), vec![]);
        assert_eq!(
            logged("assigned 8 partitions over [as-n1, as-n2, as-n3]", 1)
                .await
                .len(),
            1
        );
        for n in [n1, n2, n3] {
            n.zk.shutdown().await;
        }
    });
}

/// The leader of partitions 0, 3, 6 (and controller) leaves: the new
/// controller asks each live ISR member once for its offsets, elects the
/// one with the higher log end offset at epoch 2, logs both offsets, and
/// shrinks the ISR of the partitions the dead node followed.
#[test]
fn leader_loss_elects_the_isr_member_with_the_highest_offset() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-failover");
        let rpc = Arc::new(FakeRpc::default());
        let nodes = three_nodes(&opts, "fo", &rpc, &c).await;
        for p in [0, 3, 6] {
            rpc.set_offset("fo-n2", p, 1040);
            rpc.set_offset("fo-n3", p, 1042);
        }
        wait_until("initial notices", Duration::from_secs(5), || {
            rpc.notices().len() == 3
        })
        .await;
        rpc.clear();
        let mut nodes = nodes.into_iter();
        let n1 = nodes.next().unwrap();
        let (n2, n3) = (nodes.next().unwrap(), nodes.next().unwrap());
        n1.zk.shutdown().await;

        for p in [0u32, 3, 6] {
            let s = wait_state(&c, "/t-failover", p, Duration::from_secs(5), |v| {
                v["leader_epoch"] == 2
            })
            .await;
            assert_eq!(
                s,
                json!({"leader": "fo-n3", "leader_epoch": 2, "isr": ["fo-n2", "fo-n3"], "controller_epoch": 2})
            );
            assert_eq!(
                logged(
                    &format!(
                        "partition {p}: leader fo-n3 (log end 1042) chosen over fo-n2 (log end 1040), epoch 2"
                    ),
                    1
                )
                .await
                .len(),
                1
            );
        }
        for (p, isr) in [
            (1u32, ["fo-n2", "fo-n3"]),
            (4, ["fo-n2", "fo-n3"]),
            (7, ["fo-n2", "fo-n3"]),
            (2, ["fo-n3", "fo-n2"]),
            (5, ["fo-n3", "fo-n2"]),
        ] {
            let s = wait_state(&c, "/t-failover", p, Duration::from_secs(5), |v| {
                v["controller_epoch"] == 2
            })
            .await;
            assert_eq!(
                s,
                json!({"leader": isr[0], "leader_epoch": 1, "isr": isr, "controller_epoch": 2}),
                "partition {p}"
            );
        }
        assert_eq!(
            rpc.offset_calls(),
            vec![
                ("fo-n2".to_string(), vec![0, 3, 6]),
                ("fo-n3".to_string(), vec![0, 3, 6]),
            ]
        );
        // The new controller tells each live node everything, once.
        wait_until("two notices", Duration::from_secs(5), || {
            rpc.notices().len() == 2
        })
        .await;
        let mut notices = rpc.notices();
        notices.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(notices[0].0, "fo-n2");
        assert_eq!(notices[1].0, "fo-n3");
        for (_, epoch, states, nodes) in &notices {
            assert_eq!(*epoch, 2);
            assert_eq!(nodes, &ids(&["fo-n2", "fo-n3"]));
            assert_eq!(states.len(), 8);
            assert_eq!(states[0].leader.as_deref(), Some("fo-n3"));
            assert_eq!(states[0].leader_epoch, 2);
            assert_eq!(states[0].zk_version, 1);
        }
        n2.zk.shutdown().await;
        n3.zk.shutdown().await;
    });
}

/// Shrinks partition 0's ISR to its leader through `update_isr`, then
/// kills the leader. Returns the state partition 0 ends in.
async fn lose_the_only_isr_member(root: &str, prefix: &str, unclean: bool) -> Value {
    let zk = shared_zk();
    let c = raw(&zk).await;
    let mut opts = options(&zk.connect_string(), root);
    opts.unclean_leader_election = unclean;
    let rpc = Arc::new(FakeRpc::default());
    rpc.set_offset(&format!("{prefix}-n2"), 0, 5);
    rpc.set_offset(&format!("{prefix}-n3"), 0, 7);
    let mut nodes = three_nodes(&opts, prefix, &rpc, &c).await.into_iter();
    let (n1, n2, n3) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let r = ids(&[
        &format!("{prefix}-n1"),
        &format!("{prefix}-n2"),
        &format!("{prefix}-n3"),
    ]);
    let shrunk = LeaderAndIsr {
        partition: 0,
        leader: Some(r[0].clone()),
        leader_epoch: 1,
        replicas: r.clone(),
        isr: vec![r[0].clone()],
        controller_epoch: 1,
        zk_version: 0,
        leader_node_epoch: n1.zk.node_epoch(),
    };
    assert_eq!(
        n1.zk.update_isr(shrunk).await.unwrap(),
        IsrUpdate::Updated { zk_version: 1 }
    );
    n1.zk.shutdown().await;
    let s = wait_state(&c, root, 0, Duration::from_secs(5), |v| {
        v["leader_epoch"] == 2
    })
    .await;
    // The other partitions are unaffected by the choice.
    n2.zk.shutdown().await;
    n3.zk.shutdown().await;
    s
}

/// No ISR member alive: the partition goes offline (epoch bumped, last
/// ISR kept so it can come back).
#[test]
fn no_live_isr_member_takes_the_partition_offline() {
    run(async {
        let s = lose_the_only_isr_member("/t-offline", "off", false).await;
        assert_eq!(
            s,
            json!({"leader": null, "leader_epoch": 2, "isr": ["off-n1"], "controller_epoch": 2})
        );
        assert_eq!(
            logged(
                "partition 0: offline: no live in-sync replica (isr [off-n1]), epoch 2",
                1
            )
            .await
            .len(),
            1
        );
    });
}

/// No ISR member alive and unclean election allowed: the live replica
/// with the highest log end offset leads, alone in the ISR, logged at
/// error level.
#[test]
fn unclean_election_picks_the_live_replica_with_the_highest_offset() {
    run(async {
        let s = lose_the_only_isr_member("/t-unclean", "unc", true).await;
        assert_eq!(
            s,
            json!({"leader": "unc-n3", "leader_epoch": 2, "isr": ["unc-n3"], "controller_epoch": 2})
        );
        let lines = logged(
            "partition 0: UNCLEAN leader election: unc-n3 (log end 7) elected although not in the ISR [unc-n1]; records it lacks are lost, epoch 2",
            1,
        )
        .await;
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    });
}

/// `update_isr` is a compare-and-set: a stale version gets the current
/// state back; a non-leader cannot propose.
#[test]
fn update_isr_conflict_returns_the_current_state() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-cas");
        let rpc = Arc::new(FakeRpc::default());
        let nodes = three_nodes(&opts, "cas", &rpc, &c).await;
        let r = ids(&["cas-n1", "cas-n2", "cas-n3"]);
        let base = LeaderAndIsr {
            partition: 0,
            leader: Some("cas-n1".into()),
            leader_epoch: 1,
            replicas: r.clone(),
            isr: ids(&["cas-n1", "cas-n2"]),
            controller_epoch: 1,
            zk_version: 0,
            leader_node_epoch: nodes[0].zk.node_epoch(),
        };
        assert_eq!(
            nodes[0].zk.update_isr(base.clone()).await.unwrap(),
            IsrUpdate::Updated { zk_version: 1 }
        );
        let stale = LeaderAndIsr {
            isr: ids(&["cas-n1"]),
            ..base.clone()
        };
        assert_eq!(
            nodes[0].zk.update_isr(stale).await.unwrap(),
            IsrUpdate::Conflict(LeaderAndIsr {
                zk_version: 1,
                ..base.clone()
            })
        );
        assert_eq!(
            state_json(&c, "/t-cas", 0).await,
            json!({"leader": "cas-n1", "leader_epoch": 1, "isr": ["cas-n1", "cas-n2"], "controller_epoch": 1})
        );
        let err = nodes[1].zk.update_isr(base).await.unwrap_err();
        assert_eq!(
            err,
            Error::Internal(
                "update_isr of partition 0 by cas-n2 which is not its leader (Some(\"cas-n1\"))"
                    .into()
            )
        );
        for n in nodes {
            n.zk.shutdown().await;
        }
    });
}

/// Another controller bumped /controller_epoch: the old controller's
/// next write (the failover after cas-n3 leaves) fails on the epoch
/// check, it resigns, and the states are written at the new epoch only.
#[test]
fn deposed_controller_cannot_write() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-deposed");
        let rpc = Arc::new(FakeRpc::default());
        let mut nodes = three_nodes(&opts, "dep", &rpc, &c).await;
        // A newer controller's election (as far as ZooKeeper is concerned).
        c.set_data("/t-deposed/controller_epoch", b"5", None)
            .await
            .unwrap();
        let n3 = nodes.pop().unwrap();
        n3.zk.shutdown().await;

        let elected = wait_state(&c, "/t-deposed", 2, Duration::from_secs(8), |v| {
            v["leader_epoch"] == 2
        })
        .await;
        assert_eq!(
            elected,
            json!({"leader": "dep-n1", "leader_epoch": 2, "isr": ["dep-n1", "dep-n2"], "controller_epoch": 6})
        );
        assert_eq!(
            read_json(&c, "/t-deposed/controller_epoch").await,
            Some(json!(6))
        );
        let ctrl = read_json(&c, "/t-deposed/controller").await.unwrap();
        assert_eq!(ctrl["controller_epoch"], json!(6));
        // Every state the failover touched carries epoch 6, none epoch 1.
        for p in 0..8 {
            let s = wait_state(&c, "/t-deposed", p, Duration::from_secs(5), |v| {
                v["controller_epoch"] == 6
            })
            .await;
            assert_eq!(
                s["isr"].as_array().map(|a| a.len()),
                Some(2),
                "partition {p}"
            );
        }
        let deposed = logged(
            "deposed as controller (epoch 1): /t-deposed/controller_epoch moved past version 1",
            1,
        )
        .await;
        assert_eq!(deposed.len(), 1, "{deposed:?}");
        assert!(
            deposed[0].ends_with(
                "deposed as controller (epoch 1): /t-deposed/controller_epoch moved past \
                 version 1 (mismatch version); state writes refused"
            ),
            "{}",
            deposed[0]
        );
        for n in nodes {
            n.zk.shutdown().await;
        }
    });
}

/// A node that starts (or rejoins) reads from ZooKeeper only the
/// partitions its listener says it hosts, not every partition listing it
/// (issue 12: a rejoin read every partition's `replicas` znode); the rest
/// comes in the controller's notice to a node that joined.
#[test]
fn a_new_session_reads_only_the_partitions_the_listener_hosts() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-hosted");
        let rpc = Arc::new(FakeRpc::default());
        let mut nodes = three_nodes(&opts, "ho", &rpc, &c).await;
        let n3 = nodes.pop().unwrap();
        n3.zk.shutdown().await;
        // Back, hosting 1 and 4 (it is a replica of all 8; 9 does not exist).
        let rec = Arc::new(Recorder {
            hosts: Some(vec![1, 4, 9]),
            ..Recorder::default()
        });
        let n3 = ZkCluster::start(&opts, addr("ho-n3"), 8, rec.clone(), rpc.clone())
            .await
            .expect("ho-n3 restarts");
        let events = rec.events();
        let Some(Event::Apply(states, live)) = events.first() else {
            panic!("no states applied: {events:?}");
        };
        let read: Vec<u32> = states.iter().map(|s| s.partition).collect();
        assert_eq!(read, vec![1, 4]);
        assert_eq!(live, &ids(&["ho-n1", "ho-n2", "ho-n3"]));
        for s in states {
            assert_eq!(s.replicas.len(), 3, "replicas read with the state: {s:?}");
        }
        n3.shutdown().await;
        for n in nodes {
            n.zk.shutdown().await;
        }
    });
}

/// A node that registers again between two listings of `/nodes` (same id
/// listed, new czxid) is still seen as bounced, though the controller
/// reads only the registrations that appeared: `/nodes`' child version
/// moved by more than the listing explains, so it reads them all again.
#[test]
fn a_re_registration_within_one_listing_is_a_bounce() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-rereg");
        let rpc = Arc::new(FakeRpc::default());
        let nodes = three_nodes(&opts, "rr", &rpc, &c).await;
        let path = "/t-rereg/nodes/rr-n4";
        let data = serde_json::to_vec(&addr("rr-n4")).expect("JSON");
        let ephemeral =
            zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
        c.create(path, &data, &ephemeral)
            .await
            .expect("register rr-n4");
        wait_until("rr-n4 joined", Duration::from_secs(5), || {
            !log_lines("nodes joined [rr-n4], left [], bounced (new node epoch) []").is_empty()
        })
        .await;
        // Leave and register again in one transaction: one watch event,
        // the same ids listed.
        let mut w = c.new_multi_writer();
        w.add_delete(path, None).expect("multi");
        w.add_create(path, &data, &ephemeral).expect("multi");
        w.commit().await.expect("re-register rr-n4");
        wait_until("rr-n4 bounced", Duration::from_secs(5), || {
            !log_lines("nodes joined [rr-n4], left [], bounced (new node epoch) [rr-n4]").is_empty()
        })
        .await;
        for n in nodes {
            n.zk.shutdown().await;
        }
    });
}

/// Once the preferred replica is back and in the ISR, the controller moves
/// leadership back to it (epoch + 1).
#[test]
fn preferred_leader_is_restored() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-preferred");
        let rpc = Arc::new(FakeRpc::default());
        let mut nodes = three_nodes(&opts, "pl", &rpc, &c).await.into_iter();
        let n1 = nodes.next().unwrap();
        let (n2, n3) = (nodes.next().unwrap(), nodes.next().unwrap());
        n1.zk.shutdown().await;
        // Equal (unknown = 0) offsets: replica order decides.
        let s = wait_state(&c, "/t-preferred", 0, Duration::from_secs(5), |v| {
            v["leader_epoch"] == 2
        })
        .await;
        assert_eq!(
            s,
            json!({"leader": "pl-n2", "leader_epoch": 2, "isr": ["pl-n2", "pl-n3"], "controller_epoch": 2})
        );
        let n1 = start(&opts, "pl-n1", 8, &rpc).await;
        // Back, but not in sync yet: no move.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(state_json(&c, "/t-preferred", 0).await, s);
        // The leader takes pl-n1 back into the ISR.
        let r = ids(&["pl-n1", "pl-n2", "pl-n3"]);
        let back = LeaderAndIsr {
            partition: 0,
            leader: Some("pl-n2".into()),
            leader_epoch: 2,
            replicas: r,
            isr: ids(&["pl-n2", "pl-n3", "pl-n1"]),
            controller_epoch: 2,
            zk_version: 1,
            leader_node_epoch: n2.zk.node_epoch(),
        };
        assert_eq!(
            n2.zk.update_isr(back).await.unwrap(),
            IsrUpdate::Updated { zk_version: 2 }
        );
        let s = wait_state(&c, "/t-preferred", 0, Duration::from_secs(8), |v| {
            v["leader_epoch"] == 3
        })
        .await;
        assert_eq!(
            s,
            json!({"leader": "pl-n1", "leader_epoch": 3, "isr": ["pl-n2", "pl-n3", "pl-n1"], "controller_epoch": 2})
        );
        assert_eq!(
            logged(
                "partition 0: leadership moved to preferred replica pl-n1 (from pl-n2), epoch 3",
                1
            )
            .await
            .len(),
            1
        );
        for n in [n1, n2, n3] {
            n.zk.shutdown().await;
        }
    });
}

/// ZooKeeper down: the lease lapses on the node's own clock within 2/3 of
/// the session timeout (fence), the session expires (fence again); when
/// ZooKeeper is back the node opens a new session, registers again and
/// gets its states and controllership back. The new session's states are
/// applied while its lease is not yet valid (the lease starts after them).
#[test]
fn zookeeper_outage_fences_then_rejoins_with_a_new_session() {
    run(async {
        let zk = Zk::standalone();
        let c = raw(&zk).await;
        let mut opts = options(&zk.connect_string(), "/t-outage");
        opts.replication_factor = 1;
        opts.min_insync = 1;
        let rpc = Arc::new(FakeRpc::default());
        let n = start(&opts, "out-1", 2, &rpc).await;
        for p in 0..2 {
            wait_state(&c, "/t-outage", p, Duration::from_secs(5), |_| true).await;
        }
        let (_, old) = c.get_data("/t-outage/nodes/out-1").await.unwrap();
        drop(c);
        assert!(n.zk.lease_valid());

        let stopped = Instant::now();
        zk.kill_member(0);
        wait_until("the lease to lapse", Duration::from_secs(3), || {
            !n.zk.lease_valid()
        })
        .await;
        // Lease 2/3 of 2000 ms from the last heartbeat (every 500 ms).
        assert!(stopped.elapsed() < Duration::from_millis(4000));
        wait_until("the session to expire", Duration::from_secs(6), || {
            n.rec
                .events()
                .iter()
                .any(|e| matches!(e, Event::Fence(w) if w.contains("expired")))
        })
        .await;
        let fences: Vec<String> = n
            .rec
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Fence(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(
            fences,
            vec![
                "no answer from ZooKeeper within 1333 ms (2/3 of the session timeout)".to_string(),
                "ZooKeeper session expired".to_string(),
            ]
        );
        assert!(!n.zk.lease_valid());
        assert_eq!(n.zk.controller(), None);
        let before = n.rec.events().len();
        // From here each `apply` records the lease it was called under.
        assert!(n.rec.node.set(Arc::downgrade(&n.zk)).is_ok());

        zk.restart_member(0);
        let c = raw(&zk).await;
        wait_until("the new session", Duration::from_secs(12), || {
            n.zk.lease_valid()
        })
        .await;
        let (_, now) = c.get_data("/t-outage/nodes/out-1").await.unwrap();
        assert_ne!(now.ephemeral_owner, old.ephemeral_owner);
        let after: Vec<Event> = n.rec.events().split_off(before);
        let replicas = ids(&["out-1"]);
        let expected: Vec<LeaderAndIsr> = (0..2)
            .map(|p| LeaderAndIsr {
                partition: p,
                leader: Some("out-1".into()),
                leader_epoch: 1,
                replicas: replicas.clone(),
                isr: replicas.clone(),
                controller_epoch: 1,
                zk_version: 0,
                // Elected under the first registration: this one follows.
                leader_node_epoch: old.czxid,
            })
            .collect();
        assert_eq!(after, vec![Event::Apply(expected, ids(&["out-1"]))]);
        // The new session's states were applied before its lease started
        // (before, the lease started first, and a reader could see it
        // valid with the old session's states).
        assert_eq!(n.rec.lease_at_apply.lock().unwrap().first(), Some(&false));
        wait_until("controller again", Duration::from_secs(5), || {
            n.zk.controller().as_deref() == Some("out-1")
        })
        .await;
        assert_eq!(
            read_json(&c, "/t-outage/controller_epoch").await,
            Some(json!(2))
        );
        n.zk.shutdown().await;
    });
}

/// Unreachable ZooKeeper at start: one clear error naming the connect
/// string, within about the session timeout.
#[test]
fn zookeeper_unreachable_at_start_is_a_clear_error() {
    run(async {
        let port = harness::free_port();
        let mut opts = options(&format!("127.0.0.1:{port}"), "/t-none");
        opts.session_timeout_ms = 1000;
        let t0 = Instant::now();
        let err = ZkCluster::start(
            &opts,
            addr("none-1"),
            4,
            Arc::new(Recorder::default()),
            Arc::new(FakeRpc::default()),
        )
        .await
        .expect_err("no ZooKeeper runs there");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(
            err,
            Error::Unavailable(format!(
                "cannot reach ZooKeeper at 127.0.0.1:{port}: timeout (within 1000 ms)"
            ))
        );
    });
}

/// 1200 partitions: assignment and failover go through batched multis and
/// one offsets call per node, fast.
#[test]
fn thousands_of_partitions_fail_over_in_batches() {
    run(async {
        let zk = shared_zk();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-many");
        let rpc = Arc::new(FakeRpc::default());
        const N: u32 = 1200;
        let n1 = start(&opts, "many-n1", N, &rpc).await;
        let n2 = start(&opts, "many-n2", N, &rpc).await;
        let t0 = Instant::now();
        let n3 = start(&opts, "many-n3", N, &rpc).await;
        wait_state(&c, "/t-many", N - 1, Duration::from_secs(10), |_| true).await;
        let assigned = t0.elapsed();
        wait_until("three notices", Duration::from_secs(5), || {
            rpc.notices().len() == 3
        })
        .await;
        rpc.clear();
        let t1 = Instant::now();
        n1.zk.shutdown().await;
        // n1 led every third partition.
        wait_state(&c, "/t-many", N - 3, Duration::from_secs(10), |v| {
            v["leader_epoch"] == 2
        })
        .await;
        let failed_over = t1.elapsed();
        let led: Vec<u32> = (0..N).filter(|p| p % 3 == 0).collect();
        assert_eq!(
            rpc.offset_calls(),
            vec![
                ("many-n2".to_string(), led.clone()),
                ("many-n3".to_string(), led)
            ]
        );
        assert!(
            assigned < Duration::from_secs(5),
            "assignment took {assigned:?}"
        );
        assert!(
            failed_over < Duration::from_secs(5),
            "failover took {failed_over:?}"
        );
        n2.zk.shutdown().await;
        n3.zk.shutdown().await;
    });
}

/// The body of the child process of
/// [`frozen_node_sees_its_lease_lapsed_on_resume`]; does nothing unless
/// `CLUSTER_ZK_CHILD` (the connect string) is set. Prints `CHILD ...`
/// lines: listener calls, lease transitions, and the first lease reading
/// after a pause of more than 500 ms (the process was frozen).
#[test]
fn child_process_of_the_frozen_node_test() {
    let Ok(connect) = std::env::var("CLUSTER_ZK_CHILD") else {
        return;
    };
    struct Printer;
    impl StateListener for Printer {
        fn registered(&self, _node_epoch: i64) {}
        fn apply(&self, states: Vec<LeaderAndIsr>, nodes: Vec<NodeAddr>) {
            println!("CHILD apply {} states, {} nodes", states.len(), nodes.len());
        }
        fn fence(&self, why: &str) {
            println!("CHILD fence {why}");
        }
    }
    harness::runtime().block_on(async {
        let mut opts = options(&connect, "/t-frozen");
        opts.replication_factor = 1;
        opts.min_insync = 1;
        let zk = ZkCluster::start(
            &opts,
            addr("frz-1"),
            2,
            Arc::new(Printer),
            Arc::new(FakeRpc::default()),
        )
        .await
        .expect("child node starts");
        // Printed before the probe thread starts, so it always comes before
        // the probe's first `lease` line (printed after it, the two raced).
        println!("CHILD ready");
        let probe = zk.clone();
        std::thread::spawn(move || {
            let mut last = None;
            let mut t = Instant::now();
            loop {
                let valid = probe.lease_valid();
                let now = Instant::now();
                if now - t > Duration::from_millis(500) {
                    println!("CHILD resumed lease {valid}");
                }
                if last != Some(valid) {
                    println!("CHILD lease {valid}");
                    last = Some(valid);
                }
                t = now;
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // The parent kills this process; the bound is a safety net.
        tokio::time::sleep(TEST_BOUND).await;
    });
}

/// Kills the child on drop (thawing it first).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGCONT);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node process frozen (SIGSTOP) past its session timeout finds its
/// lease invalid at its very first look after SIGCONT (its monotonic clock
/// kept running), is fenced, then rejoins with a new session.
#[test]
fn frozen_node_sees_its_lease_lapsed_on_resume() {
    run(async {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let zk = shared_zk();
        let c = raw(&zk).await;
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "child_process_of_the_frozen_node_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CLUSTER_ZK_CHILD", zk.connect_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child node");
        let stdout = child.stdout.take().expect("piped stdout");
        let guard = ChildGuard(child);
        let pid = guard.0.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print `test NAME ... ` before the first line.
                if let Some(at) = line.find("CHILD ")
                    && tx.send(line[at + 6..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        let next = |within: Duration| {
            rx.recv_timeout(within)
                .unwrap_or_else(|_| panic!("no line from the child within {within:?}"))
        };
        let mut seen = Vec::new();
        while !seen.contains(&"lease true".to_string()) {
            seen.push(next(Duration::from_secs(10)));
        }
        assert_eq!(
            seen,
            vec!["apply 0 states, 1 nodes", "ready", "lease true"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        );
        for p in 0..2 {
            wait_state(&c, "/t-frozen", p, Duration::from_secs(5), |_| true).await;
        }
        let (_, before) = c.get_data("/t-frozen/nodes/frz-1").await.unwrap();

        // SAFETY: kill(2) on the child this test spawned.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        // ZooKeeper expires the session 2 s after the last ping.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };

        let mut after = Vec::new();
        while !after.contains(&"lease true".to_string()) {
            after.push(next(Duration::from_secs(10)));
        }
        let first_look = after
            .iter()
            .find(|l| l.starts_with("resumed"))
            .expect("the probe reports its first look after the pause");
        assert_eq!(first_look, "resumed lease false", "{after:?}");
        assert!(
            !after
                .iter()
                .take_while(|l| !l.starts_with("apply"))
                .any(|l| l == "lease true"),
            "{after:?}"
        );
        let expired = after
            .iter()
            .position(|l| l == "fence ZooKeeper session expired")
            .unwrap_or_else(|| panic!("no expiry fence: {after:?}"));
        let applied = after
            .iter()
            .position(|l| l.starts_with("apply"))
            .unwrap_or_else(|| panic!("no new states: {after:?}"));
        assert!(expired < applied, "{after:?}");
        assert_eq!(after[applied], "apply 2 states, 1 nodes");
        let (_, now) = c.get_data("/t-frozen/nodes/frz-1").await.unwrap();
        assert_ne!(now.ephemeral_owner, before.ephemeral_owner);
        drop(guard);
    });
}

/// In a three-member ensemble, losing one member (maybe the one the node
/// is connected to) is a connection loss, not an expiry: the node keeps
/// its session and its registration, and its lease is valid again.
#[test]
fn ensemble_member_loss_keeps_the_session() {
    run(async {
        let zk = Zk::ensemble();
        let c = raw(&zk).await;
        let opts = options(&zk.connect_string(), "/t-ensemble");
        let rpc = Arc::new(FakeRpc::default());
        let n = start(&opts, "ens-1", 4, &rpc).await;
        let (_, before) = c.get_data("/t-ensemble/nodes/ens-1").await.unwrap();
        drop(c);
        for member in 0..3 {
            zk.kill_member(member);
            tokio::time::sleep(Duration::from_millis(500)).await;
            wait_until("the lease to be valid", Duration::from_secs(5), || {
                n.zk.lease_valid()
            })
            .await;
            zk.restart_member(member);
        }
        let c = raw(&zk).await;
        let (_, now) = c.get_data("/t-ensemble/nodes/ens-1").await.unwrap();
        assert_eq!(now.ephemeral_owner, before.ephemeral_owner);
        assert!(
            !n.rec
                .events()
                .iter()
                .any(|e| matches!(e, Event::Fence(w) if w.contains("expired"))),
            "{:?}",
            n.rec.events()
        );
        assert_eq!(n.zk.controller().as_deref(), Some("ens-1"));
        n.zk.shutdown().await;
    });
}

/// A replication service that answers offsets and records notices, for
/// [`grpc_node_rpc_speaks_replication_proto`].
#[derive(Default)]
struct FakeReplication {
    notices: Mutex<Vec<caskade::proto::replication::LeaderAndIsrRequest>>,
}

#[tonic::async_trait]
impl caskade::proto::replication::replication_server::Replication for FakeReplication {
    type FetchStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = std::result::Result<
                        caskade::proto::replication::FetchResponse,
                        tonic::Status,
                    >,
                > + Send,
        >,
    >;

    async fn handover(
        &self,
        _: tonic::Request<caskade::proto::replication::HandoverRequest>,
    ) -> std::result::Result<
        tonic::Response<caskade::proto::replication::HandoverResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn fetch(
        &self,
        _: tonic::Request<tonic::Streaming<caskade::proto::replication::FetchRequest>>,
    ) -> std::result::Result<tonic::Response<Self::FetchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn epoch_end_offset(
        &self,
        _: tonic::Request<caskade::proto::replication::EpochEndOffsetRequest>,
    ) -> std::result::Result<
        tonic::Response<caskade::proto::replication::EpochEndOffsetResponse>,
        tonic::Status,
    > {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn log_end_offsets(
        &self,
        req: tonic::Request<caskade::proto::replication::LogEndOffsetsRequest>,
    ) -> std::result::Result<
        tonic::Response<caskade::proto::replication::LogEndOffsetsResponse>,
        tonic::Status,
    > {
        use caskade::proto::replication::{LogEndOffsetsResponse, PartitionOffsets};
        let req = req.into_inner();
        Ok(tonic::Response::new(LogEndOffsetsResponse {
            node_id: "grpc-1".into(),
            partitions: req
                .partitions
                .iter()
                .map(|&p| PartitionOffsets {
                    partition: p,
                    log_end_offset: 1000 + u64::from(p) + req.controller_epoch,
                    last_epoch: 3,
                    high_watermark: 900,
                })
                .collect(),
        }))
    }

    async fn leader_and_isr(
        &self,
        req: tonic::Request<caskade::proto::replication::LeaderAndIsrRequest>,
    ) -> std::result::Result<
        tonic::Response<caskade::proto::replication::LeaderAndIsrResponse>,
        tonic::Status,
    > {
        self.notices.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(
            caskade::proto::replication::LeaderAndIsrResponse {},
        ))
    }
}

/// `GrpcNodeRpc` carries both controller calls over the replication
/// protocol, field by field, and fails within its bound on a dead node.
#[test]
fn grpc_node_rpc_speaks_replication_proto() {
    use caskade::cluster::GrpcNodeRpc;
    use caskade::proto::replication as pb;
    run(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let svc = Arc::new(FakeReplication::default());
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::replication_server::ReplicationServer::from_arc(
                    svc.clone(),
                ))
                .serve_with_incoming(incoming),
        );
        let node = NodeAddr {
            id: "grpc-1".into(),
            client_addr: "127.0.0.1:1".into(),
            replication_addr: local.to_string(),
        };
        let rpc = GrpcNodeRpc::new();
        let offsets = rpc
            .log_end_offsets(node.clone(), 7, vec![2, 5])
            .await
            .unwrap();
        assert_eq!(
            offsets,
            vec![
                ReplicaOffsets {
                    partition: 2,
                    log_end_offset: 1009,
                    last_epoch: 3,
                    high_watermark: 900,
                },
                ReplicaOffsets {
                    partition: 5,
                    log_end_offset: 1012,
                    last_epoch: 3,
                    high_watermark: 900,
                },
            ]
        );
        let states = vec![
            LeaderAndIsr {
                partition: 2,
                leader: Some("grpc-1".into()),
                leader_epoch: 4,
                replicas: ids(&["grpc-1", "grpc-2"]),
                isr: ids(&["grpc-1"]),
                controller_epoch: 7,
                zk_version: 9,
                leader_node_epoch: 12,
            },
            LeaderAndIsr {
                partition: 5,
                leader: None,
                leader_epoch: 2,
                replicas: ids(&["grpc-2", "grpc-1"]),
                isr: ids(&["grpc-2"]),
                controller_epoch: 7,
                zk_version: 3,
                leader_node_epoch: 0,
            },
        ];
        // Two routing maps, merged on the wire (the newer epoch wins).
        let older = caskade::cluster::Leaders::of(&states, false);
        let mut newer = caskade::cluster::Leaders::default();
        newer.push(5, 3, Some("grpc-2"), &ids(&["grpc-2", "grpc-1"]));
        newer.push(7, 1, None, &ids(&["grpc-1"]));
        let maps = vec![Arc::new(older), Arc::new(newer)];
        rpc.leader_and_isr(node.clone(), 7, 5, states, maps, vec![node.clone()])
            .await
            .unwrap();
        assert_eq!(
            svc.notices.lock().unwrap().clone(),
            vec![pb::LeaderAndIsrRequest {
                controller_epoch: 7,
                partitions: vec![
                    pb::PartitionState {
                        partition: 2,
                        leader: "grpc-1".into(),
                        leader_epoch: 4,
                        replicas: ids(&["grpc-1", "grpc-2"]),
                        isr: ids(&["grpc-1"]),
                        zk_version: 9,
                        leader_node_epoch: 12,
                    },
                    pb::PartitionState {
                        partition: 5,
                        leader: String::new(),
                        leader_epoch: 2,
                        replicas: ids(&["grpc-2", "grpc-1"]),
                        isr: ids(&["grpc-2"]),
                        zk_version: 3,
                        leader_node_epoch: 0,
                    },
                ],
                nodes: vec![pb::NodeAddress {
                    id: "grpc-1".into(),
                    client_addr: "127.0.0.1:1".into(),
                    replication_addr: local.to_string(),
                }],
                node_epoch: 5,
                leader_ids: ids(&["grpc-1", "grpc-2"]),
                leaders: vec![
                    pb::PartitionLeader {
                        partition: 2,
                        leader_epoch: 4,
                        leader: 1,
                        replicas: 0,
                    },
                    pb::PartitionLeader {
                        partition: 5,
                        leader_epoch: 3,
                        leader: 2,
                        replicas: 1,
                    },
                    pb::PartitionLeader {
                        partition: 7,
                        leader_epoch: 1,
                        leader: 0,
                        replicas: 2,
                    },
                ],
                leaders_full: false,
                replica_sets: vec![
                    pb::ReplicaSet { nodes: vec![0, 1] },
                    pb::ReplicaSet { nodes: vec![1, 0] },
                    pb::ReplicaSet { nodes: vec![0] },
                ],
            }]
        );
        server.abort();

        // Nobody listens there: an error, within the call bound.
        let dead = NodeAddr {
            replication_addr: format!("127.0.0.1:{}", harness::free_port()),
            ..node
        };
        let t0 = Instant::now();
        let err = rpc.log_end_offsets(dead, 7, vec![1]).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    });
}
