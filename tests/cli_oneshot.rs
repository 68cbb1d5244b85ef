//! One-shot `caskade-cli CMD ARGS` against a real server: every command's
//! exact reply and exit code, every bad input's exact error line on stderr
//! with a non-zero exit, the server still serving afterwards, and `bench`.

mod harness;

use harness::{Server, ServerOpts, cli, cli_at, free_port};

/// Runs a command that must succeed and returns its stdout.
fn ok(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = cli_at(addr, args);
    assert_eq!(code, 0, "{args:?}: stderr {err:?}");
    assert_eq!(err, "", "{args:?}");
    out
}

/// Runs a command that must fail and returns its stderr.
fn fails(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = cli_at(addr, args);
    assert_eq!(code, 1, "{args:?}: stdout {out:?} stderr {err:?}");
    assert_eq!(out, "", "{args:?}");
    err
}

#[test]
fn every_command_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let a = server.addr.as_str();

    assert_eq!(ok(a, &["ping"]), "PONG\n");
    assert_eq!(ok(a, &["set", "hello", "1"]), "OK\n");
    assert_eq!(ok(a, &["get", "hello"]), "1\n");
    assert_eq!(ok(a, &["GET", "missing"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "greeting", "hello world"]), "OK\n");
    assert_eq!(ok(a, &["get", "greeting"]), "hello world\n");
    // NX / XX: (nil) when the condition does not hold, as Redis.
    assert_eq!(ok(a, &["set", "hello", "2", "NX"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "fresh", "2", "XX"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "hello", "3", "XX"]), "OK\n");
    assert_eq!(ok(a, &["get", "hello"]), "3\n");
    assert_eq!(ok(a, &["ttl", "hello"]), "(integer) -1\n");
    assert_eq!(ok(a, &["ttl", "missing"]), "(integer) -2\n");
    assert_eq!(ok(a, &["pttl", "missing"]), "(integer) -2\n");
    assert_eq!(ok(a, &["expire", "hello", "100"]), "(integer) 1\n");
    assert_eq!(ok(a, &["ttl", "hello"]), "(integer) 100\n");
    assert_eq!(ok(a, &["expire", "missing", "100"]), "(integer) 0\n");
    assert_eq!(ok(a, &["set", "temp", "x", "EX", "50"]), "OK\n");
    assert_eq!(ok(a, &["ttl", "temp"]), "(integer) 50\n");
    let pttl: i64 = ok(a, &["pttl", "temp"])
        .trim()
        .strip_prefix("(integer) ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((45_000..=50_000).contains(&pttl), "pttl {pttl}");
    assert_eq!(
        ok(a, &["exists", "hello", "missing", "greeting", "hello"]),
        "(integer) 3\n"
    );
    // expire 0 deletes at once.
    assert_eq!(ok(a, &["expire", "temp", "0"]), "(integer) 1\n");
    assert_eq!(ok(a, &["get", "temp"]), "(nil)\n");
    assert_eq!(
        ok(a, &["del", "hello", "missing", "greeting"]),
        "(integer) 2\n"
    );
    assert_eq!(ok(a, &["exists", "hello", "greeting"]), "(integer) 0\n");
    let meta = ok(a, &["metadata"]);
    assert!(
        meta.starts_with(
            "node node-1 (standalone), 8 partitions, partitioner fnv1a64-mod, max key 1024 B, max value 1048576 B\n"
        ),
        "{meta}"
    );
    assert!(meta.contains("\npartition 7 leader node-1 epoch 1 replicas [node-1] isr [node-1]"));
    assert_eq!(
        ok(a, &["help", "expire"]),
        "expire key seconds\n  Make key expire in seconds (0 deletes it); 1 if it existed, 0 if not\n"
    );
    // The config file gives the address too, and flags override it.
    let conf = dir.path().join("cli.yaml");
    std::fs::write(&conf, format!("addrs: [{a}]\ntimeout_ms: 2000\n")).unwrap();
    let out = cli(&["-c", conf.to_str().unwrap(), "set", "via-config", "1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_input_one_shot_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Small limits so oversized arguments fit on a command line.
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .env("CASKADE_STORAGE_LIMITS_MAX_KEY_BYTES", "16")
            .env("CASKADE_STORAGE_LIMITS_MAX_VALUE_BYTES", "100"),
    );
    let a = server.addr.as_str();
    let cases: &[(&[&str], &str)] = &[
        (
            &["get"],
            "(error) wrong number of arguments for 'get' command\n",
        ),
        (
            &["set", "k"],
            "(error) wrong number of arguments for 'set' command\n",
        ),
        (
            &["ttl", "a", "b"],
            "(error) wrong number of arguments for 'ttl' command\n",
        ),
        (
            &["del"],
            "(error) wrong number of arguments for 'del' command\n",
        ),
        (
            &["frobnicate", "x"],
            "(error) unknown command 'frobnicate', type 'help' for the list of commands\n",
        ),
        (&["set", "", "v"], "(error) empty key\n"),
        (&["get", ""], "(error) empty key\n"),
        (
            &["set", "seventeen-bytes!!", "v"],
            "(error) key is 17 bytes, the limit is 16\n",
        ),
        (
            &["set", "k", &"v".repeat(101)],
            "(error) value is 101 bytes, the limit is 100\n",
        ),
        (
            &["expire", "k", "abc"],
            "(error) invalid TTL 'abc': not an integer\n",
        ),
        (
            &["expire", "k", "-5"],
            "(error) invalid TTL '-5': must not be negative\n",
        ),
        (
            &["expire", "k", "1e3"],
            "(error) invalid TTL '1e3': not an integer\n",
        ),
        (
            &["expire", "k", "99999999999999999999"],
            "(error) invalid TTL '99999999999999999999': out of range\n",
        ),
        (
            &["expire", "k", "18446744073709552"],
            "(error) invalid TTL '18446744073709552': out of range\n",
        ),
        (
            &["expire", "k", "9223372036854775"],
            "(error) TTL of 9223372036854775000 ms is out of range\n",
        ),
        (
            &["set", "k", "v", "EX", "0"],
            "(error) invalid TTL '0': must be positive\n",
        ),
        (
            &["set", "k", "v", "PX", "-1"],
            "(error) invalid TTL '-1': must not be negative\n",
        ),
        (
            &["set", "k", "v", "EX"],
            "(error) syntax error: EX needs a value\n",
        ),
        (
            &["set", "k", "v", "NX", "XX"],
            "(error) syntax error: NX and XX given more than once\n",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(fails(a, args), *expected, "{args:?}");
        // Still serving, and nothing was written by the failed command.
        assert_eq!(ok(a, &["ping"]), "PONG\n");
    }
    assert_eq!(ok(a, &["exists", "k"]), "(integer) 0\n");
    assert!(ok(a, &["set", "k", &"v".repeat(100)]).starts_with("OK"));
}

#[test]
fn unreachable_server_one_shot() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(
        fails(&addr, &["get", "k"]),
        format!("(error) could not connect to caskade at {addr}: connection refused\n")
    );
    // Syntax errors are found without a server.
    assert_eq!(
        fails(&addr, &["get"]),
        "(error) wrong number of arguments for 'get' command\n"
    );
    let (code, out, err) = cli_at(&addr, &["bench", "--requests", "10"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("(error) could not connect to caskade at {addr}: connection refused\n")
    );
}

#[test]
fn bench_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    for op in ["set", "get", "mixed", "ping"] {
        let (code, out, err) = cli_at(
            &server.addr,
            &[
                "bench",
                "--op",
                op,
                "--clients",
                "4",
                "--requests",
                "400",
                "--keyspace",
                "50",
                "--value-size",
                "10",
                "--json",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["op"], op);
        assert_eq!(report["requests"], 400);
        assert_eq!(report["clients"], 4);
        assert_eq!(report["errors"], 0);
        assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0);
        let (p50, p99) = (
            report["p50_us"].as_u64().unwrap(),
            report["p99_us"].as_u64().unwrap(),
        );
        assert!(p50 >= 1 && p50 <= p99, "{out}");
    }
    // With a keyspace of one, `bench --op set` writes exactly that key.
    let (code, _, _) = cli_at(
        &server.addr,
        &[
            "bench",
            "--op",
            "set",
            "--clients",
            "2",
            "--requests",
            "10",
            "--keyspace",
            "1",
            "--value-size",
            "3",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(ok(&server.addr, &["get", "key:000000000000"]), "xxx\n");
}
