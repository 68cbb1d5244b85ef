//! `caskade-cli cluster reassign status --watch`: progress bars (indicatif)
//! of the replicas being added, one per partition and one overall, polled
//! every `--interval-ms` from `ReassignStatus` and the `cluster` gather,
//! until `/admin/reassign` is gone.
//!
//! Progress of a partition: the mean over its replicas being added of
//! (their log end offset) / (the leader's), in per mille; a partition that
//! left the reassignment is done (1000). Overall: the mean over every
//! partition seen in the reassignment since the watch started.

use std::collections::BTreeMap;
use std::time::Duration;

use caskade::client::Client;
use caskade::config::ClientConfig;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cluster::{gather, merge};
use crate::reassign::{adding, partition_fraction, show_rate};

/// Bar length: progress is shown in per mille.
const SCALE: u64 = 1000;

/// A bar style, falling back to the default on a template error.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Watches until the reassignment is gone; the closing line on success.
pub async fn watch(
    client: &Client,
    config: &ClientConfig,
    interval: Duration,
) -> Result<String, String> {
    let bars = MultiProgress::new();
    let overall = bars.add(ProgressBar::new(SCALE));
    overall.set_style(style("overall       [{bar:40}] {percent:>3}% {msg}"));
    let mut parts: BTreeMap<u32, ProgressBar> = BTreeMap::new();
    let mut seen_any = false;
    loop {
        let status = client.reassign_status().await.map_err(|e| e.to_string())?;
        if !status.in_progress {
            for bar in parts.values() {
                bar.set_position(SCALE);
                bar.finish();
            }
            overall.set_position(SCALE);
            overall.finish();
            return Ok(if seen_any {
                "reassignment complete".into()
            } else {
                "no reassignment in progress".into()
            });
        }
        seen_any = true;
        let view = merge(&gather(client, config).await.map_err(|e| e.to_string())?);
        let pending: BTreeMap<u32, &Vec<String>> = status
            .partitions
            .iter()
            .map(|t| (t.partition, &t.replicas))
            .collect();
        for (&p, target) in &pending {
            let bar = parts.entry(p).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(SCALE));
                b.set_style(style(
                    "partition {prefix:>4} [{bar:40}] {percent:>3}% {msg}",
                ));
                b.set_prefix(p.to_string());
                b
            });
            let adds = adding(&view, p, target);
            bar.set_position((partition_fraction(&adds) * SCALE as f64) as u64);
            let msg: Vec<String> = adds
                .iter()
                .map(|a| match a.leader_end {
                    _ if !a.started => format!("{} not started", a.node),
                    Some(l) => format!("{} {}/{l}", a.node, a.log_end),
                    None => format!("{} {}/?", a.node, a.log_end),
                })
                .collect();
            bar.set_message(if msg.is_empty() {
                "in sync, finishing".into()
            } else {
                msg.join(", ")
            });
        }
        // Partitions that left the reassignment are done.
        for (p, bar) in &parts {
            if !pending.contains_key(p) && !bar.is_finished() {
                bar.set_position(SCALE);
                bar.set_message("done");
                bar.finish();
            }
        }
        let total: u64 = parts.values().map(|b| b.position()).sum();
        overall.set_position(total / parts.len().max(1) as u64);
        overall.set_message(format!(
            "{} of {} partition(s) left, throttle {}{}",
            pending.len(),
            parts.len(),
            show_rate(status.throttle_bytes_per_sec),
            if status.cancel { ", cancelling" } else { "" }
        ));
        tokio::time::sleep(interval).await;
    }
}
