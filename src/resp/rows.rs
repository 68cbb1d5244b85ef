//! The rows of the command table ([`super::table`]): one [`Spec`] per
//! command, sorted by name, with the arguments `COMMAND DOCS` reports (and
//! redis-cli turns into hints). Flags, key positions and summaries are
//! Redis 7's.

use super::table::{ArgDoc, Spec};

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

/// GETEX's options.
const GETEX_ARGS: &[ArgDoc] = &[
    a("key", "key"),
    oneof(
        "expiration",
        &[
            led("EX", "seconds", "integer"),
            led("PX", "milliseconds", "integer"),
            led("EXAT", "unix-time-seconds", "unix-time"),
            led("PXAT", "unix-time-milliseconds", "unix-time"),
            token("persist", "PERSIST"),
        ],
    ),
];

/// The NX/XX/GT/LT condition of the EXPIRE family.
const EXPIRE_CONDITION: ArgDoc = oneof(
    "condition",
    &[
        token("nx", "NX"),
        token("xx", "XX"),
        token("gt", "GT"),
        token("lt", "LT"),
    ],
);

/// MSET's key-value pairs: a repeated block.
const MSET_ARGS: &[ArgDoc] = &[ArgDoc {
    name: "data",
    kind: "block",
    token: None,
    optional: false,
    multiple: true,
    sub: &[a("key", "key"), a("value", "string")],
}];

/// Flags of a write.
const W: &[&str] = &["write", "denyoom"];
/// Flags of a read.
const R: &[&str] = &["readonly", "fast"];
/// Flags of a connection command.
const C: &[&str] = &["fast", "loading", "stale"];

/// Every command answered, sorted by name.
pub const COMMANDS: &[Spec] = &[
    spec(
        "append",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
        "2.0.0",
        &[a("key", "key"), a("value", "string")],
    ),
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
        "decr",
        2,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
        &[a("key", "key")],
    ),
    spec(
        "decrby",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
        &[a("key", "key"), a("decrement", "integer")],
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
        &[a("key", "key"), a("seconds", "integer"), EXPIRE_CONDITION],
    ),
    spec(
        "expireat",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key to a Unix timestamp.",
        "1.2.0",
        &[
            a("key", "key"),
            a("unix-time-seconds", "unix-time"),
            EXPIRE_CONDITION,
        ],
    ),
    spec(
        "expiretime",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Returns the expiration time of a key as a Unix timestamp.",
        "7.0.0",
        &[a("key", "key")],
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
        "getdel",
        2,
        &["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns the string value of a key after deleting the key.",
        "6.2.0",
        &[a("key", "key")],
    ),
    spec(
        "getex",
        -2,
        &["write", "fast"],
        (1, 1, 1),
        "string",
        "Returns the string value of a key after setting its expiration time.",
        "6.2.0",
        GETEX_ARGS,
    ),
    spec(
        "getset",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
        "1.0.0",
        &[a("key", "key"), a("value", "string")],
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
        "incr",
        2,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
        &[a("key", "key")],
    ),
    spec(
        "incrby",
        3,
        &["write", "denyoom", "fast"],
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.",
        "1.0.0",
        &[a("key", "key"), a("increment", "integer")],
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
        "mset",
        -3,
        W,
        (1, -1, 2),
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
        "1.0.1",
        MSET_ARGS,
    ),
    spec(
        "persist",
        2,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Removes the expiration time of a key.",
        "2.2.0",
        &[a("key", "key")],
    ),
    spec(
        "pexpire",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key in milliseconds.",
        "2.6.0",
        &[
            a("key", "key"),
            a("milliseconds", "integer"),
            EXPIRE_CONDITION,
        ],
    ),
    spec(
        "pexpireat",
        -3,
        &["write", "fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
        "2.6.0",
        &[
            a("key", "key"),
            a("unix-time-milliseconds", "unix-time"),
            EXPIRE_CONDITION,
        ],
    ),
    spec(
        "pexpiretime",
        2,
        R,
        (1, 1, 1),
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
        "7.0.0",
        &[a("key", "key")],
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
