//! The `caskade-cli` binary (one-shot commands, the REPL, over a pty, load
//! and cluster commands), the client's outcome of a request, and the
//! Makefile targets that start things. Real `caskade-server` processes
//! (tests/harness). One test binary (linked once); each file is a module,
//! named as its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test cli
//! cli_repl::` runs one file.

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

/// Collects everything `from` yields (a child's stdout) into a shared
/// string, on a thread of its own, until end of file.
pub fn collect_output(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    output
}
