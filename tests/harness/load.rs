//! Client load for the cluster tests: writers that go on with `acks: all`
//! while the cluster changes under them ([`Load`]), and a reader of one
//! node's own replica ([`local_reader`]).
//!
//! A [`Load`] counts every write: acknowledged ones are kept (key and
//! value, to read back exactly), failed ones with their error text. Each
//! writer writes distinct keys (`w<writer>-<n>`), so a key read back with
//! another value or none is a lost write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use caskade::client::{Client, SetOptions};
use caskade::config::ClientConfig;
use caskade::node::{Acks, Consistency};

use super::cluster::TestCluster;

/// A client of node `i` alone, reading with `consistency: any` (its own
/// replica, no routing; the harness user's credentials when the cluster
/// authenticates).
pub fn local_reader(c: &TestCluster, i: usize, rt: &tokio::runtime::Runtime) -> Client {
    let _in = rt.enter();
    Client::new(&ClientConfig {
        consistency: Consistency::Any,
        ..c.client_config(vec![c.specs[i].addr.clone()], 5000)
    })
    .unwrap()
}

/// Counters of the writers.
#[derive(Default)]
pub struct Tally {
    /// Writes acknowledged.
    pub ok: AtomicU64,
    /// Writes that failed.
    pub failed: AtomicU64,
    /// `key: error` of every failed write.
    pub errors: Mutex<Vec<String>>,
    /// Key and value of every acknowledged write, in order per writer.
    pub acked: Mutex<Vec<(String, String)>>,
}

/// Writer tasks running until [`Load::stop`].
pub struct Load {
    /// What the writers did so far.
    pub tally: Arc<Tally>,
    /// Set to stop the writers.
    stop: Arc<AtomicBool>,
    /// The writer tasks.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `writers` tasks on `rt`, each writing distinct keys with
    /// `acks: all` through `client`, one write at a time.
    pub fn start(rt: &tokio::runtime::Runtime, client: &Client, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let tasks = (0..writers)
            .map(|w| {
                let (client, stop, tally) = (client.clone(), stop.clone(), tally.clone());
                rt.spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let (key, value) = (format!("w{w}-{n}"), format!("v{n}"));
                        n += 1;
                        let opts = SetOptions {
                            acks: Some(Acks::All),
                            ..SetOptions::default()
                        };
                        match client.set(key.clone(), value.clone(), opts).await {
                            Ok(_) => {
                                tally.ok.fetch_add(1, Ordering::SeqCst);
                                tally.acked.lock().unwrap().push((key, value));
                            }
                            Err(e) => {
                                tally.failed.fetch_add(1, Ordering::SeqCst);
                                tally.errors.lock().unwrap().push(format!("{key}: {e}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load { tally, stop, tasks }
    }

    /// Writes acknowledged so far.
    pub fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::SeqCst)
    }

    /// Stops the writers and waits for each to finish its write in flight.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            rt.block_on(t).expect("writer task");
        }
        self.tally
    }
}

impl Tally {
    /// Writes that failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// The first `n` errors.
    pub fn first_errors(&self, n: usize) -> Vec<String> {
        let e = self.errors.lock().unwrap();
        e[..e.len().min(n)].to_vec()
    }

    /// Every acknowledged write.
    pub fn acked(&self) -> Vec<(String, String)> {
        self.acked.lock().unwrap().clone()
    }

    /// Reads every `step`-th acknowledged key back through `client` and
    /// asserts its exact value.
    pub fn assert_read_back(&self, rt: &tokio::runtime::Runtime, client: &Client, step: usize) {
        let acked = self.acked();
        rt.block_on(async {
            for (key, value) in acked.iter().step_by(step) {
                let got = client.get(key.clone()).await.expect("read back");
                assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key}");
            }
        });
    }
}
