//! TLS settings: `tls:` in the server config, `tls:` in the CLI's config
//! (docs/SECURITY.md, "Transport and node identity").
//!
//! Off by default: TLS is on exactly when `cert` is set. Then every
//! listener of the node (the client gRPC API, the replication service and
//! the RESP listener) speaks TLS only, and the node presents the same
//! certificate when it calls other nodes (mutual TLS between nodes). The
//! node's identity is its certificate's subject common name (CN), which
//! must equal its `node_id`; `ca` is the CA every node and client
//! certificate is checked against.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A node's TLS settings (`tls:` in the server config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file of this node's certificate (chain), whose subject CN is
    /// the node's `node_id`. Empty (the default): TLS is off everywhere.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file of the CA that signed the nodes' and clients' certificates:
    /// peers (other nodes, clients) are verified against it. Required when
    /// `cert` is set.
    pub ca: PathBuf,
    /// Clients (gRPC and RESP) must present a certificate signed by `ca`.
    /// Other nodes always must, on the replication listener. Default false.
    pub require_client_cert: bool,
}

impl TlsOptions {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        if !self.enabled() {
            if set(&self.key) || set(&self.ca) || self.require_client_cert {
                return Err(ConfigError::Invalid(
                    "tls.key, tls.ca and tls.require_client_cert need tls.cert (TLS is off \
                     without it)"
                        .into(),
                ));
            }
            return Ok(());
        }
        if !set(&self.key) || !set(&self.ca) {
            return Err(ConfigError::Invalid(
                "tls.cert needs tls.key (its private key) and tls.ca (the CA peers are checked \
                 against)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The CLI's and the Rust client's TLS settings (`tls:` in the CLI
/// config).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsOptions {
    /// PEM file of the CA the server's certificate is checked against.
    /// Empty (the default): plaintext connections.
    pub ca: PathBuf,
    /// PEM file of the client's certificate, for servers with
    /// `tls.require_client_cert`; empty = none.
    pub cert: PathBuf,
    /// PEM file of the client certificate's private key.
    pub key: PathBuf,
}

impl ClientTlsOptions {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        !self.ca.as_os_str().is_empty()
    }
}
