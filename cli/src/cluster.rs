//! `cluster`: every partition's leader, epoch, replicas, ISR, replica log
//! end offsets and high watermark, and the nodes with the controller,
//! gathered from all the nodes at once and merged into one view.
//!
//! Gathering ([`gather`]): `Metadata` from the first seed that answers (the
//! client's address, then the other configured `addrs`), then, concurrently,
//! from every node that answer lists, and from any further node those
//! answers list. A node that does not answer is shown as down; the command
//! fails only when no seed answers.
//!
//! Merging ([`merge`]), per partition:
//! - leader, epoch, replicas and ISR come from the report with the highest
//!   leader epoch; at equal epochs from the leader's own report, then from
//!   the first node that answered (a follower's view may be stale);
//! - the high watermark comes from the leader's own report only, the only
//!   exact one: unknown (`-`, JSON `null`) when the leader did not answer;
//! - each replica's log end offset is the leader's record of it (its fetch
//!   position), else the replica's own report of itself, else unknown
//!   (`?`, JSON `null`).
//!
//! Nodes: those any answer lists, plus replicas that no answer lists (not
//! registered in the cluster, so down), sorted by id. The controller is the
//! id most answers name (ties: the earliest answer); none in standalone.
//!
//! Output: an aligned table ([`render`]), or one JSON line with `--json`
//! ([`ClusterView`] serialized) for scripts, e.g.
//! `jq -r '.partitions[0].leader'`.

use std::collections::HashSet;
use std::fmt::Write as _;

use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::proto::{MetadataResponse, PartitionInfo};
use serde::Serialize;

/// One node's answer to `Metadata`, or why there is none.
#[derive(Debug, Clone)]
pub struct Report {
    /// The node's id (as listed by the cluster, or as it answered).
    pub id: String,
    /// Its client address.
    pub addr: String,
    /// Its answer, or the error message.
    pub answer: Result<MetadataResponse, String>,
}

/// Whether a node answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It answered `Metadata`.
    Up,
    /// It did not answer, or no answer lists its address.
    Down,
}

/// A node of the merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Client address; `None` when no answer lists the node (a replica
    /// that is not registered in the cluster).
    pub addr: Option<String>,
    /// Up or down.
    pub status: Status,
    /// Whether it is the controller.
    pub controller: bool,
    /// Why it is down: the error of its `Metadata` call, or
    /// `not registered`.
    pub error: Option<String>,
}

/// One replica's log end offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaOffset {
    /// Node id of the replica.
    pub node_id: String,
    /// Its log end offset; `None` when neither the leader nor the replica
    /// reported it.
    pub log_end_offset: Option<u64>,
}

/// A partition of the merged view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    /// Partition id.
    pub id: u32,
    /// Node id of the leader; `None` while there is none.
    pub leader: Option<String>,
    /// Leader epoch.
    pub epoch: u64,
    /// Assigned replicas, in assignment order.
    pub replicas: Vec<String>,
    /// In-sync replicas.
    pub isr: Vec<String>,
    /// Log end offset of each replica, in `replicas` order.
    pub log_end_offsets: Vec<ReplicaOffset>,
    /// High watermark as the leader reports it; `None` when the leader did
    /// not answer.
    pub high_watermark: Option<u64>,
    /// The replicas the leader reports a log end for: itself and the
    /// followers that fetched from it since it took over (a replica being
    /// added that never fetched is not among them); `None` when the leader
    /// did not answer.
    #[serde(skip)]
    pub fetched: Option<Vec<String>>,
}

/// The merged view, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// `standalone` or `cluster`, as the first answer says.
    pub mode: String,
    /// Node id of the controller, when one is known.
    pub controller: Option<String>,
    /// Every node, sorted by id.
    pub nodes: Vec<NodeView>,
    /// Every partition, by id.
    pub partitions: Vec<PartitionView>,
}

/// The seeds to try, in order: the client's address first, then the other
/// configured addresses, without duplicates.
fn seeds(client: &Client, config: &ClientConfig) -> Vec<String> {
    let mut out = vec![client.addr().to_string()];
    for a in &config.addrs {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// A client for `addr` with `config`'s timeouts.
fn client_for(config: &ClientConfig, addr: &str) -> caskade::Result<Client> {
    Client::new(&ClientConfig {
        addrs: vec![addr.to_string()],
        ..config.clone()
    })
}

/// Asks every node for `Metadata` (see the module doc). Fails with the
/// first seed's error when no seed answers.
pub async fn gather(client: &Client, config: &ClientConfig) -> caskade::Result<Vec<Report>> {
    let mut first_error = None;
    let mut first = None;
    for seed in seeds(client, config) {
        let answer = if seed == client.addr() {
            client.metadata().await
        } else {
            match client_for(config, &seed) {
                Ok(c) => c.metadata().await,
                Err(e) => Err(e),
            }
        };
        match answer {
            Ok(m) => {
                first = Some((seed, m));
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((seed, first)) = first else {
        return Err(first_error.expect("at least one seed was tried"));
    };
    let addr = first
        .nodes
        .iter()
        .find(|n| n.id == first.node_id)
        .map_or(seed, |n| n.client_addr.clone());
    let mut known: Vec<(String, String)> = Vec::new();
    let mut asked: HashSet<String> = HashSet::from([first.node_id.clone()]);
    learn(&mut known, &first);
    let mut reports = vec![Report {
        id: first.node_id.clone(),
        addr,
        answer: Ok(first),
    }];
    // Rounds until no answer lists a node not asked yet.
    loop {
        let batch: Vec<(String, String)> = known
            .iter()
            .filter(|(id, _)| !asked.contains(id))
            .cloned()
            .collect();
        if batch.is_empty() {
            break;
        }
        let mut tasks = Vec::with_capacity(batch.len());
        for (id, addr) in batch {
            asked.insert(id.clone());
            let config = config.clone();
            tasks.push(tokio::spawn(async move {
                let answer = match client_for(&config, &addr) {
                    Ok(c) => c.metadata().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                Report { id, addr, answer }
            }));
        }
        for task in tasks {
            let report = task
                .await
                .map_err(|e| caskade::Error::Internal(format!("metadata task failed: {e}")))?;
            if let Ok(m) = &report.answer {
                learn(&mut known, m);
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Adds the nodes `m` lists that `known` lacks.
fn learn(known: &mut Vec<(String, String)>, m: &MetadataResponse) {
    for n in &m.nodes {
        if !known.iter().any(|(id, _)| *id == n.id) {
            known.push((n.id.clone(), n.client_addr.clone()));
        }
    }
}

/// Merges the reports into one view (see the module doc). `reports` is in
/// the order the answers were asked for, the first seed's first.
pub fn merge(reports: &[Report]) -> ClusterView {
    let answers: Vec<(&str, &MetadataResponse)> = reports
        .iter()
        .filter_map(|r| r.answer.as_ref().ok().map(|m| (r.id.as_str(), m)))
        .collect();
    let mode = answers
        .first()
        .map_or_else(String::new, |(_, m)| m.mode.clone());
    let controller = most_named(answers.iter().map(|(_, m)| m.controller.as_str()));

    let mut ids: Vec<u32> = answers
        .iter()
        .flat_map(|(_, m)| m.partitions.iter().map(|p| p.id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let partitions: Vec<PartitionView> = ids
        .into_iter()
        .map(|id| merge_partition(id, &answers))
        .collect();

    let mut nodes: Vec<NodeView> = Vec::new();
    for r in reports {
        if nodes.iter().any(|n| n.id == r.id) {
            continue;
        }
        nodes.push(NodeView {
            id: r.id.clone(),
            addr: Some(r.addr.clone()),
            status: if r.answer.is_ok() {
                Status::Up
            } else {
                Status::Down
            },
            controller: false,
            error: r.answer.as_ref().err().cloned(),
        });
    }
    let listed = answers.iter().flat_map(|(_, m)| {
        m.nodes
            .iter()
            .map(|n| (n.id.as_str(), n.client_addr.as_str()))
    });
    let replicas = partitions
        .iter()
        .flat_map(|p| p.replicas.iter().chain(p.leader.iter()))
        .map(|id| (id.as_str(), ""));
    for (id, addr) in listed.chain(replicas) {
        if id.is_empty() || nodes.iter().any(|n| n.id == id) {
            continue;
        }
        nodes.push(NodeView {
            id: id.to_string(),
            addr: (!addr.is_empty()).then(|| addr.to_string()),
            status: Status::Down,
            controller: false,
            error: Some(if addr.is_empty() {
                "not registered".into()
            } else {
                "not asked".into()
            }),
        });
    }
    for n in &mut nodes {
        n.controller = controller.as_deref() == Some(n.id.as_str());
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    ClusterView {
        mode,
        controller,
        nodes,
        partitions,
    }
}

/// The non-empty name given most often; the earliest on ties.
fn most_named<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for name in names.filter(|n| !n.is_empty()) {
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    let best = counts.iter().map(|(_, c)| *c).max()?;
    counts
        .into_iter()
        .find(|(_, c)| *c == best)
        .map(|(n, _)| n.to_string())
}

/// Merges partition `id` from the answers (see the module doc).
fn merge_partition(id: u32, answers: &[(&str, &MetadataResponse)]) -> PartitionView {
    let views: Vec<(&str, &PartitionInfo)> = answers
        .iter()
        .filter_map(|(node, m)| m.partitions.iter().find(|p| p.id == id).map(|p| (*node, p)))
        .collect();
    // Highest epoch, then the leader's own report, then the earliest.
    let mut best = views[0];
    for v in &views[1..] {
        let key = |(node, p): (&str, &PartitionInfo)| (p.leader_epoch, node == p.leader);
        if key(*v) > key(best) {
            best = *v;
        }
    }
    let (reporter, p) = best;
    let from_leader = !p.leader.is_empty() && reporter == p.leader;
    let leo = |replica: &str| {
        let leader_view = from_leader
            .then(|| p.offsets.iter().find(|o| o.node_id == replica))
            .flatten();
        let own_view = || {
            views
                .iter()
                .filter(|(node, _)| *node == replica)
                .find_map(|(_, q)| q.offsets.iter().find(|o| o.node_id == replica))
        };
        leader_view.or_else(own_view).map(|o| o.log_end_offset)
    };
    PartitionView {
        id,
        leader: (!p.leader.is_empty()).then(|| p.leader.clone()),
        epoch: p.leader_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        log_end_offsets: p
            .replicas
            .iter()
            .map(|r| ReplicaOffset {
                node_id: r.clone(),
                log_end_offset: leo(r),
            })
            .collect(),
        high_watermark: from_leader.then_some(p.high_watermark),
        fetched: from_leader.then(|| p.offsets.iter().map(|o| o.node_id.clone()).collect()),
    }
}

/// The view as text: a line with the controller and the nodes, then one
/// aligned row per partition.
pub fn render(view: &ClusterView) -> String {
    let controller = match (&view.controller, view.mode.as_str()) {
        (Some(c), _) => c.clone(),
        (None, "standalone") => "none (standalone)".into(),
        (None, _) => "none".into(),
    };
    let nodes: Vec<String> = view
        .nodes
        .iter()
        .map(|n| match (&n.addr, n.status) {
            (Some(a), Status::Up) => format!("{} {a} (up)", n.id),
            (Some(a), Status::Down) => format!("{} {a} (down)", n.id),
            (None, _) => format!("{} (down, not registered)", n.id),
        })
        .collect();
    let mut out = format!("controller: {controller}   nodes: {}", nodes.join(", "));
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let mut rows = vec![
        [
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "ISR",
            "LOG END OFFSETS",
            "HW",
        ]
        .map(String::from),
    ];
    for p in &view.partitions {
        let offsets: Vec<String> = p
            .log_end_offsets
            .iter()
            .map(|o| match o.log_end_offset {
                Some(n) => format!("{}={n}", o.node_id),
                None => format!("{}=?", o.node_id),
            })
            .collect();
        rows.push([
            p.id.to_string(),
            dash(p.leader.clone().unwrap_or_default()),
            p.epoch.to_string(),
            dash(p.replicas.join(",")),
            dash(p.isr.join(",")),
            dash(offsets.join(" ")),
            p.high_watermark
                .map_or_else(|| "-".into(), |h| h.to_string()),
        ]);
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in &rows {
        out.push('\n');
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use caskade::proto::{self, NodeInfo};

    fn node(id: &str, port: u16) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            client_addr: format!("127.0.0.1:{port}"),
        }
    }

    /// Partition `id` led by `leader` at `epoch`, replicas node-1..3.
    fn part(
        id: u32,
        leader: &str,
        epoch: u64,
        isr: &[&str],
        hw: u64,
        offsets: &[(&str, u64)],
    ) -> PartitionInfo {
        PartitionInfo {
            id,
            leader: leader.into(),
            leader_epoch: epoch,
            replicas: vec!["node-1".into(), "node-2".into(), "node-3".into()],
            isr: isr.iter().map(|s| s.to_string()).collect(),
            high_watermark: hw,
            offsets: offsets
                .iter()
                .map(|(n, o)| proto::ReplicaOffset {
                    node_id: n.to_string(),
                    log_end_offset: *o,
                })
                .collect(),
        }
    }

    fn answer(id: &str, port: u16, controller: &str, partitions: Vec<PartitionInfo>) -> Report {
        Report {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            answer: Ok(MetadataResponse {
                node_id: id.into(),
                mode: "cluster".into(),
                partitioner: "fnv1a64-mod".into(),
                partition_count: 2,
                nodes: vec![
                    node("node-1", 7381),
                    node("node-2", 7382),
                    node("node-3", 7383),
                ],
                partitions,
                limits: None,
                controller: controller.into(),
            }),
        }
    }

    /// Leader's HW and follower offsets win; a replica's own report fills
    /// what the leader lacks; a stale follower view loses to a higher
    /// epoch; a down node is shown with its address.
    #[test]
    fn merges_reports_from_every_node() {
        let reports = vec![
            // node-2: leads partition 1, follows 0 with a stale view (epoch 2).
            answer(
                "node-2",
                7382,
                "node-1",
                vec![
                    part(
                        0,
                        "node-3",
                        2,
                        &["node-1", "node-2", "node-3"],
                        90,
                        &[("node-2", 120)],
                    ),
                    part(
                        1,
                        "node-2",
                        5,
                        &["node-2"],
                        40,
                        &[("node-2", 41), ("node-1", 39)],
                    ),
                ],
            ),
            answer(
                "node-1",
                7381,
                "node-1",
                vec![
                    part(
                        0,
                        "node-1",
                        3,
                        &["node-1", "node-2"],
                        120,
                        &[("node-1", 120), ("node-2", 118)],
                    ),
                    part(1, "node-2", 5, &["node-2"], 38, &[("node-1", 39)]),
                ],
            ),
            Report {
                id: "node-3".into(),
                addr: "127.0.0.1:7383".into(),
                answer: Err(
                    "could not connect to caskade at 127.0.0.1:7383: connection refused".into(),
                ),
            },
        ];
        let view = merge(&reports);
        assert_eq!(
            render(&view),
            "controller: node-1   nodes: node-1 127.0.0.1:7381 (up), node-2 127.0.0.1:7382 (up), node-3 127.0.0.1:7383 (down)\n\
             PARTITION  LEADER  EPOCH  REPLICAS              ISR            LOG END OFFSETS                 HW\n\
             0          node-1  3      node-1,node-2,node-3  node-1,node-2  node-1=120 node-2=118 node-3=?  120\n\
             1          node-2  5      node-1,node-2,node-3  node-2         node-1=39 node-2=41 node-3=?    40"
        );
        assert_eq!(
            serde_json::to_string(&view.nodes[2]).unwrap(),
            r#"{"id":"node-3","addr":"127.0.0.1:7383","status":"down","controller":false,"error":"could not connect to caskade at 127.0.0.1:7383: connection refused"}"#
        );
        assert_eq!(
            serde_json::to_string(&view.partitions[0]).unwrap(),
            r#"{"id":0,"leader":"node-1","epoch":3,"replicas":["node-1","node-2","node-3"],"isr":["node-1","node-2"],"log_end_offsets":[{"node_id":"node-1","log_end_offset":120},{"node_id":"node-2","log_end_offset":118},{"node_id":"node-3","log_end_offset":null}],"high_watermark":120}"#
        );
    }

    /// Without the leader's report the HW is unknown, the replicas'
    /// own offsets still show, and a replica no one lists is not registered.
    #[test]
    fn leader_missing_and_unregistered_replica() {
        let mut only = answer(
            "node-2",
            7382,
            "",
            vec![part(
                0,
                "node-1",
                4,
                &["node-1", "node-2"],
                7,
                &[("node-2", 9)],
            )],
        );
        if let Ok(m) = &mut only.answer {
            m.nodes = vec![node("node-1", 7381), node("node-2", 7382)];
        }
        let reports = vec![
            only,
            Report {
                id: "node-1".into(),
                addr: "127.0.0.1:7381".into(),
                answer: Err("timed out: no reply".into()),
            },
        ];
        let view = merge(&reports);
        assert_eq!(
            render(&view),
            "controller: none   nodes: node-1 127.0.0.1:7381 (down), node-2 127.0.0.1:7382 (up), node-3 (down, not registered)\n\
             PARTITION  LEADER  EPOCH  REPLICAS              ISR            LOG END OFFSETS             HW\n\
             0          node-1  4      node-1,node-2,node-3  node-1,node-2  node-1=? node-2=9 node-3=?  -"
        );
        assert_eq!(view.controller, None);
        assert_eq!(view.nodes[2].error.as_deref(), Some("not registered"));
        assert_eq!(view.partitions[0].high_watermark, None);
    }

    #[test]
    fn no_leader_and_empty_isr_are_dashes() {
        let reports = vec![answer(
            "node-1",
            7381,
            "node-1",
            vec![part(0, "", 6, &[], 0, &[])],
        )];
        let out = render(&merge(&reports));
        assert_eq!(
            out.lines().last().unwrap(),
            "0          -       6      node-1,node-2,node-3  -    node-1=? node-2=? node-3=?  -"
        );
    }

    #[test]
    fn controller_is_the_most_named() {
        assert_eq!(
            most_named(["a", "b", "b", ""].into_iter()).as_deref(),
            Some("b")
        );
        assert_eq!(most_named(["a", "b"].into_iter()).as_deref(), Some("a"));
        assert_eq!(most_named(["", ""].into_iter()), None);
    }
}
