//! The Redis string RPCs in a real 3-node cluster (`acks: all`), sent to a
//! node that does not lead the key's partition, which forwards them:
//! concurrent INCR and APPEND give exact results, errors keep their kind
//! through the forward, MSET/MGET split across partitions, and every
//! replica ends with the same values, also after the leader is killed.

use crate::harness;

use bytes::Bytes;
use caskade::Error;
use caskade::proto;
use caskade::proto::kv_client::KvClient;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::load::local_reader;
use harness::{b, runtime};
use tonic::transport::Channel;

/// A raw gRPC stub of node `i`: no routing, so the node must forward.
async fn stub(c: &TestCluster, i: usize) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", c.specs[i].addr))
        .await
        .unwrap()
}

const ALL: i32 = proto::Acks::All as i32;

#[test]
fn string_ops_through_a_non_leader_replicate_exactly() {
    let c = TestCluster::start_shared(ClusterOpts::default());
    c.wait_until("every partition has its full ISR", |c| c.full_isr());
    let rt = runtime();
    let key = c.key_in(0, 1);
    let leader = c.leader(0).unwrap();
    let other = (leader + 1) % 3;
    rt.block_on(async {
        // 8 tasks x 1,000 INCR and 8 x 100 APPEND, all through `other`.
        let tasks: Vec<_> = (0..8u8)
            .map(|t| {
                let mut kv = KvClient::new(
                    Channel::from_shared(format!("http://{}", c.specs[other].addr))
                        .unwrap()
                        .connect_lazy(),
                );
                let key = Bytes::from(key.clone());
                tokio::spawn(async move {
                    for i in 0..1000 {
                        let q = proto::IncrByRequest {
                            key: key.clone(),
                            delta: 1,
                            acks: ALL,
                        };
                        kv.incr_by(q).await.unwrap();
                        if i % 10 == 0 {
                            let q = proto::AppendRequest {
                                key: b("log"),
                                value: Bytes::from(vec![b'a' + t]),
                                acks: ALL,
                            };
                            kv.append(q).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut kv = stub(&c, other).await;
        let q = proto::IncrByRequest {
            key: Bytes::from(key.clone()),
            delta: 0,
            acks: ALL,
        };
        assert_eq!(kv.incr_by(q).await.unwrap().into_inner().value, 8000);
        let q = proto::KeyReadRequest {
            key: b("log"),
            consistency: 0,
        };
        assert_eq!(kv.strlen(q).await.unwrap().into_inner().value, 800);
        // The error kind survives the forward.
        let q = proto::IncrByRequest {
            key: b("log"),
            delta: 1,
            acks: ALL,
        };
        let err = Error::from(kv.incr_by(q).await.unwrap_err());
        assert_eq!(err, Error::NotInteger);
        assert_eq!(err.to_string(), "value is not an integer or out of range");
        // SET ... GET and EXPIRE GT through the non-leader.
        let q = proto::SetWithRequest {
            key: Bytes::from(key.clone()),
            value: b("x"),
            get: true,
            expire: Some(proto::ExpireTime {
                when: Some(proto::expire_time::When::TtlMs(60_000)),
            }),
            acks: ALL,
            ..Default::default()
        };
        let r = kv.set_with(q).await.unwrap().into_inner();
        assert_eq!((r.written, r.old_value), (true, Some(b("8000"))));
        let q = proto::ExpireWithRequest {
            key: Bytes::from(key.clone()),
            when: Some(proto::ExpireTime {
                when: Some(proto::expire_time::When::TtlMs(30_000)),
            }),
            gt: true,
            acks: ALL,
            ..Default::default()
        };
        assert!(!kv.expire_with(q).await.unwrap().into_inner().done);
        let q = proto::SetWithRequest {
            key: Bytes::from(key.clone()),
            value: b("8000"),
            keep_ttl: true,
            acks: ALL,
            ..Default::default()
        };
        assert!(kv.set_with(q).await.unwrap().into_inner().written);
        // MSET / MGET over every partition, through one node.
        let keys: Vec<String> = (0..4).map(|p| c.key_in(p, 7)).collect();
        let q = proto::MSetRequest {
            pairs: keys
                .iter()
                .map(|k| proto::KeyValue {
                    key: Bytes::from(k.clone()),
                    value: Bytes::from(format!("v-{k}")),
                })
                .collect(),
            acks: ALL,
        };
        kv.m_set(q).await.unwrap();
        let mut asked: Vec<Bytes> = keys.iter().rev().map(|k| Bytes::from(k.clone())).collect();
        asked.push(b("absent"));
        let q = proto::MGetRequest {
            keys: asked,
            consistency: 0,
        };
        let got: Vec<Option<Bytes>> = kv
            .m_get(q)
            .await
            .unwrap()
            .into_inner()
            .values
            .into_iter()
            .map(|m| m.value)
            .collect();
        let mut want: Vec<Option<Bytes>> = keys
            .iter()
            .rev()
            .map(|k| Some(Bytes::from(format!("v-{k}"))))
            .collect();
        want.push(None);
        assert_eq!(got, want);
        // DBSIZE summed over the nodes counts each key once.
        let mut total = 0;
        for i in 0..3 {
            let mut kv = stub(&c, i).await;
            total += kv
                .db_size(proto::DbSizeRequest {})
                .await
                .unwrap()
                .into_inner()
                .value;
        }
        assert_eq!(total, 2 + 4);
    });
    // Every replica holds the same values (acks: all, then the followers
    // catch up on the high watermark).
    for i in 0..3 {
        c.wait_until(&format!("node {i} reads the final values"), |c| {
            let r = local_reader(c, i, &rt);
            rt.block_on(async {
                r.get(key.clone()).await.ok().flatten() == Some(b("8000"))
                    && r.strlen("log").await.ok() == Some(800)
            })
        });
    }
    // Kill the leader: the new one answers the same, and INCR goes on.
    let mut c = c;
    c.kill(leader);
    c.wait_until("a new leader of partition 0", |c| {
        c.leader(0).is_some_and(|l| l != leader)
    });
    let client = c.client_of(other, &rt);
    rt.block_on(async {
        assert_eq!(client.incr_by(key.clone(), 1).await.unwrap(), 8001);
        assert_eq!(client.strlen("log").await.unwrap(), 800);
        let ttl = client.ttl(key.clone()).await.unwrap();
        assert!(
            matches!(ttl, caskade::client::KeyTtl::Ms(ms) if ms > 50_000 && ms <= 60_000),
            "{ttl:?}"
        );
    });
}
