//! Checks of values that parse but cannot work, run by [`Config::load`] and
//! [`ClientConfig::load`] after every layer is applied.
//!
//! Invariants:
//! - every error is one line naming the key (`server.request_timeout_ms`)
//!   and, when the config came from a file, the file
//!   ([`ConfigError::InvalidValue`]);
//! - a zero is refused where zero means nothing workable: timeouts, caps
//!   and sizes that would refuse or time out everything
//!   (`server.request_timeout_ms`, `server.max_connections`,
//!   `server.max_in_flight`, `server.max_streams_per_connection`,
//!   `storage.segment_bytes`, `storage.sweep_interval_ms`,
//!   `storage.limits.max_key_bytes`, `storage.limits.max_value_bytes`,
//!   `cluster.replica_lag_ms`, `cluster.fetch_max_wait_ms`,
//!   `cluster.fetch_max_bytes`, `resp.proto_max_bulk_len`,
//!   `resp.maxclients`, `resp.max_args`, and the CLI's `timeout_ms` and
//!   `connect_timeout_ms`). Zeros that mean "off" stay allowed
//!   (`resp.timeout`, `storage.cache_bytes`, `server.shutdown_timeout_ms`,
//!   `cluster.auto_rebalance_*`);
//! - a value sent in a 32-bit field (`cluster.fetch_max_bytes`,
//!   `cluster.fetch_max_wait_ms`) must fit in it: it is refused here, never
//!   truncated where it is sent;
//! - a node listening on the unspecified address (`0.0.0.0`, `::`) names an
//!   address others can reach (`advertise`, `cluster.replication_advertise`):
//!   it never tells clients or peers to connect to `0.0.0.0`.

use std::net::SocketAddr;

use super::{ClientConfig, ClusterOptions, Config, ConfigError, EngineKind, MetricsOptions};

/// An [`ConfigError::Invalid`] error.
fn bad<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

/// Refuses a zero `value` of `key`.
fn nonzero(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return bad(format!("{key} must be at least 1, got 0"));
    }
    Ok(())
}

/// Refuses a `value` of `key` that does not fit the 32-bit field it is sent
/// in.
fn fits_u32(key: &str, value: u64) -> Result<(), ConfigError> {
    match u32::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => bad(format!(
            "{key} must be at most {} (it is sent as a 32-bit field), got {value}",
            u32::MAX
        )),
    }
}

/// Refuses a `listen` address on the unspecified IP (`0.0.0.0`, `::`) when
/// `advertise` is empty (others would be told the unspecified address), and
/// an `advertise` address that is itself unspecified.
fn reachable(
    listen_key: &str,
    listen: &str,
    advertise_key: &str,
    advertise: &str,
) -> Result<(), ConfigError> {
    let unspecified =
        |addr: &str| matches!(addr.parse::<SocketAddr>(), Ok(a) if a.ip().is_unspecified());
    if advertise.is_empty() && unspecified(listen) {
        return bad(format!(
            "{listen_key} is {listen}, the unspecified address, which nobody can connect to: \
             set {advertise_key} to an address others reach this node at (host:port)"
        ));
    }
    if unspecified(advertise) {
        return bad(format!(
            "{advertise_key} is {advertise}, the unspecified address, which nobody can connect \
             to: set it to an address others reach this node at (host:port)"
        ));
    }
    Ok(())
}

impl MetricsOptions {
    /// Checks that `listen` is empty or an `ip:port` address.
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen must be ip:port (e.g. 127.0.0.1:9580) or empty for no endpoint, got {:?}",
                self.listen
            )));
        }
        Ok(())
    }
}

impl ClusterOptions {
    /// Checks values that parse but cannot work.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.replication_factor == 0 {
            return bad("cluster.replication_factor must be at least 1".into());
        }
        if self.min_insync == 0 || self.min_insync > self.replication_factor {
            return bad(format!(
                "cluster.min_insync must be between 1 and replication_factor ({}), got {}",
                self.replication_factor, self.min_insync
            ));
        }
        if self.session_timeout_ms < 1000 {
            return bad(format!(
                "cluster.session_timeout_ms must be at least 1000, got {}",
                self.session_timeout_ms
            ));
        }
        if self.zk_connect.is_empty() {
            return bad("cluster.zk_connect must not be empty".into());
        }
        let root = self.root();
        if !root.starts_with('/') || root.len() < 2 || root.contains("//") {
            return bad(format!("cluster.zk_root {root:?} is not a ZooKeeper path"));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return bad(format!(
                "cluster.name {:?} must be non-empty, without '/'",
                self.name
            ));
        }
        self.zk_auth.validate()?;
        nonzero("cluster.replica_lag_ms", self.replica_lag_ms)?;
        nonzero("cluster.fetch_max_wait_ms", self.fetch_max_wait_ms)?;
        fits_u32("cluster.fetch_max_wait_ms", self.fetch_max_wait_ms)?;
        nonzero("cluster.fetch_max_bytes", self.fetch_max_bytes as u64)?;
        fits_u32("cluster.fetch_max_bytes", self.fetch_max_bytes as u64)?;
        reachable(
            "cluster.replication_listen",
            &self.replication_listen,
            "cluster.replication_advertise",
            &self.replication_advertise,
        )
    }
}

impl Config {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.partitions == 0 || self.partitions > 65_536 {
            return Err(ConfigError::Invalid(format!(
                "partitions must be between 1 and 65536, got {}",
                self.partitions
            )));
        }
        if self.node_id.is_empty() {
            return Err(ConfigError::Invalid("node_id must not be empty".into()));
        }
        nonzero("server.max_connections", self.server.max_connections as u64)?;
        nonzero("server.max_in_flight", self.server.max_in_flight as u64)?;
        nonzero(
            "server.max_streams_per_connection",
            self.server.max_streams_per_connection.into(),
        )?;
        nonzero("server.request_timeout_ms", self.server.request_timeout_ms)?;
        nonzero("storage.segment_bytes", self.storage.segment_bytes)?;
        nonzero("storage.sweep_interval_ms", self.storage.sweep_interval_ms)?;
        nonzero(
            "storage.limits.max_key_bytes",
            self.storage.limits.max_key_bytes as u64,
        )?;
        nonzero(
            "storage.limits.max_value_bytes",
            self.storage.limits.max_value_bytes as u64,
        )?;
        reachable("listen", &self.listen, "advertise", &self.advertise)?;
        self.metrics.validate()?;
        self.tls.validate()?;
        self.auth.validate()?;
        self.limits.validate()?;
        self.runtime.validate()?;
        if !self.resp.listen.is_empty() && self.resp.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "resp.listen must be ip:port (e.g. 127.0.0.1:6380) or empty for no listener, got {:?}",
                self.resp.listen
            )));
        }
        nonzero("resp.maxclients", self.resp.maxclients as u64)?;
        nonzero("resp.max_args", self.resp.max_args as u64)?;
        nonzero(
            "resp.proto_max_bulk_len",
            self.resp.proto_max_bulk_len as u64,
        )?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if self.engine != EngineKind::Bitcask {
                return Err(ConfigError::Invalid(
                    "cluster mode needs engine: bitcask (replication ships its log)".into(),
                ));
            }
        }
        Ok(())
    }
}

impl ClientConfig {
    /// Checks values that parse but cannot work.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.addrs.is_empty() {
            return Err(ConfigError::Invalid("addrs must not be empty".into()));
        }
        nonzero("timeout_ms", self.timeout_ms)?;
        nonzero("connect_timeout_ms", self.connect_timeout_ms)
    }
}
