//! RESP against a real three-node cluster (real ZooKeeper): a node that
//! does not lead a key's partition forwards, as the gRPC API does, so
//! every command answers through any node; `WAIT` counts the in-sync
//! followers; `INFO replication` shows this node's partitions; and with
//! too few in-sync replicas a write is refused with `NOREPLICAS`.

use crate::harness;

use std::io::{Read, Write};

use harness::cluster::{ClusterOpts, TestCluster};
use harness::resp::Conn;

#[test]
fn any_node_answers_through_resp_and_refuses_without_replicas() {
    let mut c = TestCluster::start(ClusterOpts {
        min_insync: 3,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    let leader = c.leader(0).expect("partition 0 has a leader");
    let other = (0..3).find(|&i| i != leader).unwrap();
    let key = c.key_in(0, 0);
    let mut r = Conn::open(&c.resp_addr(other));
    // Through a node that does not lead the key's partition.
    r.cmd(&["SET", &key, "v1", "EX", "100"], "+OK\r\n");
    r.cmd(&["GET", &key], "$2\r\nv1\r\n");
    r.cmd(&["TTL", &key], ":100\r\n");
    r.cmd(&["SET", &key, "v2", "NX"], "$-1\r\n");
    r.cmd(&["EXISTS", &key, "nope"], ":1\r\n");
    r.cmd(&["MGET", &key, "nope"], "*2\r\n$2\r\nv1\r\n$-1\r\n");
    // Both followers are in the ISR and hold the write.
    r.cmd(&["WAIT", "2", "1000"], ":2\r\n");
    let info = r.bulk(&["INFO", "replication"]);
    let want = format!("partition_0:role=follower,leader={},", c.specs[leader].id);
    assert!(info.contains(&want), "{want} not in\n{info}");
    r.cmd(&["DEL", &key], ":1\r\n");
    r.cmd(&["GET", &key], "$-1\r\n");
    // The same at the leader.
    let mut l = Conn::open(&c.resp_addr(leader));
    l.cmd(&["SET", &key, "v3"], "+OK\r\n");
    r.cmd(&["GET", &key], "$2\r\nv3\r\n");

    // One follower of partition 0 down: the ISR shrinks to 2 < min_insync 3.
    let third = (0..3).find(|&i| i != leader && i != other).unwrap();
    c.kill(third);
    c.wait_until("the ISR of partition 0 shrinks to 2", |c| {
        c.partition(0).is_some_and(|p| p.isr.len() == 2)
    });
    r.cmd(
        &["SET", &key, "v4"],
        "-NOREPLICAS not enough in-sync replicas for partition 0: 2, at least 3 needed \
         (min_insync)\r\n",
    );
    r.cmd(&["GET", &key], "$2\r\nv3\r\n");
}

/// A pipeline through a node that does not lead every partition: plain
/// SETs and GETs of keys in every partition, in
/// one write, mixed with commands that run alone (`INCR`, `SET ... NX`)
/// and an absent key. The GETs and plain SETs of a batch are forwarded
/// together, one request per other leader (src/server/service/batch.rs);
/// every answer is exact and in the order sent, and a second node reads
/// every value back.
#[test]
fn a_pipeline_through_a_non_leader_is_answered_in_order_with_exact_values() {
    let c = TestCluster::start(ClusterOpts {
        partitions: 8,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    let via = (0..3)
        .find(|&i| (0..8).any(|p| c.leader(p) != Some(i)))
        .unwrap();
    let keys: Vec<String> = (0..16).map(|i| c.key_in(i % 8, i as usize)).collect();
    let mut req = String::new();
    let mut want = String::new();
    let mb = |args: &[&str]| {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s
    };
    // One batch of 16 plain SETs (and an INCR and an NX SET among them).
    for (i, k) in keys.iter().enumerate() {
        req.push_str(&mb(&["SET", k, &format!("v{i}")]));
        want.push_str("+OK\r\n");
        if i == 5 {
            req.push_str(&mb(&["INCR", "counter"]));
            want.push_str(":1\r\n");
            req.push_str(&mb(&["SET", "nx-key", "first", "NX"]));
            want.push_str("+OK\r\n");
        }
    }
    // Then (a new batch: the keys were written) their GETs, an absent key.
    for (i, k) in keys.iter().enumerate().rev() {
        req.push_str(&mb(&["GET", k]));
        let v = format!("v{i}");
        want.push_str(&format!("${}\r\n{v}\r\n", v.len()));
    }
    req.push_str(&mb(&["GET", "absent-key"]));
    want.push_str("$-1\r\n");
    req.push_str(&mb(&["GET", "counter"]));
    want.push_str("$1\r\n1\r\n");
    let mut r = Conn::open(&c.resp_addr(via));
    r.0.write_all(req.as_bytes()).unwrap();
    let mut got = vec![0; want.len()];
    r.0.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
    // Another node reads the same values (acks: all, leader reads).
    let mut o = Conn::open(&c.resp_addr((via + 1) % 3));
    for (i, k) in keys.iter().enumerate() {
        let v = format!("v{i}");
        o.cmd(&["GET", k], &format!("${}\r\n{v}\r\n", v.len()));
    }
    o.cmd(&["GET", "nx-key"], "$5\r\nfirst\r\n");
}

/// A three-node cluster whose nodes run with `failpoints` (each pump waits
/// 1 s before it takes a batch, `server::coalesce_pause`, plus `extra`),
/// the leader of partition 0, and a node that is not.
fn coalescing_cluster(extra: &str) -> (TestCluster, usize, usize) {
    let c = TestCluster::start(ClusterOpts {
        env: vec![
            ("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into()),
            (
                "FAILPOINTS".into(),
                format!("server::coalesce_pause=return(1000){extra}"),
            ),
        ],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    let leader = c.leader(0).expect("partition 0 has a leader");
    let via = (0..3).find(|&i| i != leader).unwrap();
    (c, leader, via)
}

/// Runs `cmd(conn, key i, i)` for 8 keys of partition 0, each on its own
/// connection to `addr`, all at once.
fn round(c: &TestCluster, addr: &str, cmd: impl Fn(&mut Conn, &str, usize) + Sync) {
    let keys: Vec<String> = (0..8).map(|i| c.key_in(0, i)).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(keys.len()));
    std::thread::scope(|s| {
        for (i, k) in keys.iter().enumerate() {
            let (start, cmd) = (start.clone(), &cmd);
            s.spawn(move || {
                let mut r = Conn::open(addr);
                start.wait();
                cmd(&mut r, k, i);
            });
        }
    });
}

/// The leader's `(calls, errors)` of `mset`, `set`, `mget`, `get`,
/// `forward` (streams), `forward_wire`.
fn leader_counts(c: &TestCluster, leader: usize) -> Vec<(u64, u64)> {
    let info = Conn::open(&c.resp_addr(leader)).bulk(&["INFO", "stats"]);
    ["mset", "set", "mget", "get", "forward", "forward_wire"]
        .iter()
        .map(|n| harness::calls_errors(&info, n))
        .collect()
}

/// Two rounds of 8 single `SET`s then 8 `GET`s, each round's commands on 8
/// connections at once through `via`, with exact answers.
fn set_get_twice(c: &TestCluster, via: usize) {
    let addr = c.resp_addr(via);
    for v in ["v", "w"] {
        round(c, &addr, |r, k, i| {
            r.cmd(&["SET", k, &format!("{v}{i}")], "+OK\r\n")
        });
        round(c, &addr, |r, k, i| {
            r.cmd(&["GET", k], &format!("$2\r\n{v}{i}\r\n"))
        });
    }
}

/// Single `SET`s and `GET`s of many connections through a node that does
/// not lead their partition are coalesced into one forwarded `MSet` /
/// `MGet` per leader (src/server/service/coalesce.rs), not one forwarded
/// request per command; every connection still gets its own exact answer.
/// The failpoint `server::coalesce_pause` holds each pump for 1 s before
/// it takes a batch, so the 8 commands, sent at once, all wait in the
/// lane: the leader counts exactly 1 `MSet` and 1 `MGet` per round and no
/// `Set` or `Get` (before coalescing: 8 `Set`s and 8 `Get`s per round).
/// The batches travel on one forward wire connection per lane
/// (src/server/service/wire.rs), opened by its first batch and reused by
/// the next: two rounds, 2 connections (the `SET` lane's and the `GET`
/// lane's), not 4, each counted as a `forward`.
#[test]
fn single_commands_of_many_connections_are_forwarded_together() {
    let (c, leader, via) = coalescing_cluster("");
    set_get_twice(&c, via);
    assert_eq!(
        leader_counts(&c, leader),
        vec![(2, 0), (0, 0), (2, 0), (0, 0), (0, 0), (2, 0)],
        "mset, set, mget, get, forward, forward_wire"
    );
}

/// The same rounds when the leader refuses `Forward` with UNIMPLEMENTED
/// and closes forward wire connections unanswered, as a node of an older
/// version does (failpoint `server::forward_refuse` on every node): the
/// same exact answers and the same `MSet` / `MGet` counts, sent as unary
/// calls; each lane tried the wire once (not counted: an older version
/// does not know it), then a stream once (2 refused `forward` calls), and
/// then kept to unary calls.
#[test]
fn a_leader_refusing_forward_streams_gets_unary_forwards() {
    let (c, leader, via) = coalescing_cluster(";server::forward_refuse=return");
    set_get_twice(&c, via);
    assert_eq!(
        leader_counts(&c, leader),
        vec![(2, 0), (0, 0), (2, 0), (0, 0), (2, 2), (0, 0)],
        "mset, set, mget, get, forward, forward_wire"
    );
}

/// A stream that breaks with a batch on it (failpoint
/// `server::forward_break` on the leader: the stream ends with an error
/// when the 1st and the 3rd message arrive, before they are served) gives
/// the answers of a failed unary forward: every `SET` of the batch gets
/// the failure (an unknown outcome; here nothing was written), the `GET`s
/// fall back to one forwarded `Get` each and get their exact values. The
/// next batch of each lane opens a new stream: 4 streams, 1 `MSet` and
/// 1 `MGet` served, 8 `Get`s. The nodes forward over streams, as with TLS
/// (failpoint `server::wire_off`).
#[test]
fn a_stream_broken_mid_batch_answers_as_a_failed_unary_forward() {
    broken_mid_batch(
        ";server::wire_off=return",
        "the forward stream broke (failpoint server::forward_break)",
        ((4, 0), (0, 0)),
    );
}

/// The same over the forward wire: the leader closes the connection
/// without an answer, which the lane reports as a break that may or may
/// not have applied the batch; the same answers and counts otherwise.
#[test]
fn a_wire_broken_mid_batch_answers_as_a_failed_unary_forward() {
    broken_mid_batch(
        "",
        "the forward connection to LEADER broke mid-request (the connection was closed); \
         the request may or may not have been applied",
        ((0, 0), (4, 0)),
    );
}

/// The test of the two above: nodes with the failpoints `extra`, the
/// `SET`s of the broken batch answered `-ERR unavailable: ` and `failure`
/// (`LEADER`: the leader's client address), the leader's counts of
/// `forward` and `forward_wire` as `opened`.
fn broken_mid_batch(extra: &str, failure: &str, opened: ((u64, u64), (u64, u64))) {
    let wire_streams = vec![(1, 0), (0, 0), (1, 0), (8, 0), opened.0, opened.1];
    let (c, leader, via) = coalescing_cluster(&format!(
        ";server::forward_break=1*return->1*off->1*return{extra}"
    ));
    let addr = c.resp_addr(via);
    let failure = failure.replace("LEADER", &c.specs[leader].addr);
    round(&c, &addr, |r, k, _| {
        r.cmd(
            &["SET", k, "lost"],
            &format!("-ERR unavailable: {failure}\r\n"),
        )
    });
    round(&c, &addr, |r, k, i| {
        r.cmd(&["SET", k, &format!("w{i}")], "+OK\r\n")
    });
    for _ in 0..2 {
        round(&c, &addr, |r, k, i| {
            r.cmd(&["GET", k], &format!("$2\r\nw{i}\r\n"))
        });
    }
    assert_eq!(
        leader_counts(&c, leader),
        wire_streams,
        "mset, set, mget, get, forward, forward_wire"
    );
}

/// `WAIT` through a node that does not host the partitions written: with
/// `replication_factor: 2` on three nodes some node does not host a
/// partition and knows it only by its leader, not its ISR. An `acks: all` write acknowledged there is on at least
/// `min_insync` replicas (the leader refuses it otherwise), so `WAIT`
/// counts `min_insync - 1` for such a partition: it answered 0 and, with
/// timeout 0, never returned (found by scripts/bench-vs-redis.sh with
/// `CLUSTER_RF=2`).
#[test]
fn wait_through_a_node_that_does_not_host_the_partition_counts_min_insync() {
    let c = TestCluster::start(ClusterOpts {
        replication_factor: 2,
        min_insync: 2,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
    // A partition node `via` does not host.
    let (p, via) = (0..c.opts.partitions)
        .find_map(|p| {
            let info = c.partition(p)?;
            (0..3)
                .find(|&i| !info.replicas.contains(&c.specs[i].id))
                .map(|i| (p, i))
        })
        .expect("with 2 replicas of each partition on 3 nodes, some node lacks one");
    let key = c.key_in(p, 0);
    let mut r = Conn::open(&c.resp_addr(via));
    r.cmd(&["SET", &key, "v"], "+OK\r\n");
    r.cmd(&["WAIT", "1", "1000"], ":1\r\n");
    // Timeout 0 waits without limit: it returns at once, the count reached.
    r.cmd(&["WAIT", "1", "0"], ":1\r\n");
    r.cmd(&["WAIT", "2", "100"], ":1\r\n");
    // A node hosting the partition counts its ISR: its leader, and its
    // follower from what it last learned.
    let info = c.partition(0).expect("partition 0 is led");
    for id in &info.replicas {
        let i = (0..3)
            .find(|&i| &c.specs[i].id == id)
            .expect("a node of the cluster");
        let mut h = Conn::open(&c.resp_addr(i));
        h.cmd(&["SET", &c.key_in(0, 1), "v"], "+OK\r\n");
        h.cmd(&["WAIT", "1", "1000"], ":1\r\n");
    }
}
