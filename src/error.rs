//! The error type at the API edge: what a client can be told.
//!
//! Each layer has its own error enum (see [`crate::storage::Error`]); they
//! convert into this one. This file holds the only mapping between [`Error`]
//! and `tonic::Status`, in both directions:
//!
//! - server side, `impl From<Error> for tonic::Status`: a gRPC code chosen by
//!   meaning, the message, and machine-readable metadata:
//!   `caskade-reason` (see [`Error::reason`]), `caskade-partition` and
//!   `caskade-leader` for routing errors, `caskade-isr` and
//!   `caskade-min-insync` for [`Error::NotEnoughReplicas`];
//! - client side, `impl From<tonic::Status> for Error`: rebuilds the variant
//!   from that metadata, and falls back on the gRPC code for statuses that
//!   did not come from a caskade handler (transport failures, tonic limits).
//!
//! Invariants:
//! - for every variant, `Error::from(Status::from(e))` displays the same
//!   text as `e` (tested below), so the CLI prints exactly what the server
//!   decided, as `(error) <message>`;
//! - an [`Error`] names no filesystem path: a storage error enters it only
//!   through `From<storage::Error>`, which keeps the storage layer's
//!   path-free text and logs the full one (src/storage/error.rs). Every
//!   edge to clients starts from an [`Error`]: the gRPC status
//!   (`From<Error> for Status`, used by the client API, the admin API and
//!   the replication service), the RESP reply (`resp::commands::refusal`)
//!   and a fetch answer's per-partition error (`replication::serve`).

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::storage;

/// Result alias for the API-level error.
pub type Result<T> = std::result::Result<T, Error>;

/// An error a client can see. Variants are named by meaning, not by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed: empty or oversized key, bad TTL, and so on.
    /// The message is shown to the user as is.
    #[error("{0}")]
    InvalidInput(String),
    /// This node does not lead the key's partition. Retry on `leader`.
    #[error("{}", not_leader_message(*.partition, .leader.as_deref()))]
    NotLeader {
        /// The partition the key belongs to.
        partition: u32,
        /// Client address (`host:port`) of the leader, when known.
        leader: Option<String>,
    },
    /// `acks: all` was asked but the partition has fewer in-sync replicas
    /// than `min_insync`; nothing was written.
    #[error(
        "not enough in-sync replicas for partition {partition}: {isr}, at least {min_insync} needed"
    )]
    NotEnoughReplicas {
        /// The partition the key belongs to.
        partition: u32,
        /// In-sync replicas right now.
        isr: u32,
        /// In-sync replicas required.
        min_insync: u32,
    },
    /// The request did not complete in time. Its effect is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// No server processed the request; nothing was applied. The client
    /// could not connect, or the server refused the request before
    /// processing it (HTTP/2 `REFUSED_STREAM`, or a `GOAWAY` below the
    /// request's stream); see src/client/outcome.rs.
    #[error("could not connect to caskade at {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why, e.g. `connection refused`.
        reason: String,
    },
    /// Stored data failed its checksum; the value is not served.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The partition's disk is full: the write was refused before it was
    /// applied (the storage layer cut its bytes back); reads go on, and
    /// writes resume once space is freed. The message is the storage
    /// layer's (`disk full: ...`). RESP answers it as `READONLY ...`.
    #[error("{0}")]
    DiskFull(String),
    /// The partition's engine refuses writes after a failed fsync, until
    /// the node restarts (docs/STORAGE.md, the fsyncgate rule); reads go
    /// on. A write that got it may have reached the file before the
    /// refusal: its outcome is unknown. The message is the storage
    /// layer's (`writes refused: ...`). RESP answers it as `READONLY ...`.
    #[error("{0}")]
    WritesRefused(String),
    /// The node cannot serve this right now (shutting down, ...), or the
    /// connection was lost after the request may have been sent: the
    /// effect of a write is then unknown.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other failure inside the node.
    #[error("internal error: {0}")]
    Internal(String),
    /// Node to node: the caller's leader epoch is older than the one this
    /// node knows; the caller is a deposed leader or a stale follower.
    #[error("fenced: {0}")]
    FencedEpoch(String),
    /// Node to node: the caller's leader epoch is newer than the one this
    /// node knows; it has not learned of the change yet. Retry.
    #[error("unknown leader epoch: {0}")]
    UnknownEpoch(String),
    /// Node to node: a controller notice from a deposed controller.
    #[error("stale controller: {0}")]
    StaleController(String),
    /// The request is valid but the system is not in a state to run it
    /// (an admin request to a standalone node, a reassignment while one is
    /// in progress). The message says what to do; shown as is.
    #[error("{0}")]
    FailedPrecondition(String),
    /// `INCRBY` and friends on a value that is not a 64-bit integer (or an
    /// increment argument that is not one); nothing was written. The text
    /// is Redis' after its `ERR ` prefix.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// `INCRBY` and friends whose result would overflow a signed 64-bit
    /// integer; nothing was written. The text is Redis' after `ERR `.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// No credentials, or wrong ones (src/auth.rs); nothing was done.
    #[error("{0}")]
    Unauthenticated(String),
    /// The user lacks the permission the request needs; nothing was done.
    #[error("{0}")]
    PermissionDenied(String),
}

/// Display text of [`Error::NotLeader`].
fn not_leader_message(partition: u32, leader: Option<&str>) -> String {
    match leader {
        Some(addr) => format!("not the leader of partition {partition}; the leader is {addr}"),
        None => format!("not the leader of partition {partition}; no leader is known"),
    }
}

/// The middle of the message of [`Error::after_partial_write`]:
/// `{done} of {total}`, this, the cause, [`RETRY`].
const PARTIAL: &str = " keys were written before this failed: ";

/// The end of the message of [`Error::after_partial_write`].
const RETRY: &str = "; retry the rest";

/// `(k, cause)` of a message [`Error::after_partial_write`] made (`k of m
/// keys were written before this failed: cause; retry the rest`).
fn partial_write(message: &str) -> Option<(usize, &str)> {
    let (k, rest) = message.split_once(" of ")?;
    let (m, rest) = rest.split_once(PARTIAL)?;
    let cause = rest.strip_suffix(RETRY)?;
    m.parse::<usize>().ok()?;
    Some((k.parse().ok()?, cause))
}

impl Error {
    /// The machine-readable reason sent as `caskade-reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "INVALID_ARGUMENT",
            Error::NotLeader { .. } => "NOT_LEADER",
            Error::NotEnoughReplicas { .. } => "NOT_ENOUGH_REPLICAS",
            Error::Timeout(_) => "TIMEOUT",
            Error::Unreachable { .. } => "UNREACHABLE",
            Error::Corrupt(_) => "CORRUPT",
            Error::DiskFull(_) => "DISK_FULL",
            Error::WritesRefused(_) => "WRITES_REFUSED",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
            Error::FencedEpoch(_) => "FENCED_LEADER_EPOCH",
            Error::UnknownEpoch(_) => "UNKNOWN_LEADER_EPOCH",
            Error::StaleController(_) => "STALE_CONTROLLER_EPOCH",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::NotInteger => "NOT_INTEGER",
            Error::Overflow => "OVERFLOW",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
        }
    }

    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::NotLeader { .. } => Code::FailedPrecondition,
            Error::NotEnoughReplicas { .. } => Code::Unavailable,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Unreachable { .. } => Code::Unavailable,
            Error::Corrupt(_) => Code::DataLoss,
            // gRPC's own words: "perhaps the entire file system is out of
            // space". Not UNAVAILABLE: that one says "retry", and its
            // outcome is unknown.
            Error::DiskFull(_) => Code::ResourceExhausted,
            Error::WritesRefused(_) | Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
            Error::FencedEpoch(_) | Error::StaleController(_) => Code::FailedPrecondition,
            Error::UnknownEpoch(_) => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotInteger => Code::FailedPrecondition,
            Error::Overflow => Code::OutOfRange,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
        }
    }

    /// Whether this error proves the request was not applied, so a write
    /// may be retried without being applied twice: refused before any
    /// change (`NOT_LEADER`, `NOT_ENOUGH_REPLICAS`, `DISK_FULL`,
    /// `INVALID_ARGUMENT`) or
    /// never processed by a server ([`Error::Unreachable`]). Every other
    /// error leaves the outcome unknown. The client's retry loop and the
    /// torture history (`tests/torture/runner.rs`) both use this.
    pub fn nothing_applied(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::NotEnoughReplicas { .. }
                | Error::Unreachable { .. }
                | Error::DiskFull(_)
                | Error::InvalidInput(_)
                | Error::NotInteger
                | Error::Overflow
                | Error::Unauthenticated(_)
                | Error::PermissionDenied(_)
        )
    }

    /// This error as the answer to a multi-key request of which `done` of
    /// `total` keys were already written: an error that claims nothing was
    /// applied ([`Error::nothing_applied`]) would make the caller retry the
    /// keys already done, so it becomes [`Error::Unavailable`] naming how
    /// many were; other errors already leave the outcome open.
    ///
    /// An error that is itself such an answer for a part of the request
    /// (`k of m keys were written ...`, from the partition or leader that
    /// served the part) is restated for the whole: `done + k of total`.
    pub fn after_partial_write(self, done: usize, total: usize) -> Error {
        if let Error::Unavailable(m) = &self
            && let Some((k, cause)) = partial_write(m)
        {
            return Error::Unavailable(format!(
                "{} of {total}{PARTIAL}{cause}{RETRY}",
                done.saturating_add(k)
            ));
        }
        if done == 0 || !self.nothing_applied() {
            return self;
        }
        Error::Unavailable(format!("{done} of {total}{PARTIAL}{self}{RETRY}"))
    }

    /// The variant's own text, without the category prefix `Display` adds
    /// (`unavailable: `, ...). It travels as the gRPC message so the client
    /// can rebuild the exact variant; the server prints it for startup
    /// failures, where the category adds nothing.
    pub fn message(&self) -> String {
        match self {
            Error::InvalidInput(m)
            | Error::Timeout(m)
            | Error::Corrupt(m)
            | Error::DiskFull(m)
            | Error::WritesRefused(m)
            | Error::Unavailable(m)
            | Error::Internal(m)
            | Error::FencedEpoch(m)
            | Error::UnknownEpoch(m)
            | Error::StaleController(m)
            | Error::FailedPrecondition(m)
            | Error::Unauthenticated(m)
            | Error::PermissionDenied(m) => m.clone(),
            Error::Unreachable { reason, .. } => reason.clone(),
            e @ (Error::NotLeader { .. }
            | Error::NotEnoughReplicas { .. }
            | Error::NotInteger
            | Error::Overflow) => e.to_string(),
        }
    }
}

/// The one conversion of storage errors into what a client may see: the
/// storage layer's path-free text ([`storage::Error::client_message`]);
/// when the full text differs (it names files), it goes to the log.
impl From<storage::Error> for Error {
    fn from(err: storage::Error) -> Self {
        let client = err.client_message();
        if client != err.to_string() {
            tracing::warn!("storage error: {err}");
        }
        match err {
            storage::Error::InvalidInput(msg) => Error::InvalidInput(msg),
            storage::Error::Corrupt(_) => Error::Corrupt(client),
            // A definite refusal: the engine cut the write back.
            storage::Error::DiskFull(_) => Error::DiskFull(client),
            // After a failed fsync, a write may have reached the file before
            // the refusal: its outcome is unknown.
            storage::Error::WritesRefused(_) => Error::WritesRefused(client),
            storage::Error::Closed => Error::Unavailable(client),
            // The replication layer answers NOT_LEADER with the partition
            // and leader it knows; here neither is known.
            storage::Error::NotLeader(msg) => Error::Unavailable(msg),
            storage::Error::NotInteger => Error::NotInteger,
            storage::Error::Overflow => Error::Overflow,
            storage::Error::Locked(_) | storage::Error::Io { .. } => Error::Internal(client),
        }
    }
}

/// Metadata keys carried by an error status.
mod key {
    pub const REASON: &str = "caskade-reason";
    pub const PARTITION: &str = "caskade-partition";
    pub const LEADER: &str = "caskade-leader";
    pub const ISR: &str = "caskade-isr";
    pub const MIN_INSYNC: &str = "caskade-min-insync";
    pub const ADDR: &str = "caskade-addr";
}

/// Inserts an ASCII metadata entry, skipping values that are not valid
/// header values (they are informational; the message still says it all).
fn put(md: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(v) = MetadataValue::try_from(value) {
        md.insert(key, v);
    }
}

/// Reads an ASCII metadata entry.
fn get<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

/// Reads a numeric metadata entry, 0 when absent or malformed.
fn get_u32(md: &MetadataMap, key: &str) -> u32 {
    get(md, key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl Error {
    /// Rebuilds an error carried as a `(reason, message)` pair inside a
    /// message rather than as a status (a partition's entry in a fetch
    /// answer): the same variant a status with that `caskade-reason` would
    /// give, with `partition` for the variants that name one.
    pub fn from_reason(reason: &str, message: String, partition: u32) -> Error {
        let mut md = MetadataMap::new();
        put(&mut md, key::REASON, reason);
        put(&mut md, key::PARTITION, &partition.to_string());
        Error::from(Status::with_metadata(Code::Unknown, message, md))
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let mut md = MetadataMap::new();
        put(&mut md, key::REASON, err.reason());
        match &err {
            Error::NotLeader { partition, leader } => {
                put(&mut md, key::PARTITION, &partition.to_string());
                if let Some(leader) = leader {
                    put(&mut md, key::LEADER, leader);
                }
            }
            Error::NotEnoughReplicas {
                partition,
                isr,
                min_insync,
            } => {
                put(&mut md, key::PARTITION, &partition.to_string());
                put(&mut md, key::ISR, &isr.to_string());
                put(&mut md, key::MIN_INSYNC, &min_insync.to_string());
            }
            Error::Unreachable { addr, .. } => put(&mut md, key::ADDR, addr),
            _ => {}
        }
        Status::with_metadata(err.code(), err.message(), md)
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        let md = status.metadata();
        let msg = status.message().to_string();
        match get(md, key::REASON) {
            Some("INVALID_ARGUMENT") => Error::InvalidInput(msg),
            Some("NOT_LEADER") => Error::NotLeader {
                partition: get_u32(md, key::PARTITION),
                leader: get(md, key::LEADER).map(str::to_string),
            },
            Some("NOT_ENOUGH_REPLICAS") => Error::NotEnoughReplicas {
                partition: get_u32(md, key::PARTITION),
                isr: get_u32(md, key::ISR),
                min_insync: get_u32(md, key::MIN_INSYNC),
            },
            Some("TIMEOUT") => Error::Timeout(msg),
            Some("UNREACHABLE") => Error::Unreachable {
                addr: get(md, key::ADDR).unwrap_or("?").to_string(),
                reason: msg,
            },
            Some("CORRUPT") => Error::Corrupt(msg),
            Some("DISK_FULL") => Error::DiskFull(msg),
            Some("WRITES_REFUSED") => Error::WritesRefused(msg),
            Some("UNAVAILABLE") => Error::Unavailable(msg),
            Some("INTERNAL") => Error::Internal(msg),
            Some("FENCED_LEADER_EPOCH") => Error::FencedEpoch(msg),
            Some("UNKNOWN_LEADER_EPOCH") => Error::UnknownEpoch(msg),
            Some("STALE_CONTROLLER_EPOCH") => Error::StaleController(msg),
            Some("FAILED_PRECONDITION") => Error::FailedPrecondition(msg),
            Some("NOT_INTEGER") => Error::NotInteger,
            Some("OVERFLOW") => Error::Overflow,
            Some("UNAUTHENTICATED") => Error::Unauthenticated(msg),
            Some("PERMISSION_DENIED") => Error::PermissionDenied(msg),
            // Not from a caskade handler: tonic, hyper or the network.
            _ => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => Error::InvalidInput(msg),
                Code::DeadlineExceeded => Error::Timeout(msg),
                Code::Unavailable | Code::Cancelled | Code::ResourceExhausted => {
                    Error::Unavailable(msg)
                }
                Code::DataLoss => Error::Corrupt(msg),
                Code::Unauthenticated => Error::Unauthenticated(msg),
                Code::PermissionDenied => Error::PermissionDenied(msg),
                _ => Error::Internal(format!("{:?}: {msg}", status.code())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant survives the trip through a gRPC status unchanged.
    #[test]
    fn status_round_trip() {
        let cases = [
            Error::InvalidInput("empty key".into()),
            Error::NotLeader {
                partition: 3,
                leader: Some("10.0.0.2:7379".into()),
            },
            Error::NotLeader {
                partition: 0,
                leader: None,
            },
            Error::NotEnoughReplicas {
                partition: 7,
                isr: 1,
                min_insync: 2,
            },
            Error::Timeout("no reply within 5000 ms".into()),
            Error::Unreachable {
                addr: "127.0.0.1:1".into(),
                reason: "connection refused".into(),
            },
            Error::Corrupt("bad crc".into()),
            Error::DiskFull("disk full: write segment: No space left on device".into()),
            Error::WritesRefused(
                "writes refused: fsync failed (Input/output error (os error 5)); ...".into(),
            ),
            Error::Unavailable("disk full".into()),
            Error::Internal("boom".into()),
            Error::FencedEpoch("partition 1: epoch 3 < 4".into()),
            Error::UnknownEpoch("partition 1: epoch 5 > 4".into()),
            Error::StaleController("controller epoch 2 < 3".into()),
            Error::FailedPrecondition("reassignment needs a cluster".into()),
            Error::NotInteger,
            Error::Overflow,
            Error::Unauthenticated("invalid username-password pair".into()),
            Error::PermissionDenied("user 'ro' has no 'write' permission, which Set needs".into()),
        ];
        for err in cases {
            let status = Status::from(err.clone());
            assert_eq!(status.code(), err.code());
            assert_eq!(
                status
                    .metadata()
                    .get("caskade-reason")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                err.reason()
            );
            let back = Error::from(status);
            assert_eq!(back, err);
            assert_eq!(back.to_string(), err.to_string());
        }
    }

    #[test]
    fn not_leader_metadata_carries_the_leader() {
        let status = Status::from(Error::NotLeader {
            partition: 5,
            leader: Some("h:1".into()),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get("caskade-leader").unwrap(), "h:1");
        assert_eq!(status.metadata().get("caskade-partition").unwrap(), "5");
        assert_eq!(
            status.message(),
            "not the leader of partition 5; the leader is h:1"
        );
    }

    #[test]
    fn a_partial_write_never_claims_nothing_was_applied() {
        let unreachable = Error::Unreachable {
            addr: "h:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(unreachable.clone().after_partial_write(0, 2), unreachable);
        let partial = unreachable.after_partial_write(1, 2);
        assert_eq!(
            partial,
            Error::Unavailable(
                "1 of 2 keys were written before this failed: could not connect to caskade at \
                 h:1: connection refused; retry the rest"
                    .into()
            )
        );
        assert!(!partial.nothing_applied());
        let timeout = Error::Timeout("late".into());
        assert_eq!(timeout.clone().after_partial_write(1, 2), timeout);

        // A part's own partial answer (2 of its 3 keys) after 4 keys of
        // other parts: 6 of the request's 10, the cause kept.
        let Error::Unavailable(m) = partial.clone().after_partial_write(0, 3) else {
            panic!("not Unavailable");
        };
        assert!(m.starts_with("1 of 3 keys were written"), "{m}");
        let part = Error::Unreachable {
            addr: "h:1".into(),
            reason: "connection refused".into(),
        }
        .after_partial_write(2, 3);
        assert_eq!(
            part.after_partial_write(4, 10),
            Error::Unavailable(
                "6 of 10 keys were written before this failed: could not connect to caskade at \
                 h:1: connection refused; retry the rest"
                    .into()
            )
        );
        // Other Unavailable messages are not taken for one.
        let other = Error::Unavailable("shutting down: 1 of 2 listeners closed".into());
        assert_eq!(other.clone().after_partial_write(3, 4), other);
    }

    #[test]
    fn foreign_statuses_map_by_code() {
        assert_eq!(
            Error::from(Status::out_of_range("too large")),
            Error::InvalidInput("too large".into())
        );
        assert_eq!(
            Error::from(Status::deadline_exceeded("late")),
            Error::Timeout("late".into())
        );
        assert_eq!(
            Error::from(Status::unimplemented("nope")).to_string(),
            "internal error: Unimplemented: nope"
        );
    }
}
