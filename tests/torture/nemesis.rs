//! The nemesis context: faults on the cluster's processes and network
//! (SIGKILL, restart, SIGSTOP/SIGCONT, ZooKeeper member kills, iptables
//! partitions), with a generator seeded so that `TORTURE_SEED` replays the
//! same schedule (the choices and pauses; what the cluster does in between
//! is timing). The scenarios' fault cycles are in `faults.rs`.
//!
//! Every fault is undone by [`Ctx::heal_and_quiesce`]: network rules are
//! flushed, paused processes get SIGCONT, killed nodes and ZooKeeper
//! members are started again; then it waits for a full ISR everywhere and
//! every replica at the leader's log end and high watermark.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::cluster::TestCluster;
use super::netpart::{self, Firewall};
use super::runner::Rng;

/// What a nemesis works with.
pub struct Ctx<'a> {
    /// The cluster.
    pub cluster: &'a mut TestCluster,
    /// The seeded generator.
    pub rng: Rng,
    /// The scenario's seed.
    pub seed: u64,
    /// End of the fault period.
    pub deadline: Instant,
    /// Node pids shared with the poller (`None` while down or restarting).
    pids: Arc<Mutex<Vec<Option<i32>>>>,
    /// Time zero of the history.
    start: Instant,
    /// Paused nodes.
    paused: Vec<bool>,
    /// Killed ZooKeeper members.
    zk_down: Vec<bool>,
    /// Network rules, when the scenario runs in its own namespace.
    pub firewall: Option<Firewall>,
    /// What was done, when.
    pub log: Vec<String>,
    /// Violations the nemesis itself saw (e.g. a full disk's error was
    /// not clear); the scenario fails on any.
    pub problems: Vec<String>,
    /// Extra environment of each node's (re)starts from now on (e.g. a
    /// faked clock).
    pub env: Vec<Vec<(String, String)>>,
}

impl<'a> Ctx<'a> {
    /// A context whose faults run for `secs`.
    pub fn new(
        cluster: &'a mut TestCluster,
        seed: u64,
        period: Duration,
        pids: Arc<Mutex<Vec<Option<i32>>>>,
        start: Instant,
    ) -> Ctx<'a> {
        let n = cluster.specs.len();
        let z = cluster.zk.members();
        Ctx {
            cluster,
            rng: Rng::new(seed),
            seed,
            deadline: Instant::now() + period,
            pids,
            start,
            paused: vec![false; n],
            zk_down: vec![false; z],
            firewall: None,
            log: Vec::new(),
            problems: Vec::new(),
            env: vec![Vec::new(); n],
        }
    }

    /// Whether the fault period goes on.
    pub fn more(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Records an event.
    pub fn note(&mut self, what: String) {
        let t = self.start.elapsed().as_secs_f64();
        self.log.push(format!("{t:>8.3}s {what}"));
    }

    /// The id of node `i`.
    pub fn id(&self, i: usize) -> String {
        self.cluster.specs[i].id.clone()
    }

    fn set_pid(&self, i: usize, pid: Option<i32>) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[i] = pid;
    }

    /// Sleeps `lo..=hi` ms (drawn from the seed).
    pub fn pause_ms(&mut self, lo: u64, hi: u64) {
        let d = self.rng.ms(lo, hi);
        std::thread::sleep(d);
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.set_pid(i, None);
        self.cluster.kill(i);
        self.paused[i] = false;
        let id = self.id(i);
        self.note(format!("kill -9 {id}"));
    }

    /// Starts node `i` again (if down).
    pub fn start(&mut self, i: usize) {
        if self.cluster.servers[i].is_some() {
            return;
        }
        let env: Vec<(&str, &str)> = self.env[i]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.cluster.start_node_with(i, &env);
        self.set_pid(i, self.cluster.pid(i));
        let id = self.id(i);
        self.note(format!("start {id}"));
    }

    /// SIGSTOP node `i`.
    pub fn freeze(&mut self, i: usize) {
        if self.cluster.servers[i].is_none() || self.paused[i] {
            return;
        }
        self.cluster.signal(i, libc::SIGSTOP);
        self.paused[i] = true;
        let id = self.id(i);
        self.note(format!("SIGSTOP {id}"));
    }

    /// SIGCONT node `i`.
    pub fn thaw(&mut self, i: usize) {
        if !self.paused[i] {
            return;
        }
        self.cluster.signal(i, libc::SIGCONT);
        self.paused[i] = false;
        let id = self.id(i);
        self.note(format!("SIGCONT {id}"));
    }

    /// A random partition.
    pub fn partition(&mut self) -> u32 {
        self.rng.below(self.cluster.opts.partitions as u64) as u32
    }

    /// The leader of `p` every running node agrees on, waiting up to
    /// `wait` for one.
    pub fn leader(&mut self, p: u32, wait: Duration) -> Option<usize> {
        let until = Instant::now() + wait;
        loop {
            if let Some(l) = self.cluster.leader(p) {
                return Some(l);
            }
            if Instant::now() > until {
                self.note(format!("no leader of partition {p} within {wait:?}"));
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The controller, as the first answering node names it.
    pub fn controller(&mut self) -> Option<usize> {
        for i in self.cluster.running() {
            if self.paused[i] {
                continue;
            }
            if let Some(m) = self.cluster.metadata(i)
                && !m.controller.is_empty()
            {
                return self.cluster.specs.iter().position(|s| s.id == m.controller);
            }
        }
        None
    }

    /// Kills ZooKeeper member `i`.
    pub fn zk_kill(&mut self, i: usize) {
        self.cluster.zk.kill_member(i);
        self.zk_down[i] = true;
        self.note(format!("kill -9 ZooKeeper member {i}"));
    }

    /// Restarts ZooKeeper member `i`.
    pub fn zk_start(&mut self, i: usize) {
        if !self.zk_down[i] {
            return;
        }
        self.cluster.zk.restart_member(i);
        self.zk_down[i] = false;
        self.note(format!("start ZooKeeper member {i}"));
    }

    /// The firewall; panics when the scenario has none.
    fn fw(&mut self) -> &mut Firewall {
        self.firewall
            .as_mut()
            .expect("a partition scenario runs with a firewall")
    }

    /// The group id node `i` runs as.
    fn gid(&self, i: usize) -> u32 {
        self.cluster.gids[i].expect("partition scenarios run nodes as their own group")
    }

    /// Client and replication ports of node `i`.
    fn ports(&self, i: usize) -> [u16; 2] {
        let s = &self.cluster.specs[i];
        [netpart::port(&s.addr), netpart::port(&s.repl_addr)]
    }

    /// ZooKeeper's client ports.
    fn zk_ports(&self) -> Vec<u16> {
        self.cluster.zk.client_ports().to_vec()
    }

    /// Nodes `a` and `b` cannot reach each other (both directions).
    pub fn isolate(&mut self, a: usize, b: usize) {
        let (ga, gb) = (self.gid(a), self.gid(b));
        let (pa, pb) = (self.ports(a), self.ports(b));
        for p in pb {
            self.fw().drop_to(ga, p).expect("iptables rule");
        }
        for p in pa {
            self.fw().drop_to(gb, p).expect("iptables rule");
        }
        let (ia, ib) = (self.id(a), self.id(b));
        self.note(format!("partition {ia} <-/-> {ib}"));
    }

    /// Node `a` cannot reach ZooKeeper (everything else works).
    pub fn cut_from_zk(&mut self, a: usize) {
        let g = self.gid(a);
        for p in self.zk_ports() {
            self.fw().drop_to(g, p).expect("iptables rule");
        }
        let id = self.id(a);
        self.note(format!("partition {id} -/-> ZooKeeper"));
    }

    /// Node `a` sends nothing but to ZooKeeper (one way: it still
    /// receives, and keeps its session).
    pub fn mute(&mut self, a: usize) {
        let g = self.gid(a);
        let zk = self.zk_ports()[0];
        self.fw().mute_except(g, zk).expect("iptables rule");
        let id = self.id(a);
        self.note(format!("{id} muted: sends only to ZooKeeper"));
    }

    /// Removes every network rule.
    pub fn heal_network(&mut self) {
        if let Some(fw) = self.firewall.as_mut()
            && !fw.rules.is_empty()
        {
            fw.heal().expect("flush iptables rules");
            self.note("network healed".into());
        }
    }

    /// Undoes every fault, then waits until every partition has a leader
    /// with a full ISR and every replica's log ends at the high watermark.
    pub fn heal_and_quiesce(&mut self) -> Result<(), String> {
        self.heal_network();
        for i in 0..self.zk_down.len() {
            self.zk_start(i);
        }
        for i in 0..self.paused.len() {
            self.thaw(i);
            self.start(i);
        }
        self.note("healed".into());
        let until = Instant::now() + Duration::from_secs(60);
        while !(self.cluster.all_led() && self.cluster.full_isr()) {
            if Instant::now() > until {
                return Err(
                    "60 s after healing, some partition has no leader or a partial ISR \
                            (the cluster did not recover)"
                        .into(),
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let lagging: Vec<String> = (0..self.cluster.opts.partitions)
                .filter_map(|p| {
                    let part = self.cluster.partition(p)?;
                    let ends: Vec<u64> = part.offsets.iter().map(|o| o.log_end_offset).collect();
                    let quiet = ends.len() == part.replicas.len()
                        && ends.iter().all(|&e| e == part.high_watermark);
                    (!quiet)
                        .then(|| format!("partition {p}: hw {} ends {ends:?}", part.high_watermark))
                })
                .collect();
            if lagging.is_empty() {
                break;
            }
            if Instant::now() > until {
                return Err(format!(
                    "30 s after recovering, replicas still lag: {}",
                    lagging.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Followers learn the final high watermark from their next fetch
        // answer: wait until every node reports the leader's.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let behind: Vec<String> = (0..self.cluster.opts.partitions)
                .filter_map(|p| {
                    let hw = self.cluster.partition(p)?.high_watermark;
                    let seen: Vec<u64> = self
                        .cluster
                        .running()
                        .into_iter()
                        .filter_map(|i| {
                            let m = self.cluster.metadata(i)?;
                            Some(m.partitions.get(p as usize)?.high_watermark)
                        })
                        .collect();
                    (seen.iter().any(|&h| h != hw))
                        .then(|| format!("partition {p}: leader hw {hw}, replicas {seen:?}"))
                })
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > until {
                return Err(format!(
                    "10 s after the logs matched, followers' high watermarks still lag: {}",
                    behind.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.note("quiescent".into());
        Ok(())
    }
}
