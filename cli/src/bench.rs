//! `caskade-cli bench`: a closed-loop load generator in the spirit of
//! redis-benchmark.
//!
//! `--clients` tasks each keep exactly one request in flight; they share
//! `--connections` HTTP/2 connections (default: one each, as
//! redis-benchmark opens one socket per client). Requests are taken from a
//! shared counter until `--requests` have been issued. Keys are
//! `key:NNNNNNNNNNNN` (16 bytes) drawn uniformly from `--keyspace`; values
//! are `--value-size` bytes. Latency is measured per request, from just
//! before the call to the reply, into HDR histograms (microseconds, 3
//! significant digits) merged at the end.
//!
//! Connections, TLS and credentials are the client's (`caskade::client::
//! Client` built from the CLI's settings: `tls:`/`--tls-ca`, `auth:`,
//! `CASKADE_USER`/`CASKADE_PASSWORD`, `--user`); a server asking for a
//! login prompts for it on a terminal, as the REPL does.
//!
//! Output: throughput (completed requests / wall time) and p50/p99/p999/max
//! latency, as text or, with `--json`, one JSON object. The exit code is 1
//! if any request failed (the first error is printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::client::{Client, SetOptions};
use caskade::config::ClientConfig;
use caskade::node::Acks;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Serialize;

/// The operation a benchmark issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `Ping`: the RPC stack alone, no storage.
    Ping,
    /// `Set` of a random key.
    Set,
    /// `Get` of a random key.
    Get,
    /// Half `Get`, half `Set`, chosen at random per request.
    Mixed,
}

/// Flags of `caskade-cli bench`.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli bench",
    about = "Load generator (like redis-benchmark)"
)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Total requests.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub requests: u64,
    /// Value size in bytes (set, mixed).
    #[arg(long, short = 'd', default_value_t = 100)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// Operation.
    #[arg(long, value_enum, default_value_t = Op::Set)]
    pub op: Op,
    /// Write acknowledgement: leader | all (default: the client config's).
    #[arg(long, value_parser = crate::parse_acks)]
    pub acks: Option<Acks>,
    /// HTTP/2 connections shared by the clients (default: one per client).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Seed of the key generator, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text, and no progress bar.
    #[arg(long)]
    pub json: bool,
}

/// The result of a run, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The operation.
    pub op: Op,
    /// Concurrent clients.
    pub clients: usize,
    /// Connections used.
    pub connections: usize,
    /// Requests issued.
    pub requests: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Distinct keys.
    pub keyspace: u64,
    /// Acknowledgement asked for writes.
    pub acks: Acks,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// Completed requests per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile latency, microseconds.
    pub p999_us: u64,
    /// Largest latency, microseconds.
    pub max_us: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

/// Runs the benchmark; returns the exit code.
pub fn run(runtime: &tokio::runtime::Runtime, config: &ClientConfig, args: &BenchArgs) -> i32 {
    if args.clients == 0 || args.keyspace == 0 || args.connections == Some(0) {
        eprintln!("caskade-cli bench: --clients, --keyspace and --connections must be at least 1");
        return 2;
    }
    let report = match runtime.block_on(bench(config, args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("(error) {e}");
            return 1;
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("caskade-cli bench: cannot encode the report: {e}");
                return 1;
            }
        }
    } else {
        print_text(&report);
    }
    if let Some(e) = &report.first_error {
        eprintln!(
            "(error) {} of {} requests failed; first: {e}",
            report.errors, report.requests
        );
        return 1;
    }
    0
}

/// Prints the report for people.
fn print_text(r: &Report) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{}: {} requests, {} clients, {} connections, {} B values, keyspace {}, acks {}",
        format!("{:?}", r.op).to_lowercase(),
        r.requests,
        r.clients,
        r.connections,
        r.value_size,
        r.keyspace,
        format!("{:?}", r.acks).to_lowercase()
    );
    println!(
        "  throughput  {:.0} ops/s  ({:.2} s, {} errors)",
        r.ops_per_sec, r.elapsed_s, r.errors
    );
    println!(
        "  latency     p50 {:.3} ms  p99 {:.3} ms  p999 {:.3} ms  max {:.3} ms",
        ms(r.p50_us),
        ms(r.p99_us),
        ms(r.p999_us),
        ms(r.max_us)
    );
}

/// Per-run shared state.
struct Shared {
    /// Next request index to issue.
    next: AtomicU64,
    /// Requests completed (ok or not), for the progress bar.
    done: AtomicU64,
    /// Failed requests.
    errors: AtomicU64,
    /// The first failure.
    first_error: Mutex<Option<String>>,
}

async fn bench(config: &ClientConfig, args: &BenchArgs) -> caskade::Result<Report> {
    let connections = args.connections.unwrap_or(args.clients).min(args.clients);
    // Fail fast, with one clear line, when the server is not there or
    // refuses the credentials; log in first when it asks and stdin is a
    // terminal (src/login.rs, as the REPL).
    let mut config = config.clone();
    let mut first = Client::new(&config)?;
    crate::login::with_login(&mut first, &mut config, |c| async move { c.ping().await }).await?;
    let mut clients = vec![first];
    for _ in 1..connections {
        clients.push(Client::new(&config)?);
    }
    let acks = args.acks.unwrap_or(config.acks);
    let value = Bytes::from(vec![b'x'; args.value_size]);
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });

    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.requests)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(shared.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let client = clients[i % connections].clone();
        let shared = shared.clone();
        let value = value.clone();
        let (op, requests, keyspace) = (args.op, args.requests, args.keyspace);
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut hist = new_histogram();
            while shared.next.fetch_add(1, Ordering::Relaxed) < requests {
                let key = Bytes::from(format!("key:{:012}", rng.u64(0..keyspace)));
                let op = match op {
                    Op::Mixed if rng.bool() => Op::Set,
                    Op::Mixed => Op::Get,
                    op => op,
                };
                let t = Instant::now();
                let result = match op {
                    Op::Ping => client.ping().await,
                    Op::Get => client.get(key).await.map(drop),
                    _ => {
                        let opts = SetOptions {
                            acks: Some(acks),
                            ..SetOptions::default()
                        };
                        client.set(key, value.clone(), opts).await.map(drop)
                    }
                };
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record(us.max(1));
                shared.done.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    shared
                        .first_error
                        .lock()
                        .get_or_insert_with(|| e.to_string());
                }
            }
            hist
        }));
    }
    let mut hist = new_histogram();
    for task in tasks {
        match task.await {
            Ok(h) => {
                let _ = hist.add(&h);
            }
            Err(e) => {
                shared
                    .first_error
                    .lock()
                    .get_or_insert_with(|| format!("client task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let done = shared.done.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().take();
    Ok(Report {
        op: args.op,
        clients: args.clients,
        connections,
        requests: args.requests,
        value_size: args.value_size,
        keyspace: args.keyspace,
        acks,
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        ops_per_sec: if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        },
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        first_error,
    })
}

/// A histogram of microseconds from 1 µs to 1 hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}
