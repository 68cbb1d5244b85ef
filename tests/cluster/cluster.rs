//! End-to-end cluster tests: a real ZooKeeper, three real `caskade-server`
//! processes on free loopback ports, killed with SIGKILL and paused with
//! SIGSTOP. Each test asserts exact values read back from specific nodes.
//!
//! The tests of this file run one at a time (the `SERIAL` lock): session
//! timeouts of 2 s must not be starved of CPU by a neighbour on a 2-core
//! machine.

use crate::harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::Error;
use caskade::client::{Client, KeyTtl, SetOptions};
use caskade::node::Acks;
use caskade::storage::Condition;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::load::local_reader;
use harness::{b, runtime};

/// One cluster test at a time, across the whole binary.
use crate::SERIAL;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until node `i`'s replica of every partition has the leader's log
/// end offset and high watermark.
fn wait_replicated(c: &TestCluster, i: usize) {
    let id = c.specs[i].id.clone();
    c.wait_until(&format!("{id} caught up on every partition"), |c| {
        (0..c.opts.partitions).all(|p| {
            let Some(part) = c.partition(p) else {
                return false;
            };
            let leader_end = part
                .offsets
                .iter()
                .find(|o| o.node_id == part.leader)
                .map(|o| o.log_end_offset);
            let mine = c.metadata(i).and_then(|m| {
                let mp = m.partitions[p as usize].clone();
                mp.offsets
                    .iter()
                    .find(|o| o.node_id == id)
                    .map(|o| (o.log_end_offset, mp.high_watermark))
            });
            matches!((leader_end, mine), (Some(end), Some((e, hw))) if e == end && hw == part.high_watermark && hw == end)
        })
    });
}

/// Every command type replicates: each node's own replica ends with the
/// same values, TTLs and deletions.
#[test]
fn every_command_type_replicates_to_every_replica() {
    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts::default());
    let rt = runtime();
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..20 {
            client
                .set(format!("plain{i}"), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        let ttl = SetOptions {
            ttl_ms: Some(600_000),
            ..SetOptions::default()
        };
        client.set("with-ttl", "t", ttl).await.unwrap();
        client
            .set("to-delete", "x", SetOptions::default())
            .await
            .unwrap();
        assert_eq!(client.del(vec![b("to-delete")]).await.unwrap(), 1);
        client
            .set("to-expire", "y", SetOptions::default())
            .await
            .unwrap();
        assert!(client.expire("to-expire", 300_000).await.unwrap());
        client
            .set("expire-now", "z", SetOptions::default())
            .await
            .unwrap();
        assert!(client.expire("expire-now", 0).await.unwrap());
        let nx = SetOptions {
            condition: Condition::IfAbsent,
            ..SetOptions::default()
        };
        assert!(!client.set("plain1", "nx-lost", nx).await.unwrap());
        assert!(client.set("nx-new", "nx-won", nx).await.unwrap());
        let xx = SetOptions {
            condition: Condition::IfPresent,
            ..SetOptions::default()
        };
        assert!(client.set("plain2", "xx-won", xx).await.unwrap());
        assert!(!client.set("absent", "xx-lost", xx).await.unwrap());
    });
    for i in 0..3 {
        wait_replicated(&c, i);
        let r = local_reader(&c, i, &rt);
        rt.block_on(async {
            for k in 0..20 {
                let want = match k {
                    2 => "xx-won".to_string(),
                    _ => format!("v{k}"),
                };
                assert_eq!(
                    r.get(format!("plain{k}")).await.unwrap(),
                    Some(Bytes::from(want)),
                    "plain{k} on node {i}"
                );
            }
            assert_eq!(r.get("with-ttl").await.unwrap(), Some(b("t")));
            match r.ttl("with-ttl").await.unwrap() {
                KeyTtl::Ms(ms) => assert!(ms > 500_000 && ms <= 600_000, "ttl {ms}"),
                other => panic!("with-ttl on node {i}: {other:?}"),
            }
            match r.ttl("to-expire").await.unwrap() {
                KeyTtl::Ms(ms) => assert!(ms > 200_000 && ms <= 300_000, "ttl {ms}"),
                other => panic!("to-expire on node {i}: {other:?}"),
            }
            assert_eq!(r.get("to-delete").await.unwrap(), None, "node {i}");
            assert_eq!(r.get("expire-now").await.unwrap(), None, "node {i}");
            assert_eq!(r.get("nx-new").await.unwrap(), Some(b("nx-won")));
            assert_eq!(r.get("absent").await.unwrap(), None);
            assert_eq!(r.ttl("plain3").await.unwrap(), KeyTtl::Persistent);
        });
    }
}

/// Writes `count` keys `prefix<n>` with acks all from `writers` tasks until
/// `stop`; returns the acknowledged ones with their values.
async fn load(
    client: Client,
    prefix: &'static str,
    writers: usize,
    until: Instant,
) -> BTreeMap<String, String> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = 0;
            while Instant::now() < until {
                let key = format!("{prefix}{w}-{n}");
                let value = format!("value-{w}-{n}");
                let opts = SetOptions {
                    acks: Some(Acks::All),
                    ..SetOptions::default()
                };
                if let Ok(true) = client.set(key.clone(), value.clone(), opts).await {
                    acked.insert(key, value);
                }
                n += 1;
            }
            acked
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Reads back every acknowledged key through the leaders; returns the
/// missing or wrong ones.
async fn missing(client: &Client, acked: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, v) in acked {
        let mut got = client.get(k.clone()).await;
        for _ in 0..20 {
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            got = client.get(k.clone()).await;
        }
        if got.as_ref().ok().cloned().flatten() != Some(Bytes::from(v.clone())) {
            bad.push(format!("{k}: {got:?}"));
        }
    }
    bad
}

/// SIGKILL of the leader of the most partitions under `acks: all` load:
/// a new leader is elected by offset and no acknowledged write is lost.
#[test]
fn leader_kill_under_acks_all_load_loses_no_acknowledged_write() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts::default());
    let victim = c.leader(0).unwrap();
    let victim_id = c.specs[victim].id.clone();
    let rt = runtime();
    let client = c.client(&rt);
    let until = Instant::now() + Duration::from_secs(6);
    let load = rt.spawn(load(client.clone(), "k", 8, until));
    std::thread::sleep(Duration::from_millis(1500));
    c.kill(victim);
    let acked = rt.block_on(load).unwrap();
    c.wait_until("a new leader for partition 0", |c| {
        c.leader(0).is_some_and(|l| l != victim)
    });
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let bad = rt.block_on(missing(&client, &acked));
    assert!(
        bad.is_empty(),
        "{} acknowledged writes lost: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let controller_logs: String = c.running().iter().map(|&i| c.log(i)).collect();
    assert!(
        controller_logs.contains("chosen over") || controller_logs.contains("leader node"),
        "the controller logs its choice"
    );
    let _ = victim_id;
}

/// Node `i`'s fetch transports from its `Info` replication section:
/// `(fetch_wire_opened, fetch_streams_opened, fetch_wire_served)`.
fn fetch_transports(c: &TestCluster, i: usize, rt: &tokio::runtime::Runtime) -> (u64, u64, u64) {
    let info = rt.block_on(c.client_of(i, rt).info()).unwrap();
    let section = info
        .sections
        .iter()
        .find(|s| s.name == "replication")
        .unwrap();
    let field = |k: &str| -> u64 {
        let f = section.fields.iter().find(|f| f.key == k);
        f.unwrap_or_else(|| panic!("no {k} in {section:?}"))
            .value
            .parse()
            .unwrap()
    };
    (
        field("fetch_wire_opened"),
        field("fetch_streams_opened"),
        field("fetch_wire_served"),
    )
}

/// Without TLS, followers fetch over the fetch wire
/// (src/replication/fetch_wire.rs): every node opened wire connections
/// and no `Fetch` stream, and the leaders served exactly the connections
/// the followers opened. With every node closing fetch wire connections
/// unanswered, as a node of an older version does (failpoint
/// `replication::fetch_wire_refuse`), they fetch over `Fetch` streams and
/// serve no wire connection. Either way `acks: all` writes succeed and
/// every replica ends with the exact values.
#[test]
fn followers_fetch_over_the_wire_and_over_streams_from_an_older_leader() {
    let _s = serial();
    for refuse in [false, true] {
        let env = match refuse {
            true => vec![(
                "FAILPOINTS".to_string(),
                "replication::fetch_wire_refuse=return".to_string(),
            )],
            false => Vec::new(),
        };
        let c = TestCluster::start_shared(ClusterOpts {
            env,
            ..ClusterOpts::default()
        });
        c.wait_until("every ISR is full", |c| c.all_led() && c.full_isr());
        let rt = runtime();
        let client = c.client(&rt);
        rt.block_on(async {
            for i in 0..20 {
                client
                    .set(format!("w{i}"), format!("v{i}"), SetOptions::default())
                    .await
                    .unwrap();
            }
        });
        for i in 0..3 {
            wait_replicated(&c, i);
            let r = local_reader(&c, i, &rt);
            rt.block_on(async {
                for k in 0..20 {
                    let got = r.get(format!("w{k}")).await.unwrap();
                    assert_eq!(got, Some(Bytes::from(format!("v{k}"))), "node {i}, w{k}");
                }
            });
        }
        let figures: Vec<(u64, u64, u64)> = (0..3).map(|i| fetch_transports(&c, i, &rt)).collect();
        let opened: u64 = figures.iter().map(|f| f.0).sum();
        let served: u64 = figures.iter().map(|f| f.2).sum();
        for (i, &(wire, streams, _)) in figures.iter().enumerate() {
            match refuse {
                false => assert!(wire >= 1 && streams == 0, "node {i}: {figures:?}"),
                true => assert!(wire == 0 && streams >= 1, "node {i}: {figures:?}"),
            }
        }
        assert_eq!(served, opened, "{figures:?}");
    }
}

/// A follower killed and restarted rejoins the ISR and ends with the
/// leader's data.
#[test]
fn follower_kill_and_rejoin() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts::default());
    let leader = c.leader(0).unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let fid = c.specs[follower].id.clone();
    c.kill(follower);
    let rt = runtime();
    let client = c.client(&rt);
    c.wait_until("the ISR of partition 0 drops the dead follower", |c| {
        c.partition(0).is_some_and(|p| !p.isr.contains(&fid))
    });
    rt.block_on(async {
        for i in 0..50 {
            client
                .set(format!("f{i}"), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        client.del(vec![b("f7")]).await.unwrap();
    });
    c.start_node(follower);
    c.wait_until("the restarted follower is back in every ISR", |c| {
        c.full_isr()
    });
    wait_replicated(&c, follower);
    let r = local_reader(&c, follower, &rt);
    rt.block_on(async {
        for i in 0..50 {
            let want = (i != 7).then(|| Bytes::from(format!("v{i}")));
            assert_eq!(r.get(format!("f{i}")).await.unwrap(), want, "f{i}");
        }
    });
}

/// A paused follower leaves the ISR after `replica_lag_ms` (the leader's
/// compare-and-set, before its session expires) and re-enters it once
/// resumed and caught up.
#[test]
fn isr_shrinks_on_lag_and_expands_on_catch_up() {
    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts {
        session_timeout_ms: 8000,
        replica_lag_ms: 1000,
        ..ClusterOpts::default()
    });
    let leader = c.leader(0).unwrap();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let fid = c.specs[follower].id.clone();
    let rt = runtime();
    let client = c.client(&rt);
    // Keys of partition 0 only: the paused node leads other partitions.
    let keys: Vec<String> = (0..20).map(|i| c.key_in(0, i)).collect();
    c.signal(follower, libc::SIGSTOP);
    let stopped = Instant::now();
    rt.block_on(async {
        for k in &keys {
            client
                .set(k.clone(), "x", SetOptions::default())
                .await
                .unwrap();
        }
    });
    c.wait_until("the paused follower leaves the ISR of partition 0", |c| {
        c.partition(0)
            .is_some_and(|p| !p.isr.contains(&fid) && p.isr.len() == 2)
    });
    assert!(
        stopped.elapsed() < Duration::from_millis(7000),
        "the leader shrank the ISR before the session expired"
    );
    c.signal(follower, libc::SIGCONT);
    c.wait_until("the resumed follower re-enters the ISR", |c| {
        c.partition(0)
            .is_some_and(|p| p.isr.contains(&fid) && p.isr.len() == 3)
    });
    wait_replicated(&c, follower);
    let r = local_reader(&c, follower, &rt);
    rt.block_on(async {
        for k in &keys {
            assert_eq!(r.get(k.clone()).await.unwrap(), Some(b("x")), "{k}");
        }
    });
    let log = c.log(leader);
    assert!(log.contains("lagging"), "shrink logged:\n{log}");
    assert!(log.contains("caught up"), "expand logged");
}

/// With fewer in-sync replicas than `min_insync`, `acks: all` is refused
/// with NOT_ENOUGH_REPLICAS, and the refused write never becomes visible,
/// not even after the ISR is whole again.
#[test]
fn min_insync_refusal_is_never_visible() {
    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts {
        session_timeout_ms: 10_000,
        replica_lag_ms: 800,
        ..ClusterOpts::default()
    });
    let leader = c.leader(0).unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let key = c.key_in(0, 1);
    for &f in &followers {
        c.signal(f, libc::SIGSTOP);
    }
    c.wait_until("the ISR of partition 0 is the leader alone", |c| {
        c.partition(0).is_some_and(|p| p.isr.len() == 1)
    });
    let rt = runtime();
    let client = c.client_of(leader, &rt);
    let refused = rt.block_on(client.set(
        key.clone(),
        "refused",
        SetOptions {
            acks: Some(Acks::All),
            ..SetOptions::default()
        },
    ));
    match refused {
        Err(Error::NotEnoughReplicas {
            partition: 0,
            isr: 1,
            min_insync: 2,
        }) => {}
        other => panic!("expected NOT_ENOUGH_REPLICAS, got {other:?}"),
    }
    for &f in &followers {
        c.signal(f, libc::SIGCONT);
    }
    c.wait_until("the ISR is whole again", |c| c.full_isr());
    for i in 0..3 {
        wait_replicated(&c, i);
        let r = local_reader(&c, i, &rt);
        assert_eq!(rt.block_on(r.get(key.clone())).unwrap(), None, "node {i}");
    }
    assert_eq!(rt.block_on(c.client(&rt).get(key.clone())).unwrap(), None);
}

/// Killing the controller elects another; partitions it led move, and
/// writes go on.
#[test]
fn controller_kill_and_reelection() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts::default());
    let m = c.metadata(0).unwrap();
    let old = m.controller.clone();
    assert!(!old.is_empty(), "a controller is known");
    let victim = c.index(&old);
    c.kill(victim);
    c.wait_until("another controller is elected", |c| {
        c.running().iter().all(|&i| {
            c.metadata(i)
                .is_some_and(|m| !m.controller.is_empty() && m.controller != old)
        })
    });
    c.wait_until("every partition is led by a live node", |c| c.all_led());
    let rt = runtime();
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..20 {
            let opts = SetOptions {
                acks: Some(Acks::All),
                ..SetOptions::default()
            };
            client
                .set(format!("c{i}"), format!("v{i}"), opts)
                .await
                .unwrap();
        }
        for i in 0..20 {
            assert_eq!(
                client.get(format!("c{i}")).await.unwrap(),
                Some(Bytes::from(format!("v{i}")))
            );
        }
    });
}

/// A leader paused past its session timeout loses leadership; once resumed
/// it refuses writes (it knows its lease lapsed), its stale epoch is
/// rejected by the new leader, and it rejoins as a follower.
#[test]
fn paused_leader_is_fenced_after_resume() {
    use caskade::proto::replication::replication_client::ReplicationClient;
    use caskade::proto::replication::{FetchRequest, PartitionFetch};

    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts::default());
    let old = c.leader(0).unwrap();
    let old_epoch = c.partition(0).unwrap().leader_epoch as u32;
    let rt = runtime();
    rt.block_on(c.client(&rt).set("before", "1", SetOptions::default()))
        .unwrap();
    c.signal(old, libc::SIGSTOP);
    c.wait_until("the others elect a new leader of partition 0", |c| {
        c.running().iter().filter(|&&i| i != old).all(|&i| {
            c.metadata(i).is_some_and(|m| {
                let p = &m.partitions[0];
                !p.leader.is_empty()
                    && p.leader != c.specs[old].id
                    && p.leader_epoch > u64::from(old_epoch)
            })
        })
    });
    let new_id = c.metadata((old + 1) % 3).unwrap().partitions[0]
        .leader
        .clone();
    let new = c.index(&new_id);
    c.signal(old, libc::SIGCONT);
    // A write sent straight to the resumed node, not to be forwarded: it
    // must refuse it, whatever it believed before the pause.
    let key = c.key_in(0, 9);
    let direct = rt.block_on(async {
        let mut kv =
            caskade::proto::kv_client::KvClient::connect(format!("http://{}", c.specs[old].addr))
                .await
                .unwrap();
        let mut req = tonic::Request::new(caskade::proto::SetRequest {
            key: Bytes::from(key.clone()),
            value: b("stale"),
            ttl_ms: None,
            condition: 0,
            acks: caskade::proto::Acks::Leader.into(),
        });
        req.metadata_mut()
            .insert("caskade-forwarded", "1".parse().unwrap());
        kv.set(req).await
    });
    let err = Error::from(direct.expect_err("the resumed old leader refuses the write"));
    assert!(
        matches!(err, Error::NotLeader { partition: 0, .. }),
        "{err:?}"
    );
    // Its old epoch is fenced by the new leader.
    let repl_addr = {
        let text = std::fs::read_to_string(&c.specs[new].config).unwrap();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("replication_listen: "))
            .unwrap()
            .to_string()
    };
    let fetch = rt.block_on(async {
        let mut r = ReplicationClient::connect(format!("http://{repl_addr}"))
            .await
            .unwrap();
        let req = FetchRequest {
            follower_id: c.specs[old].id.clone(),
            max_bytes: 1024,
            max_wait_ms: 0,
            partitions: vec![PartitionFetch {
                partition: 0,
                offset: 0,
                leader_epoch: old_epoch,
            }],
            ..Default::default()
        };
        let mut stream = r
            .fetch(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        stream.message().await
    });
    let answer = fetch
        .expect("a fetch answer")
        .expect("one answer on the stream");
    assert_eq!(answer.partitions.len(), 1, "{answer:?}");
    let refused = &answer.partitions[0];
    assert_eq!(refused.partition, 0);
    assert_eq!(refused.error_reason, "FENCED_LEADER_EPOCH", "{refused:?}");
    assert!(refused.records.is_empty(), "{refused:?}");
    let err = Error::from_reason(&refused.error_reason, refused.error_message.clone(), 0);
    assert!(matches!(err, Error::FencedEpoch(_)), "{err:?}");
    // It rejoins as a follower with the data written meanwhile.
    rt.block_on(
        c.client(&rt)
            .set(key.clone(), "fresh", SetOptions::default()),
    )
    .unwrap();
    c.wait_until("the old leader is back in the ISR", |c| c.full_isr());
    wait_replicated(&c, old);
    let r = local_reader(&c, old, &rt);
    assert_eq!(rt.block_on(r.get(key.clone())).unwrap(), Some(b("fresh")));
    assert_eq!(rt.block_on(r.get("before")).unwrap(), Some(b("1")));
}

/// SIGKILL of every node, then a restart of all: every acknowledged write
/// is back.
#[test]
fn whole_cluster_restart_keeps_acknowledged_writes() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts {
        fsync: "always",
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..100 {
            client
                .set(format!("r{i}"), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        client.del(vec![b("r5")]).await.unwrap();
    });
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_until("every partition is led again", |c| c.all_led());
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..100 {
            let want = (i != 5).then(|| Bytes::from(format!("v{i}")));
            let mut got = client.get(format!("r{i}")).await;
            for _ in 0..30 {
                if got.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                got = client.get(format!("r{i}")).await;
            }
            assert_eq!(got.unwrap(), want, "r{i}");
        }
    });
}

/// KIP-101's double failover: the old leader has records no one else got;
/// a new leader writes different records at the same offsets; the old
/// leader comes back, truncates its divergent suffix by leader epoch, and
/// ends with exactly the new leader's log. Then the new leader fails too.
#[test]
fn divergent_log_is_truncated_by_leader_epoch() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts {
        partitions: 1,
        session_timeout_ms: 4000,
        replica_lag_ms: 1000,
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let a = c.leader(0).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    let (bn, cn) = (others[0], others[1]);
    let (b_id, c_id) = (c.specs[bn].id.clone(), c.specs[cn].id.clone());
    let client = c.client(&rt);
    // C falls out of the ISR; W1 is committed on A and B.
    c.signal(cn, libc::SIGSTOP);
    c.wait_until("C leaves the ISR", |c| {
        c.partition(0)
            .is_some_and(|p| !p.isr.contains(&c_id) && p.isr.contains(&b_id))
    });
    rt.block_on(async {
        for i in 0..10 {
            let all = SetOptions {
                acks: Some(Acks::All),
                ..SetOptions::default()
            };
            client
                .set(format!("w1-{i}"), "committed", all)
                .await
                .unwrap();
        }
    });
    // B pauses; W2 reaches A alone (acks: leader), then A dies.
    c.signal(bn, libc::SIGSTOP);
    let lone = c.client_of(a, &rt);
    rt.block_on(async {
        for i in 0..5 {
            let leader_only = SetOptions {
                acks: Some(Acks::Leader),
                ..SetOptions::default()
            };
            lone.set(format!("w2-{i}"), "divergent", leader_only)
                .await
                .unwrap();
        }
    });
    c.kill(a);
    c.signal(bn, libc::SIGCONT);
    c.signal(cn, libc::SIGCONT);
    c.wait_until("B leads partition 0", |c| c.leader(0) == Some(bn));
    rt.block_on(async {
        for i in 0..5 {
            let all = SetOptions {
                acks: Some(Acks::All),
                ..SetOptions::default()
            };
            client
                .set(format!("w3-{i}"), "new-leader", all)
                .await
                .unwrap();
        }
    });
    c.start_node(a);
    c.wait_until("A is back in the ISR", |c| c.full_isr());
    wait_replicated(&c, a);
    let log = c.log(a);
    assert!(
        log.contains("truncating the log from"),
        "A truncates:\n{}",
        harness::cluster::tail(&log, 30)
    );
    // B's fetch that was outstanding when it paused may deliver the first
    // W2 record(s) on resume (they were on the wire); what B has is the
    // truth. Nothing after that first answer can have reached B, so the
    // last W2 is gone, and every replica agrees on every key.
    let mut views = Vec::new();
    for i in [a, bn, cn] {
        let r = local_reader(&c, i, &rt);
        views.push(rt.block_on(async {
            let mut view = Vec::new();
            for k in 0..10 {
                view.push(r.get(format!("w1-{k}")).await.unwrap());
            }
            for k in 0..5 {
                view.push(r.get(format!("w2-{k}")).await.unwrap());
                view.push(r.get(format!("w3-{k}")).await.unwrap());
            }
            view
        }));
    }
    let v = &views[0];
    assert!(
        v[..10]
            .iter()
            .all(|x| x.as_deref() == Some(&b"committed"[..]))
    );
    assert_eq!(v[10 + 2 * 4], None, "the last divergent W2 write is gone");
    for k in 0..5 {
        assert_eq!(v[11 + 2 * k], Some(b("new-leader")), "w3-{k}");
    }
    assert_eq!(views[1], views[0], "B agrees with A");
    assert_eq!(views[2], views[0], "C agrees with A");
    // The second failover: B dies, A or C takes over with the same data.
    c.kill(bn);
    c.wait_until("A or C leads", |c| c.leader(0).is_some_and(|l| l != bn));
    let client = c.client(&rt);
    rt.block_on(async {
        for k in 0..5 {
            assert_eq!(
                client.get(format!("w3-{k}")).await.unwrap(),
                Some(b("new-leader"))
            );
            assert_eq!(
                client.get(format!("w2-{k}")).await.unwrap(),
                views[0][10 + 2 * k]
            );
        }
    });
}

/// A client that does no routing (a plain gRPC stub on one node) is served
/// for every partition: the node forwards what it does not lead.
#[test]
fn any_node_forwards_to_the_partition_leader() {
    use caskade::proto::kv_client::KvClient;
    use caskade::proto::{GetRequest, SetRequest};

    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts::default());
    let rt = runtime();
    for p in 0..c.opts.partitions {
        let leader = c.leader(p).unwrap();
        let other = (leader + 1) % 3;
        let key = c.key_in(p, 0);
        rt.block_on(async {
            let mut kv = KvClient::connect(format!("http://{}", c.specs[other].addr))
                .await
                .unwrap();
            let set = SetRequest {
                key: Bytes::from(key.clone()),
                value: Bytes::from(format!("via-{other}")),
                ttl_ms: None,
                condition: 0,
                acks: caskade::proto::Acks::All.into(),
            };
            assert!(kv.set(set).await.unwrap().into_inner().written);
            let get = GetRequest {
                key: Bytes::from(key.clone()),
                consistency: caskade::proto::Consistency::Leader.into(),
            };
            let value = kv.get(get).await.unwrap().into_inner().value;
            assert_eq!(
                value,
                Some(Bytes::from(format!("via-{other}"))),
                "partition {p}"
            );
        });
        assert!(
            c.metadata(other).unwrap().partitions[p as usize].leader != c.specs[other].id,
            "node {other} does not lead partition {p}"
        );
    }
    // Multi-key requests span every partition: each key is served where it
    // is led.
    let keys: Vec<Bytes> = (0..c.opts.partitions)
        .map(|p| Bytes::from(c.key_in(p, 0)))
        .collect();
    rt.block_on(async {
        let mut kv = KvClient::connect(format!("http://{}", c.specs[0].addr))
            .await
            .unwrap();
        let exists = caskade::proto::ExistsRequest {
            keys: keys.clone(),
            consistency: caskade::proto::Consistency::Leader.into(),
        };
        assert_eq!(
            kv.exists(exists.clone()).await.unwrap().into_inner().count,
            4
        );
        let del = caskade::proto::DelRequest {
            keys: keys.clone(),
            acks: caskade::proto::Acks::All.into(),
        };
        assert_eq!(kv.del(del).await.unwrap().into_inner().deleted, 4);
        assert_eq!(kv.exists(exists).await.unwrap().into_inner().count, 0);
    });
}

/// One fetch session carries several partitions: each is served or refused
/// on its own, and a refusal neither fails the stream nor the others.
#[test]
fn a_fetch_session_serves_and_refuses_partitions_independently() {
    use caskade::proto::replication::replication_client::ReplicationClient;
    use caskade::proto::replication::{FetchRequest, PartitionFetch};

    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts::default());
    let rt = runtime();
    let node = 0;
    let id = c.specs[node].id.clone();
    let led = |p: u32| c.partition(p).is_some_and(|i| i.leader == id);
    let mine = (0..c.opts.partitions)
        .find(|&p| led(p))
        .expect("node-1 leads a partition");
    let theirs = (0..c.opts.partitions)
        .find(|&p| !led(p))
        .expect("another node leads one");
    let client = c.client(&rt);
    for n in 0..3 {
        rt.block_on(client.set(c.key_in(mine, n), "v", SetOptions::default()))
            .unwrap();
    }
    let epoch = c.partition(mine).unwrap().leader_epoch as u32;
    let follower = c
        .partition(mine)
        .unwrap()
        .replicas
        .into_iter()
        .find(|r| *r != id)
        .unwrap();
    let repl_addr = std::fs::read_to_string(&c.specs[node].config)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("replication_listen: ")
                .map(str::to_string)
        })
        .unwrap();
    let fetch = |partition, leader_epoch| PartitionFetch {
        partition,
        offset: 0,
        leader_epoch,
    };
    let request = |partitions| FetchRequest {
        follower_id: follower.clone(),
        max_bytes: 1 << 20,
        max_wait_ms: 0,
        partitions,
        ..Default::default()
    };
    let (first, second) = rt.block_on(async {
        let mut r = ReplicationClient::connect(format!("http://{repl_addr}"))
            .await
            .unwrap();
        let requests = vec![
            request(vec![fetch(mine, epoch), fetch(theirs, 1), fetch(99, 1)]),
            request(vec![fetch(mine, epoch + 1)]),
        ];
        let mut stream = r
            .fetch(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let second = stream.message().await.unwrap().unwrap();
        (first, second)
    });
    let got: Vec<_> = first
        .partitions
        .iter()
        .map(|d| (d.partition, d.error_reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(mine, ""), (theirs, "NOT_LEADER"), (99, "INVALID_ARGUMENT")],
        "{first:?}"
    );
    let served = &first.partitions[0];
    assert_eq!(
        (
            served.record_count,
            served.log_end_offset,
            served.high_watermark
        ),
        (3, 3, 3),
        "{served:?}"
    );
    assert!(first.partitions[1].records.is_empty());
    // The stream goes on after refusals; a newer epoch than the leader's is
    // refused as not known yet (the follower retries it soon).
    assert_eq!(second.partitions.len(), 1, "{second:?}");
    assert_eq!(second.partitions[0].error_reason, "UNKNOWN_LEADER_EPOCH");
}

/// Issue 10, bug 13: 1 MiB values (the maximum) in four partitions led by
/// one node, written while both followers are stopped, so their first
/// fetch after SIGCONT finds records in all four at once. Every fetch
/// answer must fit the 4 MiB message limit: the followers catch up, the
/// `acks: all` writes that follow are all acknowledged, and each follower
/// ends with every value.
#[test]
fn maximal_values_in_four_partitions_replicate_under_acks_all() {
    let _s = serial();
    let c = TestCluster::start_shared(ClusterOpts {
        partitions: 12,
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let leader = 0;
    let led: Vec<u32> = (0..c.opts.partitions)
        .filter(|&p| c.leader(p) == Some(leader))
        .take(4)
        .collect();
    assert_eq!(led.len(), 4, "node-1 leads four partitions");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let client = c.client(&rt);
    // Exactly the maximal value size, distinct per key.
    let value = |p: u32, n: usize| {
        let mut v = format!("{p}-{n}-{}", "v".repeat(1 << 20));
        v.truncate(1 << 20);
        v
    };
    let mut want = BTreeMap::new();
    for &f in &followers {
        c.signal(f, libc::SIGSTOP);
    }
    rt.block_on(async {
        let opts = SetOptions {
            acks: Some(Acks::Leader),
            ..SetOptions::default()
        };
        // Two each: the fetch a follower had outstanding when stopped is
        // answered with the first record alone.
        for n in 0..2 {
            for &p in &led {
                let key = c.key_in(p, n);
                assert!(client.set(key.clone(), value(p, n), opts).await.unwrap());
                want.insert(key, value(p, n));
            }
        }
    });
    for &f in &followers {
        c.signal(f, libc::SIGCONT);
    }
    for &f in &followers {
        wait_replicated(&c, f);
    }
    let acked = rt.block_on(async {
        let mut tasks = Vec::new();
        for &p in &led {
            for n in 2..4 {
                let client = client.clone();
                let key = c.key_in(p, n);
                let v = value(p, n);
                tasks.push(tokio::spawn(async move {
                    let opts = SetOptions {
                        acks: Some(Acks::All),
                        ..SetOptions::default()
                    };
                    let r = client.set(key.clone(), v.clone(), opts).await;
                    (key, v, r)
                }));
            }
        }
        let mut acked = 0;
        for t in tasks {
            let (key, v, r) = t.await.unwrap();
            assert!(matches!(r, Ok(true)), "{key}: {r:?}");
            want.insert(key, v);
            acked += 1;
        }
        acked
    });
    assert_eq!(acked, 8);
    for &f in &followers {
        wait_replicated(&c, f);
        let reader = local_reader(&c, f, &rt);
        for (k, v) in &want {
            let got = rt.block_on(reader.get(k.clone())).unwrap();
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "{k} on node {f}");
        }
    }
}
