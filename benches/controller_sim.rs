//! Controller simulation at scale (issue 12): N in-process nodes (real
//! `ZkCluster`s, one ZooKeeper session each) and P partitions on a real
//! ZooKeeper, over simulated replicas (`tests/sim`). Prints the startup
//! time, the controller failover times and the ZooKeeper traffic of each
//! phase (ZooKeeper's `mntr` counters) and the controller's notices.
//!
//! ```text
//! cargo bench --bench controller_sim -- --nodes 100 --partitions 100000
//! ```
//!
//! Options: `--nodes N` (100), `--partitions P` (100000), `--session-ms`
//! (6000, the default session timeout), `--idle-s` (9: the steady-state
//! window). `CASKADE_SIM_LOG=FILE` writes the nodes' log (with
//! timestamps, `RUST_LOG` filter, default `caskade=info`) to FILE.
//! ZooKeeper runs with a 2 GiB heap unless `CASKADE_ZK_HEAP` says
//! otherwise.
//!
//! The last line is a row of the table in docs/BENCHMARKS.md: partitions,
//! nodes, session timeout, startup (all led / all told, ms after the
//! release of the first election), election after the kill, failover (all
//! led / all told, ms after the election), ZooKeeper packets received
//! (startup / per idle second / failover), state znodes read per idle
//! second, notices x full states each (startup / failover), registrations
//! read in the failover, node views differing from ZooKeeper, peak RSS
//! (MiB).

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/sim/mod.rs"]
mod sim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::zk::Zk;
use sim::{Calls, Sim, SimConfig, delta, mntr, ms_since, raw_client};

/// Longest wait for any phase to converge.
const PHASE_BOUND: Duration = Duration::from_secs(900);

/// Znodes read by the nodes so far: states, replicas, registrations.
fn reads() -> [u64; 3] {
    use caskade::cluster::zk::reads as r;
    use std::sync::atomic::Ordering::Relaxed;
    [
        r::STATES.load(Relaxed),
        r::REPLICAS.load(Relaxed),
        r::REGISTRATIONS.load(Relaxed),
    ]
}

/// `a - b`, element by element.
fn minus(a: [u64; 3], b: [u64; 3]) -> [u64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// One phase's ZooKeeper traffic and controller calls.
fn traffic(
    name: &str,
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
    calls: Calls,
    read: [u64; 3],
) {
    println!(
        "  {name}: znodes read by the nodes: {} states, {} replicas, {} registrations; \
         routing entries delivered {} (shared maps)",
        read[0], read[1], read[2], calls.leader_entries
    );
    println!(
        "  {name}: zk packets received {} sent {}, znodes {:+} (now {}), watches {:+} (now {}), \
         data {:+} B (now {} B), zk max latency {} ms; leader_and_isr {} calls ({} refused) \
         carrying {} states; log_end_offsets {} calls for {} partitions",
        delta(before, after, "zk_packets_received"),
        delta(before, after, "zk_packets_sent"),
        delta(before, after, "zk_znode_count"),
        after.get("zk_znode_count").copied().unwrap_or(0),
        delta(before, after, "zk_watch_count"),
        after.get("zk_watch_count").copied().unwrap_or(0),
        delta(before, after, "zk_approximate_data_size"),
        after.get("zk_approximate_data_size").copied().unwrap_or(0),
        after.get("zk_max_latency").copied().unwrap_or(0),
        calls.notices,
        calls.refused,
        calls.states,
        calls.offset_calls,
        calls.offset_partitions
    );
}

/// VmHWM / VmRSS of process `pid` ("self" for this one), in MiB.
fn rss(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let args = sim::args();
    let get = |k: &str, d: u64| -> u64 {
        args.get(k)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{k} {v}: not a number"))
            })
            .unwrap_or(d)
    };
    let nodes = get("nodes", 100) as usize;
    let partitions = get("partitions", 100_000) as u32;
    let session_ms = get("session-ms", 6000);
    let idle_s = get("idle-s", 9);
    if let Some(path) = std::env::var_os("CASKADE_SIM_LOG") {
        let file = std::fs::File::create(path).expect("create the log file");
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "caskade=info".into()),
            )
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    if std::env::var_os("CASKADE_ZK_HEAP").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("CASKADE_ZK_HEAP", "2g") };
    }
    let zk = Zk::standalone();
    let addr: SocketAddr = zk.connect_string().parse().expect("a single host:port");
    let zk_pid = zk.pid(0).map(|p| p.to_string()).unwrap_or_default();
    println!(
        "controller simulation: {nodes} nodes, {partitions} partitions, replication factor 3, \
         session timeout {session_ms} ms, ZooKeeper {addr} (pid {zk_pid})"
    );
    // More workers than cores: a worker busy building the controller's
    // notices (synchronous work) must not starve every node's heartbeat.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    runtime.block_on(async {
        let holder = raw_client(addr).await;
        let cfg = SimConfig {
            nodes,
            partitions,
            session_ms,
            root: "/caskade/sim".into(),
        };
        let m0 = mntr(addr);
        let r0 = reads();
        let t = Instant::now();
        let mut sim = Sim::start(cfg, addr, &holder).await;
        println!("registered {nodes} nodes in {} ms", ms_since(t));
        let m1 = mntr(addr);
        let r1 = reads();
        traffic("registration", &m0, &m1, sim.calls(), minus(r1, r0));

        // (a) Startup: election, creation, first notices.
        let c1 = sim.calls();
        let t = Instant::now();
        sim.release(&holder).await;
        let ctrl = loop {
            if let Some(c) = sim.controller() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let elected = ms_since(t);
        let w = sim
            .wait_done(1, Duration::from_millis(100), PHASE_BOUND)
            .await;
        let startup = (
            w.led_ms.map(|m| m + elected),
            w.told_ms.map(|m| m + elected),
        );
        println!(
            "startup: controller sim-{ctrl:04} elected {elected} ms after the release; every \
             partition created and led {} ms after the release, every node told {} ms after it \
             ({:?})",
            show(startup.0),
            show(startup.1),
            w.last
        );
        println!(
            "  notices (first, last ms after the release, count): {:?}",
            sim.arrivals_since(t)
        );
        let m2 = mntr(addr);
        let r2 = reads();
        let start_calls = sim.calls() - c1;
        traffic("startup", &m1, &m2, start_calls, minus(r2, r1));

        // Steady state: what an idle cluster costs ZooKeeper.
        let c2 = sim.calls();
        tokio::time::sleep(Duration::from_secs(idle_s)).await;
        let m3 = mntr(addr);
        let r3 = reads();
        let idle_reads = minus(r3, r2);
        traffic(
            &format!("idle {idle_s} s"),
            &m2,
            &m3,
            sim.calls() - c2,
            idle_reads,
        );

        // (b) Controller failover: kill the controller's node.
        let ctrl = sim.controller().expect("a controller");
        let led = sim.led_by(ctrl);
        let c3 = sim.calls();
        let t = Instant::now();
        sim.kill(ctrl);
        let next = loop {
            if let Some(c) = sim.controller().filter(|&c| c != ctrl) {
                break c;
            }
            if t.elapsed() > PHASE_BOUND {
                panic!("no new controller within {PHASE_BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let elected = ms_since(t);
        let w = sim
            .wait_done(2, Duration::from_millis(100), PHASE_BOUND)
            .await;
        println!(
            "failover: killed sim-{ctrl:04} (controller, leader of {led} partitions); \
             sim-{next:04} elected {elected} ms after the kill (session timeout {session_ms} ms); \
             every partition led {} ms after the election, every node told {} ms after it ({:?})",
            show(w.led_ms),
            show(w.told_ms),
            w.last
        );
        println!(
            "  notices (first, last ms after the kill, count): {:?}",
            sim.arrivals_since(t)
        );
        let m4 = mntr(addr);
        let r4 = reads();
        let fail_calls = sim.calls() - c3;
        let fail_reads = minus(r4, r3);
        traffic("failover", &m3, &m4, fail_calls, fail_reads);

        // Exact check: every live node routes every partition to
        // ZooKeeper's leader at its epoch, and holds ZooKeeper's full
        // state of every partition it hosts.
        let zk_states = sim.zk_states(&holder).await;
        let mut wrong = 0usize;
        for n in sim.nodes.iter().filter(|n| n.alive()) {
            for (p, want) in &zk_states {
                if n.route(*p) != Some((want.0, want.1))
                    || (n.hosts(*p) && n.known(*p).as_ref() != Some(want))
                {
                    wrong += 1;
                }
            }
        }
        println!(
            "check: {} partitions in ZooKeeper; node views differing from it: {wrong}",
            zk_states.len()
        );
        println!(
            "memory: this process peak RSS {} MiB; ZooKeeper RSS {} MiB (peak {} MiB)",
            rss("self", "VmHWM:"),
            rss(&zk_pid, "VmRSS:"),
            rss(&zk_pid, "VmHWM:")
        );
        let peak = rss("self", "VmHWM:");
        println!(
            "| {partitions} | {nodes} | {session_ms} | {} / {} | {} | {} / {} | {} / {} / {} | \
             {} | {} x {} / {} x {} | {} | {wrong} | {peak} |",
            show(startup.0),
            show(startup.1),
            elected,
            show(w.led_ms),
            show(w.told_ms),
            delta(&m1, &m2, "zk_packets_received"),
            delta(&m2, &m3, "zk_packets_received") / idle_s.max(1) as i64,
            delta(&m3, &m4, "zk_packets_received"),
            idle_reads[0] / idle_s.max(1),
            start_calls.notices,
            start_calls.states / start_calls.notices.max(1),
            fail_calls.notices,
            fail_calls.states / fail_calls.notices.max(1),
            fail_reads[2],
        );
        // No clean shutdown: each node leaving would trigger an election
        // and a full broadcast; cut the sessions and let ZooKeeper go.
        sim.abandon();
    });
}

/// A time in ms, or "-" when it never happened.
fn show(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |m| m.to_string())
}
