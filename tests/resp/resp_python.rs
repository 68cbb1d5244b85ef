//! The Python `redis` package (PyPI, pinned in tests/resp_common/clients.rs)
//! running tests/python/test_redis_client.py: every RESP command caskade
//! offers, pipelines (`transaction=False`), RESP3 (`protocol=3`) and the
//! exception classes and texts of Redis' errors; against a standalone node
//! and through a node of a 3-node cluster that leads no partition (so every
//! command is forwarded). Needs `python3` with `venv` (scripts/ensure-deps.sh
//! installs python3-venv) and PyPI reachable on the first run; the venv is
//! kept in the target directory.

use crate::idle_node;
use crate::resp_common;

use idle_node::{cluster_with_an_idle_node, leads_nothing, resp_port};
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
    assert!(leads_nothing(&c, node));
}
