//! ZooKeeper authentication of this node's session and the ACL of every
//! znode caskade creates (`cluster.zk_auth`, docs/SECURITY.md "ZooKeeper
//! ACLs").
//!
//! With `cluster.zk_auth.user` set, the session sends its `digest`
//! credentials in the connect handshake, so they are in force before the
//! first operation (and sent again by the client on every reconnect), and
//! the ACL of caskade's znodes is ALL for `digest:<user>:<hash>` (this
//! node's identity, [`digest_id`]) plus READ for `world:anyone` when
//! `world_read`. Without it, the ACL is `world:anyone` ALL, as before.
//!
//! Invariants:
//! - the ACL is built once per node ([`Credentials::acl`]) and handed to
//!   [`super::znode::Paths`], whose [`super::znode::Paths::options`] is the
//!   only way the ZooKeeper layer builds create options: no call site can
//!   create a znode without it (a unit test checks the sources).
//! - before creating or writing anything in a session, [`check_root`]
//!   reads the cluster root's ACL: a root this node's identity cannot
//!   write (another user, a wrong password, or a protected cluster while
//!   this node has no credentials) refuses the start with one line; a
//!   world-writable root while credentials are configured (a cluster
//!   created before `zk_auth`) is logged with the migration command, never
//!   silently accepted.
//! - the password appears in no log line, error or `Debug` output; the
//!   digest identity (a SHA-1 hash of it) is not printed either.

use std::time::Duration;

use base64::Engine;
use zookeeper_client as zk;

use crate::config::zookeeper::ZkAuthOptions;
use crate::error::Error;

/// A node's ZooKeeper `digest` credentials.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The ZooKeeper user.
    user: String,
    /// Its password.
    password: String,
    /// Give READ to `world:anyone` on the znodes created.
    world_read: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// ZooKeeper's digest identity of `user` with `password`:
/// `user:base64(sha1("user:password"))`, as
/// `DigestAuthenticationProvider.generateDigest` computes it.
pub(crate) fn digest_id(user: &str, password: &str) -> String {
    let hash = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{user}:{password}").as_bytes(),
    );
    format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

impl Credentials {
    /// The credentials `opts` configure (the password file is read
    /// here); `None` when ZooKeeper authentication is off.
    pub fn load(opts: &ZkAuthOptions) -> crate::Result<Option<Credentials>> {
        if !opts.enabled() {
            return Ok(None);
        }
        let password = opts
            .read_password()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(Some(Credentials {
            user: opts.user.clone(),
            password,
            world_read: opts.world_read,
        }))
    }

    /// This node's digest identity.
    fn id(&self) -> String {
        digest_id(&self.user, &self.password)
    }

    /// The ACL of every znode created with these credentials (`None`:
    /// world ALL).
    pub fn acl(creds: Option<&Credentials>) -> Vec<zk::Acl> {
        let Some(c) = creds else {
            return vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())];
        };
        let mut acl = vec![zk::Acl::new(
            zk::Permission::ALL,
            zk::AuthId::new("digest", &c.id()),
        )];
        if c.world_read {
            acl.push(zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()));
        }
        acl
    }
}

/// Opens a session to `connect` with `session_timeout`, authenticated by
/// `creds` from the handshake on, failing after about the session timeout
/// when ZooKeeper cannot be reached, and at once when it refuses the
/// credentials (`AuthFailed`).
pub(crate) async fn connect(
    connect: &str,
    session_timeout: Duration,
    creds: Option<&Credentials>,
) -> crate::Result<zk::Client> {
    let bound = session_timeout + Duration::from_millis(500);
    let mut connector = zk::Client::connector().with_session_timeout(session_timeout);
    if let Some(c) = creds {
        connector = connector.with_auth("digest", format!("{}:{}", c.user, c.password).as_bytes());
    }
    match tokio::time::timeout(bound, connector.connect(connect)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(zk::Error::AuthFailed)) => Err(Error::Unauthenticated(format!(
            "ZooKeeper at {connect} refused the credentials of cluster.zk_auth user {:?} \
             (AuthFailed)",
            creds.map(|c| c.user.as_str()).unwrap_or("")
        ))),
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "cannot reach ZooKeeper at {connect}: {e} (within {} ms)",
            session_timeout.as_millis()
        ))),
        Err(_) => Err(Error::Unavailable(format!(
            "cannot reach ZooKeeper at {connect}: no session within {} ms",
            bound.as_millis()
        ))),
    }
}

/// `scheme:id` of an ACL entry for messages: a digest entry shows its user
/// only (never the hash).
fn who(a: &zk::Acl) -> String {
    match a.scheme() {
        "digest" => format!("digest user {:?}", a.id().split(':').next().unwrap_or("")),
        "world" if a.id() == "anyone" => "world".to_string(),
        s => format!("{s}:{}", a.id()),
    }
}

/// The entries of `acl` for messages: `digest user "caskade": ALL, world: READ`.
fn describe(acl: &[zk::Acl]) -> String {
    acl.iter()
        .map(|a| format!("{}: {}", who(a), a.permission()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Permissions that change a znode or its children.
fn writes() -> zk::Permission {
    zk::Permission::WRITE | zk::Permission::CREATE | zk::Permission::DELETE
}

/// What the ACL of an existing cluster root means for a node with `creds`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RootAcl {
    /// This node may do everything it needs; nothing to say.
    Fine,
    /// This node may work, but so may everyone: credentials are configured
    /// and the root is world-writable (created before `zk_auth`). The
    /// line to log.
    WorldWritable(String),
    /// This node cannot write the cluster's znodes: the line to fail with.
    Refused(String),
}

/// Judges the ACL `acl` of the cluster root `root` (`None`: ZooKeeper
/// would not show it to this session) for a node with `creds`.
pub(crate) fn judge(root: &str, acl: Option<&[zk::Acl]>, creds: Option<&Credentials>) -> RootAcl {
    let need = writes();
    let world_writes = acl.is_some_and(|acl| {
        acl.iter()
            .any(|a| a.scheme() == "world" && a.id() == "anyone" && a.permission().has(need))
    });
    let shown = acl.map_or_else(
        || "not readable with these credentials".to_string(),
        describe,
    );
    let Some(c) = creds else {
        if world_writes {
            return RootAcl::Fine;
        }
        return RootAcl::Refused(format!(
            "ZooKeeper: the cluster root {root} is protected by a ZooKeeper ACL ({shown}) and \
             cluster.zk_auth is not set: configure the cluster's ZooKeeper user and password \
             (docs/SECURITY.md, \"ZooKeeper ACLs\")"
        ));
    };
    let id = c.id();
    let ours = acl.is_some_and(|acl| {
        acl.iter()
            .any(|a| a.scheme() == "digest" && a.id() == id && a.permission().has(need))
    });
    if ours && !world_writes {
        return RootAcl::Fine;
    }
    if world_writes {
        return RootAcl::WorldWritable(format!(
            "ZooKeeper: the cluster root {root} is writable by anyone (ACL {shown}), created \
             before cluster.zk_auth: other ZooKeeper users can rewrite partition state until \
             you run, in zkCli.sh: `addauth digest {}:<password>` then `setAcl -R {root} \
             auth::cdrwa,world:anyone:r` (docs/SECURITY.md, \"ZooKeeper ACLs\")",
            c.user
        ));
    }
    RootAcl::Refused(format!(
        "ZooKeeper: the cluster root {root} does not let ZooKeeper user {:?} with this password \
         write (its ACL: {shown}): wrong cluster.zk_auth password or user?",
        c.user
    ))
}

/// Reads the ACL of the cluster root `root` (if it exists) and applies
/// [`judge`]: Ok to go on (after logging a world-writable root), or the
/// refusal.
pub(crate) async fn check_root(
    client: &zk::Client,
    root: &str,
    creds: Option<&Credentials>,
) -> crate::Result<()> {
    let acl = match super::znode::retry_loss(|| client.get_acl(root)).await {
        Ok((acl, _)) => Some(acl),
        Err(zk::Error::NoNode) => return Ok(()),
        Err(zk::Error::NoAuth) => None,
        Err(e) => {
            return Err(super::znode::zk_error(
                &format!("read the ACL of {root}"),
                e,
            ));
        }
    };
    match judge(root, acl.as_deref(), creds) {
        RootAcl::Fine => Ok(()),
        RootAcl::WorldWritable(line) => {
            tracing::warn!("{line}");
            Ok(())
        }
        RootAcl::Refused(line) => Err(Error::PermissionDenied(line)),
    }
}

/// The warning of a node reachable beyond loopback (its advertised
/// addresses `addrs`) whose znodes are world-writable (no `creds`), if
/// that is the case.
pub(crate) fn open_acl_warning(
    root: &str,
    creds: Option<&Credentials>,
    addrs: &[&str],
) -> Option<String> {
    if creds.is_some() {
        return None;
    }
    let loopback = |a: &str| {
        a.parse::<std::net::SocketAddr>()
            .is_ok_and(|s| s.ip().is_loopback())
            || a.starts_with("localhost:")
    };
    let far = addrs.iter().find(|a| !loopback(a))?;
    Some(format!(
        "ZooKeeper: this node is reachable at {far} but caskade's znodes under {root} are \
         world-writable (cluster.zk_auth is not set): anyone who reaches ZooKeeper can rewrite \
         partition state; set cluster.zk_auth (docs/SECURITY.md, \"ZooKeeper ACLs\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
            world_read: true,
        }
    }

    /// The digest identity matches ZooKeeper's own
    /// (`DigestAuthenticationProvider.generateDigest("super:test")`, the
    /// example of the ZooKeeper admin guide).
    #[test]
    fn the_digest_id_is_zookeepers() {
        assert_eq!(
            digest_id("super", "test"),
            "super:D/InIHSb7yEEbrWz8b9l71RjZJU="
        );
    }

    #[test]
    fn the_acl_gives_all_to_us_and_read_to_the_world() {
        let c = creds("caskade", "pw");
        let acl = Credentials::acl(Some(&c));
        assert_eq!(
            acl,
            vec![
                zk::Acl::new(
                    zk::Permission::ALL,
                    zk::AuthId::new("digest", &digest_id("caskade", "pw"))
                ),
                zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
            ]
        );
        let closed = Credentials {
            world_read: false,
            ..c
        };
        assert_eq!(Credentials::acl(Some(&closed)).len(), 1);
        assert_eq!(
            Credentials::acl(None),
            vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())]
        );
    }

    #[test]
    fn the_root_acl_is_judged_for_our_identity() {
        let root = "/caskade/x";
        let ours = Credentials::acl(Some(&creds("caskade", "pw")));
        let open = Credentials::acl(None);
        assert_eq!(
            judge(root, Some(&ours), Some(&creds("caskade", "pw"))),
            RootAcl::Fine
        );
        assert_eq!(judge(root, Some(&open), None), RootAcl::Fine);
        assert_eq!(
            judge(root, Some(&ours), Some(&creds("caskade", "wrong"))),
            RootAcl::Refused(
                "ZooKeeper: the cluster root /caskade/x does not let ZooKeeper user \"caskade\" \
                 with this password write (its ACL: digest user \"caskade\": ALL, world: READ): \
                 wrong cluster.zk_auth password or user?"
                    .into()
            )
        );
        assert_eq!(
            judge(root, Some(&ours), None),
            RootAcl::Refused(
                "ZooKeeper: the cluster root /caskade/x is protected by a ZooKeeper ACL (digest \
                 user \"caskade\": ALL, world: READ) and cluster.zk_auth is not set: configure \
                 the cluster's ZooKeeper user and password (docs/SECURITY.md, \"ZooKeeper ACLs\")"
                    .into()
            )
        );
        let RootAcl::WorldWritable(line) = judge(root, Some(&open), Some(&creds("caskade", "pw")))
        else {
            panic!("a world-writable root must be reported");
        };
        assert!(
            line.contains("`addauth digest caskade:<password>` then `setAcl -R /caskade/x auth::cdrwa,world:anyone:r`"),
            "{line}"
        );
        assert!(!line.contains("pw"), "{line}");
    }

    #[test]
    fn an_open_acl_is_worth_a_warning_only_beyond_loopback() {
        let root = "/caskade/x";
        assert_eq!(
            open_acl_warning(root, None, &["127.0.0.1:7379", "localhost:7380"]),
            None
        );
        assert_eq!(
            open_acl_warning(root, Some(&creds("a", "b")), &["10.0.0.1:7379"]),
            None
        );
        assert_eq!(
            open_acl_warning(root, None, &["127.0.0.1:7379", "10.0.0.1:7380"]).as_deref(),
            Some(
                "ZooKeeper: this node is reachable at 10.0.0.1:7380 but caskade's znodes under \
                 /caskade/x are world-writable (cluster.zk_auth is not set): anyone who reaches \
                 ZooKeeper can rewrite partition state; set cluster.zk_auth (docs/SECURITY.md, \
                 \"ZooKeeper ACLs\")"
            )
        );
    }

    /// Every znode caskade creates carries the configured ACL: create
    /// options are built only by `Paths::options` (znode.rs).
    #[test]
    fn no_znode_is_created_without_the_configured_acl() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![dir];
        let mut offenders = Vec::new();
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let name = p.file_name().unwrap().to_str().unwrap();
                for (n, line) in text.lines().enumerate() {
                    let hit = line.contains(concat!("with_", "acls("))
                        || line.contains(concat!("Acls", "::"));
                    if hit && name != "znode.rs" {
                        offenders.push(format!("{}:{}", p.display(), n + 1));
                    }
                }
            }
        }
        assert_eq!(offenders, Vec::<String>::new());
    }
}
