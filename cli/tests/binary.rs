//! The `caskade-cli` binary as built by cargo for tests.
//!
//! This file's other purpose: an integration test of this package makes
//! `cargo test --workspace` (what `make test` runs) build the
//! `caskade-cli` binary next to `caskade-server`, with the same features
//! as every test executable, before any test runs. Without it cargo builds
//! only the CLI's unit-test executable, and the root package's `cli` tests
//! (tests/harness `cli_bin`) had to run `cargo build -p caskade-cli`
//! themselves in the middle of the test phase, which rebuilt the library
//! and a dozen dependencies with other features (about 100 s of the `cli`
//! binary's time in CI, docs/TESTING.md "Build and test time").

use std::process::Command;

#[test]
fn version_names_the_package_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_caskade-cli"))
        .arg("--version")
        .output()
        .expect("run caskade-cli --version");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("caskade-cli {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
