//! Pipelining and group commit through RESP: 100 SETs sent in one write
//! are answered in order and share fsyncs (the engine's fsync counter),
//! where the same SETs sent one at a time pay one fsync each.
//!
//! Needs `--features caskade/failpoints`: the first fsync of the batch is
//! held for 300 ms (`bitcask::fsync` = `1*sleep(300)`), so the writes that
//! a commit worker did not take into the first group commit are certainly
//! all queued behind it: at most two fsyncs for the 100 writes, whatever
//! the scheduling.

#![cfg(feature = "failpoints")]

use crate::resp_common;

use caskade::storage::Durability;
use resp_common::{multibulk, start};

/// (fsyncs, records written) of every engine of the node, added up.
async fn figures(node: &caskade::node::Node) -> (u64, u64) {
    let all = node.status().await.unwrap();
    all.iter().fold((0, 0), |(f, r), (_, s)| {
        (f + s.fsyncs, r + s.records_written)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::await_holding_lock,
    reason = "the gate, like the FailScenario, is held for the whole test; no task takes it"
)]
async fn a_pipeline_of_writes_shares_one_group_commit() {
    let _gate = crate::GATE.lock();
    let _scenario = fail::FailScenario::setup();
    let s = start(|c| {
        c.partitions = 1;
        c.storage.fsync = Durability::Always;
    })
    .await;
    let mut c = s.connect().await;
    c.cmd(&["SET", "warm", "up"], "+OK\r\n").await;

    // One at a time: one fsync per write.
    let (f0, r0) = figures(&s.node).await;
    for i in 0..10 {
        c.cmd(&["SET", &format!("one{i}"), "v"], "+OK\r\n").await;
    }
    let (f1, r1) = figures(&s.node).await;
    assert_eq!((f1 - f0, r1 - r0), (10, 10));

    // Pipelined: 100 writes in one read share the group commit.
    fail::cfg("bitcask::fsync", "1*sleep(300)").unwrap();
    let mut req = String::new();
    let mut want = String::new();
    for i in 0..100 {
        req.push_str(&multibulk(&["SET", &format!("k{i}"), &i.to_string()]));
        want.push_str("+OK\r\n");
    }
    c.check(&req, &want).await;
    let (f2, r2) = figures(&s.node).await;
    assert_eq!(r2 - r1, 100);
    assert!(
        (1..=2).contains(&(f2 - f1)),
        "100 pipelined writes took {} fsyncs",
        f2 - f1
    );
    fail::remove("bitcask::fsync");
    // And they are all there, in order.
    let mut req = String::new();
    let mut want = String::new();
    for i in 0..100 {
        req.push_str(&multibulk(&["GET", &format!("k{i}")]));
        want.push_str(&format!("${}\r\n{i}\r\n", i.to_string().len()));
    }
    c.check(&req, &want).await;
    s.stop().await;
}
