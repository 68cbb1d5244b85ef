//! The operator's side of reassignment on real processes and a real
//! ZooKeeper: the admin RPCs through `caskade-cli cluster reassign ...`
//! write exactly the contract JSON to `/admin/reassign` and rewrite it with
//! compare-and-set; `decommission` marks the node and plans every replica
//! off it; `cluster.auto_rebalance` writes a balanced plan for a node that
//! joined; a standalone node refuses with FAILED_PRECONDITION. The
//! execution of plans is the controller's (not tested here): these tests
//! stop at what is written.

use crate::harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::cluster::{ClusterOpts, NodeSpec, TestCluster};
use harness::{Server, ServerOpts, cli_at, free_port, runtime};
use zookeeper_client as zk;

const REASSIGN: &str = "/caskade/test/admin/reassign";

/// A raw ZooKeeper client of the cluster's ensemble.
async fn raw(c: &TestCluster) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_millis(4000))
        .connect(&c.zk.connect_string())
        .await
        .expect("connect a raw ZooKeeper client")
}

/// `/admin/reassign` as text and its version, if it exists.
fn reassign_znode(c: &TestCluster) -> Option<(String, i32)> {
    runtime().block_on(async {
        let zk = raw(c).await;
        match zk.get_data(REASSIGN).await {
            Ok((data, stat)) => Some((String::from_utf8(data).unwrap(), stat.version)),
            Err(zk::Error::NoNode) => None,
            Err(e) => panic!("read {REASSIGN}: {e}"),
        }
    })
}

/// `/partitions/<p>/replicas` of every partition.
fn assigned(c: &TestCluster) -> BTreeMap<u32, Vec<String>> {
    runtime().block_on(async {
        let zk = raw(c).await;
        let mut out = BTreeMap::new();
        for p in 0..c.opts.partitions {
            let path = format!("/caskade/test/partitions/{p}/replicas");
            let (data, _) = zk.get_data(&path).await.expect("replicas znode");
            out.insert(p, serde_json::from_slice(&data).expect("JSON list"));
        }
        out
    })
}

/// Waits (up to 30 s) until `done` holds of the partitions' replicas.
fn wait_assigned(c: &TestCluster, what: &str, done: impl Fn(&BTreeMap<u32, Vec<String>>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = assigned(c);
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {now:?} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 30 s) until the controller has deleted `/admin/reassign`
/// (the reassignment is done or cancelled).
fn wait_reassign_gone(c: &TestCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reassign_znode(c).is_some() {
        assert!(
            Instant::now() < deadline,
            "{REASSIGN} still there after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replicas per node after applying `plan` to `current`.
fn counts_after(
    current: &BTreeMap<u32, Vec<String>>,
    plan: &BTreeMap<u32, Vec<String>>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (p, r) in current {
        for n in plan.get(p).unwrap_or(r) {
            *out.entry(n.clone()).or_default() += 1;
        }
    }
    out
}

/// Execute, refuse a second, throttle and cancel with compare-and-set,
/// status, through the CLI against node-1. Node `node-9` is registered by
/// hand (never catches up), so the plan stays pending.
#[test]
fn admin_rpcs_write_and_rewrite_the_reassign_znode() {
    let c = TestCluster::start_shared(ClusterOpts::default());
    let addr = c.specs[0].addr.clone();
    let rt = runtime();
    let zk = rt.block_on(raw(&c));
    rt.block_on(async {
        let data =
            br#"{"id":"node-9","client_addr":"127.0.0.1:1","replication_addr":"127.0.0.1:1"}"#;
        let opts = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        zk.create("/caskade/test/nodes/node-9", data, &opts)
            .await
            .expect("register node-9");
    });
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"version":1,"partitions":{"0":["node-9","node-1","node-2"]}}"#,
    )
    .unwrap();
    let plan = plan.to_str().unwrap();

    // Refused plans write nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"partitions":{"0":["node-7","node-1","node-2"]}}"#).unwrap();
    let (code, out, err) = cli_at(
        &addr,
        &[
            "cluster",
            "reassign",
            "execute",
            "--plan",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "(error) partition 0: node node-7 is not registered in the cluster (live nodes: \
         node-1,node-2,node-3,node-9)\n"
    );
    assert_eq!(reassign_znode(&c), None);

    let (code, out, err) = cli_at(
        &addr,
        &[
            "cluster",
            "reassign",
            "execute",
            "--plan",
            plan,
            "--throttle",
            "10MiB",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "reassignment of 1 partition(s) started (10 MiB/s); `caskade-cli cluster reassign \
         status --watch` shows the progress\n"
    );
    let (json, v0) = reassign_znode(&c).expect("written");
    assert_eq!(
        json,
        r#"{"version":1,"throttle_bytes_per_sec":10485760,"cancel":false,"partitions":{"0":["node-9","node-1","node-2"]}}"#
    );

    // A second one is refused, through any node.
    let (code, out, err) = cli_at(
        &c.specs[2].addr,
        &["cluster", "reassign", "execute", "--plan", plan],
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "(error) a reassignment is in progress: see `caskade-cli cluster reassign status`, or \
         cancel it\n"
    );
    assert_eq!(reassign_znode(&c).unwrap().1, v0);

    // The controller's own rewrite (a partition added here by hand) is
    // kept by the throttle change: read-modify-write on the version.
    rt.block_on(async {
        let changed = br#"{"version":1,"throttle_bytes_per_sec":10485760,"cancel":false,"partitions":{"0":["node-9","node-1","node-2"],"1":["node-2","node-3","node-9"]}}"#;
        zk.set_data(REASSIGN, changed, Some(v0)).await.unwrap();
    });
    let (code, out, _) = cli_at(&addr, &["cluster", "reassign", "throttle", "20MiB"]);
    assert_eq!((code, out.as_str()), (0, "throttle set to 20 MiB/s\n"));
    let (json, v2) = reassign_znode(&c).unwrap();
    assert_eq!(v2, v0 + 2);
    assert_eq!(
        json,
        r#"{"version":1,"throttle_bytes_per_sec":20971520,"cancel":false,"partitions":{"0":["node-9","node-1","node-2"],"1":["node-2","node-3","node-9"]}}"#
    );

    // The controller adds node-9 to both partitions (step 1), and there
    // they stay: node-9 is registered by hand and never fetches, so it
    // never joins the ISR. Status: node-9 has not started (it never fetched).
    wait_assigned(&c, "node-9 added", |a| {
        a[&0].contains(&"node-9".to_string()) && a[&1].contains(&"node-9".to_string())
    });
    let (code, out, err) = cli_at(&addr, &["cluster", "reassign", "status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "reassignment in progress: 2 partition(s) left, throttle 20 MiB/s\n\
         PARTITION  REPLICAS                     TARGET                ADDING\n\
         0          node-1,node-2,node-3,node-9  node-9,node-1,node-2  node-9 not started\n\
         1          node-2,node-3,node-1,node-9  node-2,node-3,node-9  node-9 not started\n"
    );

    let (code, out, _) = cli_at(&addr, &["cluster", "reassign", "cancel"]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "cancelling: the controller reverts the 2 partition(s) not finished\n"
        )
    );
    // The cancel flag is written with compare-and-set (unless the
    // controller already reverted both partitions and deleted the znode).
    if let Some((json, v3)) = reassign_znode(&c) {
        assert_eq!(v3, v2 + 1);
        assert_eq!(
            json,
            r#"{"version":1,"throttle_bytes_per_sec":20971520,"cancel":true,"partitions":{"0":["node-9","node-1","node-2"],"1":["node-2","node-3","node-9"]}}"#
        );
    }
    // The controller reverts both partitions and deletes it.
    wait_reassign_gone(&c);
    let a = assigned(&c);
    assert_eq!(
        (a[&0].join(","), a[&1].join(",")),
        ("node-1,node-2,node-3".into(), "node-2,node-3,node-1".into())
    );
    let (code, out, _) = cli_at(&addr, &["cluster", "reassign", "status"]);
    assert_eq!((code, out.as_str()), (0, "no reassignment in progress\n"));
    for args in [
        &["cluster", "reassign", "cancel"][..],
        &["cluster", "reassign", "throttle", "1MiB"],
    ] {
        let (code, out, err) = cli_at(&addr, args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert_eq!(err, "(error) no reassignment in progress\n", "{args:?}");
    }
    // Usage errors exit 2.
    let (code, _, err) = cli_at(&addr, &["cluster", "reassign", "throttle", "fast"]);
    assert_eq!(code, 2, "{err}");
}

/// `decommission node-3` on 4 nodes x 8 partitions (6 replicas each):
/// the marker, and a plan leaving node-3 with nothing and the other three
/// with 8 each; `recommission` removes the marker.
#[test]
fn decommission_marks_the_node_and_plans_it_empty() {
    let c = TestCluster::start_shared(ClusterOpts {
        nodes: 4,
        partitions: 8,
        initial_nodes: 4,
        ..ClusterOpts::default()
    });
    let addr = c.specs[0].addr.clone();
    let (code, out, err) = cli_at(&addr, &["cluster", "decommission", "node-33"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "(error) unknown node node-33: not registered and hosting no replica\n"
    );
    let current = assigned(&c);
    let (code, out, err) = cli_at(
        &addr,
        &["cluster", "decommission", "node-3", "--throttle", "1MiB"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("node-3 is decommissioned; moving its replicas away (1 MiB/s):\n"),
        "{out}"
    );
    // The controller carries the plan out (empty partitions: quickly) and
    // deletes the znode; the result is the plan applied.
    wait_reassign_gone(&c);
    let plan = assigned(&c);
    assert!(
        plan.values()
            .all(|r| r.len() == 3 && !r.contains(&"node-3".to_string()))
    );
    let after = counts_after(&current, &plan);
    assert_eq!(
        after,
        BTreeMap::from([
            ("node-1".to_string(), 8),
            ("node-2".to_string(), 8),
            ("node-4".to_string(), 8),
        ])
    );
    // Every partition node-3 held is in the plan, and only 6 replicas move.
    let moved: usize = plan
        .iter()
        .map(|(p, r)| r.iter().filter(|n| !current[p].contains(n)).count())
        .sum();
    assert_eq!(moved, 6);
    let marker = runtime().block_on(async {
        raw(&c)
            .await
            .get_data("/caskade/test/admin/decommissioned/node-3")
            .await
    });
    assert_eq!(marker.expect("marker").0, b"{}");
    let (_, out, _) = cli_at(&addr, &["cluster", "reassign", "status"]);
    assert!(out.ends_with("\ndecommissioned: node-3\n"), "{out}");

    let (code, out, _) = cli_at(&addr, &["cluster", "recommission", "node-3"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "node-3 is no longer decommissioned\n")
    );
    let gone = runtime().block_on(async {
        raw(&c)
            .await
            .check_stat("/caskade/test/admin/decommissioned/node-3")
            .await
    });
    assert_eq!(gone.unwrap(), None);
}

/// `auto_rebalance` on, 3 nodes create the cluster (`initial_nodes` 3),
/// a 4th joins: after the grace period the controller writes a plan giving
/// node-4 its share (6 of 24 replicas, 2 preferred leaderships), moving
/// nothing else; not before the grace period.
#[test]
fn auto_rebalance_plans_a_share_for_a_joined_node() {
    let grace_ms = 3000;
    let mut c = TestCluster::start_shared(ClusterOpts {
        nodes: 3,
        partitions: 8,
        initial_nodes: 3,
        env: vec![
            ("CASKADE_CLUSTER_AUTO_REBALANCE".into(), "true".into()),
            (
                "CASKADE_CLUSTER_AUTO_REBALANCE_GRACE_MS".into(),
                grace_ms.to_string(),
            ),
            (
                "CASKADE_CLUSTER_AUTO_REBALANCE_THROTTLE_BYTES_PER_SEC".into(),
                "2097152".into(),
            ),
        ],
        ..ClusterOpts::default()
    });
    let current = assigned(&c);
    assert!(current.values().all(|r| !r.contains(&"node-4".to_string())));
    // A balanced cluster gets no plan.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reassign_znode(&c), None);

    // node-4: node-3's config with its own id, ports and data.
    let base = std::fs::read_to_string(&c.specs[2].config).unwrap();
    let (addr, repl) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let data = c.specs[2].data.with_file_name("node-4");
    let yaml = base
        .replace("node-3", "node-4")
        .replace(&c.specs[2].addr, &addr)
        .replace(&c.specs[2].repl_addr, &repl);
    let config = c.specs[2].config.with_file_name("node-4.yaml");
    std::fs::write(&config, yaml).unwrap();
    c.specs.push(NodeSpec {
        id: "node-4".into(),
        addr,
        repl_addr: repl,
        config,
        data,
    });
    c.servers.push(None);
    let joined = Instant::now();
    c.start_node(3);

    let deadline = joined + Duration::from_millis(grace_ms) + Duration::from_secs(15);
    // The plan, seen while it runs, or (empty partitions move in well
    // under a poll) already carried out: node-4 holds replicas.
    let holds_node4 =
        |a: &BTreeMap<u32, Vec<String>>| a.values().any(|r| r.contains(&"node-4".to_string()));
    let json = loop {
        if let Some((json, _)) = reassign_znode(&c) {
            break Some(json);
        }
        if holds_node4(&assigned(&c)) {
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "no plan within the grace period + 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        joined.elapsed() >= Duration::from_millis(grace_ms),
        "written after {:?}, before the grace period",
        joined.elapsed()
    );
    if let Some(json) = json {
        assert!(
            json.starts_with(r#"{"version":1,"throttle_bytes_per_sec":2097152,"cancel":false,"#)
        );
    }
    // The controller carries it out; the result is the plan applied.
    wait_reassign_gone(&c);
    let plan = assigned(&c);
    let after = counts_after(&current, &plan);
    assert_eq!(
        after,
        BTreeMap::from([
            ("node-1".to_string(), 6),
            ("node-2".to_string(), 6),
            ("node-3".to_string(), 6),
            ("node-4".to_string(), 6),
        ])
    );
    let mut leaders: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, r) in &current {
        *leaders
            .entry(plan.get(p).unwrap_or(r)[0].as_str())
            .or_default() += 1;
    }
    assert_eq!(
        leaders.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2, 2]
    );
    let moved: usize = plan
        .iter()
        .map(|(p, r)| r.iter().filter(|n| !current[p].contains(n)).count())
        .sum();
    assert_eq!(moved, 6);
}

/// A standalone node has no cluster to reassign.
#[test]
fn standalone_refuses_with_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), ServerOpts::default());
    let (code, out, err) = cli_at(&server.addr, &["cluster", "reassign", "status"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "(error) reassignment needs a cluster: this node runs standalone (no `cluster:` section)\n"
    );
    let rt = runtime();
    let status = rt.block_on(async {
        let mut kv =
            caskade::proto::kv_client::KvClient::connect(format!("http://{}", server.addr))
                .await
                .unwrap();
        kv.reassign_status(caskade::proto::ReassignStatusRequest {})
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.metadata().get("caskade-reason").unwrap(),
        "FAILED_PRECONDITION"
    );
}
