//! The nemesis: faults on the cluster's processes, drawn from a seeded
//! generator so that `TORTURE_SEED` replays the same schedule (the choices
//! and pauses; what the cluster does in between is timing).
//!
//! Every fault is undone by [`Ctx::heal_and_quiesce`]: paused processes get
//! SIGCONT, killed nodes and ZooKeeper members are started again. Each
//! nemesis below runs its fault cycle at least once, then until the
//! deadline.

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
            deadline: Instant::now() + period,
            pids,
            start,
            paused: vec![false; n],
            zk_down: vec![false; z],
            firewall: None,
            log: Vec::new(),
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

    fn id(&self, i: usize) -> String {
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
        self.cluster.start_node(i);
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
        self.cluster
            .zk
            .connect_string()
            .split(',')
            .map(netpart::port)
            .collect()
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

/// Runs `cycle` at least once, then until the deadline.
fn cycles(ctx: &mut Ctx, mut cycle: impl FnMut(&mut Ctx)) {
    loop {
        cycle(ctx);
        if !ctx.more() {
            break;
        }
    }
}

/// Leader of a random partition: SIGKILL, down 1-3 s, restart.
pub fn leader_kill(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.kill(l);
            ctx.pause_ms(1000, 3000);
            ctx.start(l);
        }
    });
}

/// A follower of a random partition: SIGKILL, down 1-3 s, restart.
pub fn follower_kill(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            let n = ctx.cluster.specs.len();
            let f = (l + 1 + ctx.rng.below(n as u64 - 1) as usize) % n;
            ctx.kill(f);
            ctx.pause_ms(1000, 3000);
            ctx.start(f);
        }
    });
}

/// The controller: SIGKILL, down 0.5-2 s, restart.
pub fn controller_kill(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        if let Some(c) = ctx.controller() {
            ctx.kill(c);
            ctx.pause_ms(500, 2000);
            ctx.start(c);
        }
    });
}

/// A leader: SIGKILL and restart at once (before its session expires).
pub fn instant_restart(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(500, 1500);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.kill(l);
            ctx.start(l);
        }
    });
}

/// A leader frozen past its session timeout, then thawed (a zombie that
/// must not act as leader).
pub fn zombie_leader(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.freeze(l);
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(st + 300, st + 2000);
            ctx.thaw(l);
            ctx.pause_ms(500, 1500);
        }
    });
}

/// A leader frozen until about when its session expires (between its
/// lease, two thirds of the session timeout, and a little past the
/// timeout): the window where a resumed node may still believe it leads.
pub fn pause_near_expiry(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.freeze(l);
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(st * 2 / 3, st + 500);
            ctx.thaw(l);
            ctx.pause_ms(500, 1500);
        }
    });
}

/// The leader of a partition is killed while one follower is frozen (for
/// less than its session timeout): the controller may elect the frozen
/// follower, whose notices then fail until it thaws. It must still learn
/// that it leads.
pub fn notice_missed(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        let Some(l) = ctx.leader(p, Duration::from_secs(10)) else {
            return;
        };
        let n = ctx.cluster.specs.len();
        let f = (l + 1 + ctx.rng.below(n as u64 - 1) as usize) % n;
        ctx.freeze(f);
        ctx.kill(l);
        let st = ctx.cluster.opts.session_timeout_ms;
        ctx.pause_ms(st / 2, st * 3 / 4);
        ctx.thaw(f);
        ctx.start(l);
        ctx.leader(p, Duration::from_secs(15));
    });
}

/// A leader frozen past its session timeout while one follower is frozen
/// for less than its own, from shortly before the election to after it:
/// the other follower takes over and its high watermark cannot reach its
/// log end until the frozen follower fetches again. Operations on the
/// partition meanwhile meet a leader whose keydir lags its log.
pub fn stale_takeover(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(500, 1500);
        let p = ctx.partition();
        let Some(l) = ctx.leader(p, Duration::from_secs(10)) else {
            return;
        };
        let n = ctx.cluster.specs.len();
        let f = (l + 1 + ctx.rng.below(n as u64 - 1) as usize) % n;
        let st = ctx.cluster.opts.session_timeout_ms;
        ctx.freeze(l);
        ctx.pause_ms(st / 2, st * 3 / 5);
        ctx.freeze(f);
        ctx.pause_ms(st * 3 / 5, st * 3 / 4);
        ctx.thaw(f);
        ctx.pause_ms(100, 300);
        ctx.thaw(l);
        ctx.pause_ms(500, 1500);
    });
}

/// The controller frozen past its session timeout, then thawed.
pub fn zombie_controller(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        if let Some(c) = ctx.controller() {
            ctx.freeze(c);
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(st + 300, st + 2000);
            ctx.thaw(c);
            ctx.pause_ms(500, 1500);
        }
    });
}

/// A leader frozen for less than its session timeout.
pub fn pause_short(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(200, 800);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.freeze(l);
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(100, st / 2);
            ctx.thaw(l);
        }
    });
}

/// Both followers of a partition killed until the ISR shrinks to the
/// leader; then the leader is killed and the followers come back: no
/// unclean election (the partition waits for its last ISR member).
pub fn isr_shrink_then_kill_leader(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 800);
        let p = ctx.partition();
        let Some(l) = ctx.leader(p, Duration::from_secs(10)) else {
            return;
        };
        let n = ctx.cluster.specs.len();
        let followers: Vec<usize> = (0..n).filter(|&i| i != l).collect();
        for &f in &followers {
            ctx.kill(f);
        }
        let lag = ctx.cluster.opts.replica_lag_ms;
        let until = Instant::now() + Duration::from_millis(lag + 5000);
        let me = ctx.cluster.specs[l].id.clone();
        loop {
            let isr = ctx
                .cluster
                .metadata(l)
                .and_then(|m| m.partitions.get(p as usize).map(|x| x.isr.clone()));
            if isr.as_deref() == Some(std::slice::from_ref(&me)) {
                ctx.note(format!("partition {p}: ISR shrunk to {me}"));
                break;
            }
            if Instant::now() > until {
                ctx.note(format!("partition {p}: ISR is {isr:?}, not shrunk"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ctx.kill(l);
        for &f in &followers {
            ctx.start(f);
        }
        ctx.pause_ms(1500, 3000);
        ctx.start(l);
        ctx.leader(p, Duration::from_secs(20));
    });
}

/// KIP-101's double failover: the leader dies, a follower takes over, the
/// old leader restarts at once and the new leader dies before the old one
/// has caught up.
pub fn double_failover(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        let Some(l1) = ctx.leader(p, Duration::from_secs(10)) else {
            return;
        };
        ctx.kill(l1);
        let l2 = ctx.leader(p, Duration::from_secs(15));
        ctx.start(l1);
        if let Some(l2) = l2 {
            ctx.kill(l2);
            ctx.leader(p, Duration::from_secs(15));
            ctx.start(l2);
        }
        ctx.pause_ms(500, 1500);
    });
}

/// Every node killed, then restarted in a random order.
pub fn all_isr_dead(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(500, 1500);
        let n = ctx.cluster.specs.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, ctx.rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            ctx.kill(i);
            ctx.pause_ms(0, 300);
        }
        ctx.pause_ms(300, 1500);
        for i in (1..n).rev() {
            order.swap(i, ctx.rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            ctx.start(i);
            ctx.pause_ms(0, 500);
        }
        ctx.leader(0, Duration::from_secs(20));
    });
}

/// No fault for the first half, then one leader kill and restart (for
/// 1 MiB values: the fetch answers' size is what is under test).
pub fn one_leader_kill(ctx: &mut Ctx) {
    let half = ctx.deadline.saturating_duration_since(Instant::now()) / 2;
    std::thread::sleep(half);
    let p = ctx.partition();
    if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
        ctx.kill(l);
        ctx.pause_ms(1000, 2000);
        ctx.start(l);
    }
    let rest = ctx.deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(rest);
}

/// Moves the leadership of every partition to one node: each other node
/// in turn is killed until its partitions have new leaders, then
/// restarted as a follower. With 1 MiB values, one fetch answer then
/// carries a record of every partition.
pub fn concentrate_leaders(ctx: &mut Ctx) {
    let n = ctx.cluster.specs.len();
    let keep = ctx.rng.below(n as u64) as usize;
    ctx.pause_ms(300, 800);
    for i in (0..n).filter(|&i| i != keep) {
        ctx.kill(i);
        let until = Instant::now() + Duration::from_secs(20);
        while !ctx.cluster.all_led() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        ctx.start(i);
    }
    let id = ctx.cluster.specs[keep].id.clone();
    ctx.note(format!("{id} should lead every partition"));
    let rest = ctx.deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(rest.max(Duration::from_secs(3)));
}

/// The ZooKeeper ensemble's leader: SIGKILL, down 1-3 s, restart.
pub fn zk_leader_kill(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(500, 1500);
        let Some(z) = ctx.cluster.zk.leader() else {
            ctx.note("no ZooKeeper leader found".into());
            return;
        };
        ctx.zk_kill(z);
        ctx.pause_ms(1000, 3000);
        ctx.zk_start(z);
    });
}

/// The leader of a random partition cut off from every other node while
/// it keeps ZooKeeper, past the session timeout.
pub fn partition_leader(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            for o in (0..ctx.cluster.specs.len()).filter(|&o| o != l) {
                ctx.isolate(l, o);
            }
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(st, st + 3000);
            ctx.heal_network();
            ctx.pause_ms(1000, 2000);
        }
    });
}

/// A leader cut off from ZooKeeper only, past its session timeout: it must
/// stop acting as leader while clients still reach it.
pub fn partition_zk(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.cut_from_zk(l);
            let st = ctx.cluster.opts.session_timeout_ms;
            ctx.pause_ms(st + 500, st + 3000);
            ctx.heal_network();
            ctx.pause_ms(1000, 2000);
        }
    });
}

/// The controller cut off from one other node.
pub fn partition_controller(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        if let Some(c) = ctx.controller() {
            let n = ctx.cluster.specs.len();
            let o = (c + 1 + ctx.rng.below(n as u64 - 1) as usize) % n;
            ctx.isolate(c, o);
            ctx.pause_ms(2000, 4000);
            ctx.heal_network();
            ctx.pause_ms(1000, 2000);
        }
    });
}

/// One-way: a leader that receives but sends nothing except to ZooKeeper.
pub fn leader_mute(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.mute(l);
            ctx.pause_ms(2000, 4000);
            ctx.heal_network();
            ctx.pause_ms(1000, 2000);
        }
    });
}

/// A random fault of the kinds above each cycle.
pub fn mixed(ctx: &mut Ctx) {
    let all: [fn(&mut Ctx); 8] = [
        leader_kill_once,
        follower_kill_once,
        controller_kill_once,
        instant_restart_once,
        zombie_leader_once,
        pause_short_once,
        double_failover_once,
        all_isr_dead_once,
    ];
    cycles(ctx, |ctx| {
        let f = all[ctx.rng.below(all.len() as u64) as usize];
        f(ctx);
    });
}

/// Runs `f` for exactly one cycle.
fn once(ctx: &mut Ctx, f: fn(&mut Ctx)) {
    let saved = ctx.deadline;
    ctx.deadline = Instant::now();
    f(ctx);
    ctx.deadline = saved;
}

fn leader_kill_once(ctx: &mut Ctx) {
    once(ctx, leader_kill)
}
fn follower_kill_once(ctx: &mut Ctx) {
    once(ctx, follower_kill)
}
fn controller_kill_once(ctx: &mut Ctx) {
    once(ctx, controller_kill)
}
fn instant_restart_once(ctx: &mut Ctx) {
    once(ctx, instant_restart)
}
fn zombie_leader_once(ctx: &mut Ctx) {
    once(ctx, zombie_leader)
}
fn pause_short_once(ctx: &mut Ctx) {
    once(ctx, pause_short)
}
fn double_failover_once(ctx: &mut Ctx) {
    once(ctx, double_failover)
}
fn all_isr_dead_once(ctx: &mut Ctx) {
    once(ctx, all_isr_dead)
}
