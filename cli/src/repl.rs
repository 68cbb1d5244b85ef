//! The interactive REPL (rustyline): prompt `host:port> `, history file,
//! tab completion of command names, argument hints, `help`, `quit`/`exit`/
//! Ctrl-D. Ctrl-C clears the line.
//!
//! When stdin is not a terminal (a pipe or a file), rustyline reads plain
//! lines and prints no prompt, so a scripted session's output is exactly
//! one reply per command (raw when stdout is not a terminal, as redis-cli).
//! Lines are split with redis-cli's quoting rules (src/split.rs). `quit`
//! and `exit` are not saved to the history, as in redis-cli.
//!
//! A command answered `UNAUTHENTICATED` asks for a user and a password
//! (no echo, src/login.rs) when stdin is a terminal, then runs again with
//! them; they stay for the rest of the session.
//!
//! Invariants: the REPL never exits on a failed command or an unreachable
//! server; the client reconnects on the next command (connections are lazy),
//! so a restarted server is picked up without restarting the REPL.

use std::borrow::Cow;
use std::path::PathBuf;

use caskade::client::Client;
use caskade::config::ClientConfig;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use std::io::Write;

use crate::command::{self, COMMANDS, Command};
use crate::reply::{Output, Reply};
use caskade::resp::split::split;

/// Completion of command names and hints with their arguments.
struct CommandHelper;

impl Completer for CommandHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let typed = &line[..pos];
        // Only the first word is a command name.
        if typed.trim_start().contains(char::is_whitespace) {
            return Ok((pos, Vec::new()));
        }
        let start = typed.len() - typed.trim_start().len();
        let prefix = typed.trim_start().to_ascii_lowercase();
        let candidates = COMMANDS
            .iter()
            .filter(|s| s.name.starts_with(&prefix))
            .map(|s| Pair {
                display: s.name.to_string(),
                replacement: format!("{} ", s.name),
            })
            .collect();
        Ok((start, candidates))
    }
}

impl Hinter for CommandHelper {
    type Hint = String;

    /// After `set ` shows `key value [EX seconds|PX milliseconds] [NX|XX]`,
    /// minus the arguments already typed.
    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if pos < line.len() {
            return None;
        }
        // Split as the command will be (quotes group words); an unclosed
        // quote means the user is still typing an argument: no hint.
        let words = split(line.as_bytes()).ok()?;
        let spec = command::spec(std::str::from_utf8(words.first()?).ok()?)?;
        if !line.ends_with(' ') || spec.args.is_empty() {
            return None;
        }
        let typed = words.len() - 1;
        let rest: Vec<&str> = spec.args.split(' ').skip(typed).collect();
        (!rest.is_empty()).then(|| rest.join(" "))
    }
}

impl Highlighter for CommandHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        Cow::Owned(format!("\x1b[90m{hint}\x1b[0m"))
    }
}

impl Validator for CommandHelper {}
impl Helper for CommandHelper {}

/// The history file path, `~` expanded; `None` when disabled.
fn history_path(configured: &str) -> Option<PathBuf> {
    if configured.is_empty() {
        return None;
    }
    match configured.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(rest)),
        None => Some(PathBuf::from(configured)),
    }
}

/// Runs the REPL until quit, exit or end of input. Returns the process exit
/// code: 0, or 1 if the terminal itself failed.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    config: &ClientConfig,
    output: Output,
) -> i32 {
    let mut editor: Editor<CommandHelper, DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("caskade-cli: cannot start the line editor: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(CommandHelper));
    let history = history_path(&config.history_file);
    if let Some(path) = &history {
        // A missing history file is normal on first use.
        let _ = editor.load_history(path);
    }
    let prompt = format!("{}> ", client.addr());
    let mut config = config.clone();
    let mut client = client.clone();
    let code = loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break 0,
            Err(e) => {
                eprintln!("caskade-cli: cannot read input: {e}");
                break 1;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed = split(line.as_bytes()).and_then(|args| command::parse(&args));
        if parsed == Ok(Command::Quit) {
            break 0;
        }
        let _ = editor.add_history_entry(line.as_str());
        let reply = match parsed {
            Err(msg) => Reply::Error(msg),
            Ok(cmd) => runtime.block_on(run_logged_in(&mut client, &mut config, cmd)),
        };
        let mut printed = reply.render(output);
        printed.push(b'\n');
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_all(&printed).and_then(|()| stdout.flush()) {
            eprintln!("caskade-cli: cannot write the reply: {e}");
            break 1;
        }
    };
    if let Some(path) = &history
        && let Err(e) = editor.save_history(path)
    {
        eprintln!(
            "caskade-cli: cannot save history to {}: {e}",
            path.display()
        );
    }
    code
}

/// Runs `cmd`; on `UNAUTHENTICATED`, asks for credentials and runs it
/// again with a client that sends them.
async fn run_logged_in(client: &mut Client, config: &mut ClientConfig, cmd: Command) -> Reply {
    let settings = config.clone();
    crate::login::with_login(client, config, |c| {
        let (settings, cmd) = (settings.clone(), cmd.clone());
        async move { command::try_execute(&c, &settings, cmd).await }
    })
    .await
    .unwrap_or_else(|e| Reply::Error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustyline::history::DefaultHistory;

    #[test]
    fn completes_and_hints_command_names() {
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let (start, found) = CommandHelper.complete("  ex", 4, &ctx).unwrap();
        assert_eq!(start, 2);
        let names: Vec<_> = found.iter().map(|p| p.display.as_str()).collect();
        assert_eq!(names, ["expire", "exists", "exit"]);
        let (_, found) = CommandHelper.complete("cl", 2, &ctx).unwrap();
        assert_eq!(found[0].replacement, "cluster ");
        assert_eq!(found.len(), 1);
        assert_eq!(
            CommandHelper.hint("cluster ", 8, &ctx).as_deref(),
            Some("[--json]")
        );
        assert_eq!(
            CommandHelper.hint("set ", 4, &ctx).as_deref(),
            Some("key value [EX seconds|PX milliseconds] [NX|XX]")
        );
        assert_eq!(
            CommandHelper.hint("expire k ", 9, &ctx).as_deref(),
            Some("seconds")
        );
        assert_eq!(CommandHelper.hint("get", 3, &ctx), None);
        let line = "set k \"a b\" ";
        assert_eq!(
            CommandHelper.hint(line, line.len(), &ctx).as_deref(),
            Some("[EX seconds|PX milliseconds] [NX|XX]")
        );
        assert_eq!(CommandHelper.hint("set k \"a ", 9, &ctx), None);
    }
}
