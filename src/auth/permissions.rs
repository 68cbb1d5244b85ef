//! The permission each gRPC method and each RESP command needs.
//!
//! Invariants:
//! - every method of `caskade.v1.Kv` has a row in [`GRPC`] (a test reads
//!   proto/kv.proto); a method without a row needs `admin` (fail closed);
//! - a RESP command needs `write` if its table row has the `write` flag,
//!   `read` if it has `readonly`, `admin` for `CONFIG`; connection
//!   commands (`PING`, `ECHO`, `SELECT`, `CLIENT`, `COMMAND`, `WAIT`) need
//!   only a logged-in user, and `AUTH`, `HELLO`, `QUIT`, `RESET` not even
//!   that (as Redis' `no-auth` commands);
//! - one permission per request, none implying another (as Redis ACL
//!   categories): a user that may only `write` can still see values that
//!   writes return (`GETDEL`, `GETEX`, `SET ... GET`), as in Redis.

use crate::config::auth::Permission;

/// What a request needs: `None` = any authenticated user.
pub type Need = Option<Permission>;

/// `caskade.v1.Kv` methods and what they need.
pub const GRPC: &[(&str, Need)] = &[
    ("Ping", None),
    ("Metadata", None),
    ("Get", Some(Permission::Read)),
    ("Exists", Some(Permission::Read)),
    ("Ttl", Some(Permission::Read)),
    ("Strlen", Some(Permission::Read)),
    ("ExpireTime", Some(Permission::Read)),
    ("MGet", Some(Permission::Read)),
    ("DbSize", Some(Permission::Read)),
    ("Info", Some(Permission::Read)),
    ("Set", Some(Permission::Write)),
    ("SetWith", Some(Permission::Write)),
    ("Del", Some(Permission::Write)),
    ("Expire", Some(Permission::Write)),
    ("ExpireWith", Some(Permission::Write)),
    ("Persist", Some(Permission::Write)),
    ("GetDel", Some(Permission::Write)),
    ("GetEx", Some(Permission::Write)),
    ("IncrBy", Some(Permission::Write)),
    ("Append", Some(Permission::Write)),
    ("MSet", Some(Permission::Write)),
    // Any user may open it; each message is checked as MGet / MSet
    // (src/server/service/forward.rs).
    ("Forward", None),
    ("Reassign", Some(Permission::Admin)),
    ("ReassignStatus", Some(Permission::Admin)),
    ("ReassignCancel", Some(Permission::Admin)),
    ("ReassignThrottle", Some(Permission::Admin)),
    ("Decommission", Some(Permission::Admin)),
];

/// What the gRPC method `method` (the last segment of its path) needs.
pub fn grpc(method: &str) -> Need {
    GRPC.iter()
        .find(|(m, _)| *m == method)
        .map_or(Some(Permission::Admin), |(_, n)| *n)
}

/// How a RESP command is let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespNeed {
    /// Served before authentication (`AUTH`, `HELLO`, `QUIT`, `RESET`).
    NoAuth,
    /// Served to an authenticated user holding the permission, if any.
    User(Need),
}

/// What the RESP command `name` (lower case, as in its table row) with
/// `flags` needs.
pub fn resp(name: &str, flags: &[&str]) -> RespNeed {
    match name {
        "auth" | "hello" | "quit" | "reset" => RespNeed::NoAuth,
        "config" => RespNeed::User(Some(Permission::Admin)),
        "info" | "dbsize" => RespNeed::User(Some(Permission::Read)),
        _ if flags.contains(&"write") => RespNeed::User(Some(Permission::Write)),
        _ if flags.contains(&"readonly") => RespNeed::User(Some(Permission::Read)),
        _ if flags.contains(&"admin") => RespNeed::User(Some(Permission::Admin)),
        _ => RespNeed::User(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kv_method_has_a_row() {
        let proto = include_str!("../../proto/kv.proto");
        let mut methods = Vec::new();
        for line in proto.lines() {
            if let Some(rest) = line.trim().strip_prefix("rpc ") {
                methods.push(rest.split('(').next().unwrap_or("").trim().to_string());
            }
        }
        assert!(methods.len() >= 20, "{methods:?}");
        for m in &methods {
            assert!(
                GRPC.iter().any(|(r, _)| r == m),
                "no permission row for {m}"
            );
        }
        assert_eq!(
            methods.len(),
            GRPC.len(),
            "rows for methods that do not exist"
        );
        assert_eq!(grpc("NotAMethod"), Some(Permission::Admin));
    }

    #[test]
    fn every_resp_command_maps_by_its_flags() {
        use crate::resp::table::COMMANDS;
        for spec in COMMANDS {
            let need = resp(spec.name, spec.flags);
            if spec.flags.contains(&"write") {
                assert_eq!(
                    need,
                    RespNeed::User(Some(Permission::Write)),
                    "{}",
                    spec.name
                );
            }
        }
        let need = |n| resp(n, crate::resp::table::lookup(n.as_bytes()).unwrap().flags);
        assert_eq!(need("set"), RespNeed::User(Some(Permission::Write)));
        assert_eq!(need("get"), RespNeed::User(Some(Permission::Read)));
        assert_eq!(need("config"), RespNeed::User(Some(Permission::Admin)));
        assert_eq!(need("ping"), RespNeed::User(None));
        assert_eq!(need("hello"), RespNeed::NoAuth);
        assert_eq!(need("auth"), RespNeed::NoAuth);
    }
}
