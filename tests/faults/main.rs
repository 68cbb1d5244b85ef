//! Tests that change state global to this process: they arm the `fail`
//! crate's failpoints on the real code paths of an engine or node running in
//! this process (failpoints are process-global), or lower this process's
//! open-files limit. One test binary (linked once); each file is a module,
//! named as its old test binary was: `cargo test --profile ci
//! --no-default-features --features caskade/failpoints --test faults
//! storage_fsyncgate::` runs one file.
//!
//! Every test here takes [`GATE`]: exclusively ([`Gate::lock`] or
//! [`Gate::write`]) when it arms a failpoint or changes a process limit,
//! shared ([`Gate::read`]) otherwise, so no test ever runs while another
//! one's failpoint is armed. (Each `SERIAL`/`GATE` the files had on their own
//! is this one gate now.) A test added here must take it too.

#[path = "../harness/mod.rs"]
mod harness;
#[path = "../resp_common/mod.rs"]
mod resp_common;

mod resp_pipeline;
mod resp_refusals;
mod security_errors;
mod server_fd_limit;
mod storage_faults;
mod storage_fsyncgate;
mod storage_group_commit;
mod storage_merge_faults;
mod storage_replica;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The one gate of this binary (see the module docs).
pub struct Gate(RwLock<()>);

impl Gate {
    /// This test alone in the process (it arms a failpoint or changes a
    /// process-wide limit).
    pub fn lock(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write()
    }

    /// Same as [`Gate::lock`].
    pub fn write(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write()
    }

    /// Alongside other tests that arm nothing.
    pub fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read()
    }
}

/// Failpoints and process limits are process-wide: see the module docs.
pub static GATE: Gate = Gate(RwLock::new(()));

/// A standalone node served in this process (failpoints reach it): its gRPC
/// and RESP listeners on free loopback ports, until the returned sender is
/// set to `true`. Returns (gRPC address, RESP address, stop). The servers'
/// own results are not checked: with a failpoint armed their final flush
/// may fail, which is what the tests provoke.
#[cfg(feature = "failpoints")]
pub fn serve_in_process(
    rt: &tokio::runtime::Runtime,
    config: &caskade::config::Config,
) -> (String, String, tokio::sync::watch::Sender<bool>) {
    use std::sync::Arc;

    use caskade::node::Node;
    use caskade::server::metrics::Metrics;
    use caskade::storage::SystemClock;
    use tokio::net::TcpListener;

    rt.block_on(async {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let advertised = grpc.local_addr().unwrap().to_string();
        let node = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                Node::open_standalone(&config, advertised, Arc::new(SystemClock))
            })
            .await
            .unwrap()
            .unwrap()
        };
        let node = Arc::new(node);
        let metrics = Metrics::new(node.clone(), None);
        let resp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (
            grpc.local_addr().unwrap().to_string(),
            resp.local_addr().unwrap().to_string(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let (n, c, m, rx) = (
            node.clone(),
            config.clone(),
            metrics.clone(),
            stopped.clone(),
        );
        tokio::spawn(async move {
            let _ = caskade::server::run(grpc, n, &c, None, m, until(rx)).await;
        });
        let c = config.clone();
        tokio::spawn(async move {
            let _ = caskade::resp::serve(resp, node, &c, metrics, until(stopped)).await;
        });
        (addrs.0, addrs.1, stop)
    })
}

/// Sends `args` as a RESP multibulk on a blocking connection and reads one
/// answer: a line (`+OK`, `-ERR ...`, `$-1`) or a bulk string.
pub fn call(s: &mut std::net::TcpStream, args: &[&str]) -> String {
    use std::io::{Read, Write};

    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    // Every answer of these tests is one line (+OK, -ERR, $-1) or a short
    // bulk string, read line by line.
    while !got.ends_with(b"\r\n") {
        s.read_exact(&mut b).unwrap();
        got.push(b[0]);
    }
    if got[0] == b'$' && got != b"$-1\r\n" {
        let n: usize = String::from_utf8_lossy(&got[1..got.len() - 2])
            .parse()
            .unwrap();
        let mut body = vec![0; n + 2];
        s.read_exact(&mut body).unwrap();
        got.extend_from_slice(&body);
    }
    String::from_utf8_lossy(&got).into_owned()
}
