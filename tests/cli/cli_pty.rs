//! The REPL on a real pseudo-terminal (through util-linux `script`), so
//! rustyline runs in terminal mode: the prompt, Tab completion of command
//! names, argument hints, quoted arguments, Ctrl-D, and the history file.
//! Each input is sent only after the previous reply has been seen, and
//! every wait is bounded.

use crate::harness;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Server, ServerOpts, WAIT, cli_bin};

/// Kills the `script` process (and with it the CLI) on drop.
struct Guard(
    /// The `script` process.
    std::process::Child,
);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn repl_on_a_pseudo_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("util-linux `script` is not installed; skipping the pty test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let history = dir.path().join("history");
    let cli = format!(
        "{} --addr {} --history-file {}",
        cli_bin().display(),
        server.addr,
        history.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cli, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let output = crate::collect_output(stdout);
    // Waits until the output after `from` contains `needle`; returns the end.
    let wait_for = |from: usize, needle: &str| -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let out = output.lock().unwrap();
                if let Some(i) = out[from..].find(needle) {
                    return from + i + needle.len();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not seen; output: {:?}",
                output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut send = |bytes: &[u8]| {
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    };
    let prompt = format!("{}> ", server.addr);
    let mut at = wait_for(0, &prompt);
    // Tab completes `pin` to `ping `.
    send(b"pin\t");
    at = wait_for(at, "ping ");
    send(b"\r");
    at = wait_for(at, "PONG");
    at = wait_for(at, &prompt);
    // Typing `set ` shows the arguments as a hint.
    send(b"set ");
    at = wait_for(at, "key value [EX seconds|PX milliseconds] [NX|XX]");
    send(b"greeting \"hello world\"\r");
    at = wait_for(at, "OK");
    at = wait_for(at, &prompt);
    // On a terminal replies are typed and values quoted, as redis-cli.
    send(b"get greeting\r");
    at = wait_for(at, "\"hello world\"");
    at = wait_for(at, &prompt);
    send(b"ttl greeting\r");
    at = wait_for(at, "(integer) -1");
    at = wait_for(at, &prompt);
    send(b"get\r");
    at = wait_for(
        at,
        "(error) ERR wrong number of arguments for 'get' command",
    );
    wait_for(at, &prompt);
    // Ctrl-D leaves; the history file holds the session.
    send(b"\x04");
    let deadline = Instant::now() + WAIT;
    let mut guard = guard;
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "REPL did not exit on Ctrl-D");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    let saved = std::fs::read_to_string(&history).unwrap();
    let lines: Vec<&str> = saved.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "ping ",
            "set greeting \"hello world\"",
            "get greeting",
            "ttl greeting",
            "get"
        ]
    );
}
