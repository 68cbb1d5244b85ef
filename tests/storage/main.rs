//! In-process tests of the storage engine, the node and their inputs: no
//! server process, no ZooKeeper, no failpoint armed (those live in
//! `tests/faults`, which holds the process to itself while one is armed).
//! One test binary, so the suite links it once; each file is a module,
//! named as its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test storage
//! storage_engine::` runs one file.
//!
//! Proptest keeps its regressions of a file here in
//! `tests/proptest-regressions/<file>.txt` (the directory next to the one
//! holding this `main.rs`).

mod config_validation;
mod fuzz_decoders;
mod fuzz_replication;
mod node_ops;
mod storage_cache;
mod storage_concurrency;
mod storage_diskfull;
mod storage_engine;
mod storage_model;
mod storage_modes;
mod storage_ops;
mod storage_recovery;
