//! Controlled shutdown on real processes and a real ZooKeeper: SIGTERM on
//! a node that leads partitions moves every leadership away before the
//! process exits, and a client writing with `acks: all` meanwhile sees no
//! error at all.
//!
//! The tests of this file run one at a time (the `SERIAL` lock).

use crate::harness;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use harness::cluster::{ClusterOpts, TestCluster, tail};
use harness::load::Load;
use harness::runtime;
use serde_json::Value;

/// One cluster test at a time, across the whole binary.
use crate::SERIAL;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/partitions/<p>/state` of every partition, read with a plain
/// ZooKeeper client.
fn zk_states(c: &TestCluster) -> BTreeMap<u32, Value> {
    let connect = c.zk.connect_string();
    let partitions = c.opts.partitions;
    runtime().block_on(async move {
        let zk = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(5))
            .connect(&connect)
            .await
            .expect("connect to ZooKeeper");
        let mut out = BTreeMap::new();
        for p in 0..partitions {
            let path = format!("/caskade/test/partitions/{p}/state");
            let (data, _) = zk.get_data(&path).await.expect("read a state");
            out.insert(p, serde_json::from_slice(&data).expect("JSON state"));
        }
        out
    })
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM on node `victim` (chosen by `pick` among the running nodes)
/// while clients write; returns what the test checks.
fn shutdown_under_load(pick: impl Fn(&TestCluster) -> usize) {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts {
        partitions: 12,
        // Long: a leadership that only moved when the session closed would
        // still be moved at once; the log and the epochs tell them apart.
        session_timeout_ms: 6000,
        replica_lag_ms: 10_000,
        ..ClusterOpts::default()
    });
    let victim = pick(&c);
    let id = c.specs[victim].id.clone();
    let before = zk_states(&c);
    let led: Vec<u32> = before
        .iter()
        .filter(|(_, s)| s["leader"].as_str() == Some(id.as_str()))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(
        led.len(),
        4,
        "{id} leads a third of 12 partitions: {before:?}"
    );

    let rt = runtime();
    let client = c.client(&rt);
    let load = Load::start(&rt, &client, 8);
    std::thread::sleep(Duration::from_millis(700));
    let ok_before = load.ok();

    let mut server = c.servers[victim].take().expect("victim runs");
    let status = server.stop();
    let log = server.log();
    assert!(
        status.success(),
        "{id} exit status {status:?}\n{}",
        tail(&log, 40)
    );

    std::thread::sleep(Duration::from_millis(700));
    let tally = load.stop(&rt);
    assert_eq!(
        tally.failed(),
        0,
        "acks: all writes failed during the controlled shutdown of {id}: {:?}\n{}",
        tally.first_errors(10),
        tail(&log, 40)
    );
    let ok = tally.ok.load(Ordering::SeqCst);
    assert!(
        ok > ok_before && ok_before > 0,
        "writes went on ({ok_before} -> {ok})"
    );

    // The node itself saw its leaderships go before it exited.
    let moved = format!(
        "controlled shutdown: {n} of {n} leaderships moved",
        n = led.len()
    );
    assert!(log.contains(&moved), "no `{moved}` in\n{}", tail(&log, 60));
    let closed = log.find("left the cluster").expect("session closed");
    assert!(log.find(&moved).is_some_and(|m| m < closed));

    // ZooKeeper after the exit: no partition names it, none has it in
    // its ISR; each partition it led got exactly one new epoch.
    let after = zk_states(&c);
    for (p, s) in &after {
        assert_ne!(
            s["leader"].as_str(),
            Some(id.as_str()),
            "partition {p}: {s}"
        );
        assert!(s["leader"].is_string(), "partition {p} is offline: {s}");
        assert!(!names(s, "isr").contains(&id), "partition {p}: {s}");
        let (e0, e1) = (
            before[p]["leader_epoch"].as_u64(),
            s["leader_epoch"].as_u64(),
        );
        let bump = if led.contains(p) { 1 } else { 0 };
        assert_eq!(
            e1,
            e0.map(|e| e + bump),
            "partition {p}: {} -> {s}",
            before[p]
        );
    }

    // Every acknowledged write is readable.
    tally.assert_read_back(&rt, &client, 7);
}

/// A node that is not the controller.
#[test]
fn sigterm_moves_every_leadership_away_before_exit_with_no_failed_write() {
    shutdown_under_load(|c| {
        let m = c.metadata(0).expect("metadata");
        let controller = m.controller.clone();
        (0..c.specs.len())
            .find(|&i| c.specs[i].id != controller)
            .expect("a node that is not the controller")
    });
}

/// The controller itself: it moves its own leaderships, then a new
/// controller takes over when its session closes.
#[test]
fn sigterm_on_the_controller_moves_its_leaderships_first() {
    shutdown_under_load(|c| {
        let m = c.metadata(0).expect("metadata");
        c.index(&m.controller)
    });
}
