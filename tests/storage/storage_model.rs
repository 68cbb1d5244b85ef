//! Model-based property test: random sequences of set / get / delete /
//! expire / ttl / time moves / merge / sweep / hints / reopen / crash-reopen
//! against the in-memory [`Memory`] engine. The Bitcask engine must give the
//! same answer to every operation and hold the same live keys and values
//! after every step.
//!
//! A "crash" drops the engine without closing it and appends a torn record
//! (random bytes, zeroes, or a cut-off copy of a real record) to the newest
//! segment, as a write interrupted by power loss would leave it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use caskade::storage::{
    Bitcask, Clock, Condition, Durability, Engine, ManualClock, Memory, Options, SetOptions,
};
use proptest::prelude::*;
use tempfile::TempDir;

const T0: u64 = 1_767_225_600_000;

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: u8,
        value: Vec<u8>,
        ttl: Option<u64>,
        condition: u8,
    },
    Get(u8),
    Delete(u8),
    Expire(u8, i64),
    Ttl(u8),
    Advance(u64),
    Merge,
    Sweep,
    Hints,
    Reopen,
    Crash(Tail),
}

#[derive(Clone, Debug)]
enum Tail {
    Random(Vec<u8>),
    Zeroes(usize),
    CutRecord(usize),
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    prop_oneof![
        8 => (key.clone(), prop::collection::vec(any::<u8>(), 0..120), prop::option::of(1u64..3000), 0u8..4)
            .prop_map(|(key, value, ttl, condition)| Op::Set { key, value, ttl, condition }),
        4 => key.clone().prop_map(Op::Get),
        3 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), -100i64..3000).prop_map(|(k, d)| Op::Expire(k, d)),
        2 => key.prop_map(Op::Ttl),
        2 => (0u64..1500).prop_map(Op::Advance),
        1 => Just(Op::Merge),
        1 => Just(Op::Sweep),
        1 => Just(Op::Hints),
        1 => Just(Op::Reopen),
        1 => prop_oneof![
            prop::collection::vec(any::<u8>(), 1..80).prop_map(Tail::Random),
            (1usize..80).prop_map(Tail::Zeroes),
            (1usize..60).prop_map(Tail::CutRecord),
        ].prop_map(Op::Crash),
    ]
}

struct Harness {
    dir: TempDir,
    clock: Arc<ManualClock>,
    opts: Options,
    engine: Option<Bitcask>,
    model: Memory,
}

impl Harness {
    fn engine(&self) -> &Bitcask {
        self.engine.as_ref().unwrap()
    }

    fn reopen(&mut self) {
        self.engine = None;
        self.engine = Some(
            Bitcask::open_with_clock(self.dir.path(), self.opts.clone(), self.clock.clone())
                .unwrap(),
        );
    }

    fn newest_segment(&self) -> std::path::PathBuf {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs.pop().unwrap()
    }

    fn crash(&mut self, tail: &Tail) {
        // A real record to cut short: the next offset, a plausible key.
        let real = {
            let e = self.engine();
            let next = e.next_offset();
            let mut buf = Vec::new();
            buf.extend_from_slice(&[0u8; 4]);
            buf.extend_from_slice(&next.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&0u64.to_le_bytes());
            buf.push(1);
            buf.extend_from_slice(&5u32.to_le_bytes());
            buf.extend_from_slice(&40u32.to_le_bytes());
            buf.extend_from_slice(b"key-1");
            buf.extend_from_slice(&[7u8; 40]);
            let crc = crc32fast::hash(&buf[4..]);
            buf[..4].copy_from_slice(&crc.to_le_bytes());
            buf
        };
        // Drop without the orderly close a shutdown would do is not possible
        // (Drop closes), but close only fsyncs, which a crash of the process
        // does not undo either: the page cache survives it.
        self.engine = None;
        let bytes = match tail {
            Tail::Random(b) => b.clone(),
            Tail::Zeroes(n) => vec![0; *n],
            Tail::CutRecord(n) => real[..(*n).min(real.len() - 1)].to_vec(),
        };
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.newest_segment())
            .unwrap();
        f.write_all(&bytes).unwrap();
        self.reopen();
    }

    fn check_state(&self) -> Result<(), TestCaseError> {
        let e = self.engine();
        let mut got: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
        for k in e.keys().unwrap() {
            got.insert(k.to_vec(), e.get(&k).unwrap().unwrap());
        }
        let mut want: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
        for k in self.model.keys().unwrap() {
            want.insert(k.to_vec(), self.model.get(&k).unwrap().unwrap());
        }
        prop_assert_eq!(got, want);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Set {
                key: k,
                value,
                ttl,
                condition,
            } => {
                let opts = SetOptions {
                    expire_at_ms: ttl.map(|t| self.clock.now_ms() + t),
                    condition: match condition {
                        0 | 1 => Condition::Always,
                        2 => Condition::IfAbsent,
                        _ => Condition::IfPresent,
                    },
                };
                let v = Bytes::from(value.clone());
                let a = self.engine().set(&key(*k), v.clone(), opts).unwrap();
                let b = self.model.set(&key(*k), v, opts).unwrap();
                prop_assert_eq!(a, b, "set {:?}", op);
            }
            Op::Get(k) => {
                prop_assert_eq!(
                    self.engine().get(&key(*k)).unwrap(),
                    self.model.get(&key(*k)).unwrap()
                );
            }
            Op::Delete(k) => {
                prop_assert_eq!(
                    self.engine().delete(&key(*k)).unwrap(),
                    self.model.delete(&key(*k)).unwrap()
                );
            }
            Op::Expire(k, delta) => {
                let at = (self.clock.now_ms() as i64 + delta) as u64;
                prop_assert_eq!(
                    self.engine().expire(&key(*k), at).unwrap(),
                    self.model.expire(&key(*k), at).unwrap()
                );
            }
            Op::Ttl(k) => {
                prop_assert_eq!(
                    self.engine().ttl(&key(*k)).unwrap(),
                    self.model.ttl(&key(*k)).unwrap()
                );
            }
            Op::Advance(ms) => self.clock.advance(*ms),
            Op::Merge => {
                self.engine().merge().unwrap();
            }
            Op::Sweep => {
                self.engine().sweep_expired();
            }
            Op::Hints => {
                self.engine().write_missing_hints().unwrap();
            }
            Op::Reopen => self.reopen(),
            Op::Crash(tail) => self.crash(tail),
        }
        self.check_state()
    }
}

fn run(ops: Vec<Op>, fsync: Durability) -> Result<(), TestCaseError> {
    let dir = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut opts = Options {
        fsync,
        segment_bytes: 600,
        cache_bytes: 4096,
        ..Options::default()
    };
    opts.limits.max_value_bytes = 200;
    opts.limits.max_key_bytes = 16;
    opts.merge.dead_ratio = 0.0;
    let engine = Bitcask::open_with_clock(dir.path(), opts.clone(), clock.clone()).unwrap();
    let model = Memory::new(clock.clone(), opts.limits);
    let mut h = Harness {
        dir,
        clock,
        opts,
        engine: Some(engine),
        model,
    };
    for op in &ops {
        h.step(op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn bitcask_matches_model_fsync_never(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, Durability::Never)?;
    }

    #[test]
    fn bitcask_matches_model_fsync_always(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, Durability::Always)?;
    }
}
