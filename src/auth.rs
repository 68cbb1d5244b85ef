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
//!   request with that password costs one digest and one comparison; any
//!   other password runs argon2 (a refusal costs the same for every user,
//!   cached or not, known or not; [`limiter`] bounds how many a peer gets);
//! - an unknown user costs the same as a wrong password: its password is
//!   verified with argon2 against a dummy hash made at startup with the
//!   parameters of the first configured user's hash, so response time
//!   does not tell which users exist (every argon2 run goes through
//!   [`Authenticator::argon2`], counted by [`Authenticator::argon2_runs`]);
//! - failed logins are limited per peer address ([`limiter`],
//!   `auth.max_failed_logins` per `auth.failed_login_window_ms`): an
//!   address past the limit is refused with [`AuthError::Throttled`]
//!   before its password is looked at (no argon2), until the lock lapses;
//!   each listener (gRPC, RESP) counts its own failures;
//! - neither passwords nor digests are logged or sent in an error;
//! - a request this node forwards to the partition's leader carries the
//!   caller's credentials ([`forwarded_credentials`]), so the leader checks
//!   the same user: forwarding never widens what a caller may do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use blake2::Digest;
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::config::auth::{AuthOptions, Permission};

pub mod grpc;
pub mod limiter;
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
    /// Too many failed logins from the caller's address
    /// (`auth.max_failed_logins`); the password was not looked at.
    #[error("too many failed authentication attempts, retry in {retry_secs}s")]
    Throttled {
        /// Whole seconds until the address may try again.
        retry_secs: u64,
    },
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

/// The error a client rebuilds from [`AuthError::to_status`], without the
/// trip through a status (the server's request figures count it).
impl From<&AuthError> for crate::Error {
    fn from(e: &AuthError) -> crate::Error {
        match e {
            AuthError::Denied { .. } => crate::Error::PermissionDenied(e.to_string()),
            _ => crate::Error::Unauthenticated(e.to_string()),
        }
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
    /// What an unknown user's password is verified against, so that it
    /// costs what a wrong password costs.
    dummy: String,
    /// Failed logins per peer address.
    failures: limiter::FailedLogins,
    /// argon2 verifications run so far.
    argon2_runs: AtomicU64,
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
            dummy: dummy_hash(opts.users.first().map(|u| u.password_hash.as_str())),
            failures: limiter::FailedLogins::new(
                opts.max_failed_logins,
                Duration::from_millis(opts.failed_login_window_ms),
            ),
            argon2_runs: AtomicU64::new(0),
        }))
    }

    /// argon2 verifications run so far (known and unknown users alike).
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    /// Whether `password` matches the PHC string `hash`: one argon2 run on
    /// the blocking pool, at most [`MAX_VERIFYING`] at once. Every
    /// verification, of a known user or of an unknown one (against the
    /// dummy hash), goes through here.
    async fn argon2(&self, hash: &str, password: &[u8]) -> bool {
        let _slot = self.verifying.acquire().await;
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let (hash, password) = (hash.to_string(), password.to_vec());
        tokio::task::spawn_blocking(move || {
            argon2::PasswordHash::new(&hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(&password, &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    /// [`Authenticator::verify`] for a caller at `peer` (`None`: unknown,
    /// not limited): refused at once while `peer` is locked, and a failure
    /// counts against `peer`.
    pub async fn verify_from(
        &self,
        peer: Option<IpAddr>,
        user: &str,
        password: &[u8],
    ) -> Result<Arc<Principal>, AuthError> {
        if let Some(ip) = peer
            && let Err(l) = self.failures.check(ip, Instant::now())
        {
            return Err(AuthError::Throttled {
                retry_secs: l.retry_secs,
            });
        }
        let r = self.verify(user, password).await;
        if let (Some(ip), Err(AuthError::WrongPass)) = (peer, &r) {
            self.failures.failed(ip, Instant::now());
            tracing::info!(%ip, "failed login");
        }
        r
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
            // As long as a wrong password: no telling which users exist.
            self.argon2(&self.dummy, password).await;
            return Err(AuthError::WrongPass);
        };
        let digest = self.digest(password);
        if u.verified.read().is_some_and(|v| same(&v, &digest)) {
            return Ok(u.principal.clone());
        }
        // Any other password runs argon2, as an unknown user's does: a
        // refusal costs the same whoever the user is.
        if !self.argon2(&u.hash, password).await {
            return Err(AuthError::WrongPass);
        }
        *u.verified.write() = Some(digest);
        Ok(u.principal.clone())
    }

    /// Checks an `authorization` header value (`Basic base64(user:password)`)
    /// from `peer`, as [`Authenticator::verify_from`].
    pub async fn verify_basic(
        &self,
        peer: Option<IpAddr>,
        header: &[u8],
    ) -> Result<Arc<Principal>, AuthError> {
        let (user, password) = parse_basic(header)?;
        self.verify_from(peer, &user, &password).await
    }
}

/// A PHC string of a random password, made with the algorithm and the
/// parameters of `like` (argon2's defaults when there is none), for
/// unknown users: verifying against it costs what verifying a real user's
/// hash costs.
fn dummy_hash(like: Option<&str>) -> String {
    let parsed = like.and_then(|h| argon2::PasswordHash::new(h).ok());
    let params = parsed
        .as_ref()
        .and_then(|h| argon2::Params::try_from(h).ok())
        .unwrap_or_default();
    let algorithm = parsed
        .as_ref()
        .and_then(|h| argon2::Algorithm::try_from(h.algorithm).ok())
        .unwrap_or_default();
    let mut secret = [0u8; 32];
    let _ = getrandom::getrandom(&mut secret);
    let a = argon2::Argon2::new(algorithm, argon2::Version::V0x13, params);
    let Ok(salt) = SaltString::encode_b64(&secret[..16]) else {
        return String::new();
    };
    a.hash_password(&secret[16..], &salt)
        .map(|h| h.to_string())
        // Unreachable with valid parameters; an unparsable dummy still
        // refuses, only faster.
        .unwrap_or_default()
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
            ..AuthOptions::default()
        }
    }

    #[tokio::test]
    async fn verifies_then_remembers_and_refuses_other_passwords() {
        let a = Authenticator::new(&opts()).unwrap();
        assert_eq!(
            a.verify("ro", b"nope").await.unwrap_err(),
            AuthError::WrongPass
        );
        assert_eq!(a.argon2_runs(), 1);
        assert!(a.users["ro"].verified.read().is_none());
        let p = a.verify("ro", b"ropw").await.unwrap();
        assert_eq!(p.name, "ro");
        assert!(p.may(Permission::Read) && !p.may(Permission::Write));
        assert!(a.users["ro"].verified.read().is_some());
        assert_eq!(a.argon2_runs(), 2);
        // Cached: the same answer without argon2.
        assert!(a.verify("ro", b"ropw").await.is_ok());
        assert_eq!(a.argon2_runs(), 2);
        let e = p.check(Some(Permission::Write), "Set").unwrap_err();
        assert_eq!(
            e.to_string(),
            "user 'ro' has no 'write' permission, which Set needs"
        );
        assert_eq!(e.to_status().code(), tonic::Code::PermissionDenied);
    }

    /// Every refusal runs argon2 once, whether the user exists (cached or
    /// not) or not: response time does not tell which users exist.
    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_both_run_argon2() {
        let a = Authenticator::new(&opts()).unwrap();
        assert!(
            a.dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{}",
            a.dummy
        );
        let runs = |want| assert_eq!(a.argon2_runs(), want);
        runs(0);
        assert_eq!(
            a.verify("nobody", b"x").await.unwrap_err(),
            AuthError::WrongPass
        );
        runs(1);
        assert_eq!(
            a.verify("rw", b"x").await.unwrap_err(),
            AuthError::WrongPass
        );
        runs(2);
        assert!(a.verify("rw", b"rwpw").await.is_ok());
        runs(3);
        // A wrong password for a user whose password is cached: argon2 too.
        assert_eq!(
            a.verify("rw", b"y").await.unwrap_err(),
            AuthError::WrongPass
        );
        runs(4);
        assert_eq!(
            a.verify("nobody", b"rwpw").await.unwrap_err(),
            AuthError::WrongPass
        );
        runs(5);
    }

    /// After `max_failed_logins` failures from one address, its logins are
    /// refused without argon2, even with the right password; other
    /// addresses log in; the lock lapses after the window.
    #[tokio::test]
    async fn failed_logins_lock_the_address_for_a_window() {
        let a = Authenticator::new(&AuthOptions {
            max_failed_logins: 2,
            failed_login_window_ms: 300,
            ..opts()
        })
        .unwrap();
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for user in ["nobody", "rw"] {
            assert_eq!(
                a.verify_from(Some(bad), user, b"guess").await.unwrap_err(),
                AuthError::WrongPass
            );
        }
        let runs = a.argon2_runs();
        let refused = a.verify_from(Some(bad), "rw", b"rwpw").await.unwrap_err();
        assert_eq!(refused, AuthError::Throttled { retry_secs: 1 });
        assert_eq!(
            refused.to_string(),
            "too many failed authentication attempts, retry in 1s"
        );
        assert_eq!(refused.to_status().code(), tonic::Code::Unauthenticated);
        assert_eq!(a.argon2_runs(), runs, "no argon2 for a locked address");
        assert!(a.verify_from(Some(good), "rw", b"rwpw").await.is_ok());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(a.verify_from(Some(bad), "rw", b"rwpw").await.is_ok());
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
            a.verify_basic(None, basic("rw", b"rwpw").as_bytes())
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
