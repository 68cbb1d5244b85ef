//! The gRPC API of a real `caskade-server`, through the library's client and
//! through the raw generated stub: every RPC with exact results, every bad
//! input with its exact error and reason, the server still serving after
//! each, and clients that vanish mid-request.

use crate::harness;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use caskade::Error;
use caskade::client::{Client, KeyTtl, SetOptions};
use caskade::config::ClientConfig;
use caskade::proto;
use caskade::proto::kv_client::KvClient;
use caskade::storage::Condition;
use harness::{Server, ServerOpts, b, bounded, runtime};
use prost::Message;

/// Under `fsync: always` writes take the submitted (group commit) path and
/// reads the in-memory one: 40 concurrent sets, a multi-key DEL naming one
/// key twice (the second rests on the first's record still in flight), NX,
/// and an EXPIRE (declined by `submit`, run on the blocking pool), with
/// exact answers, then the same state after a restart.
#[test]
fn writes_under_always_answer_exactly_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = || ServerOpts::default().env("CASKADE_STORAGE_FSYNC", "always");
    let server = Server::start(&data, opts());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        let plain = SetOptions::default();
        let sets = (0..40).map(|i| {
            let c = c.clone();
            async move { c.set(format!("k{i}"), format!("v{i}"), plain).await }
        });
        for done in futures_util::future::join_all(sets).await {
            assert!(done.unwrap());
        }
        assert_eq!(
            c.del(vec![b("k0"), b("k0"), b("k1"), b("nope"), b("k2")])
                .await
                .unwrap(),
            3
        );
        let nx = SetOptions {
            condition: Condition::IfAbsent,
            ..SetOptions::default()
        };
        assert!(c.set("k0", "again", nx).await.unwrap());
        assert!(!c.set("k3", "no", nx).await.unwrap());
        assert!(c.expire("k3", 60_000).await.unwrap());
        match c.ttl("k3").await.unwrap() {
            KeyTtl::Ms(ms) => assert!((59_000..=60_000).contains(&ms), "{ms}"),
            other => panic!("ttl of k3: {other:?}"),
        }
        assert_eq!(
            c.exists(vec![b("k0"), b("k1"), b("k2"), b("k3")])
                .await
                .unwrap(),
            2
        );
    }));
    drop(server);
    let server = Server::start(&data, opts());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        assert_eq!(c.get("k0").await.unwrap(), Some(b("again")));
        assert_eq!(c.get("k1").await.unwrap(), None);
        assert_eq!(c.get("k3").await.unwrap(), Some(b("v3")));
        for i in 4..40 {
            assert_eq!(
                c.get(format!("k{i}")).await.unwrap(),
                Some(Bytes::from(format!("v{i}")))
            );
        }
    }));
}

#[test]
fn every_rpc_through_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        c.ping().await.unwrap();
        let plain = SetOptions::default();
        assert!(c.set("a", "1", plain).await.unwrap());
        assert_eq!(c.get("a").await.unwrap(), Some(b("1")));
        assert_eq!(c.get("nope").await.unwrap(), None);
        // Binary keys and values round-trip byte for byte.
        let (k, v) = (
            Bytes::from_static(&[0, 255, 10]),
            Bytes::from(vec![7u8; 70_000]),
        );
        assert!(c.set(k.clone(), v.clone(), plain).await.unwrap());
        assert_eq!(c.get(k.clone()).await.unwrap(), Some(v));

        let nx = SetOptions {
            condition: Condition::IfAbsent,
            ..plain
        };
        let xx = SetOptions {
            condition: Condition::IfPresent,
            ..plain
        };
        assert!(!c.set("a", "2", nx).await.unwrap());
        assert!(c.set("b", "2", nx).await.unwrap());
        assert!(!c.set("c", "3", xx).await.unwrap());
        assert!(c.set("b", "3", xx).await.unwrap());
        assert_eq!(c.get("b").await.unwrap(), Some(b("3")));
        assert_eq!(c.get("c").await.unwrap(), None);

        assert_eq!(c.ttl("a").await.unwrap(), KeyTtl::Persistent);
        assert_eq!(c.ttl("nope").await.unwrap(), KeyTtl::Missing);
        assert!(c.expire("a", 60_000).await.unwrap());
        assert!(!c.expire("nope", 60_000).await.unwrap());
        match c.ttl("a").await.unwrap() {
            KeyTtl::Ms(ms) => assert!((55_000..=60_000).contains(&ms), "{ms}"),
            other => panic!("{other:?}"),
        }
        let short = SetOptions {
            ttl_ms: Some(300),
            ..plain
        };
        assert!(c.set("short", "x", short).await.unwrap());
        assert_eq!(c.get("short").await.unwrap(), Some(b("x")));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.get("short").await.unwrap(), None);
        assert_eq!(c.ttl("short").await.unwrap(), KeyTtl::Missing);

        assert_eq!(
            c.exists(vec![b("a"), b("b"), b("nope"), b("a")])
                .await
                .unwrap(),
            3
        );
        assert!(c.expire("b", 0).await.unwrap());
        assert_eq!(c.del(vec![b("a"), b("b"), b("nope")]).await.unwrap(), 1);
        assert_eq!(c.exists(vec![b("a"), b("b")]).await.unwrap(), 0);

        let m = c.metadata().await.unwrap();
        assert_eq!(m.node_id, "node-1");
        assert_eq!(m.mode, "standalone");
        assert_eq!(m.partitioner, "fnv1a64-mod");
        assert_eq!(m.partition_count, 8);
        assert_eq!(m.nodes.len(), 1);
        assert_eq!(m.nodes[0].client_addr, server.addr);
        assert_eq!(m.partitions.len(), 8);
        for (i, p) in m.partitions.iter().enumerate() {
            assert_eq!(p.id as usize, i);
            assert_eq!(p.leader, "node-1");
            assert_eq!(p.leader_epoch, 1);
            assert_eq!(p.replicas, ["node-1"]);
            assert_eq!(p.isr, ["node-1"]);
        }
        let limits = m.limits.unwrap();
        assert_eq!(
            (limits.max_key_bytes, limits.max_value_bytes),
            (1024, 1 << 20)
        );

        // Both acks and both consistencies are served locally.
        for acks in [caskade::node::Acks::Leader, caskade::node::Acks::All] {
            let config = ClientConfig {
                addrs: vec![server.addr.clone()],
                acks,
                consistency: caskade::node::Consistency::Any,
                ..ClientConfig::default()
            };
            let c = Client::new(&config).unwrap();
            assert!(c.set("acks", format!("{acks:?}"), plain).await.unwrap());
            assert_eq!(c.get("acks").await.unwrap(), Some(b(&format!("{acks:?}"))));
        }
    }));
}

/// Keys spread over all partitions, each written and read back.
#[test]
fn keys_spread_over_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, ServerOpts::default());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        for i in 0..200 {
            let key = format!("user:{i}");
            c.set(key.clone(), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        for i in 0..200 {
            assert_eq!(
                c.get(format!("user:{i}")).await.unwrap(),
                Some(b(&format!("v{i}")))
            );
        }
    }));
    let used: Vec<u32> = (0..200)
        .map(|i| caskade::cluster::partition_for(format!("user:{i}").as_bytes(), 8))
        .collect();
    for p in 0..8 {
        assert!(used.contains(&p), "partition {p} unused");
        assert!(data.join("partitions").join(p.to_string()).is_dir());
    }
}

#[test]
fn bad_input_through_grpc_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        let plain = SetOptions::default();
        let invalid = |msg: &str| Error::InvalidInput(msg.to_string());
        let ttl = |ms| SetOptions {
            ttl_ms: Some(ms),
            ..plain
        };
        let cases: Vec<(caskade::Result<bool>, Error)> = vec![
            (c.set("", "v", plain).await, invalid("empty key")),
            (
                c.set(vec![b'k'; 1025], "v", plain).await,
                invalid("key is 1025 bytes, the limit is 1024"),
            ),
            (
                c.set("k", vec![0u8; (1 << 20) + 1], plain).await,
                invalid("value is 1048577 bytes, the limit is 1048576"),
            ),
            (c.set("k", "v", ttl(0)).await, invalid("TTL must be at least 1 ms")),
            (
                c.set("k", "v", ttl(u64::MAX)).await,
                invalid("TTL of 18446744073709551615 ms is out of range"),
            ),
            (
                c.expire("k", 1 << 63).await,
                invalid("TTL of 9223372036854775808 ms is out of range"),
            ),
            (c.get("").await.map(|_| true), invalid("empty key")),
            (c.ttl("").await.map(|_| true), invalid("empty key")),
            (c.del(vec![]).await.map(|_| true), invalid("at least one key is required")),
            (
                c.exists(vec![b("ok"), Bytes::new()]).await.map(|_| true),
                invalid("empty key"),
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(result.unwrap_err(), expected);
            c.ping().await.unwrap();
        }
        // A value far over the limit is refused by the message size cap
        // before the server buffers it whole.
        let huge = proto::SetRequest {
            key: b("k"),
            value: Bytes::from(vec![0u8; 3 << 20]),
            acks: proto::Acks::All.into(),
            ..Default::default()
        };
        let len = huge.encoded_len();
        let err = c
            .set("k", huge.value.clone(), plain)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            invalid(&format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                1024 + (1 << 20) + (64 << 10)
            ))
        );
        // The raw stub: an unknown enum value is refused, with its reason.
        let mut raw = KvClient::connect(format!("http://{}", server.addr)).await.unwrap();
        let status = raw
            .set(proto::SetRequest {
                key: b("k"),
                value: b("v"),
                condition: 7,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "unknown condition 7");
        assert_eq!(status.metadata().get("caskade-reason").unwrap(), "INVALID_ARGUMENT");
        // Unknown acks and consistency values are refused too, not taken
        // as the server's default (issue 13).
        let status = raw
            .set(proto::SetRequest {
                key: b("k"),
                value: b("v"),
                acks: 7,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "unknown acks 7: expected 0 (server default), 1 (leader) or 2 (all)"
        );
        let status = raw
            .get(proto::GetRequest {
                key: b("k"),
                consistency: 9,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "unknown consistency 9: expected 0 (server default), 1 (leader) or 2 (any)"
        );
        // Nothing was written by any of the failed requests.
        assert_eq!(c.exists(vec![b("k")]).await.unwrap(), 0);
        assert!(c.set("k", "fine", plain).await.unwrap());
        assert_eq!(c.get("k").await.unwrap(), Some(b("fine")));
    }));
}

#[test]
fn clients_vanishing_mid_request_do_not_hurt_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), ServerOpts::default());
    // 1. Raw sockets that send half an HTTP/2 preface, or garbage, and leave.
    for junk in [
        &b"PRI * HTTP/2.0\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 64][..],
    ] {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.write_all(junk).unwrap();
        drop(s);
    }
    // 2. Requests cancelled mid-flight: large values with a deadline too
    //    short to send them, and whole runtimes dropped with calls pending.
    for _ in 0..3 {
        let rt = runtime();
        rt.block_on(async {
            let config = ClientConfig {
                addrs: vec![server.addr.clone()],
                timeout_ms: 1,
                ..ClientConfig::default()
            };
            let c = Client::new(&config).unwrap();
            let mut calls = Vec::new();
            for i in 0..20 {
                let c = c.clone();
                calls.push(tokio::spawn(async move {
                    let _ = c
                        .set(format!("big{i}"), vec![1u8; 1 << 20], SetOptions::default())
                        .await;
                }));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        });
        drop(rt); // aborts whatever is still pending
    }
    // The server is alive and serves normally.
    assert!(server.is_running());
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        c.ping().await.unwrap();
        assert!(c.set("after", "ok", SetOptions::default()).await.unwrap());
        assert_eq!(c.get("after").await.unwrap(), Some(b("ok")));
    }));
    assert!(server.is_running());
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// At `server.max_connections` (1), a new client is served at once: the
/// open connection with no request in progress is closed for it (the
/// slot is taken after `accept`; it used to be taken before, so the
/// second client waited in the backlog until the first left). The first
/// client reconnects on its next request.
#[test]
fn connection_limit_evicts_an_idle_connection_for_a_new_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default().env("CASKADE_SERVER_MAX_CONNECTIONS", "1"),
    );
    runtime().block_on(bounded(async {
        let config = ClientConfig {
            addrs: vec![server.addr.clone()],
            timeout_ms: 1000,
            ..ClientConfig::default()
        };
        let first = Client::new(&config).unwrap();
        first.ping().await.unwrap();
        let second = Client::new(&config).unwrap();
        second.ping().await.unwrap();
        // The first one's connection was closed: its next request
        // reconnects (at most one attempt fails while it notices).
        let mut served = false;
        for _ in 0..3 {
            if first.ping().await.is_ok() {
                served = true;
                break;
            }
        }
        assert!(served, "first client never served again");
    }));
}
