//! Listener limits of a real `caskade-server` (docs/SECURITY.md, "Listener
//! limits"): idle and half-open connections cannot lock clients out, a
//! silent connection is closed after the handshake timeout and an idle one
//! after the idle timeout, one address cannot hold more than its cap, a
//! request naming too many keys is refused, and a huge replication
//! `FetchRequest` is refused before it costs memory.

use crate::harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::Error;
use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::proto::replication as pb;
use caskade::proto::replication::replication_client::ReplicationClient;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::{Server, ServerOpts, bounded, free_port, runtime};

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame (length 0, type 4, no flags, stream 0).
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A client of `addr` whose requests give up after `timeout_ms`.
fn client(addr: &str, timeout_ms: u64) -> Client {
    Client::new(&ClientConfig {
        addrs: vec![addr.to_string()],
        timeout_ms,
        connect_timeout_ms: timeout_ms,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// How long until the server closes `conn` (EOF or reset), reading and
/// dropping whatever it sends; `None` if it is still open after `limit`.
fn time_to_close(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if start.elapsed() >= limit {
                    return None;
                }
            }
            Err(_) => return Some(start.elapsed()), // reset
        }
    }
}

/// Whether `conn` is still open: no EOF, no reset, within 50 ms.
fn still_open(conn: &mut TcpStream) -> bool {
    time_to_close(conn, Duration::from_millis(50)).is_none()
}

/// 2,000 idle TCP connections (more than `server.max_connections`, 1024)
/// do not keep a client out: it is served within 2 s. Before the fix the
/// connection slot was taken before `accept`, so the 1,024 idle sockets
/// held every slot and the client's request timed out.
#[test]
fn idle_connections_do_not_lock_out_a_client() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        limit >= 4096,
        "open files limit {limit} too low for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_ENGINE", "memory")
            .env("CASKADE_LIMITS_MAX_CONNECTIONS_PER_IP", "0"),
    );
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(bounded(async {
        let c = client(&server.addr, 2000);
        c.ping().await.unwrap();
    }));
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(idle);
}

/// A connection that never sends the HTTP/2 preface is closed once
/// `limits.handshake_timeout_ms` (500) is up; one that sent it and then no
/// request is closed after `limits.idle_timeout_ms` (800). Before the fix
/// both stayed open for good.
#[test]
fn half_open_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_ENGINE", "memory")
            .env("CASKADE_LIMITS_HANDSHAKE_TIMEOUT_MS", "500")
            .env("CASKADE_LIMITS_IDLE_TIMEOUT_MS", "800"),
    );
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    idle.write_all(PREFACE).unwrap();
    idle.write_all(&EMPTY_SETTINGS).unwrap();
    let closed = time_to_close(&mut silent, Duration::from_secs(5))
        .expect("a silent connection stayed open for 5 s");
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    let closed = time_to_close(&mut idle, Duration::from_secs(5))
        .expect("an idle HTTP/2 connection stayed open for 5 s");
    // Measured from its accept, about as long ago as the silent one's.
    assert!(
        closed < Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    // A client with requests in progress is not idle: 10 pings 200 ms apart
    // (2 s, past the idle timeout) on one connection all succeed.
    let rt = runtime();
    rt.block_on(bounded(async {
        let c = client(&server.addr, 2000);
        for _ in 0..10 {
            c.ping().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }));
}

/// With `limits.max_connections_per_ip: 3`, a fourth connection from
/// 127.0.0.1 is closed at once while the three stay open; closing one
/// lets the next in. The same cap holds on the RESP listener, with an
/// `-ERR` line. Before the fix there was no per-address cap.
#[test]
fn per_address_cap_closes_the_newcomer() {
    let dir = tempfile::tempdir().unwrap();
    let resp = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_ENGINE", "memory")
            .env("CASKADE_RESP_LISTEN", &resp)
            .env("CASKADE_LIMITS_MAX_CONNECTIONS_PER_IP", "3"),
    );
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    let mut fourth = TcpStream::connect(&server.addr).unwrap();
    let closed = time_to_close(&mut fourth, Duration::from_secs(2))
        .expect("the fourth connection was not closed");
    assert!(closed < Duration::from_secs(1), "{closed:?}");
    assert!(held.iter_mut().all(still_open), "the first three stay");
    let rt = runtime();
    rt.block_on(bounded(async {
        let err = client(&server.addr, 1000).ping().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unreachable { .. } | Error::Unavailable(_) | Error::Timeout(_)
            ),
            "{err:?}"
        );
    }));
    held.pop();
    // The server frees the address's slot when its connection task sees
    // the close, some time after it: retried until then (5 s at most).
    rt.block_on(bounded(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match client(&server.addr, 2000).ping().await {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("not admitted yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("a slot was freed 5 s ago and still: {e:?}"),
            }
        }
    }));

    let mut r: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&resp).unwrap()).collect();
    for c in &mut r {
        c.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+PONG\r\n");
    }
    let mut over = TcpStream::connect(&resp).unwrap();
    let mut answer = String::new();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    over.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "-ERR max number of clients per address reached\r\n");
}

/// `limits.max_keys_per_request: 10`: an `MGET` of 11 keys is refused with
/// `INVALID_ARGUMENT` naming the setting; 10 keys are served. Before the fix
/// any number of keys was taken.
#[test]
fn too_many_keys_in_one_request_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_ENGINE", "memory")
            .env("CASKADE_LIMITS_MAX_KEYS_PER_REQUEST", "10"),
    );
    let rt = runtime();
    rt.block_on(bounded(async {
        let c = client(&server.addr, 5000);
        let keys = |n: usize| (0..n).map(|i| Bytes::from(format!("k{i}"))).collect();
        assert_eq!(c.mget(keys(10)).await.unwrap(), vec![None; 10]);
        let err = c.mget(keys(11)).await.unwrap_err();
        match err {
            Error::InvalidInput(m) => assert_eq!(
                m,
                "too many keys in one request: 11, at most 10 (limits.max_keys_per_request)"
            ),
            other => panic!("{other:?}"),
        }
    }));
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A ~4 MiB `FetchRequest` listing partition 0 690,000 times, and one
/// listing 400,000 distinct partitions, are refused with `INVALID_ARGUMENT`
/// ("at most 65536"), a request listing a partition twice with "lists
/// partition 0 twice"; the leader's peak resident memory grows by less
/// than 48 MiB over all three. Before the fix all three were answered.
#[test]
fn huge_fetch_request_is_refused_without_memory_growth() {
    let cluster = TestCluster::start(ClusterOpts {
        nodes: 1,
        partitions: 2,
        replication_factor: 1,
        min_insync: 1,
        ..ClusterOpts::default()
    });
    let pid = cluster.pid(0).unwrap();
    let repl = cluster.specs[0].repl_addr.clone();
    let rt = runtime();
    let before = peak_rss_kib(pid);
    let fetch = |partitions: Vec<pb::PartitionFetch>| {
        let repl = repl.clone();
        async move {
            let req = pb::FetchRequest {
                follower_id: "node-9".into(),
                max_bytes: 1 << 20,
                max_wait_ms: 100,
                partitions,
                ..Default::default()
            };
            let len = prost::Message::encoded_len(&req);
            assert!(len < 4 << 20, "{len} bytes");
            let mut c = ReplicationClient::connect(format!("http://{repl}"))
                .await
                .unwrap()
                .max_encoding_message_size(usize::MAX)
                .max_decoding_message_size(usize::MAX);
            let mut answers = c
                .fetch(tokio_stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            answers.message().await
        }
    };
    rt.block_on(bounded(async {
        let same = (0..690_000)
            .map(|_| pb::PartitionFetch {
                partition: 0,
                offset: 1,
                leader_epoch: 1,
            })
            .collect();
        let status = fetch(same).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "fetch request lists 690000 partitions and forgets 0, at most 65536 each \
             (limits.fetch_max_partitions)"
        );
        let distinct = (1..=400_000)
            .map(|p| pb::PartitionFetch {
                partition: p,
                offset: 1,
                leader_epoch: 1,
            })
            .collect();
        let status = fetch(distinct).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "fetch request lists 400000 partitions and forgets 0, at most 65536 each \
             (limits.fetch_max_partitions)"
        );
    }));
    // Under the cap, a partition listed twice is refused as well.
    rt.block_on(bounded(async {
        let twice = vec![
            pb::PartitionFetch {
                partition: 0,
                offset: 1,
                leader_epoch: 1,
            };
            2
        ];
        let status = fetch(twice).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "fetch request lists partition 0 twice");
    }));
    let grown = peak_rss_kib(pid).saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(grown < 48 << 10, "peak RSS grew by {grown} KiB");
    // The node still serves.
    rt.block_on(bounded(async {
        cluster.client(&rt).ping().await.unwrap();
    }));
}

/// The HTTP/2 frames in `bytes`, as (type, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        out.push((bytes[3], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

/// With `limits.http2_max_local_error_reset_streams: 10`, a client whose
/// requests the server must reset for its own errors (HEADERS without
/// `:method`) gets at most 10 RST_STREAM, then GOAWAY `ENHANCE_YOUR_CALM`
/// and the connection is closed. Before the fix the limit was off (tonic hands
/// hyper `None`, RUSTSEC-2024-0003): 30 resets, no GOAWAY, still open.
#[test]
fn local_error_reset_streams_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_ENGINE", "memory")
            .env("CASKADE_LIMITS_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS", "10"),
    );
    let mut conn = TcpStream::connect(&server.addr).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&EMPTY_SETTINGS);
    for i in 0..30u32 {
        // HEADERS, END_STREAM | END_HEADERS, block `:scheme http`, `:path /`.
        out.extend_from_slice(&[0, 0, 2, 1, 0x5]);
        out.extend_from_slice(&(2 * i + 1).to_be_bytes());
        out.extend_from_slice(&[0x86, 0x84]);
    }
    conn.write_all(&out).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(3) {
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let frames = frames(&got);
    let resets = frames.iter().filter(|f| f.0 == 3).count();
    let goaway = frames
        .iter()
        .find(|f| f.0 == 7)
        .map(|f| u32::from_be_bytes([f.2[4], f.2[5], f.2[6], f.2[7]]));
    assert_eq!((goaway, closed), (Some(0xb), true), "{resets} resets");
    assert!(resets <= 10, "{resets} resets");
}
