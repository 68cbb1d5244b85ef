//! Which partitions a node hosts, on real processes and a real ZooKeeper:
//! a 4-node cluster with replication factor 3 spreads 8 partitions over
//! all four nodes (each hosts 6), every node opens engines (data
//! directories) for exactly the partitions ZooKeeper assigns it and
//! reports exactly those as its own, and every node serves every key, the
//! keys of partitions it does not host included (it forwards them).

use crate::harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use caskade::proto::kv_client::KvClient;
use caskade::proto::{Acks, Consistency, GetRequest, SetRequest};
use harness::cluster::{ClusterOpts, TestCluster};
use harness::runtime;

/// `/partitions/<p>/replicas` of every partition, read from ZooKeeper.
fn assigned(c: &TestCluster) -> BTreeMap<u32, Vec<String>> {
    let connect = c.zk.connect_string();
    let partitions = c.opts.partitions;
    runtime().block_on(async move {
        let zk = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_millis(4000))
            .connect(&connect)
            .await
            .expect("connect a raw ZooKeeper client");
        let mut out = BTreeMap::new();
        for p in 0..partitions {
            let path = format!("/caskade/test/partitions/{p}/replicas");
            let (data, _) = zk.get_data(&path).await.expect("replicas znode");
            let replicas: Vec<String> = serde_json::from_slice(&data).expect("JSON list");
            out.insert(p, replicas);
        }
        out
    })
}

/// The partition directories under node `i`'s data directory.
fn dirs(c: &TestCluster, i: usize) -> BTreeSet<u32> {
    let root = c.specs[i].data.join("partitions");
    std::fs::read_dir(&root)
        .map(|rd| {
            rd.map(|e| {
                let name = e.expect("dir entry").file_name();
                let name = name.to_str().expect("utf-8 name").to_string();
                name.parse::<u32>()
                    .unwrap_or_else(|_| panic!("unexpected entry {name} in {}", root.display()))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The partitions node `i` reports a log of its own for (`Metadata`
/// offsets carry this node's log end only where it hosts the partition).
fn reported(c: &TestCluster, i: usize) -> BTreeSet<u32> {
    let id = &c.specs[i].id;
    let m = c.metadata(i).expect("metadata");
    assert_eq!(m.partitions.len(), c.opts.partitions as usize);
    m.partitions
        .iter()
        .filter(|p| p.offsets.iter().any(|o| o.node_id == *id))
        .map(|p| p.id)
        .collect()
}

#[test]
fn four_nodes_host_exactly_their_assigned_partitions_and_forward_the_rest() {
    let c = TestCluster::start_shared(ClusterOpts {
        nodes: 4,
        partitions: 8,
        replication_factor: 3,
        initial_nodes: 4,
        ..ClusterOpts::default()
    });
    let ids: Vec<String> = c.specs.iter().map(|s| s.id.clone()).collect();

    // Created over the four nodes: partition p starts at node p mod 4.
    let zk = assigned(&c);
    let expected: BTreeMap<u32, Vec<String>> = (0..8u32)
        .map(|p| {
            (
                p,
                (0..3).map(|k| ids[(p as usize + k) % 4].clone()).collect(),
            )
        })
        .collect();
    assert_eq!(zk, expected);

    for (i, id) in ids.iter().enumerate() {
        let mine: BTreeSet<u32> = zk
            .iter()
            .filter(|(_, r)| r.contains(id))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(mine.len(), 6, "{id} hosts 6 of 8 partitions");
        assert_eq!(dirs(&c, i), mine, "partition directories of {id}");
        assert_eq!(reported(&c, i), mine, "partitions {id} reports as its own");
        // Every partition's leader and replicas, hosted here or not.
        let m = c.metadata(i).unwrap();
        for p in &m.partitions {
            assert_eq!(p.replicas, zk[&p.id], "{id}: replicas of {}", p.id);
            let leader = c.partition(p.id).expect("led").leader;
            assert_eq!(p.leader, leader, "{id}: leader of {}", p.id);
        }
    }

    // Every node serves every partition: writes through node i, reads
    // through every node, the one that does not host the partition
    // included (exactly one per partition).
    let rt = runtime();
    rt.block_on(async {
        let mut kvs = Vec::new();
        for s in &c.specs {
            kvs.push(KvClient::connect(format!("http://{}", s.addr)).await.unwrap());
        }
        for p in 0..8u32 {
            let outside: Vec<usize> = (0..4).filter(|&i| !zk[&p].contains(&ids[i])).collect();
            assert_eq!(outside.len(), 1, "partition {p}");
            for (i, kv) in kvs.iter_mut().enumerate() {
                let set = SetRequest {
                    key: Bytes::from(c.key_in(p, i)),
                    value: Bytes::from(format!("v{p}-{i}")),
                    ttl_ms: None,
                    condition: 0,
                    acks: Acks::All.into(),
                };
                let written = kv.set(set).await.unwrap().into_inner().written;
                assert!(written, "partition {p} through {}", ids[i]);
            }
        }
        for p in 0..8u32 {
            for writer in 0..4 {
                for (reader, kv) in kvs.iter_mut().enumerate() {
                    for consistency in [Consistency::Leader, Consistency::Any] {
                        let get = GetRequest {
                            key: Bytes::from(c.key_in(p, writer)),
                            consistency: consistency.into(),
                        };
                        let value = kv.get(get).await.unwrap().into_inner().value;
                        // `any` on a follower may lag the commit: a
                        // replica that hosts it answers what it applied.
                        if consistency == Consistency::Leader
                            || !zk[&p].contains(&ids[reader])
                        {
                            assert_eq!(
                                value,
                                Some(Bytes::from(format!("v{p}-{writer}"))),
                                "partition {p} written through {}, read through {} ({consistency:?})",
                                ids[writer],
                                ids[reader]
                            );
                        }
                    }
                }
            }
        }
    });
    // Nothing else was opened meanwhile.
    for (i, id) in ids.iter().enumerate() {
        let mine: BTreeSet<u32> = zk
            .iter()
            .filter(|(_, r)| r.contains(id))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(dirs(&c, i), mine, "partition directories of {id}");
    }

    // A restarted node opens what it hosted (its directories) and serves
    // the values written before; it hosts nothing else.
    let mut c = c;
    c.kill(3);
    c.start_node(3);
    c.wait_until("every partition led with a full ISR again", |c| {
        c.all_led() && c.full_isr()
    });
    let mine: BTreeSet<u32> = zk
        .iter()
        .filter(|(_, r)| r.contains(&ids[3]))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(dirs(&c, 3), mine);
    assert_eq!(reported(&c, 3), mine);
    rt.block_on(async {
        let mut kv = KvClient::connect(format!("http://{}", c.specs[3].addr))
            .await
            .unwrap();
        for p in 0..8u32 {
            let get = GetRequest {
                key: Bytes::from(c.key_in(p, 0)),
                consistency: Consistency::Leader.into(),
            };
            let value = kv.get(get).await.unwrap().into_inner().value;
            assert_eq!(value, Some(Bytes::from(format!("v{p}-0"))), "partition {p}");
        }
    });
}
