//! One-shot `caskade-cli CMD ARGS` against a real server: every command's
//! exact reply and exit code, every bad input's exact error line on stderr
//! with a non-zero exit, the server still serving afterwards, and `bench`.
//! Replies in both of redis-cli's forms: `--no-raw` (what a terminal
//! shows) and raw (stdout is a pipe here), binary values, usage errors.

use crate::harness;

use harness::{Server, ServerOpts, cli, cli_at, free_port};

/// Runs a command that must succeed and returns its stdout, in the form a
/// terminal shows (`--no-raw`).
fn ok(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = cli_at(addr, &[&["--no-raw"], args].concat());
    assert_eq!(code, 0, "{args:?}: stderr {err:?}");
    assert_eq!(err, "", "{args:?}");
    out
}

/// Runs a command that must fail and returns its stderr (`--no-raw`).
fn fails(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = cli_at(addr, &[&["--no-raw"], args].concat());
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
    assert_eq!(ok(a, &["get", "hello"]), "\"1\"\n");
    assert_eq!(ok(a, &["GET", "missing"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "greeting", "hello world"]), "OK\n");
    assert_eq!(ok(a, &["get", "greeting"]), "\"hello world\"\n");
    // NX / XX: (nil) when the condition does not hold, as Redis.
    assert_eq!(ok(a, &["set", "hello", "2", "NX"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "fresh", "2", "XX"]), "(nil)\n");
    assert_eq!(ok(a, &["set", "hello", "3", "XX"]), "OK\n");
    assert_eq!(ok(a, &["get", "hello"]), "\"3\"\n");
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
            "(error) ERR wrong number of arguments for 'get' command\n",
        ),
        (
            &["set", "k"],
            "(error) ERR wrong number of arguments for 'set' command\n",
        ),
        (
            &["ttl", "a", "b"],
            "(error) ERR wrong number of arguments for 'ttl' command\n",
        ),
        (
            &["del"],
            "(error) ERR wrong number of arguments for 'del' command\n",
        ),
        (
            &["frobnicate", "x"],
            "(error) ERR unknown command 'frobnicate', type 'help' for the list of commands\n",
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
        // As Redis answers them (not an arity error, no other reason).
        (&["set", "k", "v", "EX"], "(error) ERR syntax error\n"),
        (&["set", "k", "v", "NX", "XX"], "(error) ERR syntax error\n"),
        (
            &["set", "k", "v", "EX", "10", "PX", "100"],
            "(error) ERR syntax error\n",
        ),
        (
            &["ping", "a", "b"],
            "(error) ERR wrong number of arguments for 'ping' command\n",
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
        "(error) ERR wrong number of arguments for 'get' command\n"
    );
    // Raw form (stdout is a pipe): the same message without `(error) `.
    assert_eq!(
        cli_at(&addr, &["get", "k"]),
        (
            1,
            String::new(),
            format!("could not connect to caskade at {addr}: connection refused\n")
        )
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
    assert_eq!(ok(&server.addr, &["get", "key:000000000000"]), "\"xxx\"\n");
}

/// Runs the CLI with byte arguments; returns (exit code, stdout, stderr).
fn cli_bytes(args: &[&[u8]]) -> (i32, Vec<u8>, String) {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&std::ffi::OsStr> = args
        .iter()
        .map(|a| std::ffi::OsStr::from_bytes(a))
        .collect();
    let out = std::process::Command::new(harness::cli_bin())
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// redis-cli's two forms: raw when stdout is not a terminal (here, a pipe)
/// or `--raw`, typed and quoted with `--no-raw` (the last flag wins); any
/// bytes as a one-shot argument; `PING msg` echoes; `MGET` is an array.
#[test]
fn raw_and_terminal_forms_and_binary_values() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let a = server.addr.as_bytes();
    let run = |args: &[&[u8]]| cli_bytes(&[&[b"--addr", a], args].concat());
    let done = |out: &[u8]| (0, out.to_vec(), String::new());

    // A value that is not UTF-8, with control characters, set one-shot
    // (a NUL cannot be in a process argument: tests/cli/cli_repl.rs types one).
    assert_eq!(run(&[b"set", b"bin", b"\x01\xff\x1b[2J\n"]), done(b"OK\n"));
    assert_eq!(run(&[b"get", b"bin"]), done(b"\x01\xff\x1b[2J\n\n"));
    assert_eq!(
        run(&[b"--raw", b"get", b"bin"]),
        done(b"\x01\xff\x1b[2J\n\n")
    );
    assert_eq!(
        run(&[b"--no-raw", b"get", b"bin"]),
        done(b"\"\\x01\\xff\\x1b[2J\\n\"\n")
    );
    assert_eq!(
        run(&[b"--raw", b"--no-raw", b"get", b"bin"]).1,
        b"\"\\x01\\xff\\x1b[2J\\n\"\n"
    );
    assert_eq!(
        run(&[b"--no-raw", b"--raw", b"get", b"bin"]).1,
        b"\x01\xff\x1b[2J\n\n"
    );
    // Empty value, spaces, non-ASCII: quoted as redis-cli's sdscatrepr.
    assert_eq!(run(&[b"set", b"empty", b""]), done(b"OK\n"));
    assert_eq!(run(&[b"--no-raw", b"get", b"empty"]), done(b"\"\"\n"));
    assert_eq!(run(&[b"get", b"empty"]), done(b"\n"));
    assert_eq!(
        run(&[b"set", b"caf", "café au lait".as_bytes()]),
        done(b"OK\n")
    );
    assert_eq!(
        run(&[b"--no-raw", b"get", b"caf"]),
        done(b"\"caf\\xc3\\xa9 au lait\"\n")
    );
    assert_eq!(run(&[b"get", b"caf"]), done("café au lait\n".as_bytes()));
    // Nil and integers.
    assert_eq!(run(&[b"get", b"nope"]), done(b"\n"));
    assert_eq!(run(&[b"--no-raw", b"get", b"nope"]), done(b"(nil)\n"));
    assert_eq!(run(&[b"ttl", b"nope"]), done(b"-2\n"));
    assert_eq!(
        run(&[b"--no-raw", b"ttl", b"nope"]),
        done(b"(integer) -2\n")
    );
    // A word starting with '-' after the command is an argument.
    assert_eq!(run(&[b"set", b"-1", b"-v"]), done(b"OK\n"));
    assert_eq!(run(&[b"get", b"-1"]), done(b"-v\n"));
    // PING echoes its message, as Redis.
    assert_eq!(run(&[b"ping"]), done(b"PONG\n"));
    assert_eq!(run(&[b"--no-raw", b"ping"]), done(b"PONG\n"));
    assert_eq!(run(&[b"ping", b"hello world"]), done(b"hello world\n"));
    assert_eq!(
        run(&[b"--no-raw", b"ping", b"hello world"]),
        done(b"\"hello world\"\n")
    );
    // MGET: numbered in a terminal, one line per element raw.
    assert_eq!(
        run(&[b"--no-raw", b"mget", b"caf", b"nope", b"empty"]),
        done(b"1) \"caf\\xc3\\xa9 au lait\"\n2) (nil)\n3) \"\"\n")
    );
    assert_eq!(
        run(&[b"mget", b"caf", b"nope", b"empty"]),
        done("café au lait\n\n\n".as_bytes())
    );
    // Errors: stderr, exit 1; `(error) ` only in the terminal form.
    let syntax = |raw: bool| {
        let mut args: Vec<&[u8]> = vec![b"set", b"k", b"v", b"EX", b"10", b"PX", b"100"];
        if !raw {
            args.insert(0, b"--no-raw");
        }
        run(&args)
    };
    assert_eq!(syntax(true), (1, Vec::new(), "ERR syntax error\n".into()));
    assert_eq!(
        syntax(false),
        (1, Vec::new(), "(error) ERR syntax error\n".into())
    );
    // A control character typed as a command name is shown escaped.
    assert_eq!(
        run(&[b"--no-raw", b"\x1b[31mx"]),
        (
            1,
            Vec::new(),
            "(error) ERR unknown command '\\x1b[31mx', type 'help' for the list of commands\n"
                .into()
        )
    );
}

/// Bad usage of the CLI itself exits 2 with a clear message, before any
/// connection: an unknown flag, a server address that is not HOST:PORT.
#[test]
fn usage_errors_exit_2() {
    let (code, out, err) = cli_bytes(&[b"--bogus-flag"]);
    assert_eq!((code, out.as_slice()), (2, &b""[..]));
    assert!(
        err.starts_with("error: unexpected argument '--bogus-flag' found\n"),
        "{err}"
    );
    let (code, out, err) =
        cli_bytes(&[b"--addr", b"127.0.0.1:7379", b"--bogus-flag", b"get", b"k"]);
    assert_eq!((code, out.as_slice()), (2, &b""[..]));
    assert!(
        err.starts_with("error: unexpected argument '--bogus-flag' found\n"),
        "{err}"
    );
    for (addr, why) in [
        ("nonsense", "expected HOST:PORT, e.g. 127.0.0.1:7379"),
        (
            "127.0.0.1:99999",
            "the port must be a number from 1 to 65535",
        ),
        (
            "http://h:1",
            "expected HOST:PORT, e.g. 127.0.0.1:7379 or [::1]:7379",
        ),
    ] {
        for args in [&[][..], &[&b"ping"[..]][..]] {
            let all = [&[&b"--addr"[..], addr.as_bytes()][..], args].concat();
            assert_eq!(
                cli_bytes(&all),
                (
                    2,
                    Vec::new(),
                    format!("caskade-cli: invalid server address '{addr}': {why}\n")
                ),
                "{addr} {args:?}"
            );
        }
    }
    // From the config file too.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cli.yaml");
    std::fs::write(&conf, "addrs: [nonsense]\n").unwrap();
    assert_eq!(
        cli_bytes(&[b"-c", conf.to_str().unwrap().as_bytes(), b"ping"]),
        (
            2,
            Vec::new(),
            "caskade-cli: invalid server address 'nonsense': expected HOST:PORT, e.g. 127.0.0.1:7379\n"
                .into()
        )
    );
}

/// A host name that does not resolve is named as a DNS failure, with the
/// resolver's reason, not as `uncategorized error` (std's kind for
/// getaddrinfo failures, which the client used to print alone).
#[test]
fn an_unresolvable_host_is_a_dns_error() {
    let (code, out, err) = cli_bytes(&[b"--addr", b"nosuch.invalid:7379", b"ping"]);
    assert_eq!((code, out.as_slice()), (1, &b""[..]), "{err}");
    let prefix = "could not connect to caskade at nosuch.invalid:7379: \
                  DNS resolution failed for nosuch.invalid: ";
    let reason = err
        .strip_prefix(prefix)
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{err:?}"));
    // getaddrinfo's words (gai_strerror), which depend on whether a DNS
    // server answered.
    assert!(
        [
            "Name or service not known",
            "Temporary failure in name resolution",
            "No address associated with hostname",
        ]
        .contains(&reason),
        "{err:?}"
    );
}
