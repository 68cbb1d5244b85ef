//! The storage layer's error type.
//!
//! Few variants, named by what the caller can do about them: fix the input,
//! wait for space, or treat the data as lost.
//!
//! Invariant: an error has two texts. `Display` is the operator's, with the
//! files involved (for the server's log and startup failures);
//! [`Error::client_message`] says what failed without any filesystem path
//! (a file is named by its file name at most), and is the only text of a
//! storage error that leaves the node (src/error.rs converts with it). So
//! a path enters an error only through [`Error::io_at`] / [`IoContext::ctx_at`]
//! (the path kept apart from the operation) or through [`Text::naming`]
//! (the path replaced by its file name for clients), never through
//! `Text::from`.

use std::io;
use std::path::{Path, PathBuf};

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
    Corrupt(Text),
    /// Another process holds the data directory's lock.
    #[error("data directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// The disk is full; the write was not applied. Writes resume once space
    /// is freed.
    #[error("disk full: {0}")]
    DiskFull(Text),
    /// The engine refuses writes after an I/O failure it cannot undo (such as
    /// a failed fsync); reads continue.
    #[error("writes refused: {0}")]
    WritesRefused(Text),
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
    /// An I/O error, with what was being done and on which file.
    #[error("{context}{}: {source}", at(.path.as_deref()))]
    Io {
        /// What the engine was doing (`fsync`, `create segment`), without
        /// a path.
        context: String,
        /// The file or directory it was done on.
        path: Option<PathBuf>,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// `" <path>"`, or nothing.
fn at(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// The text of an error that may name files: in full for the log, and
/// without paths for clients ([`Text::client`]). Displays in full; derefs
/// to the full text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// With paths.
    full: String,
    /// Without paths.
    client: String,
}

impl Text {
    /// `full`, whose client form is `client`.
    pub fn new(full: impl Into<String>, client: impl Into<String>) -> Text {
        Text {
            full: full.into(),
            client: client.into(),
        }
    }

    /// `full`, which names `path`: clients see the path's file name instead.
    pub fn naming(full: String, path: &Path) -> Text {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let client = full.replace(&path.display().to_string(), &name);
        Text { full, client }
    }

    /// The text without filesystem paths.
    pub fn client(&self) -> &str {
        &self.client
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.full
    }
}

/// A text that names no file (the same for clients).
impl From<String> for Text {
    fn from(full: String) -> Text {
        Text {
            client: full.clone(),
            full,
        }
    }
}

/// A text that names no file (the same for clients).
impl From<&str> for Text {
    fn from(full: &str) -> Text {
        Text::from(full.to_string())
    }
}

impl Error {
    /// Wraps an I/O error with context, classifying a full disk as [`Error::DiskFull`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::io_with(context.into(), None, source)
    }

    /// [`Error::io`] of an operation on `path`.
    pub fn io_at(context: &str, path: &Path, source: io::Error) -> Error {
        Error::io_with(context.to_string(), Some(path.to_path_buf()), source)
    }

    fn io_with(context: String, path: Option<PathBuf>, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            Error::DiskFull(Text::new(
                format!("{context}{}: {source}", at(path.as_deref())),
                format!("{context} failed: {source}"),
            ))
        } else {
            Error::Io {
                context,
                path,
                source,
            }
        }
    }

    /// What failed, without any filesystem path: the only text of a
    /// storage error sent to clients (see the module invariant).
    pub fn client_message(&self) -> String {
        match self {
            Error::Corrupt(t) => t.client().to_string(),
            Error::Locked(_) => "the data directory is in use by another process".into(),
            Error::DiskFull(t) => format!("disk full: {}", t.client()),
            Error::WritesRefused(t) => format!("writes refused: {}", t.client()),
            Error::Io {
                context, source, ..
            } => format!("storage I/O error: {context} failed: {source}"),
            e @ (Error::InvalidInput(_)
            | Error::Closed
            | Error::NotLeader(_)
            | Error::NotInteger
            | Error::Overflow) => e.to_string(),
        }
    }

    /// This error as a [`Text`] (both forms), e.g. as a reason to refuse writes.
    pub fn text(&self) -> Text {
        Text::new(self.to_string(), self.client_message())
    }
}

/// Adds context to I/O results: `file.sync_data().ctx_at("fsync", &path)?`.
pub(crate) trait IoContext<T> {
    /// Converts an `io::Result` into a storage [`Result`] with context; the
    /// context must name no file (see [`IoContext::ctx_at`]).
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
    /// Converts an `io::Result` into a storage [`Result`]: `context` done
    /// on `path`.
    fn ctx_at(self, context: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
    fn ctx_at(self, context: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io_at(context, path, e))
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
            Error::Io {
                context,
                path,
                source,
            } => Error::Io {
                context: context.clone(),
                path: path.clone(),
                // Keeps the OS error's text (and its number, in the text).
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_name_no_path() {
        let p = Path::new("/srv/caskade/data/p0/00000001.data");
        let eio = || io::Error::from_raw_os_error(5);
        let e = Error::io_at("fsync", p, eio());
        assert_eq!(
            e.to_string(),
            "fsync /srv/caskade/data/p0/00000001.data: Input/output error (os error 5)"
        );
        assert_eq!(
            e.client_message(),
            "storage I/O error: fsync failed: Input/output error (os error 5)"
        );
        let full = Error::io_at("write", p, io::Error::from_raw_os_error(28));
        assert_eq!(
            full.to_string(),
            "disk full: write /srv/caskade/data/p0/00000001.data: No space left on device (os error 28)"
        );
        assert_eq!(
            full.client_message(),
            "disk full: write failed: No space left on device (os error 28)"
        );
        let c = Error::Corrupt(Text::naming(
            format!("bad record at 7 in {}", p.display()),
            p,
        ));
        assert_eq!(c.client_message(), "bad record at 7 in 00000001.data");
        assert_eq!(
            Error::Locked(PathBuf::from("/srv/caskade/data")).client_message(),
            "the data directory is in use by another process"
        );
        let dup = e.duplicate();
        assert_eq!(
            (dup.to_string(), dup.client_message()),
            (e.to_string(), e.client_message())
        );
    }
}
