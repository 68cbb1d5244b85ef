//! A local certificate authority for development clusters and tests
//! (`make certs`, `caskade-certs`): one CA, a certificate per node whose
//! subject CN is the node id (its identity, see [`super`]), and client
//! certificates. Not for production: use the organisation's CA there.
//!
//! Files written to the output directory (private keys 0600):
//! `ca.pem`, `ca.key`, and `<name>.pem` + `<name>.key` per node and client.
//! Node certificates are valid for TLS servers and clients (nodes call
//! each other) and name, as subject alternative names, the node id,
//! `localhost`, `127.0.0.1` and any extra hosts given; client certificates
//! are valid for TLS clients only.

use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::TlsError;

/// What [`generate`] creates.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Subject CN of the CA.
    pub ca_name: String,
    /// Node ids (one server+client certificate each).
    pub nodes: Vec<String>,
    /// Client names (one client certificate each).
    pub clients: Vec<String>,
    /// Extra subject alternative names of every node certificate (host
    /// names or IP addresses the nodes are reached at).
    pub hosts: Vec<String>,
}

/// An rcgen failure, as a [`TlsError`].
fn gen_error(what: &str, e: rcgen::Error) -> TlsError {
    TlsError::Invalid(format!("cannot create {what}: {e}"))
}

/// Writes `data` to `dir/name`, readable by the owner only when `secret`.
fn write(dir: &Path, name: &str, data: &str, secret: bool) -> Result<(), TlsError> {
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if secret { 0o600 } else { 0o644 });
    let mut file = opts.open(&path).map_err(|source| TlsError::Read {
        what: "output file",
        path: path.clone(),
        source,
    })?;
    file.write_all(data.as_bytes())
        .map_err(|source| TlsError::Read {
            what: "output file",
            path,
            source,
        })
}

/// Creates the CA and the certificates of `plan` in `dir` (created if
/// missing; existing files of the same names are replaced).
pub fn generate(dir: &Path, plan: &Plan) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read {
        what: "output directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_key = KeyPair::generate().map_err(|e| gen_error("the CA key", e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| gen_error("the CA certificate", e))?;
    ca.distinguished_name
        .push(DnType::CommonName, plan.ca_name.clone());
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| gen_error("the CA certificate", e))?;
    write(dir, "ca.pem", &ca_cert.pem(), false)?;
    write(dir, "ca.key", &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |name: &str, node: bool| -> Result<(), TlsError> {
        let mut sans = vec![name.to_string()];
        if node {
            sans.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
            sans.extend(plan.hosts.iter().cloned());
        }
        let key = KeyPair::generate().map_err(|e| gen_error(name, e))?;
        let mut params = CertificateParams::new(sans).map_err(|e| gen_error(name, e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = if node {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| gen_error(name, e))?;
        write(dir, &format!("{name}.pem"), &cert.pem(), false)?;
        write(dir, &format!("{name}.key"), &key.serialize_pem(), true)
    };
    for n in &plan.nodes {
        leaf(n, true)?;
    }
    for c in &plan.clients {
        leaf(c, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_carry_the_node_id_as_cn() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            ca_name: "test CA".into(),
            nodes: vec!["node-1".into()],
            clients: vec!["client".into()],
            hosts: vec![],
        };
        generate(dir.path(), &plan).unwrap();
        let opts = crate::config::TlsOptions {
            cert: dir.path().join("node-1.pem"),
            key: dir.path().join("node-1.key"),
            ca: dir.path().join("ca.pem"),
            require_client_cert: true,
        };
        assert!(
            super::super::NodeTls::load(&opts, "node-1")
                .unwrap()
                .is_some()
        );
        let wrong = super::super::NodeTls::load(&opts, "node-2").err().unwrap();
        assert!(
            wrong.to_string().contains("names node \"node-1\""),
            "{wrong}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("node-1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
