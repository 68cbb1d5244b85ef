//! Runs one torture scenario: a real 3-node cluster ([`TestCluster`]),
//! concurrent clients through the real [`Client`] (acks all) recording a
//! [`History`], a high-watermark poller, the scenario's nemesis (seeded:
//! `TORTURE_SEED=S` replays its schedule), then heal, quiescence, final
//! reads, a record-by-record comparison of every replica's log, and every
//! checker. Prints `scenario=NAME ops=N acked=A lost=L linearizable=W
//! seed=S` and panics on any violation, naming the saved history file.
//!
//! Every process and thread it starts ends with the scenario: the cluster
//! and ZooKeeper are Drop guards, the clients and the poller stop on a
//! flag and are awaited (bounded by the client timeout).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::client::{Client, SetOptions};
use caskade::config::ClientConfig;
use caskade::error::Error;
use caskade::storage::{Bitcask, Condition, Durability, Options, SystemClock};

use super::checks::{self, HwSample, LogEntry, ReplicaLog};
use super::harness::cluster::{ClusterOpts, TestCluster, tail};
use super::harness::zk::Zk;
use super::history::{Cond, Func, History, Op, Outcome, Ret};
use super::linear;
use super::nemesis::Ctx;

/// A scenario.
pub struct Scenario {
    /// Its name, as printed.
    pub name: &'static str,
    /// Cluster settings.
    pub opts: ClusterOpts,
    /// ZooKeeper: a three-member ensemble instead of one server.
    pub ensemble: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys in the key space.
    pub keys: usize,
    /// Values of 1 MiB (the maximum) instead of a few bytes.
    pub large: bool,
    /// The faults, run until the context's deadline.
    pub nemesis: fn(&mut Ctx),
    /// Network faults: nodes run as their own groups, with a firewall
    /// (only inside the scenario's network namespace).
    pub network: bool,
    /// The last this many keys get short TTLs (`GET`; `SET NX`, then a
    /// `PEXPIRE` of 1-3 s when it wrote) and are checked by `skew::ttl_violations` instead of
    /// the linearizability and lost-write checkers.
    pub ttl_keys: usize,
    /// Slack of the TTL check beyond the TTL (|clock skew| + margin), ms.
    pub ttl_slack_ms: u64,
}

impl Scenario {
    /// A scenario with the torture defaults.
    pub fn new(name: &'static str, nemesis: fn(&mut Ctx)) -> Scenario {
        Scenario {
            name,
            opts: ClusterOpts {
                // The server's default durability.
                fsync: "{every_ms: 1000}",
                ..ClusterOpts::default()
            },
            ensemble: false,
            clients: 6,
            keys: 12,
            large: false,
            nemesis,
            network: false,
            ttl_keys: 0,
            ttl_slack_ms: 0,
        }
    }
}

/// Seconds of load per scenario: `TORTURE_SECS`, default 4 (the short
/// version `make test` runs).
pub fn secs() -> f64 {
    std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0)
}

/// The seed: `TORTURE_SEED`, or from the clock.
pub fn seed() -> u64 {
    std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

/// SplitMix64: small, seeded, good enough for schedules.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// The shared history being recorded.
pub struct Recorder {
    /// Time zero.
    pub start: Instant,
    /// The operations.
    pub history: Mutex<History>,
}

impl Recorder {
    /// ns since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Whether an error means the operation certainly did not happen, else it
/// is unknown: exactly the errors the client itself treats as "not applied"
/// when it decides to retry a write ([`Error::nothing_applied`]; a refused
/// or unreached server, never a connection lost mid-request or a timeout).
fn definite(e: &Error) -> bool {
    e.nothing_applied()
}

/// The bytes of value `id`: the id itself, or for large values the id, a
/// colon and a filler up to 1 MiB derived from the id.
fn encode(id: &str, large: bool) -> Bytes {
    if !large {
        return Bytes::copy_from_slice(id.as_bytes());
    }
    let mut v = Vec::with_capacity(1 << 20);
    v.extend_from_slice(id.as_bytes());
    v.push(b':');
    let fill = b'a' + (id.len() as u8 + id.as_bytes()[id.len() - 1]) % 26;
    v.resize(1 << 20, fill);
    Bytes::from(v)
}

/// The id of a value read; a value whose bytes do not match its id reads
/// as `corrupt:<id>`, which no write produced.
fn decode(v: &[u8], large: bool) -> String {
    let id = match large {
        false => String::from_utf8_lossy(v).into_owned(),
        true => {
            let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).into_owned()
        }
    };
    if large && (id.is_empty() || encode(&id, true).as_ref() != v) {
        return format!("corrupt:{id}");
    }
    id
}

/// Runs one operation through `client` and returns its outcome.
async fn run_op(client: &Client, key: &str, f: &Func, large: bool) -> Outcome {
    let k = Bytes::copy_from_slice(key.as_bytes());
    let r: Result<Ret, Error> = match f {
        Func::Set { value, cond } => {
            let condition = match cond {
                Cond::Always => Condition::Always,
                Cond::Nx => Condition::IfAbsent,
                Cond::Xx => Condition::IfPresent,
            };
            let opts = SetOptions {
                condition,
                ..SetOptions::default()
            };
            client
                .set(k, encode(value, large), opts)
                .await
                .map(Ret::Written)
        }
        Func::Get => client
            .get(k)
            .await
            .map(|v| Ret::Value(v.map(|b| decode(&b, large)))),
        Func::Del => client.del(vec![k]).await.map(|n| Ret::Existed(n > 0)),
        Func::Expire { ttl_ms } => client.expire(k, *ttl_ms).await.map(Ret::Existed),
    };
    match r {
        Ok(ret) => Outcome::Ok(ret),
        Err(e) if definite(&e) => Outcome::Fail(e.to_string()),
        Err(e) => Outcome::Info(e.to_string()),
    }
}

/// A multi-key `DEL` of `a` and `b` (one partition) as one operation per
/// key: not atomic across keys, but each happened or not as the answer
/// says (`NOT_LEADER` means neither was deleted).
async fn del_two(client: &Client, a: &str, b: &str) -> (Outcome, Outcome) {
    let keys = vec![
        Bytes::copy_from_slice(a.as_bytes()),
        Bytes::copy_from_slice(b.as_bytes()),
    ];
    match client.del(keys).await {
        Ok(0) => (
            Outcome::Ok(Ret::Existed(false)),
            Outcome::Ok(Ret::Existed(false)),
        ),
        Ok(2) => (
            Outcome::Ok(Ret::Existed(true)),
            Outcome::Ok(Ret::Existed(true)),
        ),
        Ok(1) => (Outcome::Ok(Ret::Done), Outcome::Ok(Ret::Done)),
        Ok(n) => {
            let e = format!("DEL of two keys answered {n}");
            (Outcome::Ok(Ret::Value(Some(e.clone()))), Outcome::Fail(e))
        }
        Err(e) if definite(&e) => (Outcome::Fail(e.to_string()), Outcome::Fail(e.to_string())),
        Err(e) => (Outcome::Info(e.to_string()), Outcome::Info(e.to_string())),
    }
}

/// Process ids of the second key of multi-key operations.
static SECOND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);

/// One client: random operations on random keys until `stop`.
/// `partner[i]` is a key of the same partition as key `i`.
#[allow(clippy::too_many_arguments)]
async fn client_loop(
    id: usize,
    clients: usize,
    client: Client,
    keys: Arc<Vec<String>>,
    partner: Arc<Vec<usize>>,
    stop: Arc<AtomicBool>,
    rec: Arc<Recorder>,
    seed: u64,
    large: bool,
    ttl_from: usize,
) {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(id as u64 + 1));
    let mut process = id as u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(keys.len() as u64) as usize;
        let key = keys[k].clone();
        seq += 1;
        if k >= ttl_from {
            // A key with a short TTL: GET, or SET NX (it only writes once
            // the previous value expired) followed at once, when it wrote,
            // by a PEXPIRE of 1-3 s from the same client. Each value then
            // lives about its TTL, and no other write can extend it.
            let mut next = Some(match rng.below(100) {
                0..85 => Func::Get,
                _ => Func::Set {
                    value: format!("{id}-{seq}"),
                    cond: Cond::Nx,
                },
            });
            while let Some(f) = next.take() {
                let invoke = rec.now();
                let outcome = run_op(&client, &key, &f, large).await;
                let complete = rec.now();
                let unknown = matches!(outcome, Outcome::Info(_));
                let failed = matches!(outcome, Outcome::Fail(_));
                let backoff = backs_off(&outcome);
                if matches!(f, Func::Set { .. })
                    && matches!(outcome, Outcome::Ok(Ret::Written(true)))
                {
                    next = Some(Func::Expire {
                        ttl_ms: 1000 + rng.below(2001),
                    });
                }
                rec.history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Op {
                        id: 0,
                        client: id,
                        process,
                        key: key.clone(),
                        f,
                        invoke,
                        complete,
                        outcome,
                    });
                if unknown {
                    process += clients as u64;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if backoff {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                }
            }
            continue;
        }
        if rng.below(100) < 4 && partner[k] != k && partner[k] < ttl_from {
            let other = keys[partner[k]].clone();
            let invoke = rec.now();
            let (o1, o2) = del_two(&client, &key, &other).await;
            let complete = rec.now();
            let unknown = matches!(o1, Outcome::Info(_));
            let second = SECOND.fetch_add(1, Ordering::Relaxed);
            let mut h = rec.history.lock().unwrap_or_else(|e| e.into_inner());
            for (key, process, outcome) in [(key, process, o1), (other, second, o2)] {
                h.push(Op {
                    id: 0,
                    client: id,
                    process,
                    key,
                    f: Func::Del,
                    invoke,
                    complete,
                    outcome,
                });
            }
            drop(h);
            if unknown {
                process += clients as u64;
            }
            continue;
        }
        let value = format!("{id}-{seq}");
        let f = match rng.below(100) {
            0..40 => Func::Get,
            40..65 => Func::Set {
                value,
                cond: Cond::Always,
            },
            65..73 => Func::Set {
                value,
                cond: Cond::Nx,
            },
            73..81 => Func::Set {
                value,
                cond: Cond::Xx,
            },
            81..89 => Func::Del,
            89..93 => Func::Expire { ttl_ms: 0 },
            _ => Func::Expire { ttl_ms: 3_600_000 },
        };
        let invoke = rec.now();
        let outcome = run_op(&client, &key, &f, large).await;
        let complete = rec.now();
        let unknown = matches!(outcome, Outcome::Info(_));
        let failed = matches!(outcome, Outcome::Fail(_));
        let backoff = backs_off(&outcome);
        rec.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Op {
                id: 0,
                client: id,
                process,
                key,
                f,
                invoke,
                complete,
                outcome,
            });
        if unknown {
            // The old process may still be in flight.
            process += clients as u64;
        }
        if failed {
            // Refused at once (no leader, ISR too small): do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
}

/// Whether a client backs off (1 s) after `outcome`: a full disk's
/// refusal (`DISK_FULL`, nothing applied) comes at once, as does
/// `WRITES_REFUSED` after a failed write (outcome unknown, API.md); retrying
/// at full speed would fill the history (each unknown write multiplies the
/// linearizability search) and is not what a client does.
fn backs_off(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Info(e) | Outcome::Fail(e) if e.contains("disk full") || e.contains("No space"))
}

/// Polls every node's `Metadata` until `stop`, recording high watermarks.
async fn hw_poller(
    nodes: Vec<(String, String)>,
    pids: Arc<Mutex<Vec<Option<i32>>>>,
    stop: Arc<AtomicBool>,
    rec: Arc<Recorder>,
) -> Vec<HwSample> {
    let mut out = Vec::new();
    let clients: Vec<Option<Client>> = nodes
        .iter()
        .map(|(_, addr)| {
            Client::new(&ClientConfig {
                addrs: vec![addr.clone()],
                timeout_ms: 700,
                ..ClientConfig::default()
            })
            .ok()
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for (i, (id, _)) in nodes.iter().enumerate() {
            let pid = pids.lock().unwrap_or_else(|e| e.into_inner())[i];
            let (Some(pid), Some(c)) = (pid, &clients[i]) else {
                continue;
            };
            let sent = rec.now();
            let Ok(m) = c.metadata().await else {
                continue;
            };
            let received = rec.now();
            // A restart during the call: the answer's process is unknown.
            if pids.lock().unwrap_or_else(|e| e.into_inner())[i] != Some(pid) {
                continue;
            }
            for p in &m.partitions {
                let Some(log_end) = p
                    .offsets
                    .iter()
                    .find(|o| &o.node_id == id)
                    .map(|o| o.log_end_offset)
                else {
                    continue;
                };
                out.push(HwSample {
                    node: id.clone(),
                    pid,
                    partition: p.id,
                    leader_epoch: p.leader_epoch,
                    leads: &p.leader == id,
                    hw: p.high_watermark,
                    log_end,
                    sent,
                    received,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    out
}

/// Runs `s`; panics on any violation.
pub fn run(s: Scenario) {
    let seed = seed();
    let secs = secs();
    // A scenario that kills ZooKeeper members has an ensemble of its own;
    // a network scenario runs in its own namespace (and process), on a
    // server of its own; the others share one server, each on a chroot of
    // its own (`Zk::shared`: no JVM start and kill per scenario).
    let zk = if s.ensemble {
        Zk::ensemble()
    } else if s.network {
        Zk::standalone()
    } else {
        Zk::shared()
    };
    let gids = (0..s.opts.nodes)
        .map(|i| s.network.then_some(super::netpart::GIDS[i]))
        .collect();
    let mut cluster = TestCluster::start_as(s.opts.clone(), zk, gids);
    let firewall = match s.network {
        true => Some(super::netpart::Firewall::new().expect("iptables chain in the namespace")),
        false => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(History::default()),
    });
    // Keys spread over every partition.
    let keys: Arc<Vec<String>> = Arc::new(
        (0..s.keys)
            .map(|n| cluster.key_in(n as u32 % s.opts.partitions, n))
            .collect(),
    );
    // Key n is in partition n % partitions: its partner is the next key of
    // that partition (itself when alone).
    let parts = s.opts.partitions as usize;
    let partner: Arc<Vec<usize>> = Arc::new(
        (0..s.keys)
            .map(|n| {
                (1..s.keys)
                    .map(|d| (n + d) % s.keys)
                    .find(|m| m % parts == n % parts)
                    .unwrap_or(n)
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<String> = cluster.specs.iter().map(|n| n.addr.clone()).collect();
    let make_client = |addrs: &[String]| {
        let _in = rt.enter();
        Client::new(&ClientConfig {
            addrs: addrs.to_vec(),
            timeout_ms: 5000,
            ..ClientConfig::default()
        })
        .expect("client")
    };
    let workers: Vec<_> = (0..s.clients)
        .map(|id| {
            // Each client starts on a different seed node.
            let mut a = addrs.clone();
            a.rotate_left(id % addrs.len());
            rt.spawn(client_loop(
                id,
                s.clients,
                make_client(&a),
                keys.clone(),
                partner.clone(),
                stop.clone(),
                rec.clone(),
                seed,
                s.large,
                s.keys - s.ttl_keys,
            ))
        })
        .collect();
    let pids = Arc::new(Mutex::new(
        (0..cluster.specs.len()).map(|i| cluster.pid(i)).collect(),
    ));
    let nodes: Vec<(String, String)> = cluster
        .specs
        .iter()
        .map(|n| (n.id.clone(), n.addr.clone()))
        .collect();
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let _in = rt.enter();
        rt.spawn(hw_poller(
            nodes,
            pids.clone(),
            poll_stop.clone(),
            rec.clone(),
        ))
    };

    // The faults.
    let mut ctx = Ctx::new(
        &mut cluster,
        seed,
        Duration::from_secs_f64(secs),
        pids.clone(),
        rec.start,
    );
    ctx.firewall = firewall;
    (s.nemesis)(&mut ctx);
    // Clients stop; whatever is in flight ends as `info` within their
    // timeout.
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = rt.block_on(w);
    }
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = ctx.heal_and_quiesce() {
        problems.push(e);
    }
    let nemesis_log = ctx.log.clone();
    problems.append(&mut ctx.problems);
    drop(ctx);
    poll_stop.store(true, Ordering::Relaxed);
    let samples = rt.block_on(poller).unwrap_or_default();

    // Final reads, recorded in the history too.
    let final_client = make_client(&addrs);
    let mut final_reads = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let mut got = None;
        for _ in 0..10 {
            let invoke = rec.now();
            let out = rt.block_on(run_op(&final_client, key, &Func::Get, s.large));
            let complete = rec.now();
            if let Outcome::Ok(Ret::Value(v)) = &out {
                got = Some(v.clone());
                rec.history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Op {
                        id: 0,
                        client: s.clients,
                        process: u64::MAX - n as u64,
                        key: key.clone(),
                        f: Func::Get,
                        invoke,
                        complete,
                        outcome: out,
                    });
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        match got {
            Some(v) => final_reads.push((key.clone(), v)),
            None => problems.push(format!("final read of {key} failed 10 times")),
        }
    }

    // The nodes' logs, kept with the history on failure.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("torture");
    let _ = std::fs::create_dir_all(&dir);
    let node_logs: Vec<std::path::PathBuf> = (0..cluster.specs.len())
        .map(|i| {
            let path = dir.join(format!("{}-{seed}-{}.log", s.name, cluster.specs[i].id));
            let _ = std::fs::write(&path, cluster.log(i));
            path
        })
        .collect();

    // Every replica's log, record by record (nodes stopped cleanly first).
    if problems.is_empty() {
        problems.extend(compare_replicas(&mut cluster));
    }

    let history = std::mem::take(&mut *rec.history.lock().unwrap_or_else(|e| e.into_inner()));
    let path = dir.join(format!("{}-{seed}.jsonl", s.name));
    let saved = history.save(&path);

    // Keys with short TTLs have a checker of their own (see `skew.rs`).
    let ttl: std::collections::HashSet<String> =
        keys[s.keys - s.ttl_keys..].iter().cloned().collect();
    let mut plain = History::default();
    for op in history.ops.iter().filter(|o| !ttl.contains(&o.key)) {
        plain.push(op.clone());
    }
    let plain_reads: Vec<(String, Option<String>)> = final_reads
        .iter()
        .filter(|(k, _)| !ttl.contains(k))
        .cloned()
        .collect();
    let lin = linear::check(&plain);
    let lost = checks::lost_writes(&plain, &plain_reads);
    problems.extend(checks::failed_visible(&history, &final_reads));
    problems.extend(super::skew::ttl_violations(&history, &ttl, s.ttl_slack_ms));
    problems.extend(checks::hw_violations(&samples));
    let client_ops = history.ops.iter().filter(|o| o.client < s.clients).count();
    let acked = history
        .ops
        .iter()
        .filter(|o| o.f.is_write() && matches!(o.outcome, Outcome::Ok(_)))
        .count();
    println!(
        "scenario={} ops={} acked={} lost={} linearizable={} seed={}",
        s.name,
        client_ops,
        acked,
        lost.len(),
        lin.word(),
        seed
    );
    for l in &nemesis_log {
        eprintln!("  nemesis {l}");
    }
    eprintln!(
        "  {} high-watermark samples, {} keys checked",
        samples.len(),
        lin.keys
    );
    let clean = lost.is_empty() && problems.is_empty() && lin.word() == "yes";
    if clean {
        let _ = std::fs::remove_file(&path);
        for l in &node_logs {
            let _ = std::fs::remove_file(l);
        }
        return;
    }
    let mut msg = format!(
        "scenario {} failed (seed {seed}; replay with TORTURE_SEED={seed} TORTURE_SECS={secs})\n",
        s.name
    );
    match saved {
        Ok(()) => msg.push_str(&format!("full history: {}\n", path.display())),
        Err(e) => msg.push_str(&format!("history not saved: {e}\n")),
    }
    msg.push_str("nemesis:\n");
    for l in &nemesis_log {
        msg.push_str(&format!("  {l}\n"));
    }
    for l in lost.iter().take(10) {
        msg.push_str(&format!("LOST: {l}\n"));
    }
    for l in problems.iter().take(20) {
        msg.push_str(&format!("VIOLATION: {l}\n"));
    }
    for (_, text) in lin.violations.iter().take(3) {
        msg.push_str(&format!("NOT LINEARIZABLE: {text}\n"));
    }
    for k in &lin.undecided {
        msg.push_str(&format!("UNDECIDED (search too large): key {k}\n"));
    }
    for (i, l) in node_logs.iter().enumerate() {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        msg.push_str(&format!(
            "--- {} log (full: {}) ---\n{}\n",
            cluster.specs[i].id,
            l.display(),
            tail(&text, 12)
        ));
    }
    panic!("{msg}");
}

/// Stops every node cleanly and compares each partition's replicas.
fn compare_replicas(cluster: &mut TestCluster) -> Vec<String> {
    for i in 0..cluster.specs.len() {
        cluster.stop_node(i);
    }
    let mut out = Vec::new();
    for p in 0..cluster.opts.partitions {
        let mut logs = Vec::new();
        for spec in &cluster.specs {
            let dir = spec.data.join("partitions").join(p.to_string());
            if !dir.exists() {
                continue;
            }
            match read_replica(&dir) {
                Ok((records, committed)) => logs.push(ReplicaLog {
                    node: spec.id.clone(),
                    records,
                    committed,
                }),
                Err(e) => out.push(format!("partition {p} on {}: cannot read: {e}", spec.id)),
            }
        }
        out.extend(checks::compare_logs(p, &logs));
    }
    out
}

/// Every record of the replica in `dir`, and its commit point.
fn read_replica(dir: &std::path::Path) -> Result<(Vec<LogEntry>, u64), String> {
    let opts = Options {
        fsync: Durability::Never,
        ..Options::default()
    };
    let engine =
        Bitcask::open_replica(dir, opts, Arc::new(SystemClock)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = engine.read_log(from, 4 << 20).map_err(|e| e.to_string())?;
        let Some(last) = batch.last() else { break };
        from = last.header.offset + 1;
        for r in &batch {
            let v = r.value();
            out.push(LogEntry {
                offset: r.header.offset,
                epoch: r.header.epoch,
                kind: r.header.kind as u8,
                expire_at_ms: r.header.expire_at_ms,
                key: r.key().to_vec(),
                value: (crc32fast::hash(&v), v.len()),
            });
        }
    }
    let committed = engine.committed();
    let _ = engine.close();
    Ok((out, committed))
}
