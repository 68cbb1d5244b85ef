//! The `caskade-cli` REPL driven through its stdin: a scripted session with
//! exact output (in the terminal form with `--no-raw`, and raw, the default
//! when stdout is a pipe, as redis-cli), binary values typed with redis-cli's
//! quoting, and a session that outlives a server restart (the REPL reports
//! the outage in one line and reconnects when the server is back).

use crate::harness;

use harness::{Repl, Server, ServerOpts, cli_script};

#[test]
fn scripted_session_through_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let script = concat!(
        "set greeting \"hello world\"\n",
        "get greeting\n",
        "  GET   greeting  \n",
        "\n",
        "set 'it s' '1'\n",
        "exists greeting \"it s\" nope\n",
        "get nope\n",
        "del greeting nope\n",
        "ttl greeting\n",
        "set k v EX 100\n",
        "ttl k\n",
        "expire k 0\n",
        "get\n",
        "frobnicate\n",
        "set k \"unbalanced\n",
        "set \"\" v\n",
        "help ttl\n",
        "ping\n",
        "quit\n",
        "get k\n", // never run: quit ends the session
    );
    let out = cli_script(
        &["--addr", &server.addr, "--history-file", "", "--no-raw"],
        script.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        concat!(
            "OK\n",
            "\"hello world\"\n",
            "\"hello world\"\n",
            "OK\n",
            "(integer) 2\n",
            "(nil)\n",
            "(integer) 1\n",
            "(integer) -2\n",
            "OK\n",
            "(integer) 100\n",
            "(integer) 1\n",
            "(error) ERR wrong number of arguments for 'get' command\n",
            "(error) ERR unknown command 'frobnicate', type 'help' for the list of commands\n",
            "(error) unbalanced quotes\n",
            "(error) empty key\n",
            "ttl key\n",
            "  Seconds key has left; -1 if it never expires, -2 if it does not exist\n",
            "PONG\n",
        )
    );
}

#[test]
fn session_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, ServerOpts::default());
    let addr = server.addr.clone();
    let mut repl = Repl::start(&addr);
    assert_eq!(repl.send("set survivor yes", 1), ["OK"]);

    // Server goes away (graceful stop: flushes, exit 0).
    assert_eq!(server.stop().code(), Some(0));
    let refused = format!("could not connect to caskade at {addr}: connection refused");
    assert_eq!(repl.send("get survivor", 1), std::slice::from_ref(&refused));
    assert_eq!(repl.send("ping", 1), [refused]);
    // Syntax errors still answer while the server is down.
    assert_eq!(
        repl.send("get", 1),
        ["ERR wrong number of arguments for 'get' command"]
    );

    // Same address, same data: the REPL reconnects and the write persisted.
    let _server = Server::start(&data, ServerOpts::default().listen(&addr));
    assert_eq!(repl.send("get survivor", 1), ["yes"]);
    assert_eq!(repl.send("set after restart", 1), ["OK"]);
    assert_eq!(repl.send("exists survivor after", 1), ["2"]);
    assert_eq!(repl.finish(), 0);
}

#[test]
fn history_file_records_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let history = dir.path().join("history");
    let out = cli_script(
        &[
            "--addr".as_ref(),
            server.addr.as_ref(),
            "--history-file".as_ref(),
            history.as_os_str(),
        ],
        b"set a 1\nget a\nquit\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n1\n");
    let saved = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = saved.lines().filter(|l| !l.starts_with('#')).collect();
    // `quit` and `exit` are not saved, as in redis-cli.
    assert_eq!(lines, ["set a 1", "get a"]);
    let out = cli_script(
        &[
            "--addr".as_ref(),
            server.addr.as_ref(),
            "--history-file".as_ref(),
            history.as_os_str(),
        ],
        b"ping\nEXIT\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
    let saved = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = saved.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, ["set a 1", "get a", "ping"]);
}

/// Binary values typed with redis-cli's quoting (`\xHH` in double quotes,
/// quotes inside a word, single quotes literal) are stored byte for byte and
/// printed as redis-cli prints them: quoted with escapes in the terminal
/// form, the bytes themselves raw. The same lines given to redis-cli 7.0
/// against redis-server print the same bytes in both forms, except the
/// broken quoting (redis-cli: `Invalid argument(s)`) and the blank line
/// redis-cli adds after a raw error.
#[test]
fn binary_values_and_redis_cli_quoting() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let script = concat!(
        "set bin \"\\x00\\xff\\xZZ\"\n",
        "get bin\n",
        "set q a\"b c\"\n",
        "get q\n",
        "set lit 'a\\nb\\'c'\n",
        "get lit\n",
        "set esc \"\\x1b[2J\\a\\b\\t\\r\\n\\\"\\\\\"\n",
        "get esc\n",
        "set bad \"a\"b\n",
        "set empty \"\"\n",
        "get empty\n",
        "mget bin nope q\n",
        "ping \"hi there\"\n",
        "set k v EX 10 PX 100\n",
        "set k v NX XX\n",
    );
    let terminal = cli_script(
        &["--addr", &server.addr, "--history-file", "", "--no-raw"],
        script.as_bytes(),
    );
    assert_eq!(terminal.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&terminal.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&terminal.stdout),
        concat!(
            "OK\n",
            "\"\\x00\\xffxZZ\"\n",
            "OK\n",
            "\"ab c\"\n",
            "OK\n",
            "\"a\\\\nb'c\"\n",
            "OK\n",
            "\"\\x1b[2J\\a\\b\\t\\r\\n\\\"\\\\\"\n",
            "(error) a closing quote must be followed by a space\n",
            "OK\n",
            "\"\"\n",
            "1) \"\\x00\\xffxZZ\"\n",
            "2) (nil)\n",
            "3) \"ab c\"\n",
            "\"hi there\"\n",
            "(error) ERR syntax error\n",
            "(error) ERR syntax error\n",
        )
    );
    let raw = cli_script(
        &["--addr", &server.addr, "--history-file", ""],
        b"get bin\nget esc\nget nope\nmget bin nope q\nttl bin\nget\n",
    );
    assert_eq!(raw.status.code(), Some(0));
    assert_eq!(
        raw.stdout,
        b"\x00\xffxZZ\n\x1b[2J\x07\x08\t\r\n\"\\\n\n\x00\xffxZZ\n\nab c\n-1\n\
          ERR wrong number of arguments for 'get' command\n"
    );
}
