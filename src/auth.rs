//! Client authentication: users with argon2 password hashes and
//! permissions (`auth:` in the server config, src/config/auth.rs), checked
//! on the gRPC client API ([`grpc`]) and on the RESP listener
//! (src/resp/auth.rs); protected mode ([`check_protected_mode`]).
//! docs/SECURITY.md, "Users and protected mode", is the user's view.
//!
//! Invariants:
//! - with no users configured, authentication is off and every request is
//!   served as before (the node then binds loopback only, unless
//!   `auth.protected_mode: false`);
//! - with users, a request is served only after its credentials verified
//!   against the user's argon2 hash, and only if the user holds the one
//!   permission its method or command needs ([`permissions`]);
//! - argon2 runs on the blocking pool (never on a runtime thread), at most
//!   [`MAX_VERIFYING`] at once; a verified password is remembered per user
//!   as a keyed BLAKE2s digest (key random per process), so each later
//!   request costs one digest and one comparison. An argon2 hash verifies
//!   one password, so a digest that differs from the remembered one is a
//!   wrong password, refused without running argon2 again;
//! - neither passwords nor digests are logged or sent in an error;
//! - a request this node forwards to the partition's leader carries the
//!   caller's credentials ([`forwarded_credentials`]), so the leader checks
//!   the same user: forwarding never widens what a caller may do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use blake2::Digest;
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::config::auth::{AuthOptions, Permission};

pub mod grpc;
pub mod permissions;

/// Argon2 verifications running at once; more wait (each costs tens of ms
/// of one core and ~19 MiB).
pub const MAX_VERIFYING: usize = 2;

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials were sent.
    #[error(
        "authentication required: send the metadata `authorization: Basic <base64 of user:password>` \
         (caskade-cli: `auth.user`/`auth.password` in its config, or CASKADE_USER/CASKADE_PASSWORD)"
    )]
    Missing,
    /// Credentials that are not `Basic base64(user:password)`.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// Unknown user or wrong password (not told apart, as Redis).
    #[error("invalid username-password pair")]
    WrongPass,
    /// The user lacks the permission the request needs.
    #[error("user '{user}' has no '{}' permission, which {what} needs", .need.as_str())]
    Denied {
        /// The user.
        user: String,
        /// The permission needed.
        need: Permission,
        /// The method or command refused.
        what: String,
    },
}

impl AuthError {
    /// The gRPC status: `UNAUTHENTICATED`, or `PERMISSION_DENIED` for
    /// [`AuthError::Denied`], with a `caskade-reason` as every caskade error.
    pub fn to_status(&self) -> tonic::Status {
        let (code, reason) = match self {
            AuthError::Denied { .. } => (tonic::Code::PermissionDenied, "PERMISSION_DENIED"),
            _ => (tonic::Code::Unauthenticated, "UNAUTHENTICATED"),
        };
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            "caskade-reason",
            tonic::metadata::MetadataValue::from_static(reason),
        );
        tonic::Status::with_metadata(code, self.to_string(), md)
    }
}

/// Who a request runs as, once authenticated.
#[derive(Debug)]
pub struct Principal {
    /// The user's name.
    pub name: String,
    /// Bit `1 << p as u8` set for each permission `p` held.
    perms: u8,
}

impl Principal {
    /// Whether the user holds `p`.
    pub fn may(&self, p: Permission) -> bool {
        self.perms & (1 << p as u8) != 0
    }

    /// `Ok` when the user holds `need` (or nothing is needed), else the
    /// refusal naming `what`.
    pub fn check(&self, need: Option<Permission>, what: &str) -> Result<(), AuthError> {
        match need {
            Some(p) if !self.may(p) => Err(AuthError::Denied {
                user: self.name.clone(),
                need: p,
                what: what.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// One configured user.
struct User {
    /// Name and permissions.
    principal: Arc<Principal>,
    /// The argon2 PHC string.
    hash: String,
    /// Keyed digest of the password that verified, once one did.
    verified: RwLock<Option<[u8; 32]>>,
}

/// The users of one node, and the cache of verified passwords.
pub struct Authenticator {
    /// Users by name.
    users: HashMap<String, User>,
    /// Key of the digests in `verified` (random, never leaves the process).
    key: [u8; 32],
    /// Bounds the argon2 verifications running at once.
    verifying: Semaphore,
}

impl Authenticator {
    /// The authenticator of `opts`; `None` when authentication is off.
    /// `opts` must have passed [`AuthOptions::validate`].
    pub fn new(opts: &AuthOptions) -> Option<Arc<Authenticator>> {
        if !opts.enabled() {
            return None;
        }
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            // Still unique per process; the digest only needs to be unknown
            // to clients, and it never leaves the process.
            key[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
        }
        let users = opts
            .users
            .iter()
            .map(|u| {
                let perms = u.permissions.iter().fold(0u8, |m, &p| m | 1 << p as u8);
                let user = User {
                    principal: Arc::new(Principal {
                        name: u.name.clone(),
                        perms,
                    }),
                    hash: u.password_hash.clone(),
                    verified: RwLock::new(None),
                };
                (u.name.clone(), user)
            })
            .collect();
        Some(Arc::new(Authenticator {
            users,
            key,
            verifying: Semaphore::new(MAX_VERIFYING),
        }))
    }

    /// The keyed digest of `password`.
    fn digest(&self, password: &[u8]) -> [u8; 32] {
        let mut h = blake2::Blake2s256::new();
        h.update(self.key);
        h.update(password);
        h.finalize().into()
    }

    /// Checks `password` for `user` (see the module invariants for the
    /// cost): the user on success, [`AuthError::WrongPass`] otherwise.
    pub async fn verify(&self, user: &str, password: &[u8]) -> Result<Arc<Principal>, AuthError> {
        let Some(u) = self.users.get(user) else {
            return Err(AuthError::WrongPass);
        };
        let digest = self.digest(password);
        let known = |d: &Option<[u8; 32]>| {
            d.map(|v| {
                if same(&v, &digest) {
                    Ok(u.principal.clone())
                } else {
                    Err(AuthError::WrongPass)
                }
            })
        };
        if let Some(r) = known(&u.verified.read()) {
            return r;
        }
        let _slot = self.verifying.acquire().await;
        // Another request may have verified it while this one waited.
        if let Some(r) = known(&u.verified.read()) {
            return r;
        }
        let (hash, password) = (u.hash.clone(), password.to_vec());
        let ok = tokio::task::spawn_blocking(move || {
            argon2::PasswordHash::new(&hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(&password, &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(AuthError::WrongPass);
        }
        *u.verified.write() = Some(digest);
        Ok(u.principal.clone())
    }

    /// Checks an `authorization` header value (`Basic base64(user:password)`).
    pub async fn verify_basic(&self, header: &[u8]) -> Result<Arc<Principal>, AuthError> {
        let (user, password) = parse_basic(header)?;
        self.verify(&user, &password).await
    }
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits `Basic base64(user:password)` into its user and password.
pub fn parse_basic(header: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
    let b64 = header
        .strip_prefix(b"Basic ")
        .or_else(|| header.strip_prefix(b"basic "))
        .ok_or(AuthError::Malformed(
            "the authorization scheme must be Basic",
        ))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim_ascii())
        .map_err(|_| AuthError::Malformed("the Basic credentials are not base64"))?;
    let colon = raw
        .iter()
        .position(|&b| b == b':')
        .ok_or(AuthError::Malformed(
            "the Basic credentials must be user:password",
        ))?;
    let user = std::str::from_utf8(&raw[..colon])
        .map_err(|_| AuthError::Malformed("the user name is not UTF-8"))?
        .to_string();
    Ok((user, raw[colon + 1..].to_vec()))
}

/// The `authorization` header value for `user` and `password`.
pub fn basic(user: &str, password: &[u8]) -> String {
    let mut raw = Vec::with_capacity(user.len() + 1 + password.len());
    raw.extend_from_slice(user.as_bytes());
    raw.push(b':');
    raw.extend_from_slice(password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// An argon2id PHC string of `password` with a fresh random salt and the
/// crate's default parameters (m=19456 KiB, t=2, p=1), for `auth.users[].password_hash`.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

tokio::task_local! {
    /// The credentials of the request being served, for forwarding.
    static CALLER: Option<Arc<str>>;
}

/// Runs `f` with `credentials` (an `authorization` value) as the caller's,
/// for [`forwarded_credentials`].
pub async fn with_caller<F: Future>(credentials: Option<Arc<str>>, f: F) -> F::Output {
    CALLER.scope(credentials, f).await
}

/// The caller's `authorization` value, to send along with a request
/// forwarded to another node; `None` when authentication is off.
pub fn forwarded_credentials() -> Option<Arc<str>> {
    CALLER.try_with(Clone::clone).ok().flatten()
}

/// Protected mode: with no users and `auth.protected_mode` on, every one of
/// `listeners` (what, bound address) must be a loopback address. The error
/// is the one line `caskade-server` prints before exiting.
pub fn check_protected_mode(
    opts: &AuthOptions,
    listeners: &[(&str, SocketAddr)],
) -> Result<(), String> {
    if opts.enabled() || !opts.protected_mode {
        return Ok(());
    }
    match listeners.iter().find(|(_, a)| !a.ip().is_loopback()) {
        None => Ok(()),
        Some((what, addr)) => Err(format!(
            "protected mode: the {what} listener binds {addr}, not a loopback address, and no \
             users are configured; add users under `auth.users` (password hashes from \
             `caskade-cli hash-password`) or set `auth.protected_mode: false` \
             (CASKADE_AUTH_PROTECTED_MODE=false) to serve without authentication"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::UserConfig;

    /// A cheap argon2id hash of `password` (tests only: m=64 KiB, t=1).
    pub(crate) fn cheap_hash(password: &[u8]) -> String {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(password, &salt).unwrap().to_string()
    }

    fn opts() -> AuthOptions {
        AuthOptions {
            users: vec![
                UserConfig {
                    name: "ro".into(),
                    password_hash: cheap_hash(b"ropw"),
                    permissions: vec![Permission::Read],
                },
                UserConfig {
                    name: "rw".into(),
                    password_hash: cheap_hash(b"rwpw"),
                    permissions: vec![Permission::Read, Permission::Write],
                },
            ],
            protected_mode: true,
        }
    }

    #[tokio::test]
    async fn verifies_then_remembers_and_refuses_other_passwords() {
        let a = Authenticator::new(&opts()).unwrap();
        assert_eq!(
            a.verify("ro", b"nope").await.unwrap_err(),
            AuthError::WrongPass
        );
        assert!(a.users["ro"].verified.read().is_none());
        let p = a.verify("ro", b"ropw").await.unwrap();
        assert_eq!(p.name, "ro");
        assert!(p.may(Permission::Read) && !p.may(Permission::Write));
        assert!(a.users["ro"].verified.read().is_some());
        // Cached: the same answers without argon2.
        assert!(a.verify("ro", b"ropw").await.is_ok());
        assert_eq!(
            a.verify("ro", b"ropw2").await.unwrap_err(),
            AuthError::WrongPass
        );
        assert_eq!(
            a.verify("nobody", b"ropw").await.unwrap_err(),
            AuthError::WrongPass
        );
        let e = p.check(Some(Permission::Write), "Set").unwrap_err();
        assert_eq!(
            e.to_string(),
            "user 'ro' has no 'write' permission, which Set needs"
        );
        assert_eq!(e.to_status().code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn basic_credentials_round_trip() {
        let a = Authenticator::new(&opts()).unwrap();
        let h = basic("rw", b"rw:pw:with:colons");
        assert_eq!(
            parse_basic(h.as_bytes()).unwrap(),
            ("rw".to_string(), b"rw:pw:with:colons".to_vec())
        );
        assert!(
            a.verify_basic(basic("rw", b"rwpw").as_bytes())
                .await
                .is_ok()
        );
        assert_eq!(
            parse_basic(b"Bearer x").unwrap_err(),
            AuthError::Malformed("the authorization scheme must be Basic")
        );
        assert_eq!(
            parse_basic(b"Basic !!!").unwrap_err(),
            AuthError::Malformed("the Basic credentials are not base64")
        );
    }

    #[test]
    fn hash_password_makes_a_verifiable_argon2id_string() {
        let h = hash_password(b"pw").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = argon2::PasswordHash::new(&h).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"pw", &parsed)
                .is_ok()
        );
        assert_ne!(hash_password(b"pw").unwrap(), h, "salts differ");
    }

    #[test]
    fn protected_mode_refuses_non_loopback_without_users() {
        let off = AuthOptions::default();
        let lo: SocketAddr = "127.0.0.1:7379".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:6380".parse().unwrap();
        assert!(check_protected_mode(&off, &[("client", lo)]).is_ok());
        let e = check_protected_mode(&off, &[("client", lo), ("RESP", any)]).unwrap_err();
        assert!(
            e.starts_with("protected mode: the RESP listener binds 0.0.0.0:6380, not a loopback"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let opted_out = AuthOptions {
            protected_mode: false,
            ..AuthOptions::default()
        };
        assert!(check_protected_mode(&opted_out, &[("RESP", any)]).is_ok());
        assert!(check_protected_mode(&opts(), &[("RESP", any)]).is_ok());
    }
}
