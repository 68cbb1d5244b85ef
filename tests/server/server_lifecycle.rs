//! A real `caskade-server` process across its lifetime: persistence and TTL
//! across restarts, SIGKILL under a write load with `fsync: always` (every
//! acknowledged write survives), SIGTERM under load (exit 0, nothing
//! acknowledged lost even with `fsync: never`), and startup failures that
//! must be one clear line: a second server on the same data directory, an
//! unwritable data directory, a bad config file.

use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caskade::client::{Client, KeyTtl, SetOptions};
use caskade::config::ClientConfig;
use harness::{Server, ServerOpts, b, bounded, free_port, runtime};
use parking_lot::Mutex;

#[test]
fn data_and_ttl_persist_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `never`: durability across a clean stop comes from the shutdown flush.
    let opts = ServerOpts::default().env("CASKADE_STORAGE_FSYNC", "never");
    let mut server = Server::start(&data, opts.clone());
    let rt = runtime();
    let short_deadline = rt.block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        for i in 0..100 {
            c.set(format!("k{i}"), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        assert_eq!(c.del(vec![b("k0"), b("k1")]).await.unwrap(), 2);
        c.set("k2", "overwritten", SetOptions::default())
            .await
            .unwrap();
        let long = SetOptions {
            ttl_ms: Some(3_600_000),
            ..SetOptions::default()
        };
        c.set("long", "lived", long).await.unwrap();
        assert!(c.expire("k3", 3_600_000).await.unwrap());
        let short = SetOptions {
            ttl_ms: Some(1500),
            ..SetOptions::default()
        };
        c.set("short", "lived", short).await.unwrap();
        Instant::now() + Duration::from_millis(1500)
    }));
    assert_eq!(server.stop().code(), Some(0), "log: {}", server.log());
    assert!(server.log().contains("storage flushed; shutdown complete"));

    let server = Server::start(&data, opts);
    rt.block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        assert_eq!(c.get("k0").await.unwrap(), None);
        assert_eq!(c.get("k1").await.unwrap(), None);
        assert_eq!(c.get("k2").await.unwrap(), Some(b("overwritten")));
        for i in 4..100 {
            assert_eq!(
                c.get(format!("k{i}")).await.unwrap(),
                Some(b(&format!("v{i}")))
            );
            assert_eq!(c.ttl(format!("k{i}")).await.unwrap(), KeyTtl::Persistent);
        }
        for key in ["long", "k3"] {
            match c.ttl(key).await.unwrap() {
                KeyTtl::Ms(ms) => assert!((3_500_000..=3_600_000).contains(&ms), "{key}: {ms}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        assert_eq!(c.get("long").await.unwrap(), Some(b("lived")));
        // The short key expires at its absolute instant, restart or not.
        let now = Instant::now();
        if now < short_deadline {
            tokio::time::sleep(short_deadline - now + Duration::from_millis(100)).await;
        }
        assert_eq!(c.get("short").await.unwrap(), None);
        assert_eq!(c.ttl("short").await.unwrap(), KeyTtl::Missing);
        assert_eq!(
            c.exists(vec![b("long"), b("short"), b("k50")])
                .await
                .unwrap(),
            2
        );
    }));
}

/// Writers hammer unique keys; the server is SIGKILLed (or SIGTERMed) in
/// the middle. Returns the acknowledged key -> value pairs.
fn write_until_signal(
    server: &mut Server,
    signal: i32,
    writers: usize,
) -> BTreeMap<String, String> {
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    let config = ClientConfig {
        addrs: vec![server.addr.clone()],
        timeout_ms: 5000,
        ..ClientConfig::default()
    };
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (acked, stop, config) = (acked.clone(), stop.clone(), config.clone());
            rt.spawn(async move {
                let client = Client::new(&config).unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                    match client
                        .set(key.clone(), value.clone(), SetOptions::default())
                        .await
                    {
                        Ok(true) => {
                            acked.lock().insert(key, value);
                        }
                        Ok(false) => panic!("unconditional set not written"),
                        Err(_) => break, // the server is gone
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let the load run, then signal while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.lock().len() < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal_and_wait(signal);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(bounded(async {
        for t in tasks {
            t.await.unwrap();
        }
    }));
    acked.lock().clone()
}

/// Asserts every pair is readable with its value on a fresh server.
fn assert_all_present(data: &std::path::Path, opts: ServerOpts, acked: &BTreeMap<String, String>) {
    let server = Server::start(data, opts);
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&server.addr).unwrap();
        let mut lost = Vec::new();
        for (k, v) in acked {
            if c.get(k.clone()).await.unwrap().as_deref() != Some(v.as_bytes()) {
                lost.push(k.clone());
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(10)]
        );
    }));
}

#[test]
fn sigkill_under_load_with_fsync_always_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = ServerOpts::default().env("CASKADE_STORAGE_FSYNC", "always");
    let mut server = Server::start(&data, opts.clone());
    let acked = write_until_signal(&mut server, libc::SIGKILL, 16);
    assert!(
        acked.len() >= 100,
        "only {} writes acknowledged",
        acked.len()
    );
    eprintln!(
        "SIGKILL test: {} acknowledged writes, all checked",
        acked.len()
    );
    assert_all_present(&data, opts, &acked);
}

#[test]
fn sigterm_under_load_exits_zero_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let opts = ServerOpts::default().env("CASKADE_STORAGE_FSYNC", "never");
    let mut server = Server::start(&data, opts.clone());
    let acked = Arc::new(write_until_signal(&mut server, libc::SIGTERM, 8));
    assert!(
        acked.len() >= 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let log = server.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("storage flushed; shutdown complete"), "{log}");
    assert_all_present(&data, opts, &acked);
}

#[test]
fn sigterm_exit_code_is_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), ServerOpts::default());
    assert_eq!(server.stop().code(), Some(0));
    let mut server = Server::start(&dir.path().join("data"), ServerOpts::default());
    assert_eq!(server.signal_and_wait(libc::SIGINT).code(), Some(0));
    assert!(server.log().contains("SIGINT received"));
}

#[test]
fn second_server_on_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, ServerOpts::default());
    let failure = Server::try_start(&data, ServerOpts::default())
        .err()
        .unwrap();
    failure.assert_exits_with_line(&format!(
            "caskade-server: data directory {} is in use by another caskade-server (lock on {}/LOCK is held)",
            data.display(),
            data.display()
        ));
    // The first one is unaffected.
    runtime().block_on(bounded(async {
        let c = Client::for_addr(&first.addr).unwrap();
        c.set("still", "here", SetOptions::default()).await.unwrap();
        assert_eq!(c.get("still").await.unwrap(), Some(b("here")));
    }));
}

#[test]
fn unwritable_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory below a regular file cannot be created, even by root.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let data = file.join("data");
    let failure = Server::try_start(&data, ServerOpts::default())
        .err()
        .unwrap();
    failure.assert_exits_with_line(&format!(
        "caskade-server: cannot create data directory {}: Not a directory (os error 20)",
        data.display()
    ));

    // A read-only directory: only meaningful when not running as root
    // (root ignores permission bits).
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = std::fs::write(ro.join("probe"), "x");
    if probe.is_err() {
        let failure = Server::try_start(&ro, ServerOpts::default()).err().unwrap();
        failure.assert_exits_with_line(&format!(
            "caskade-server: cannot open {}/LOCK: Permission denied (os error 13)",
            ro.display()
        ));
    }
    let _ = std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755));
}

#[test]
fn bad_configuration_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.yaml");
    std::fs::write(&conf, "listen: 127.0.0.1:0\nstorage:\n  fsynk: always\n").unwrap();
    let failure = Server::try_start(
        &dir.path().join("data"),
        ServerOpts {
            args: vec!["--config".into(), conf.display().to_string()],
            ..ServerOpts::default()
        },
    )
    .err()
    .unwrap();
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1));
    let line = failure.stderr.lines().last().unwrap().to_string();
    assert!(
        line.starts_with(&format!(
            "caskade-server: config file {}: storage: unknown field `fsynk`",
            conf.display()
        )),
        "{line}"
    );
    let failure = Server::try_start(
        &dir.path().join("data"),
        ServerOpts::default().env("CASKADE_PARTITIONS", "lots"),
    )
    .err()
    .unwrap();
    assert!(
        failure
            .stderr
            .starts_with("caskade-server: environment variable CASKADE_PARTITIONS=\"lots\": "),
        "{}",
        failure.stderr
    );
}

/// A cluster node whose ZooKeeper cannot be reached exits with one line
/// naming the connect string, within its session timeout.
#[test]
fn cluster_node_with_unreachable_zookeeper_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let started = std::time::Instant::now();
    let failure = Server::try_start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_CLUSTER_ZK_CONNECT", &dead)
            .env("CASKADE_CLUSTER_SESSION_TIMEOUT_MS", "1000")
            .env("CASKADE_CLUSTER_REPLICATION_LISTEN", "127.0.0.1:0"),
    )
    .err()
    .unwrap();
    failure.assert_exits_with_line(&format!(
        "caskade-server: cannot reach ZooKeeper at {dead}: timeout (within 1000 ms)"
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// The harness hands out each port once per process, so two tests that
/// start servers at once never get the same one. It used to pick a new
/// random start per call: in CI a node of one test then failed with
/// "cannot listen on 127.0.0.1:11861 (cluster.replication_listen): Address
/// already in use" (session 13). With a start per call, 4,000 ports drawn
/// from the ~22,000 below the ephemeral range repeat one almost surely.
#[test]
fn free_ports_never_hands_out_a_port_twice() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        for p in harness::free_ports(2) {
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }
}
