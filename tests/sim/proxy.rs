//! The TCP proxy between a simulated node and ZooKeeper: cutting it is
//! how [`super::Sim::kill`] makes a node vanish as SIGKILL would (the
//! connection closes, nothing closes the session).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP proxy between one node and ZooKeeper.
pub struct Proxy {
    /// The port the node connects to.
    pub port: u16,
    /// Set by [`Proxy::kill`]: no new connection is forwarded.
    dead: Arc<AtomicBool>,
    /// The forwarding tasks.
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    /// The accept loop.
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let dead = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::new(Mutex::new(Vec::new()));
        let (d, c) = (dead.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                let _ = down.set_nodelay(true);
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(target).await {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                let mut list = c.lock();
                list.retain(|h| !h.is_finished());
                list.push(task.abort_handle());
            }
        });
        Proxy {
            port,
            dead,
            conns,
            accept,
        }
    }

    /// Closes every forwarded connection (both sides) and refuses new
    /// ones (the listening socket is closed).
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        self.accept.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}
