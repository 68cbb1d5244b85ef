//! `caskade-cli probe`: how long writes to one key are unavailable, as a
//! client sees it, e.g. across a leader failover.
//!
//! The probe writes one key (`--key`, or with `--partition P` the first key
//! `probe:N` that hashes to partition P) in a loop, one request at a time:
//!
//! 1. warm-up: until `--warmup` writes in a row are acknowledged (so
//!    connections are open and the leader is known);
//! 2. with `--kill-pid PID`: sends SIGKILL to PID (`kill -KILL PID`) and
//!    notes the instant just before;
//! 3. writes again and again (pausing `--retry-ms` after each failure)
//!    until one is acknowledged, and reports the time from the kill (or from
//!    the start of step 3 without `--kill-pid`) to that acknowledgement.
//!    Only writes issued after the kill count: none is in flight when the
//!    signal is sent.
//!
//! `--via forward` (default) sends every write as a plain `Set` to the
//! first `--addr`, which serves it or forwards it to the partition's
//! leader, so no client-side backoff is measured: this is the server-side
//! gap. `--via client` uses the routing client (`caskade::client::Client`:
//! metadata, direct to the leader, refresh and retry with its backoff of
//! 100, 200, 400 ms on an unreachable leader), which is what an application
//! sees.
//!
//! Both routes share the client's connection set-up (`caskade::client::
//! Client`: TLS from `tls:`/`--tls-ca`, credentials from `auth:`,
//! `CASKADE_USER`/`CASKADE_PASSWORD`, `--user`, or the login prompt on a
//! terminal, src/login.rs). A write refused for its credentials
//! (`UNAUTHENTICATED`, `PERMISSION_DENIED`) ends the probe at once with
//! that error: no failover makes it succeed.
//!
//! Output: one line for people, or one JSON object with `--json`. Exit 0
//! when an acknowledged write was measured, 1 when none came before
//! `--deadline-s` or the kill failed, 2 on bad usage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::client::{Client, SetOptions, Stub, map_status};
use caskade::cluster::partition_for;
use caskade::config::ClientConfig;
use caskade::node::Acks;
use caskade::proto;
use clap::{Parser, ValueEnum};
use serde::Serialize;

/// How the probe's writes reach the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A plain `Set` to the first address, which forwards it.
    Forward,
    /// The routing client, with its metadata refreshes and retries.
    Client,
}

/// Flags of `caskade-cli probe`.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli probe",
    about = "Write one key in a loop; with --kill-pid, SIGKILL a process and time the first write acknowledged after it"
)]
pub struct ProbeArgs {
    /// The key to write.
    #[arg(long, conflicts_with = "partition")]
    pub key: Option<String>,
    /// Write the first key `probe:N` of this partition instead of --key.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Process to SIGKILL after the warm-up (e.g. the partition's leader).
    #[arg(long, value_name = "PID")]
    pub kill_pid: Option<u32>,
    /// Write acknowledgement: leader | all.
    #[arg(long, value_parser = crate::parse_acks, default_value = "all")]
    pub acks: Acks,
    /// How the writes reach the leader.
    #[arg(long, value_enum, default_value_t = Via::Forward)]
    pub via: Via,
    /// Acknowledged writes in a row before the kill.
    #[arg(long, default_value_t = 10)]
    pub warmup: u32,
    /// Pause after a failed write, in ms.
    #[arg(long, default_value_t = 1)]
    pub retry_ms: u64,
    /// Give up after this many seconds without an acknowledged write
    /// (per phase: warm-up, then after the kill).
    #[arg(long, default_value_t = 30)]
    pub deadline_s: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The result of a probe, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The key written.
    pub key: String,
    /// Its partition, when `--partition` chose it.
    pub partition: Option<u32>,
    /// How writes were sent.
    pub via: Via,
    /// Acknowledgement asked.
    pub acks: Acks,
    /// The process killed, if any.
    pub killed_pid: Option<u32>,
    /// Wall time of the `kill` command, ms (included in `unavailable_ms`).
    pub kill_ms: f64,
    /// From just before the kill (or the start) to the first acknowledged
    /// write, ms.
    pub unavailable_ms: f64,
    /// Latency of that first acknowledged write, ms.
    pub first_ok_latency_ms: f64,
    /// Writes that failed before it.
    pub failed_writes: u64,
    /// Failed writes by error reason.
    pub errors: BTreeMap<String, u64>,
    /// The first and the last failure, if any.
    pub first_error: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the last failed write was issued, ms after the kill.
    pub last_error_at_ms: Option<f64>,
}

/// The first key `probe:N` (N = 0, 1, ...) in `partition` of `count`.
pub fn key_in_partition(partition: u32, count: u32) -> Option<String> {
    if partition >= count {
        return None;
    }
    // Each try hits `partition` with probability 1/count: bound generously.
    (0..u64::from(count) * 1000)
        .map(|n| format!("probe:{n}"))
        .find(|k| partition_for(k.as_bytes(), count) == partition)
}

/// Runs the probe; returns the exit code.
pub fn run(runtime: &tokio::runtime::Runtime, config: &ClientConfig, args: &ProbeArgs) -> i32 {
    if args.key.is_none() && args.partition.is_none() {
        eprintln!("caskade-cli probe: give --key KEY or --partition P");
        return 2;
    }
    match runtime.block_on(probe(config, args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("caskade-cli probe: cannot encode the report: {e}");
                        return 1;
                    }
                }
            } else {
                print_text(&report);
            }
            0
        }
        Err((code, msg)) => {
            eprintln!("(error) {msg}");
            code
        }
    }
}

fn print_text(r: &ProbeReport) {
    let what = match r.killed_pid {
        Some(pid) => format!("SIGKILL of pid {pid}"),
        None => "start".to_string(),
    };
    println!(
        "key {} ({}): first acknowledged write {:.1} ms after the {what}; {} failed writes before it",
        r.key,
        r.partition.map_or_else(
            || "partition not asked".to_string(),
            |p| format!("partition {p}")
        ),
        r.unavailable_ms,
        r.failed_writes,
    );
    for (reason, n) in &r.errors {
        println!("  {reason}: {n}");
    }
}

/// One way of sending a write.
enum Writer {
    Forward {
        /// The first address.
        addr: String,
        /// Its stub, with the client's TLS and credentials (boxed: a
        /// stub is much larger than the other variant).
        kv: Box<Stub>,
        /// The request timeout, for error messages.
        timeout: Duration,
    },
    /// The routing client.
    Client(Box<Client>),
}

impl Writer {
    async fn set(&self, key: &Bytes, value: Bytes, acks: Acks) -> caskade::Result<()> {
        match self {
            Writer::Forward { addr, kv, timeout } => {
                let request = proto::SetRequest {
                    key: key.clone(),
                    value,
                    ttl_ms: None,
                    condition: proto::Condition::Always.into(),
                    acks: match acks {
                        Acks::Leader => proto::Acks::Leader,
                        Acks::All => proto::Acks::All,
                    }
                    .into(),
                };
                kv.clone()
                    .set(request)
                    .await
                    .map(drop)
                    .map_err(|s| map_status(addr, *timeout, s))
            }
            Writer::Client(c) => {
                let opts = SetOptions {
                    acks: Some(acks),
                    ..SetOptions::default()
                };
                c.set(key.clone(), value, opts).await.map(drop)
            }
        }
    }
}

/// The probe itself; errors carry their exit code.
pub async fn probe(config: &ClientConfig, args: &ProbeArgs) -> Result<ProbeReport, (i32, String)> {
    let fail = |e: caskade::Error| (1, e.to_string());
    let mut config = config.clone();
    let mut client = Client::new(&config).map_err(|e| (2, e.to_string()))?;
    // Log in first when the server asks (a prompt on a terminal); any
    // other failure is left to the warm-up, which waits for the server.
    match crate::login::with_login(&mut client, &mut config, |c| async move { c.ping().await })
        .await
    {
        Err(e) if refused_login(&e) => return Err(fail(e)),
        _ => {}
    }
    let key = match (&args.key, args.partition) {
        (Some(k), _) => k.clone(),
        (None, Some(p)) => {
            let count = client.metadata().await.map_err(fail)?.partition_count;
            key_in_partition(p, count).ok_or_else(|| {
                (
                    2,
                    format!("no partition {p}: the cluster has {count} partitions"),
                )
            })?
        }
        (None, None) => return Err((2, "give --key KEY or --partition P".into())),
    };
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let writer = match args.via {
        Via::Client => Writer::Client(Box::new(client)),
        Via::Forward => Writer::Forward {
            addr: client.addr().to_string(),
            kv: Box::new(client.seed_stub()),
            timeout,
        },
    };
    let key_bytes = Bytes::from(key.clone());
    let deadline = Duration::from_secs(args.deadline_s.max(1));
    let retry = Duration::from_millis(args.retry_ms);
    let mut n: u64 = 0;
    let mut value = || {
        n += 1;
        Bytes::from(format!("probe-{n}"))
    };

    // 1. Warm-up.
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < args.warmup {
        match writer.set(&key_bytes, value(), args.acks).await {
            Ok(()) => in_a_row += 1,
            Err(e) if refused_login(&e) => return Err(fail(e)),
            Err(e) => {
                in_a_row = 0;
                if started.elapsed() > deadline {
                    return Err((
                        1,
                        format!(
                            "warm-up: no {} writes in a row within {deadline:?}; last: {e}",
                            args.warmup
                        ),
                    ));
                }
                tokio::time::sleep(retry).await;
            }
        }
    }

    // 2. The kill.
    let t0 = Instant::now();
    if let Some(pid) = args.kill_pid {
        let status = tokio::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()
            .await
            .map_err(|e| (1, format!("cannot run kill: {e}")))?;
        if !status.success() {
            return Err((1, format!("kill -KILL {pid} failed ({status})")));
        }
    }
    let kill_ms = ms(t0.elapsed());

    // 3. Until a write is acknowledged.
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut failed, mut first_error, mut last_error, mut last_error_at) = (0, None, None, None);
    loop {
        let sent = Instant::now();
        match writer.set(&key_bytes, value(), args.acks).await {
            Ok(()) => {
                let now = Instant::now();
                return Ok(ProbeReport {
                    key,
                    partition: args.partition,
                    via: args.via,
                    acks: args.acks,
                    killed_pid: args.kill_pid,
                    kill_ms,
                    unavailable_ms: ms(now - t0),
                    first_ok_latency_ms: ms(now - sent),
                    failed_writes: failed,
                    errors,
                    first_error,
                    last_error,
                    last_error_at_ms: last_error_at,
                });
            }
            Err(e) if refused_login(&e) => return Err(fail(e)),
            Err(e) => {
                failed += 1;
                *errors.entry(e.reason().to_string()).or_default() += 1;
                let text = e.to_string();
                if first_error.is_none() {
                    first_error = Some(text.clone());
                }
                last_error = Some(text);
                last_error_at = Some(ms(sent - t0));
                if t0.elapsed() > deadline {
                    return Err((
                        1,
                        format!(
                            "no write acknowledged within {deadline:?} ({failed} failed); last: {}",
                            last_error.unwrap_or_default()
                        ),
                    ));
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Whether `e` refuses the credentials: no retry makes the write succeed.
fn refused_login(e: &caskade::Error) -> bool {
    matches!(
        e,
        caskade::Error::Unauthenticated(_) | caskade::Error::PermissionDenied(_)
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use caskade::config::{Config, EngineKind};
    use caskade::node::Node;
    use caskade::storage::SystemClock;

    use super::*;

    #[test]
    fn keys_land_in_their_partition() {
        for count in [1, 3, 8, 64] {
            for p in 0..count {
                let k = key_in_partition(p, count).unwrap();
                assert!(k.starts_with("probe:"), "{k}");
                assert_eq!(partition_for(k.as_bytes(), count), p, "{k}");
                // Stable: the same key every time.
                assert_eq!(key_in_partition(p, count).unwrap(), k);
            }
            assert_eq!(key_in_partition(count, count), None);
        }
        assert_eq!(key_in_partition(0, 1).unwrap(), "probe:0");
    }

    #[test]
    fn flags() {
        let a = ProbeArgs::try_parse_from(["probe", "--partition", "3"]).unwrap();
        assert_eq!(
            (a.partition, a.acks, a.via, a.warmup, a.retry_ms, a.kill_pid),
            (Some(3), Acks::All, Via::Forward, 10, 1, None)
        );
        let a = ProbeArgs::try_parse_from([
            "probe",
            "--key",
            "k",
            "--via",
            "client",
            "--acks",
            "leader",
            "--kill-pid",
            "42",
        ])
        .unwrap();
        assert_eq!(
            (a.key.as_deref(), a.acks, a.via, a.kill_pid),
            (Some("k"), Acks::Leader, Via::Client, Some(42))
        );
        assert!(ProbeArgs::try_parse_from(["probe", "--key", "k", "--partition", "1"]).is_err());
    }

    /// Against an in-process standalone node (which never fails over), the
    /// probe kills the given process and its first write after the kill
    /// is acknowledged at once, by both routes.
    #[test]
    fn kills_the_process_and_times_the_next_ack() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async {
            let config = Config {
                data_dir: dir.path().join("data"),
                engine: EngineKind::Memory,
                ..Config::default()
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let node = Arc::new(
                Node::open_standalone(&config, addr.clone(), Arc::new(SystemClock)).unwrap(),
            );
            let metrics = caskade::server::metrics::Metrics::new(node.clone(), None);
            tokio::spawn(async move {
                let never = std::future::pending();
                caskade::server::run(listener, node, &config, None, metrics, never).await
            });
            addr
        });
        let config = ClientConfig {
            addrs: vec![addr],
            ..ClientConfig::default()
        };
        for via in [Via::Forward, Via::Client] {
            let mut victim = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap();
            let args = ProbeArgs {
                key: None,
                partition: Some(5),
                kill_pid: Some(victim.id()),
                acks: Acks::All,
                via,
                warmup: 3,
                retry_ms: 1,
                deadline_s: 10,
                json: true,
            };
            let r = runtime.block_on(probe(&config, &args)).unwrap();
            let status = victim.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9)
            );
            assert_eq!(r.partition, Some(5));
            assert_eq!(partition_for(r.key.as_bytes(), 8), 5);
            assert_eq!(
                (r.failed_writes, r.errors.len(), r.killed_pid),
                (0, 0, Some(victim.id()))
            );
            assert!(
                r.unavailable_ms >= r.kill_ms && r.unavailable_ms < 5000.0,
                "{r:?}"
            );
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(
                json["via"],
                serde_json::json!(format!("{via:?}").to_lowercase())
            );
        }
        // Nothing to write to: a clear failure within the deadline.
        let dead = ClientConfig {
            addrs: vec![format!("127.0.0.1:{}", {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            })],
            timeout_ms: 200,
            ..ClientConfig::default()
        };
        let args = ProbeArgs::try_parse_from(["probe", "--key", "k", "--deadline-s", "1"]).unwrap();
        let (code, msg) = runtime.block_on(probe(&dead, &args)).unwrap_err();
        assert_eq!(code, 1);
        assert!(msg.starts_with("warm-up: no 10 writes in a row"), "{msg}");
    }
}
