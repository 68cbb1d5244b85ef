//! The CLI's commands: their table (names, arguments, help), parsing of an
//! argument list into a [`Command`], execution against a [`Client`], and the
//! [`Reply`] (printed by src/reply.rs as redis-cli prints it).
//!
//! Arguments are bytes (a key or value may be any bytes: `\xHH` in the
//! REPL, any byte of a one-shot argument). Errors found here are worded as
//! Redis words them where Redis has the same error (`ERR wrong number of
//! arguments for 'get' command`, `ERR syntax error`); TTL values get a
//! caskade explanation (`invalid TTL 'abc': not an integer`).
//!
//! Invariants: parsing never touches the network, so every arity and
//! syntax error is reported identically whether the server is up or not;
//! TTLs are checked here for syntax (integer, not negative, no overflow when
//! converted to ms) and by the server for range.

use std::fmt::Write as _;

use bytes::Bytes;
use caskade::client::{Client, KeyTtl, SetOptions};
use caskade::config::ClientConfig;
use caskade::storage::Condition;

use crate::cluster;
use crate::reply::{Reply, lossy};

/// One command of the table.
pub struct Spec {
    /// Command name, lower case.
    pub name: &'static str,
    /// Argument synopsis, shown by `help` and as a hint.
    pub args: &'static str,
    /// One-line description.
    pub summary: &'static str,
    /// Minimum number of arguments.
    min: usize,
    /// Maximum number of arguments; `None` = any number.
    max: Option<usize>,
}

/// Every command the CLI knows, in `help` order.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "set",
        args: "key value [EX seconds|PX milliseconds] [NX|XX]",
        summary: "Set key to value, optionally with a time to live; NX only if absent, XX only if present",
        min: 2,
        max: None,
    },
    Spec {
        name: "get",
        args: "key",
        summary: "Get the value of key, (nil) if it does not exist",
        min: 1,
        max: Some(1),
    },
    Spec {
        name: "mget",
        args: "key [key ...]",
        summary: "Get the values of keys, (nil) for each that does not exist",
        min: 1,
        max: None,
    },
    Spec {
        name: "del",
        args: "key [key ...]",
        summary: "Delete keys; replies how many existed",
        min: 1,
        max: None,
    },
    Spec {
        name: "expire",
        args: "key seconds",
        summary: "Make key expire in seconds (0 deletes it); 1 if it existed, 0 if not",
        min: 2,
        max: Some(2),
    },
    Spec {
        name: "pexpire",
        args: "key milliseconds",
        summary: "Make key expire in milliseconds; 1 if it existed, 0 if not",
        min: 2,
        max: Some(2),
    },
    Spec {
        name: "ttl",
        args: "key",
        summary: "Seconds key has left; -1 if it never expires, -2 if it does not exist",
        min: 1,
        max: Some(1),
    },
    Spec {
        name: "pttl",
        args: "key",
        summary: "Milliseconds key has left; -1 if it never expires, -2 if it does not exist",
        min: 1,
        max: Some(1),
    },
    Spec {
        name: "exists",
        args: "key [key ...]",
        summary: "Count how many of the keys exist",
        min: 1,
        max: None,
    },
    Spec {
        name: "ping",
        args: "[message]",
        summary: "Check the server answers: PONG, or the message given",
        min: 0,
        max: Some(1),
    },
    Spec {
        name: "metadata",
        args: "",
        summary: "Show the partitions, their leaders and replicas",
        min: 0,
        max: Some(0),
    },
    Spec {
        name: "info",
        args: "[section]",
        summary: "Show this node's figures: server, requests, storage, replication (its partitions: leader, epoch, ISR, log end, HW), cluster",
        min: 0,
        max: Some(1),
    },
    Spec {
        name: "cluster",
        args: "[--json]",
        summary: "Show every partition's leader, epoch, replicas, ISR, log end offsets and high watermark, from every node",
        min: 0,
        max: Some(1),
    },
    Spec {
        name: "help",
        args: "[command]",
        summary: "List the commands, or describe one",
        min: 0,
        max: Some(1),
    },
    Spec {
        name: "quit",
        args: "",
        summary: "Leave the REPL (also: exit, Ctrl-D)",
        min: 0,
        max: Some(0),
    },
    Spec {
        name: "exit",
        args: "",
        summary: "Leave the REPL (also: quit, Ctrl-D)",
        min: 0,
        max: Some(0),
    },
];

/// The spec of command `name` (case-insensitive).
pub fn spec(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `ping [message]`
    Ping(Option<Bytes>),
    /// `set key value [EX s|PX ms] [NX|XX]`
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Time to live in ms.
        ttl_ms: Option<u64>,
        /// NX / XX.
        condition: Condition,
    },
    /// `get key`
    Get(Bytes),
    /// `mget key...`
    Mget(Vec<Bytes>),
    /// `del key...`
    Del(Vec<Bytes>),
    /// `expire key s` / `pexpire key ms`, in ms.
    Expire(Bytes, u64),
    /// `ttl key` (`millis: false`) / `pttl key` (`millis: true`).
    Ttl {
        /// The key.
        key: Bytes,
        /// Answer in milliseconds.
        millis: bool,
    },
    /// `exists key...`
    Exists(Vec<Bytes>),
    /// `metadata`
    Metadata,
    /// `info [section]`
    Info(Option<String>),
    /// `cluster [--json]`
    Cluster {
        /// One JSON line instead of the table.
        json: bool,
    },
    /// `help [command]`
    Help(Option<String>),
    /// `quit` / `exit`
    Quit,
}

/// The message of an arity error, as Redis words it.
fn arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Redis' answer to a malformed option list.
const SYNTAX: &str = "ERR syntax error";

/// Parses `args` (command name first) into a [`Command`]; the error is the
/// message to print after `(error) `.
pub fn parse(args: &[Vec<u8>]) -> Result<Command, String> {
    let Some(name) = args.first() else {
        return Err("no command given".into());
    };
    let Some(spec) = std::str::from_utf8(name).ok().and_then(spec) else {
        return Err(format!(
            "ERR unknown command '{}', type 'help' for the list of commands",
            lossy(name)
        ));
    };
    let rest = &args[1..];
    if rest.len() < spec.min || spec.max.is_some_and(|max| rest.len() > max) {
        return Err(arity(spec.name));
    }
    let key = |i: usize| Bytes::copy_from_slice(&rest[i]);
    let keys = || rest.iter().map(|k| Bytes::copy_from_slice(k)).collect();
    let text = |i: usize| lossy(&rest[i]);
    Ok(match spec.name {
        "ping" => Command::Ping(rest.first().map(|m| Bytes::copy_from_slice(m))),
        "set" => parse_set(rest)?,
        "get" => Command::Get(key(0)),
        "mget" => Command::Mget(keys()),
        "del" => Command::Del(keys()),
        "expire" => Command::Expire(key(0), parse_ttl(&text(1), 1000, true)?),
        "pexpire" => Command::Expire(key(0), parse_ttl(&text(1), 1, true)?),
        "ttl" => Command::Ttl {
            key: key(0),
            millis: false,
        },
        "pttl" => Command::Ttl {
            key: key(0),
            millis: true,
        },
        "exists" => Command::Exists(keys()),
        "metadata" => Command::Metadata,
        "info" => Command::Info((!rest.is_empty()).then(|| text(0).to_ascii_lowercase())),
        "cluster" => match rest.first() {
            None => Command::Cluster { json: false },
            Some(o) if o.eq_ignore_ascii_case(b"--json") => Command::Cluster { json: true },
            Some(o) => {
                return Err(format!(
                    "ERR syntax error: unknown option '{}' (expected --json)",
                    lossy(o)
                ));
            }
        },
        "help" => Command::Help((!rest.is_empty()).then(|| text(0))),
        _ => Command::Quit, // quit, exit
    })
}

/// `set key value [EX s|PX ms] [NX|XX]`, options in any order, checked as
/// Redis checks them: `EX` and `PX` together, `NX` and `XX` together, an
/// option without its value or an unknown option is `ERR syntax error`
/// (the same option twice is accepted, the last value wins); the TTL is
/// checked only once the options are well formed.
fn parse_set(rest: &[Vec<u8>]) -> Result<Command, String> {
    // (unit in ms, the value as typed)
    let mut ttl: Option<(u64, &[u8])> = None;
    let mut condition = Condition::Always;
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i].to_ascii_uppercase();
        match opt.as_slice() {
            b"EX" | b"PX" => {
                let unit = if opt == b"EX" { 1000 } else { 1 };
                let (Some(value), true) = (rest.get(i + 1), ttl.is_none_or(|(u, _)| u == unit))
                else {
                    return Err(SYNTAX.into());
                };
                ttl = Some((unit, value));
                i += 2;
            }
            b"NX" | b"XX" => {
                let wanted = if opt == b"NX" {
                    Condition::IfAbsent
                } else {
                    Condition::IfPresent
                };
                if condition != Condition::Always && condition != wanted {
                    return Err(SYNTAX.into());
                }
                condition = wanted;
                i += 1;
            }
            _ => return Err(SYNTAX.into()),
        }
    }
    let ttl_ms = match ttl {
        Some((unit, text)) => Some(parse_ttl(&lossy(text), unit, false)?),
        None => None,
    };
    Ok(Command::Set {
        key: Bytes::copy_from_slice(&rest[0]),
        value: Bytes::copy_from_slice(&rest[1]),
        ttl_ms,
        condition,
    })
}

/// Parses a TTL of `text` units of `unit_ms` into milliseconds.
pub fn parse_ttl(text: &str, unit_ms: u64, allow_zero: bool) -> Result<u64, String> {
    let invalid = |why: &str| Err(format!("invalid TTL '{text}': {why}"));
    let n: u64 = match text.parse() {
        Ok(n) => n,
        Err(e) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            return if numeric && text.starts_with('-') {
                invalid("must not be negative")
            } else if numeric || matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
                invalid("out of range")
            } else {
                invalid("not an integer")
            };
        }
    };
    if n == 0 && !allow_zero {
        return invalid("must be positive");
    }
    match n.checked_mul(unit_ms) {
        Some(ms) => Ok(ms),
        None => invalid("out of range"),
    }
}

/// Runs `cmd` against `client`; `config` gives the other seeds and the
/// timeouts for commands that reach every node (`cluster`). `Quit` is the
/// caller's business.
pub async fn execute(client: &Client, config: &ClientConfig, cmd: Command) -> Reply {
    try_execute(client, config, cmd)
        .await
        .unwrap_or_else(|e| Reply::Error(e.to_string()))
}

/// [`execute`], with the error as it came (the REPL logs in on
/// `Unauthenticated`, src/login.rs).
pub async fn try_execute(
    client: &Client,
    config: &ClientConfig,
    cmd: Command,
) -> caskade::Result<Reply> {
    match cmd {
        // PING with a message echoes it, as Redis; the server is pinged
        // either way.
        Command::Ping(message) => client
            .ping()
            .await
            .map(|()| message.map_or(Reply::Status("PONG"), Reply::Bulk)),
        Command::Set {
            key,
            value,
            ttl_ms,
            condition,
        } => client
            .set(
                key,
                value,
                SetOptions {
                    ttl_ms,
                    condition,
                    acks: None,
                },
            )
            .await
            .map(|written| {
                if written {
                    Reply::Status("OK")
                } else {
                    Reply::Nil
                }
            }),
        Command::Get(key) => client
            .get(key)
            .await
            .map(|v| v.map_or(Reply::Nil, Reply::Bulk)),
        Command::Mget(keys) => {
            async {
                let mut values = Vec::with_capacity(keys.len());
                for key in keys {
                    values.push(client.get(key).await?.map_or(Reply::Nil, Reply::Bulk));
                }
                Ok(Reply::Array(values))
            }
            .await
        }
        Command::Del(keys) => client.del(keys).await.map(int),
        Command::Expire(key, ms) => client.expire(key, ms).await.map(|e| int(u64::from(e))),
        Command::Ttl { key, millis } => client.ttl(key).await.map(|t| {
            Reply::Integer(match t {
                KeyTtl::Missing => -2,
                KeyTtl::Persistent => -1,
                KeyTtl::Ms(ms) if millis => i64::try_from(ms).unwrap_or(i64::MAX),
                // Rounded as Redis' TTL does.
                KeyTtl::Ms(ms) => i64::try_from(ms.saturating_add(500) / 1000).unwrap_or(i64::MAX),
            })
        }),
        Command::Exists(keys) => client.exists(keys).await.map(int),
        Command::Metadata => client
            .metadata()
            .await
            .map(|m| Reply::Text(render_metadata(&m))),
        Command::Info(section) => client
            .info()
            .await
            .and_then(|i| render_info(&i, section.as_deref()).map(Reply::Text)),
        Command::Cluster { json } => cluster::gather(client, config).await.and_then(|reports| {
            let view = cluster::merge(&reports);
            if json {
                serde_json::to_string(&view)
                    .map(Reply::Text)
                    .map_err(|e| caskade::Error::Internal(format!("cannot encode JSON: {e}")))
            } else {
                Ok(Reply::Text(cluster::render(&view)))
            }
        }),
        Command::Help(topic) => Ok(help(topic.as_deref())),
        Command::Quit => Ok(Reply::Status("OK")),
    }
}

/// An unsigned count as `(integer) N`.
fn int(n: u64) -> Reply {
    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `help` and `help CMD`.
pub fn help(topic: Option<&str>) -> Reply {
    match topic {
        None => {
            let mut out = String::from("Commands (case-insensitive):\n");
            for s in COMMANDS {
                let usage = format!("{} {}", s.name, s.args);
                let _ = writeln!(out, "  {:<58} {}", usage.trim_end(), s.summary);
            }
            out.push_str(
                "Quote arguments with spaces: set greeting \"hello world\"; bytes: \"\\x00\\xff\"",
            );
            Reply::Text(out)
        }
        Some(name) => match spec(name) {
            Some(s) => {
                Reply::Text(format!("{} {}\n  {}", s.name, s.args, s.summary).replace(" \n", "\n"))
            }
            None => Reply::Error(format!(
                "ERR unknown command '{name}', type 'help' for the list of commands"
            )),
        },
    }
}

/// `Info` as redis-cli prints `INFO`: `# Section` headers, `key:value`
/// lines, a blank line between sections; only `section` if given.
fn render_info(
    info: &caskade::proto::InfoResponse,
    section: Option<&str>,
) -> caskade::Result<String> {
    let mut out = String::new();
    for s in &info.sections {
        if section.is_some_and(|want| want != s.name) {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let mut title = s.name.clone();
        if let Some(first) = title.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        let _ = writeln!(out, "# {title}");
        for f in &s.fields {
            let _ = writeln!(out, "{}:{}", f.key, f.value);
        }
    }
    if out.is_empty() {
        let names: Vec<&str> = info.sections.iter().map(|s| s.name.as_str()).collect();
        return Err(caskade::Error::InvalidInput(format!(
            "unknown section '{}' (one of: {})",
            section.unwrap_or_default(),
            names.join(", ")
        )));
    }
    out.pop(); // the last newline: the caller adds its own
    Ok(out)
}

/// Metadata as text lines.
fn render_metadata(m: &caskade::proto::MetadataResponse) -> String {
    let mut out = format!(
        "node {} ({}), {} partitions, partitioner {}",
        m.node_id, m.mode, m.partition_count, m.partitioner
    );
    if let Some(l) = &m.limits {
        let _ = write!(
            out,
            ", max key {} B, max value {} B",
            l.max_key_bytes, l.max_value_bytes
        );
    }
    for n in &m.nodes {
        let _ = write!(out, "\nnode {} at {}", n.id, n.client_addr);
    }
    for p in &m.partitions {
        let _ = write!(
            out,
            "\npartition {} leader {} epoch {} replicas [{}] isr [{}]",
            p.id,
            p.leader,
            p.leader_epoch,
            p.replicas.join(", "),
            p.isr.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Output;

    fn args(s: &str) -> Vec<Vec<u8>> {
        s.split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect()
    }

    fn err(s: &str) -> String {
        parse(&args(s)).unwrap_err()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse(&args("SET k v px 1500 nx")).unwrap(),
            Command::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ttl_ms: Some(1500),
                condition: Condition::IfAbsent,
            }
        );
        // The same option twice is accepted, the last value wins (Redis).
        assert_eq!(
            parse(&args("set k v EX 10 ex 20 XX xx")).unwrap(),
            Command::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ttl_ms: Some(20_000),
                condition: Condition::IfPresent,
            }
        );
        assert_eq!(
            parse(&[b"set".to_vec(), b"\x00".to_vec(), b"\x00\xff".to_vec()]).unwrap(),
            Command::Set {
                key: Bytes::from_static(b"\x00"),
                value: Bytes::from_static(b"\x00\xff"),
                ttl_ms: None,
                condition: Condition::Always,
            }
        );
        assert_eq!(
            parse(&args("expire k 10")).unwrap(),
            Command::Expire(Bytes::from_static(b"k"), 10_000)
        );
        assert_eq!(parse(&args("ping")).unwrap(), Command::Ping(None));
        assert_eq!(
            parse(&args("PING hi")).unwrap(),
            Command::Ping(Some(Bytes::from_static(b"hi")))
        );
        assert_eq!(parse(&args("exit")).unwrap(), Command::Quit);
        assert_eq!(
            parse(&args("CLUSTER")).unwrap(),
            Command::Cluster { json: false }
        );
        assert_eq!(
            parse(&args("cluster --JSON")).unwrap(),
            Command::Cluster { json: true }
        );
    }

    #[test]
    fn bad_input_messages() {
        assert_eq!(
            err("get"),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err("get a b"),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err("ping a b"),
            "ERR wrong number of arguments for 'ping' command"
        );
        assert_eq!(
            err("frobnicate x"),
            "ERR unknown command 'frobnicate', type 'help' for the list of commands"
        );
        assert_eq!(err("expire k abc"), "invalid TTL 'abc': not an integer");
        assert_eq!(err("expire k -5"), "invalid TTL '-5': must not be negative");
        assert_eq!(err("expire k 1.5"), "invalid TTL '1.5': not an integer");
        assert_eq!(
            err("expire k 99999999999999999999"),
            "invalid TTL '99999999999999999999': out of range"
        );
        assert_eq!(
            err("expire k 18446744073709551615"),
            "invalid TTL '18446744073709551615': out of range"
        );
        assert_eq!(err("set k v EX 0"), "invalid TTL '0': must be positive");
        assert_eq!(
            err("cluster --yaml"),
            "ERR syntax error: unknown option '--yaml' (expected --json)"
        );
        assert_eq!(
            err("cluster --json x"),
            "ERR wrong number of arguments for 'cluster' command"
        );
        // Each of these is `ERR syntax error` from Redis 7.0 too.
        for line in [
            "set k v EX 10 PX 100",
            "set k v PX 100 EX 10",
            "set k v NX XX",
            "set k v xx nx",
            "set k v EX",
            "set k v FOO",
            "set k v KEEPTTL",
            "set k v EX abc NX XX",
        ] {
            assert_eq!(err(line), "ERR syntax error", "{line}");
        }
    }

    #[test]
    fn help_for_one_command() {
        let shown = |r: Reply| String::from_utf8(r.render(Output::Terminal)).unwrap();
        assert_eq!(
            shown(help(Some("GET"))),
            "get key\n  Get the value of key, (nil) if it does not exist"
        );
        assert_eq!(
            shown(help(Some("ping"))),
            "ping [message]\n  Check the server answers: PONG, or the message given"
        );
    }
}
