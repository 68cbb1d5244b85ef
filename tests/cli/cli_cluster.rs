//! `caskade-cli cluster` against a real standalone server: the exact table
//! and JSON (one node, leader of every partition, no controller), the
//! fallback to the next configured seed, the REPL's `cluster`, and the one
//! error case (no node answers). The merging of several nodes' reports is
//! unit-tested in cli/src/cluster.rs; the three-node view is exercised by
//! `make demo-failover`.

use crate::harness;

use harness::{Server, ServerOpts, cli, cli_at, cli_script, free_port};

/// The table a standalone node at `addr` with 8 partitions shows after one
/// write of `hello` (partition 3): its log end and high watermark are 1.
fn standalone_table(addr: &str) -> String {
    let mut out = format!(
        "controller: none (standalone)   nodes: node-1 {addr} (up)\n\
         PARTITION  LEADER  EPOCH  REPLICAS  ISR     LOG END OFFSETS  HW\n"
    );
    for p in 0..8 {
        let n = u32::from(p == 3);
        out.push_str(&format!(
            "{p}          node-1  1      node-1    node-1  node-1={n}         {n}\n"
        ));
    }
    out
}

#[test]
fn cluster_table_and_json_of_a_standalone_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let a = server.addr.as_str();
    assert_eq!(cli_at(a, &["set", "hello", "world"]).0, 0);

    let (code, out, err) = cli_at(a, &["cluster"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, standalone_table(a));

    let (code, out, err) = cli_at(a, &["cluster", "--json"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out.lines().count(), 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let partitions: Vec<serde_json::Value> = (0..8)
        .map(|p| {
            serde_json::json!({
                "id": p,
                "leader": "node-1",
                "epoch": 1,
                "replicas": ["node-1"],
                "isr": ["node-1"],
                "log_end_offsets": [{"node_id": "node-1", "log_end_offset": u32::from(p == 3)}],
                "high_watermark": u32::from(p == 3),
            })
        })
        .collect();
    assert_eq!(
        json,
        serde_json::json!({
            "mode": "standalone",
            "controller": null,
            "nodes": [{
                "id": "node-1",
                "addr": a,
                "status": "up",
                "controller": false,
                "error": null,
            }],
            "partitions": partitions,
        })
    );

    // Bad option: one error line, exit 1, nothing asked.
    let (code, out, err) = cli_at(a, &["cluster", "--yaml"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "ERR syntax error: unknown option '--yaml' (expected --json)\n"
    );
}

#[test]
fn cluster_falls_back_to_the_next_seed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    assert_eq!(cli_at(&server.addr, &["set", "hello", "world"]).0, 0);
    let dead = format!("127.0.0.1:{}", free_port());
    let conf = dir.path().join("cli.yaml");
    std::fs::write(&conf, format!("addrs: [{dead}, {}]\n", server.addr)).unwrap();
    let out = cli(&["-c", conf.to_str().unwrap(), "cluster"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        standalone_table(&server.addr)
    );
}

#[test]
fn cluster_fails_when_no_node_answers() {
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, out, err) = cli_at(&dead, &["cluster"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("could not connect to caskade at {dead}: connection refused\n")
    );
}

#[test]
fn cluster_in_the_repl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    assert_eq!(cli_at(&server.addr, &["set", "hello", "world"]).0, 0);
    let out = cli_script(
        &["--addr", &server.addr, "--history-file", ""],
        b"help cluster\ncluster\ncluster --json extra\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "cluster [--json]\n  Show every partition's leader, epoch, replicas, ISR, log end offsets and high watermark, from every node\n\
             {}\
             ERR wrong number of arguments for 'cluster' command\n",
            standalone_table(&server.addr)
        )
    );
}
