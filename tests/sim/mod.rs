//! A simulation of a large cluster's coordination on a real ZooKeeper
//! (issue 12): N in-process nodes, each a real [`ZkCluster`] with its own
//! ZooKeeper session, over a simulated replica layer. Used by
//! `tests/cluster/controller_sim.rs` (small, exact end states) and
//! `benches/controller_sim.rs` (100 nodes x 100,000 partitions, figures).
//!
//! - Each node's [`StateListener`] records the newest full state it learned
//!   of each partition (leader epoch, znode version, leader, ISR, whether it
//!   is a replica), compactly (node ids as indexes), whether a controller
//!   notice granted it the leadership at that epoch, and the newest leader
//!   the notices' routing maps named for each partition.
//! - One [`NodeRpc`] routes `leader_and_isr` to the target node's view
//!   (refused when the node is dead or the notice is for another
//!   registration, as a real node refuses) and answers `log_end_offsets`
//!   with the same offset for every replica; it counts calls and states.
//! - Each node reaches ZooKeeper through its own TCP proxy ([`Proxy`]):
//!   [`Sim::kill`] cuts the proxy's connections and refuses new ones, then
//!   drops the node. Nothing tells ZooKeeper the session ended, so it
//!   expires after the session timeout, as after SIGKILL.
//! - The first controller is held back until every node is registered (a
//!   placeholder `/controller` znode owned by the harness), so the initial
//!   assignment spreads over all N nodes.
//! - [`mntr`] reads ZooKeeper's own counters (the `mntr` four-letter word).

#![allow(dead_code)] // the test and the bench use different parts

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use caskade::cluster::{
    BoxFuture, LeaderAndIsr, Leaders, NodeAddr, NodeRpc, ReplicaOffsets, StateListener, ZkCluster,
};
use caskade::config::ClusterOptions;
use caskade::{Error, Result};
use parking_lot::Mutex;
use tokio::task::JoinSet;

mod proxy;

pub use proxy::Proxy;

/// "No node" in the compact views.
pub const NONE: u16 = u16::MAX;

/// The log end offset every replica reports (all in sync).
const LEO: u64 = 100;

/// What one node knows of every partition.
struct View {
    /// `leader_epoch << 32 | zk_version` of the newest state learned; 0
    /// when none.
    ver: Vec<u64>,
    /// Leader (node index) of that state, or [`NONE`].
    leader: Vec<u16>,
    /// ISR (node indexes, [`NONE`]-padded) of that state.
    isr: Vec<[u16; 3]>,
    /// Leader epoch a controller notice granted this node (0: none).
    granted: Vec<u32>,
    /// Whether that state lists this node in `replicas`.
    mine: Vec<bool>,
    /// (leader epoch, leader) of the newest routing entry (0, [`NONE`]
    /// when none).
    route: Vec<(u32, u16)>,
}

/// One simulated node: its replicas' view of the cluster.
pub struct SimNode {
    /// Index (node id `sim-<index>`).
    pub index: u16,
    /// Its addresses (fake: nothing dials them).
    pub addr: NodeAddr,
    /// False once killed: calls to it fail.
    alive: AtomicBool,
    /// Node epoch of its current registration.
    node_epoch: AtomicI64,
    /// Controller epoch of the last notice it accepted.
    pub last_notice_epoch: AtomicU64,
    /// `fence` calls.
    pub fences: AtomicU64,
    /// States handed over from ZooKeeper reads (`apply`).
    pub zk_states: AtomicU64,
    /// What it knows.
    view: Mutex<View>,
}

/// Version key of a state: leader epoch, then znode version.
fn ver(s: &LeaderAndIsr) -> u64 {
    ((s.leader_epoch as u64) << 32) | (s.zk_version.max(0) as u32 as u64)
}

/// The node index of id `sim-<i>` (no other ids exist in a simulation).
pub fn index_of(id: &str) -> u16 {
    id.strip_prefix("sim-")
        .and_then(|i| i.parse().ok())
        .unwrap_or(NONE)
}

/// Node id of index `i` (zero-padded: ids sort as indexes do).
pub fn node_id(i: usize) -> String {
    format!("sim-{i:04}")
}

impl SimNode {
    fn new(index: u16, partitions: u32) -> SimNode {
        let p = partitions as usize;
        let id = node_id(index as usize);
        SimNode {
            index,
            addr: NodeAddr {
                client_addr: format!("{id}.client:7379"),
                replication_addr: format!("{id}.repl:7380"),
                id,
            },
            alive: AtomicBool::new(true),
            node_epoch: AtomicI64::new(0),
            last_notice_epoch: AtomicU64::new(0),
            fences: AtomicU64::new(0),
            zk_states: AtomicU64::new(0),
            view: Mutex::new(View {
                ver: vec![0; p],
                leader: vec![NONE; p],
                isr: vec![[NONE; 3]; p],
                granted: vec![0; p],
                mine: vec![false; p],
                route: vec![(0, NONE); p],
            }),
        }
    }

    /// Learns `states` (newer ones only); `notice`: from a controller
    /// notice for this registration, so a state naming this node leader
    /// grants it.
    fn learn(&self, states: &[LeaderAndIsr], notice: bool) {
        let mut v = self.view.lock();
        for s in states {
            let p = s.partition as usize;
            if p >= v.ver.len() {
                continue;
            }
            let k = ver(s);
            if k > v.ver[p] {
                v.ver[p] = k;
                v.leader[p] = s.leader.as_deref().map_or(NONE, index_of);
                let mut isr = [NONE; 3];
                for (slot, m) in isr.iter_mut().zip(&s.isr) {
                    *slot = index_of(m);
                }
                v.isr[p] = isr;
                v.mine[p] = s.replicas.contains(&self.addr.id);
            }
            if notice && k >= v.ver[p] && s.leader.as_deref() == Some(self.addr.id.as_str()) {
                v.granted[p] = v.granted[p].max(s.leader_epoch);
            }
        }
    }

    /// Learns the routing maps of a notice (newer entries only).
    fn learn_leaders(&self, maps: &[Arc<Leaders>]) {
        let mut v = self.view.lock();
        for m in maps {
            for e in &m.entries {
                let p = e.partition as usize;
                if p < v.route.len() && e.leader_epoch >= v.route[p].0 {
                    v.route[p] = (e.leader_epoch, m.leader_of(e).map_or(NONE, index_of));
                }
            }
        }
    }

    /// Whether it is alive.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// (leader index, leader epoch) of `p` as it would route a client:
    /// from its full state or its routing entry, whichever is newer.
    pub fn route(&self, p: u32) -> Option<(u16, u32)> {
        let v = self.view.lock();
        let (epoch, leader) = route_of(&v, p as usize);
        (epoch != 0 || leader != NONE).then_some((leader, epoch))
    }

    /// Whether its newest full state of `p` lists it as a replica.
    pub fn hosts(&self, p: u32) -> bool {
        self.view.lock().mine[p as usize]
    }

    /// (leader index, leader epoch, znode version, ISR) it knows of `p`
    /// in full.
    pub fn known(&self, p: u32) -> Option<(u16, u32, i32, Vec<u16>)> {
        let v = self.view.lock();
        let p = p as usize;
        (v.ver[p] != 0).then(|| {
            (
                v.leader[p],
                (v.ver[p] >> 32) as u32,
                v.ver[p] as u32 as i32,
                v.isr[p].iter().copied().filter(|&m| m != NONE).collect(),
            )
        })
    }
}

/// (leader epoch, leader) of `p` in `v`: the newer of the full state and
/// the routing entry.
fn route_of(v: &View, p: usize) -> (u32, u16) {
    let full = ((v.ver[p] >> 32) as u32, v.leader[p]);
    if v.ver[p] != 0 && full.0 >= v.route[p].0 {
        full
    } else {
        v.route[p]
    }
}

/// The listener of one node.
struct SimListener(Arc<SimNode>);

impl StateListener for SimListener {
    fn registered(&self, node_epoch: i64) {
        self.0.node_epoch.store(node_epoch, Ordering::SeqCst);
    }

    fn apply(&self, states: Vec<LeaderAndIsr>, _nodes: Vec<NodeAddr>) {
        self.0
            .zk_states
            .fetch_add(states.len() as u64, Ordering::Relaxed);
        self.0.learn(&states, false);
    }

    fn replica_of(&self) -> Option<Vec<u32>> {
        let v = self.0.view.lock();
        Some(
            (0..v.mine.len() as u32)
                .filter(|&p| v.mine[p as usize])
                .collect(),
        )
    }

    fn fence(&self, _why: &str) {
        self.0.fences.fetch_add(1, Ordering::Relaxed);
        let mut v = self.0.view.lock();
        v.granted.iter_mut().for_each(|g| *g = 0);
    }
}

/// Counters of the controller's calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `leader_and_isr` calls accepted.
    pub notices: u64,
    /// Full states in them.
    pub states: u64,
    /// Routing entries in them (the maps' lengths; the maps are shared).
    pub leader_entries: u64,
    /// `leader_and_isr` calls refused (dead node, other registration).
    pub refused: u64,
    /// `log_end_offsets` calls.
    pub offset_calls: u64,
    /// Partitions asked in them.
    pub offset_partitions: u64,
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, o: Calls) -> Calls {
        Calls {
            notices: self.notices - o.notices,
            states: self.states - o.states,
            leader_entries: self.leader_entries - o.leader_entries,
            refused: self.refused - o.refused,
            offset_calls: self.offset_calls - o.offset_calls,
            offset_partitions: self.offset_partitions - o.offset_partitions,
        }
    }
}

/// The controller's way to the simulated nodes.
struct SimRpc {
    /// Every node, by index.
    nodes: Vec<Arc<SimNode>>,
    /// Counters.
    calls: Mutex<Calls>,
    /// When each accepted notice arrived, and its size.
    arrivals: Mutex<Vec<(Instant, usize)>>,
}

impl SimRpc {
    fn node(&self, addr: &NodeAddr) -> Result<&Arc<SimNode>> {
        self.nodes
            .get(index_of(&addr.id) as usize)
            .filter(|n| n.alive())
            .ok_or_else(|| Error::Unavailable(format!("node {} is down", addr.id)))
    }
}

impl NodeRpc for SimRpc {
    fn log_end_offsets(
        &self,
        node: NodeAddr,
        _controller_epoch: u64,
        partitions: Vec<u32>,
    ) -> BoxFuture<'static, Result<Vec<ReplicaOffsets>>> {
        let answer = self.node(&node).map(|_| {
            let mut c = self.calls.lock();
            c.offset_calls += 1;
            c.offset_partitions += partitions.len() as u64;
            partitions
                .iter()
                .map(|&p| ReplicaOffsets {
                    partition: p,
                    log_end_offset: LEO,
                    last_epoch: 1,
                    high_watermark: LEO,
                })
                .collect()
        });
        Box::pin(async move { answer })
    }

    fn leader_and_isr(
        &self,
        node: NodeAddr,
        controller_epoch: u64,
        node_epoch: i64,
        states: Vec<LeaderAndIsr>,
        leaders: Vec<Arc<Leaders>>,
        _nodes: Vec<NodeAddr>,
    ) -> BoxFuture<'static, Result<()>> {
        let r = self.node(&node).and_then(|n| {
            if n.node_epoch.load(Ordering::SeqCst) != node_epoch {
                return Err(Error::Unavailable(format!(
                    "notice for node epoch {node_epoch}, {} is at another",
                    node.id
                )));
            }
            n.learn_leaders(&leaders);
            n.learn(&states, true);
            n.last_notice_epoch
                .fetch_max(controller_epoch, Ordering::SeqCst);
            Ok(())
        });
        if r.is_ok() {
            self.arrivals.lock().push((Instant::now(), states.len()));
        }
        let mut c = self.calls.lock();
        if r.is_ok() {
            c.notices += 1;
            c.states += states.len() as u64;
            c.leader_entries += leaders.iter().map(|m| m.len() as u64).sum::<u64>();
        } else {
            c.refused += 1;
        }
        drop(states);
        Box::pin(async move { r })
    }
}

/// How far the nodes' views are from "every partition led, every node
/// told".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Partitions without a live leader that a notice granted the
    /// leadership at the current epoch (or whose leader is not in ISR).
    pub unled: usize,
    /// Partitions whose state differs between live nodes.
    pub disagree: usize,
    /// Partitions whose ISR names a dead node.
    pub dead_in_isr: usize,
}

impl Progress {
    /// Every partition led by a live ISR member, every live node agrees,
    /// no dead node in an ISR.
    pub fn done(&self) -> bool {
        *self == Progress::default()
    }
}

/// What [`Sim::wait_done`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Waited {
    /// When every partition had a live leader in its ISR, granted by a
    /// notice, and no dead node was left in an ISR (ms).
    pub led_ms: Option<u64>,
    /// When, in addition, every live node had a notice of the awaited
    /// controller epoch and all agreed on every partition (ms).
    pub told_ms: Option<u64>,
    /// The last progress seen.
    pub last: Progress,
}

/// Sizes and timings of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// Partitions.
    pub partitions: u32,
    /// ZooKeeper session timeout of every node.
    pub session_ms: u64,
    /// ZooKeeper root of the cluster.
    pub root: String,
}

/// A running simulation.
pub struct Sim {
    /// Its configuration.
    pub cfg: SimConfig,
    /// The nodes' views.
    pub nodes: Vec<Arc<SimNode>>,
    /// Each node's ZooKeeper layer (`None` once killed).
    pub clusters: Vec<Option<Arc<ZkCluster>>>,
    /// Each node's proxy to ZooKeeper.
    proxies: Vec<Proxy>,
    /// The rpc shared by all nodes.
    rpc: Arc<SimRpc>,
    /// ZooKeeper's client address.
    pub zk: SocketAddr,
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// ZooKeeper's `mntr` counters (numeric ones) at `zk`.
pub fn mntr(zk: SocketAddr) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&zk, Duration::from_secs(2)) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    if s.write_all(b"mntr").is_err() || s.read_to_string(&mut text).is_err() {
        return out;
    }
    for line in text.lines() {
        let mut kv = line.split('\t');
        if let (Some(k), Some(v)) = (kv.next(), kv.next())
            && let Ok(n) = v.trim().parse::<i64>()
        {
            out.insert(k.to_string(), n);
        }
    }
    out
}

/// `after[k] - before[k]`.
pub fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, k: &str) -> i64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

/// A plain ZooKeeper client.
pub async fn raw_client(zk: SocketAddr) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&zk.to_string())
        .await
        .expect("connect a raw ZooKeeper client")
}

impl Sim {
    /// Starts `cfg.nodes` nodes (all registered when this returns) with
    /// the controller held back by a placeholder `/controller` owned by
    /// `holder`; [`Sim::release`] lets the election happen.
    pub async fn start(cfg: SimConfig, zk: SocketAddr, holder: &zookeeper_client::Client) -> Sim {
        let persistent = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        holder
            .mkdir(&cfg.root, &persistent)
            .await
            .expect("create the cluster root");
        let ephemeral =
            zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
        holder
            .create(
                &format!("{}/controller", cfg.root),
                br#"{"node_id":"sim-holder","controller_epoch":0}"#,
                &ephemeral,
            )
            .await
            .expect("create the placeholder /controller");
        let nodes: Vec<Arc<SimNode>> = (0..cfg.nodes)
            .map(|i| Arc::new(SimNode::new(i as u16, cfg.partitions)))
            .collect();
        let rpc = Arc::new(SimRpc {
            nodes: nodes.clone(),
            calls: Mutex::new(Calls::default()),
            arrivals: Mutex::new(Vec::new()),
        });
        let mut proxies = Vec::new();
        for _ in 0..cfg.nodes {
            proxies.push(Proxy::start(zk).await);
        }
        let mut starts = JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let opts = ClusterOptions {
                name: "sim".into(),
                zk_connect: format!("127.0.0.1:{}", proxies[i].port),
                zk_root: cfg.root.clone(),
                session_timeout_ms: cfg.session_ms,
                replication_factor: 3,
                min_insync: 2,
                ..ClusterOptions::default()
            };
            let (node, rpc, partitions) = (node.clone(), rpc.clone(), cfg.partitions);
            starts.spawn(async move {
                let listener = Arc::new(SimListener(node.clone()));
                let r = ZkCluster::start(&opts, node.addr.clone(), partitions, listener, rpc).await;
                (i, r)
            });
        }
        let mut clusters: Vec<Option<Arc<ZkCluster>>> = (0..cfg.nodes).map(|_| None).collect();
        while let Some(done) = starts.join_next().await {
            let (i, r) = done.expect("a node start task panicked");
            let zk = r.unwrap_or_else(|e| panic!("node {} did not start: {e}", node_id(i)));
            clusters[i] = Some(zk);
        }
        Sim {
            cfg,
            nodes,
            clusters,
            proxies,
            rpc,
            zk,
        }
    }

    /// Deletes the placeholder `/controller`: the nodes elect one.
    pub async fn release(&self, holder: &zookeeper_client::Client) {
        holder
            .delete(&format!("{}/controller", self.cfg.root), None)
            .await
            .expect("delete the placeholder /controller");
    }

    /// The controller's calls so far.
    pub fn calls(&self) -> Calls {
        *self.rpc.calls.lock()
    }

    /// When the first and the last notice since `t` arrived (ms after
    /// `t`), and how many.
    pub fn arrivals_since(&self, t: Instant) -> (Option<u64>, Option<u64>, usize) {
        let a = self.rpc.arrivals.lock();
        let since: Vec<u64> = a
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(at, _)| at.duration_since(t).as_millis() as u64)
            .collect();
        (
            since.iter().min().copied(),
            since.iter().max().copied(),
            since.len(),
        )
    }

    /// The live node that says it is the controller, if any.
    pub fn controller(&self) -> Option<usize> {
        self.clusters.iter().enumerate().find_map(|(i, c)| {
            let c = c.as_ref()?;
            (c.controller().as_deref() == Some(c.node_id())).then_some(i)
        })
    }

    /// Kills node `i` as SIGKILL would: its ZooKeeper connection is cut
    /// and refused (the session is left to expire), it answers no call,
    /// and its tasks stop.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].alive.store(false, Ordering::SeqCst);
        self.proxies[i].kill();
        // Drop aborts the node's tasks; the client's close request finds
        // no connection to go through.
        self.clusters[i] = None;
    }

    /// Closes every live node's session and the proxies.
    pub async fn stop(mut self) {
        for c in self.clusters.iter_mut() {
            if let Some(c) = c.take() {
                c.shutdown().await;
            }
        }
        for p in &self.proxies {
            p.kill();
        }
    }

    /// How far the live nodes' views are from done.
    pub fn progress(&self) -> Progress {
        let live: Vec<&Arc<SimNode>> = self.nodes.iter().filter(|n| n.alive()).collect();
        let alive: Vec<bool> = self.nodes.iter().map(|n| n.alive()).collect();
        let views: Vec<_> = live.iter().map(|n| n.view.lock()).collect();
        let mut pr = Progress::default();
        let Some(first) = views.first() else {
            return pr;
        };
        let mut pos: Vec<Option<usize>> = vec![None; self.nodes.len()];
        for (i, n) in live.iter().enumerate() {
            pos[n.index as usize] = Some(i);
        }
        for p in 0..self.cfg.partitions as usize {
            // Every live node routes p to the same leader at the same epoch.
            let (epoch, l) = route_of(first, p);
            if views.iter().any(|v| route_of(v, p) != (epoch, l)) {
                pr.disagree += 1;
            }
            // The leader's own full state: at that epoch, granted by a
            // notice, the leader in its ISR; every live replica holds the
            // same state.
            let Some(lv) = (l != NONE && alive[l as usize])
                .then(|| pos[l as usize])
                .flatten()
                .map(|i| &views[i])
            else {
                pr.unled += 1;
                continue;
            };
            let k = lv.ver[p];
            let isr = lv.isr[p];
            if isr.iter().any(|&m| m != NONE && !alive[m as usize]) {
                pr.dead_in_isr += 1;
            }
            if views.iter().any(|v| v.mine[p] && v.ver[p] != k) {
                pr.disagree += 1;
            }
            let led =
                k != 0 && (k >> 32) as u32 == epoch && isr.contains(&l) && lv.granted[p] == epoch;
            if !led {
                pr.unled += 1;
            }
        }
        pr
    }

    /// Polls [`Sim::progress`] every `every` until every partition is
    /// led and every live node accepted a notice from controller epoch
    /// `epoch` and agrees with the others, or until `within` passes.
    pub async fn wait_done(&self, epoch: u64, every: Duration, within: Duration) -> Waited {
        let t = Instant::now();
        let mut led_ms = None;
        loop {
            let last = self.progress();
            if led_ms.is_none() && last.unled == 0 && last.dead_in_isr == 0 {
                led_ms = Some(ms_since(t));
            }
            let told = self
                .nodes
                .iter()
                .filter(|n| n.alive())
                .all(|n| n.last_notice_epoch.load(Ordering::SeqCst) >= epoch);
            if (last.done() && told) || t.elapsed() > within {
                return Waited {
                    led_ms,
                    told_ms: (last.done() && told).then(|| ms_since(t)),
                    last,
                };
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Cuts every node's connection (sessions left to expire) and drops
    /// the nodes: the end of a benchmark, without one election per node
    /// leaving.
    pub fn abandon(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Partitions whose leader (per node 0's view) is node `i`.
    pub fn led_by(&self, i: usize) -> usize {
        let live = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let v = live.view.lock();
        (0..v.ver.len())
            .filter(|&p| route_of(&v, p).1 as usize == i)
            .count()
    }

    /// Reads every partition's state from ZooKeeper: (leader index, leader
    /// epoch, znode version, ISR) by partition.
    pub async fn zk_states(
        &self,
        client: &zookeeper_client::Client,
    ) -> BTreeMap<u32, (u16, u32, i32, Vec<u16>)> {
        let mut out = BTreeMap::new();
        let ids: Vec<u32> = (0..self.cfg.partitions).collect();
        for chunk in ids.chunks(5000) {
            let pending: Vec<_> = chunk
                .iter()
                .map(|&p| {
                    let path = format!("{}/partitions/{p}/state", self.cfg.root);
                    (p, client.get_data(&path))
                })
                .collect();
            // Every request was sent before the first answer is awaited.
            for (p, fut) in pending {
                let Ok((data, stat)) = fut.await else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(&data).expect("state is JSON");
                let leader = v["leader"].as_str().map_or(NONE, index_of);
                let epoch = v["leader_epoch"].as_u64().expect("leader_epoch") as u32;
                let isr = v["isr"]
                    .as_array()
                    .expect("isr")
                    .iter()
                    .map(|m| index_of(m.as_str().expect("isr member")))
                    .collect();
                out.insert(p, (leader, epoch, stat.version, isr));
            }
        }
        out
    }
}

/// Parses `--name value` pairs of a command line.
pub fn args() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let it = std::env::args().skip(1);
    let mut key: Option<String> = None;
    for a in it {
        match a.strip_prefix("--") {
            Some(k) => key = Some(k.to_string()),
            None => {
                if let Some(k) = key.take() {
                    out.insert(k, a);
                }
            }
        }
    }
    out
}
