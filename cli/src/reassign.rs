//! `caskade-cli cluster reassign plan|execute|status|cancel|throttle`,
//! `cluster decommission NODE` and `cluster recommission NODE`: moving
//! replicas between nodes (docs/API.md, "Reassignment").
//!
//! - `plan` reads the current replicas with the `cluster` gather
//!   (src/cluster.rs), takes the nodes that answered (or `--nodes`), adds
//!   `--add`, drops `--remove` and the decommissioned nodes, and prints the
//!   moves (partition, from, to) and the JSON plan
//!   (`{"version":1,"partitions":{"3":["node-1","node-2","node-4"]}}`,
//!   first replica = preferred leader), or writes it to `--out`. The plan
//!   comes from `caskade::cluster::plan` (balanced replicas and preferred
//!   leaders, fewest moves).
//! - `execute --plan FILE [--throttle RATE]` sends it (`Reassign`); the
//!   controller executes it.
//! - `status [--watch]`: the partitions not finished yet, with the progress
//!   of each replica being added (a target replica not in the ISR yet):
//!   its log end offset over the leader's, from `Metadata`. `--watch`
//!   shows progress bars (per partition and overall) until the
//!   reassignment is gone.
//! - `decommission NODE`: marks the node decommissioned, then executes a
//!   plan moving every replica off it; `recommission NODE` removes the mark.
//!
//! Rates (`--throttle`, `throttle RATE`) are bytes per second: a number,
//! optionally with `B`, `KiB`, `MiB`, `GiB` (1024) or `KB`, `MB`, `GB`
//! (1000), and an optional `/s`; `0` means unthrottled.
//!
//! Exit codes: 0 done, 1 an error reply or failure, 2 bad usage.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use caskade::client::Client;
use caskade::cluster::plan;
use caskade::config::ClientConfig;
use caskade::proto::ReassignStatusResponse;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterView, Status, gather, merge};

/// `caskade-cli cluster reassign|decommission|recommission ...`.
#[derive(Parser, Debug, PartialEq, Eq)]
#[command(name = "cluster", about = "Move replicas between nodes")]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin subcommands of `cluster`.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Plan, start, watch, cancel or throttle a reassignment.
    Reassign {
        /// The reassignment step.
        #[command(subcommand)]
        step: ReassignCommand,
    },
    /// Mark a node decommissioned and move every replica off it.
    Decommission {
        /// Node id, e.g. node-3.
        node: String,
        /// Catch-up bytes/s per node for the moves (e.g. 10MiB); 0 = unthrottled.
        #[arg(long, value_parser = parse_rate, default_value = "0")]
        throttle: u64,
    },
    /// Remove a node's decommissioned mark (plans may use it again).
    Recommission {
        /// Node id.
        node: String,
    },
}

/// `cluster reassign ...`.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum ReassignCommand {
    /// Compute a balanced plan and print the moves and the JSON plan.
    Plan {
        /// A node to include besides the live ones (repeatable).
        #[arg(long, value_name = "NODE")]
        add: Vec<String>,
        /// A node to move every replica off (repeatable).
        #[arg(long, value_name = "NODE")]
        remove: Vec<String>,
        /// The nodes to spread over, instead of the live ones (a,b,c).
        #[arg(long, value_delimiter = ',', value_name = "A,B,C")]
        nodes: Option<Vec<String>>,
        /// Write the JSON plan to this file instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Start the reassignment of a plan file.
    Execute {
        /// The JSON plan (`reassign plan --out FILE`).
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
        /// Catch-up bytes/s per node (e.g. 10MiB, 512KiB, 1048576); 0 = unthrottled.
        #[arg(long, value_parser = parse_rate, default_value = "0")]
        throttle: u64,
    },
    /// Show the reassignment in progress.
    Status {
        /// Progress bars until the reassignment is done.
        #[arg(long)]
        watch: bool,
        /// Poll period of --watch, in ms.
        #[arg(long, default_value = "1000", value_name = "MS")]
        interval_ms: u64,
    },
    /// Revert the partitions not finished yet.
    Cancel,
    /// Change the throttle of the reassignment in progress.
    Throttle {
        /// Bytes/s per node (e.g. 20MiB); 0 = unthrottled.
        #[arg(value_parser = parse_rate)]
        rate: u64,
    },
}

/// The plan file (the `/admin/reassign` format without throttle and
/// cancel; unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanFile {
    /// Format version, 1.
    #[serde(default = "one")]
    pub version: u32,
    /// Partition id -> target replicas, first = preferred leader.
    pub partitions: BTreeMap<u32, Vec<String>>,
}

/// The default plan version.
fn one() -> u32 {
    1
}

/// Whether `words` (`cluster ...`) is one of these admin commands.
pub fn is_admin<W: AsRef<std::ffi::OsStr>>(words: &[W]) -> bool {
    words.first().is_some_and(|w| w.as_ref() == "cluster")
        && words
            .get(1)
            .and_then(|w| w.as_ref().to_str())
            .is_some_and(|w| ["reassign", "decommission", "recommission"].contains(&w))
}

/// Parses a rate: `10MiB`, `512KiB`, `1048576`, `10MB/s`, `0`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("'{s}' is not a rate: use bytes/s such as 10MiB, 512KiB or 1048576");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// A rate as text: `unthrottled`, `10 MiB/s`, `1500 B/s`.
pub fn show_rate(r: u64) -> String {
    match r {
        0 => "unthrottled".into(),
        r if r % (1 << 30) == 0 => format!("{} GiB/s", r >> 30),
        r if r % (1 << 20) == 0 => format!("{} MiB/s", r >> 20),
        r if r % (1 << 10) == 0 => format!("{} KiB/s", r >> 10),
        r => format!("{r} B/s"),
    }
}

/// The nodes a plan spreads over (see the module doc).
pub fn eligible(
    view: &ClusterView,
    decommissioned: &[String],
    add: &[String],
    remove: &[String],
    nodes: Option<&[String]>,
) -> Vec<String> {
    let mut out: Vec<String> = match nodes {
        Some(n) => n.to_vec(),
        None => view
            .nodes
            .iter()
            .filter(|n| n.status == Status::Up)
            .map(|n| n.id.clone())
            .collect(),
    };
    out.extend(add.iter().cloned());
    out.retain(|n| !remove.contains(n) && !decommissioned.contains(n) && !n.is_empty());
    out.sort();
    out.dedup();
    out
}

/// Current replicas by partition, and the replication factor (the most
/// common replica count).
pub fn current(view: &ClusterView) -> (BTreeMap<u32, Vec<String>>, usize) {
    let map: BTreeMap<u32, Vec<String>> = view
        .partitions
        .iter()
        .map(|p| (p.id, p.replicas.clone()))
        .collect();
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for r in map.values() {
        *counts.entry(r.len()).or_default() += 1;
    }
    let rf = counts
        .iter()
        .max_by_key(|(len, c)| (**c, **len))
        .map_or(0, |(len, _)| *len);
    (map, rf)
}

/// The moves table, the summary line, and per node counts after the plan.
pub fn render_plan(
    current: &BTreeMap<u32, Vec<String>>,
    p: &plan::Plan,
    nodes: &[String],
) -> String {
    if p.changed.is_empty() {
        return "the replicas and preferred leaders are balanced: nothing to move".into();
    }
    let mut rows = vec![["PARTITION".to_string(), "FROM".into(), "TO".into()]];
    for (id, to) in &p.changed {
        let from = current.get(id).map(|r| r.join(",")).unwrap_or_default();
        rows.push([id.to_string(), from, to.join(",")]);
    }
    let mut out = table(&rows);
    let per_node: Vec<String> = nodes
        .iter()
        .map(|n| {
            let reps = p.target.values().filter(|r| r.contains(n)).count();
            let leads = p.target.values().filter(|r| r.first() == Some(n)).count();
            format!("{n}={reps}/{leads}")
        })
        .collect();
    let _ = write!(
        out,
        "\n{} replica(s) move, {} partition(s) change; replicas/preferred leaders per node after: {}",
        p.moves(current),
        p.changed.len(),
        per_node.join(" ")
    );
    out
}

/// An aligned table (two spaces between columns, no trailing spaces).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            out.push('\n');
        }
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
    }
    out
}

/// Progress of one replica being added.
#[derive(Debug, Clone, PartialEq)]
pub struct Adding {
    /// Node id.
    pub node: String,
    /// Whether it is listed as a replica and fetched from the leader yet.
    pub started: bool,
    /// Its log end offset, when known (0 before it is a replica).
    pub log_end: u64,
    /// The leader's log end offset, when known.
    pub leader_end: Option<u64>,
    /// Share copied, 0.0 to 1.0.
    pub fraction: f64,
}

/// The replicas of `target` being added to partition `id`: those not in
/// its ISR yet, with their progress from `view`.
pub fn adding(view: &ClusterView, id: u32, target: &[String]) -> Vec<Adding> {
    let Some(p) = view.partitions.iter().find(|p| p.id == id) else {
        return Vec::new();
    };
    let leo = |n: &str| {
        p.log_end_offsets
            .iter()
            .find(|o| o.node_id == n)
            .and_then(|o| o.log_end_offset)
    };
    let leader_end = p.leader.as_deref().and_then(leo);
    target
        .iter()
        .filter(|n| !p.isr.contains(n))
        .map(|n| {
            // Started: listed, and it fetched from the leader (or, without
            // the leader's answer, some node reports its log end).
            let started = p.replicas.contains(n)
                && match &p.fetched {
                    Some(f) => f.contains(n),
                    None => leo(n).is_some(),
                };
            let log_end = if started { leo(n).unwrap_or(0) } else { 0 };
            let fraction = match leader_end {
                _ if !started => 0.0,
                Some(0) => 1.0,
                Some(l) => (log_end as f64 / l as f64).min(1.0),
                None => 0.0,
            };
            Adding {
                node: n.clone(),
                started,
                log_end,
                leader_end,
                fraction,
            }
        })
        .collect()
}

/// A partition's progress: the mean over the replicas being added (1.0
/// when none is left).
pub fn partition_fraction(adding: &[Adding]) -> f64 {
    if adding.is_empty() {
        return 1.0;
    }
    adding.iter().map(|a| a.fraction).sum::<f64>() / adding.len() as f64
}

/// One replica's progress as text: `node-4 120/480 (25%)`, or `node-4 not
/// started` before its first fetch.
fn show_adding(a: &Adding) -> String {
    if !a.started {
        return format!("{} not started", a.node);
    }
    match a.leader_end {
        Some(l) => format!(
            "{} {}/{l} ({:.0}%)",
            a.node,
            a.log_end,
            (a.fraction * 100.0).floor()
        ),
        None => format!("{} {}/? (leader log end unknown)", a.node, a.log_end),
    }
}

/// The one-shot `status` text.
pub fn render_status(s: &ReassignStatusResponse, view: &ClusterView) -> String {
    let mut out = if !s.in_progress {
        "no reassignment in progress".to_string()
    } else {
        let mut head = format!(
            "reassignment in progress: {} partition(s) left, throttle {}",
            s.partitions.len(),
            show_rate(s.throttle_bytes_per_sec)
        );
        if s.cancel {
            head.push_str(", cancelling (reverting the partitions not finished)");
        }
        let mut rows = vec![[
            "PARTITION".to_string(),
            "REPLICAS".into(),
            "TARGET".into(),
            "ADDING".into(),
        ]];
        for t in &s.partitions {
            let replicas = view
                .partitions
                .iter()
                .find(|p| p.id == t.partition)
                .map_or_else(|| "?".into(), |p| p.replicas.join(","));
            let adds: Vec<String> = adding(view, t.partition, &t.replicas)
                .iter()
                .map(show_adding)
                .collect();
            rows.push([
                t.partition.to_string(),
                replicas,
                t.replicas.join(","),
                if adds.is_empty() {
                    "- (in sync; finishing)".into()
                } else {
                    adds.join(", ")
                },
            ]);
        }
        format!("{head}\n{}", table(&rows))
    };
    if !s.decommissioned.is_empty() {
        let _ = write!(out, "\ndecommissioned: {}", s.decommissioned.join(","));
    }
    out
}

/// Runs an admin command; returns the exit code.
pub fn run(runtime: &tokio::runtime::Runtime, config: &ClientConfig, args: &AdminArgs) -> i32 {
    let client = match Client::new(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("(error) {e}");
            return 2;
        }
    };
    match runtime.block_on(execute(&client, config, &args.command)) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            0
        }
        Err(msg) => {
            eprintln!("(error) {msg}");
            1
        }
    }
}

/// The view and the status, for planning.
async fn state(
    client: &Client,
    config: &ClientConfig,
) -> Result<(ClusterView, ReassignStatusResponse), String> {
    let status = client.reassign_status().await.map_err(|e| e.to_string())?;
    let reports = gather(client, config).await.map_err(|e| e.to_string())?;
    Ok((merge(&reports), status))
}

/// Runs `cmd`; the text to print on success, the error message otherwise.
async fn execute(
    client: &Client,
    config: &ClientConfig,
    cmd: &AdminCommand,
) -> Result<String, String> {
    match cmd {
        AdminCommand::Reassign { step } => reassign(client, config, step).await,
        AdminCommand::Decommission { node, throttle } => {
            let status = client.reassign_status().await.map_err(|e| e.to_string())?;
            if status.in_progress {
                return Err(caskade::cluster::IN_PROGRESS.into());
            }
            client
                .decommission(node, false)
                .await
                .map_err(|e| e.to_string())?;
            // Planned and started; on failure the mark is removed again.
            let started = async {
                let (view, status) = state(client, config).await?;
                let (cur, rf) = current(&view);
                let nodes = eligible(&view, &status.decommissioned, &[], &[], None);
                let p = plan::plan(&cur, &nodes, rf).map_err(|e| e.to_string())?;
                if !p.changed.is_empty() {
                    client
                        .reassign(&p.changed, *throttle)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>((cur, p, nodes))
            };
            let (cur, p, nodes) = match started.await {
                Ok(s) => s,
                Err(e) => {
                    let undo = client.decommission(node, true).await;
                    return Err(match undo {
                        Ok(_) => format!("{e} ({node} is not decommissioned)"),
                        Err(u) => format!("{e}; {node} stays marked decommissioned ({u})"),
                    });
                }
            };
            if p.changed.is_empty() {
                return Ok(format!(
                    "{node} is decommissioned; it hosts no replica: nothing to move"
                ));
            }
            Ok(format!(
                "{node} is decommissioned; moving its replicas away ({}):\n{}\n\
                 `caskade-cli cluster reassign status --watch` shows the progress",
                show_rate(*throttle),
                render_plan(&cur, &p, &nodes)
            ))
        }
        AdminCommand::Recommission { node } => {
            client
                .decommission(node, true)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("{node} is no longer decommissioned"))
        }
    }
}

/// `cluster reassign STEP`.
async fn reassign(
    client: &Client,
    config: &ClientConfig,
    step: &ReassignCommand,
) -> Result<String, String> {
    match step {
        ReassignCommand::Plan {
            add,
            remove,
            nodes,
            out,
        } => {
            let (view, status) = state(client, config).await?;
            if status.in_progress {
                return Err(caskade::cluster::IN_PROGRESS.into());
            }
            let (cur, rf) = current(&view);
            let nodes = eligible(&view, &status.decommissioned, add, remove, nodes.as_deref());
            let p = plan::plan(&cur, &nodes, rf).map_err(|e| e.to_string())?;
            let file = PlanFile {
                version: 1,
                partitions: p.changed.clone(),
            };
            let json = serde_json::to_string(&file).map_err(|e| e.to_string())?;
            let text = render_plan(&cur, &p, &nodes);
            match out {
                Some(path) => {
                    std::fs::write(path, format!("{json}\n"))
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    Ok(format!("{text}\nplan written to {}", path.display()))
                }
                None => Ok(format!("{text}\n{json}")),
            }
        }
        ReassignCommand::Execute { plan, throttle } => {
            let data =
                std::fs::read(plan).map_err(|e| format!("cannot read {}: {e}", plan.display()))?;
            let file: PlanFile = serde_json::from_slice(&data)
                .map_err(|e| format!("{} is not a plan: {e}", plan.display()))?;
            client
                .reassign(&file.partitions, *throttle)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "reassignment of {} partition(s) started ({}); `caskade-cli cluster reassign \
                 status --watch` shows the progress",
                file.partitions.len(),
                show_rate(*throttle)
            ))
        }
        ReassignCommand::Status { watch, interval_ms } => {
            if *watch {
                crate::reassign_watch::watch(client, config, Duration::from_millis(*interval_ms))
                    .await
            } else {
                let (view, status) = state(client, config).await?;
                Ok(render_status(&status, &view))
            }
        }
        ReassignCommand::Cancel => {
            let s = client.reassign_cancel().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "cancelling: the controller reverts the {} partition(s) not finished",
                s.partitions.len()
            ))
        }
        ReassignCommand::Throttle { rate } => {
            client
                .reassign_throttle(*rate)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("throttle set to {}", show_rate(*rate)))
        }
    }
}

#[cfg(test)]
mod tests;
