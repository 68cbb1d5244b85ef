//! The faults of each scenario, on a [`Ctx`] (see `nemesis.rs`): each
//! runs its cycle at least once, then until the deadline, drawing every
//! choice and pause from the seeded generator.

use std::time::{Duration, Instant};

use super::nemesis::Ctx;

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
    freeze_leaders(ctx, |st| (st + 300, st + 2000));
}

/// A leader frozen until about when its session expires (between its
/// lease, two thirds of the session timeout, and a little past the
/// timeout): the window where a resumed node may still believe it leads.
pub fn pause_near_expiry(ctx: &mut Ctx) {
    freeze_leaders(ctx, |st| (st * 2 / 3, st + 500));
}

/// Cycles of: a random partition's leader frozen for a time drawn from
/// `window(session_timeout_ms)` (lowest, highest ms), then thawed.
fn freeze_leaders(ctx: &mut Ctx, window: impl Fn(u64) -> (u64, u64)) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        if let Some(l) = ctx.leader(p, Duration::from_secs(10)) {
            ctx.freeze(l);
            let (lo, hi) = window(ctx.cluster.opts.session_timeout_ms);
            ctx.pause_ms(lo, hi);
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

/// KIP-279's shape: the old leader stays down through two leader changes
/// (the second new leader is the last ISR member, at an epoch the old
/// leader never saw), then comes back first and has to find where its log
/// leaves the new leader's across epochs it does not know; the second
/// leader comes back after it.
pub fn kip_279(ctx: &mut Ctx) {
    cycles(ctx, |ctx| {
        ctx.pause_ms(300, 1000);
        let p = ctx.partition();
        let Some(l1) = ctx.leader(p, Duration::from_secs(10)) else {
            return;
        };
        ctx.kill(l1);
        let Some(l2) = ctx.leader(p, Duration::from_secs(15)) else {
            ctx.start(l1);
            return;
        };
        // The second leader writes at its epoch, then dies too.
        ctx.pause_ms(300, 1000);
        ctx.kill(l2);
        ctx.leader(p, Duration::from_secs(15));
        ctx.pause_ms(200, 600);
        ctx.start(l1);
        ctx.pause_ms(300, 1000);
        ctx.start(l2);
        ctx.leader(p, Duration::from_secs(15));
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
