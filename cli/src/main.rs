//! `caskade-cli`: the REPL, one-shot commands and the load generator.
//!
//! - `caskade-cli` opens the REPL (src/repl.rs);
//! - `caskade-cli CMD ARGS...` runs one command, prints the reply on stdout
//!   and exits 0, or prints the error (`(error) <message>`, raw: the
//!   message alone) on stderr and exits 1;
//!   arguments are taken byte for byte, as redis-cli takes them;
//! - replies are printed as redis-cli prints them (src/reply.rs): typed and
//!   quoted when stdout is a terminal or with `--no-raw`, raw when stdout is
//!   not a terminal or with `--raw` (the last of the two flags wins);
//! - `caskade-cli bench ...` runs the load generator (src/bench.rs);
//! - `caskade-cli load ...` / `caskade-cli verify ...` write keys recording
//!   the acknowledged writes, and check them all back (src/load.rs);
//! - `caskade-cli cluster [--json]` shows the cluster (src/cluster.rs), as
//!   in the REPL;
//! - `caskade-cli cluster reassign|decommission|recommission ...` moves
//!   replicas between nodes (src/reassign.rs);
//! - `caskade-cli hash-password` prints the argon2 hash of a password read
//!   without echo, for the server's `auth.users` (src/login.rs);
//! - credentials: `auth: {user, password}` in the config, overridden by
//!   `CASKADE_USER` / `CASKADE_PASSWORD` and `--user`; the REPL, `bench`
//!   and `probe` prompt for them when the server asks (src/login.rs);
//! - TLS: `tls: {ca, cert, key}` in the config, overridden by `--tls-ca`,
//!   `--tls-cert`, `--tls-key`; every command (REPL, one-shot, `bench`,
//!   `load`, `probe`, `cluster`) connects through `caskade::client::Client`
//!   with these settings;
//! - `caskade-cli resp-bench ...` loads a RESP server (caskade's or
//!   Redis'), with `WAIT` after writes (src/resp_bench.rs);
//! - `caskade-cli probe ...` writes one key in a loop and times how long
//!   writes are unavailable, e.g. across a leader kill (src/probe.rs).
//!
//! Settings are layered: defaults -> `-c FILE` (conf/client/cli.yaml) ->
//! `CASKADE_CLI_*` environment -> flags. Exit codes: 0 success, 1 an error
//! reply or a failure, 2 bad usage of the CLI itself (an unknown flag, a
//! server address that is not HOST:PORT, a bad config file).

mod bench;
mod cluster;
mod command;
mod load;
mod login;
mod probe;
mod reassign;
mod reassign_watch;
mod repl;
mod reply;
mod resp_bench;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::node::{Acks, Consistency};
use clap::Parser;

use crate::command::Command;
use crate::reply::{Output, Reply};

/// Flags; they override the config file and the environment.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli",
    version,
    about = "caskade client: REPL, one-shot commands (caskade-cli set k v), load generator (caskade-cli bench --help), write-and-verify (caskade-cli load --help, caskade-cli verify --help), failover probe (caskade-cli probe --help)"
)]
struct Args {
    /// Client config file (see conf/client/cli.yaml).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Server address host:port (overrides `addrs`).
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// Request timeout in ms (overrides `timeout_ms`).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Write acknowledgement: leader | all (overrides `acks`).
    #[arg(long, value_parser = parse_acks)]
    acks: Option<Acks>,
    /// Read consistency: leader | any (overrides `consistency`).
    #[arg(long, value_parser = parse_consistency)]
    consistency: Option<Consistency>,
    /// PEM file of the CA of the server's certificate: TLS on (overrides
    /// `tls.ca`).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for servers with
    /// `tls.require_client_cert` (overrides `tls.cert`; with --tls-key).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key (overrides `tls.key`).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// User to log in as (overrides `auth.user` and CASKADE_USER); the
    /// password comes from the config, CASKADE_PASSWORD or a prompt, never
    /// from a flag.
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// REPL history file, "" for none (overrides `history_file`).
    #[arg(long, value_name = "FILE")]
    history_file: Option<String>,
    /// Print replies raw (values as they are, no types), the default when
    /// stdout is not a terminal, as redis-cli --raw.
    #[arg(long, overrides_with = "no_raw")]
    raw: bool,
    /// Print replies as on a terminal ("quoted", (integer) N) even when
    /// stdout is not one, as redis-cli --no-raw.
    #[arg(long, overrides_with = "raw")]
    no_raw: bool,
    /// A command to run once instead of the REPL, e.g. `set hello 1`. Its
    /// words are taken byte for byte; after the command name they may start
    /// with `-`.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Parses `leader` / `all`.
pub(crate) fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "leader" => Ok(Acks::Leader),
        "all" => Ok(Acks::All),
        _ => Err(format!("'{s}' is not leader or all")),
    }
}

/// Parses `leader` / `any`.
fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "leader" => Ok(Consistency::Leader),
        "any" => Ok(Consistency::Any),
        _ => Err(format!("'{s}' is not leader or any")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command.first().and_then(|w| w.to_str()) == Some("hash-password") {
        return login::hash_password();
    }
    let (mut config, warnings) = match ClientConfig::load(args.config.as_deref(), std::env::vars())
    {
        Ok(c) => c,
        Err(e) => return fail(2, &format!("caskade-cli: {e}")),
    };
    for w in warnings {
        eprintln!("caskade-cli: warning: {w}");
    }
    login::apply_env(&mut config, std::env::vars());
    if let Some(addr) = args.addr {
        config.addrs = vec![addr];
    }
    if let Some(ms) = args.timeout_ms {
        config.timeout_ms = ms;
    }
    if let Some(acks) = args.acks {
        config.acks = acks;
    }
    if let Some(c) = args.consistency {
        config.consistency = c;
    }
    if let Some(ca) = args.tls_ca {
        config.tls.ca = ca;
    }
    if let Some(cert) = args.tls_cert {
        config.tls.cert = cert;
    }
    if let Some(key) = args.tls_key {
        config.tls.key = key;
    }
    if let Some(user) = args.user {
        config.auth.user = user;
    }
    if let Some(h) = args.history_file {
        config.history_file = h;
    }
    if let Some(bad) = config.addrs.iter().find_map(|a| check_addr(a).err()) {
        return fail(2, &format!("caskade-cli: {bad}"));
    }
    let output = if args.raw {
        Output::Raw
    } else if args.no_raw || std::io::stdout().is_terminal() {
        Output::Terminal
    } else {
        Output::Raw
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("caskade-cli: cannot start the runtime: {e}")),
    };
    // The client's lazy connections spawn their tasks on this runtime.
    let _runtime_context = runtime.enter();
    // Programs with their own flags, not commands of the table.
    match args.command.first().and_then(|w| w.to_str()) {
        Some("bench") => {
            return match tool_args::<bench::BenchArgs>(&args.command) {
                Ok(a) => ExitCode::from(bench::run(&runtime, &config, &a) as u8),
                Err(code) => code,
            };
        }
        Some("resp-bench") => {
            return match tool_args::<resp_bench::RespBenchArgs>(&args.command) {
                Ok(a) => ExitCode::from(resp_bench::run(&runtime, &a) as u8),
                Err(code) => code,
            };
        }
        Some("load") => {
            return match tool_args::<load::LoadArgs>(&args.command) {
                Ok(a) => ExitCode::from(load::load(&runtime, &config, &a) as u8),
                Err(code) => code,
            };
        }
        Some("verify") => {
            return match tool_args::<load::VerifyArgs>(&args.command) {
                Ok(a) => ExitCode::from(load::verify(&runtime, &config, &a) as u8),
                Err(code) => code,
            };
        }
        Some("cluster") if reassign::is_admin(&args.command) => {
            return match tool_args::<reassign::AdminArgs>(&args.command) {
                Ok(a) => ExitCode::from(reassign::run(&runtime, &config, &a) as u8),
                Err(code) => code,
            };
        }
        Some("probe") => {
            return match tool_args::<probe::ProbeArgs>(&args.command) {
                Ok(a) => ExitCode::from(probe::run(&runtime, &config, &a) as u8),
                Err(code) => code,
            };
        }
        _ => {}
    }
    let client = match Client::new(&config) {
        Ok(c) => c,
        Err(e) => return fail(2, &format!("(error) {e}")),
    };
    if args.command.is_empty() {
        return ExitCode::from(repl::run(&runtime, &client, &config, output) as u8);
    }
    let words: Vec<Vec<u8>> = args
        .command
        .into_iter()
        .map(std::os::unix::ffi::OsStringExt::into_vec)
        .collect();
    let reply = match command::parse(&words) {
        Err(msg) => Reply::Error(msg),
        Ok(Command::Quit) => return ExitCode::SUCCESS,
        Ok(cmd) => runtime.block_on(command::execute(&client, &config, cmd)),
    };
    let mut printed = reply.render(output);
    printed.push(b'\n');
    if reply.is_error() {
        let _ = std::io::stderr().write_all(&printed);
        return ExitCode::from(1);
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&printed).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("caskade-cli: cannot write the reply: {e}")),
    }
}

/// Checks that `addr` is `HOST:PORT` (`[v6]:PORT` for IPv6) with a port
/// from 1 to 65535; the error is the message printed.
fn check_addr(addr: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid server address '{}': {why}",
            reply::escape_controls(addr)
        ))
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("expected HOST:PORT, e.g. 127.0.0.1:7379");
    };
    let bracketed = host.starts_with('[') || host.ends_with(']');
    if host.is_empty()
        || host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
        || (bracketed && !(host.starts_with('[') && host.ends_with(']') && host.len() > 2))
        || (!bracketed && host.contains(':'))
    {
        return bad("expected HOST:PORT, e.g. 127.0.0.1:7379 or [::1]:7379");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("the port must be a number from 1 to 65535"),
    }
}

/// Parses the flags of `bench`, `load`, `verify` or `probe` (`words[0]` is its
/// name). On `--help` or a usage error, prints clap's text and returns the
/// exit code (0 for help, 2 for an error).
fn tool_args<T: Parser>(words: &[OsString]) -> Result<T, ExitCode> {
    T::try_parse_from(words).map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { 2 } else { 0 })
    })
}

/// Prints `msg` on stderr and returns exit code `code`.
fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::check_addr;

    #[test]
    fn server_addresses() {
        for good in [
            "127.0.0.1:7379",
            "localhost:1",
            "[::1]:65535",
            "node-1.example:7381",
        ] {
            assert_eq!(check_addr(good), Ok(()), "{good}");
        }
        let form = "expected HOST:PORT, e.g. 127.0.0.1:7379";
        let port = "the port must be a number from 1 to 65535";
        for (bad, why) in [
            ("nonsense", form),
            (
                ":7379",
                "expected HOST:PORT, e.g. 127.0.0.1:7379 or [::1]:7379",
            ),
            (
                "::1:7379",
                "expected HOST:PORT, e.g. 127.0.0.1:7379 or [::1]:7379",
            ),
            (
                "http://h:1",
                "expected HOST:PORT, e.g. 127.0.0.1:7379 or [::1]:7379",
            ),
            ("h:0", port),
            ("h:65536", port),
            ("h:x", port),
            ("h:", port),
        ] {
            assert_eq!(
                check_addr(bad),
                Err(format!("invalid server address '{bad}': {why}")),
                "{bad}"
            );
        }
    }
}
