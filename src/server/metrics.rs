//! What a node tells about itself: request figures recorded as requests
//! run, and a [`Snapshot`] of everything else collected when asked (a
//! Prometheus scrape, src/server/prometheus.rs, or the `Info` RPC). Both
//! outputs are built from the same snapshot, so they always agree.
//!
//! Invariants:
//! - recording a request costs two clock reads and two relaxed atomic adds
//!   into a histogram picked by array index (command x outcome): the
//!   series exist from the start, so the request path never allocates,
//!   hashes a label set or takes a lock;
//! - a request is recorded exactly once: with its outcome when its handler
//!   returns, or as `cancelled` when its future is dropped first (client
//!   gone, `server.request_timeout_ms`);
//! - everything else (partitions, storage, ZooKeeper) is read at collection
//!   time from what the node already exposes ([`Node::metadata`],
//!   [`Node::status`], [`ZkCluster`]); nothing is kept up to date on the
//!   request path for it. Storage counts in plain atomics of its own and
//!   knows nothing of metrics.
//! - per-partition figures cover the partitions this node hosts a replica
//!   of; the offline and under-replicated counts cover every partition whose
//!   state this node knows (a cluster node knows those it replicates).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::ZkCluster;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::storage::{Histogram, HistogramSnapshot};

/// The commands of the `Kv` service, in the order of [`COMMAND_NAMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `Ping`.
    Ping,
    /// `Set`.
    Set,
    /// `Get`.
    Get,
    /// `Del`.
    Del,
    /// `Expire`.
    Expire,
    /// `Ttl`.
    Ttl,
    /// `Exists`.
    Exists,
    /// `Metadata`.
    Metadata,
    /// `Info`.
    Info,
    /// `SetWith`.
    SetWith,
    /// `GetDel`.
    GetDel,
    /// `GetEx`.
    GetEx,
    /// `ExpireWith`.
    ExpireWith,
    /// `Persist`.
    Persist,
    /// `IncrBy`.
    IncrBy,
    /// `Append`.
    Append,
    /// `Strlen`.
    Strlen,
    /// `ExpireTime`.
    ExpireTime,
    /// `MGet`.
    MGet,
    /// `MSet`.
    MSet,
    /// `DbSize`.
    DbSize,
    /// `Forward`: a stream opened (its messages count as `MGet` / `MSet`).
    Forward,
    /// A forward wire connection opened (src/server/service/wire.rs; its
    /// messages count as `MGet` / `MSet`). No gRPC method: `ForwardWire`
    /// names it for [`Command::of_method`].
    ForwardWire,
}

impl Command {
    /// The command of a `caskade.v1.Kv` method (`"Set"`, `"MGet"`, ...);
    /// `None` for the admin methods, which have no series.
    pub fn of_method(method: &str) -> Option<Command> {
        Some(match method {
            "Ping" => Command::Ping,
            "Set" => Command::Set,
            "Get" => Command::Get,
            "Del" => Command::Del,
            "Expire" => Command::Expire,
            "Ttl" => Command::Ttl,
            "Exists" => Command::Exists,
            "Metadata" => Command::Metadata,
            "Info" => Command::Info,
            "SetWith" => Command::SetWith,
            "GetDel" => Command::GetDel,
            "GetEx" => Command::GetEx,
            "ExpireWith" => Command::ExpireWith,
            "Persist" => Command::Persist,
            "IncrBy" => Command::IncrBy,
            "Append" => Command::Append,
            "Strlen" => Command::Strlen,
            "ExpireTime" => Command::ExpireTime,
            "MGet" => Command::MGet,
            "MSet" => Command::MSet,
            "DbSize" => Command::DbSize,
            "Forward" => Command::Forward,
            "ForwardWire" => Command::ForwardWire,
            _ => return None,
        })
    }
}

/// The `command` label of each [`Command`].
pub const COMMAND_NAMES: [&str; 23] = [
    "ping",
    "set",
    "get",
    "del",
    "expire",
    "ttl",
    "exists",
    "metadata",
    "info",
    "set_with",
    "getdel",
    "getex",
    "expire_with",
    "persist",
    "incrby",
    "append",
    "strlen",
    "expiretime",
    "mget",
    "mset",
    "dbsize",
    "forward",
    "forward_wire",
];

/// The `outcome` label values: `ok`, each error reason of
/// [`Error::reason`] in lower case, and `cancelled`.
pub const OUTCOMES: [&str; 20] = [
    "ok",
    "invalid_argument",
    "not_leader",
    "not_enough_replicas",
    "timeout",
    "unreachable",
    "corrupt",
    "unavailable",
    "internal",
    "fenced_leader_epoch",
    "unknown_leader_epoch",
    "stale_controller_epoch",
    "not_integer",
    "overflow",
    "disk_full",
    "failed_precondition",
    "writes_refused",
    "unauthenticated",
    "permission_denied",
    "cancelled",
];

/// Index of `cancelled` in [`OUTCOMES`].
const CANCELLED: usize = OUTCOMES.len() - 1;

/// Index of `internal` in [`OUTCOMES`].
const INTERNAL: usize = 8;

/// The [`OUTCOMES`] index of an error (by its reason, so a new variant
/// shows as `internal` until it is listed).
fn outcome_of(e: &Error) -> usize {
    let reason = e.reason();
    OUTCOMES
        .iter()
        .position(|o| o.eq_ignore_ascii_case(reason))
        .unwrap_or(INTERNAL)
}

/// Latency histograms of every command and outcome.
pub struct Requests {
    /// `series[command][outcome]`.
    series: [[Histogram; OUTCOMES.len()]; COMMAND_NAMES.len()],
}

impl Requests {
    /// Empty histograms.
    fn new() -> Requests {
        Requests {
            series: [const { [const { Histogram::new() }; OUTCOMES.len()] }; COMMAND_NAMES.len()],
        }
    }

    /// Starts timing one request of `command`.
    pub fn start(&self, command: Command) -> Timer<'_> {
        Timer {
            series: &self.series[command as usize],
            started: Instant::now(),
            done: false,
        }
    }

    /// `n` timers of `command` started now, with one clock read (the
    /// requests of one pipelined read arrive together).
    pub fn start_many(&self, command: Command, n: usize) -> Vec<Timer<'_>> {
        let started = Instant::now();
        (0..n)
            .map(|_| Timer {
                series: &self.series[command as usize],
                started,
                done: false,
            })
            .collect()
    }

    /// Records a request of gRPC `method` refused before its handler ran
    /// (authentication, permissions: src/auth/grpc.rs, a forwarded
    /// message's check), with the refusal's outcome and the time the check
    /// took (`took`). Admin methods have no series and are not recorded.
    pub fn refused(&self, method: &str, e: &Error, took: Duration) {
        if let Some(command) = Command::of_method(method) {
            self.series[command as usize][outcome_of(e)].observe(took);
        }
    }

    /// The counts so far, `[command][outcome]`.
    pub fn snapshot(&self) -> [[HistogramSnapshot; OUTCOMES.len()]; COMMAND_NAMES.len()] {
        std::array::from_fn(|c| std::array::from_fn(|o| self.series[c][o].snapshot()))
    }
}

/// One request being timed; records `cancelled` if dropped unfinished.
pub struct Timer<'a> {
    /// The command's histograms, by outcome.
    series: &'a [Histogram; OUTCOMES.len()],
    /// When the request arrived.
    started: Instant,
    /// Set once recorded.
    done: bool,
}

impl Timer<'_> {
    /// Records the request with the outcome of `result`.
    pub fn finish<T>(mut self, result: &Result<T>) {
        let outcome = match result {
            Ok(_) => 0,
            Err(e) => outcome_of(e),
        };
        self.series[outcome].observe(self.started.elapsed());
        self.done = true;
    }
}

impl Timer<'_> {
    /// [`Timer::finish`] for a request answered at `now` (the answers of
    /// one batch leave together: one clock read for all).
    pub fn finish_at<T>(mut self, result: &Result<T>, now: Instant) {
        let outcome = match result {
            Ok(_) => 0,
            Err(e) => outcome_of(e),
        };
        self.series[outcome].observe(now.saturating_duration_since(self.started));
        self.done = true;
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.series[CANCELLED].observe(self.started.elapsed());
        }
    }
}

/// One node's figures: request histograms, and the sources read at
/// collection time.
pub struct Metrics {
    /// The node described.
    node: Arc<Node>,
    /// Its ZooKeeper membership (cluster mode).
    zk: Option<Arc<ZkCluster>>,
    /// When this node started serving.
    started: Instant,
    /// The `metrics.listen` address actually bound, if any (for `Info`).
    endpoint: parking_lot::Mutex<Option<String>>,
    /// Request figures.
    pub requests: Requests,
}

/// One hosted partition, as [`Snapshot`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionFigures {
    /// Partition id.
    pub id: u32,
    /// Node id of the leader, as this node knows it.
    pub leader: Option<String>,
    /// Whether this node leads it (and may act on it now).
    pub is_leader: bool,
    /// The leader epoch this node knows.
    pub leader_epoch: u32,
    /// Assigned replicas.
    pub replicas: Vec<String>,
    /// In-sync replicas.
    pub isr: Vec<String>,
    /// This node's replica's log end offset.
    pub log_end: u64,
    /// The high watermark this node knows.
    pub high_watermark: u64,
}

/// The storage figures of every engine of the node, added up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageFigures {
    /// Live keys.
    pub keys: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes of segment files.
    pub disk_bytes: u64,
    /// Bytes merge would reclaim.
    pub dead_bytes: u64,
    /// Records written since start.
    pub records_written: u64,
    /// fsync calls on segment files since start.
    pub fsyncs: u64,
    /// Their latency.
    pub fsync_latency: HistogramSnapshot,
    /// Merges completed since start.
    pub merges: u64,
    /// Bytes written by those merges.
    pub merge_bytes_written: u64,
    /// Value cache hits (node-wide).
    pub cache_hits: u64,
    /// Value cache misses (node-wide).
    pub cache_misses: u64,
    /// Values offered to the value cache by writes (node-wide).
    pub cache_fills: u64,
    /// Corrupt byte ranges found at open.
    pub corrupt_ranges: u64,
}

/// This node's view of ZooKeeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkFigures {
    /// Whether this node may act as a leader: a session is established and
    /// was heard from within 2/3 of its timeout.
    pub lease_valid: bool,
    /// Whether the ZooKeeper session's connection is up now.
    pub session_connected: bool,
    /// Live nodes registered, as last seen.
    pub live_nodes: u64,
}

/// Everything a scrape or `Info` reports, read at one time.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Node id.
    pub node_id: String,
    /// `standalone` or `cluster`.
    pub mode: &'static str,
    /// Partitions in the cluster.
    pub partition_count: u32,
    /// Time since the node started serving.
    pub uptime: Duration,
    /// The Prometheus endpoint's address, if on.
    pub metrics_endpoint: Option<String>,
    /// Request histograms, `[command][outcome]`.
    pub requests: [[HistogramSnapshot; OUTCOMES.len()]; COMMAND_NAMES.len()],
    /// Partitions hosted here, by id.
    pub partitions: Vec<PartitionFigures>,
    /// Known partitions without a leader.
    pub offline: u64,
    /// Known partitions with a leader and fewer in-sync than assigned
    /// replicas.
    pub under_replicated: u64,
    /// Storage, all engines.
    pub storage: StorageFigures,
    /// Controller's node id, if known.
    pub controller: Option<String>,
    /// ZooKeeper, in cluster mode.
    pub zk: Option<ZkFigures>,
    /// Fetch transports, in cluster mode.
    pub fetch: Option<crate::replication::fetch_wire::FetchTransports>,
}

impl Metrics {
    /// Figures of `node` (and of its ZooKeeper membership, in a cluster).
    pub fn new(node: Arc<Node>, zk: Option<Arc<ZkCluster>>) -> Arc<Metrics> {
        Arc::new(Metrics {
            node,
            zk,
            started: Instant::now(),
            endpoint: parking_lot::Mutex::new(None),
            requests: Requests::new(),
        })
    }

    /// Notes the address the Prometheus endpoint is bound to.
    pub fn set_endpoint(&self, addr: String) {
        *self.endpoint.lock() = Some(addr);
    }

    /// Reads every figure now. Storage figures are read on the blocking
    /// pool (engine status takes engine locks).
    pub async fn collect(&self) -> Result<Snapshot> {
        let node = &self.node;
        let me = node.info().id.clone();
        let standalone = node.mode() == "standalone";
        let (_, states) = node.metadata();
        let mut partitions = Vec::new();
        let (mut offline, mut under_replicated) = (0, 0);
        for p in states {
            if !p.replicas.is_empty() {
                match &p.leader {
                    None => offline += 1,
                    Some(_) if p.isr.len() < p.replicas.len() => under_replicated += 1,
                    Some(_) => {}
                }
            }
            if !standalone && !p.replicas.contains(&me) {
                continue;
            }
            let log_end = p
                .offsets
                .iter()
                .find(|(id, _)| *id == me)
                .map_or(0, |(_, o)| *o);
            partitions.push(PartitionFigures {
                id: p.id,
                is_leader: p.leader.as_deref() == Some(me.as_str()),
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas,
                isr: p.isr,
                log_end,
                high_watermark: p.high_watermark,
            });
        }
        let mut storage = StorageFigures::default();
        for (_, s) in node.status().await? {
            storage.keys += s.keys;
            storage.segments += s.segments;
            storage.disk_bytes += s.disk_bytes;
            storage.dead_bytes += s.dead_bytes;
            storage.records_written += s.records_written;
            storage.fsyncs += s.fsyncs;
            storage.fsync_latency.add(&s.fsync_latency);
            storage.merges += s.merges;
            storage.merge_bytes_written += s.merge_bytes_written;
            storage.corrupt_ranges += s.corrupt_ranges;
            // The cache is per node: every engine reports the same figure.
            storage.cache_hits = storage.cache_hits.max(s.cache_hits);
            storage.cache_misses = storage.cache_misses.max(s.cache_misses);
            storage.cache_fills = storage.cache_fills.max(s.cache_fills);
        }
        Ok(Snapshot {
            node_id: me,
            mode: node.mode(),
            partition_count: node.partition_count(),
            uptime: self.started.elapsed(),
            metrics_endpoint: self.endpoint.lock().clone(),
            requests: self.requests.snapshot(),
            partitions,
            offline,
            under_replicated,
            storage,
            controller: node.controller(),
            zk: self.zk.as_ref().map(|zk| ZkFigures {
                lease_valid: zk.lease_valid(),
                session_connected: zk.session_connected(),
                live_nodes: zk.nodes().len() as u64,
            }),
            fetch: node.fetch_figures(),
        })
    }
}

impl Snapshot {
    /// Whether this node is the controller.
    pub fn is_controller(&self) -> bool {
        self.controller.as_deref() == Some(self.node_id.as_str())
    }

    /// The `Info` answer: sections of `key: value` lines.
    pub fn info(&self) -> crate::proto::InfoResponse {
        use crate::proto::{InfoField, InfoResponse, InfoSection};
        let section = |name: &str, fields: Vec<(String, String)>| InfoSection {
            name: name.into(),
            fields: fields
                .into_iter()
                .map(|(key, value)| InfoField { key, value })
                .collect(),
        };
        let kv = |k: &str, v: String| (k.to_string(), v);
        let server = vec![
            kv("node_id", self.node_id.clone()),
            kv("mode", self.mode.into()),
            kv("version", env!("CARGO_PKG_VERSION").into()),
            kv("uptime_seconds", self.uptime.as_secs().to_string()),
            kv("partitions", self.partition_count.to_string()),
            kv(
                "metrics_listen",
                self.metrics_endpoint.clone().unwrap_or_default(),
            ),
        ];
        let mut requests = Vec::new();
        let mut total = 0;
        for (c, name) in COMMAND_NAMES.iter().enumerate() {
            let mut all = HistogramSnapshot::default();
            for o in &self.requests[c] {
                all.add(o);
            }
            let calls = all.count();
            total += calls;
            if calls == 0 {
                continue;
            }
            let errors = calls - self.requests[c][0].count();
            let usec_per_call = all.sum_us as f64 / calls as f64;
            let p99 = all
                .quantile_bound_us(0.99)
                .map_or("inf".into(), |b| b.to_string());
            requests.push(kv(
                &format!("cmd_{name}"),
                format!("calls={calls},errors={errors},usec_per_call={usec_per_call:.1},p99_usec_le={p99}"),
            ));
        }
        requests.insert(0, kv("total_requests", total.to_string()));
        let s = &self.storage;
        let lookups = s.cache_hits + s.cache_misses;
        let ratio = if lookups == 0 {
            0.0
        } else {
            s.cache_hits as f64 / lookups as f64
        };
        let fsync_avg = if s.fsyncs == 0 {
            0.0
        } else {
            s.fsync_latency.sum_us as f64 / s.fsync_latency.count().max(1) as f64
        };
        let storage = vec![
            kv("keys", s.keys.to_string()),
            kv("segments", s.segments.to_string()),
            kv("disk_bytes", s.disk_bytes.to_string()),
            kv("dead_bytes", s.dead_bytes.to_string()),
            kv("records_written", s.records_written.to_string()),
            kv("fsyncs", s.fsyncs.to_string()),
            kv("fsync_avg_usec", format!("{fsync_avg:.1}")),
            kv("merges", s.merges.to_string()),
            kv("merge_bytes_written", s.merge_bytes_written.to_string()),
            kv("cache_hits", s.cache_hits.to_string()),
            kv("cache_misses", s.cache_misses.to_string()),
            kv("cache_hit_ratio", format!("{ratio:.3}")),
            kv("cache_fills", s.cache_fills.to_string()),
            kv("corrupt_ranges", s.corrupt_ranges.to_string()),
        ];
        let mut replication = vec![
            kv("partitions_hosted", self.partitions.len().to_string()),
            kv(
                "partitions_led",
                self.partitions
                    .iter()
                    .filter(|p| p.is_leader)
                    .count()
                    .to_string(),
            ),
        ];
        if let Some(f) = self.fetch {
            replication.push(kv("fetch_wire_opened", f.wire_opened.to_string()));
            replication.push(kv("fetch_streams_opened", f.streams_opened.to_string()));
            replication.push(kv("fetch_wire_served", f.wire_served.to_string()));
        }
        for p in &self.partitions {
            replication.push(kv(
                &format!("partition_{}", p.id),
                format!(
                    "role={},leader={},epoch={},replicas={},isr={},log_end={},hw={}",
                    if p.is_leader { "leader" } else { "follower" },
                    p.leader.as_deref().unwrap_or("none"),
                    p.leader_epoch,
                    p.replicas.join("|"),
                    p.isr.join("|"),
                    p.log_end,
                    p.high_watermark
                ),
            ));
        }
        let mut cluster = vec![
            kv("controller", self.controller.clone().unwrap_or_default()),
            kv("is_controller", u8::from(self.is_controller()).to_string()),
            kv("partitions_offline", self.offline.to_string()),
            kv(
                "partitions_under_replicated",
                self.under_replicated.to_string(),
            ),
        ];
        if let Some(zk) = &self.zk {
            cluster.push(kv(
                "zk_session_connected",
                u8::from(zk.session_connected).to_string(),
            ));
            cluster.push(kv("zk_lease_valid", u8::from(zk.lease_valid).to_string()));
            cluster.push(kv("live_nodes", zk.live_nodes.to_string()));
        }
        InfoResponse {
            sections: vec![
                section("server", server),
                section("requests", requests),
                section("storage", storage),
                section("replication", replication),
                section("cluster", cluster),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's reason is an outcome of its own: none falls into
    /// `internal` (a full disk, a refused login used to).
    #[test]
    fn every_error_reason_has_its_own_outcome() {
        use crate::error::Error::*;
        let s = String::new;
        let errors = [
            InvalidInput(s()),
            NotLeader {
                partition: 0,
                leader: None,
            },
            NotEnoughReplicas {
                partition: 0,
                isr: 1,
                min_insync: 2,
            },
            Timeout(s()),
            Unreachable {
                addr: s(),
                reason: s(),
            },
            Corrupt(s()),
            DiskFull(s()),
            WritesRefused(s()),
            Unavailable(s()),
            Internal(s()),
            FencedEpoch(s()),
            UnknownEpoch(s()),
            StaleController(s()),
            FailedPrecondition(s()),
            NotInteger,
            Overflow,
            Unauthenticated(s()),
            PermissionDenied(s()),
        ];
        assert_eq!(OUTCOMES[INTERNAL], "internal");
        assert_eq!(OUTCOMES[CANCELLED], "cancelled");
        for e in &errors {
            // Does not compile when a variant is added: list it above.
            match e {
                InvalidInput(_) | NotLeader { .. } | NotEnoughReplicas { .. } | Timeout(_) => {}
                Unreachable { .. } | Corrupt(_) | DiskFull(_) | Unavailable(_) | Internal(_) => {}
                WritesRefused(_) => {}
                FencedEpoch(_) | UnknownEpoch(_) | StaleController(_) | FailedPrecondition(_) => {}
                NotInteger | Overflow | Unauthenticated(_) | PermissionDenied(_) => {}
            }
            assert_eq!(
                OUTCOMES[outcome_of(e)],
                e.reason().to_ascii_lowercase(),
                "{e:?}"
            );
        }
        // Every outcome but `ok` and `cancelled` is some variant's.
        assert_eq!(errors.len(), OUTCOMES.len() - 2);
    }

    /// A request refused before its handler ran counts in its method's
    /// series; an admin method, which has none, is not counted.
    #[test]
    fn refusals_count_in_their_method() {
        let r = Requests::new();
        let ms = Duration::from_millis(1);
        r.refused("Get", &Error::Unauthenticated("no".into()), ms);
        r.refused("MSet", &Error::PermissionDenied("no".into()), ms);
        r.refused("Decommission", &Error::PermissionDenied("no".into()), ms);
        let snap = r.snapshot();
        let at = |c: Command, o: &str| {
            snap[c as usize][OUTCOMES.iter().position(|x| *x == o).unwrap()].count()
        };
        assert_eq!(at(Command::Get, "unauthenticated"), 1);
        assert_eq!(at(Command::MSet, "permission_denied"), 1);
        let total: u64 = snap.iter().flatten().map(|h| h.count()).sum();
        assert_eq!(total, 2);
        assert_eq!(Command::of_method("Decommission"), None);
        for (c, name) in COMMAND_NAMES.iter().enumerate() {
            let method = match *name {
                "set_with" => "SetWith".to_string(),
                "getdel" => "GetDel".into(),
                "getex" => "GetEx".into(),
                "expire_with" => "ExpireWith".into(),
                "incrby" => "IncrBy".into(),
                "expiretime" => "ExpireTime".into(),
                "mget" => "MGet".into(),
                "mset" => "MSet".into(),
                "dbsize" => "DbSize".into(),
                "forward_wire" => "ForwardWire".into(),
                n => n[..1].to_ascii_uppercase() + &n[1..],
            };
            assert_eq!(
                Command::of_method(&method).map(|c| c as usize),
                Some(c),
                "{method}"
            );
        }
    }

    /// What recording one request costs, on this machine, from two
    /// threads at once on the same series (the worst case: one cache line).
    /// Run with `cargo test --release --lib recording_cost -- --ignored
    /// --nocapture`; docs/BENCHMARKS.md quotes it.
    #[test]
    #[ignore]
    fn recording_cost() {
        /// CPU time of the calling thread, in ns (wall time would count
        /// the time other processes hold the cores).
        fn cpu_ns() -> u128 {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec we own.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
            t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
        }
        let r = Requests::new();
        let n = 2_000_000;
        for threads in [1, 2] {
            let per: Vec<f64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let started = cpu_ns();
                            for _ in 0..n {
                                r.start(Command::Get).finish(&Ok::<(), Error>(()));
                            }
                            (cpu_ns() - started) as f64 / n as f64
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            println!("recording one request: {per:.0?} ns of CPU ({threads} threads, one series)");
        }
        assert_eq!(r.snapshot()[Command::Get as usize][0].count(), 3 * n as u64);
    }

    #[test]
    fn a_dropped_request_counts_as_cancelled_once() {
        let r = Requests::new();
        r.start(Command::Get).finish(&Ok::<(), Error>(()));
        drop(r.start(Command::Get));
        r.start(Command::Set)
            .finish(&Err::<(), _>(Error::InvalidInput("x".into())));
        let s = r.snapshot();
        assert_eq!(s[Command::Get as usize][0].count(), 1);
        assert_eq!(s[Command::Get as usize][CANCELLED].count(), 1);
        assert_eq!(s[Command::Set as usize][1].count(), 1);
        let total: u64 = s.iter().flatten().map(HistogramSnapshot::count).sum();
        assert_eq!(total, 3);
    }
}
