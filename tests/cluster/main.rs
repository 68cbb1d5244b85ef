//! Multi-node clusters on a real ZooKeeper: `caskade-server` processes
//! (tests/harness) and the in-process controller simulation (tests/sim).
//! One test binary (linked once); each file is a module, named as its old
//! test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test cluster
//! cluster_reassign::` runs one file.
//!
//! The tests that take [`SERIAL`] (each file's own `SERIAL` before) run one
//! at a time across the whole binary. `cluster_zk` (the cluster layer in
//! this process) is a binary of its own: it installs a global log
//! subscriber and asserts on the lines logged.

#[path = "../harness/mod.rs"]
mod harness;
#[path = "../sim/mod.rs"]
mod sim;

mod cluster;
mod cluster_assign;
mod cluster_notices;
mod cluster_ops;
mod cluster_reassign;
mod cluster_reassign_admin;
mod cluster_shutdown;
mod controller_sim;
mod harness_zk;

use std::sync::Mutex;

/// One cluster test at a time.
static SERIAL: Mutex<()> = Mutex::new(());
