//! `redis-benchmark -t set,get,incr,mset -n 20000 --csv` finishes with no
//! error against a standalone node and through a node of a 3-node cluster
//! that leads no partition (every request forwarded): each of the four
//! tests reported with a positive rate, no error line (checked in
//! tests/resp_common/clients.rs), and no increment lost: the 1000
//! counters INCR hit add up to the 20000 requests.
//! Needs `redis-benchmark` (scripts/ensure-deps.sh installs redis-tools).

use crate::idle_node;
use crate::resp_common;

use idle_node::{cluster_with_an_idle_node, leads_nothing, resp_port};
use resp_common::clients::{benchmark, counter_sum};

/// Requests per test, as the issue asks.
const REQUESTS: u32 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmark_set_get_incr_mset_standalone() {
    let s = resp_common::start(|_| {}).await;
    let port: u16 = s.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    tokio::task::spawn_blocking(move || benchmark(port, REQUESTS))
        .await
        .unwrap();
    // No INCR was lost: the counters add up to the requests.
    let sum = tokio::task::spawn_blocking(move || counter_sum(port))
        .await
        .unwrap();
    assert_eq!(sum, i64::from(REQUESTS));
    s.stop().await;
}

#[test]
fn benchmark_set_get_incr_mset_through_a_cluster_node_that_leads_nothing() {
    let (c, node) = cluster_with_an_idle_node();
    let port = resp_port(&c, node);
    benchmark(port, REQUESTS);
    assert_eq!(counter_sum(port), i64::from(REQUESTS));
    assert!(leads_nothing(&c, node));
}
