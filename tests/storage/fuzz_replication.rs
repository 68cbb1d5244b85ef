//! Property test (bounded fuzzing, issue 13) of the replication messages a
//! node accepts from the network: arbitrary `LeaderAndIsr`,
//! `EpochEndOffset`, `LogEndOffsets` and `Fetch` requests, built both
//! field by field (small ids and epochs that reach the real code paths,
//! and extremes: `u32::MAX` epochs, `u64::MAX` offsets, unknown partitions
//! and nodes, empty strings) and from arbitrary bytes through prost's
//! decoder, sent over gRPC to a real replication service (a
//! [`ReplicaManager`] over two replica-mode Bitcask engines, a fake
//! ZooKeeper layer).
//!
//! What must hold: no panic anywhere in the node (a panic hook counts
//! them, since tonic would turn a handler's panic into a reset stream),
//! and the service still answers after every case. Refusals are fine:
//! authorising these calls is TLS's job (issue 13); not crashing on them
//! is this test's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use caskade::cluster::{BoxFuture, LeaderAndIsr, NodeAddr};
use caskade::config::ClusterOptions;
use caskade::proto::replication as pb;
use caskade::replication::service::ReplicationService;
use caskade::replication::{ClusterHandle, IsrOutcome, ReplicaLog, ReplicaManager};
use caskade::storage::{Bitcask, Durability, Options, SystemClock};
use pb::replication_client::ReplicationClient;
use proptest::prelude::*;
use prost::Message;

/// Panics seen in any thread since the hook was installed.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A ZooKeeper layer whose lease is valid and whose ISR writes succeed.
struct FakeCluster;

impl ClusterHandle for FakeCluster {
    fn lease_valid(&self) -> bool {
        true
    }
    fn nodes(&self) -> Vec<NodeAddr> {
        vec![node("a"), node("b")]
    }
    fn controller(&self) -> Option<String> {
        None
    }
    fn update_isr(
        &self,
        proposed: LeaderAndIsr,
    ) -> BoxFuture<'static, caskade::Result<IsrOutcome>> {
        Box::pin(async move {
            Ok(IsrOutcome::Updated {
                zk_version: proposed.zk_version.wrapping_add(1),
            })
        })
    }
    fn read_states(
        &self,
        _partitions: Vec<u32>,
    ) -> BoxFuture<'static, caskade::Result<Vec<LeaderAndIsr>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Node `id` at an address nothing listens on (a fetcher following it
/// fails to connect and retries).
fn node(id: &str) -> NodeAddr {
    NodeAddr {
        id: id.into(),
        client_addr: "127.0.0.1:1".into(),
        replication_addr: "127.0.0.1:1".into(),
    }
}

/// A node "a" serving replication on loopback.
struct Target {
    /// Runs the server and the clients.
    rt: tokio::runtime::Runtime,
    /// `http://127.0.0.1:port`.
    url: String,
    /// The engines' directories.
    _dirs: Vec<tempfile::TempDir>,
}

fn target() -> Target {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut dirs = Vec::new();
    let mut logs: Vec<Arc<dyn ReplicaLog>> = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            fsync: Durability::Never,
            ..Options::default()
        };
        let e = Bitcask::open_replica(dir.path(), opts, Arc::new(SystemClock)).unwrap();
        logs.push(Arc::new(e));
        dirs.push(dir);
    }
    let url = rt.block_on(async {
        let m = ReplicaManager::new(
            node("a"),
            ClusterOptions::default(),
            logs,
            Duration::from_millis(500),
            2 << 20,
        );
        m.attach(Arc::new(FakeCluster));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ReplicationService::server(
                    m,
                    caskade::tls::gate::Gate::unchecked(),
                ))
                .serve_with_incoming(tokio_stream_of(listener)),
        );
        url
    });
    Target {
        rt,
        url,
        _dirs: dirs,
    }
}

/// The listener's connections as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

/// Node ids: known, unknown, empty.
fn id() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", ""]).prop_map(str::to_string)
}

fn partition() -> impl Strategy<Value = u32> {
    prop_oneof![0..3u32, Just(u32::MAX)]
}

fn epoch() -> impl Strategy<Value = u32> {
    prop_oneof![0..4u32, Just(u32::MAX)]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..8u64, Just(u64::MAX), any::<u64>()]
}

fn state() -> impl Strategy<Value = pb::PartitionState> {
    (
        partition(),
        id(),
        epoch(),
        prop::collection::vec(id(), 0..4),
        prop::collection::vec(id(), 0..4),
        any::<i32>(),
        prop_oneof![Just(0i64), Just(-1), any::<i64>()],
    )
        .prop_map(
            |(partition, leader, leader_epoch, replicas, isr, zk_version, leader_node_epoch)| {
                pb::PartitionState {
                    partition,
                    leader,
                    leader_epoch,
                    replicas,
                    isr,
                    zk_version,
                    leader_node_epoch,
                }
            },
        )
}

fn leader_and_isr() -> impl Strategy<Value = pb::LeaderAndIsrRequest> {
    let addr = prop::sample::select(vec!["127.0.0.1:1", "", "nonsense", "[::1]:0", "h:99999"]);
    let node = (id(), addr.clone(), addr).prop_map(|(id, c, r)| pb::NodeAddress {
        id,
        client_addr: c.to_string(),
        replication_addr: r.to_string(),
    });
    let wire = (
        prop_oneof![0..3u64, Just(u64::MAX)],
        prop::collection::vec(state(), 0..4),
        prop::collection::vec(node, 0..3),
        prop_oneof![Just(0i64), any::<i64>()],
        prop::collection::vec(id(), 0..3),
    )
        .prop_map(
            |(controller_epoch, partitions, nodes, node_epoch, leader_ids)| {
                pb::LeaderAndIsrRequest {
                    controller_epoch,
                    partitions,
                    nodes,
                    node_epoch,
                    leader_ids,
                    ..pb::LeaderAndIsrRequest::default()
                }
            },
        );
    prop_oneof![
        4 => wire,
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| {
            pb::LeaderAndIsrRequest::decode(&b[..]).unwrap_or_default()
        }),
    ]
}

fn fetch() -> impl Strategy<Value = pb::FetchRequest> {
    let part = (partition(), offset(), epoch()).prop_map(|(partition, offset, leader_epoch)| {
        pb::PartitionFetch {
            partition,
            offset,
            leader_epoch,
        }
    });
    let wire = (
        id(),
        prop_oneof![Just(0u32), Just(1), Just(1 << 20), Just(u32::MAX)],
        prop_oneof![Just(0u32), Just(10), Just(u32::MAX)],
        prop::collection::vec(part, 0..4),
        prop_oneof![Just(0u32), 1..3u32, Just(u32::MAX)],
        prop_oneof![Just(0u32), 1..3u32, Just(u32::MAX)],
        prop::collection::vec(partition(), 0..3),
    )
        .prop_map(
            |(
                follower_id,
                max_bytes,
                max_wait_ms,
                partitions,
                session_id,
                session_epoch,
                forgotten,
            )| {
                pb::FetchRequest {
                    follower_id,
                    max_bytes,
                    max_wait_ms,
                    partitions,
                    session_id,
                    session_epoch,
                    forgotten,
                }
            },
        );
    prop_oneof![
        4 => wire,
        1 => prop::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| pb::FetchRequest::decode(&b[..]).unwrap_or_default()),
    ]
}

/// One call of the fuzzer.
#[derive(Debug, Clone)]
enum Call {
    LeaderAndIsr(pb::LeaderAndIsrRequest),
    EpochEnd(pb::EpochEndOffsetRequest),
    LogEnds(pb::LogEndOffsetsRequest),
    /// One fetch stream carrying these requests.
    Fetch(Vec<pb::FetchRequest>),
}

fn call() -> impl Strategy<Value = Call> {
    let query = (partition(), epoch(), epoch()).prop_map(|(p, c, l)| pb::EpochQuery {
        partition: p,
        current_leader_epoch: c,
        leader_epoch: l,
    });
    let epoch_end = (
        partition(),
        epoch(),
        epoch(),
        prop::collection::vec(query, 0..3),
    )
        .prop_map(
            |(partition, current_leader_epoch, leader_epoch, partitions)| {
                pb::EpochEndOffsetRequest {
                    partition,
                    current_leader_epoch,
                    leader_epoch,
                    partitions,
                }
            },
        );
    let log_ends = (
        prop_oneof![0..3u64, Just(u64::MAX)],
        prop::collection::vec(partition(), 0..4),
    )
        .prop_map(|(controller_epoch, partitions)| pb::LogEndOffsetsRequest {
            controller_epoch,
            partitions,
        });
    prop_oneof![
        3 => leader_and_isr().prop_map(Call::LeaderAndIsr),
        1 => epoch_end.prop_map(Call::EpochEnd),
        1 => log_ends.prop_map(Call::LogEnds),
        3 => prop::collection::vec(fetch(), 1..4).prop_map(Call::Fetch),
    ]
}

/// Sends `c`, with a bound on how long an answer may take; any answer,
/// error or timeout is fine.
async fn send(url: &str, c: Call) {
    let Ok(mut client) = ReplicationClient::connect(url.to_string()).await else {
        return;
    };
    let bound = Duration::from_millis(300);
    match c {
        Call::LeaderAndIsr(q) => {
            let _ = tokio::time::timeout(bound, client.leader_and_isr(q)).await;
        }
        Call::EpochEnd(q) => {
            let _ = tokio::time::timeout(bound, client.epoch_end_offset(q)).await;
        }
        Call::LogEnds(q) => {
            let _ = tokio::time::timeout(bound, client.log_end_offsets(q)).await;
        }
        Call::Fetch(qs) => {
            let _ = tokio::time::timeout(bound, async {
                if let Ok(r) = client.fetch(futures_util::stream::iter(qs)).await {
                    let mut answers = r.into_inner();
                    while let Ok(Some(_)) = answers.message().await {}
                }
            })
            .await;
        }
    }
}

#[test]
fn arbitrary_replication_messages_never_crash_the_node() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let t = target();
    let config = ProptestConfig {
        cases: cases(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(call(), 1..5), |calls| {
        for c in calls {
            t.rt.block_on(send(&t.url, c));
        }
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic in the node");
        // Still serving.
        let alive = t.rt.block_on(async {
            let mut client = ReplicationClient::connect(t.url.clone()).await.ok()?;
            // Answered: a reply, or a refusal of caskade's own.
            match client
                .log_end_offsets(pb::LogEndOffsetsRequest::default())
                .await
            {
                Ok(_) => Some(()),
                Err(s) => s.metadata().contains_key("caskade-reason").then_some(()),
            }
        });
        prop_assert!(alive.is_some(), "the replication service stopped answering");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `PROPTEST_CASES` if set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
