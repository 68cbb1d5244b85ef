//! The RESP (Redis protocol) listener: in this process over a standalone
//! node (tests/resp_common), and on `caskade-server` clusters with real
//! Redis clients (`redis-cli`, `redis-benchmark`, the Python `redis`
//! package). One test binary (linked once); each file is a module, named as
//! its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test resp
//! resp_fuzz::` runs one file. The RESP
//! tests that arm failpoints (`resp_pipeline`, `resp_refusals`) are in
//! `tests/faults`.
//!
//! Proptest keeps its regressions of a file here in
//! `tests/proptest-regressions/<file>.txt`.

#[path = "../harness/mod.rs"]
mod harness;
#[path = "../resp_common/idle_node.rs"]
mod idle_node;
#[path = "../resp_common/mod.rs"]
mod resp_common;

mod resp;
mod resp_benchmark;
mod resp_cluster;
mod resp_fuzz;
mod resp_python;
mod resp_redis_cli;
