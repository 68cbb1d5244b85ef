//! Leadership hand-over between the controller and the nodes, on real
//! processes and a real ZooKeeper: a node takes leadership only from a
//! controller notice issued for its current registration (KIP-380 node
//! epochs), and notices are retried until the node acknowledges them.
//!
//! Both tests arm failpoints through `FAILPOINTS` (build with
//! `--features caskade/failpoints`): a pause between the controller's
//! decision and its write (`controller::before_state_write`), and notices
//! refused on the receiving side (`replication::leader_and_isr`).
//!
//! The tests of this file run one at a time (the `SERIAL` lock).

use crate::harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::Error;
use caskade::client::{Client, SetOptions};
use caskade::config::ClientConfig;
use caskade::node::Acks;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::{b, runtime};

/// One cluster test at a time, across the whole binary.
use crate::SERIAL;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one node said about itself in one poll: `(partition, epoch)` of
/// every partition it names itself leader of.
#[derive(Clone, Debug)]
struct Claims {
    /// When the answer came.
    at: Instant,
    /// The node's index.
    node: usize,
    /// Its own leaderships.
    leads: Vec<(u32, u64)>,
}

/// Polls Metadata of every node every 20 ms in a thread until stopped,
/// recording each node's claims of leadership.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Claims>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(c: &TestCluster) -> Poller {
        let addrs: Vec<(String, String)> = c
            .specs
            .iter()
            .map(|s| (s.id.clone(), s.addr.clone()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = runtime();
            let clients: Vec<Client> = addrs
                .iter()
                .map(|(_, a)| {
                    let _in = rt.enter();
                    Client::new(&ClientConfig {
                        addrs: vec![a.clone()],
                        timeout_ms: 300,
                        ..ClientConfig::default()
                    })
                    .expect("client")
                })
                .collect();
            while !stop2.load(Ordering::SeqCst) {
                for (node, client) in clients.iter().enumerate() {
                    let Ok(m) = rt.block_on(client.metadata()) else {
                        continue;
                    };
                    let me = &addrs[node].0;
                    let leads = m
                        .partitions
                        .iter()
                        .filter(|p| &p.leader == me)
                        .map(|p| (p.id, p.leader_epoch))
                        .collect();
                    seen2.lock().unwrap().push(Claims {
                        at: Instant::now(),
                        node,
                        leads,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Poller {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Claims> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("poller thread");
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A write of `key` sent straight to node `i` and not forwarded: `Ok`
/// when node `i` accepted it as leader.
fn direct_set(c: &TestCluster, i: usize, key: &str, value: &str) -> Result<(), Error> {
    runtime().block_on(async {
        let mut kv =
            caskade::proto::kv_client::KvClient::connect(format!("http://{}", c.specs[i].addr))
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(caskade::proto::SetRequest {
            key: Bytes::from(key.to_string()),
            value: b(value),
            ttl_ms: None,
            condition: 0,
            acks: caskade::proto::Acks::Leader.into(),
        });
        req.metadata_mut()
            .insert("caskade-forwarded", "1".parse().unwrap());
        kv.set(req).await.map(|_| ()).map_err(Error::from)
    })
}

/// A leader SIGKILLed and restarted at once (its old session still alive
/// when it starts) comes back while the controller has not yet written
/// the new leader (a 1.5 s pause between decision and write). It must not
/// resume its old leadership from what it reads in ZooKeeper: at no time
/// do two nodes claim one partition, it never claims a partition at an
/// epoch it held before the restart, and a write sent to it in that
/// window is refused.
#[test]
fn restarted_leader_never_resumes_its_old_leadership() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts {
        env: vec![(
            "FAILPOINTS".into(),
            "controller::before_state_write=return(1500)".into(),
        )],
        ..ClusterOpts::default()
    });
    let x = c.leader(0).unwrap();
    let x_id = c.specs[x].id.clone();
    let before: BTreeMap<u32, u64> = c
        .metadata(x)
        .unwrap()
        .partitions
        .iter()
        .filter(|p| p.leader == x_id)
        .map(|p| (p.id, p.leader_epoch))
        .collect();
    assert!(before.contains_key(&0), "{x_id} leads partition 0");
    let rt = runtime();
    rt.block_on(c.client(&rt).set("before", "1", SetOptions::default()))
        .unwrap();

    let poller = Poller::start(&c);
    c.kill(x);
    c.start_node(x);
    let restarted = Instant::now();
    // At once, while the controller has not written its decision yet.
    let key = c.key_in(0, 1);
    let direct = direct_set(&c, x, &key, "stale");
    c.wait_until("every partition is led again with a full ISR", |c| {
        c.all_led() && c.full_isr()
    });
    std::thread::sleep(Duration::from_millis(500));
    let claims = poller.finish();

    // The restarted node never led at an epoch it held before.
    for cl in claims
        .iter()
        .filter(|cl| cl.node == x && cl.at >= restarted)
    {
        for (p, epoch) in &cl.leads {
            if let Some(old) = before.get(p) {
                assert!(
                    epoch > old,
                    "{x_id} claimed partition {p} at epoch {epoch} after its restart \
                     (it led at {old} before): {claims:#?}"
                );
            }
        }
    }
    for (p, old) in &before {
        let line = format!("leading at epoch {old} ");
        let log = c.log(x);
        let resumed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&line) && l.contains(&format!("partition={p}")))
            .collect();
        assert!(
            resumed.is_empty(),
            "{x_id} resumed partition {p} at its old epoch {old}: {resumed:?}"
        );
    }
    // Never two nodes leading one partition in the same poll round (a
    // round is the three answers that follow each other).
    for w in claims.windows(3) {
        let mut owners: BTreeMap<u32, Vec<(usize, u64)>> = BTreeMap::new();
        for cl in w {
            for (p, e) in &cl.leads {
                owners.entry(*p).or_default().push((cl.node, *e));
            }
        }
        for (p, o) in owners {
            let mut nodes: Vec<usize> = o.iter().map(|(n, _)| *n).collect();
            nodes.sort();
            nodes.dedup();
            assert!(nodes.len() <= 1, "partition {p} has two leaders: {o:?}");
        }
    }
    let err = direct.expect_err("the restarted node refuses a write before any notice");
    assert!(
        matches!(err, Error::NotLeader { partition: 0, .. }),
        "{err:?}"
    );

    // The cluster goes on: writes to partition 0 work, the refused one is
    // nowhere.
    let client = c.client(&rt);
    rt.block_on(client.set("after", "2", SetOptions::default()))
        .unwrap();
    assert_eq!(rt.block_on(client.get(key.clone())).unwrap(), None);
    assert_eq!(rt.block_on(client.get("before")).unwrap(), Some(b("1")));
    let now = c.partition(0).unwrap();
    assert!(now.leader_epoch > before[&0], "{now:?}");
}

/// Notices to a restarted node are refused on its side 8 times (more
/// than the 3 attempts the controller used to make): the full state it is
/// sent on joining, and the preferred-leader move that makes it leader of
/// partition 1, still reach it, and it leads partition 1.
#[test]
fn notices_are_retried_until_the_node_acknowledges_them() {
    let _s = serial();
    let mut c = TestCluster::start_shared(ClusterOpts {
        rebalance: true,
        ..ClusterOpts::default()
    });
    // node-2 is the preferred leader of partition 1 (replicas n2, n3, n1).
    let x = c.index("node-2");
    let old_epoch = c.partition(1).unwrap().leader_epoch;
    c.kill(x);
    c.wait_until("the others lead every partition", |c| c.all_led());
    assert_ne!(c.leader(1), Some(x));
    c.start_node_with(x, &[("FAILPOINTS", "replication::leader_and_isr=8*return")]);
    c.wait_until("node-2 leads partition 1 again with a full ISR", |c| {
        c.leader(1) == Some(x) && c.full_isr()
    });
    assert!(c.partition(1).unwrap().leader_epoch >= old_epoch + 2);
    let refused: usize = (0..c.specs.len())
        .map(|i| c.log(i).matches("notice dropped").count())
        .sum();
    assert!(refused >= 4, "the controller saw {refused} refusals");
    let rt = runtime();
    let client = c.client(&rt);
    let key = c.key_in(1, 1);
    let opts = SetOptions {
        acks: Some(Acks::All),
        ..SetOptions::default()
    };
    rt.block_on(client.set(key.clone(), "v", opts)).unwrap();
    assert_eq!(rt.block_on(client.get(key)).unwrap(), Some(b("v")));
}
