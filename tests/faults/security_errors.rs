//! Errors sent to clients name what failed, never a filesystem path
//! (issue 13): an `EIO` injected on the real write path (the
//! `bitcask::fsync` failpoint, `storage.fsync: always`) reaches a gRPC
//! client and a RESP client of an in-process server with the exact,
//! path-free text, while the server's log names the segment's path.

#[cfg(feature = "failpoints")]
mod eio {
    use std::io::Write;
    use std::net::TcpStream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use caskade::cluster::partition_for;
    use caskade::config::Config;
    use caskade::proto::kv_client::KvClient;
    use caskade::storage::Durability;

    use crate::{call, harness};

    /// What the storage layer says about the injected `EIO`.
    const EIO: &str = "Input/output error (os error 5)";

    /// The server's log, captured in memory.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A raw gRPC `Set` of `key`: the status exactly as the server sent it.
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

    /// `(code, caskade-reason, message)` of a status.
    fn parts(s: &tonic::Status) -> (tonic::Code, String, String) {
        let reason = s
            .metadata()
            .get("caskade-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (s.code(), reason, s.message().to_string())
    }

    /// A key of partition `p` of 2.
    fn key_in(p: u32) -> String {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| partition_for(k.as_bytes(), 2) == p)
            .unwrap()
    }

    #[test]
    fn storage_io_errors_reach_clients_without_paths_and_the_log_with_them() {
        // Arms a failpoint and installs this binary's only global log
        // subscriber: alone in the process (tests/faults/main.rs).
        let _gate = crate::GATE.lock();
        let log = Log::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .init();
        let _scenario = fail::FailScenario::setup();
        let rt = harness::runtime();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data-dir-xyz");
        let mut config = Config {
            data_dir: data.clone(),
            partitions: 2,
            ..Config::default()
        };
        config.storage.fsync = Durability::Always;
        let (grpc, resp, stop) = crate::serve_in_process(&rt, &config);
        let mut r = TcpStream::connect(&resp).unwrap();
        r.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let (k0, k1) = (key_in(0), key_in(1));
        assert_eq!(call(&mut r, &["SET", &k0, "v"]), "+OK\r\n");

        fail::cfg("bitcask::fsync", "return").unwrap();
        // The failed fsync itself: partition 0 through RESP, partition 1
        // through gRPC.
        let io = format!("storage I/O error: fsync failed: {EIO}");
        assert_eq!(
            call(&mut r, &["SET", &k0, "v2"]),
            format!("-ERR internal error: {io}\r\n")
        );
        assert_eq!(
            parts(&grpc_set(&rt, &grpc, &k1)),
            (tonic::Code::Internal, "INTERNAL".to_string(), io.clone())
        );
        // Every later write of both partitions: refused until a restart.
        let refused = format!(
            "writes refused: fsync failed ({EIO}); writes acknowledged since the previous fsync \
             may not be durable; reopen the engine (restart the node)"
        );
        assert_eq!(
            call(&mut r, &["SET", &k1, "v3"]),
            format!("-READONLY {refused}\r\n")
        );
        assert_eq!(
            parts(&grpc_set(&rt, &grpc, &k0)),
            (
                tonic::Code::Unavailable,
                "WRITES_REFUSED".to_string(),
                refused
            )
        );
        fail::remove("bitcask::fsync");
        stop.send_replace(true);

        // The log names the segment that failed, under the data directory.
        let log = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        let seg = data.display().to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("fsync {seg}/")) && l.contains(EIO)),
            "{log}"
        );
    }
}
