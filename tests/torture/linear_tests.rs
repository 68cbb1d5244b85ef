//! Tests of the checkers themselves: histories they must accept and
//! histories they must reject. Times are in ms for readability.

use super::checks;
use super::history::{Cond, Func, History, Op, Outcome, Ret};
use super::linear::{self, Verdict};

/// A history built op by op.
#[derive(Default)]
struct H(History);

impl H {
    fn op(&mut self, client: usize, t: (u64, u64), key: &str, f: Func, out: Outcome) -> &mut H {
        self.0.push(Op {
            id: 0,
            client,
            process: client as u64,
            key: key.into(),
            f,
            invoke: t.0 * 1_000_000,
            complete: t.1 * 1_000_000,
            outcome: out,
        });
        self
    }
    fn set(&mut self, c: usize, t: (u64, u64), v: &str, out: Outcome) -> &mut H {
        let f = Func::Set {
            value: v.into(),
            cond: Cond::Always,
        };
        self.op(c, t, "k", f, out)
    }
    fn cset(&mut self, c: usize, t: (u64, u64), v: &str, cond: Cond, w: bool) -> &mut H {
        let f = Func::Set {
            value: v.into(),
            cond,
        };
        self.op(c, t, "k", f, Outcome::Ok(Ret::Written(w)))
    }
    fn get(&mut self, c: usize, t: (u64, u64), v: Option<&str>) -> &mut H {
        let r = Ret::Value(v.map(String::from));
        self.op(c, t, "k", Func::Get, Outcome::Ok(r))
    }
    fn del(&mut self, c: usize, t: (u64, u64), existed: bool) -> &mut H {
        self.op(c, t, "k", Func::Del, Outcome::Ok(Ret::Existed(existed)))
    }
    fn verdict(&self) -> Verdict {
        let ops: Vec<&Op> = self.0.ops.iter().collect();
        linear::check_key(&ops)
    }
    fn accepted(&self) -> bool {
        self.verdict() == Verdict::Linearizable
    }
    fn rejected(&self) -> bool {
        matches!(self.verdict(), Verdict::Violation { .. })
    }
}

fn ok() -> Outcome {
    Outcome::Ok(Ret::Written(true))
}
fn info() -> Outcome {
    Outcome::Info("timeout".into())
}
fn fail() -> Outcome {
    Outcome::Fail("not leader".into())
}

#[test]
fn accepts_sequential_and_concurrent_histories() {
    assert!(H::default().accepted());
    assert!(
        H::default()
            .set(0, (0, 1), "a", ok())
            .get(1, (2, 3), Some("a"))
            .accepted()
    );
    // A read concurrent with a write may see either side.
    let mut h = H::default();
    h.set(0, (0, 10), "a", ok())
        .get(1, (1, 2), None)
        .get(1, (3, 4), Some("a"))
        .get(2, (5, 6), Some("a"));
    assert!(h.accepted());
    // Two concurrent writes: reads after both agree on the last one.
    let mut h = H::default();
    h.set(0, (0, 10), "a", ok())
        .set(1, (0, 10), "b", ok())
        .get(2, (11, 12), Some("a"))
        .get(2, (13, 14), Some("a"));
    assert!(h.accepted());
    // Delete and expire report existence.
    let mut h = H::default();
    h.del(0, (0, 1), false)
        .set(0, (2, 3), "a", ok())
        .del(1, (4, 5), true);
    h.op(
        1,
        (6, 7),
        "k",
        Func::Expire { ttl_ms: 60_000 },
        Outcome::Ok(Ret::Existed(false)),
    );
    h.get(2, (8, 9), None);
    assert!(h.accepted());
}

#[test]
fn accepts_unknown_operations_either_way() {
    // An unknown write that was read: it happened.
    let mut h = H::default();
    h.set(0, (0, 1), "a", info()).get(1, (5, 6), Some("a"));
    assert!(h.accepted());
    // An unknown write never read: it may not have happened.
    let mut h = H::default();
    h.set(0, (0, 1), "a", info()).get(1, (5, 6), None);
    assert!(h.accepted());
    // It may take effect long after its invocation (still in flight).
    let mut h = H::default();
    h.set(0, (0, 1), "a", info())
        .set(1, (2, 3), "b", ok())
        .get(1, (4, 5), Some("b"))
        .get(1, (6, 7), Some("a"));
    assert!(h.accepted());
    // A failed write is ignored.
    let mut h = H::default();
    h.set(0, (0, 1), "a", fail()).get(1, (2, 3), None);
    assert!(h.accepted());
}

#[test]
fn accepts_conditional_sets_that_agree() {
    let mut h = H::default();
    h.cset(0, (0, 10), "a", Cond::Nx, true)
        .cset(1, (0, 10), "b", Cond::Nx, false)
        .cset(2, (11, 12), "c", Cond::Xx, true)
        .get(0, (13, 14), Some("c"))
        .del(0, (15, 16), true)
        .cset(1, (17, 18), "d", Cond::Xx, false)
        .get(0, (19, 20), None);
    assert!(h.accepted());
}

#[test]
fn rejects_a_stale_read() {
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok())
        .set(0, (2, 3), "b", ok())
        .get(1, (4, 5), Some("a"));
    assert!(h.rejected());
}

#[test]
fn rejects_a_lost_write() {
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok()).get(1, (2, 3), None);
    assert!(h.rejected());
}

#[test]
fn rejects_a_read_of_a_failed_or_unwritten_value() {
    let mut h = H::default();
    h.set(0, (0, 1), "a", fail()).get(1, (2, 3), Some("a"));
    assert!(h.rejected());
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok()).get(1, (2, 3), Some("zzz"));
    assert!(h.rejected());
}

#[test]
fn rejects_a_read_before_the_write_was_invoked() {
    let mut h = H::default();
    h.get(1, (0, 1), Some("a")).set(0, (2, 3), "a", info());
    assert!(h.rejected());
}

#[test]
fn rejects_reads_that_flip_between_concurrent_writes() {
    let mut h = H::default();
    h.set(0, (0, 10), "a", ok())
        .set(1, (0, 10), "b", ok())
        .get(2, (1, 2), Some("a"))
        .get(2, (3, 4), Some("b"))
        .get(2, (5, 6), Some("a"));
    assert!(h.rejected());
}

#[test]
fn rejects_an_unknown_write_that_appears_then_vanishes() {
    let mut h = H::default();
    h.set(0, (0, 1), "a", info())
        .get(1, (2, 3), Some("a"))
        .get(1, (4, 5), None);
    assert!(h.rejected());
}

#[test]
fn rejects_two_nx_winners_and_a_wrong_existence() {
    let mut h = H::default();
    h.cset(0, (0, 10), "a", Cond::Nx, true)
        .cset(1, (0, 10), "b", Cond::Nx, true);
    assert!(h.rejected());
    let mut h = H::default();
    h.del(0, (0, 1), true).set(1, (2, 3), "a", ok());
    assert!(h.rejected());
    let mut h = H::default();
    h.set(1, (0, 1), "a", ok())
        .cset(0, (2, 3), "b", Cond::Xx, false);
    assert!(h.rejected());
}

#[test]
fn a_saved_history_loads_back_and_checks_the_same() {
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok())
        .set(1, (2, 3), "b", info())
        .set(2, (2, 3), "c", fail())
        .get(0, (4, 5), Some("a"))
        .del(0, (6, 7), true);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    h.0.save(&path).expect("save");
    let back = History::load(&path).expect("load");
    let mut a = h.0.ops.clone();
    let mut b = back.ops.clone();
    for v in [&mut a, &mut b] {
        v.sort_by_key(|o| (o.invoke, o.client));
        for o in v.iter_mut() {
            o.id = 0;
        }
    }
    assert_eq!(a, b);
    assert_eq!(linear::check(&back).word(), "yes");
}

#[test]
fn a_search_with_many_unknown_writes_stays_bounded() {
    // 12 clients, 40 rounds: every round one client's write times out.
    let mut h = H::default();
    for r in 0..40u64 {
        for c in 0..12usize {
            let t = (r * 10, r * 10 + 5);
            let v = format!("{c}-{r}");
            if c == (r as usize) % 12 {
                h.set(c, t, &v, info());
            } else if c % 2 == 0 {
                h.set(c, t, &v, ok());
            } else {
                h.get(c, t, None);
            }
        }
    }
    // The reads of None are wrong after the first write; the checker must
    // say so quickly, not give up.
    assert!(h.rejected());
}

#[test]
fn lost_write_checker_finds_a_lost_ack_and_ignores_later_unknowns() {
    // Acked "a", then the final read finds nothing: lost.
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok());
    let final_reads = vec![("k".to_string(), None)];
    let lost = checks::lost_writes(&h.0, &final_reads);
    assert_eq!(lost.len(), 1, "{lost:?}");
    // An unknown write after it explains a different final value.
    h.set(1, (2, 3), "b", info());
    let final_reads = vec![("k".to_string(), Some("b".to_string()))];
    assert!(checks::lost_writes(&h.0, &final_reads).is_empty());
    // A failed write does not.
    let mut h = H::default();
    h.set(0, (0, 1), "a", ok()).set(1, (2, 3), "b", fail());
    let final_reads = vec![("k".to_string(), Some("b".to_string()))];
    assert_eq!(checks::lost_writes(&h.0, &final_reads).len(), 1);
    assert_eq!(checks::failed_visible(&h.0, &final_reads).len(), 1);
}

#[test]
fn hw_checker_rejects_a_watermark_going_back() {
    use checks::HwSample;
    let s = |node: &str, pid: i32, epoch: u64, leader: bool, hw: u64, leo: u64, t: u64| HwSample {
        node: node.into(),
        pid,
        partition: 0,
        leader_epoch: epoch,
        leads: leader,
        hw,
        log_end: leo,
        sent: t,
        received: t + 1,
    };
    let good = vec![
        s("n1", 1, 1, true, 5, 5, 0),
        s("n1", 1, 1, true, 7, 7, 10),
        // A restarted node starts from its checkpoint: a new incarnation.
        s("n1", 2, 1, false, 3, 7, 20),
        s("n2", 5, 2, true, 7, 9, 30),
    ];
    assert!(checks::hw_violations(&good).is_empty());
    let back = vec![s("n1", 1, 1, true, 7, 7, 0), s("n1", 1, 1, true, 6, 7, 10)];
    assert_eq!(checks::hw_violations(&back).len(), 1);
    // A leader elected later whose log ends below a committed offset.
    let short = vec![s("n1", 1, 1, true, 7, 7, 0), s("n2", 5, 2, true, 4, 4, 10)];
    assert_eq!(checks::hw_violations(&short).len(), 1);
}
