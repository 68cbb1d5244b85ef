//! Parsing and rendering of the reassignment commands (exact output).

use caskade::proto::PartitionTarget;

use super::*;
use crate::cluster::{NodeView, PartitionView, ReplicaOffset};

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn parse(s: &str) -> Result<AdminCommand, clap::Error> {
    AdminArgs::try_parse_from(words(s)).map(|a| a.command)
}

fn ids(s: &str) -> Vec<String> {
    s.split(',').map(String::from).collect()
}

fn node(id: &str, up: bool) -> NodeView {
    NodeView {
        id: id.into(),
        addr: Some("127.0.0.1:1".into()),
        status: if up { Status::Up } else { Status::Down },
        controller: false,
        error: None,
    }
}

fn part(id: u32, replicas: &str, isr: &str, offsets: &[(&str, Option<u64>)]) -> PartitionView {
    let replicas = ids(replicas);
    PartitionView {
        id,
        leader: replicas.first().cloned(),
        epoch: 1,
        isr: ids(isr),
        log_end_offsets: offsets
            .iter()
            .map(|(n, o)| ReplicaOffset {
                node_id: n.to_string(),
                log_end_offset: *o,
            })
            .collect(),
        fetched: Some(offsets.iter().map(|(n, _)| n.to_string()).collect()),
        replicas,
        high_watermark: None,
    }
}

fn view(nodes: Vec<NodeView>, partitions: Vec<PartitionView>) -> ClusterView {
    ClusterView {
        mode: "cluster".into(),
        controller: Some("node-1".into()),
        nodes,
        partitions,
    }
}

#[test]
fn subcommands_parse() {
    assert!(is_admin(&words("cluster reassign plan")));
    assert!(is_admin(&words("cluster decommission node-3")));
    assert!(!is_admin(&words("cluster --json")));
    assert!(!is_admin(&words("cluster")));
    assert_eq!(
        parse("cluster reassign plan --add node-4 --remove node-2 --nodes a,b,c --out p.json")
            .unwrap(),
        AdminCommand::Reassign {
            step: ReassignCommand::Plan {
                add: ids("node-4"),
                remove: ids("node-2"),
                nodes: Some(ids("a,b,c")),
                out: Some("p.json".into()),
            }
        }
    );
    assert_eq!(
        parse("cluster reassign execute --plan p.json --throttle 10MiB").unwrap(),
        AdminCommand::Reassign {
            step: ReassignCommand::Execute {
                plan: "p.json".into(),
                throttle: 10 << 20,
            }
        }
    );
    assert_eq!(
        parse("cluster reassign status --watch").unwrap(),
        AdminCommand::Reassign {
            step: ReassignCommand::Status {
                watch: true,
                interval_ms: 1000
            }
        }
    );
    assert_eq!(
        parse("cluster reassign throttle 20MiB").unwrap(),
        AdminCommand::Reassign {
            step: ReassignCommand::Throttle { rate: 20 << 20 }
        }
    );
    assert_eq!(
        parse("cluster decommission node-3 --throttle 512KiB").unwrap(),
        AdminCommand::Decommission {
            node: "node-3".into(),
            throttle: 512 << 10
        }
    );
    assert_eq!(
        parse("cluster recommission node-3").unwrap(),
        AdminCommand::Recommission {
            node: "node-3".into()
        }
    );
    // Usage errors (exit code 2 through `tool_args`).
    let e = parse("cluster reassign execute").unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    assert!(e.use_stderr());
    let e = parse("cluster reassign throttle fast").unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(
        e.to_string()
            .contains("'fast' is not a rate: use bytes/s such as 10MiB, 512KiB or 1048576"),
        "{e}"
    );
    assert_eq!(
        parse("cluster reassign frobnicate").unwrap_err().kind(),
        clap::error::ErrorKind::InvalidSubcommand
    );
}

#[test]
fn rates_parse_and_show() {
    let cases = [
        ("0", 0),
        ("1048576", 1 << 20),
        ("10MiB", 10 << 20),
        ("10mib/s", 10 << 20),
        ("512KiB", 512 << 10),
        ("2GiB", 2 << 30),
        ("10MB", 10_000_000),
        ("3KB", 3_000),
        ("7B", 7),
    ];
    for (s, v) in cases {
        assert_eq!(parse_rate(s), Ok(v), "{s}");
    }
    for bad in ["", "MiB", "10 XB", "-1", "1.5MiB", "99999999999999999999"] {
        assert!(parse_rate(bad).is_err(), "{bad}");
    }
    assert_eq!(show_rate(0), "unthrottled");
    assert_eq!(show_rate(10 << 20), "10 MiB/s");
    assert_eq!(show_rate(512 << 10), "512 KiB/s");
    assert_eq!(show_rate(1 << 30), "1 GiB/s");
    assert_eq!(show_rate(1500), "1500 B/s");
}

/// The nodes that answered, plus --add, minus --remove and the
/// decommissioned; --nodes replaces the answered ones.
#[test]
fn eligible_nodes() {
    let v = view(
        vec![
            node("node-1", true),
            node("node-2", true),
            node("node-3", false),
            node("node-4", true),
        ],
        vec![],
    );
    assert_eq!(
        eligible(&v, &[], &[], &[], None),
        ids("node-1,node-2,node-4")
    );
    assert_eq!(
        eligible(&v, &ids("node-4"), &ids("node-5"), &ids("node-1"), None),
        ids("node-2,node-5")
    );
    assert_eq!(eligible(&v, &[], &[], &[], Some(&ids("b,a,b"))), ids("a,b"));
}

/// `reassign plan` on 3 nodes with node-4 joined: the moves and the
/// per-node counts after, exactly.
#[test]
fn plan_output() {
    let v = view(
        vec![
            node("node-1", true),
            node("node-2", true),
            node("node-3", true),
            node("node-4", true),
        ],
        vec![
            part(0, "node-1,node-2,node-3", "node-1,node-2,node-3", &[]),
            part(1, "node-2,node-3,node-1", "node-2,node-3,node-1", &[]),
            part(2, "node-3,node-1,node-2", "node-3,node-1,node-2", &[]),
            part(3, "node-1,node-2,node-3", "node-1,node-2,node-3", &[]),
        ],
    );
    let (cur, rf) = current(&v);
    assert_eq!(rf, 3);
    let nodes = eligible(&v, &[], &[], &[], None);
    let p = plan::plan(&cur, &nodes, rf).unwrap();
    assert_eq!(
        render_plan(&cur, &p, &nodes),
        "PARTITION  FROM                  TO\n\
         0          node-1,node-2,node-3  node-4,node-1,node-3\n\
         1          node-2,node-3,node-1  node-2,node-3,node-4\n\
         3          node-1,node-2,node-3  node-1,node-2,node-4\n\
         3 replica(s) move, 3 partition(s) change; replicas/preferred leaders per node after: \
         node-1=3/1 node-2=3/1 node-3=3/1 node-4=3/1"
    );
    let file = PlanFile {
        version: 1,
        partitions: p.changed.clone(),
    };
    assert_eq!(
        serde_json::to_string(&file).unwrap(),
        r#"{"version":1,"partitions":{"0":["node-4","node-1","node-3"],"1":["node-2","node-3","node-4"],"3":["node-1","node-2","node-4"]}}"#
    );
    // The file `execute` reads back, unknown fields ignored.
    let back: PlanFile = serde_json::from_str(
        r#"{"partitions":{"0":["node-4","node-2","node-3"]},"throttle_bytes_per_sec":5}"#,
    )
    .unwrap();
    assert_eq!(back.version, 1);
    assert_eq!(back.partitions[&0], ids("node-4,node-2,node-3"));
    let balanced = plan::plan(&p.target, &nodes, rf).unwrap();
    assert_eq!(
        render_plan(&p.target, &balanced, &nodes),
        "the replicas and preferred leaders are balanced: nothing to move"
    );
}

/// `reassign status`: partition 3 adds node-4 (in the replicas, 120 of
/// the leader's 480), partition 5 has not started (node-4 not a replica
/// yet), partition 6 is in sync and finishing.
#[test]
fn status_output() {
    let v = view(
        vec![],
        vec![
            part(
                3,
                "node-1,node-2,node-3,node-4",
                "node-1,node-2,node-3",
                &[("node-1", Some(480)), ("node-4", Some(120))],
            ),
            part(
                5,
                "node-2,node-3,node-1",
                "node-2,node-3,node-1",
                &[("node-2", Some(10))],
            ),
            part(6, "node-1,node-4", "node-1,node-4", &[("node-1", Some(0))]),
            // node-4 is listed but has not fetched yet: the leader does not
            // report it, its own answer says log end 0.
            PartitionView {
                fetched: Some(ids("node-1")),
                ..part(
                    7,
                    "node-1,node-2,node-3,node-4",
                    "node-1,node-2,node-3",
                    &[("node-1", Some(0)), ("node-4", Some(0))],
                )
            },
        ],
    );
    let status = ReassignStatusResponse {
        in_progress: true,
        throttle_bytes_per_sec: 10 << 20,
        cancel: false,
        partitions: vec![
            PartitionTarget {
                partition: 3,
                replicas: ids("node-1,node-2,node-4"),
            },
            PartitionTarget {
                partition: 5,
                replicas: ids("node-4,node-3,node-1"),
            },
            PartitionTarget {
                partition: 6,
                replicas: ids("node-4,node-1"),
            },
            PartitionTarget {
                partition: 7,
                replicas: ids("node-1,node-2,node-4"),
            },
        ],
        decommissioned: ids("node-3"),
    };
    assert_eq!(
        render_status(&status, &v),
        "reassignment in progress: 4 partition(s) left, throttle 10 MiB/s\n\
         PARTITION  REPLICAS                     TARGET                ADDING\n\
         3          node-1,node-2,node-3,node-4  node-1,node-2,node-4  node-4 120/480 (25%)\n\
         5          node-2,node-3,node-1         node-4,node-3,node-1  node-4 not started\n\
         6          node-1,node-4                node-4,node-1         - (in sync; finishing)\n\
         7          node-1,node-2,node-3,node-4  node-1,node-2,node-4  node-4 not started\n\
         decommissioned: node-3"
    );
    let adds = adding(&v, 3, &ids("node-1,node-2,node-4"));
    assert_eq!(adds.len(), 1);
    assert_eq!(adds[0].fraction, 0.25);
    assert_eq!(partition_fraction(&adds), 0.25);
    assert_eq!(partition_fraction(&[]), 1.0);
    let fresh = adding(&v, 7, &ids("node-1,node-2,node-4"));
    assert_eq!((fresh[0].started, fresh[0].fraction), (false, 0.0));
    let none = ReassignStatusResponse::default();
    assert_eq!(render_status(&none, &v), "no reassignment in progress");
    let cancelling = ReassignStatusResponse {
        in_progress: true,
        cancel: true,
        ..Default::default()
    };
    assert_eq!(
        render_status(&cancelling, &v),
        "reassignment in progress: 0 partition(s) left, throttle unthrottled, cancelling \
         (reverting the partitions not finished)\nPARTITION  REPLICAS  TARGET  ADDING"
    );
}
