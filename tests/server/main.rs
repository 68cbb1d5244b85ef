//! A `caskade-server` process through its client API: requests and their
//! exact answers, start-up and shutdown, metrics. Real processes
//! (tests/harness). One test binary (linked once); each file is a module,
//! named as its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test server
//! server_api::` runs one file.

#[path = "../harness/mod.rs"]
mod harness;

mod metrics;
mod server_api;
mod server_lifecycle;
mod server_wire;
