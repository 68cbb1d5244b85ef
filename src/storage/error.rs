//! The storage layer's error type.
//!
//! Few variants, named by what the caller can do about them: fix the input,
//! wait for space, or treat the data as lost.

use std::io;
use std::path::PathBuf;

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (empty or oversized key, value too large).
    #[error("{0}")]
    InvalidInput(String),
    /// A record failed its checksum or a file is malformed; nothing is served
    /// from it.
    #[error("{0}")]
    Corrupt(String),
    /// Another process holds the data directory's lock.
    #[error("data directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// The disk is full; the write was not applied. Writes resume once space
    /// is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The engine refuses writes after an I/O failure it cannot undo (such as
    /// a failed fsync); reads continue.
    #[error("writes refused: {0}")]
    WritesRefused(String),
    /// The engine has been shut down.
    #[error("storage engine is closed")]
    Closed,
    /// Replica mode: a leader's write or commit stamped with a leader epoch
    /// the engine no longer leads at (it stepped down or moved to another
    /// epoch); nothing was written or committed.
    #[error("{0}")]
    NotLeader(String),
    /// `INCRBY` on a value that is not a 64-bit integer as Redis writes
    /// one; nothing was written.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// `INCRBY` whose result would not fit a signed 64-bit integer;
    /// nothing was written.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with context, classifying a full disk as [`Error::DiskFull`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        let context = context.into();
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            Error::DiskFull(format!("{context}: {source}"))
        } else {
            Error::Io { context, source }
        }
    }
}

/// Adds context to I/O results: `file.sync_data().ctx("fsync segment")?`.
pub(crate) trait IoContext<T> {
    /// Converts an `io::Result` into a storage [`Result`] with context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

impl Error {
    /// A copy of this error for each writer that shares one failed group
    /// commit (`io::Error` is not `Clone`; its kind and message are kept).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::InvalidInput(m) => Error::InvalidInput(m.clone()),
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::Locked(p) => Error::Locked(p.clone()),
            Error::DiskFull(m) => Error::DiskFull(m.clone()),
            Error::WritesRefused(m) => Error::WritesRefused(m.clone()),
            Error::Closed => Error::Closed,
            Error::NotLeader(m) => Error::NotLeader(m.clone()),
            Error::NotInteger => Error::NotInteger,
            Error::Overflow => Error::Overflow,
            Error::Io { context, source } => Error::Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}
