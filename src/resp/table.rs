//! The command table: every command the listener answers, with what
//! `COMMAND`, `COMMAND INFO`, `COMMAND COUNT` and `COMMAND DOCS` report and
//! what the arity check uses. One row per command; a command is answered
//! only if it has a row (otherwise `ERR unknown command`).
//!
//! Arity as Redis counts it: the command name included; positive = exactly,
//! negative = at least its absolute value.

use super::reply::Reply;
pub use super::rows::COMMANDS;

/// One documented argument.
#[derive(Clone, Copy, Debug)]
pub struct ArgDoc {
    /// Argument name (`key`, `seconds`, ...).
    pub name: &'static str,
    /// Redis' argument type: `key`, `string`, `integer`, `unix-time`,
    /// `pure-token`, `oneof`, `block`.
    pub kind: &'static str,
    /// The token that precedes it (`EX`), if any.
    pub token: Option<&'static str>,
    /// Whether it may be left out.
    pub optional: bool,
    /// Whether it may be repeated.
    pub multiple: bool,
    /// The choices of a `oneof`, the parts of a `block` (redis-cli 7.0
    /// crashes on a `oneof` without them).
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

/// The row of `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    index(name).map(|i| &COMMANDS[i])
}

/// The position of `name`'s row (any case) in [`COMMANDS`]. A linear scan
/// that compares lengths first: most rows fail on the length alone, which
/// measured cheaper than a binary search on a lower-cased copy (every
/// command runs through here).
pub fn index(name: &[u8]) -> Option<usize> {
    COMMANDS
        .iter()
        .position(|s| s.name.len() == name.len() && s.name.as_bytes().eq_ignore_ascii_case(name))
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
                if !matches!(d.kind, "pure-token" | "oneof" | "block") {
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
        assert!(
            names
                .iter()
                .all(|n| n.len() <= 32 && *n == n.to_ascii_lowercase())
        );
        for (i, s) in COMMANDS.iter().enumerate() {
            assert_eq!(index(s.name.to_ascii_uppercase().as_bytes()), Some(i));
        }
        assert_eq!(lookup(b"nosuchcommand").map(|s| s.name), None);
        assert_eq!(lookup(&[b'g'; 40]).map(|s| s.name), None);
        assert!(arity_ok(-3, 5) && !arity_ok(-3, 2) && arity_ok(2, 2) && !arity_ok(2, 3));
    }
}
