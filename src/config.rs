//! Configuration: one struct per program, layered
//! defaults -> YAML file -> `CASKADE_*` environment -> command-line flags.
//!
//! - [`Config`] is the server's (`conf/standalone/server.yaml`), environment
//!   prefix `CASKADE_`; [`ClientConfig`] is the CLI's
//!   (`conf/client/cli.yaml`), prefix `CASKADE_CLI_`.
//! - Every key has an environment variable: the path of the key, joined by
//!   `_`, upper-cased, after the prefix: `listen` -> `CASKADE_LISTEN`,
//!   `storage.fsync` -> `CASKADE_STORAGE_FSYNC`,
//!   `storage.limits.max_value_bytes` -> `CASKADE_STORAGE_LIMITS_MAX_VALUE_BYTES`.
//!   The value is read as YAML (`CASKADE_STORAGE_FSYNC='{every_ms: 100}'`),
//!   except that a key holding a string takes a scalar text as is (so
//!   `CASKADE_NODE_ID=42` is the string "42"), and a list takes a
//!   comma-separated text (`CASKADE_CLI_ADDRS=a:1,b:2`).
//! - Unknown keys in the YAML file are errors that name the key; malformed
//!   environment values are errors that name the variable. `CASKADE_*`
//!   variables matching no key are returned as warnings (the environment is
//!   shared with other programs).
//! - Flags are applied by the binaries on the loaded struct.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::node::{Acks, Consistency};
use crate::storage;

mod tls;
pub use tls::{ClientTlsOptions, TlsOptions};
pub mod auth;
pub mod limits;
pub mod runtime;
mod validate;
pub mod zookeeper;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this configuration (unknown key,
    /// wrong type, ...).
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message, naming the key and the line.
        message: String,
    },
    /// An environment variable holds a value its key cannot take.
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// The values parsed but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value of the config file (or of the environment layered over it)
    /// parsed but cannot work; the message names the key.
    #[error("config file {}: {message}", path.display())]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl ConfigError {
    /// Names `file` in an [`ConfigError::Invalid`] error, when there is one.
    fn in_file(self, file: Option<&Path>) -> ConfigError {
        match (self, file) {
            (ConfigError::Invalid(message), Some(path)) => ConfigError::InvalidValue {
                path: path.to_path_buf(),
                message,
            },
            (e, _) => e,
        }
    }
}

/// The storage engine each partition replica runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// The durable log-structured engine ([`storage::Bitcask`]).
    Bitcask,
    /// In memory only: nothing survives a restart. For tests and for
    /// measuring the RPC stack.
    Memory,
}

/// The server's configuration (`caskade-server --config FILE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, shown in `Metadata` and in logs. Default `node-1`.
    pub node_id: String,
    /// Address the gRPC API listens on (`host:port`). Default `127.0.0.1:7379`.
    pub listen: String,
    /// Address clients are told to use to reach this node (in `Metadata` and
    /// `NOT_LEADER` errors). Default: empty, meaning the bound `listen` address.
    pub advertise: String,
    /// Directory holding this node's data; created if missing. Partition `p`
    /// lives in `<data_dir>/partitions/<p>/`. Default `./data/standalone`.
    pub data_dir: PathBuf,
    /// Number of partitions keys are hashed into. Fixed when the data
    /// directory is created. Default 8.
    pub partitions: u32,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax (`info`,
    /// `caskade=debug,info`, ...). `RUST_LOG` is not read. Default `info`.
    pub log_level: String,
    /// The storage engine: `bitcask` (durable) or `memory` (nothing survives
    /// a restart; for tests). Default `bitcask`.
    pub engine: EngineKind,
    /// Write acknowledgement used when a request leaves it unspecified
    /// (`leader` or `all`). Default `all`.
    pub default_acks: Acks,
    /// Read consistency used when a request leaves it unspecified (`leader`
    /// or `any`). Default `leader`.
    pub default_consistency: Consistency,
    /// Limits and timeouts of the gRPC server.
    pub server: ServerOptions,
    /// Storage engine settings, applied to every partition (see
    /// docs/STORAGE.md); `cache_bytes` is a per-node budget: the node opens
    /// one value cache of that size and all its partitions share it. Enums in it are written as single-key maps
    /// (`fsync: {every_ms: 1000}`), not YAML tags (`!every_ms 1000`).
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub storage: storage::Options,
    /// Cluster mode: ZooKeeper coordination and replication. Absent (the
    /// default) means standalone: this node leads every partition alone.
    pub cluster: Option<ClusterOptions>,
    /// The Prometheus endpoint (docs/API.md, "Metrics").
    pub metrics: MetricsOptions,
    /// The Redis-protocol listener (docs/API.md, "RESP").
    pub resp: RespOptions,
    /// TLS on every listener and between nodes (docs/SECURITY.md); off
    /// unless `tls.cert` is set.
    pub tls: TlsOptions,
    /// Users, permissions and protected mode (docs/SECURITY.md).
    pub auth: auth::AuthOptions,
    /// Connection and request limits of every listener (docs/SECURITY.md,
    /// "Listener limits").
    pub limits: limits::Limits,
    /// Thread counts of the server process (src/config/runtime.rs).
    pub runtime: runtime::RuntimeOptions,
}

/// The RESP (Redis protocol) listener (`resp:` in the server config).
/// Limits are named and defaulted as Redis names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespOptions {
    /// `ip:port` the RESP listener binds; port 0 picks a free one.
    /// Default: empty, meaning no RESP listener.
    pub listen: String,
    /// Redis' `proto-max-bulk-len`: the longest bulk string a client may
    /// send; a longer one is a protocol error (the connection is closed).
    /// Values are further bounded by `storage.limits.max_value_bytes`
    /// (a clear `ERR` answer, the connection stays). Default 536870912.
    pub proto_max_bulk_len: usize,
    /// Most arguments in one command (multibulk length); more is a
    /// protocol error. Default 1048576.
    pub max_args: usize,
    /// Redis' `maxclients`: connections served at once; one more is told
    /// `ERR max number of clients reached` and closed. Default 10000.
    pub maxclients: usize,
    /// Redis' `timeout`: close a connection idle for this many seconds;
    /// 0 = never. Default 0.
    pub timeout: u64,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            listen: String::new(),
            proto_max_bulk_len: 512 << 20,
            max_args: 1 << 20,
            maxclients: 10_000,
            timeout: 0,
        }
    }
}

/// The Prometheus endpoint (`metrics:` in the server config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsOptions {
    /// `ip:port` serving `GET /metrics` (Prometheus text format) on its own
    /// listener; port 0 picks a free one. Default: empty, meaning no
    /// endpoint (the figures are still recorded and `caskade-cli info`
    /// shows them).
    pub listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "node-1".into(),
            listen: "127.0.0.1:7379".into(),
            advertise: String::new(),
            data_dir: PathBuf::from("./data/standalone"),
            partitions: 8,
            log_level: "info".into(),
            engine: EngineKind::Bitcask,
            default_acks: Acks::All,
            default_consistency: Consistency::Leader,
            server: ServerOptions::default(),
            storage: storage::Options::default(),
            cluster: None,
            metrics: MetricsOptions::default(),
            resp: RespOptions::default(),
            tls: TlsOptions::default(),
            auth: auth::AuthOptions::default(),
            limits: limits::Limits::default(),
            runtime: runtime::RuntimeOptions::default(),
        }
    }
}

/// How a node takes part in a cluster (`cluster:` in the server config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterOptions {
    /// Name of the cluster; its ZooKeeper root is `/caskade/<name>` unless
    /// `zk_root` says otherwise. Default `default`.
    pub name: String,
    /// ZooKeeper connect string (`host:port[,host:port...]`). Default
    /// `127.0.0.1:2181`.
    pub zk_connect: String,
    /// ZooKeeper root of this cluster; empty = `/caskade/<name>`.
    pub zk_root: String,
    /// ZooKeeper authentication and the ACL of caskade's znodes
    /// (`config/zookeeper.rs`). Default: off, world-writable znodes.
    pub zk_auth: zookeeper::ZkAuthOptions,
    /// ZooKeeper session timeout in ms. A node that has not heard from
    /// ZooKeeper for this long stops acting as a leader on its own timer.
    /// Default 6000.
    pub session_timeout_ms: u64,
    /// Address the node-to-node replication service listens on
    /// (`host:port`; port 0 picks a free port). Default `127.0.0.1:7380`.
    pub replication_listen: String,
    /// Address other nodes use to reach the replication service; empty =
    /// the bound `replication_listen` address.
    pub replication_advertise: String,
    /// Replicas of each partition, this node included. Default 3.
    pub replication_factor: u32,
    /// In-sync replicas an `acks: all` write needs (and the fewest the high
    /// watermark advances with). Default 2.
    pub min_insync: u32,
    /// A follower that has not caught up with the leader's log end for this
    /// long leaves the ISR. Default 10000.
    pub replica_lag_ms: u64,
    /// Let the controller elect a replica that is not in the ISR when no ISR
    /// member is alive. Loses committed writes; logged loudly. Default false.
    pub unclean_leader_election: bool,
    /// Move leadership back to each partition's preferred replica (the first
    /// assigned) once it is in sync again. Default true.
    pub preferred_leader_rebalance: bool,
    /// How long a follower's fetch waits on the leader for new records
    /// before an empty answer (long poll). Default 500.
    pub fetch_max_wait_ms: u64,
    /// Upper bound of the record bytes in one fetch answer, shared by every
    /// partition of the fetch session. Default 1 MiB.
    pub fetch_max_bytes: usize,
    /// When the cluster is first created, the controller assigns the
    /// partitions once this many nodes are live (at least
    /// `replication_factor`), spreading their replicas over all of them.
    /// Default 0: as soon as `replication_factor` nodes are live.
    pub initial_nodes: u32,
    /// Let the controller move replicas to a node that joined: when a live,
    /// non-decommissioned node has hosted no replica for
    /// `auto_rebalance_grace_ms` and no reassignment is in progress, it
    /// writes a balanced plan to `/admin/reassign`. Default false: moving
    /// replicas copies data between nodes, so a cluster does it when its
    /// operator asked (the configs in conf/cluster turn it on).
    pub auto_rebalance: bool,
    /// Catch-up throttle (bytes/s per node) of the plans auto rebalance
    /// writes; 0 = unthrottled. Default 10 MiB/s.
    pub auto_rebalance_throttle_bytes_per_sec: u64,
    /// How long a node must host nothing before auto rebalance gives it
    /// replicas (a restarting node is not a trigger). Default 10000.
    pub auto_rebalance_grace_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            name: "default".into(),
            zk_connect: "127.0.0.1:2181".into(),
            zk_root: String::new(),
            zk_auth: zookeeper::ZkAuthOptions::default(),
            session_timeout_ms: 6000,
            replication_listen: "127.0.0.1:7380".into(),
            replication_advertise: String::new(),
            replication_factor: 3,
            min_insync: 2,
            replica_lag_ms: 10_000,
            unclean_leader_election: false,
            preferred_leader_rebalance: true,
            fetch_max_wait_ms: 500,
            fetch_max_bytes: 1 << 20,
            initial_nodes: 0,
            auto_rebalance: false,
            auto_rebalance_throttle_bytes_per_sec: 10 << 20,
            auto_rebalance_grace_ms: 10_000,
        }
    }
}

impl ClusterOptions {
    /// The ZooKeeper root of this cluster.
    pub fn root(&self) -> String {
        if self.zk_root.is_empty() {
            format!("/caskade/{}", self.name)
        } else {
            self.zk_root.trim_end_matches('/').to_string()
        }
    }
}

/// Limits and timeouts of the gRPC server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerOptions {
    /// Client connections served at once; further clients wait in the
    /// listen backlog until one closes. Default 1024.
    pub max_connections: usize,
    /// Requests executed at once over all connections; further requests
    /// wait for a slot. Default 1024.
    pub max_in_flight: usize,
    /// Concurrent requests (HTTP/2 streams) per connection. Default 256.
    pub max_streams_per_connection: u32,
    /// A request running longer than this fails with `TIMEOUT`. Default 10000.
    pub request_timeout_ms: u64,
    /// On SIGINT/SIGTERM, how long in-flight requests get to finish before
    /// the server closes anyway (then flushes storage). Default 10000.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 1024,
            max_in_flight: 1024,
            max_streams_per_connection: 256,
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Environment prefix of the server's keys.
    pub const ENV_PREFIX: &'static str = "CASKADE_";

    /// Loads defaults, then `file` if given, then the `CASKADE_*` variables
    /// of `env`. Returns the config and warnings about unused variables.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        // CASKADE_CLI_* belongs to the CLI, not to unknown server keys.
        let env = env
            .into_iter()
            .filter(|(k, _)| !k.starts_with(ClientConfig::ENV_PREFIX));
        let cluster = serde_yaml_ng::to_value(ClusterOptions::default())
            .map_err(|e| ConfigError::Invalid(format!("cannot serialize config: {e}")))?;
        let (config, warnings) =
            load_layered::<Config>(file, Self::ENV_PREFIX, env, &[("cluster", cluster)])?;
        config.validate().map_err(|e| e.in_file(file))?;
        Ok((config, warnings))
    }

    /// The largest gRPC message the server accepts: one maximal key and value
    /// plus room for the envelope. Larger messages are refused by tonic
    /// before they are buffered whole.
    pub fn max_message_bytes(&self) -> usize {
        let l = self.storage.limits;
        l.max_key_bytes
            .saturating_add(l.max_value_bytes)
            .saturating_add(64 << 10)
    }
}

/// The CLI's configuration (`caskade-cli -c FILE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Server addresses (`host:port`). The first is used; in a cluster they
    /// are the seeds metadata is fetched from. Default `[127.0.0.1:7379]`.
    pub addrs: Vec<String>,
    /// Time a request may take, connecting included, in ms. Default 5000.
    pub timeout_ms: u64,
    /// Time to establish a connection, in ms. Default 1000.
    pub connect_timeout_ms: u64,
    /// Acknowledgement asked for writes (`leader` or `all`). Default `all`.
    pub acks: Acks,
    /// Consistency asked for reads (`leader` or `any`). Default `leader`.
    pub consistency: Consistency,
    /// REPL history file; `~` is the home directory; empty disables
    /// history. Default `~/.caskade_history`.
    pub history_file: String,
    /// TLS to the servers; off unless `tls.ca` is set.
    pub tls: ClientTlsOptions,
    /// Credentials (`auth: {user, password}`; docs/SECURITY.md).
    pub auth: auth::ClientAuth,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addrs: vec!["127.0.0.1:7379".into()],
            timeout_ms: 5000,
            connect_timeout_ms: 1000,
            acks: Acks::All,
            consistency: Consistency::Leader,
            history_file: "~/.caskade_history".into(),
            tls: ClientTlsOptions::default(),
            auth: auth::ClientAuth::default(),
        }
    }
}

impl ClientConfig {
    /// Environment prefix of the CLI's keys.
    pub const ENV_PREFIX: &'static str = "CASKADE_CLI_";

    /// Loads defaults, then `file` if given, then the `CASKADE_CLI_*`
    /// variables of `env`. Returns the config and warnings.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(ClientConfig, Vec<String>), ConfigError> {
        let (config, warnings) = load_layered::<ClientConfig>(file, Self::ENV_PREFIX, env, &[])?;
        config.validate().map_err(|e| e.in_file(file))?;
        Ok((config, warnings))
    }
}

/// Defaults -> YAML file -> environment, for any config struct whose
/// `Default` is the documented defaults.
///
/// `optional` names sections that are absent (`null`) by default, with the
/// value they take when an environment variable sets one of their keys
/// (`CASKADE_CLUSTER_ZK_CONNECT` turns an absent `cluster:` into the default
/// cluster settings with that key changed).
fn load_layered<T>(
    file: Option<&Path>,
    prefix: &str,
    env: impl IntoIterator<Item = (String, String)>,
    optional: &[(&str, Value)],
) -> Result<(T, Vec<String>), ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let from_file: T = match file {
        None => T::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            parse_yaml(&text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?
        }
    };
    let mut tree = serde_yaml_ng::to_value(&from_file)
        .map_err(|e| ConfigError::Invalid(format!("cannot serialize config: {e}")))?;
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    vars.sort();
    for (name, default) in optional {
        let section = format!("{prefix}{}_", name.to_ascii_uppercase());
        if vars.iter().any(|(k, _)| k.starts_with(&section))
            && let Some(map) = tree.as_mapping_mut()
            && map.get(*name).is_none_or(Value::is_null)
        {
            map.insert(Value::from(*name), default.clone());
        }
    }
    let mut warnings = Vec::new();
    for (var, value) in vars {
        let path = var[prefix.len()..].to_ascii_lowercase();
        if !apply_env(&mut tree, &path, &value) {
            warnings.push(format!("environment variable {var} matches no config key"));
            continue;
        }
        // Check after each variable, so the error names the culprit.
        serde_yaml_ng::from_value::<T>(tree.clone()).map_err(|e| ConfigError::Env {
            var: var.clone(),
            value: value.clone(),
            message: e.to_string(),
        })?;
    }
    let config = serde_yaml_ng::from_value(tree)
        .map_err(|e| ConfigError::Invalid(format!("after environment overrides: {e}")))?;
    Ok((config, warnings))
}

/// Parses YAML text into a config struct; an empty file is the defaults.
fn parse_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(T::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

/// Sets the node at `path` (lower-case key names joined by `_`, e.g.
/// `storage_limits_max_key_bytes`) to `raw`. Returns false if no key
/// matches. Longest key names win, so `data_dir` is not read as `data.dir`.
fn apply_env(node: &mut Value, path: &str, raw: &str) -> bool {
    let Value::Mapping(map) = node else {
        return false;
    };
    let mut keys: Vec<String> = map
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        let Some(child) = map.get_mut(key.as_str()) else {
            continue;
        };
        if path == key {
            *child = env_value(child, raw);
            return true;
        }
        if let Some(rest) = path.strip_prefix(&format!("{key}_"))
            && apply_env(child, rest, raw)
        {
            return true;
        }
    }
    false
}

/// The YAML value an environment variable stands for, given the node it
/// replaces.
fn env_value(current: &Value, raw: &str) -> Value {
    match current {
        // A string key keeps the text, unless it is structured YAML (an
        // enum such as `fsync` is a string for `always`, a map for
        // `{every_ms: N}`).
        Value::String(_) => match serde_yaml_ng::from_str::<Value>(raw) {
            Ok(v @ (Value::Mapping(_) | Value::Tagged(_))) => v,
            _ => Value::String(raw.to_string()),
        },
        Value::Sequence(_) if !raw.trim_start().starts_with('[') => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => serde_yaml_ng::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Durability;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_without_file_or_env() {
        let (c, w) = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        assert_eq!(c.listen, "127.0.0.1:7379");
        assert_eq!(c.partitions, 8);
    }

    #[test]
    fn layering_file_then_env() {
        let f = yaml_file(
            "listen: 0.0.0.0:9000\nadvertise: 10.0.0.5:9000\npartitions: 4\nstorage:\n  fsync: always\n",
        );
        let (c, _) = Config::load(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.partitions, 4);
        assert_eq!(c.storage.fsync, Durability::Always);

        let (c, w) = Config::load(
            Some(f.path()),
            env(&[
                ("CASKADE_LISTEN", "127.0.0.1:1"),
                ("CASKADE_DATA_DIR", "/tmp/x"),
                ("CASKADE_STORAGE_FSYNC", "{every_ms: 50}"),
                ("CASKADE_STORAGE_LIMITS_MAX_KEY_BYTES", "16"),
                ("CASKADE_SERVER_MAX_IN_FLIGHT", "7"),
                ("CASKADE_NODE_ID", "42"),
                ("CASKADE_NO_SUCH_KEY", "1"),
                ("CASKADE_CLI_ADDRS", "ignored"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.storage.fsync, Durability::EveryMs(50));
        assert_eq!(c.storage.limits.max_key_bytes, 16);
        assert_eq!(c.server.max_in_flight, 7);
        assert_eq!(c.node_id, "42");
        assert_eq!(c.partitions, 4);
        assert_eq!(
            w,
            vec!["environment variable CASKADE_NO_SUCH_KEY matches no config key".to_string()]
        );
    }

    #[test]
    fn unknown_yaml_key_is_an_error_naming_it() {
        let f = yaml_file("listen: 127.0.0.1:1\nstorage:\n  fsynk: always\n");
        let err = Config::load(Some(f.path()), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `fsynk`"), "{err}");
        assert!(err.starts_with("config file "), "{err}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = Config::load(None, env(&[("CASKADE_PARTITIONS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable CASKADE_PARTITIONS=\"many\": "),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_must_be_an_address() {
        let err = Config::load(None, env(&[("CASKADE_METRICS_LISTEN", "localhost")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: metrics.listen must be ip:port (e.g. 127.0.0.1:9580) or empty \
             for no endpoint, got \"localhost\""
        );
        let (c, _) = Config::load(None, env(&[("CASKADE_METRICS_LISTEN", "127.0.0.1:0")])).unwrap();
        assert_eq!(c.metrics.listen, "127.0.0.1:0");
    }

    #[test]
    fn invalid_partition_count() {
        let err = Config::load(None, env(&[("CASKADE_PARTITIONS", "0")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid configuration: partitions must be between 1 and 65536, got 0"
        );
    }

    #[test]
    fn client_config_layers_and_splits_lists() {
        let f = yaml_file("addrs: [a:1]\ntimeout_ms: 10\nacks: leader\n");
        let (c, _) = ClientConfig::load(
            Some(f.path()),
            env(&[
                ("CASKADE_CLI_ADDRS", "h1:1, h2:2"),
                ("CASKADE_CLI_CONSISTENCY", "any"),
            ]),
        )
        .unwrap();
        assert_eq!(c.addrs, vec!["h1:1".to_string(), "h2:2".to_string()]);
        assert_eq!(c.timeout_ms, 10);
        assert_eq!(c.acks, Acks::Leader);
        assert_eq!(c.consistency, Consistency::Any);
    }

    /// The shipped example files parse and hold the defaults they document.
    #[test]
    fn shipped_config_files_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (server, w) =
            Config::load(Some(&root.join("conf/standalone/server.yaml")), env(&[])).unwrap();
        assert!(w.is_empty());
        assert_eq!(server.listen, "127.0.0.1:7379");
        assert_eq!(server.data_dir, PathBuf::from("./data/standalone"));
        assert_eq!(server.metrics.listen, "", "off by default in standalone");
        assert_eq!(
            server.resp,
            RespOptions {
                listen: "127.0.0.1:6380".into(),
                ..RespOptions::default()
            }
        );
        assert_eq!(RespOptions::default().listen, "", "off when absent");
        let (client, _) =
            ClientConfig::load(Some(&root.join("conf/client/cli.yaml")), env(&[])).unwrap();
        assert_eq!(client, ClientConfig::default());
    }

    /// The three node files of `make cluster` parse, differ exactly in id,
    /// addresses and data directory, and hold the cluster settings the
    /// README and the failover demo rely on.
    #[test]
    fn cluster_keys_from_the_environment_create_the_section() {
        let (c, w) = Config::load(
            None,
            env(&[
                ("CASKADE_CLUSTER_ZK_CONNECT", "10.0.0.1:2181"),
                ("CASKADE_CLUSTER_MIN_INSYNC", "1"),
            ]),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.zk_connect, "10.0.0.1:2181");
        assert_eq!(cluster.min_insync, 1);
        assert_eq!(cluster.replication_factor, 3);
        let (c, _) = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.cluster, None);
    }

    #[test]
    fn shipped_cluster_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut ids = Vec::new();
        for n in 1..=3 {
            let file = root.join(format!("conf/cluster/node{n}.yaml"));
            let (c, w) = Config::load(Some(&file), env(&[])).unwrap();
            assert!(w.is_empty(), "{w:?}");
            assert_eq!(c.node_id, format!("node-{n}"));
            assert_eq!(c.listen, format!("127.0.0.1:738{n}"));
            assert_eq!(c.advertise, "");
            assert_eq!(c.data_dir, PathBuf::from(format!("./data/cluster/node{n}")));
            assert_eq!(c.partitions, 8);
            assert_eq!(c.log_level, "info");
            assert_eq!(c.engine, EngineKind::Bitcask);
            assert_eq!(c.default_acks, Acks::All);
            assert_eq!(c.default_consistency, Consistency::Leader);
            assert_eq!(c.metrics.listen, format!("127.0.0.1:958{n}"));
            assert_eq!(c.resp.listen, format!("127.0.0.1:638{n}"));
            assert_eq!(c.storage.fsync, Durability::EveryMs(1000));
            // Everything not written in the file keeps its default.
            assert_eq!(c.server, ServerOptions::default());
            assert_eq!(
                c.storage,
                storage::Options {
                    fsync: Durability::EveryMs(1000),
                    ..storage::Options::default()
                }
            );
            assert_eq!(
                c.cluster,
                Some(ClusterOptions {
                    name: "local".into(),
                    zk_connect: "127.0.0.1:2181".into(),
                    zk_root: String::new(),
                    zk_auth: Default::default(),
                    session_timeout_ms: 6000,
                    replication_listen: format!("127.0.0.1:748{n}"),
                    replication_advertise: String::new(),
                    replication_factor: 3,
                    min_insync: 2,
                    replica_lag_ms: 10_000,
                    unclean_leader_election: false,
                    preferred_leader_rebalance: true,
                    fetch_max_wait_ms: 500,
                    fetch_max_bytes: 1 << 20,
                    initial_nodes: 0,
                    auto_rebalance: true,
                    auto_rebalance_throttle_bytes_per_sec: 10 << 20,
                    auto_rebalance_grace_ms: 10_000,
                })
            );
            assert_eq!(c.cluster.as_ref().unwrap().root(), "/caskade/local");
            ids.push(c.node_id);
        }
        assert_eq!(ids, ["node-1", "node-2", "node-3"]);

        // The fast-failover override the file's comment recommends works on
        // keys under `cluster:` once the file has that section.
        let (c, w) = Config::load(
            Some(&root.join("conf/cluster/node2.yaml")),
            env(&[
                ("CASKADE_CLUSTER_SESSION_TIMEOUT_MS", "2000"),
                ("CASKADE_CLUSTER_ZK_CONNECT", "10.0.0.1:2181,10.0.0.2:2181"),
            ]),
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.session_timeout_ms, 2000);
        assert_eq!(cluster.zk_connect, "10.0.0.1:2181,10.0.0.2:2181");
        assert_eq!(cluster.replication_listen, "127.0.0.1:7482");
    }
}
