//! The CLI's commands: their table (names, arguments, help), parsing of an
//! argument list into a [`Command`], execution against a [`Client`], and the
//! [`Reply`] printed in redis-cli's conventions.
//!
//! Reply formats (the same in the REPL and in one-shot mode):
//! `OK`, `(nil)`, `(integer) N`, the value itself, `(error) <message>`.
//! A value is printed as is when it is printable UTF-8, otherwise quoted
//! with escapes (`"\x00\xff"`), as redis-cli does.
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
        max: Some(5),
    },
    Spec {
        name: "get",
        args: "key",
        summary: "Get the value of key, (nil) if it does not exist",
        min: 1,
        max: Some(1),
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
        args: "",
        summary: "Check the server answers (PONG)",
        min: 0,
        max: Some(0),
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
    /// `ping`
    Ping,
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

/// What the server (or the CLI itself) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK`
    Ok,
    /// `(nil)`
    Nil,
    /// `(integer) N`
    Integer(i64),
    /// A value.
    Bulk(Bytes),
    /// Free text (`PONG`, help, metadata), printed as is.
    Text(String),
    /// `(error) <message>`
    Error(String),
}

impl Reply {
    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The reply as printed.
    pub fn render(&self) -> String {
        match self {
            Reply::Ok => "OK".into(),
            Reply::Nil => "(nil)".into(),
            Reply::Integer(n) => format!("(integer) {n}"),
            Reply::Bulk(b) => render_value(b),
            Reply::Text(t) => t.clone(),
            Reply::Error(e) => format!("(error) {e}"),
        }
    }
}

/// A value as printed: as is when printable UTF-8, else quoted with escapes.
fn render_value(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.chars().any(char::is_control)
    {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out.push('"');
    out
}

/// Parses `args` (command name first) into a [`Command`]; the error is the
/// message to print after `(error) `.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let Some(name) = args.first() else {
        return Err("no command given".into());
    };
    let Some(spec) = spec(name) else {
        return Err(format!(
            "unknown command '{name}', type 'help' for the list of commands"
        ));
    };
    let rest = &args[1..];
    if rest.len() < spec.min || spec.max.is_some_and(|max| rest.len() > max) {
        return Err(format!(
            "wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    let key = |i: usize| Bytes::copy_from_slice(rest[i].as_bytes());
    let keys = || {
        rest.iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect()
    };
    Ok(match spec.name {
        "ping" => Command::Ping,
        "set" => parse_set(rest)?,
        "get" => Command::Get(key(0)),
        "del" => Command::Del(keys()),
        "expire" => Command::Expire(key(0), parse_ttl(&rest[1], 1000, true)?),
        "pexpire" => Command::Expire(key(0), parse_ttl(&rest[1], 1, true)?),
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
        "info" => Command::Info(rest.first().map(|s| s.to_ascii_lowercase())),
        "cluster" => match rest.first().map(String::as_str) {
            None => Command::Cluster { json: false },
            Some(o) if o.eq_ignore_ascii_case("--json") => Command::Cluster { json: true },
            Some(o) => {
                return Err(format!(
                    "syntax error: unknown option '{o}' (expected --json)"
                ));
            }
        },
        "help" => Command::Help(rest.first().cloned()),
        _ => Command::Quit, // quit, exit
    })
}

/// `set key value [EX s|PX ms] [NX|XX]`, options in any order.
fn parse_set(rest: &[String]) -> Result<Command, String> {
    let mut ttl_ms = None;
    let mut condition = Condition::Always;
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i].to_ascii_uppercase();
        match opt.as_str() {
            "EX" | "PX" => {
                if ttl_ms.is_some() {
                    return Err("syntax error: EX and PX given more than once".into());
                }
                let Some(n) = rest.get(i + 1) else {
                    return Err(format!("syntax error: {opt} needs a value"));
                };
                let unit = if opt == "EX" { 1000 } else { 1 };
                ttl_ms = Some(parse_ttl(n, unit, false)?);
                i += 2;
            }
            "NX" | "XX" => {
                if condition != Condition::Always {
                    return Err("syntax error: NX and XX given more than once".into());
                }
                condition = if opt == "NX" {
                    Condition::IfAbsent
                } else {
                    Condition::IfPresent
                };
                i += 1;
            }
            _ => {
                return Err(format!(
                    "syntax error: unknown option '{}' (expected EX, PX, NX or XX)",
                    rest[i]
                ));
            }
        }
    }
    Ok(Command::Set {
        key: Bytes::copy_from_slice(rest[0].as_bytes()),
        value: Bytes::copy_from_slice(rest[1].as_bytes()),
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
    let result = match cmd {
        Command::Ping => client.ping().await.map(|()| Reply::Text("PONG".into())),
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
            .map(|written| if written { Reply::Ok } else { Reply::Nil }),
        Command::Get(key) => client
            .get(key)
            .await
            .map(|v| v.map_or(Reply::Nil, Reply::Bulk)),
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
        Command::Quit => Ok(Reply::Ok),
    };
    result.unwrap_or_else(|e| Reply::Error(e.to_string()))
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
            out.push_str("Quote arguments with spaces: set greeting \"hello world\"");
            Reply::Text(out)
        }
        Some(name) => match spec(name) {
            Some(s) => {
                Reply::Text(format!("{} {}\n  {}", s.name, s.args, s.summary).replace(" \n", "\n"))
            }
            None => Reply::Error(format!(
                "unknown command '{name}', type 'help' for the list of commands"
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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
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
        assert_eq!(
            parse(&args("expire k 10")).unwrap(),
            Command::Expire(Bytes::from_static(b"k"), 10_000)
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
        assert_eq!(err("get"), "wrong number of arguments for 'get' command");
        assert_eq!(
            err("get a b"),
            "wrong number of arguments for 'get' command"
        );
        assert_eq!(
            err("frobnicate x"),
            "unknown command 'frobnicate', type 'help' for the list of commands"
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
        assert_eq!(err("set k v EX"), "syntax error: EX needs a value");
        assert_eq!(
            err("cluster --yaml"),
            "syntax error: unknown option '--yaml' (expected --json)"
        );
        assert_eq!(
            err("cluster --json x"),
            "wrong number of arguments for 'cluster' command"
        );
        assert_eq!(
            err("set k v NX XX"),
            "syntax error: NX and XX given more than once"
        );
        assert_eq!(
            err("set k v FOO"),
            "syntax error: unknown option 'FOO' (expected EX, PX, NX or XX)"
        );
    }

    #[test]
    fn renders_like_redis_cli() {
        assert_eq!(Reply::Ok.render(), "OK");
        assert_eq!(Reply::Nil.render(), "(nil)");
        assert_eq!(Reply::Integer(-2).render(), "(integer) -2");
        assert_eq!(
            Reply::Error("empty key".into()).render(),
            "(error) empty key"
        );
        assert_eq!(
            Reply::Bulk(Bytes::from_static(b"hello world")).render(),
            "hello world"
        );
        assert_eq!(
            Reply::Bulk(Bytes::from_static(b"a\x00\xff\"\n")).render(),
            "\"a\\x00\\xff\\\"\\n\""
        );
    }

    #[test]
    fn help_for_one_command() {
        assert_eq!(
            help(Some("GET")).render(),
            "get key\n  Get the value of key, (nil) if it does not exist"
        );
        assert_eq!(
            help(Some("ping")).render(),
            "ping\n  Check the server answers (PONG)"
        );
    }
}
