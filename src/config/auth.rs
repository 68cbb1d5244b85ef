//! Client authentication settings (`auth:` in the server config, `auth:` in
//! the CLI's): users with argon2 password hashes and permissions, like
//! Redis ACL users, and protected mode. docs/SECURITY.md ("Users and
//! protected mode") says what each one protects.
//!
//! Invariants checked at load ([`AuthOptions::validate`]), so a node never
//! starts with a user it could not check:
//! - user names are unique, non-empty, and made of `!`..`~` without `:`
//!   (HTTP Basic credentials split at the first `:`);
//! - every `password_hash` is an argon2 PHC string (`$argon2id$v=19$...`,
//!   as `caskade-cli hash-password` prints);
//! - permissions are `read`, `write` or `admin`; an unknown word is an
//!   error naming it, never a silent default;
//! - `failed_login_window_ms` is at least 1 when `max_failed_logins` is
//!   not 0 (a zero window would never lock).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// What a user may do. Each gRPC method and each RESP command needs at
/// most one of them (src/auth/permissions.rs); none implies another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read keys and server figures (`GET`, `EXISTS`, `TTL`, `INFO`, ...).
    Read,
    /// Change keys (`SET`, `DEL`, `EXPIRE`, `INCR`, ...).
    Write,
    /// Operate the cluster (`Reassign*`, `Decommission`, `CONFIG`).
    Admin,
}

impl Permission {
    /// The word used in the configuration and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// One user (`auth.users[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name (`AUTH name password`; `default` is the user of
    /// the one-argument `AUTH password`, as in Redis).
    pub name: String,
    /// The argon2 PHC string of the password (`caskade-cli hash-password`).
    pub password_hash: String,
    /// What the user may do.
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

/// The server's `auth:` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthOptions {
    /// The users. Empty (the default) = authentication off: every client
    /// may do everything.
    pub users: Vec<UserConfig>,
    /// Refuse to start when the client or the RESP listener binds a
    /// non-loopback address while `users` is empty. Default true.
    pub protected_mode: bool,
    /// Failed logins allowed from one address within
    /// `failed_login_window_ms`; the one that reaches it locks the address
    /// for one window (every login refused, no password checked). 0 = no
    /// limit. Default 10.
    pub max_failed_logins: u32,
    /// The window of `max_failed_logins`, and how long a lock lasts, in
    /// milliseconds. Default 60000.
    pub failed_login_window_ms: u64,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            users: Vec::new(),
            protected_mode: true,
            max_failed_logins: 10,
            failed_login_window_ms: 60_000,
        }
    }
}

impl AuthOptions {
    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks the module invariants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_failed_logins > 0 && self.failed_login_window_ms == 0 {
            return Err(ConfigError::Invalid(
                "auth.failed_login_window_ms must be at least 1 when auth.max_failed_logins is \
                 not 0 (set auth.max_failed_logins: 0 to turn the limit off)"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty()
                || u.name.contains(':')
                || !u.name.bytes().all(|b| (b'!'..=b'~').contains(&b))
            {
                return Err(ConfigError::Invalid(format!(
                    "auth.users[{i}].name {:?} must be non-empty, printable, without spaces or ':'",
                    u.name
                )));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "auth.users: user {:?} is defined twice",
                    u.name
                )));
            }
            let phc = argon2::PasswordHash::new(&u.password_hash);
            if !phc.is_ok_and(|h| h.algorithm.as_str().starts_with("argon2")) {
                return Err(ConfigError::Invalid(format!(
                    "auth.users[{i}].password_hash (user {:?}) is not an argon2 PHC string \
                     ($argon2id$v=19$...); make one with `caskade-cli hash-password`",
                    u.name
                )));
            }
        }
        Ok(())
    }
}

/// The CLI's `auth:` section: whom it logs in as. The environment
/// variables `CASKADE_USER` / `CASKADE_PASSWORD` override it, and the REPL
/// prompts (without echo) when the server asks for credentials.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientAuth {
    /// User name; empty = `default`.
    pub user: String,
    /// Password; empty = send no credentials.
    pub password: String,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password (logs, panics, `{:?}` of the config).
        f.debug_struct("ClientAuth")
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An argon2id hash of "secret" (cheap parameters).
    const HASH: &str =
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$5p8bJBzQc9OQnCEMTlvEnJbJBmAsLjKYWPlXGyVSwUk";

    fn user(name: &str, hash: &str) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: hash.into(),
            permissions: vec![Permission::Read],
        }
    }

    #[test]
    fn bad_users_are_refused_with_their_name() {
        let ok = AuthOptions {
            users: vec![user("alice", HASH)],
            ..Default::default()
        };
        ok.validate().unwrap();
        let cases = [
            (vec![user("a b", HASH)], "auth.users[0].name \"a b\""),
            (vec![user("a:b", HASH)], "auth.users[0].name \"a:b\""),
            (vec![user("", HASH)], "auth.users[0].name \"\""),
            (
                vec![user("alice", HASH), user("alice", HASH)],
                "user \"alice\" is defined twice",
            ),
            (
                vec![user("bob", "plaintext")],
                "auth.users[0].password_hash (user \"bob\") is not an argon2 PHC string",
            ),
        ];
        for (users, want) in cases {
            let e = AuthOptions {
                users,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn unknown_permission_is_an_error() {
        let e = serde_yaml_ng::from_str::<AuthOptions>(&format!(
            "users: [{{name: a, password_hash: '{HASH}', permissions: [read, wirte]}}]"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `wirte`"), "{e}");
    }

    #[test]
    fn client_password_is_never_debug_printed() {
        let a = ClientAuth {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }
}
