//! A 3-node cluster (real ZooKeeper) with 2 partitions and RESP on, and a
//! node that leads neither partition: every key command sent to it is
//! forwarded to the partition's leader. For test binaries that also
//! declare `mod harness`.

use harness::cluster::{ClusterOpts, TestCluster};

use crate::harness;

/// The cluster, every ISR full, and the index of the node that leads none.
pub fn cluster_with_an_idle_node() -> (TestCluster, usize) {
    let c = TestCluster::start(ClusterOpts {
        partitions: 2,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    let node = (0..3)
        .find(|&i| leads_nothing(&c, i))
        .expect("3 nodes, 2 partitions: one node leads none");
    (c, node)
}

/// Whether node `i` leads neither partition.
pub fn leads_nothing(c: &TestCluster, i: usize) -> bool {
    (0..2).all(|p| c.leader(p) != Some(i))
}

/// The RESP port node `i` logged.
pub fn resp_port(c: &TestCluster, i: usize) -> u16 {
    let addr = c.resp_addr(i);
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("bad RESP address {addr:?}"))
}
