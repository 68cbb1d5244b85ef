//! What a failed call tells about its request: the one mapping from a
//! `tonic::Status` to an [`Error`], used by the client and by a node
//! forwarding a request to its partition's leader (src/server/service.rs).
//!
//! Invariant: a failure becomes "nothing sent" ([`Error::Unreachable`],
//! which [`Error::nothing_applied`] lets a writer retry) only when the
//! transport proves no server processed the request; every other transport
//! failure is an unknown outcome. How tonic 0.14 / hyper 1 / h2 0.4 report
//! each case (read in their sources, pinned by tests/cli/client_outcome.rs):
//!
//! | what happened | error chain under the status | verdict |
//! |---|---|---|
//! | TCP connect refused / timed out, HTTP/2 handshake of a new connection | `tonic::ConnectError` (tonic's connector wraps every connect error; a stored one is returned to the next request, which was never sent) | nothing sent |
//! | request queued on a connection that closed before it was written | `hyper::Error` with `is_canceled()` ("connection was not ready", "connection closed": hyper hands the request back) | nothing sent |
//! | `RST_STREAM(REFUSED_STREAM)` from the server | `h2::Error` reset, remote, `REFUSED_STREAM` (RFC 9113 §8.7: not processed) | nothing sent |
//! | `GOAWAY` whose last stream id is below the request's, or a new stream after a `GOAWAY` | `h2::Error` go-away, remote (h2 gives this error only to those streams; streams at or below the last id get the connection's later I/O error) | nothing sent |
//! | connection reset / closed / server killed after the request left | `hyper::Error(Io)` over an `io::Error` (tonic code `Unknown`) | unknown |
//! | any other reset (`INTERNAL_ERROR`, `CANCEL`, ...), keep-alive timeout, dispatch task gone | `hyper::Error` / `h2::Error` | unknown |
//! | the client's deadline (`Endpoint::timeout`) | `tonic::TimeoutExpired` | [`Error::Timeout`], unknown |
//!
//! A status carrying `caskade-reason` came from a caskade handler and is
//! rebuilt by `impl From<Status> for Error` (src/error.rs), never
//! reinterpreted here.

use std::error::Error as StdError;
use std::time::Duration;

use crate::error::Error;

/// What the transport says about a failed request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Provably not processed by any server; why.
    NotSent(String),
    /// The client's deadline passed; the request may have been applied.
    TimedOut,
    /// Failed in transit after it may have been sent; the innermost cause.
    Lost(String),
}

/// Maps the status of a failed call to `addr` to an [`Error`]: caskade's
/// own statuses by their reason; transport failures by what they prove
/// (see the module documentation): [`Error::Unreachable`] when nothing was
/// sent, [`Error::Timeout`] for the client's deadline, [`Error::Unavailable`]
/// ("may or may not have been applied") for anything lost in transit.
pub fn map_status(addr: &str, timeout: Duration, status: tonic::Status) -> Error {
    if status.metadata().get("caskade-reason").is_some() {
        return Error::from(status);
    }
    let verdict = verdict(addr, &status);
    // A plaintext connection found a TLS server (src/client/sniff.rs):
    // however the transport reported it, nothing was processed.
    if matches!(verdict, Some(Verdict::NotSent(_) | Verdict::Lost(_)))
        && super::sniff::speaks_tls(addr)
    {
        return Error::Unreachable {
            addr: addr.to_string(),
            reason: super::sniff::SPEAKS_TLS.into(),
        };
    }
    match verdict {
        Some(Verdict::NotSent(reason)) => Error::Unreachable {
            addr: addr.to_string(),
            reason,
        },
        Some(Verdict::TimedOut) => Error::Timeout(format!(
            "no reply from {addr} within {} ms",
            timeout.as_millis()
        )),
        Some(Verdict::Lost(cause)) => Error::Unavailable(format!(
            "connection to {addr} lost mid-request ({cause}); the request may or may not \
             have been applied"
        )),
        None => Error::from(status),
    }
}

/// Reads the transport's verdict from the error chain under `status`;
/// `None` when no transport error is underneath (a status some non-caskade
/// server sent, or one of tonic's own limits), mapped by code instead.
fn verdict(addr: &str, status: &tonic::Status) -> Option<Verdict> {
    let mut source = status.source();
    let mut transport = false;
    let mut innermost = None;
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return Some(Verdict::NotSent(connect_reason(addr, err)));
        }
        if err.is::<tonic::TimeoutExpired>() {
            return Some(Verdict::TimedOut);
        }
        if let Some(e) = err.downcast_ref::<hyper::Error>() {
            transport = true;
            if e.is_canceled() {
                return Some(Verdict::NotSent(
                    "the connection closed before the request was sent".into(),
                ));
            }
        }
        if let Some(e) = err.downcast_ref::<h2::Error>() {
            transport = true;
            if let Some(v) = h2_verdict(e) {
                return Some(v);
            }
        }
        transport |= err.is::<tonic::transport::Error>() || err.is::<std::io::Error>();
        innermost = Some(err);
        source = err.source();
    }
    let cause = innermost?;
    transport.then(|| Verdict::Lost(describe(cause)))
}

/// The verdict an HTTP/2 error gives on its own: only the server's refusals
/// prove nothing was processed.
fn h2_verdict(e: &h2::Error) -> Option<Verdict> {
    if !e.is_remote() {
        return None;
    }
    if e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
        return Some(Verdict::NotSent(
            "the server refused the request before processing it (HTTP/2 REFUSED_STREAM)".into(),
        ));
    }
    if e.is_go_away() {
        return Some(Verdict::NotSent(
            "the server closed the connection before processing the request (HTTP/2 GOAWAY)".into(),
        ));
    }
    None
}

/// Why a TLS client cannot talk to a server that answered its handshake
/// with something that is not TLS (rustls' `InvalidMessage`), as printed.
pub const NOT_TLS: &str = "the server does not speak TLS (it answered the TLS handshake with \
     something else, e.g. a plaintext caskade port): unset tls.ca (and --tls-ca, \
     CASKADE_CLI_TLS_CA) for a plaintext server, or check the port";

/// Why a connection to `addr` could not be made, lower-case (`connection
/// refused`). A host name that did not resolve says so, with the
/// resolver's reason (`DNS resolution failed for h: Name or service not
/// known`): hyper's connector reports it as `dns error` over std's
/// `io::Error` of kind `Uncategorized`, whose kind alone reads
/// `uncategorized error`.
fn connect_reason(addr: &str, err: &(dyn StdError + 'static)) -> String {
    let mut source = Some(err);
    let mut dns = false;
    while let Some(e) = source {
        dns |= e.to_string() == "dns error";
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(rustls::Error::InvalidMessage(_)) =
                io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
            {
                return NOT_TLS.into();
            }
            if dns {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let text = io.to_string();
                let why = text
                    .strip_prefix("failed to lookup address information: ")
                    .unwrap_or(&text);
                return format!("DNS resolution failed for {host}: {why}");
            }
            return match io.kind() {
                std::io::ErrorKind::Other => io.to_string(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                // Kinds std has no name for yet (`Uncategorized`): the
                // message says more than the kind.
                kind if format!("{kind:?}") == "Uncategorized" => io.to_string(),
                kind => kind.to_string(),
            };
        }
        source = e.source();
    }
    // No I/O error underneath: a connect timeout of the connector itself,
    // or the HTTP/2 handshake.
    let text = err.to_string();
    if text.contains("timed out") {
        "connection timed out".into()
    } else {
        text
    }
}

/// A short text for the innermost cause of a transport failure.
fn describe(err: &(dyn StdError + 'static)) -> String {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::Other => io.to_string(),
            kind => kind.to_string(),
        };
    }
    if let Some(reason) = err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
        return format!("HTTP/2 {reason:?}");
    }
    err.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn map(status: tonic::Status) -> Error {
        map_status("h:1", Duration::from_millis(250), status)
    }

    #[test]
    fn caskade_statuses_are_not_reinterpreted() {
        let status = tonic::Status::from(Error::Unavailable("disk full".into()));
        assert_eq!(map(status), Error::Unavailable("disk full".into()));
    }

    #[test]
    fn statuses_without_a_transport_error_map_by_code() {
        // No source: a status some other server sent, whatever it says.
        let status = tonic::Status::unavailable("tcp connect error");
        assert_eq!(map(status), Error::Unavailable("tcp connect error".into()));
    }

    /// The old mapping took any UNAVAILABLE status with an I/O error
    /// underneath for a refused connection ("nothing sent"), though only a
    /// connect error proves that: a reset after sending is an unknown outcome.
    #[test]
    fn an_io_error_without_a_connect_error_is_an_unknown_outcome() {
        let mut status = tonic::Status::unavailable("transport error");
        status.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            map(status),
            Error::Unavailable(
                "connection to h:1 lost mid-request (connection reset); the request may or may \
                 not have been applied"
                    .into()
            )
        );
    }

    #[test]
    fn a_connect_error_is_nothing_sent() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            map(status),
            Error::Unreachable {
                addr: "h:1".into(),
                reason: "connection refused".into()
            }
        );
    }

    /// hyper's connector wraps a failed lookup as `dns error` over std's
    /// `io::Error`; the kind alone printed `uncategorized error`.
    #[test]
    fn a_failed_lookup_names_the_host() {
        #[derive(Debug)]
        struct Dns(std::io::Error);
        impl std::fmt::Display for Dns {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dns error")
            }
        }
        impl StdError for Dns {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(Dns(io)))));
        assert_eq!(
            map_status("nosuch.invalid:7379", Duration::from_millis(250), status),
            Error::Unreachable {
                addr: "nosuch.invalid:7379".into(),
                reason: "DNS resolution failed for nosuch.invalid: Name or service not known"
                    .into()
            }
        );
    }

    #[test]
    fn the_deadline_is_a_timeout() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(
            map(status),
            Error::Timeout("no reply from h:1 within 250 ms".into())
        );
    }

    #[test]
    fn only_the_servers_refusal_proves_nothing_was_processed() {
        // A reason turned into an error locally is not the server's word.
        let local = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(!local.is_remote());
        assert_eq!(h2_verdict(&local), None);
    }
}
