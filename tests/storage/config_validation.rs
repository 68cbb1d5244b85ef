//! Config validation (issue 13): zeros where zero means nothing workable,
//! values truncated into 32-bit fields, the unspecified address advertised.
//! Every error is one line naming the key and, when there is one, the file.

use caskade::config::{ClientConfig, Config};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn server_err(pairs: &[(&str, &str)]) -> String {
    Config::load(None, env(pairs)).unwrap_err().to_string()
}

#[test]
fn a_zero_timeout_in_the_file_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, "server:\n  request_timeout_ms: 0\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "config file {}: server.request_timeout_ms must be at least 1, got 0",
            path.display()
        )
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn meaningless_zeros_are_refused_one_key_each() {
    let cases = [
        (
            "CASKADE_SERVER_REQUEST_TIMEOUT_MS",
            "server.request_timeout_ms",
        ),
        ("CASKADE_SERVER_MAX_CONNECTIONS", "server.max_connections"),
        ("CASKADE_SERVER_MAX_IN_FLIGHT", "server.max_in_flight"),
        (
            "CASKADE_SERVER_MAX_STREAMS_PER_CONNECTION",
            "server.max_streams_per_connection",
        ),
        ("CASKADE_STORAGE_SEGMENT_BYTES", "storage.segment_bytes"),
        (
            "CASKADE_STORAGE_SWEEP_INTERVAL_MS",
            "storage.sweep_interval_ms",
        ),
        (
            "CASKADE_STORAGE_LIMITS_MAX_KEY_BYTES",
            "storage.limits.max_key_bytes",
        ),
        (
            "CASKADE_STORAGE_LIMITS_MAX_VALUE_BYTES",
            "storage.limits.max_value_bytes",
        ),
        ("CASKADE_RESP_MAXCLIENTS", "resp.maxclients"),
        ("CASKADE_RESP_MAX_ARGS", "resp.max_args"),
        ("CASKADE_RESP_PROTO_MAX_BULK_LEN", "resp.proto_max_bulk_len"),
        ("CASKADE_CLUSTER_REPLICA_LAG_MS", "cluster.replica_lag_ms"),
        (
            "CASKADE_CLUSTER_FETCH_MAX_WAIT_MS",
            "cluster.fetch_max_wait_ms",
        ),
        ("CASKADE_CLUSTER_FETCH_MAX_BYTES", "cluster.fetch_max_bytes"),
    ];
    for (var, key) in cases {
        assert_eq!(
            server_err(&[(var, "0")]),
            format!("invalid configuration: {key} must be at least 1, got 0"),
            "{var}"
        );
    }
    // Zeros that mean "off" stay allowed.
    Config::load(
        None,
        env(&[
            ("CASKADE_RESP_TIMEOUT", "0"),
            ("CASKADE_STORAGE_CACHE_BYTES", "0"),
            ("CASKADE_SERVER_SHUTDOWN_TIMEOUT_MS", "0"),
        ]),
    )
    .unwrap();
}

#[test]
fn values_sent_as_32_bit_fields_are_refused_not_truncated() {
    assert_eq!(
        server_err(&[("CASKADE_CLUSTER_FETCH_MAX_BYTES", "4294967296")]),
        "invalid configuration: cluster.fetch_max_bytes must be at most 4294967295 (it is sent \
         as a 32-bit field), got 4294967296"
    );
    assert_eq!(
        server_err(&[("CASKADE_CLUSTER_FETCH_MAX_WAIT_MS", "4294967297")]),
        "invalid configuration: cluster.fetch_max_wait_ms must be at most 4294967295 (it is sent \
         as a 32-bit field), got 4294967297"
    );
    let (c, _) = Config::load(
        None,
        env(&[("CASKADE_CLUSTER_FETCH_MAX_BYTES", "4294967295")]),
    )
    .unwrap();
    assert_eq!(c.cluster.unwrap().fetch_max_bytes, 4294967295);
}

#[test]
fn the_unspecified_address_is_never_advertised() {
    assert_eq!(
        server_err(&[("CASKADE_LISTEN", "0.0.0.0:7379")]),
        "invalid configuration: listen is 0.0.0.0:7379, the unspecified address, which nobody \
         can connect to: set advertise to an address others reach this node at (host:port)"
    );
    assert_eq!(
        server_err(&[
            ("CASKADE_LISTEN", "0.0.0.0:7379"),
            ("CASKADE_ADVERTISE", "0.0.0.0:7379")
        ]),
        "invalid configuration: advertise is 0.0.0.0:7379, the unspecified address, which \
         nobody can connect to: set it to an address others reach this node at (host:port)"
    );
    assert_eq!(
        server_err(&[("CASKADE_CLUSTER_REPLICATION_LISTEN", "[::]:7380")]),
        "invalid configuration: cluster.replication_listen is [::]:7380, the unspecified \
         address, which nobody can connect to: set cluster.replication_advertise to an address \
         others reach this node at (host:port)"
    );
    let (c, _) = Config::load(
        None,
        env(&[
            ("CASKADE_LISTEN", "0.0.0.0:7379"),
            ("CASKADE_ADVERTISE", "10.0.0.5:7379"),
        ]),
    )
    .unwrap();
    assert_eq!(c.advertise, "10.0.0.5:7379");
}

#[test]
fn unknown_acks_or_consistency_in_a_file_is_an_error_naming_value_and_choices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.yaml");
    std::fs::write(&path, "default_acks: most\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("config file {}: ", path.display()))
            && err.contains("unknown variant `most`, expected `leader` or `all`"),
        "{err}"
    );
    std::fs::write(&path, "default_consistency: strong\n").unwrap();
    let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
    assert!(
        err.contains("unknown variant `strong`, expected `leader` or `any`"),
        "{err}"
    );
}

#[test]
fn client_timeouts_cannot_be_zero() {
    let err = ClientConfig::load(None, env(&[("CASKADE_CLI_TIMEOUT_MS", "0")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid configuration: timeout_ms must be at least 1, got 0"
    );
    let err = ClientConfig::load(None, env(&[("CASKADE_CLI_CONNECT_TIMEOUT_MS", "0")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid configuration: connect_timeout_ms must be at least 1, got 0"
    );
}
