//! `caskade-cli resp-bench`: a closed-loop RESP load generator for what
//! redis-benchmark cannot do: a `WAIT numreplicas 0` after the writes of
//! each round trip, the nearest Redis equivalent of caskade's `acks: all`
//! (scripts/bench-vs-redis.sh, cluster case). It speaks plain RESP2 and runs
//! the same way against Redis and caskade.
//!
//! `--clients` connections (one task each, spread round robin over
//! `--addr`) each send `--pipeline` commands per round trip (`SET key value`
//! or `GET key`), followed, for sets with `--wait-replicas N`, by
//! `WAIT N 0` in the same write, and read every reply before the next round
//! trip. Keys are `key:NNNNNNNNNNNN` drawn uniformly from `--keyspace` and
//! values `--value-size` bytes of `x`, as redis-benchmark's `-r` and `-d`.
//! A round trip's latency is recorded once per command in it (as
//! redis-benchmark does with `-P`), in microseconds.
//!
//! Invariant: every reply is parsed; an error reply, or a `WAIT` answering
//! fewer replicas than asked, counts as a failed request; the exit code is 1
//! if any request failed (the first failure is printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The command a run issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `SET key value` (then `WAIT` with `--wait-replicas`).
    Set,
    /// `GET key`.
    Get,
}

/// Flags of `caskade-cli resp-bench`.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli resp-bench",
    about = "RESP load generator with WAIT after writes (for scripts/bench-vs-redis.sh)"
)]
pub struct RespBenchArgs {
    /// RESP server address host:port; repeat to spread the clients.
    #[arg(long = "addr", required = true)]
    pub addrs: Vec<String>,
    /// Concurrent connections, one round trip in flight each.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub clients: usize,
    /// Total commands (sets or gets; the WAITs are not counted).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub requests: u64,
    /// Value size in bytes.
    #[arg(long, short = 'd', default_value_t = 100)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, short = 'r', default_value_t = 100_000)]
    pub keyspace: u64,
    /// Commands per round trip.
    #[arg(long, short = 'P', default_value_t = 1)]
    pub pipeline: u64,
    /// Command.
    #[arg(long, value_enum, default_value_t = Op::Set)]
    pub op: Op,
    /// Send `WAIT N 0` after each round trip's sets (0 = no WAIT).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
    /// Seed of the key generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The result of a run, one JSON object on stdout.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command.
    pub op: Op,
    /// Connections.
    pub clients: usize,
    /// Commands issued.
    pub requests: u64,
    /// Commands per round trip.
    pub pipeline: u64,
    /// Replicas each round trip's `WAIT` asked for (0: no WAIT).
    pub wait_replicas: u32,
    /// Failed commands.
    pub errors: u64,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// Completed commands per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Shared by the connections of a run.
struct Shared {
    /// Next command index to issue.
    next: AtomicU64,
    /// Completed commands.
    done: AtomicU64,
    /// Failed commands.
    errors: AtomicU64,
    /// The first failure.
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, n: u64, why: String) {
        self.errors.fetch_add(n, Ordering::Relaxed);
        self.first_error.lock().get_or_insert(why);
    }
}

/// Runs the benchmark; returns the exit code.
pub fn run(runtime: &tokio::runtime::Runtime, args: &RespBenchArgs) -> i32 {
    if args.clients == 0 || args.keyspace == 0 || args.pipeline == 0 {
        eprintln!(
            "caskade-cli resp-bench: --clients, --keyspace and --pipeline must be at least 1"
        );
        return 2;
    }
    let report = match runtime.block_on(bench(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("(error) {e}");
            return 1;
        }
    };
    match serde_json::to_string(&report) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("caskade-cli resp-bench: cannot encode the report: {e}");
            return 1;
        }
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

async fn bench(args: &RespBenchArgs) -> Result<Report, String> {
    let mut conns = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let addr = &args.addrs[i % args.addrs.len()];
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        s.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY on {addr}: {e}"))?;
        conns.push(s);
    }
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let value = vec![b'x'; args.value_size];
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for (i, conn) in conns.into_iter().enumerate() {
        let shared = shared.clone();
        let value = value.clone();
        let (op, requests, keyspace, pipeline, wait) = (
            args.op,
            args.requests,
            args.keyspace,
            args.pipeline,
            args.wait_replicas,
        );
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.push(tokio::spawn(async move {
            let mut c = Conn {
                stream: conn,
                buf: Vec::with_capacity(64 << 10),
                pos: 0,
            };
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut hist = new_histogram();
            let mut out = Vec::with_capacity(16 << 10);
            loop {
                let first = shared.next.fetch_add(pipeline, Ordering::Relaxed);
                if first >= requests {
                    break;
                }
                let n = pipeline.min(requests - first);
                out.clear();
                for _ in 0..n {
                    let key = format!("key:{:012}", rng.u64(0..keyspace));
                    match op {
                        Op::Set => command(&mut out, &[b"SET", key.as_bytes(), &value]),
                        Op::Get => command(&mut out, &[b"GET", key.as_bytes()]),
                    }
                }
                let waiting = op == Op::Set && wait > 0;
                if waiting {
                    command(&mut out, &[b"WAIT", wait.to_string().as_bytes(), b"0"]);
                }
                let t = Instant::now();
                if let Err(e) = c.stream.write_all(&out).await {
                    shared.fail(requests - first, format!("write: {e}"));
                    break;
                }
                let mut failed = 0;
                for i in 0..n + u64::from(waiting) {
                    match c.reply().await {
                        Err(e) => {
                            shared.fail(requests - first, e);
                            return hist;
                        }
                        Ok(Reply::Error(e)) => {
                            failed += 1;
                            shared.first_error.lock().get_or_insert(e);
                        }
                        Ok(Reply::Int(got)) if i == n && got < i64::from(wait) => {
                            // A short WAIT: none of this round trip's sets
                            // is known to be on the replicas.
                            failed = n;
                            shared
                                .first_error
                                .lock()
                                .get_or_insert(format!("WAIT {wait} 0 answered {got} replicas"));
                        }
                        Ok(_) => {}
                    }
                }
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                hist.saturating_record_n(us.max(1), n);
                shared.errors.fetch_add(failed.min(n), Ordering::Relaxed);
                shared.done.fetch_add(n, Ordering::Relaxed);
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
            Err(e) => shared.fail(0, format!("client task failed: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = shared.done.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().take();
    Ok(Report {
        op: args.op,
        clients: args.clients,
        requests: args.requests,
        pipeline: args.pipeline,
        wait_replicas: args.wait_replicas,
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        ops_per_sec: if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        },
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        first_error,
    })
}

/// Appends `args` as a RESP multibulk.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The replies this tool needs to tell apart.
enum Reply {
    /// `-...`.
    Error(String),
    /// `:N`.
    Int(i64),
    /// Anything else (`+OK`, a bulk string, nil).
    Other,
}

/// One connection and its read buffer.
struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not yet parsed start at `pos`.
    buf: Vec<u8>,
    /// Parse position in `buf`.
    pos: usize,
}

impl Conn {
    /// Reads one reply (simple string, error, integer or bulk string).
    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some((reply, used)) = parse(&self.buf[self.pos..])? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(reply);
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one reply at the start of `b`: `None` if incomplete.
fn parse(b: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&b[1..eol]);
    let after = eol + 2;
    match b.first() {
        Some(b'+') => Ok(Some((Reply::Other, after))),
        Some(b'-') => Ok(Some((Reply::Error(line.into_owned()), after))),
        Some(b':') => line
            .parse()
            .map(|n| Some((Reply::Int(n), after)))
            .map_err(|_| format!("bad integer reply {line:?}")),
        Some(b'$') => {
            let n: i64 = line
                .parse()
                .map_err(|_| format!("bad bulk length {line:?}"))?;
            if n < 0 {
                return Ok(Some((Reply::Other, after)));
            }
            let end = after + n as usize + 2;
            Ok((b.len() >= end).then_some((Reply::Other, end)))
        }
        _ => Err(format!(
            "unexpected reply {:?}",
            String::from_utf8_lossy(&b[..after])
        )),
    }
}

/// A histogram of microseconds from 1 µs to 1 hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}
