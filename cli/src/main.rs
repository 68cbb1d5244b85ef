//! `caskade-cli`: the REPL, one-shot commands and the load generator.
//!
//! - `caskade-cli` opens the REPL (src/repl.rs);
//! - `caskade-cli CMD ARGS...` runs one command, prints the reply on stdout
//!   and exits 0, or prints `(error) <message>` on stderr and exits 1;
//! - `caskade-cli bench ...` runs the load generator (src/bench.rs);
//! - `caskade-cli load ...` / `caskade-cli verify ...` write keys recording
//!   the acknowledged writes, and check them all back (src/load.rs);
//! - `caskade-cli cluster [--json]` shows the cluster (src/cluster.rs), as
//!   in the REPL;
//! - `caskade-cli cluster reassign|decommission|recommission ...` moves
//!   replicas between nodes (src/reassign.rs);
//! - `caskade-cli probe ...` writes one key in a loop and times how long
//!   writes are unavailable, e.g. across a leader kill (src/probe.rs).
//!
//! Settings are layered: defaults -> `-c FILE` (conf/client/cli.yaml) ->
//! `CASKADE_CLI_*` environment -> flags. Exit codes: 0 success, 1 an error
//! reply or a failure, 2 bad usage of the CLI itself.

mod bench;
mod cluster;
mod command;
mod load;
mod probe;
mod reassign;
mod reassign_watch;
mod repl;
mod split;

use std::path::PathBuf;
use std::process::ExitCode;

use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::node::{Acks, Consistency};
use clap::Parser;

use crate::command::{Command, Reply};

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
    /// REPL history file, "" for none (overrides `history_file`).
    #[arg(long, value_name = "FILE")]
    history_file: Option<String>,
    /// A command to run once instead of the REPL, e.g. `set hello 1`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
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
    let (mut config, warnings) = match ClientConfig::load(args.config.as_deref(), std::env::vars())
    {
        Ok(c) => c,
        Err(e) => return fail(2, &format!("caskade-cli: {e}")),
    };
    for w in warnings {
        eprintln!("caskade-cli: warning: {w}");
    }
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
    if let Some(h) = args.history_file {
        config.history_file = h;
    }
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
    match args.command.first().map(String::as_str) {
        Some("bench") => {
            return match tool_args::<bench::BenchArgs>(&args.command) {
                Ok(a) => ExitCode::from(bench::run(&runtime, &config, &a) as u8),
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
        return ExitCode::from(repl::run(&runtime, &client, &config) as u8);
    }
    let reply = match command::parse(&args.command) {
        Err(msg) => Reply::Error(msg),
        Ok(Command::Quit) => return ExitCode::SUCCESS,
        Ok(cmd) => runtime.block_on(command::execute(&client, &config, cmd)),
    };
    if reply.is_error() {
        return fail(1, &reply.render());
    }
    println!("{}", reply.render());
    ExitCode::SUCCESS
}

/// Parses the flags of `bench`, `load`, `verify` or `probe` (`words[0]` is its
/// name). On `--help` or a usage error, prints clap's text and returns the
/// exit code (0 for help, 2 for an error).
fn tool_args<T: Parser>(words: &[String]) -> Result<T, ExitCode> {
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
