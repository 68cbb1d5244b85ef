//! Credentials (docs/SECURITY.md, "Users and protected mode"):
//! - from the config file (`auth: {user, password}`) or
//!   `CASKADE_CLI_AUTH_USER` / `CASKADE_CLI_AUTH_PASSWORD`, overridden by
//!   `CASKADE_USER` / `CASKADE_PASSWORD` ([`apply_env`]);
//! - `--user NAME` (main.rs) overrides the user;
//! - in the REPL, `bench` and `probe`, a prompt when the server answers
//!   `UNAUTHENTICATED` and stdin is a terminal ([`with_login`], the one
//!   place that does it): the password is read from the terminal without
//!   echo; without a terminal the error is returned as it came;
//! - `caskade-cli hash-password` prints the argon2 hash of a password read
//!   without echo (or one line of stdin when it is not a terminal), for
//!   `auth.users[].password_hash` in the server config.
//!
//! Invariant: a password is never printed, logged or kept in the REPL
//! history (`ClientAuth`'s `Debug` hides it).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::config::auth::ClientAuth;

/// Runs `call` with `client`. When the server answers `UNAUTHENTICATED`
/// and credentials can be asked for ([`prompt`]), stores them in `config`,
/// replaces `client` with one that sends them and runs `call` once more;
/// otherwise returns the first outcome. Shared by the REPL, `bench` and
/// `probe`, so every command logs in the same way.
pub async fn with_login<T, F, Fut>(
    client: &mut Client,
    config: &mut ClientConfig,
    mut call: F,
) -> caskade::Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = caskade::Result<T>>,
{
    let first = call(client.clone()).await;
    let Err(caskade::Error::Unauthenticated(msg)) = first else {
        return first;
    };
    let Some(auth) = prompt(&config.auth) else {
        return Err(caskade::Error::Unauthenticated(msg));
    };
    config.auth = auth;
    *client = Client::new(config)?;
    call(client.clone()).await
}

/// Applies `CASKADE_USER` / `CASKADE_PASSWORD` from `env` to `config`.
pub fn apply_env(config: &mut ClientConfig, env: impl IntoIterator<Item = (String, String)>) {
    for (k, v) in env {
        match k.as_str() {
            "CASKADE_USER" => config.auth.user = v,
            "CASKADE_PASSWORD" => config.auth.password = v,
            _ => {}
        }
    }
}

/// Asks for a user (default: the configured one, else `default`) and a
/// password (no echo) on the terminal; `None` when there is no terminal or
/// the user gave up.
pub fn prompt(current: &ClientAuth) -> Option<ClientAuth> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    let shown = if current.user.is_empty() {
        "default"
    } else {
        &current.user
    };
    eprint!("The server needs a login. User [{shown}]: ");
    let _ = std::io::stderr().flush();
    let mut user = String::new();
    std::io::stdin().lock().read_line(&mut user).ok()?;
    let user = match user.trim() {
        "" => shown.to_string(),
        u => u.to_string(),
    };
    let password = rpassword::prompt_password("Password: ").ok()?;
    Some(ClientAuth { user, password })
}

/// `caskade-cli hash-password`: prints the argon2id PHC string of a
/// password. Exit 0, or 1 when nothing could be read.
pub fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        let first = match rpassword::prompt_password("Password: ") {
            Ok(p) => p,
            Err(e) => return fail(&format!("cannot read the password: {e}")),
        };
        match rpassword::prompt_password("Again: ") {
            Ok(again) if again == first => first,
            Ok(_) => return fail("the two passwords differ"),
            Err(e) => return fail(&format!("cannot read the password: {e}")),
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
            return fail(&format!("cannot read the password: {e}"));
        }
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return fail("the password is empty");
    }
    match caskade::auth::hash_password(password.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Prints `caskade-cli: msg` and returns exit code 1.
fn fail(msg: &str) -> ExitCode {
    eprintln!("caskade-cli: {msg}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_the_config() {
        let mut c = ClientConfig::default();
        c.auth.user = "file".into();
        apply_env(
            &mut c,
            [
                ("CASKADE_PASSWORD".to_string(), "pw".to_string()),
                ("OTHER".to_string(), "x".to_string()),
            ],
        );
        assert_eq!(
            (c.auth.user.as_str(), c.auth.password.as_str()),
            ("file", "pw")
        );
        apply_env(&mut c, [("CASKADE_USER".to_string(), "env".to_string())]);
        assert_eq!(c.auth.user, "env");
    }
}
