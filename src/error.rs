//! The error type at the API edge: what a client can be told.
//!
//! Each layer has its own error enum (see [`crate::storage::Error`]); they
//! convert into this one, which the server maps to gRPC status codes in one
//! place and the CLI prints as `(error) <message>`.

use crate::storage;

/// Result alias for the API-level error.
pub type Result<T> = std::result::Result<T, Error>;

/// An error a client can see. Variants are named by meaning, not by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: empty or oversized key, bad TTL, and so on.
    #[error("{0}")]
    InvalidInput(String),
    /// Stored data failed its checksum; the value is not served.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The node cannot take writes right now (disk full, failed fsync, ...).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other failure inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<storage::Error> for Error {
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::InvalidInput(msg) => Error::InvalidInput(msg),
            storage::Error::Corrupt(msg) => Error::Corrupt(msg),
            e @ (storage::Error::DiskFull(_)
            | storage::Error::WritesRefused(_)
            | storage::Error::Closed) => Error::Unavailable(e.to_string()),
            e @ (storage::Error::Locked(_) | storage::Error::Io { .. }) => {
                Error::Internal(e.to_string())
            }
        }
    }
}
