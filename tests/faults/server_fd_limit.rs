//! A node raises its soft limit of open files to the hard limit at
//! startup (a node keeps 2-3 files open per hosted partition, and the
//! common default soft limit of 1,024 is too small for a thousand). Its own
//! test holds the binary's gate alone: it lowers this process's soft
//! limit, which the server inherits, and no other test must run under it.

use crate::harness;

use harness::{Server, ServerOpts};

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

/// How /proc shows limit `n`.
fn shown(n: u64) -> String {
    if n == rlimit::INFINITY {
        "unlimited".to_string()
    } else {
        n.to_string()
    }
}

#[test]
fn the_server_raises_its_open_files_soft_limit_to_the_hard_limit() {
    let _gate = crate::GATE.lock();
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    let low = 256.min(hard);
    rlimit::setrlimit(rlimit::Resource::NOFILE, low, hard).expect("lower the soft limit");
    assert_eq!(
        open_files_limits(std::process::id() as i32),
        (shown(low), shown(hard))
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let limits = open_files_limits(server.pid());
    // Put ours back before asserting, for the rest of this process.
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).expect("restore the soft limit");
    assert_eq!(limits, (shown(hard), shown(hard)));
}
