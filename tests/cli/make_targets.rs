//! `make standalone`, `make cli` and `make bench-standalone` run the
//! binaries from the build's real output directory (`$CARGO_TARGET_DIR/release`
//! when set), not `./target/release`: the commands they would run, exactly,
//! and `make cli` really started from a directory without `./target`.

use crate::harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `make ARGS` in `dir` with the repository's Makefile, `CARGO_TARGET_DIR`
/// set to `target_dir` and the variables cargo or an outer make may have
/// set removed.
fn make(dir: &Path, target_dir: &Path, args: &[&str]) -> Output {
    Command::new("make")
        .arg("-f")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Makefile"))
        .arg("--no-print-directory")
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env("HOME", dir)
        .env_remove("BIN_DIR")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .stdin(Stdio::null())
        .output()
        .expect("run make")
}

#[test]
fn run_targets_use_the_real_target_dir() {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("make is not installed; skipping");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let elsewhere = Path::new("/nonexistent/caskade-out");
    let out = make(repo, elsewhere, &["-n", "CARGO=cargo", "standalone", "cli"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cargo build --release --bin caskade-server\n\
         /nonexistent/caskade-out/release/caskade-server --config conf/standalone/server.yaml\n\
         cargo build --release -p caskade-cli\n\
         /nonexistent/caskade-out/release/caskade-cli -c conf/client/cli.yaml\n"
    );
    let out = make(repo, elsewhere, &["-n", "CARGO=cargo", "bench-standalone"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("/nonexistent/caskade-out/release/caskade-cli --addr 127.0.0.1:7379 bench"),
        "{shown}"
    );
    assert!(!shown.contains("./target"), "{shown}");

    // Really run `make cli` (the build step skipped) from a directory with
    // no ./target, the binaries reached only through CARGO_TARGET_DIR. The
    // tests' own build (whatever its profile: `ci` under `make test`)
    // stands in for the release directory. The REPL reads an empty stdin
    // and exits 0.
    let bin_dir = harness::cli_bin().parent().expect("bin dir").to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo.join("conf"), dir.path().join("conf")).unwrap();
    let target_dir = dir.path().join("out");
    std::fs::create_dir(&target_dir).unwrap();
    std::os::unix::fs::symlink(&bin_dir, target_dir.join("release")).unwrap();
    let out = make(dir.path(), &target_dir, &["CARGO=true", "cli"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "true build --release -p caskade-cli\n{}/release/caskade-cli -c conf/client/cli.yaml\n",
            target_dir.display()
        )
    );
    assert_eq!(out.status.code(), Some(0));
}
