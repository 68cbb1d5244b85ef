//! Security of `caskade-server` processes: authentication, listener
//! limits, TLS and node identity (docs/SECURITY.md). Real processes
//! (tests/harness). One test binary (linked once); each file is a module,
//! named as its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test security
//! security_tls::` runs one file.

#[path = "../harness/mod.rs"]
mod harness;

mod security_auth;
mod security_limits;
mod security_resp_cluster;
mod security_tls;
mod security_zk;
