//! The command table: every command the listener answers, with what
//! `COMMAND`, `COMMAND INFO`, `COMMAND COUNT` and `COMMAND DOCS` report and
//! what the arity check uses. One row per command; a command is answered
//! only if it has a row (otherwise `ERR unknown command`).
//!
//! Arity as Redis counts it: the command name included; positive = exactly,
//! negative = at least its absolute value.

use super::reply::Reply;

/// One documented argument.
#[derive(Clone, Copy, Debug)]
pub struct ArgDoc {
    /// Argument name (`key`, `seconds`, ...).
    pub name: &'static str,
    /// Redis' argument type: `key`, `string`, `integer`, `pure-token`, `oneof`.
    pub kind: &'static str,
    /// The token that precedes it (`EX`), if any.
    pub token: Option<&'static str>,
    /// Whether it may be left out.
    pub optional: bool,
    /// Whether it may be repeated.
    pub multiple: bool,
    /// The choices of a `oneof` (redis-cli 7.0 crashes on a `oneof`
    /// without them).
    pub sub: &'static [ArgDoc],
}

/// One command row.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity (see the module doc).
    pub arity: i64,
    /// `COMMAND` flags.
    pub flags: &'static [&'static str],
    /// First key position (0 = none), last key (-1 = the last argument),
    /// step.
    pub keys: (i64, i64, i64),
    /// Redis' command group.
    pub group: &'static str,
    /// One-line summary (`COMMAND DOCS`).
    pub summary: &'static str,
    /// The Redis version that introduced it.
    pub since: &'static str,
    /// Arguments (`COMMAND DOCS`, redis-cli hints).
    pub args: &'static [ArgDoc],
}

/// A shorthand for an [`ArgDoc`].
const fn a(name: &'static str, kind: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        sub: &[],
    }
}

/// An optional token-led argument.
const fn opt(token: &'static str, name: &'static str, kind: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: Some(token),
        optional: true,
        multiple: false,
        sub: &[],
    }
}

/// A repeated argument.
const fn many(name: &'static str, kind: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: None,
        optional: false,
        multiple: true,
        sub: &[],
    }
}

/// An optional plain argument.
const fn maybe(name: &'static str, kind: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: None,
        optional: true,
        multiple: false,
        sub: &[],
    }
}

/// A pure token (`NX`).
const fn token(name: &'static str, token: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind: "pure-token",
        token: Some(token),
        optional: false,
        multiple: false,
        sub: &[],
    }
}

/// An optional choice of `sub`.
const fn oneof(name: &'static str, sub: &'static [ArgDoc]) -> ArgDoc {
    ArgDoc {
        name,
        kind: "oneof",
        token: None,
        optional: true,
        multiple: false,
        sub,
    }
}

/// A token and its value (`EX seconds`), as one choice of a `oneof`.
const fn led(token: &'static str, name: &'static str, kind: &'static str) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: Some(token),
        optional: false,
        multiple: false,
        sub: &[],
    }
}

/// SET's options.
const SET_ARGS: &[ArgDoc] = &[
    a("key", "key"),
    a("value", "string"),
    oneof("condition", &[token("nx", "NX"), token("xx", "XX")]),
    ArgDoc {
        optional: true,
        ..token("get", "GET")
    },
    oneof(
        "expiration",
        &[
            led("EX", "seconds", "integer"),
            led("PX", "milliseconds", "integer"),
            led("EXAT", "unix-time-seconds", "unix-time"),
            led("PXAT", "unix-time-milliseconds", "unix-time"),
            token("keepttl", "KEEPTTL"),
        ],
    ),
];

/// Flags of a write.
const W: &[&str] = &["write", "denyoom"];
/// Flags of a read.
const R: &[&str] = &["readonly", "fast"];
/// Flags of a connection command.
const C: &[&str] = &["fast", "loading", "stale"];

/// Every command answered, sorted by name.
pub const COMMANDS: &[Spec] = &[
    spec(
        "auth",
        -2,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy",
        ],
        (0, 0, 0),
        "connection",
        "Authenticates the connection.",
        "1.0.0",
        &[maybe("username", "string"), a("password", "string")],
    ),
    spec(
        "client",
        -2,
        &["loading", "stale"],
        (0, 0, 0),
        "connection",
        "A container for client connection commands.",
        "2.4.0",
        &[a("subcommand", "string")],
    ),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        (0, 0, 0),
        "server",
        "Returns detailed information about all commands.",
        "2.8.13",
        &[maybe("subcommand", "string")],
    ),
    spec(
        "config",
        -2,
        &["loading", "stale"],
        (0, 0, 0),
        "server",
        "A container for server configuration commands.",
        "2.0.0",
        &[a("subcommand", "string")],
    ),
    spec(
        "dbsize",
        1,
        R,
        (0, 0, 0),
        "server",
        "Returns the number of keys in the database.",
        "1.0.0",
        &[],
    ),
    spec(
        "del",
        -2,
        &["write"],
        (1, -1, 1),
        "generic",
        "Deletes one or more keys.",
        "1.0.0",
        &[many("key", "key")],
    ),
    spec(
        "echo",
        2,
        C,
        (0, 0, 0),
        "connection",
        "Returns the given string.",
        "1.0.0",
        &[a("message", "string")],
    ),
    spec(
        "exists",
        -2,
        R,
        (1, -1, 1),
        "generic",
        "Determines whether one or more keys exist.",
        "1.0.0",
        &[many("key", "key")],
    ),
    spec(
        "expire",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key in seconds.",
        "1.0.0",
        &[a("key", "key"), a("seconds", "integer")],
    ),
    spec(
        "get",
        2,
        R,
        (1, 1, 1),
        "string",
        "Returns the string value of a key.",
        "1.0.0",
        &[a("key", "key")],
    ),
    spec(
        "hello",
        -1,
        C,
        (0, 0, 0),
        "connection",
        "Handshakes with the Redis server.",
        "6.0.0",
        &[
            maybe("protover", "integer"),
            opt("SETNAME", "clientname", "string"),
        ],
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        (0, 0, 0),
        "server",
        "Returns information and statistics about the server.",
        "1.0.0",
        &[ArgDoc {
            multiple: true,
            ..maybe("section", "string")
        }],
    ),
    spec(
        "mget",
        -2,
        R,
        (1, -1, 1),
        "string",
        "Atomically returns the string values of one or more keys.",
        "1.0.0",
        &[many("key", "key")],
    ),
    spec(
        "pexpire",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key in milliseconds.",
        "2.6.0",
        &[a("key", "key"), a("milliseconds", "integer")],
    ),
    spec(
        "ping",
        -1,
        C,
        (0, 0, 0),
        "connection",
        "Returns the server's liveliness response.",
        "1.0.0",
        &[maybe("message", "string")],
    ),
    spec(
        "pttl",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Returns the expiration time in milliseconds of a key.",
        "2.6.0",
        &[a("key", "key")],
    ),
    spec(
        "quit",
        -1,
        C,
        (0, 0, 0),
        "connection",
        "Closes the connection.",
        "1.0.0",
        &[],
    ),
    spec(
        "reset",
        1,
        C,
        (0, 0, 0),
        "connection",
        "Resets the connection.",
        "6.2.0",
        &[],
    ),
    spec(
        "select",
        2,
        C,
        (0, 0, 0),
        "connection",
        "Changes the selected database.",
        "1.0.0",
        &[a("index", "integer")],
    ),
    spec(
        "set",
        -3,
        W,
        (1, 1, 1),
        "string",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
        "1.0.0",
        SET_ARGS,
    ),
    spec(
        "setnx",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Set the string value of a key only when the key doesn't exist.",
        "1.0.0",
        &[a("key", "key"), a("value", "string")],
    ),
    spec(
        "strlen",
        2,
        R,
        (1, 1, 1),
        "string",
        "Returns the length of a string value.",
        "2.2.0",
        &[a("key", "key")],
    ),
    spec(
        "ttl",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Returns the expiration time in seconds of a key.",
        "1.0.0",
        &[a("key", "key")],
    ),
    spec(
        "type",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Determines the type of value stored at a key.",
        "1.0.0",
        &[a("key", "key")],
    ),
    spec(
        "unlink",
        -2,
        &["write", "fast"],
        (1, -1, 1),
        "generic",
        "Asynchronously deletes one or more keys.",
        "4.0.0",
        &[many("key", "key")],
    ),
    spec(
        "wait",
        3,
        &[],
        (0, 0, 0),
        "generic",
        "Blocks until the asynchronous replication of all preceding write commands sent by the connection is completed.",
        "3.0.0",
        &[a("numreplicas", "integer"), a("timeout", "integer")],
    ),
];

/// A row (keeps the table one line per command).
#[allow(clippy::too_many_arguments)]
const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
    since: &'static str,
    args: &'static [ArgDoc],
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        group,
        summary,
        since,
        args,
    }
}

/// The row of `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether `argc` arguments (name included) fit `arity`.
pub fn arity_ok(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

impl Spec {
    /// The `COMMAND` / `COMMAND INFO` entry: name, arity, flags, first key,
    /// last key, step, ACL categories, tips, key specs, subcommands.
    pub fn info(&self) -> Reply {
        Reply::Array(vec![
            Reply::text(self.name),
            Reply::Int(self.arity),
            Reply::Set(self.flags.iter().map(|f| Reply::Simple(f)).collect()),
            Reply::Int(self.keys.0),
            Reply::Int(self.keys.1),
            Reply::Int(self.keys.2),
            Reply::Set(vec![Reply::Simple(match self.group {
                "string" => "@string",
                "generic" => "@keyspace",
                "connection" => "@connection",
                _ => "@admin",
            })]),
            Reply::Set(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    }

    /// The `COMMAND DOCS` entry's value (a map).
    pub fn docs(&self) -> Reply {
        let mut m = vec![
            (Reply::text("summary"), Reply::text(self.summary)),
            (Reply::text("since"), Reply::text(self.since)),
            (Reply::text("group"), Reply::text(self.group)),
        ];
        if !self.args.is_empty() {
            m.push((Reply::text("arguments"), arg_docs(self.args)));
        }
        Reply::Map(m)
    }
}

/// The `arguments` of a `COMMAND DOCS` entry.
fn arg_docs(args: &[ArgDoc]) -> Reply {
    Reply::Array(
        args.iter()
            .map(|d| {
                let mut m = vec![
                    (Reply::text("name"), Reply::text(d.name)),
                    (Reply::text("type"), Reply::text(d.kind)),
                ];
                if d.kind != "pure-token" && d.kind != "oneof" {
                    m.push((Reply::text("display_text"), Reply::text(d.name)));
                }
                if let Some(t) = d.token {
                    m.push((Reply::text("token"), Reply::text(t)));
                }
                let mut flags = Vec::new();
                if d.optional {
                    flags.push(Reply::Simple("optional"));
                }
                if d.multiple {
                    flags.push(Reply::Simple("multiple"));
                }
                if !flags.is_empty() {
                    m.push((Reply::text("flags"), Reply::Set(flags)));
                }
                if !d.sub.is_empty() {
                    m.push((Reply::text("arguments"), arg_docs(d.sub)));
                }
                Reply::Map(m)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        let names: Vec<&str> = COMMANDS.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(lookup(b"GeT").is_some());
        assert!(arity_ok(-3, 5) && !arity_ok(-3, 2) && arity_ok(2, 2) && !arity_ok(2, 3));
    }
}
