//! TLS on every listener and between nodes, and who a peer is
//! (docs/SECURITY.md, "Transport and node identity").
//!
//! - [`NodeTls`] is a node's certificate, key and CA, loaded once at
//!   startup from `tls:` ([`crate::config::TlsOptions`]). It configures the
//!   client gRPC listener and the RESP listener (client certificates
//!   required only with `tls.require_client_cert`), the replication
//!   listener (client certificates always required: only nodes call it),
//!   and the node's own calls to other nodes, which present the node's
//!   certificate (mutual TLS).
//! - A node's identity is its certificate's subject common name (CN),
//!   which [`NodeTls::load`] checks equals `node_id`. On the replication
//!   listener [`peer_node_id`] reads it from the verified client
//!   certificate; [`gate`] authorizes fetches and controller notices by it.
//! - Outgoing node-to-node connections (the controller's calls, followers'
//!   fetches, forwarded client requests) take their TLS settings from
//!   [`set_node_client`], set once per process by the server at startup
//!   (one node per process); without it they are plaintext.
//! - Rustls runs on the ring provider everywhere; TLS 1.2 and 1.3 only.

pub mod certs;
pub mod gate;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::config::{ClientTlsOptions, TlsOptions};

/// Longest TLS handshake a listener waits for; a peer that has not
/// finished by then is disconnected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which setting (`tls.cert`, ...).
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file was read but holds no usable certificate or key, or the
    /// material does not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// Reads `path`, the file of setting `what`.
fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
fn certificates(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError::Invalid(format!("{what}: no usable private key in it: {e}")))
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// A node's TLS material (`tls:` of the server config).
pub struct NodeTls {
    /// PEM of the CA peers are verified against.
    ca: Vec<u8>,
    /// PEM of this node's certificate chain.
    cert: Vec<u8>,
    /// PEM of its private key.
    key: Vec<u8>,
    /// Clients must present a certificate.
    require_client_cert: bool,
}

impl NodeTls {
    /// Loads and checks `opts` for node `node_id`: `None` when TLS is off.
    /// The certificate's subject CN must be `node_id` (it is how other
    /// nodes know this one), the key must parse and the CA must hold a
    /// certificate.
    pub fn load(opts: &TlsOptions, node_id: &str) -> Result<Option<Arc<NodeTls>>, TlsError> {
        if !opts.enabled() {
            return Ok(None);
        }
        let tls = NodeTls {
            ca: read("tls.ca", &opts.ca)?,
            cert: read("tls.cert", &opts.cert)?,
            key: read("tls.key", &opts.key)?,
            require_client_cert: opts.require_client_cert,
        };
        certificates("tls.ca", &tls.ca)?;
        let chain = certificates("tls.cert", &tls.cert)?;
        private_key("tls.key", &tls.key)?;
        match common_name(&chain[0]) {
            Some(cn) if cn == node_id => {}
            Some(cn) => {
                return Err(TlsError::Invalid(format!(
                    "tls.cert {} names node {cn:?} (subject CN), but this node's node_id is \
                     {node_id:?}: other nodes would refuse its fetches and notices",
                    opts.cert.display()
                )));
            }
            None => {
                return Err(TlsError::Invalid(format!(
                    "tls.cert {} has no subject CN: it must be the node_id {node_id:?}",
                    opts.cert.display()
                )));
            }
        }
        Ok(Some(Arc::new(tls)))
    }

    /// The identity (certificate and key) tonic presents.
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    /// The client gRPC listener's TLS: client certificates verified
    /// against the CA, required only with `tls.require_client_cert`.
    pub fn client_listener(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(!self.require_client_cert)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The replication listener's TLS: every caller must present a
    /// certificate signed by the CA (its CN is its node id).
    pub fn replication_listener(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// This node's calls to other nodes: the server is verified against
    /// the CA (its certificate must name the host it is reached at), and
    /// this node's certificate is presented.
    pub fn node_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(self.identity())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The RESP listener's TLS acceptor (tokio-rustls), with the same
    /// client certificate rule as the gRPC listener.
    pub fn resp_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates("tls.ca", &self.ca)? {
            roots
                .add(c)
                .map_err(|e| TlsError::Invalid(format!("tls.ca: unusable CA certificate: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if self.require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier
            .build()
            .map_err(|e| TlsError::Invalid(format!("tls.ca: {e}")))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(format!("TLS setup: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certificates("tls.cert", &self.cert)?,
                private_key("tls.key", &self.key)?,
            )
            .map_err(|e| TlsError::Invalid(format!("tls.cert and tls.key: {e}")))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Loads the client side (`tls:` of the CLI config): `None` when off.
pub fn load_client(opts: &ClientTlsOptions) -> Result<Option<ClientTlsConfig>, TlsError> {
    if !opts.enabled() {
        return Ok(None);
    }
    let ca = read("tls.ca", &opts.ca)?;
    certificates("tls.ca", &ca)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(HANDSHAKE_TIMEOUT);
    let (has_cert, has_key) = (
        !opts.cert.as_os_str().is_empty(),
        !opts.key.as_os_str().is_empty(),
    );
    if has_cert != has_key {
        return Err(TlsError::Invalid(
            "tls.cert and tls.key go together (a client certificate and its key)".into(),
        ));
    }
    if has_cert {
        let cert = read("tls.cert", &opts.cert)?;
        let key = read("tls.key", &opts.key)?;
        certificates("tls.cert", &cert)?;
        private_key("tls.key", &key)?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(config))
}

/// The TLS settings of this process's calls to other nodes.
static NODE_CLIENT: OnceLock<ClientTlsConfig> = OnceLock::new();

/// Sets the TLS of this process's node-to-node calls (once, at startup,
/// before any call; a second call is ignored and returns false).
pub fn set_node_client(config: ClientTlsConfig) -> bool {
    NODE_CLIENT.set(config).is_ok()
}

/// An endpoint for `addr` (`host:port`): `https` with `tls`, else `http`.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string()),
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| e.to_string())?
            .tls_config(tls.clone())
            .map_err(|e| e.to_string()),
    }
}

/// Whether this process calls other nodes over TLS ([`set_node_client`]).
pub fn node_tls() -> bool {
    NODE_CLIENT.get().is_some()
}

/// An endpoint for a call from this node to the node at `addr`, with the
/// process's node-to-node TLS ([`set_node_client`]) when set.
pub fn node_endpoint(addr: &str) -> Result<Endpoint, String> {
    endpoint(addr, NODE_CLIENT.get())
}

/// The node id the peer of `request` proved with its certificate: the
/// subject CN of its verified client certificate. `None` on a plaintext
/// connection (the peer is unknown) or without a client certificate.
pub fn peer_node_id<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = tls_info(request)?.peer_certs()?;
    common_name(certs.first()?)
}

/// Whether `request` came over TLS (then [`peer_node_id`] is the peer's
/// proven identity, and `None` means it proved none).
pub fn is_tls<T>(request: &tonic::Request<T>) -> bool {
    tls_info(request).is_some()
}

/// The TLS session of `request`'s connection. The listeners serve
/// connections admitted by `server::limits` (whose connect info is
/// `limits::ConnInfo`); a plain TCP stream is looked up as well.
fn tls_info<T>(request: &tonic::Request<T>) -> Option<TlsSession> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    if let Some(t) = ext.get::<TlsConnectInfo<crate::server::limits::ConnInfo>>() {
        return Some(TlsSession(t.peer_certs()));
    }
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .map(|t| TlsSession(t.peer_certs()))
}

/// The peer certificates of a TLS session (`None`: the peer sent none).
struct TlsSession(Option<std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>);

impl TlsSession {
    /// The peer's certificate chain, if it sent one.
    fn peer_certs(self) -> Option<std::sync::Arc<Vec<rustls::pki_types::CertificateDer<'static>>>> {
        self.0
    }
}
