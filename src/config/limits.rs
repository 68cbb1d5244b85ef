//! Listener limits (`limits:` in the server config): what one client, or
//! one address, can hold of a node's listeners before it is refused or
//! cut off. docs/SECURITY.md ("Listener limits") says what each protects.
//!
//! The connection limits apply to the client gRPC listener (the `Kv` API,
//! admin RPCs included), the replication gRPC listener and the metrics
//! HTTP listener; the RESP listener keeps its Redis-named `resp.maxclients`
//! and `resp.timeout` and takes `max_connections_per_ip` from here. The
//! client listener's total cap stays `server.max_connections`.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Limits shared by the node's listeners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections one IP address may hold open on one listener; one more
    /// is closed at once (the connections it already holds stay). 0 = no
    /// per-address cap. Default 512.
    pub max_connections_per_ip: usize,
    /// Connections the replication listener serves at once (the peers:
    /// one fetch connection per leader, plus the controller's). Default 256.
    pub replication_max_connections: usize,
    /// Connections the metrics endpoint serves at once. Default 16.
    pub metrics_max_connections: usize,
    /// A gRPC connection must send the HTTP/2 preface and its first frame
    /// header within this many ms of being accepted, else it is closed.
    /// Default 10000.
    pub handshake_timeout_ms: u64,
    /// A gRPC connection with no request (stream) in progress for this
    /// many ms is closed (the client reconnects on its next request).
    /// HTTP/2 pings do not count as activity. 0 = never. Default 300000.
    pub idle_timeout_ms: u64,
    /// HTTP/2 streams a peer may have reset by the server for its own
    /// errors (malformed requests) before the connection is closed with
    /// GOAWAY (RUSTSEC-2024-0003). Default 1024.
    pub http2_max_local_error_reset_streams: usize,
    /// HTTP/2 streams reset by the peer that may be queued before the
    /// server accepts them (the "rapid reset" attack, CVE-2023-44487).
    /// Default 20.
    pub http2_max_pending_accept_reset_streams: usize,
    /// Keys one request may name (`MGET`, `MSET`, `DEL`, `EXISTS`, on gRPC
    /// and RESP); more is refused with `INVALID_ARGUMENT`. Default 100000.
    pub max_keys_per_request: usize,
    /// Partitions one replication `FetchRequest` may list (the leader also
    /// refuses a partition listed twice). Default 65536 (the most
    /// partitions a cluster can have).
    pub fetch_max_partitions: usize,
    /// Requests the replication listener decodes and runs at once, over
    /// all connections (a fetch stream counts while it decodes and answers
    /// one request). Default 1024.
    pub replication_max_in_flight: usize,
    /// Streams per replication connection. Default 64.
    pub replication_max_streams_per_connection: u32,
    /// A replication request (other than a fetch stream's answers) running
    /// longer than this fails with `DEADLINE_EXCEEDED`. Default 30000.
    pub replication_request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_ip: 512,
            replication_max_connections: 256,
            metrics_max_connections: 16,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            http2_max_local_error_reset_streams: 1024,
            http2_max_pending_accept_reset_streams: 20,
            max_keys_per_request: 100_000,
            fetch_max_partitions: 65_536,
            replication_max_in_flight: 1024,
            replication_max_streams_per_connection: 64,
            replication_request_timeout_ms: 30_000,
        }
    }
}

impl Limits {
    /// Checks values that parse but would lock everyone out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            (
                "replication_max_connections",
                self.replication_max_connections,
            ),
            ("metrics_max_connections", self.metrics_max_connections),
            ("max_keys_per_request", self.max_keys_per_request),
            ("fetch_max_partitions", self.fetch_max_partitions),
            ("replication_max_in_flight", self.replication_max_in_flight),
            (
                "http2_max_local_error_reset_streams",
                self.http2_max_local_error_reset_streams,
            ),
            (
                "replication_max_streams_per_connection",
                self.replication_max_streams_per_connection as usize,
            ),
        ];
        for (key, v) in nonzero {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "limits.{key} must be at least 1"
                )));
            }
        }
        if self.handshake_timeout_ms == 0 || self.replication_request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "limits.handshake_timeout_ms and limits.replication_request_timeout_ms must be \
                 at least 1"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_caps_are_refused_by_name() {
        let l = Limits {
            fetch_max_partitions: 0,
            ..Limits::default()
        };
        assert_eq!(
            l.validate().unwrap_err().to_string(),
            "invalid configuration: limits.fetch_max_partitions must be at least 1"
        );
        assert!(Limits::default().validate().is_ok());
        let l = Limits {
            max_connections_per_ip: 0,
            idle_timeout_ms: 0,
            ..Limits::default()
        };
        assert!(l.validate().is_ok(), "0 = off for these two");
    }
}
