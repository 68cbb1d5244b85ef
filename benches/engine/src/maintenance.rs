//! Benchmarks 2 to 4: recovery time, RAM per key, merge under load.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use caskade::storage::{Bitcask, Durability, Engine, MergeOptions, Options, SetOptions};
use hdrhistogram::Histogram;

use crate::engines::Res;
use crate::{Rng, drop_page_cache, fmt_ns, fmt_rate, fresh_dir, histogram, key};

/// Options with automatic merge off (merges run only when asked).
fn opts(fsync: Durability, cache_bytes: u64) -> Options {
    Options {
        fsync,
        cache_bytes,
        merge: MergeOptions {
            dead_ratio: 0.0,
            ..MergeOptions::default()
        },
        ..Options::default()
    }
}

/// Writes keys `0..n` with `value`, one thread.
fn load(b: &Bitcask, n: u64, value: &Bytes) -> Res<()> {
    for i in 0..n {
        b.set(&key(i), value.clone(), SetOptions::default())?;
    }
    Ok(())
}

// ---------------------------------------------------------------- recovery

/// Arguments of `recovery`.
#[derive(clap::Args, Clone)]
pub struct RecoveryArgs {
    /// Key counts.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub keys: Vec<u64>,
}

impl Default for RecoveryArgs {
    fn default() -> Self {
        RecoveryArgs {
            keys: vec![1_000_000, 10_000_000],
        }
    }
}

fn remove_hints(dir: &Path) -> Res<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "hint") {
            std::fs::remove_file(p)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Opens `dir` (after dropping the page cache if `cold`); the open time.
fn timed_open(dir: &Path, n: u64, cold: bool) -> Res<Option<Duration>> {
    if cold && !drop_page_cache() {
        return Ok(None);
    }
    let t0 = Instant::now();
    let b = Bitcask::open(dir, opts(Durability::Never, 64 << 20))?;
    let el = t0.elapsed();
    let keys = b.status()?.keys;
    assert_eq!(keys, n, "recovered key count");
    b.close()?;
    Ok(Some(el))
}

/// Runs the `recovery` benchmark and prints its table.
pub fn recovery(a: &RecoveryArgs, dir: &Path, quick: bool) -> Res<()> {
    let keys = if quick { vec![200_000] } else { a.keys.clone() };
    let value = Bytes::from(vec![0x42u8; 100]);
    let mut rows = Vec::new();
    for n in keys {
        let d = dir.join(format!("recovery-{n}"));
        fresh_dir(&d)?;
        let b = Bitcask::open(&d, opts(Durability::Never, 0))?;
        let t0 = Instant::now();
        load(&b, n, &value)?;
        let load_secs = t0.elapsed().as_secs_f64();
        b.write_missing_hints()?;
        let st = b.status()?;
        b.close()?;
        drop(b);
        eprintln!(
            "  recovery: {n} keys loaded in {load_secs:.1} s, {} segments, {} MiB",
            st.segments,
            st.disk_bytes >> 20
        );
        let mut m = |label: &str, hints: bool| -> Res<()> {
            for cold in [true, false] {
                if !hints {
                    remove_hints(&d)?;
                }
                let t = timed_open(&d, n, cold)?;
                eprintln!("  recovery {n} {label} cold={cold}: {t:?}");
                rows.push((n, st.segments, st.disk_bytes, label.to_string(), cold, t));
            }
            Ok(())
        };
        m("hints", true)?;
        m("no hints", false)?;
        std::fs::remove_dir_all(&d)?;
    }
    println!("\n#### Recovery (open) time, 16 B keys, 100 B values\n");
    println!("| keys | segments | disk | hint files | page cache | open time | keys/s |");
    println!("|---:|---:|---:|---|---|---:|---:|");
    for (n, segs, bytes, label, cold, t) in rows {
        let (time, rate) = match t {
            Some(t) => (
                format!("{:.2} s", t.as_secs_f64()),
                fmt_rate(n as f64 / t.as_secs_f64()),
            ),
            None => ("n/a (cannot drop caches)".into(), "-".into()),
        };
        let cache = if cold { "cold" } else { "warm" };
        println!(
            "| {n} | {segs} | {} MiB | {label} | {cache} | {time} | {rate} |",
            bytes >> 20
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- RAM

/// Arguments of `ram`.
#[derive(clap::Args, Clone)]
pub struct RamArgs {
    /// Key counts (each measured in a fresh child process).
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    pub keys: Vec<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub value_bytes: usize,
}

impl Default for RamArgs {
    fn default() -> Self {
        RamArgs {
            keys: vec![1_000_000, 10_000_000],
            value_bytes: 8,
        }
    }
}

/// `(VmRSS, RssAnon)` of this process in bytes. VmRSS also counts pages of
/// mapped files (sealed segments that the janitor scanned for hints).
fn rss() -> Res<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> Res<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or("no such field")?;
        let kb: u64 = line.split_whitespace().nth(1).ok_or("no value")?.parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

/// Bytes a hashbrown table of 48-byte buckets takes after `n` one-by-one
/// inserts: the smallest power-of-two bucket count whose 7/8 holds `n`,
/// times (48 B bucket + 1 control byte), plus the 16 trailing control bytes.
fn hashbrown_bytes(n: u64) -> u64 {
    let mut buckets = 4u64;
    loop {
        let cap = if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        };
        if cap >= n {
            return buckets * 49 + 16;
        }
        buckets *= 2;
    }
}

/// The child side of `ram`: prints `rss_before rss_after anon_before
/// anon_after keys`.
pub fn ram_child(dir: &Path, n: u64, value_bytes: usize) -> Res<()> {
    let d = dir.join(format!("ram-{n}"));
    fresh_dir(&d)?;
    let value = Bytes::from(vec![7u8; value_bytes]);
    let b = Bitcask::open(&d, opts(Durability::Never, 0))?;
    let before = rss()?;
    load(&b, n, &value)?;
    let after = rss()?;
    let keys = b.status()?.keys;
    println!("{} {} {} {} {keys}", before.0, after.0, before.1, after.1);
    b.close()?;
    drop(b);
    std::fs::remove_dir_all(&d)?;
    Ok(())
}

/// Runs the `ram` benchmark and prints its table.
pub fn ram(a: &RamArgs, dir: &Path, quick: bool) -> Res<()> {
    let keys = if quick { vec![200_000] } else { a.keys.clone() };
    let exe = std::env::current_exe()?;
    println!(
        "\n#### RAM per key: 16 B keys, {} B values, cache off (RSS growth / keys)\n",
        a.value_bytes
    );
    println!(
        "| keys | VmRSS before → after | VmRSS growth / key | RssAnon growth / key | model / key (64 shards × hashbrown) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in keys {
        let out = std::process::Command::new(&exe)
            .arg("--dir")
            .arg(dir)
            .arg("ram-child")
            .arg("--keys")
            .arg(n.to_string())
            .arg("--value-bytes")
            .arg(a.value_bytes.to_string())
            .output()?;
        if !out.status.success() {
            return Err(
                format!("ram child failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let v: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let (before, after, anon0, anon1, k) = (v[0], v[1], v[2], v[3], v[4]);
        assert_eq!(k, n);
        let model = 64 * hashbrown_bytes(n.div_ceil(64));
        println!(
            "| {n} | {} → {} MiB | {:.1} B | {:.1} B | {:.1} B |",
            before >> 20,
            after >> 20,
            (after - before) as f64 / n as f64,
            (anon1 - anon0) as f64 / n as f64,
            model as f64 / n as f64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- merge

/// Arguments of `merge`.
#[derive(clap::Args, Clone)]
pub struct MergeArgs {
    /// Live keys.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Times every key is overwritten before the merge (dead versions).
    #[arg(long, default_value_t = 5)]
    pub overwrites: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Seconds of idle (no merge) measurement.
    #[arg(long, default_value_t = 10.0)]
    pub idle_secs: f64,
    /// Foreground gets per second (one thread, paced).
    #[arg(long, default_value_t = 20_000)]
    pub get_rate: u64,
    /// Foreground puts per second (one thread, paced).
    #[arg(long, default_value_t = 5_000)]
    pub put_rate: u64,
}

impl Default for MergeArgs {
    fn default() -> Self {
        MergeArgs {
            keys: 1_000_000,
            overwrites: 5,
            value_bytes: 100,
            idle_secs: 10.0,
            get_rate: 20_000,
            put_rate: 5_000,
        }
    }
}

/// Per-phase histograms of one foreground thread: idle, merging.
type Phases = [(u64, Histogram<u64>); 2];

fn paced(phase: &AtomicU8, rate: u64, mut op: impl FnMut()) -> Phases {
    let mut out: Phases = [(0, histogram()), (0, histogram())];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = Instant::now();
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p > 1 {
            return out;
        }
        let t0 = Instant::now();
        op();
        let el = t0.elapsed().as_nanos() as u64;
        out[p as usize].0 += 1;
        out[p as usize].1.record(el).expect("record");
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(100) {
            next = now; // fell far behind: do not burst to catch up
        }
    }
}

/// Runs the `merge` benchmark and prints its tables.
pub fn merge(a: &MergeArgs, dir: &Path, quick: bool) -> Res<()> {
    let (keys, overwrites, idle) = if quick {
        (200_000, 2, 2.0)
    } else {
        (a.keys, a.overwrites, a.idle_secs)
    };
    let d = dir.join("merge");
    fresh_dir(&d)?;
    // Default options (every_ms 1000, 64 MiB cache, 64 MiB/s merge throttle),
    // automatic merge off so the merge starts exactly when measured.
    let mut o = opts(Durability::EveryMs(1000), 64 << 20);
    if quick {
        o.segment_bytes = 8 << 20; // so the small quick log has sealed segments
    }
    let b = Bitcask::open(&d, o)?;
    let value = Bytes::from(vec![1u8; a.value_bytes]);
    let t0 = Instant::now();
    for _ in 0..=overwrites {
        load(&b, keys, &value)?;
    }
    b.flush()?;
    let before = b.status()?;
    eprintln!(
        "  merge: wrote {} records in {:.1?}: {} MiB on disk, {} MiB dead",
        keys * (overwrites + 1),
        t0.elapsed(),
        before.disk_bytes >> 20,
        before.dead_bytes >> 20
    );
    let phase = AtomicU8::new(0);
    let failed = AtomicBool::new(false);
    let (report, merge_secs, gets, puts) = std::thread::scope(|s| -> Res<_> {
        let g = s.spawn(|| {
            let mut rng = Rng::new(1);
            paced(&phase, a.get_rate, || {
                if b.get(&key(rng.below(keys))).ok().flatten().is_none() {
                    failed.store(true, Ordering::Relaxed);
                }
            })
        });
        let p = s.spawn(|| {
            let mut rng = Rng::new(2);
            paced(&phase, a.put_rate, || {
                if b.set(&key(rng.below(keys)), value.clone(), SetOptions::default())
                    .is_err()
                {
                    failed.store(true, Ordering::Relaxed);
                }
            })
        });
        std::thread::sleep(Duration::from_secs_f64(idle));
        phase.store(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let report = b.merge();
        let merge_secs = t0.elapsed().as_secs_f64();
        phase.store(2, Ordering::Relaxed);
        let gets = g.join().expect("get thread");
        let puts = p.join().expect("put thread");
        Ok((report?, merge_secs, gets, puts))
    })?;
    assert!(!failed.load(Ordering::Relaxed), "a foreground op failed");
    let after = b.status()?;
    b.close()?;
    drop(b);
    std::fs::remove_dir_all(&d)?;
    println!(
        "\n#### Merge under load: {keys} keys × {} versions of {} B; merge of {} segments took {merge_secs:.1} s\n",
        overwrites + 1,
        a.value_bytes,
        report.inputs
    );
    println!("| foreground op | phase | ops | rate | p50 | p99 | p99.9 | max |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (name, phases) in [("get", &gets), ("put", &puts)] {
        for (i, label) in ["idle", "during merge"].iter().enumerate() {
            let (n, h) = &phases[i];
            let secs = if i == 0 { idle } else { merge_secs };
            println!(
                "| {name} | {label} | {n} | {}/s | {} | {} | {} | {} |",
                fmt_rate(*n as f64 / secs),
                fmt_ns(h.value_at_quantile(0.5)),
                fmt_ns(h.value_at_quantile(0.99)),
                fmt_ns(h.value_at_quantile(0.999)),
                fmt_ns(h.max())
            );
        }
    }
    println!("\n| | disk bytes | dead bytes | segments |");
    println!("|---|---:|---:|---:|");
    println!(
        "| before merge | {} MiB | {} MiB | {} |",
        before.disk_bytes >> 20,
        before.dead_bytes >> 20,
        before.segments
    );
    println!(
        "| after merge | {} MiB | {} MiB | {} |",
        after.disk_bytes >> 20,
        after.dead_bytes >> 20,
        after.segments
    );
    println!(
        "\nMerge report: {} input segments ({} MiB) → {} outputs ({} MiB); {} records kept, {} dropped.",
        report.inputs,
        report.bytes_before >> 20,
        report.outputs,
        report.bytes_after >> 20,
        report.records_kept,
        report.records_dropped
    );
    Ok(())
}
