//! The Prometheus endpoint (`metrics.listen`): `GET /metrics` answers a
//! [`Snapshot`] in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client` (the Prometheus project's Rust client). HTTP/1.1 by
//! hyper, on its own listener and tasks, apart from the gRPC server.
//!
//! Series (all prefixed `caskade_`; `partition` labels only for partitions
//! this node hosts):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `node_info` | gauge (1) | `node_id`, `mode` |
//! | `uptime_seconds` | gauge | |
//! | `request_duration_seconds` | histogram | `command`, `outcome` |
//! | `partition_log_end_offset`, `partition_high_watermark`, `partition_leader_epoch`, `partition_isr_size`, `partition_replicas`, `partition_is_leader` | gauge | `partition` |
//! | `partitions_offline`, `partitions_under_replicated` | gauge | |
//! | `storage_keys`, `storage_segments`, `storage_disk_bytes`, `storage_dead_bytes`, `storage_corrupt_ranges` | gauge | |
//! | `storage_records_written_total`, `storage_fsyncs_total`, `storage_merges_total`, `storage_merge_bytes_written_total`, `cache_hits_total`, `cache_misses_total`, `cache_fills_total` | counter | |
//! | `storage_fsync_duration_seconds` | histogram | |
//! | `is_controller` | gauge | |
//! | `zk_session_connected`, `zk_lease_valid`, `cluster_live_nodes` | gauge (cluster mode) | |
//!
//! `request_duration_seconds` has a series for every command with outcome
//! `ok` from the start (so rates exist before the first request); error
//! outcomes appear once they happen. Its `_count` is the request counter.
//!
//! Invariants: a scrape never touches the request path (it reads the
//! atomics and runs engine `status` on the blocking pool); a bad request
//! gets a 404/405, never a panic; a slow or silent client is dropped after
//! [`READ_TIMEOUT`]; at most `limits.metrics_max_connections` connections
//! are served at once, and `limits.max_connections_per_ip` per address,
//! taken after `accept` (a full endpoint closes its oldest connection for a
//! newcomer: see [`super::limits`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::metrics::{COMMAND_NAMES, Metrics, OUTCOMES, Snapshot};
use crate::error::{Error, Result};
use crate::storage::{BOUNDS_US, HistogramSnapshot};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (`metrics.listen`); the error names the setting.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {addr} (metrics.listen): {e}")))
}

/// Serves `GET /metrics` on `listener` for as long as the task runs.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    limits: &crate::config::limits::Limits,
) {
    // Every scrape is one request on a fresh or kept-alive connection:
    // each counts as half-open until hyper ends it, so a full endpoint
    // closes its oldest connection for a newcomer.
    let tracker = super::limits::Tracker::new(
        "metrics",
        super::limits::ConnLimits {
            max: limits.metrics_max_connections,
            per_ip: limits.max_connections_per_ip,
            handshake: None,
            handshake_bytes: usize::MAX,
            idle: None,
        },
    );
    let mut incoming = std::pin::pin!(super::limits::incoming(listener, tracker));
    while let Some(conn) = futures_util::StreamExt::next(&mut incoming).await {
        let Ok(conn) = conn else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, metrics.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(conn), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics endpoint: connection failed: {e}");
            }
        });
    }
}

/// One HTTP request.
async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET\n".into(),
        ));
    }
    Ok(match metrics.collect().await.and_then(|s| render(&s)) {
        Ok(text) => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            text,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("cannot collect metrics: {e}\n"),
        ),
    })
}

/// `snapshot` in the Prometheus text format.
pub fn render(snapshot: &Snapshot) -> Result<String> {
    let mut registry = Registry::with_prefix("caskade");
    registry.register_collector(Box::new(Exposition(snapshot.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .map_err(|e| Error::Internal(format!("cannot encode metrics: {e}")))?;
    Ok(out)
}

/// A snapshot as a collector of one scrape.
#[derive(Debug)]
struct Exposition(Snapshot);

/// Histogram buckets as prometheus-client takes them: (bound in seconds,
/// count in that bucket alone); the encoder makes them cumulative.
fn buckets(h: &HistogramSnapshot) -> Vec<(f64, u64)> {
    BOUNDS_US
        .iter()
        .map(|&b| b as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(h.buckets)
        .collect()
}

/// Writes one histogram.
fn histogram(
    enc: &mut prometheus_client::encoding::MetricEncoder,
    h: &HistogramSnapshot,
) -> std::fmt::Result {
    enc.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count(), &buckets(h), None)
}

/// Writes one unlabelled gauge or counter.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => e.encode_counter::<NoLabelSet, u64, u64>(&v, None),
        _ => ConstGauge::new(v as i64).encode(e),
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let gauge = MetricType::Gauge;
        let counter = MetricType::Counter;
        {
            let mut e = encoder.encode_descriptor(
                "node_info",
                "This node: its id and mode (value 1)",
                None,
                gauge,
            )?;
            let labels = [("node_id", s.node_id.as_str()), ("mode", s.mode)];
            ConstGauge::new(1).encode(e.encode_family(&labels)?)?;
        }
        single(
            &mut encoder,
            "uptime_seconds",
            "Seconds since the node started serving",
            gauge,
            s.uptime.as_secs(),
        )?;
        {
            let mut e = encoder.encode_descriptor(
                "request_duration_seconds",
                "Latency of client requests at the gRPC service, by command and outcome; _count counts them",
                None,
                MetricType::Histogram,
            )?;
            for (c, command) in COMMAND_NAMES.iter().enumerate() {
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    let h = &s.requests[c][o];
                    if o != 0 && h.count() == 0 {
                        continue;
                    }
                    let labels = [("command", *command), ("outcome", *outcome)];
                    histogram(&mut e.encode_family(&labels)?, h)?;
                }
            }
        }
        type Field = fn(&super::metrics::PartitionFigures) -> u64;
        let per_partition: [(&str, &str, Field); 6] = [
            (
                "partition_log_end_offset",
                "Offset the next record of this node's replica will get",
                |p| p.log_end,
            ),
            (
                "partition_high_watermark",
                "Committed offset, as this node knows it",
                |p| p.high_watermark,
            ),
            (
                "partition_leader_epoch",
                "Leader epoch, as this node knows it",
                |p| u64::from(p.leader_epoch),
            ),
            (
                "partition_isr_size",
                "In-sync replicas, as this node knows them",
                |p| p.isr.len() as u64,
            ),
            ("partition_replicas", "Assigned replicas", |p| {
                p.replicas.len() as u64
            }),
            (
                "partition_is_leader",
                "1 if this node leads the partition now",
                |p| u64::from(p.is_leader),
            ),
        ];
        for (name, help, field) in per_partition {
            let mut e = encoder.encode_descriptor(name, help, None, gauge)?;
            for p in &s.partitions {
                let labels = [("partition", p.id)];
                ConstGauge::new(field(p) as i64).encode(e.encode_family(&labels)?)?;
            }
        }
        single(
            &mut encoder,
            "partitions_offline",
            "Partitions without a leader, among those whose state this node knows",
            gauge,
            s.offline,
        )?;
        single(
            &mut encoder,
            "partitions_under_replicated",
            "Partitions with fewer in-sync than assigned replicas, among those whose state this node knows",
            gauge,
            s.under_replicated,
        )?;
        let st = &s.storage;
        let storage: [(&str, &str, MetricType, u64); 13] = [
            ("storage_keys", "Live keys, all partitions", gauge, st.keys),
            ("storage_segments", "Segment files", gauge, st.segments),
            (
                "storage_disk_bytes",
                "Bytes of segment files",
                gauge,
                st.disk_bytes,
            ),
            (
                "storage_dead_bytes",
                "Bytes of segment files merge would reclaim",
                gauge,
                st.dead_bytes,
            ),
            (
                "storage_corrupt_ranges",
                "Corrupt byte ranges found at open (never served)",
                gauge,
                st.corrupt_ranges,
            ),
            (
                "storage_records_written",
                "Records written",
                counter,
                st.records_written,
            ),
            (
                "storage_fsyncs",
                "fsync calls on segment files",
                counter,
                st.fsyncs,
            ),
            ("storage_merges", "Merges completed", counter, st.merges),
            (
                "storage_merge_bytes_written",
                "Bytes of segments written by merges",
                counter,
                st.merge_bytes_written,
            ),
            (
                "cache_hits",
                "Reads answered from the value cache",
                counter,
                st.cache_hits,
            ),
            (
                "cache_misses",
                "Reads of a live key whose value was not cached",
                counter,
                st.cache_misses,
            ),
            (
                "cache_fills",
                "Values of written records offered to the value cache",
                counter,
                st.cache_fills,
            ),
            (
                "is_controller",
                "1 if this node is the cluster's controller",
                gauge,
                u64::from(s.is_controller()),
            ),
        ];
        for (name, help, kind, v) in storage {
            single(&mut encoder, name, help, kind, v)?;
        }
        {
            let mut e = encoder.encode_descriptor(
                "storage_fsync_duration_seconds",
                "Latency of fsync calls on segment files",
                None,
                MetricType::Histogram,
            )?;
            histogram(&mut e, &st.fsync_latency)?;
        }
        if let Some(zk) = &s.zk {
            single(
                &mut encoder,
                "zk_session_connected",
                "1 while this node's ZooKeeper session has a live connection",
                gauge,
                u64::from(zk.session_connected),
            )?;
            single(
                &mut encoder,
                "zk_lease_valid",
                "1 while this node's ZooKeeper session is established and was heard from within 2/3 of its timeout (it may lead)",
                gauge,
                u64::from(zk.lease_valid),
            )?;
            single(
                &mut encoder,
                "cluster_live_nodes",
                "Nodes registered in ZooKeeper, as this node last saw them",
                gauge,
                zk.live_nodes,
            )?;
        }
        Ok(())
    }
}
