//! `make torture`: Jepsen-style tests of a real 3-node cluster on a real
//! ZooKeeper, with concurrent clients recording a history, a seeded
//! nemesis, and checkers (see docs/RELIABILITY.md).
//!
//! - `torture/history.rs`: the operation history (JSON lines).
//! - `torture/linear.rs`: per-key linearizability (Wing-Gong-Lowe).
//! - `torture/checks.rs`: lost acknowledged writes, visible failed writes,
//!   high watermark monotonicity, replica logs identical.
//! - `torture/linear_tests.rs`: the checkers' own tests.
//! - `torture/runner.rs`: one scenario end to end (cluster, clients,
//!   high-watermark poller, nemesis, heal, final reads, replica logs,
//!   checks, the `scenario=...` line).
//! - `torture/nemesis.rs`: the nemesis context (kill, freeze, partition,
//!   heal); `torture/faults.rs`: each scenario's seeded faults.
//! - `torture/netpart.rs`: network partitions inside a namespace of their
//!   own.
//! - `torture/diskfull.rs`: one node's data on a small tmpfs, filled.
//! - `torture/skew.rs`: one node's wall clock skewed (libfaketime), short
//!   TTLs and their checker.
//! - `storage_powerloss.rs`: the power-loss model on one engine (its tests
//!   take `ONE_AT_A_TIME` too).
//!
//! Each scenario is one test; `TORTURE_SECS` (default 4, `make torture`
//! 10) sets its fault period, `TORTURE_SEED` replays a schedule. Scenarios
//! run one at a time even when tests run in parallel.

#[path = "../harness/mod.rs"]
mod harness;

mod checks;
mod diskfull;
mod faults;
mod history;
mod linear;
#[cfg(test)]
mod linear_tests;
mod nemesis;
mod netpart;
mod runner;
mod skew;
mod storage_powerloss;

use runner::Scenario;

/// Scenarios run one at a time (their timing matters), even when the test
/// harness runs tests in parallel.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn run(s: Scenario) {
    let _one = ONE_AT_A_TIME.lock();
    runner::run(s);
}

#[test]
fn leader_kill() {
    run(Scenario::new("leader-kill", faults::leader_kill));
}

#[test]
fn follower_kill() {
    run(Scenario::new("follower-kill", faults::follower_kill));
}

#[test]
fn controller_kill() {
    run(Scenario::new("controller-kill", faults::controller_kill));
}

#[test]
fn instant_restart() {
    run(Scenario::new("instant-restart", faults::instant_restart));
}

#[test]
fn zombie_leader() {
    run(Scenario::new("zombie-leader", faults::zombie_leader));
}

#[test]
fn zombie_controller() {
    run(Scenario::new(
        "zombie-controller",
        faults::zombie_controller,
    ));
}

#[test]
fn pause_short() {
    run(Scenario::new("pause-short", faults::pause_short));
}

#[test]
fn isr_shrink_then_kill_leader() {
    run(Scenario::new(
        "isr-shrink-then-kill-leader",
        faults::isr_shrink_then_kill_leader,
    ));
}

#[test]
fn double_failover() {
    run(Scenario::new("double-failover", faults::double_failover));
}

#[test]
fn kip_279() {
    run(Scenario::new("kip-279", faults::kip_279));
}

#[test]
fn all_isr_dead() {
    run(Scenario::new("all-isr-dead", faults::all_isr_dead));
}

#[test]
fn large_values() {
    let mut s = Scenario::new("large-values", faults::one_leader_kill);
    s.large = true;
    s.clients = 4;
    s.keys = 8;
    run(s);
}

#[test]
fn large_values_one_leader() {
    // Every partition led by one node, 1 MiB values in each: one fetch
    // answer must still fit the message limit (bug 13).
    let mut s = Scenario::new("large-values-one-leader", faults::concentrate_leaders);
    s.large = true;
    s.clients = 4;
    s.keys = 8;
    run(s);
}

#[test]
fn zk_leader_kill() {
    let mut s = Scenario::new("zk-leader-kill", faults::zk_leader_kill);
    s.ensemble = true;
    run(s);
}

#[test]
fn leader_move() {
    // Preferred-leader rebalance moves leadership back under load after
    // each restart.
    let mut s = Scenario::new("leader-move", faults::leader_kill);
    s.opts.rebalance = true;
    run(s);
}

#[test]
fn fsync_always_mixed() {
    let mut s = Scenario::new("fsync-always-mixed", faults::mixed);
    s.opts.fsync = "always";
    run(s);
}

#[test]
fn mixed() {
    let mut s = Scenario::new("mixed", faults::mixed);
    s.opts.fsync = "never";
    run(s);
}

#[test]
fn pause_near_expiry() {
    run(Scenario::new(
        "pause-near-expiry",
        faults::pause_near_expiry,
    ));
}

#[test]
fn stale_takeover() {
    run(Scenario::new("stale-takeover", faults::stale_takeover));
}

#[test]
fn notice_missed() {
    run(Scenario::new("notice-missed", faults::notice_missed));
}

#[test]
fn disk_full() {
    if let Err(e) = diskfull::available() {
        println!("scenario=disk-full skipped: {e}");
        return;
    }
    let mut s = Scenario::new("disk-full", diskfull::disk_full);
    // The filled node gets its leaderships back after its restarts.
    s.opts.rebalance = true;
    run(s);
}

#[test]
fn clock_skew() {
    if let Err(e) = skew::available() {
        println!("scenario=clock-skew skipped: {e}");
        return;
    }
    let mut s = Scenario::new("clock-skew", skew::clock_skew);
    // Keys 8..12, one per partition, get TTLs of 1-3 s.
    s.ttl_keys = 4;
    s.ttl_slack_ms = skew::skew_ms(runner::seed()).unsigned_abs() + skew::MARGIN_MS;
    run(s);
}

/// Runs a network scenario inside its own network namespace (`test` is
/// the test function's name, re-run there).
fn net(test: &str, mut s: Scenario) {
    if !netpart::inside() {
        let bound = std::time::Duration::from_secs_f64(runner::secs() + 300.0);
        let _one = ONE_AT_A_TIME.lock();
        netpart::in_netns(test, bound);
        return;
    }
    s.network = true;
    runner::run(s);
}

#[test]
fn partition_leader() {
    let s = Scenario::new("partition-leader", faults::partition_leader);
    net("partition_leader", s);
}

#[test]
fn partition_zk() {
    let s = Scenario::new("partition-zk", faults::partition_zk);
    net("partition_zk", s);
}

#[test]
fn partition_controller() {
    let s = Scenario::new("partition-controller", faults::partition_controller);
    net("partition_controller", s);
}

#[test]
fn leader_mute() {
    let s = Scenario::new("leader-mute", faults::leader_mute);
    net("leader_mute", s);
}

/// Checks a saved history: `TORTURE_CHECK=path cargo test --profile ci
/// --no-default-features --features caskade/failpoints --test torture --
/// --nocapture
/// check_saved_history` (does nothing
/// without the variable).
#[test]
fn check_saved_history() {
    let Some(path) = std::env::var_os("TORTURE_CHECK") else {
        return;
    };
    let h = history::History::load(std::path::Path::new(&path)).expect("load the history");
    let report = linear::check(&h);
    for (_, text) in &report.violations {
        println!("{text}");
    }
    println!(
        "{} operations, {} keys, linearizable={}",
        h.ops.len(),
        report.keys,
        report.word()
    );
    assert_eq!(report.word(), "yes");
}
