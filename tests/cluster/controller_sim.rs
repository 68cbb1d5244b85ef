//! The controller simulation (`tests/sim`) at a small scale: 20 in-process
//! nodes, 2,000 partitions, replication factor 3, on a real ZooKeeper.
//! Asserts the exact end states of the initial assignment and of a
//! failover after the controller node is killed (its session left to
//! expire, as after SIGKILL), the exact notices the controller sent (full
//! states only of the partitions each node hosts, one shared routing map
//! of every partition's leader), that an idle controller reads no znode,
//! and that a node leaving makes no node re-read the registrations.
//! Timings are benchmark output (`benches/controller_sim.rs`), not
//! asserted here.

use crate::harness;
use crate::sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::zk::Zk;
use sim::{NONE, Sim, SimConfig, raw_client};

/// Nodes of the simulation.
const NODES: usize = 20;

/// Partitions of the simulation.
const PARTITIONS: u32 = 2000;

/// Longest time the whole test may take.
const BOUND: Duration = Duration::from_secs(50);

/// The replicas `decide::assign` gives partition `p` over `NODES` nodes.
fn replicas(p: u32) -> Vec<u16> {
    (0..3).map(|i| ((p as usize + i) % NODES) as u16).collect()
}

/// Every live node routes every partition to ZooKeeper's leader at its
/// leader epoch, and holds ZooKeeper's full state of exactly the
/// partitions it hosts (none of the others).
async fn assert_views_match_zk(sim: &Sim, holder: &zookeeper_client::Client) {
    let zk = sim.zk_states(holder).await;
    assert_eq!(zk.len(), PARTITIONS as usize);
    for n in sim.nodes.iter().filter(|n| n.alive()) {
        for (p, want) in &zk {
            assert_eq!(
                n.route(*p),
                Some((want.0, want.1)),
                "node {} routes partition {p} differently from ZooKeeper",
                n.index
            );
            let hosts = replicas(*p).contains(&n.index);
            assert_eq!(
                n.known(*p).as_ref(),
                hosts.then_some(want),
                "node {} (hosts partition {p}: {hosts}) knows it differently",
                n.index
            );
        }
    }
}

/// Znodes read by every node of the simulation so far: states, replicas,
/// registrations.
fn reads() -> [u64; 3] {
    use caskade::cluster::zk::reads as r;
    use std::sync::atomic::Ordering::Relaxed;
    [
        r::STATES.load(Relaxed),
        r::REPLICAS.load(Relaxed),
        r::REGISTRATIONS.load(Relaxed),
    ]
}

#[test]
fn controller_failover_20_nodes_2000_partitions() {
    let _one = harness::cluster::OneCluster::take();
    // The shared server; the simulation's root under this test's chroot.
    let zk = Zk::shared();
    let addr = SocketAddr::from(([127, 0, 0, 1], zk.client_ports()[0]));
    let root = format!("{}/caskade/sim-test", zk.chroot());
    harness::runtime().block_on(async {
        tokio::time::timeout(BOUND, scenario(addr, root))
            .await
            .expect("the simulation did not finish in time")
    });
}

async fn scenario(addr: SocketAddr, root: String) {
    let holder = raw_client(addr).await;
    let cfg = SimConfig {
        nodes: NODES,
        partitions: PARTITIONS,
        session_ms: 2000,
        root,
    };
    let mut sim = Sim::start(cfg, addr, &holder).await;
    assert_eq!(sim.calls().notices, 0, "no controller before the release");
    sim.release(&holder).await;
    let w = sim
        .wait_done(1, Duration::from_millis(50), Duration::from_secs(20))
        .await;
    assert!(w.told_ms.is_some(), "startup did not converge: {w:?}");

    // Initial assignment: preferred leaders, full ISRs, one notice per
    // node carrying the full state of the partitions it hosts (3 x P in
    // all) and the shared map of every partition's leader.
    let states = sim.zk_states(&holder).await;
    for p in 0..PARTITIONS {
        let r = replicas(p);
        assert_eq!(states[&p], (r[0], 1, 0, r.clone()), "partition {p}");
    }
    assert_views_match_zk(&sim, &holder).await;
    let start = sim.calls();
    assert_eq!(start.notices, NODES as u64);
    assert_eq!(start.states, 3 * PARTITIONS as u64);
    assert_eq!(start.leader_entries, NODES as u64 * PARTITIONS as u64);
    assert_eq!(start.refused, 0);
    // Nothing to elect: no node was asked for offsets.
    assert_eq!(start.offset_calls, 0);

    // Idle for longer than the old 3 s reconciliation tick: nothing is
    // read (no state, no replicas, no registration) and nothing sent.
    let idle = reads();
    let calls = sim.calls();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(
        reads(),
        idle,
        "an idle cluster read znodes (states, replicas, registrations)"
    );
    assert_eq!(sim.calls(), calls);

    // Kill the controller's node; its session expires after 2 s.
    let k = sim.controller().expect("a controller");
    let before = sim.calls();
    let read_before = reads();
    sim.kill(k);
    let t = Instant::now();
    let next = loop {
        if let Some(c) = sim.controller().filter(|&c| c != k) {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no new controller");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(next, k);
    let w = sim
        .wait_done(2, Duration::from_millis(50), Duration::from_secs(20))
        .await;
    assert!(w.told_ms.is_some(), "failover did not converge: {w:?}");

    // Where k led, the next replica leads at epoch 2; where it followed,
    // it left the ISR; elsewhere nothing changed.
    let states = sim.zk_states(&holder).await;
    let k16 = k as u16;
    for p in 0..PARTITIONS {
        let r = replicas(p);
        let rest: Vec<u16> = r.iter().copied().filter(|&m| m != k16).collect();
        let want = if r[0] == k16 {
            (r[1], 2, 1, rest)
        } else if r.contains(&k16) {
            (r[0], 1, 1, rest)
        } else {
            (r[0], 1, 0, r)
        };
        assert_eq!(states[&p], want, "partition {p} after {k} died");
        assert_ne!(states[&p].0, NONE);
    }
    assert_views_match_zk(&sim, &holder).await;
    let failover = sim.calls() - before;
    let read = reads();
    let live = NODES as u64 - 1;
    // One notice per live node with the full state of what it hosts (a
    // new controller does not know what each node knows): every replica
    // but k's, and the map of every leader.
    assert_eq!(failover.notices, live);
    let hosted_by_k = 3 * PARTITIONS as u64 / NODES as u64;
    assert_eq!(failover.states, 3 * PARTITIONS as u64 - hosted_by_k);
    assert_eq!(failover.leader_entries, live * PARTITIONS as u64);
    // A node left: the watchers read no registration; only the new
    // controller loads the live ones, once.
    assert_eq!(read[2] - read_before[2], live);
    // Offsets asked of the two surviving ISR members of k's partitions,
    // once each, for exactly those partitions.
    let led_by_k = PARTITIONS as u64 / NODES as u64;
    assert_eq!(failover.offset_calls, 2);
    assert_eq!(failover.offset_partitions, 2 * led_by_k);
    // No live node lost its session or lease on the way.
    for n in sim.nodes.iter().filter(|n| n.alive()) {
        assert_eq!(n.fences.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    sim.stop().await;
}
