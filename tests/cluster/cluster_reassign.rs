//! Replica reassignment on real processes and a real ZooKeeper: a fourth
//! node joins a 3-node cluster, the tests write `<root>/admin/reassign`
//! directly (as the admin RPC does) and check the controller moves the
//! replicas (no failed and no lost `acks: all` write meanwhile), that the
//! removed node deletes its data, the throttle, cancel, and a controller
//! failover in the middle.
//!
//! The tests of this file run one at a time (the `SERIAL` lock).

use crate::harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use caskade::client::SetOptions;
use harness::cluster::{ClusterOpts, NodeSpec, TestCluster, tail};
use harness::load::Load;
use harness::{free_port, runtime};

/// One cluster test at a time, across the whole binary.
use crate::SERIAL;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const ROOT: &str = "/caskade/test";

/// A 3-node cluster (replication factor 3: every partition on nodes 1-3),
/// then node-4 started; returns once node-4 is known to node-1.
fn three_then_four(partitions: u32) -> TestCluster {
    let mut c = TestCluster::start_shared(ClusterOpts {
        nodes: 3,
        partitions,
        initial_nodes: 3,
        replica_lag_ms: 3000,
        request_timeout_ms: 8000,
        // Long: on a loaded machine a 2 s session made leaders fence
        // themselves (ZooKeeper silent for 1.3 s), failing writes in flight
        // for reasons unrelated to reassignment.
        session_timeout_ms: 6000,
        ..ClusterOpts::default()
    });
    let src = &c.specs[0];
    let yaml = std::fs::read_to_string(&src.config).expect("node-1 config");
    let (addr, repl) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let data = src.data.with_file_name("node-4");
    let yaml = yaml
        .replace("node-1", "node-4")
        .replace(&src.addr, &addr)
        .replace(&src.repl_addr, &repl);
    let config = src.config.with_file_name("node-4.yaml");
    std::fs::write(&config, yaml).expect("write node-4 config");
    c.specs.push(NodeSpec {
        id: "node-4".into(),
        addr,
        repl_addr: repl,
        config,
        data,
    });
    c.servers.push(None);
    c.gids.push(None);
    c.start_node(3);
    c.wait_until("node-4 is registered", |c| {
        c.metadata(0)
            .is_some_and(|m| m.nodes.iter().any(|n| n.id == "node-4"))
    });
    c
}

/// Runs `f` with a plain ZooKeeper client (connected in the runtime that
/// runs `f`: a client's session lives on the runtime it was made on).
fn with_zk<T, F, Fut>(c: &TestCluster, f: F) -> T
where
    F: FnOnce(zookeeper_client::Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let connect = c.zk.connect_string();
    runtime().block_on(async move {
        let z = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(5))
            .connect(&connect)
            .await
            .expect("connect to ZooKeeper");
        f(z).await
    })
}

/// Creates `/admin/reassign` with `partitions` and `throttle`.
fn reassign(c: &TestCluster, throttle: u64, partitions: &[(u32, &[&str])]) {
    let parts: serde_json::Map<String, serde_json::Value> = partitions
        .iter()
        .map(|(p, t)| (p.to_string(), serde_json::json!(t)))
        .collect();
    let body = serde_json::json!({
        "version": 1, "throttle_bytes_per_sec": throttle, "cancel": false, "partitions": parts,
    });
    with_zk(c, |z| async move {
        let opts = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        z.mkdir(&format!("{ROOT}/admin"), &opts).await.ok();
        z.create(
            &format!("{ROOT}/admin/reassign"),
            &serde_json::to_vec(&body).unwrap(),
            &opts,
        )
        .await
        .expect("create /admin/reassign");
    });
}

/// Rewrites fields of `/admin/reassign` with compare-and-set (as the admin
/// RPC does for throttle and cancel).
fn amend(c: &TestCluster, field: &str, value: serde_json::Value) {
    let path = format!("{ROOT}/admin/reassign");
    with_zk(c, |z| async move {
        loop {
            let (data, stat) = z.get_data(&path).await.expect("read /admin/reassign");
            let mut v: serde_json::Value = serde_json::from_slice(&data).unwrap();
            v[field] = value.clone();
            match z
                .set_data(&path, &serde_json::to_vec(&v).unwrap(), Some(stat.version))
                .await
            {
                Ok(_) => return,
                Err(zookeeper_client::Error::BadVersion) => continue,
                Err(e) => panic!("amend {path}: {e}"),
            }
        }
    });
}

/// Whether `/admin/reassign` exists.
fn in_progress(c: &TestCluster) -> bool {
    with_zk(c, |z| async move {
        z.check_stat(&format!("{ROOT}/admin/reassign"))
            .await
            .expect("stat")
            .is_some()
    })
}

/// `/partitions/<p>/replicas` and the state's ISR, from ZooKeeper.
fn zk_assignment(c: &TestCluster, p: u32) -> (Vec<String>, Vec<String>) {
    with_zk(c, |z| async move {
        let (r, _) = z
            .get_data(&format!("{ROOT}/partitions/{p}/replicas"))
            .await
            .unwrap();
        let (s, _) = z
            .get_data(&format!("{ROOT}/partitions/{p}/state"))
            .await
            .unwrap();
        let s: serde_json::Value = serde_json::from_slice(&s).unwrap();
        let isr = s["isr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        (serde_json::from_slice(&r).unwrap(), isr)
    })
}

/// The partition directories under node `i`'s data directory.
fn dirs(c: &TestCluster, i: usize) -> BTreeSet<u32> {
    std::fs::read_dir(c.specs[i].data.join("partitions"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn wait(c: &TestCluster, what: &str, secs: u64, cond: impl Fn(&TestCluster) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond(c) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: String = (0..c.specs.len())
        .map(|i| format!("--- {} ---\n{}\n", c.specs[i].id, tail(&c.log(i), 30)))
        .collect();
    panic!("timed out waiting until {what}\n{logs}");
}

/// Writes `n` values of `size` bytes into partition `p` (acks: all).
fn fill(c: &TestCluster, p: u32, n: usize, size: usize) {
    let rt = runtime();
    let client = c.client(&rt);
    let keys: Vec<String> = (0..n).map(|i| c.key_in(p, i)).collect();
    rt.block_on(async {
        for k in keys {
            client
                .set(k, vec![b'x'; size], SetOptions::default())
                .await
                .expect("fill");
        }
    });
}

/// Node-4's log end of `p` and the leader's, as the leader reports them.
fn catch_up(c: &TestCluster, p: u32) -> Option<(u64, u64)> {
    let part = c.partition(p)?;
    let end = |id: &str| {
        part.offsets
            .iter()
            .find(|o| o.node_id == id)
            .map(|o| o.log_end_offset)
    };
    Some((end("node-4")?, end(&part.leader)?))
}

/// (a) Three partitions move from node-3 to node-4 while 6 clients write
/// with `acks: all`: no write fails, every acknowledged one is read back,
/// node-4 hosts exactly those partitions, node-3 deleted their
/// directories, and ZooKeeper and Metadata list the exact replicas and ISR.
#[test]
fn replicas_move_to_a_new_node_under_acks_all_load_without_a_failed_or_lost_write() {
    let _s = serial();
    let c = three_then_four(4);
    for p in 0..4 {
        fill(&c, p, 200, 1000);
    }
    let rt = runtime();
    let client = c.client(&rt);
    let load = Load::start(&rt, &client, 6);
    std::thread::sleep(Duration::from_millis(500));
    // Leaders at creation: p0 node-1, p1 node-2, p3 node-1 (p mod 3); they
    // stay in the target, so no leadership moves.
    let targets: [(u32, &[&str]); 3] = [
        (0, &["node-1", "node-2", "node-4"]),
        (1, &["node-2", "node-4", "node-1"]),
        (3, &["node-1", "node-4", "node-2"]),
    ];
    reassign(&c, 0, &targets);
    wait(&c, "the reassignment finished", 40, |c| !in_progress(c));
    std::thread::sleep(Duration::from_millis(500));
    let tally = load.stop(&rt);
    assert_eq!(
        tally.failed(),
        0,
        "acks: all writes failed during the reassignment: {:?}",
        tally.first_errors(10)
    );
    let acked = tally.acked();
    assert!(acked.len() > 100, "writes went on: {}", acked.len());
    tally.assert_read_back(&rt, &client, 1);

    for (p, t) in targets {
        let (replicas, isr) = zk_assignment(&c, p);
        assert_eq!(replicas, s(t), "partition {p}");
        assert_eq!(sorted(isr), sorted(s(t)), "partition {p}");
    }
    assert_eq!(
        zk_assignment(&c, 2),
        (
            s(&["node-3", "node-1", "node-2"]),
            s(&["node-3", "node-1", "node-2"])
        )
    );
    c.wait_until("node-3 deleted the directories it lost", |c| {
        dirs(c, 2) == BTreeSet::from([2])
    });
    assert_eq!(dirs(&c, 3), BTreeSet::from([0, 1, 3]));
    let m = c.metadata(3).expect("node-4 metadata");
    let own: BTreeSet<u32> = m
        .partitions
        .iter()
        .filter(|p| p.offsets.iter().any(|o| o.node_id == "node-4"))
        .map(|p| p.id)
        .collect();
    assert_eq!(own, BTreeSet::from([0, 1, 3]));
    for (p, t) in targets {
        let part = c.partition(p).expect("led");
        assert_eq!(part.replicas, s(t), "partition {p}");
        assert_eq!(sorted(part.isr.clone()), sorted(s(t)), "partition {p}");
    }
    // node-4 serves what it caught up on: a key written before it joined.
    let key = c.key_in(0, 7);
    rt.block_on(async {
        let got = c.client_of(3, &rt).get(key.clone()).await.expect("get");
        assert_eq!(got.map(|v| v.len()), Some(1000), "{key}");
    });
}

/// (b) With a throttle of 512 KiB/s, node-4 catches up on 2 MiB of
/// partition 0 in no less than ~3.5 s; unthrottled, partition 1's 2 MiB
/// take a fraction of that.
#[test]
fn the_throttle_bounds_the_catch_up_rate_of_replicas_being_added() {
    let _s = serial();
    let c = three_then_four(2);
    fill(&c, 0, 128, 16 << 10);
    fill(&c, 1, 128, 16 << 10);
    let timed = |p: u32, throttle: u64, target: &[&str]| {
        let start = Instant::now();
        reassign(&c, throttle, &[(p, target)]);
        wait(&c, "node-4 caught up", 60, |c| {
            catch_up(c, p).is_some_and(|(n4, leader)| n4 >= leader && leader >= 128)
        });
        let took = start.elapsed();
        wait(&c, "the reassignment finished", 30, |c| !in_progress(c));
        took
    };
    let throttled = timed(0, 512 << 10, &["node-1", "node-2", "node-4"]);
    let free = timed(1, 0, &["node-2", "node-4", "node-1"]);
    eprintln!("catch-up of 2 MiB: throttled (512 KiB/s) {throttled:?}, unthrottled {free:?}");
    // 2 MiB at 512 KiB/s from an empty bucket: 4 s (less one record).
    assert!(
        throttled >= Duration::from_millis(3500) && throttled <= Duration::from_secs(20),
        "throttled catch-up took {throttled:?}"
    );
    assert!(
        free * 3 <= throttled,
        "unthrottled {free:?} vs throttled {throttled:?}"
    );
    assert_eq!(dirs(&c, 3), BTreeSet::from([0, 1]));
}

/// (c) Cancel while node-4 is catching up (slowly): the original replicas
/// come back, node-4 deletes its partial copy, the znode is gone.
#[test]
fn cancel_restores_the_original_replicas_and_removes_the_partial_copy() {
    let _s = serial();
    let c = three_then_four(2);
    fill(&c, 0, 128, 16 << 10);
    let before = zk_assignment(&c, 0);
    reassign(&c, 64 << 10, &[(0, &["node-1", "node-2", "node-4"])]);
    wait(&c, "node-4 holds part of partition 0", 30, |c| {
        catch_up(c, 0).is_some_and(|(n4, leader)| n4 > 0 && n4 < leader)
    });
    assert!(dirs(&c, 3).contains(&0));
    let (replicas, _) = zk_assignment(&c, 0);
    assert_eq!(replicas, s(&["node-1", "node-2", "node-3", "node-4"]));
    amend(&c, "cancel", serde_json::json!(true));
    wait(&c, "the cancel finished", 30, |c| !in_progress(c));
    assert_eq!(zk_assignment(&c, 0), before);
    c.wait_until("node-4 deleted its partial copy", |c| dirs(c, 3).is_empty());
    let part = c.partition(0).expect("led");
    assert_eq!(part.replicas, before.0);
    assert_eq!(sorted(part.isr), sorted(before.1));
}

/// (d) The controller is killed while a (throttled) reassignment is in
/// progress; the throttle is then lifted: the new controller finishes it
/// from ZooKeeper's state alone.
#[test]
fn a_new_controller_finishes_a_reassignment_after_a_failover() {
    let _s = serial();
    let mut c = three_then_four(3);
    let controller = c.metadata(0).expect("metadata").controller;
    let victim = c.index(&controller);
    // A partition node-4 joins whose leader is not the controller.
    let p = (0..3)
        .find(|&p| c.leader(p).is_some_and(|l| l != victim))
        .expect("a partition led elsewhere");
    fill(&c, p, 64, 16 << 10);
    let (original, _) = zk_assignment(&c, p);
    let leader = c.specs[c.leader(p).unwrap()].id.clone();
    let gone = original
        .iter()
        .find(|n| **n != leader && **n != controller)
        .cloned()
        .unwrap_or_else(|| original.iter().find(|n| **n != leader).unwrap().clone());
    let target: Vec<String> = original
        .iter()
        .map(|n| {
            if *n == gone {
                "node-4".into()
            } else {
                n.clone()
            }
        })
        .collect();
    let t: Vec<&str> = target.iter().map(String::as_str).collect();
    reassign(&c, 32 << 10, &[(p, &t)]);
    wait(&c, "step 1 written", 20, |c| {
        zk_assignment(c, p).0.len() == 4
    });
    c.kill(victim);
    // Lifting the throttle takes effect at once: at 32 KiB/s the 1 MiB
    // would take 32 s.
    amend(&c, "throttle_bytes_per_sec", serde_json::json!(0));
    wait(
        &c,
        "the new controller finished the reassignment",
        20,
        |c| !in_progress(c),
    );
    let (replicas, isr) = zk_assignment(&c, p);
    assert_eq!(replicas, target, "controller {controller} killed");
    assert!(isr.contains(&"node-4".to_string()), "isr {isr:?}");
    assert!(!isr.contains(&gone), "isr {isr:?}");
    let now = c.metadata(3).expect("metadata").controller;
    assert_ne!(now, controller);
    if gone != controller {
        let i = c.index(&gone);
        c.wait_until("the removed node deleted its copy", |c| {
            !dirs(c, i).contains(&p)
        });
    }
}

/// (e) node-3 is down while partition 0 moves off it to node-4; when it
/// starts again it opens the directory it finds, learns the newer state
/// and deletes it, and keeps the partition it still hosts.
#[test]
fn a_node_down_during_its_removal_deletes_the_directory_when_it_returns() {
    let _s = serial();
    let mut c = three_then_four(2);
    fill(&c, 0, 50, 1000);
    assert_eq!(dirs(&c, 2), BTreeSet::from([0, 1]));
    c.stop_node(2);
    reassign(&c, 0, &[(0, &["node-1", "node-2", "node-4"])]);
    wait(&c, "the reassignment finished", 40, |c| !in_progress(c));
    assert_eq!(zk_assignment(&c, 0).0, s(&["node-1", "node-2", "node-4"]));
    // Still on disk: it was down.
    assert_eq!(dirs(&c, 2), BTreeSet::from([0, 1]));
    c.start_node(2);
    c.wait_until("node-3 deleted partition 0's directory", |c| {
        dirs(c, 2) == BTreeSet::from([1])
    });
    c.wait_until("every partition led with a full ISR", |c| {
        c.all_led() && c.full_isr()
    });
    let log = c.log(2);
    assert!(
        log.contains("removed from this node's replicas at epoch"),
        "{}",
        tail(&log, 30)
    );
    let part = c.partition(0).expect("led");
    assert_eq!(part.replicas, s(&["node-1", "node-2", "node-4"]));
    assert_eq!(sorted(part.isr), s(&["node-1", "node-2", "node-4"]));
}

/// `/partitions/<p>/state` as JSON.
fn zk_state(c: &TestCluster, p: u32) -> serde_json::Value {
    with_zk(c, |z| async move {
        let (s, _) = z
            .get_data(&format!("{ROOT}/partitions/{p}/state"))
            .await
            .unwrap();
        serde_json::from_slice(&s).unwrap()
    })
}

/// (f) Every partition's leader leaves its replicas while 6 clients write
/// with `acks: all`: each leadership moves in the reassignment's Lead step,
/// handed over (the old leader stops admitting and answers what it
/// admitted before the controller names the new one), so no write fails
/// and every acknowledged one is read back with its value; each partition
/// ends with exactly the target replicas and ISR, led by the target's
/// first replica, three epochs on (expand, lead, shrink: no election).
#[test]
fn leadership_moves_of_a_reassignment_hand_over_without_a_failed_write() {
    let _s = serial();
    let c = three_then_four(4);
    c.wait_until("every partition led with a full ISR", |c| {
        c.all_led() && c.full_isr()
    });
    let leaders: Vec<String> = (0..4)
        .map(|p| c.specs[c.leader(p).expect("led")].id.clone())
        .collect();
    assert_eq!(leaders, s(&["node-1", "node-2", "node-3", "node-1"]));
    for p in 0..4 {
        fill(&c, p, 50, 1000);
    }
    let epochs: Vec<u64> = (0..4)
        .map(|p| zk_state(&c, p)["leader_epoch"].as_u64().unwrap())
        .collect();
    let rt = runtime();
    let client = c.client(&rt);
    let load = Load::start(&rt, &client, 6);
    std::thread::sleep(Duration::from_millis(500));
    // No target keeps its partition's leader: four Lead steps.
    let targets: [(u32, &[&str]); 4] = [
        (0, &["node-2", "node-3", "node-4"]),
        (1, &["node-4", "node-1", "node-3"]),
        (2, &["node-1", "node-2", "node-4"]),
        (3, &["node-4", "node-2", "node-3"]),
    ];
    reassign(&c, 0, &targets);
    wait(&c, "the reassignment finished", 40, |c| !in_progress(c));
    std::thread::sleep(Duration::from_millis(500));
    let ok_before = load.ok();
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.stop(&rt);
    let logs: String = (0..4)
        .map(|i| format!("--- {} ---\n{}\n", c.specs[i].id, tail(&c.log(i), 25)))
        .collect();
    assert_eq!(
        tally.failed(),
        0,
        "acks: all writes failed while leaderships moved: {:?}\n{logs}",
        tally.first_errors(10)
    );
    assert!(
        tally.ok.load(std::sync::atomic::Ordering::SeqCst) > ok_before && ok_before > 100,
        "writes went on after the moves ({ok_before})"
    );
    tally.assert_read_back(&rt, &client, 1);

    for (p, t) in targets {
        let (replicas, isr) = zk_assignment(&c, p);
        assert_eq!(replicas, s(t), "partition {p}");
        assert_eq!(sorted(isr), sorted(s(t)), "partition {p}");
        let st = zk_state(&c, p);
        assert_eq!(st["leader"].as_str(), Some(t[0]), "partition {p}: {st}");
        assert_eq!(
            st["leader_epoch"].as_u64(),
            Some(epochs[p as usize] + 3),
            "partition {p}: {st}"
        );
        let part = c.partition(p).expect("led");
        assert_eq!(part.leader, t[0], "partition {p}");
        assert_eq!(part.replicas, s(t), "partition {p}");
        assert_eq!(sorted(part.isr.clone()), sorted(s(t)), "partition {p}");
    }
}
