//! The `caskade-cli` binary (one-shot commands, the REPL, over a pty, load
//! and cluster commands), the client's outcome of a request, and the
//! Makefile targets that start things. Real `caskade-server` processes
//! (tests/harness). One test binary (linked once); each file is a module,
//! named as its old test binary was: `cargo test --release --features
//! caskade/failpoints --test cli cli_repl::` runs one file.

#[path = "../harness/mod.rs"]
mod harness;

mod cli_cluster;
mod cli_load;
mod cli_oneshot;
mod cli_pty;
mod cli_repl;
mod cli_security;
mod client_outcome;
mod make_targets;
