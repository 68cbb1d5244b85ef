//! caskade's own refusals, as a RESP client and a gRPC client see them:
//!
//! - a full disk (`ENOSPC` from the segment write, the `bitcask::write`
//!   failpoint, on the real write path): RESP answers `-READONLY disk full:
//!   ...`, gRPC a definite refusal (`DISK_FULL`, `RESOURCE_EXHAUSTED`,
//!   nothing applied), never `UNAVAILABLE` (whose outcome is unknown);
//!   reads go on and writes resume once space is back;
//! - a cluster whose partition leader cannot be reached (SIGKILLed, its
//!   ZooKeeper session not expired yet, so no other leader): the node asked
//!   answers `NOTLEADER` naming the leader, on RESP and on gRPC
//!   (`NOT_LEADER`, `FAILED_PRECONDITION`), not an error about a
//!   connection the client never made.

use crate::harness;

use std::net::TcpStream;
use std::time::Duration;

use caskade::proto::kv_client::KvClient;
use harness::cluster::{ClusterOpts, TestCluster};

use crate::call;

/// A blocking RESP connection to `addr`.
fn open(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// A raw gRPC `Set` of `key` through `addr`: the status as the server sent
/// it (no client-side mapping, no retry).
fn grpc_set(rt: &tokio::runtime::Runtime, addr: &str, key: &str) -> tonic::Status {
    rt.block_on(async {
        let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
        kv.set(caskade::proto::SetRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ttl_ms: None,
            condition: 0,
            acks: 0,
        })
        .await
        .expect_err("the write is refused")
    })
}

/// The `caskade-reason` of a status.
fn reason(s: &tonic::Status) -> &str {
    s.metadata()
        .get("caskade-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(feature = "failpoints")]
mod disk_full {

    use caskade::client::{Client, SetOptions};
    use caskade::config::{ClientConfig, Config};
    use caskade::error::Error;
    use caskade::storage::Durability;

    use super::*;

    /// The storage layer's words for the failpoint's ENOSPC, after the
    /// segment's path.
    const ENOSPC: &str = ": No space left on device (os error 28)";

    #[test]
    fn a_full_disk_is_readonly_on_resp_and_a_definite_refusal_on_grpc() {
        let _gate = crate::GATE.lock();
        let _scenario = fail::FailScenario::setup();
        let rt = harness::runtime();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            partitions: 1,
            ..Config::default()
        };
        config.storage.fsync = Durability::Always;
        let (grpc, resp, stop) = crate::serve_in_process(&rt, &config);

        let mut r = open(&resp);
        assert_eq!(call(&mut r, &["SET", "before", "v0"]), "+OK\r\n");

        fail::cfg("bitcask::write", "return").unwrap();
        // RESP: READONLY, with the storage layer's reason.
        let got = call(&mut r, &["SET", "k", "v1"]);
        assert!(
            got.starts_with("-READONLY disk full: write ")
                && got.ends_with(&format!("{ENOSPC}\r\n")),
            "{got:?}"
        );
        // gRPC, raw: a definite refusal, not UNAVAILABLE.
        let status = grpc_set(&rt, &grpc, "k");
        assert_eq!(
            (status.code(), reason(&status)),
            (tonic::Code::ResourceExhausted, "DISK_FULL"),
            "{status:?}"
        );
        assert!(
            status.message().starts_with("disk full: write ") && status.message().ends_with(ENOSPC),
            "{status:?}"
        );
        // The caskade client: the same refusal, which proves nothing was
        // applied, printed as the server worded it.
        let client = rt.block_on(async {
            Client::new(&ClientConfig {
                addrs: vec![grpc.clone()],
                ..ClientConfig::default()
            })
            .unwrap()
        });
        let err = rt
            .block_on(client.set(
                "k".as_bytes().to_vec(),
                "v2".as_bytes().to_vec(),
                SetOptions::default(),
            ))
            .unwrap_err();
        assert!(matches!(err, Error::DiskFull(_)), "{err:?}");
        assert!(err.nothing_applied(), "{err:?}");
        assert!(err.to_string().starts_with("disk full: write "), "{err}");
        // Reads go on; the refused writes are nowhere.
        assert_eq!(call(&mut r, &["GET", "before"]), "$2\r\nv0\r\n");
        assert_eq!(call(&mut r, &["GET", "k"]), "$-1\r\n");

        // Space is back: writes resume without a restart.
        fail::remove("bitcask::write");
        assert_eq!(call(&mut r, &["SET", "k", "v3"]), "+OK\r\n");
        assert_eq!(call(&mut r, &["GET", "k"]), "$2\r\nv3\r\n");
        stop.send_replace(true);
    }
}

#[test]
fn an_unreachable_leader_is_notleader_on_resp_and_grpc() {
    let _gate = crate::GATE.read();
    let mut c = TestCluster::start(ClusterOpts {
        // Long enough that no new leader is elected during the test.
        session_timeout_ms: 20_000,
        env: vec![("CASKADE_RESP_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    let leader = c.leader(0).expect("partition 0 has a leader");
    let other = (0..3).find(|&i| i != leader).unwrap();
    let key = c.key_in(0, 0);
    let leader_addr = c.specs[leader].addr.clone();
    let other_resp = c.resp_addr(other);
    let mut r = open(&other_resp);
    assert_eq!(call(&mut r, &["SET", &key, "v1"]), "+OK\r\n");

    c.kill(leader);
    let want = format!("not the leader of partition 0; the leader is {leader_addr}");
    // RESP, through a live node that does not lead the partition.
    assert_eq!(
        call(&mut r, &["SET", &key, "v2"]),
        format!("-NOTLEADER {want}\r\n")
    );
    assert_eq!(
        call(&mut r, &["GET", &key]),
        format!("-NOTLEADER {want}\r\n")
    );
    // gRPC, raw, through the same node.
    let rt = harness::runtime();
    let status = grpc_set(&rt, &c.specs[other].addr, &key);
    assert_eq!(
        (status.code(), reason(&status), status.message()),
        (tonic::Code::FailedPrecondition, "NOT_LEADER", want.as_str()),
        "{status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("caskade-leader")
            .and_then(|v| v.to_str().ok()),
        Some(leader_addr.as_str())
    );
}
