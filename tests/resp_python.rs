//! The Python `redis` package (PyPI, pinned in tests/resp_common/clients.rs)
//! running tests/python/test_redis_client.py: every RESP command caskade
//! offers, pipelines (`transaction=False`), RESP3 (`protocol=3`) and the
//! exception classes and texts of Redis' errors; against a standalone node
//! and through a node of a 3-node cluster that leads no partition (so every
//! command is forwarded). Needs `python3` with `venv` (scripts/ensure-deps.sh
//! installs python3-venv) and PyPI reachable on the first run; the venv is
//! kept in the target directory.

mod harness;
mod resp_common;

use harness::cluster::{ClusterOpts, TestCluster};
use resp_common::clients::run_python_tests;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_redis_client_standalone() {
    let s = resp_common::start(|_| {}).await;
    let port: u16 = s.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    tokio::task::spawn_blocking(move || run_python_tests(port, false))
        .await
        .unwrap();
    s.stop().await;
}

#[test]
fn python_redis_client_through_a_cluster_node_that_leads_nothing() {
    let (c, node) = cluster_with_an_idle_node();
    let port = resp_port(&c, node);
    run_python_tests(port, true);
    // Still leading nothing: every command above went through a forward.
    assert!((0..2).all(|p| c.leader(p) != Some(node)));
}

/// A 3-node cluster with 2 partitions (RESP on), every ISR full, and the
/// index of a node that leads neither partition.
pub fn cluster_with_an_idle_node() -> (TestCluster, usize) {
    let c = TestCluster::start(ClusterOpts {
        partitions: 2,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    let node = (0..3)
        .find(|&i| (0..2).all(|p| c.leader(p) != Some(i)))
        .expect("3 nodes, 2 partitions: one node leads none");
    (c, node)
}

/// The RESP port node `i` logged.
pub fn resp_port(c: &TestCluster, i: usize) -> u16 {
    let log = c.log(i);
    let addr = log
        .lines()
        .find_map(|l| l.split("RESP (Redis protocol) on ").nth(1))
        .unwrap_or_else(|| panic!("no RESP address in the log:\n{log}"));
    addr.trim().rsplit_once(':').unwrap().1.parse().unwrap()
}
