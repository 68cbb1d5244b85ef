//! ZooKeeper authentication of a cluster node: `cluster.zk_auth:` in the
//! server config (docs/SECURITY.md, "ZooKeeper ACLs").
//!
//! ```yaml
//! cluster:
//!   zk_auth:
//!     scheme: digest
//!     user: caskade
//!     password_file: /etc/caskade/zk.password   # or CASKADE_CLUSTER_ZK_AUTH_PASSWORD
//!     world_read: true
//! ```
//!
//! Off by default (`user` empty): the session authenticates as nobody and
//! every znode is created world-writable, as before. With `user` set, the
//! session authenticates with ZooKeeper's `digest` scheme before its first
//! operation, and every znode caskade creates gives ALL only to that
//! identity (and READ to everyone when `world_read`).
//!
//! Invariants checked at load ([`ZkAuthOptions::validate`]):
//! - `scheme` is `digest` (an unknown scheme is a parse error naming it);
//! - with `user` set it is non-empty, printable and without `:` (the
//!   digest credential is `user:password`), and exactly one of `password`
//!   and `password_file` is set; without `user` neither may be set;
//! - the password is never printed: `Debug` masks it, and no log line or
//!   error message contains it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// ZooKeeper authentication schemes caskade speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZkScheme {
    /// ZooKeeper's built-in `digest` scheme: the identity is
    /// `user:base64(sha1(user:password))`.
    #[default]
    Digest,
}

/// `cluster.zk_auth:` of the server config.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZkAuthOptions {
    /// Authentication scheme. Default (and only) `digest`.
    pub scheme: ZkScheme,
    /// The ZooKeeper user caskade's znodes belong to. Empty (the default):
    /// no authentication, world-writable znodes.
    pub user: String,
    /// The password, for the environment variable
    /// `CASKADE_CLUSTER_ZK_AUTH_PASSWORD`; prefer `password_file` in files.
    pub password: String,
    /// File holding the password (one trailing newline is ignored).
    pub password_file: PathBuf,
    /// Give READ on caskade's znodes to everyone (`world:anyone:r`), so
    /// operators can inspect the cluster with `zkCli.sh` without its
    /// password. Writes, deletes and creates stay caskade's only. Default
    /// true.
    pub world_read: bool,
}

impl Default for ZkAuthOptions {
    fn default() -> Self {
        ZkAuthOptions {
            scheme: ZkScheme::Digest,
            user: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            world_read: true,
        }
    }
}

impl std::fmt::Debug for ZkAuthOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password (logs, panics, `{:?}` of the config).
        f.debug_struct("ZkAuthOptions")
            .field("scheme", &self.scheme)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() { "" } else { "***" },
            )
            .field("password_file", &self.password_file)
            .field("world_read", &self.world_read)
            .finish()
    }
}

impl ZkAuthOptions {
    /// Whether the node authenticates to ZooKeeper.
    pub fn enabled(&self) -> bool {
        !self.user.is_empty()
    }

    /// Checks the module invariants.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = !self.password_file.as_os_str().is_empty();
        if !self.enabled() {
            if !self.password.is_empty() || file {
                return Err(ConfigError::Invalid(
                    "cluster.zk_auth.password and cluster.zk_auth.password_file need \
                     cluster.zk_auth.user (ZooKeeper authentication is off without it)"
                        .into(),
                ));
            }
            return Ok(());
        }
        if self.user.contains(':') || !self.user.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(ConfigError::Invalid(format!(
                "cluster.zk_auth.user {:?} must be printable, without spaces or ':'",
                self.user
            )));
        }
        match (self.password.is_empty(), file) {
            (true, false) => Err(ConfigError::Invalid(
                "cluster.zk_auth.user needs a password: set cluster.zk_auth.password_file or \
                 CASKADE_CLUSTER_ZK_AUTH_PASSWORD"
                    .into(),
            )),
            (false, true) => Err(ConfigError::Invalid(
                "cluster.zk_auth: set either password or password_file, not both".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The password: `password`, or the content of `password_file` without
    /// its trailing newline. The error names the file, never the password.
    pub fn read_password(&self) -> Result<String, ConfigError> {
        if !self.password.is_empty() {
            return Ok(self.password.clone());
        }
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read cluster.zk_auth.password_file {}: {e}",
                self.password_file.display()
            ))
        })?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "cluster.zk_auth.password_file {} is empty",
                self.password_file.display()
            )));
        }
        Ok(password.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(user: &str, password: &str, file: &str) -> ZkAuthOptions {
        ZkAuthOptions {
            user: user.into(),
            password: password.into(),
            password_file: file.into(),
            ..Default::default()
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_key() {
        ZkAuthOptions::default().validate().unwrap();
        on("caskade", "pw", "").validate().unwrap();
        on("caskade", "", "/etc/zk.pw").validate().unwrap();
        let cases = [
            (
                on("", "pw", ""),
                "cluster.zk_auth.password and cluster.zk_auth.password_file need \
                 cluster.zk_auth.user (ZooKeeper authentication is off without it)",
            ),
            (
                on("a:b", "pw", ""),
                "cluster.zk_auth.user \"a:b\" must be printable, without spaces or ':'",
            ),
            (
                on("a b", "pw", ""),
                "cluster.zk_auth.user \"a b\" must be printable, without spaces or ':'",
            ),
            (
                on("caskade", "", ""),
                "cluster.zk_auth.user needs a password: set cluster.zk_auth.password_file or \
                 CASKADE_CLUSTER_ZK_AUTH_PASSWORD",
            ),
            (
                on("caskade", "pw", "/f"),
                "cluster.zk_auth: set either password or password_file, not both",
            ),
        ];
        for (opts, want) in cases {
            let e = opts.validate().unwrap_err().to_string();
            assert_eq!(e, format!("invalid configuration: {want}"));
        }
    }

    /// The password and user come from the environment like every key,
    /// and the warnings about unknown `CASKADE_*` variables stay empty.
    #[test]
    fn credentials_come_from_the_environment() {
        let env = [
            ("CASKADE_CLUSTER_ZK_AUTH_USER", "caskade"),
            ("CASKADE_CLUSTER_ZK_AUTH_PASSWORD", "from-env"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let (c, warnings) = crate::config::Config::load(None, env).unwrap();
        let z = &c.cluster.unwrap().zk_auth;
        assert_eq!(
            (z.user.as_str(), z.read_password().unwrap().as_str()),
            ("caskade", "from-env")
        );
        assert_eq!(warnings, Vec::<String>::new());
    }

    #[test]
    fn an_unknown_scheme_is_a_parse_error() {
        let e = serde_yaml_ng::from_str::<ZkAuthOptions>("{scheme: sasl, user: a}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant `sasl`, expected `digest`"),
            "{e}"
        );
    }

    #[test]
    fn the_password_file_loses_its_newline_and_the_password_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let opts = on("caskade", "", f.to_str().unwrap());
        assert_eq!(opts.read_password().unwrap(), "hunter2");
        let shown = on("caskade", "hunter2", "");
        assert!(!format!("{shown:?}").contains("hunter2"));
        std::fs::write(&f, "\n").unwrap();
        let e = opts.read_password().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid configuration: cluster.zk_auth.password_file {} is empty",
                f.display()
            )
        );
    }
}
