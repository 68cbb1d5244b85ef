//! A power-loss model for one standalone engine (`power-loss` scenario of
//! `make torture`, docs/RELIABILITY.md): concurrent writers, then a "power
//! loss" that keeps only what an fsync covered, a reopen, and exact checks.
//!
//! The model. The `bitcask::fsync` failpoint (every data fsync: group
//! commit under `always`, the background flush under `every_ms`, the seal
//! fsync at a roll) runs a callback that records the length of every
//! segment file at that instant; the bytes below it are on disk once that
//! fsync returns. The callback does not say which file is synced, so every
//! segment is credited: sealed segments never grow after their seal fsync,
//! and the only file that can hold unsynced bytes besides the synced one is
//! a segment created by a roll racing a background flush (the model is
//! then more generous than a disk, never stricter). A segment's directory
//! entry is made durable by `roll` (create, directory fsync) before any
//! byte is written to it; a file no fsync has seen is dropped.
//!
//! The crash. Holding the model's lock (so no fsync can complete, and no
//! write waiting for one can be acknowledged), the acknowledged writes are
//! read, then each file is copied to a crash directory cut to its durable
//! length, plus, in the torn variants, a seeded random part of the
//! unsynced tail (pages the kernel happened to write back; a record may be
//! cut in the middle). The engine is then reopened from the copy.
//!
//! The checks, exact:
//! - the recovered log is a prefix of the live engine's log, record by
//!   record (offset, epoch, kind, key, value): some suffix may be lost,
//!   never a gap, and no record appears half-applied or altered;
//! - `fsync: always`: every acknowledged write (its answer's `until`) is in
//!   that prefix; `every_ms`: every write acknowledged before the last
//!   completed fsync started is;
//! - in the cut-only variant the prefix holds exactly the records inside
//!   the durable bytes (recovery drops nothing it could keep);
//! - every key reads as the replay of the prefix says (a deleted key stays
//!   deleted, a value is the last one written).
//!
//! Failpoints are process-wide: the tests of this file run one at a time.
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{Bitcask, Durability, Engine, Options, SetOptions, WriteOp};
use fail::FailScenario;
use parking_lot::Mutex;

/// One at a time with the torture scenarios too (failpoints are global,
/// and the scenarios' timing matters).
use crate::ONE_AT_A_TIME as SERIAL;

/// What every fsync so far made durable.
struct Durable {
    /// The live engine's directory.
    dir: PathBuf,
    /// Segment file name -> length covered by an fsync.
    len: BTreeMap<String, u64>,
    /// Acknowledged writes when the last fsync started: (writer, seq).
    acked_at_fsync: usize,
}

/// The model, `None` outside a run (the reopen's own fsyncs are ignored).
static MODEL: Mutex<Option<Durable>> = Mutex::new(None);

/// Acknowledged writes: (until, key, op summary), in acknowledgement order.
static ACKED: Mutex<Vec<Acked>> = Mutex::new(Vec::new());

/// One acknowledged write.
#[derive(Clone, Debug)]
struct Acked {
    /// Every record the answer depends on is below this offset.
    until: u64,
    /// The key.
    key: String,
    /// `set <value>` or `del`.
    what: String,
}

/// The `bitcask::fsync` callback: credits every segment's current length.
fn on_fsync() {
    let acked = ACKED.lock().len();
    let mut m = MODEL.lock();
    let Some(d) = m.as_mut() else { return };
    let Ok(entries) = std::fs::read_dir(&d.dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".log") {
            continue;
        }
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        let slot = d.len.entry(name).or_insert(0);
        *slot = (*slot).max(len);
    }
    d.acked_at_fsync = acked;
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_000)
                .unwrap_or(1)
        })
}

fn opts(fsync: Durability) -> Options {
    let mut o = Options {
        fsync,
        // Rolls every few hundred records.
        segment_bytes: 16 << 10,
        cache_bytes: 1 << 20,
        ..Options::default()
    };
    o.limits.max_value_bytes = 1024;
    o.limits.max_key_bytes = 32;
    // No automatic merge: the model covers segment files only.
    o.merge.dead_ratio = 0.0;
    o
}

/// A record as compared: offset, epoch, kind, key, value.
type Rec = (u64, u32, u8, Vec<u8>, Vec<u8>);

fn read_all(e: &Bitcask) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = e.read_log(from, 1 << 20).expect("read_log");
        let Some(last) = batch.last() else { break };
        from = last.header.offset + 1;
        for r in &batch {
            out.push((
                r.header.offset,
                r.header.epoch,
                r.header.kind as u8,
                r.key().to_vec(),
                r.value().to_vec(),
            ));
        }
    }
    out
}

/// Copies `src` to `dst` cut at `keep` bytes.
fn copy_prefix(src: &Path, dst: &Path, keep: u64) -> std::io::Result<()> {
    let mut buf = Vec::new();
    std::fs::File::open(src)?.read_to_end(&mut buf)?;
    let keep = (keep as usize).min(buf.len());
    let mut f = std::fs::File::create(dst)?;
    f.write_all(&buf[..keep])?;
    Ok(())
}

/// Runs writers on a fresh engine for `secs`, cuts the power, reopens, and
/// checks. `torn`: keep a random part of each unsynced tail.
fn power_loss(name: &str, fsync: Durability, torn: bool) {
    let _serial = SERIAL.lock();
    let scenario = FailScenario::setup();
    let seed = seed();
    let secs = std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(4.0)
        .min(30.0);
    let live_dir = tempfile::tempdir().expect("temp dir");
    let crash_dir = tempfile::tempdir().expect("temp dir");
    ACKED.lock().clear();
    *MODEL.lock() = Some(Durable {
        dir: live_dir.path().to_path_buf(),
        len: BTreeMap::new(),
        acked_at_fsync: 0,
    });
    fail::cfg_callback("bitcask::fsync", on_fsync).expect("failpoint");
    let engine = Arc::new(Bitcask::open(live_dir.path(), opts(fsync)).expect("open"));

    // Writers: sets and deletes on a shared key space (overwrites, deletes
    // of live and absent keys), each value unique.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x5851_F42D_4C95_7F2D));
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("key{}", rng.below(40));
                    let (op, what) = if rng.below(100) < 75 {
                        let v = format!("w{w}-{seq}-{}", "x".repeat(rng.below(200) as usize));
                        (
                            WriteOp::Set(Bytes::from(v.clone()), SetOptions::default()),
                            format!("set {v}"),
                        )
                    } else {
                        (WriteOp::Delete, "del".to_string())
                    };
                    match engine.write(key.as_bytes(), op) {
                        Ok(wr) => ACKED.lock().push(Acked {
                            until: wr.until,
                            key,
                            what,
                        }),
                        Err(e) => panic!("write failed: {e}"),
                    }
                }
            })
        })
        .collect();

    // The power loss, at a seeded instant.
    let mut rng = Rng(seed);
    let load = Duration::from_secs_f64(secs * (0.5 + rng.below(500) as f64 / 1000.0));
    std::thread::sleep(load);
    let (acked, acked_at_fsync, kept) = {
        let mut m = MODEL.lock();
        let d = m.take().expect("model");
        let acked = ACKED.lock().clone();
        let mut kept = BTreeMap::new();
        for (file, &durable) in &d.len {
            let src = live_dir.path().join(file);
            let now = std::fs::metadata(&src).map(|m| m.len()).unwrap_or(0);
            let extra = match torn && now > durable {
                true => rng.below(now - durable + 1),
                false => 0,
            };
            copy_prefix(&src, &crash_dir.path().join(file), durable + extra)
                .expect("copy a segment");
            kept.insert(file.clone(), (durable, extra));
        }
        (acked, d.acked_at_fsync, kept)
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let live = read_all(&engine);
    engine.close().expect("close the live engine");
    drop(engine);

    // Reopen the crashed copy (its own fsyncs are not modelled).
    let started = Instant::now();
    let recovered = Bitcask::open(crash_dir.path(), opts(fsync)).expect("reopen after power loss");
    let reopen = started.elapsed();
    let got = read_all(&recovered);
    let mut problems = Vec::new();

    // 1. A prefix of the live log, record by record.
    if got.len() > live.len() {
        problems.push(format!(
            "recovered {} records, the live log had {}",
            got.len(),
            live.len()
        ));
    }
    for (i, (a, b)) in got.iter().zip(&live).enumerate() {
        if a != b {
            problems.push(format!(
                "record {i} differs: recovered {:?}/{:?}/{} at offset {}, live {:?}/{:?}/{} at offset {}",
                a.2,
                String::from_utf8_lossy(&a.3),
                a.4.len(),
                a.0,
                b.2,
                String::from_utf8_lossy(&b.3),
                b.4.len(),
                b.0,
            ));
            break;
        }
    }
    let end = got.last().map(|r| r.0 + 1).unwrap_or(0);
    if recovered.next_offset() != end {
        problems.push(format!(
            "recovered next_offset {} but its last record is {end}",
            recovered.next_offset()
        ));
    }

    // 2. Acknowledged writes survive as the policy promises.
    let must = match fsync {
        Durability::Always => acked.len(),
        _ => acked_at_fsync,
    };
    for a in acked.iter().take(must) {
        if a.until > end {
            problems.push(format!(
                "acknowledged {} of {} (until {}) lost: recovered log ends at {end}",
                a.what, a.key, a.until
            ));
            break;
        }
    }

    // 3. Cut-only under `always` (the one writer fsyncs what it wrote, so
    // a credited length never ends inside a record): recovery keeps every
    // durable byte. (Under `every_ms` the flusher may see a write half
    // done; recovery rightly drops that half record.)
    if !torn && fsync == Durability::Always {
        let durable_total: u64 = kept.values().map(|(d, _)| d).sum();
        let recovered_bytes: u64 = std::fs::read_dir(crash_dir.path())
            .expect("crash dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        if recovered_bytes != durable_total {
            problems.push(format!(
                "recovery cut {} of {durable_total} durable segment bytes",
                durable_total.saturating_sub(recovered_bytes)
            ));
        }
    }

    // 4. Every key reads as the replay of the prefix says.
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for r in &got {
        // Kinds: 1 = put, 2 = delete (no TTLs are written).
        match r.2 {
            1 => model.insert(r.3.clone(), r.4.clone()),
            _ => model.remove(&r.3),
        };
    }
    for k in 0..40 {
        let key = format!("key{k}");
        let want = model.get(key.as_bytes()).cloned();
        let have = recovered
            .get(key.as_bytes())
            .expect("get")
            .map(|b| b.to_vec());
        if want != have {
            problems.push(format!(
                "{key} reads {:?}, the recovered log says {:?}",
                have.map(|v| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned()),
                want.map(|v| String::from_utf8_lossy(&v[..v.len().min(12)]).into_owned()),
            ));
        }
    }
    let _ = recovered.close();
    scenario.teardown();

    let torn_bytes: u64 = kept.values().map(|(_, e)| e).sum();
    eprintln!(
        "  {} segments, {torn_bytes} unsynced bytes kept, {} of {} records recovered, reopen {reopen:?}",
        kept.len(),
        got.len(),
        live.len()
    );
    println!(
        "scenario={name} ops={} acked={} lost={} linearizable={} seed={seed}",
        acked.len(),
        acked.len(),
        problems.iter().filter(|p| p.contains("lost")).count(),
        if problems.is_empty() { "yes" } else { "no" },
    );
    assert!(
        problems.is_empty(),
        "scenario {name} failed (replay with TORTURE_SEED={seed}):\n{}",
        problems.join("\n")
    );
}

#[test]
fn power_loss_always() {
    power_loss("power-loss-always", Durability::Always, false);
}

#[test]
fn power_loss_always_torn() {
    power_loss("power-loss-always-torn", Durability::Always, true);
}

#[test]
fn power_loss_every_ms() {
    power_loss("power-loss-every-ms", Durability::EveryMs(200), false);
}

#[test]
fn power_loss_every_ms_torn() {
    power_loss("power-loss-every-ms-torn", Durability::EveryMs(200), true);
}
