//! Benchmark 1 and 5: put and get throughput / p99, caskade and peers in one
//! run, cell by cell (the engines of one cell run back to back).

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::engines::{self, CACHE_BYTES, Kind, Kv, Policy, Res};
use crate::{Rng, fmt_ns, fmt_rate, fresh_dir, histogram, key};

/// Arguments of `kv`.
#[derive(clap::Args, Clone)]
pub struct KvArgs {
    /// Engines to run (caskade first: ratios are caskade / peer).
    #[arg(long, value_delimiter = ',', default_value = "caskade,fjall,sled,redb")]
    pub engines: Vec<Kind>,
    /// Seconds per cell.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub threads: Vec<usize>,
    /// Value sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,4096")]
    pub values: Vec<usize>,
    /// Keys loaded for the get cells: this many bytes of values.
    #[arg(long, default_value_t = 400 << 20)]
    pub get_bytes: u64,
    /// Skip the put cells.
    #[arg(long)]
    pub no_put: bool,
    /// Skip the get cells.
    #[arg(long)]
    pub no_get: bool,
}

impl Default for KvArgs {
    fn default() -> Self {
        KvArgs {
            engines: vec![Kind::Caskade, Kind::Fjall, Kind::Sled, Kind::Redb],
            secs: 2.0,
            threads: vec![1, 8],
            values: vec![100, 4096],
            get_bytes: 400 << 20,
            no_put: false,
            no_get: false,
        }
    }
}

/// Hot keys of the "cached" get cells: 8192 keys fit in every engine's
/// 64 MiB cache even when each sits in its own 4 KiB block.
const HOT_KEYS: u64 = 8192;
/// At most this many operations per put cell (bounds disk use).
const MAX_PUTS: u64 = 4_000_000;
/// Most operations time one in this many (timing every op would cost ~10%
/// of a cached get); `always` puts time every op.
const SAMPLE: u64 = 8;

/// One measured cell.
struct Cell {
    op: &'static str,
    kind: Kind,
    value: usize,
    threads: usize,
    policy: Policy,
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    per_fsync: Option<f64>,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Runs `op(thread, n)` on `threads` threads for `secs` or `max_ops` in all.
/// `init(thread)` makes per-thread state inside the thread.
fn drive<S, I, F>(
    threads: usize,
    secs: f64,
    max_ops: u64,
    sample: u64,
    init: I,
    op: F,
) -> (u64, f64, Histogram<u64>)
where
    I: Fn(usize) -> S + Sync,
    F: Fn(&mut S, usize, u64, &mut Rng) + Sync,
{
    let barrier = Barrier::new(threads + 1);
    let per_thread = max_ops / threads as u64;
    let (start, results) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op, init) = (&barrier, &op, &init);
                s.spawn(move || {
                    let mut state = init(t);
                    let mut h = histogram();
                    let mut rng = Rng::new(t as u64);
                    barrier.wait();
                    let deadline = Instant::now() + Duration::from_secs_f64(secs);
                    let mut n = 0u64;
                    loop {
                        if n.is_multiple_of(sample) {
                            let t0 = Instant::now();
                            op(&mut state, t, n, &mut rng);
                            h.record(t0.elapsed().as_nanos() as u64).expect("record");
                            n += 1;
                            if t0 >= deadline || n >= per_thread {
                                break;
                            }
                        } else {
                            op(&mut state, t, n, &mut rng);
                            n += 1;
                        }
                    }
                    (n, h)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        (start, results)
    });
    let secs = start.elapsed().as_secs_f64();
    let mut hist = histogram();
    let mut ops = 0;
    for (n, h) in results {
        ops += n;
        hist.add(h).expect("merge histograms");
    }
    (ops, secs, hist)
}

fn put_cell(
    kind: Kind,
    dir: &Path,
    policy: Policy,
    threads: usize,
    value: usize,
    secs: f64,
) -> Res<Cell> {
    fresh_dir(dir)?;
    let e = engines::open(kind, dir, policy, CACHE_BYTES)?;
    let v = Bytes::from(vec![0xA5u8; value]);
    let c0 = e.counters();
    let sample = if policy == Policy::Always { 1 } else { SAMPLE };
    let (ops, secs, hist) = drive(
        threads,
        secs,
        MAX_PUTS,
        sample,
        |_| (),
        |_, t, n, _| e.put(&key(n * threads as u64 + t as u64), &v),
    );
    let per_fsync = match (c0, e.counters()) {
        (Some((r0, f0)), Some((r1, f1))) if f1 > f0 => Some((r1 - r0) as f64 / (f1 - f0) as f64),
        _ => None,
    };
    drop(e);
    std::fs::remove_dir_all(dir)?;
    Ok(Cell {
        op: "put",
        kind,
        value,
        threads,
        policy,
        ops,
        secs,
        hist,
        per_fsync,
    })
}

fn get_run(e: &dyn Kv, keys: u64, threads: usize, secs: f64) -> (u64, f64, Histogram<u64>) {
    drive(
        threads,
        secs,
        u64::MAX,
        SAMPLE,
        |_| e.reader(),
        |r, _, _, rng| {
            let i = rng.below(keys);
            assert!(r.get(&key(i)).is_some(), "key {i} missing");
        },
    )
}

fn get_cells(kind: Kind, dir: &Path, a: &KvArgs, value: usize, quick: bool) -> Res<Vec<Cell>> {
    let n = (a.get_bytes / (value as u64 + 16)).max(HOT_KEYS);
    let n = if quick { n / 10 } else { n };
    fresh_dir(dir)?;
    let v = Bytes::from(vec![0x5Au8; value]);
    let mut e = engines::open(kind, dir, Policy::Never, CACHE_BYTES)?;
    let t0 = Instant::now();
    e.load(n, &v);
    eprintln!(
        "  {} loaded {n} keys of {value} B in {:.1?}",
        kind.name(),
        t0.elapsed()
    );
    let mut out = Vec::new();
    for (label, keys) in [("get cached", HOT_KEYS), ("get uncached", n)] {
        if kind == Kind::Caskade && label == "get uncached" {
            // caskade's own cache off: every get reads the record (from the
            // OS page cache through the segment's map).
            drop(e);
            e = engines::open(kind, dir, Policy::Never, 0)?;
        }
        // Warm pass: the hot set into engine caches, the rest into the OS
        // page cache, the same for every engine.
        {
            let mut r = e.reader();
            for i in 0..keys {
                assert!(r.get(&key(i)).is_some());
            }
        }
        for &threads in &a.threads {
            let (ops, secs, hist) = get_run(e.as_ref(), keys, threads, a.secs);
            let c = Cell {
                op: label,
                kind,
                value,
                threads,
                policy: Policy::Never,
                ops,
                secs,
                hist,
                per_fsync: None,
            };
            progress(&c);
            out.push(c);
        }
    }
    drop(e);
    std::fs::remove_dir_all(dir)?;
    Ok(out)
}

fn progress(c: &Cell) {
    eprintln!(
        "  {:<12} {:<8} {:>5} B {} thr {:<14} {:>10}/s p50 {:>9} p99 {:>9}{}",
        c.op,
        c.kind.name(),
        c.value,
        c.threads,
        c.policy.label(),
        fmt_rate(c.rate()),
        fmt_ns(c.hist.value_at_quantile(0.5)),
        fmt_ns(c.hist.value_at_quantile(0.99)),
        c.per_fsync
            .map(|r| format!(" rec/fsync {r:.2}"))
            .unwrap_or_default()
    );
}

/// Runs the `kv` benchmark and prints its tables.
pub fn run(a: &KvArgs, dir: &Path, quick: bool) -> Res<()> {
    let secs = if quick { a.secs.min(0.3) } else { a.secs };
    let mut cells = Vec::new();
    for &value in &a.values {
        if !a.no_put {
            for policy in Policy::ALL {
                for &threads in &a.threads {
                    for &kind in &a.engines {
                        let c =
                            put_cell(kind, &dir.join(kind.name()), policy, threads, value, secs)?;
                        progress(&c);
                        cells.push(c);
                    }
                }
            }
        }
        if !a.no_get {
            for &kind in &a.engines {
                let a = KvArgs { secs, ..a.clone() };
                cells.extend(get_cells(kind, &dir.join(kind.name()), &a, value, quick)?);
            }
        }
    }
    print_tables(a, &cells);
    Ok(())
}

fn print_tables(a: &KvArgs, cells: &[Cell]) {
    let peers: Vec<Kind> = a
        .engines
        .iter()
        .copied()
        .filter(|k| *k != Kind::Caskade)
        .collect();
    for &value in &a.values {
        for op in ["put", "get cached", "get uncached"] {
            let rows: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.op == op && c.value == value && c.kind == a.engines[0])
                .collect();
            if rows.is_empty() {
                continue;
            }
            println!("\n#### {op}, {value} B values (ops/s, p99 latency)\n");
            let mut head = String::from("| durability | threads |");
            let mut rule = String::from("|---|---:|");
            for k in &a.engines {
                head += &format!(" {} |", k.name());
                rule += "---:|";
            }
            for p in &peers {
                head += &format!(" caskade/{} |", p.name());
                rule += "---:|";
            }
            if op == "put" {
                head += " caskade records/fsync |";
                rule += "---:|";
            }
            println!("{head}\n{rule}");
            for r in rows {
                let find = |k: Kind| {
                    cells.iter().find(|c| {
                        c.op == op
                            && c.value == value
                            && c.threads == r.threads
                            && c.policy == r.policy
                            && c.kind == k
                    })
                };
                let policy = if op == "put" { r.policy.label() } else { "-" };
                let mut line = format!("| {policy} | {} |", r.threads);
                for &k in &a.engines {
                    match find(k) {
                        Some(c) => {
                            line += &format!(
                                " {} ({}) |",
                                fmt_rate(c.rate()),
                                fmt_ns(c.hist.value_at_quantile(0.99))
                            )
                        }
                        None => line += " - |",
                    }
                }
                let mine = find(Kind::Caskade).map(Cell::rate);
                for &p in &peers {
                    match (mine, find(p)) {
                        (Some(m), Some(c)) => line += &format!(" {:.2}× |", m / c.rate()),
                        _ => line += " - |",
                    }
                }
                if op == "put" {
                    let f = find(Kind::Caskade).and_then(|c| c.per_fsync);
                    line += &f.map(|f| format!(" {f:.2} |")).unwrap_or(" - |".into());
                }
                println!("{line}");
            }
        }
    }
}
