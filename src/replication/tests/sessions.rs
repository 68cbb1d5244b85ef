//! Incremental fetch sessions (KIP-227): the leader's session state
//! machine driven directly, and a follower node `a` fetching from a leader
//! node `b` over a real listener (gRPC only, or the node's own with the
//! fetch wire), with `b`'s traffic counters
//! ([`ReplicaManager::fetch_counts`]) telling how many partition entries
//! each direction carried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;

use super::{FakeCluster, engine, node, set, state, wait_until};
use crate::cluster::{Coordinator, LeaderAndIsr, NodeAddr, Role};
use crate::config::ClusterOptions;
use crate::node::Acks;
use crate::proto::replication as pb;
use crate::replication::session::{FetchSessions, INVALID_EPOCH, NOT_FOUND, PER_FOLLOWER};
use crate::replication::{FetchCounts, ReplicaLog, ReplicaManager};
use crate::storage::{Bitcask, Durability};

/// A fetch of `partition` at `offset`, leader epoch 1.
fn pf(partition: u32, offset: u64) -> pb::PartitionFetch {
    pb::PartitionFetch {
        partition,
        offset,
        leader_epoch: 1,
    }
}

/// A request of follower `a`.
fn req(
    id: u32,
    epoch: u32,
    parts: Vec<pb::PartitionFetch>,
    forgotten: Vec<u32>,
) -> pb::FetchRequest {
    pb::FetchRequest {
        follower_id: "a".into(),
        partitions: parts,
        session_id: id,
        session_epoch: epoch,
        forgotten,
        ..Default::default()
    }
}

/// `(partition, offset)` of every partition a turn serves.
fn served(t: &crate::replication::session::Turn) -> Vec<(u32, u64)> {
    t.parts.iter().map(|(p, f)| (*p, f.offset)).collect()
}

/// The session state machine: a full request opens a session; an
/// incremental one changes only what it lists; a repeated epoch (its
/// answer was abandoned) is rebuilt from the state before it, and the
/// high watermarks its abandoned answer recorded do not count; a late copy
/// of a request on a stream the follower left is refused.
#[test]
fn incremental_requests_change_only_what_they_list_and_a_repeat_rebuilds() {
    let s = FetchSessions::default();
    let full = s
        .begin(&req(0, 0, vec![pf(3, 5), pf(1, 2), pf(2, 0)], vec![]), 1)
        .unwrap();
    assert!(full.full);
    assert_eq!(served(&full), vec![(3, 5), (1, 2), (2, 0)], "request order");
    s.sent(&full, [(3, 5), (1, 2), (2, 0)]);
    let id = full.id;

    // Epoch 1: nothing listed; all three served at their offsets, with the
    // high watermarks of the full answer remembered.
    let t1 = s.begin(&req(id, 1, vec![], vec![]), 1).unwrap();
    assert!(!t1.full);
    assert_eq!(served(&t1), vec![(1, 2), (2, 0), (3, 5)]);
    assert!(t1.parts.iter().all(|(_, f)| f.hw_sent == Some(f.offset)));
    s.sent(&t1, [(1, 4)]);

    // Epoch 2: partition 2 leaves, 1 moves, 7 joins.
    let t2 = s
        .begin(&req(id, 2, vec![pf(1, 4), pf(7, 0)], vec![2]), 1)
        .unwrap();
    assert_eq!(served(&t2), vec![(1, 4), (3, 5), (7, 0)]);
    assert_eq!(t2.parts[0].1.hw_sent, Some(4));
    assert_eq!(t2.parts[2].1.hw_sent, None);
    s.sent(&t2, [(7, 9)]);

    // Epoch 2 again (its answer never arrived): rebuilt from epoch 1's
    // state with these changes only; 7's high watermark was not sent.
    // It comes on the follower's new stream (2).
    let t2b = s.begin(&req(id, 2, vec![pf(7, 0)], vec![]), 2).unwrap();
    assert_eq!(served(&t2b), vec![(1, 2), (2, 0), (3, 5), (7, 0)]);
    assert_eq!(t2b.parts[3].1.hw_sent, None);
    // The abandoned turn's late answer records nothing.
    s.sent(&t2, [(3, 99)]);
    // A late copy of epoch 2 still buffered on the old stream (1) is
    // refused: it would rebuild the state from its own changes.
    let late = s.begin(&req(id, 2, vec![pf(1, 4)], vec![2]), 1);
    assert_eq!(late.unwrap_err().reason, INVALID_EPOCH);
    let t3 = s.begin(&req(id, 3, vec![], vec![]), 2).unwrap();
    assert_eq!(served(&t3), vec![(1, 2), (2, 0), (3, 5), (7, 0)]);
    assert_eq!(t3.parts[2].1.hw_sent, Some(5));
}

/// Unknown sessions, another follower's session and unexpected epochs
/// are session errors; a full request naming a session replaces it; a
/// follower keeps at most [`PER_FOLLOWER`] sessions (the least recently
/// used goes), and another follower's are not touched.
#[test]
fn session_errors_and_eviction() {
    let s = FetchSessions::default();
    let err = s.begin(&req(12345, 1, vec![], vec![]), 1).unwrap_err();
    assert_eq!(err.reason, NOT_FOUND);
    let id = s.begin(&req(0, 0, vec![pf(0, 0)], vec![]), 1).unwrap().id;
    assert_ne!(id, 0);
    let theirs = pb::FetchRequest {
        follower_id: "c".into(),
        ..req(id, 1, vec![], vec![])
    };
    assert_eq!(s.begin(&theirs, 1).unwrap_err().reason, NOT_FOUND);
    assert_eq!(
        s.begin(&req(id, 2, vec![], vec![]), 1).unwrap_err().reason,
        INVALID_EPOCH
    );
    assert!(s.begin(&req(id, 1, vec![], vec![]), 1).is_ok());
    assert_eq!(
        s.begin(&req(id, 3, vec![], vec![]), 1).unwrap_err().reason,
        INVALID_EPOCH
    );
    // A full request naming it replaces it.
    let id2 = s.begin(&req(id, 0, vec![pf(0, 0)], vec![]), 1).unwrap().id;
    assert_ne!(id2, id);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s.begin(&req(id, 2, vec![], vec![]), 1).unwrap_err().reason,
        NOT_FOUND
    );

    let c = pb::FetchRequest {
        follower_id: "c".into(),
        ..req(0, 0, vec![pf(0, 0)], vec![])
    };
    let c_id = s.begin(&c, 1).unwrap().id;
    let mut mine = vec![id2];
    for _ in 0..PER_FOLLOWER {
        std::thread::sleep(Duration::from_millis(2));
        mine.push(s.begin(&req(0, 0, vec![pf(0, 0)], vec![]), 1).unwrap().id);
    }
    assert_eq!(s.len(), PER_FOLLOWER + 1);
    assert_eq!(
        s.begin(&req(id2, 1, vec![], vec![]), 1).unwrap_err().reason,
        NOT_FOUND,
        "the least recently used session of a was evicted"
    );
    for &m in &mine[1..] {
        assert!(s.begin(&req(m, 1, vec![], vec![]), 1).is_ok());
    }
    let c_next = pb::FetchRequest {
        follower_id: "c".into(),
        ..req(c_id, 1, vec![], vec![])
    };
    assert!(s.begin(&c_next, 1).is_ok());
}

/// A follower `a` and a leader `b` of `n` partitions (replicas b and a,
/// ISR both, `min_insync` 2), `b` behind a real listener ([`Listener`]:
/// gRPC only, or the node's own with the fetch wire); `a` follows
/// every partition. Returns once `a`'s session with `b` is idle (a round
/// with no partition entry either way).
struct Pair {
    /// The follower.
    a: Arc<ReplicaManager>,
    /// The leader.
    b: Arc<ReplicaManager>,
    /// The follower's logs.
    a_logs: Vec<Arc<Bitcask>>,
    /// The leader's logs.
    b_logs: Vec<Arc<Bitcask>>,
    /// Runtime of both nodes.
    rt: tokio::runtime::Runtime,
    /// `b`'s replication port.
    b_addr: String,
    /// Their directories.
    _dirs: Vec<TempDir>,
}

/// What `b`'s replication port serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listener {
    /// gRPC only, as a node of a version without the fetch wire: `a`
    /// fetches over a `Fetch` stream.
    GrpcOnly,
    /// The node's own plaintext listener (gRPC and the fetch wire).
    Node,
}

impl Pair {
    fn start_on(n: u32, serving: Listener) -> Pair {
        let rt = super::runtime(2);
        let mut dirs = Vec::new();
        let (mut a_logs, mut b_logs) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (da, a) = engine(Durability::Never);
            let (db, b) = engine(Durability::Never);
            dirs.extend([da, db]);
            a_logs.push(a);
            b_logs.push(b);
        }
        let opts = ClusterOptions {
            min_insync: 2,
            replica_lag_ms: 300,
            fetch_max_wait_ms: 50,
            ..ClusterOptions::default()
        };
        let dyn_logs = |logs: &[Arc<Bitcask>]| -> Vec<Arc<dyn ReplicaLog>> {
            logs.iter()
                .map(|l| l.clone() as Arc<dyn ReplicaLog>)
                .collect()
        };
        let (a, b) = {
            let _in = rt.enter();
            let wait = Duration::from_secs(5);
            (
                ReplicaManager::new(node("a"), opts.clone(), dyn_logs(&a_logs), wait, 2 << 20),
                ReplicaManager::new(node("b"), opts, dyn_logs(&b_logs), wait, 2 << 20),
            )
        };
        let mut pair = Pair {
            a,
            b,
            a_logs,
            b_logs,
            rt,
            b_addr: String::new(),
            _dirs: dirs,
        };
        pair.b_addr = pair.rt.block_on(async {
            let (a, b) = (&pair.a, &pair.b);
            a.attach(Arc::new(FakeCluster));
            b.attach(Arc::new(FakeCluster));
            let states: Vec<LeaderAndIsr> = (0..n)
                .map(|p| LeaderAndIsr {
                    partition: p,
                    ..state("b", 1, &["b", "a"])
                })
                .collect();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let b_addr = NodeAddr {
                replication_addr: listener.local_addr().unwrap().to_string(),
                ..node("b")
            };
            let tracker = crate::server::limits::Tracker::new(
                "replication",
                crate::server::limits::ConnLimits {
                    max: 64,
                    per_ip: 64,
                    handshake: Some(Duration::from_secs(10)),
                    handshake_bytes: crate::server::limits::HTTP2_HANDSHAKE_BYTES,
                    idle: None,
                },
            );
            let wire = (serving == Listener::Node).then(|| (b.clone(), 10_000));
            // No stop: the sender goes at once, and the listener serves
            // until the runtime ends.
            let (_, stopped) = tokio::sync::watch::channel(false);
            let incoming = crate::server::replication_incoming(listener, tracker, wire, stopped);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(crate::replication::service::ReplicationService::server(
                        b.clone(),
                        crate::tls::gate::Gate::unchecked(),
                    ))
                    .serve_with_incoming(incoming),
            );
            b.leader_and_isr(1, 0, states.clone(), vec![node("a")])
                .unwrap();
            wait_until("b leads every partition", || {
                (0..n).all(|p| matches!(b.role(p), Role::Leader { .. }))
            })
            .await;
            let addr = b_addr.replication_addr.clone();
            a.leader_and_isr(1, 0, states, vec![b_addr]).unwrap();
            addr
        });
        pair.idle();
        pair
    }

    /// Waits for two rounds in a row with no partition entry either way.
    fn idle(&self) {
        self.rt.block_on(wait_until("an idle round", || {
            let c0 = self.b.fetch_counts();
            std::thread::sleep(Duration::from_millis(250));
            let c1 = self.b.fetch_counts();
            c1.requests >= c0.requests + 2
                && c1.request_entries == c0.request_entries
                && c1.answer_entries == c0.answer_entries
        }));
    }

    /// Counts from `b` after `d`, minus those before.
    fn during(&self, d: impl FnOnce()) -> FetchCounts {
        let c0 = self.b.fetch_counts();
        d();
        let c1 = self.b.fetch_counts();
        FetchCounts {
            requests: c1.requests - c0.requests,
            full_requests: c1.full_requests - c0.full_requests,
            request_entries: c1.request_entries - c0.request_entries,
            answer_entries: c1.answer_entries - c0.answer_entries,
            session_errors: c1.session_errors - c0.session_errors,
            request_bytes: c1.request_bytes - c0.request_bytes,
            answer_bytes: c1.answer_bytes - c0.answer_bytes,
            memory_rounds: c1.memory_rounds - c0.memory_rounds,
        }
    }

    /// An `acks: all` write of `key` to partition `p` on `b`.
    fn write(&self, p: u32, key: &str) {
        let r =
            self.rt.block_on(
                self.b
                    .write(p, Bytes::from(key.to_string()), set("v"), Acks::All),
            );
        assert_eq!(r, Ok(true), "write {key} to partition {p}");
    }

    /// `b`'s ISR size for partition `p`.
    fn isr(&self, p: u32) -> u32 {
        match self.b.role(p) {
            Role::Leader { isr, .. } => isr,
            r => panic!("b does not lead {p}: {r:?}"),
        }
    }

    /// Waits until `a`'s logs and commit points equal `b`'s.
    fn converged(&self) {
        self.rt.block_on(wait_until("a converges with b", || {
            self.a_logs
                .iter()
                .zip(&self.b_logs)
                .all(|(a, b)| a.written_end() == b.written_end() && a.committed() == b.committed())
        }));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Stop the fetcher before the runtime goes.
        let _in = self.rt.enter();
        let states: Vec<LeaderAndIsr> = (0..self.a_logs.len() as u32)
            .map(|p| LeaderAndIsr {
                partition: p,
                leader: None,
                ..state("b", 2, &["b"])
            })
            .collect();
        let _ = self.a.leader_and_isr(1, 0, states, vec![]);
    }
}

/// Issue 12: with 100 idle partitions a session round carries no
/// partition entry either way (the sessionless fetch sent 100 in each
/// direction); the follower stays in the ISR while idle for more than
/// three times `replica_lag_ms`; a write to one partition travels in an
/// answer with exactly one entry, then the follower's next request lists
/// that one partition and the answer with the new high watermark has one
/// entry; `acks: all` writes succeed throughout.
#[test]
fn an_idle_session_round_carries_no_partition_entry() {
    idle_rounds_carry_no_partition_entry(Listener::GrpcOnly);
}

/// The same rounds over the fetch wire (src/replication/fetch_wire.rs):
/// the leader's own plaintext listener, so `a` fetches on the wire.
#[test]
fn an_idle_session_round_on_the_fetch_wire_carries_no_partition_entry() {
    idle_rounds_carry_no_partition_entry(Listener::Node);
}

/// `a`'s fetch transports and `b`'s wire connections served.
fn transports(pair: &Pair) -> ((u64, u64), u64) {
    let (a, b) = (pair.a.fetch_figures.read(), pair.b.fetch_figures.read());
    ((a.wire_opened, a.streams_opened), b.wire_served)
}

/// The rounds of `an_idle_session_round_carries_no_partition_entry`, with
/// `b` serving as `serving` says; `a` uses the wire exactly when `b`
/// speaks it (a gRPC-only leader costs a stream, no error), and opens no
/// connection or stream after the session is idle.
fn idle_rounds_carry_no_partition_entry(serving: Listener) {
    let pair = Pair::start_on(100, serving);
    assert_transport(&pair, serving);
    let ((wire, streams), served) = transports(&pair);
    let idle = pair.during(|| std::thread::sleep(Duration::from_millis(1000)));
    assert!(idle.requests >= 5, "{idle:?}");
    assert_eq!(
        (
            idle.full_requests,
            idle.request_entries,
            idle.answer_entries,
            idle.session_errors
        ),
        (0, 0, 0, 0),
        "{idle:?}"
    );
    assert!(
        (0..100).all(|p| pair.isr(p) == 2),
        "a left the ISR while idle"
    );

    let one = pair.during(|| {
        pair.write(37, "k1");
        pair.converged();
        pair.idle();
    });
    assert_eq!(
        (one.full_requests, one.request_entries, one.answer_entries),
        (0, 1, 2),
        "{one:?}"
    );
    assert_eq!(pair.a_logs[37].written_end(), 1);
    assert_eq!(pair.a_logs[37].committed(), 1);
    for p in [0, 37, 99] {
        pair.write(p, "k2");
    }
    pair.converged();
    assert!((0..100).all(|p| pair.isr(p) == 2));
    assert_eq!(transports(&pair), ((wire, streams), served));
}

/// A fetch wire request the leader refuses (a partition listed twice, as
/// `check_fetch` refuses it on a stream) is answered with that error, and
/// the connection ends after it.
#[test]
fn a_refused_fetch_wire_request_gets_the_streams_error_and_the_end() {
    use prost::Message;
    let pair = Pair::start_on(2, Listener::Node);
    let frame = req(0, 0, vec![pf(1, 0), pf(1, 0)], vec![]).encode_to_vec();
    refused_then_closed(&pair, frame, "fetch request lists partition 1 twice");
}

/// A fetch wire frame that is no `FetchRequest` (bad input on the
/// replication port) is answered with `INVALID_ARGUMENT` naming it, and
/// the connection ends after it; the leader goes on serving.
#[test]
fn an_undecodable_fetch_wire_frame_gets_invalid_argument_and_the_end() {
    let pair = Pair::start_on(2, Listener::Node);
    // Field 31 with wire type 7, which protobuf does not have.
    refused_then_closed(
        &pair,
        vec![0xff, 0x01],
        "a fetch wire frame is no FetchRequest: failed to decode Protobuf message: invalid \
         wire type value: 7",
    );
    pair.write(0, "after");
    pair.converged();
}

/// Sends `frame` on a new fetch wire connection to `b` and asserts the
/// answer is `INVALID_ARGUMENT` with `why`, then the connection's end.
fn refused_then_closed(pair: &Pair, frame: Vec<u8>, why: &str) {
    use crate::replication::fetch_wire::{FetchWire, Opened};
    pair.rt.block_on(async {
        let Opened::Wire(mut w) =
            FetchWire::open(&pair.b_addr, 1 << 20, Duration::from_secs(1)).await
        else {
            panic!("no fetch wire to b");
        };
        w.send_frame(bytes::Bytes::from(frame)).await.unwrap();
        assert_eq!(
            w.recv("b").await,
            Err(crate::Error::InvalidInput(why.into()))
        );
        assert_eq!(
            w.recv("b").await,
            Err(crate::Error::Unavailable(
                "b closed the fetch wire connection".into()
            ))
        );
    });
}

/// Issue 12: the leader loses the follower's session (evicted, as after a
/// restart): the next incremental request gets a session error, the
/// follower sends one full request, and the session goes on with every
/// partition fetched: writes made before and after the loss all reach the
/// follower, and an idle round is empty again. Over a `Fetch` stream and
/// over the fetch wire.
#[test]
fn a_lost_session_falls_back_to_a_full_request_and_loses_nothing() {
    lost_session_loses_nothing(Listener::GrpcOnly);
    lost_session_loses_nothing(Listener::Node);
}

/// Asserts that `a` fetched as `serving` lets it: on the wire exactly
/// when `b` speaks it.
fn assert_transport(pair: &Pair, serving: Listener) {
    let ((wire, streams), served) = transports(pair);
    match serving {
        Listener::GrpcOnly => assert!(
            wire == 0 && streams >= 1 && served == 0,
            "{wire} {streams} {served}"
        ),
        Listener::Node => assert!(
            wire >= 1 && streams == 0 && served == wire,
            "{wire} {streams} {served}"
        ),
    }
}

/// The test above, with `b` serving as `serving` says.
fn lost_session_loses_nothing(serving: Listener) {
    let pair = Pair::start_on(20, serving);
    assert_transport(&pair, serving);
    for p in 0..20 {
        pair.write(p, "before");
    }
    pair.converged();
    pair.idle();
    let before = pair.b.fetch_counts().full_requests;
    let lost = pair.during(|| {
        pair.b.fetch_sessions.clear();
        pair.rt.block_on(wait_until("a full request", || {
            pair.b.fetch_counts().full_requests > before
        }));
        for p in 0..20 {
            pair.write(p, "after");
        }
        pair.converged();
        pair.idle();
    });
    assert_eq!(
        (lost.session_errors, lost.full_requests),
        (1, 1),
        "{lost:?}"
    );
    for p in 0..20 {
        assert_eq!(pair.a_logs[p].written_end(), 2, "partition {p}");
        assert_eq!(pair.a_logs[p].committed(), 2, "partition {p}");
    }
    assert_eq!(pair.b.fetch_sessions.len(), 1);
}

/// The figure of issue 12: bytes of one idle fetch round for a session of
/// 333 partitions, sessionless (every request full, every partition
/// answered) and incremental. Printed; entries asserted exactly.
#[test]
fn idle_round_bytes_with_333_partitions() {
    use prost::Message;
    let rt = super::runtime(2);
    let n = 333u32;
    let mut dirs = Vec::new();
    let mut logs: Vec<Arc<dyn ReplicaLog>> = Vec::new();
    for _ in 0..n {
        let (dir, e) = engine(Durability::Never);
        dirs.push(dir);
        logs.push(e);
    }
    let opts = ClusterOptions {
        min_insync: 1,
        ..ClusterOptions::default()
    };
    let m = {
        let _in = rt.enter();
        ReplicaManager::new(node("b"), opts, logs, Duration::from_secs(2), 2 << 20)
    };
    rt.block_on(async {
        m.attach(Arc::new(FakeCluster));
        let states = (0..n)
            .map(|p| LeaderAndIsr {
                partition: p,
                ..state("b", 7, &["b", "a"])
            })
            .collect();
        m.leader_and_isr(1, 0, states, vec![]).unwrap();
        wait_until("b leads all", || {
            (0..n).all(|p| matches!(m.role(p), Role::Leader { .. }))
        })
        .await;
        let full = pb::FetchRequest {
            follower_id: "a".into(),
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            partitions: (0..n)
                .map(|p| pb::PartitionFetch {
                    partition: p,
                    offset: 0,
                    leader_epoch: 7,
                })
                .collect(),
            ..Default::default()
        };
        let full_answer = m.fetch(full.clone(), 0, 0).await.unwrap();
        assert_eq!(full_answer.partitions.len(), n as usize);
        let inc = pb::FetchRequest {
            partitions: Vec::new(),
            session_id: full_answer.session_id,
            session_epoch: 1,
            ..full.clone()
        };
        let inc_answer = m.fetch(inc.clone(), 1, 0).await.unwrap();
        assert_eq!(
            inc_answer.partitions.len(),
            0,
            "{:?}",
            inc_answer.partitions.first()
        );
        assert!(inc_answer.error_reason.is_empty());
        println!(
            "idle fetch round, {n} partitions: sessionless request {} B, answer {} B; \
             incremental request {} B, answer {} B",
            full.encoded_len(),
            full_answer.encoded_len(),
            inc.encoded_len(),
            inc_answer.encoded_len()
        );
        assert!(inc.encoded_len() < 32 && inc_answer.encoded_len() < 16);
        // The same with logs some 10^6 records long (offsets, high
        // watermarks and log ends of 3 bytes instead of left out as 0).
        let mut big = full.clone();
        big.partitions.iter_mut().for_each(|f| f.offset = 1_234_567);
        let mut big_answer = full_answer.clone();
        big_answer.partitions.iter_mut().for_each(|d| {
            d.high_watermark = 1_234_567;
            d.log_end_offset = 1_234_567;
        });
        println!(
            "with offsets ~10^6: sessionless request {} B, answer {} B",
            big.encoded_len(),
            big_answer.encoded_len()
        );
    });
    drop(m);
    drop(rt);
    drop(dirs);
}

/// Session 11: a follower in sync fetches what was just written, and the
/// leader answers it from the log's tail in memory (no read in place, no
/// thread hand-off): every round with records in this test is one. Over
/// a `Fetch` stream and over the fetch wire.
#[test]
fn a_follower_in_sync_is_served_from_the_tail_in_memory() {
    served_from_the_tail(Listener::GrpcOnly);
    served_from_the_tail(Listener::Node);
}

/// The test above, with `b` serving as `serving` says.
fn served_from_the_tail(serving: Listener) {
    let pair = Pair::start_on(4, serving);
    assert_transport(&pair, serving);
    let writes = pair.during(|| {
        for i in 0..20 {
            pair.write(i % 4, &format!("k{i}"));
        }
        pair.converged();
    });
    assert!(writes.answer_entries >= 4, "{writes:?}");
    assert!(writes.memory_rounds >= 5, "{writes:?}");
    for p in 0..4 {
        assert_eq!(pair.a_logs[p as usize].written_end(), 5, "partition {p}");
    }
    // `WAIT`'s ISR sizes are those the partition states report, on the
    // leader and on the follower.
    let (states_a, states_b) = (pair.a.partitions(), pair.b.partitions());
    for p in 0..4u32 {
        assert_eq!(pair.b.isr_len(p), 2, "partition {p}");
        assert_eq!(pair.b.isr_len(p), states_b[p as usize].isr.len());
        assert_eq!(pair.a.isr_len(p), states_a[p as usize].isr.len());
    }
    assert_eq!(pair.b.isr_len(4), 0, "no such partition");
}
