//! A RESP listener in the test process, over a standalone node in a
//! temporary directory, and a raw TCP client that checks exact bytes.

#![allow(dead_code)]

pub mod clients;

use std::sync::Arc;
use std::time::Duration;

use caskade::config::Config;
use caskade::node::Node;
use caskade::server::metrics::Metrics;
use caskade::storage::SystemClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running listener; stopped (and its connections drained) on `stop`.
pub struct Resp {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// The node under it.
    pub node: Arc<Node>,
    /// Ends the listener.
    stop: tokio::sync::watch::Sender<bool>,
    /// The listener's task.
    task: tokio::task::JoinHandle<()>,
    /// The data directory.
    _dir: tempfile::TempDir,
}

/// Starts a listener over a fresh standalone node; `tweak` edits the
/// configuration first.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    tweak(&mut config);
    let node = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            Node::open_standalone(&config, "127.0.0.1:1".into(), Arc::new(SystemClock))
        })
        .await
        .unwrap()
        .unwrap()
    };
    let node = Arc::new(node);
    let metrics = Metrics::new(node.clone(), None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let n = node.clone();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        caskade::resp::serve(listener, n, &config, metrics, shutdown)
            .await
            .unwrap();
    });
    Resp {
        addr,
        node,
        stop,
        task,
        _dir: dir,
    }
}

impl Resp {
    /// A new connection.
    pub async fn connect(&self) -> Conn {
        Conn(TcpStream::connect(&self.addr).await.unwrap())
    }

    /// Stops the listener and waits for it.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the listener stops")
            .unwrap();
    }
}

/// One client connection.
pub struct Conn(pub TcpStream);

impl Conn {
    /// Sends `req` and reads exactly `want.len()` bytes, which must be `want`.
    pub async fn check(&mut self, req: &str, want: &str) {
        self.0.write_all(req.as_bytes()).await.unwrap();
        let got = self.read_n(want.len()).await;
        assert_eq!(String::from_utf8_lossy(&got), want, "request {req:?}");
    }

    /// Sends a command as a multibulk and checks the answer.
    pub async fn cmd(&mut self, args: &[&str], want: &str) {
        self.check(&multibulk(args), want).await;
    }

    /// Reads exactly `n` bytes (10 s at most).
    pub async fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), self.0.read_exact(&mut got))
            .await
            .expect("an answer within 10 s")
            .expect("the connection stays open");
        got
    }

    /// Reads until the server closes (10 s at most); what came.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.0.read_to_end(&mut got))
            .await
            .expect("closed within 10 s")
            .expect("read");
        got
    }

    /// Sends a command and reads one whole reply (any type), raw.
    pub async fn call(&mut self, args: &[&str]) -> Vec<u8> {
        self.0.write_all(multibulk(args).as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut chunk))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = reply_len(&buf, 0) {
                assert_eq!(end, buf.len(), "one reply");
                return buf;
            }
        }
    }
}

/// `args` as a RESP multibulk.
pub fn multibulk(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s
}

/// The end of the reply starting at `at`, if complete.
pub fn reply_len(buf: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&buf[at + 1..line_end]).ok()?;
    let after = line_end + 2;
    match buf[at] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Some(after),
        b'$' | b'=' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'%' => {
            let n: i64 = head.parse().ok()?;
            let items = if buf[at] == b'%' { 2 * n } else { n };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos = reply_len(buf, pos)?;
            }
            Some(pos)
        }
        _ => None,
    }
}
