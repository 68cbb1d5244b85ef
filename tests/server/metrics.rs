//! Metrics and introspection (issue 12) against real servers: the
//! Prometheus endpoint's exact figures after known traffic, `caskade-cli
//! info`, the endpoint's absence when not configured, a bad
//! `metrics.listen` failing the start with one line, and in a real
//! three-node cluster the per-partition gauges matching `caskade-cli
//! cluster`.

use crate::harness;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use caskade::client::Client;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::{Server, ServerOpts, b, cli_at, cli_script, free_port, runtime};

/// `GET path` over HTTP/1.1 on `addr`: (status line, headers, body).
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.into(), headers.to_ascii_lowercase(), body.into())
}

/// Samples of a Prometheus text answer: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

/// The value of series `key`, panicking with the exposition if absent.
fn value(s: &BTreeMap<String, f64>, key: &str) -> u64 {
    match s.get(key) {
        Some(v) => *v as u64,
        None => panic!(
            "no series {key} in:\n{}",
            s.keys().cloned().collect::<Vec<_>>().join("\n")
        ),
    }
}

/// Listening TCP sockets the process `pid` holds (its fds matched against
/// /proc/net/tcp entries in state LISTEN).
fn listening_sockets(pid: i32) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

const N: usize = 20;
const M: usize = 30;

/// A standalone server (8 partitions, `fsync: always`) with the endpoint
/// on a free port, after N sets of distinct keys, M gets (each key once,
/// then the first M - N again) and one get of an empty key.
fn standalone_with_traffic(dir: &std::path::Path) -> (Server, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        dir,
        ServerOpts::default()
            .env("CASKADE_METRICS_LISTEN", &metrics)
            .env("CASKADE_STORAGE_FSYNC", "always"),
    );
    let rt = runtime();
    rt.block_on(async {
        let c = Client::for_addr(server.addr.clone()).unwrap();
        for i in 0..N {
            assert!(
                c.set(b(&format!("k{i}")), b("v"), Default::default())
                    .await
                    .unwrap()
            );
        }
        for i in (0..N).chain(0..M - N) {
            assert_eq!(c.get(b(&format!("k{i}"))).await.unwrap(), Some(b("v")));
        }
        assert!(c.get(b("")).await.is_err());
    });
    (server, metrics)
}

/// Per-partition record counts of the keys `k0..kN`.
fn per_partition() -> [u64; 8] {
    let mut counts = [0; 8];
    for i in 0..N {
        counts[caskade::cluster::partition_for(format!("k{i}").as_bytes(), 8) as usize] += 1;
    }
    counts
}

#[test]
fn endpoint_counts_requests_and_partitions_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = standalone_with_traffic(&dir.path().join("data"));
    assert_eq!(listening_sockets(server.pid()), 2, "gRPC and metrics");

    let (status, headers, body) = http_get(&metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    let s = samples(&body);
    let req = |cmd: &str, outcome: &str| {
        value(
            &s,
            &format!(
                "caskade_request_duration_seconds_count{{command=\"{cmd}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(req("set", "ok"), N as u64);
    assert_eq!(req("get", "ok"), M as u64);
    assert_eq!(req("get", "invalid_argument"), 1);
    assert_eq!(req("del", "ok"), 0, "every command has its ok series");
    assert_eq!(
        value(
            &s,
            "caskade_request_duration_seconds_bucket{command=\"set\",outcome=\"ok\",le=\"+Inf\"}"
        ),
        N as u64
    );
    assert!(!s.contains_key(
        "caskade_request_duration_seconds_count{command=\"set\",outcome=\"not_leader\"}"
    ));

    let counts = per_partition();
    let mut log_ends = 0;
    for (p, &count) in counts.iter().enumerate() {
        let at = |name: &str| {
            value(
                &s,
                &format!("caskade_partition_{name}{{partition=\"{p}\"}}"),
            )
        };
        assert_eq!(at("log_end_offset"), count, "partition {p}");
        assert_eq!(at("high_watermark"), count, "partition {p}");
        assert_eq!(at("is_leader"), 1);
        assert_eq!(at("isr_size"), 1);
        assert_eq!(at("replicas"), 1);
        assert_eq!(at("leader_epoch"), 1);
        log_ends += at("log_end_offset");
    }
    assert_eq!(log_ends, N as u64, "log end offsets sum to the writes");

    assert_eq!(value(&s, "caskade_partitions_offline"), 0);
    assert_eq!(value(&s, "caskade_partitions_under_replicated"), 0);
    assert_eq!(value(&s, "caskade_storage_keys"), N as u64);
    assert_eq!(value(&s, "caskade_storage_records_written_total"), N as u64);
    // Every written value was cached by its write: all M reads hit.
    assert_eq!(value(&s, "caskade_cache_fills_total"), N as u64);
    assert_eq!(value(&s, "caskade_cache_misses_total"), 0);
    assert_eq!(value(&s, "caskade_cache_hits_total"), M as u64);
    // fsync: always, nothing in flight: one observation per fsync.
    let fsyncs = value(&s, "caskade_storage_fsyncs_total");
    assert!(fsyncs >= 1);
    assert_eq!(
        value(&s, "caskade_storage_fsync_duration_seconds_count"),
        fsyncs
    );
    assert_eq!(value(&s, "caskade_storage_merges_total"), 0);
    assert_eq!(value(&s, "caskade_storage_merge_bytes_written_total"), 0);
    assert_eq!(value(&s, "caskade_is_controller"), 0);
    assert_eq!(
        value(
            &s,
            "caskade_node_info{node_id=\"node-1\",mode=\"standalone\"}"
        ),
        1
    );
    assert!(!s.contains_key("caskade_zk_lease_valid"), "standalone");
    assert!(
        !s.contains_key("caskade_zk_session_connected"),
        "standalone"
    );

    let (status, _, _) = http_get(&metrics, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn cli_info_prints_the_sections_with_exact_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (server, metrics) = standalone_with_traffic(&dir.path().join("data"));
    let a = server.addr.as_str();

    let (code, out, err) = cli_at(a, &["info"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        headers,
        [
            "# Server",
            "# Requests",
            "# Storage",
            "# Replication",
            "# Cluster"
        ]
    );
    let lines: HashSet<&str> = out.lines().collect();
    let counts = per_partition();
    let mut want = vec![
        "node_id:node-1".to_string(),
        "mode:standalone".into(),
        "partitions:8".into(),
        format!("metrics_listen:{metrics}"),
        "keys:20".into(),
        "records_written:20".into(),
        "cache_hits:30".into(),
        "cache_misses:0".into(),
        "cache_hit_ratio:1.000".into(),
        "cache_fills:20".into(),
        "partitions_hosted:8".into(),
        "partitions_led:8".into(),
        "controller:".into(),
        "is_controller:0".into(),
        "partitions_offline:0".into(),
        "partitions_under_replicated:0".into(),
    ];
    for (p, n) in counts.iter().enumerate() {
        want.push(format!(
            "partition_{p}:role=leader,leader=node-1,epoch=1,replicas=node-1,isr=node-1,log_end={n},hw={n}"
        ));
    }
    for w in &want {
        assert!(lines.contains(w.as_str()), "no line {w:?} in:\n{out}");
    }
    let set = out
        .lines()
        .find(|l| l.starts_with("cmd_set:"))
        .expect("cmd_set line");
    assert!(
        set.starts_with("cmd_set:calls=20,errors=0,usec_per_call="),
        "{set}"
    );
    let get = out
        .lines()
        .find(|l| l.starts_with("cmd_get:"))
        .expect("cmd_get line");
    assert!(get.starts_with("cmd_get:calls=31,errors=1,"), "{get}");

    // One section; a section that does not exist is a usage error.
    let (code, out, _) = cli_at(a, &["info", "STORAGE"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().next(), Some("# Storage"));
    assert_eq!(out.lines().filter(|l| l.starts_with("# ")).count(), 1);
    assert!(out.lines().any(|l| l == "keys:20"), "{out}");
    // The REPL has it too, with help.
    let out = cli_script(&["--addr", a], b"help info\ninfo cluster\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "info [section]\n  Show this node's figures: server, requests, storage, replication \
         (its partitions: leader, epoch, ISR, log end, HW), cluster\n\
         # Cluster\ncontroller:\nis_controller:0\npartitions_offline:0\n\
         partitions_under_replicated:0\n"
    );
    let (code, out, err) = cli_at(a, &["info", "keyspace"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err.trim_end(),
        "unknown section 'keyspace' (one of: server, requests, storage, replication, cluster)"
    );
}

#[test]
fn no_endpoint_unless_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    assert_eq!(listening_sockets(server.pid()), 1, "only the gRPC listener");
    let (code, out, _) = cli_at(&server.addr, &["info", "server"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "metrics_listen:"), "{out}");
}

#[test]
fn bad_metrics_listen_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = Server::try_start(
        &dir.path().join("a"),
        ServerOpts::default().env("CASKADE_METRICS_LISTEN", "localhost"),
    )
    .err()
    .expect("refused");
    f.assert_exits_with_line(
        "caskade-server: invalid configuration: metrics.listen must be ip:port (e.g. \
         127.0.0.1:9580) or empty for no endpoint, got \"localhost\"",
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let f = Server::try_start(
        &dir.path().join("b"),
        ServerOpts::default().env("CASKADE_METRICS_LISTEN", &addr),
    )
    .err()
    .expect("refused");
    f.assert_exits_with_line(&format!(
        "caskade-server: cannot listen on {addr} (metrics.listen): Address already in use (os error 98)"
    ));
}

/// In a real three-node cluster, each node's per-partition gauges agree
/// exactly with `caskade-cli cluster --json`: one leader per partition at
/// the epoch shown, its ISR size; after N `acks: all` writes the leaders'
/// log ends sum to N and equal their high watermarks.
#[test]
fn cluster_gauges_match_cluster_metadata() {
    let c = TestCluster::start(ClusterOpts {
        env: vec![("CASKADE_METRICS_LISTEN".into(), "127.0.0.1:0".into())],
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..N {
            client
                .set(b(&format!("k{i}")), b("v"), Default::default())
                .await
                .unwrap();
        }
    });
    // Each node's endpoint address, as its `info` shows it.
    let endpoints: Vec<String> = (0..3)
        .map(|i| {
            let info = rt.block_on(c.client_of(i, &rt).info()).unwrap();
            let server = info.sections.iter().find(|s| s.name == "server").unwrap();
            let f = server
                .fields
                .iter()
                .find(|f| f.key == "metrics_listen")
                .unwrap();
            assert!(!f.value.is_empty());
            f.value.clone()
        })
        .collect();
    let (code, out, err) = cli_at(&c.specs[0].addr, &["cluster", "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let view: serde_json::Value = serde_json::from_str(&out).unwrap();
    let scrapes: Vec<_> = endpoints
        .iter()
        .map(|e| samples(&http_get(e, "/metrics").2))
        .collect();

    let controller = view["controller"].as_str().unwrap();
    let mut log_ends = 0;
    for part in view["partitions"].as_array().unwrap() {
        let p = part["id"].as_u64().unwrap();
        let leader = part["leader"].as_str().unwrap();
        let epoch = part["epoch"].as_u64().unwrap();
        let isr = part["isr"].as_array().unwrap().len() as u64;
        assert_eq!(isr, 3, "{part}");
        for (i, s) in scrapes.iter().enumerate() {
            let at =
                |name: &str| value(s, &format!("caskade_partition_{name}{{partition=\"{p}\"}}"));
            let me = &c.specs[i].id;
            assert_eq!(at("is_leader"), u64::from(me == leader), "{me} p{p}");
            assert_eq!(at("leader_epoch"), epoch, "{me} p{p}");
            assert_eq!(at("replicas"), 3, "{me} p{p}");
            if me == leader {
                assert_eq!(at("isr_size"), isr, "{me} p{p}");
                assert_eq!(at("high_watermark"), at("log_end_offset"), "{me} p{p}");
                log_ends += at("log_end_offset");
            }
        }
    }
    assert_eq!(log_ends, N as u64);
    for (i, s) in scrapes.iter().enumerate() {
        let me = &c.specs[i].id;
        assert_eq!(
            value(s, "caskade_is_controller"),
            u64::from(me == controller)
        );
        assert_eq!(value(s, "caskade_zk_session_connected"), 1);
        assert_eq!(value(s, "caskade_zk_lease_valid"), 1);
        assert_eq!(value(s, "caskade_cluster_live_nodes"), 3);
        assert_eq!(value(s, "caskade_partitions_offline"), 0);
        assert_eq!(value(s, "caskade_partitions_under_replicated"), 0);
    }

    // ZooKeeper gone: every node reports its session's connection down
    // (within a few seconds: the client notices a dead connection by its
    // pings) and its lease lapsed (2/3 of the session timeout).
    c.zk.kill_member(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for e in &endpoints {
        loop {
            let s = samples(&http_get(e, "/metrics").2);
            if value(&s, "caskade_zk_session_connected") == 0
                && value(&s, "caskade_zk_lease_valid") == 0
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{e}: still connected 20 s after ZooKeeper died"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
