//! Authentication on the RESP listener, answered as Redis 7 answers
//! (`redis-server --requirepass` / ACL users; tests/security/security_auth.rs
//! compares the bytes with a real redis-server):
//! - `AUTH password` logs in as the user named `default`, `AUTH user
//!   password` as `user`; a wrong pair is `-WRONGPASS invalid
//!   username-password pair or user is disabled.` and leaves the
//!   connection as it was; `HELLO <2|3> AUTH user password` does the same
//!   after HELLO's own checks (version, options, SETNAME), before its reply;
//! - failed logins count against the client's address: past
//!   `auth.max_failed_logins` within `auth.failed_login_window_ms`, every
//!   `AUTH` / `HELLO ... AUTH` from it is `-ERR too many failed
//!   authentication attempts, retry in Ns` (no password checked) until the
//!   lock lapses (src/auth/limiter.rs; Redis has no such limit);
//! - with users configured, a connection is unauthenticated until then:
//!   every command but `AUTH`, `HELLO`, `QUIT` and `RESET` is answered
//!   `-NOAUTH Authentication required.` (unknown commands and wrong
//!   arities are still answered first, as Redis does), `HELLO` without
//!   `AUTH` by Redis' long `-NOAUTH HELLO must be called ...`; `RESET`
//!   logs the connection out;
//! - a logged-in user without the command's permission
//!   (src/auth/permissions.rs) gets `-NOPERM this user has no permissions
//!   to run the '<cmd>' command` (Redis 7.0's words);
//! - with no users, the connection acts as Redis' `default` user without
//!   a password: `AUTH default <anything>` is `+OK`, another user
//!   `-WRONGPASS`, and `AUTH password` the "called without any password
//!   configured" error.

use std::sync::Arc;

use bytes::Bytes;

use super::Shared;
use super::connection::Client;
use super::parse::parse_i64;
use super::reply::Reply;
use super::table;
use crate::auth::permissions::{self, RespNeed};

/// Redis' answer to a command before authentication.
pub const NOAUTH: &str = "NOAUTH Authentication required.";

/// Redis' answer to a wrong user or password.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Redis' answer to `HELLO` without `AUTH` before authentication.
pub const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already \
     authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to \
     authenticate the client and select the RESP protocol version at the same time";

/// Redis' answer to `AUTH password` when no password is configured.
const NOPASS: &str = "AUTH <password> called without any password configured for the \
     default user. Are you sure your configuration is correct?";

/// Whether `f` may run in a key-command batch as it is: always with
/// authentication off, else when the connection's user holds what it
/// needs (anything else is answered alone by [`gate`]).
pub fn passes(sh: &Shared, c: &Client, f: &[Bytes]) -> bool {
    if sh.auth.is_none() {
        return true;
    }
    let (Some(user), Some(spec)) = (&c.user, f.first().and_then(|n| table::lookup(n))) else {
        return false;
    };
    match permissions::resp(spec.name, spec.flags) {
        RespNeed::NoAuth => false,
        RespNeed::User(need) => need.is_none_or(|p| user.may(p)),
    }
}

/// The answer to `f` when authentication decides it (a login, a refusal);
/// `None` runs it as usual. Unknown commands and wrong arities are left to
/// the usual path, so they are answered first, as in Redis.
pub async fn gate(sh: &Shared, c: &mut Client, f: &[Bytes]) -> Option<Reply> {
    let spec = f.first().and_then(|n| table::lookup(n))?;
    if !table::arity_ok(spec.arity, f.len()) {
        return None;
    }
    match spec.name {
        "auth" => return Some(auth(sh, c, f).await),
        "hello" => return hello(sh, c, f).await,
        "reset" => {
            c.user = None;
            c.credentials = None;
            return None;
        }
        _ => {}
    }
    sh.auth.as_ref()?;
    let Some(user) = &c.user else {
        return match permissions::resp(spec.name, spec.flags) {
            RespNeed::NoAuth => None,
            RespNeed::User(_) => Some(Reply::Error(NOAUTH.into())),
        };
    };
    match permissions::resp(spec.name, spec.flags) {
        RespNeed::User(Some(p)) if !user.may(p) => {
            let mut name = spec.name.to_string();
            if spec.name == "config"
                && let Some(sub) = f.get(1)
            {
                name = format!(
                    "{name}|{}",
                    String::from_utf8_lossy(sub).to_ascii_lowercase()
                );
            }
            Some(Reply::Error(format!(
                "NOPERM this user has no permissions to run the '{name}' command"
            )))
        }
        _ => None,
    }
}

/// `AUTH [user] password`.
async fn auth(sh: &Shared, c: &mut Client, f: &[Bytes]) -> Reply {
    if f.len() > 3 {
        return Reply::err("syntax error");
    }
    let (user, password) = if f.len() == 2 {
        if sh.auth.is_none() {
            return Reply::err(NOPASS);
        }
        (&b"default"[..], &f[1])
    } else {
        (&f[1][..], &f[2])
    };
    match login(sh, c, user, password).await {
        Ok(()) => Reply::OK,
        Err(r) => r,
    }
}

/// Logs `c` in as `user`; the connection is unchanged on failure.
async fn login(sh: &Shared, c: &mut Client, user: &[u8], password: &[u8]) -> Result<(), Reply> {
    let wrong = || Reply::Error(WRONGPASS.into());
    let Some(auth) = &sh.auth else {
        // Redis' `default` user without a password takes any.
        return if user == b"default" {
            Ok(())
        } else {
            Err(wrong())
        };
    };
    let user = std::str::from_utf8(user).map_err(|_| wrong())?;
    let principal = auth
        .verify_from(Some(c.peer.ip()), user, password)
        .await
        .map_err(|e| match e {
            e @ crate::auth::AuthError::Throttled { .. } => Reply::err(e),
            _ => wrong(),
        })?;
    c.user = Some(principal);
    c.credentials = Some(Arc::from(crate::auth::basic(user, password)));
    Ok(())
}

/// `HELLO`: Redis' order is the version, the options (syntax, SETNAME's
/// name), the credentials, then the login check; the reply itself is
/// `admin`'s (`None`), which also answers the first two kinds of errors.
async fn hello(sh: &Shared, c: &mut Client, f: &[Bytes]) -> Option<Reply> {
    if let Some(v) = f.get(1)
        && !matches!(parse_i64(v), Some(2..=3))
    {
        return None;
    }
    let mut credentials = None;
    let mut j = 2;
    while j < f.len() {
        let left = f.len() - j - 1;
        match f[j].to_ascii_lowercase().as_slice() {
            b"auth" if left >= 2 => {
                credentials = Some((&f[j + 1], &f[j + 2]));
                j += 3;
            }
            b"setname" if left >= 1 => {
                if !f[j + 1].iter().all(|&b| (b'!'..=b'~').contains(&b)) {
                    return None;
                }
                j += 2;
            }
            _ => return None,
        }
    }
    if let Some((user, password)) = credentials {
        return login(sh, c, user, password).await.err();
    }
    if sh.auth.is_some() && c.user.is_none() {
        return Some(Reply::Error(HELLO_NOAUTH.into()));
    }
    None
}
