//! `caskade-engine-bench`: the storage-engine benchmarks of issue 2.
//!
//! Subcommands print Markdown tables on stdout (progress goes to stderr):
//! `kv` (put/get throughput and p99 for caskade and its peers), `recovery`,
//! `ram`, `merge`, and `all`. `--quick` shrinks every run for a smoke test.

mod engines;
mod kv;
mod maintenance;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

use engines::Res;

#[derive(Parser)]
#[command(version, about = "caskade storage-engine benchmarks (issue 2)")]
struct Cli {
    /// Short runs and small data sets: a smoke test, not a measurement.
    #[arg(long, global = true)]
    quick: bool,
    /// Scratch directory for data files (emptied per run; must be on the disk
    /// under test, not tmpfs).
    #[arg(long, global = true, default_value = "target/bench-data")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Put and get throughput / p99 latency, caskade and peers in one run.
    Kv(kv::KvArgs),
    /// Recovery (open) time with and without hint files, cold and warm.
    Recovery(maintenance::RecoveryArgs),
    /// RAM per key (RSS growth / keys), each size in a fresh process.
    Ram(maintenance::RamArgs),
    /// Foreground latency idle vs during a merge; disk bytes before/after.
    Merge(maintenance::MergeArgs),
    /// Everything above with default arguments.
    All,
    /// (internal) one RAM measurement, run as a child process.
    #[command(hide = true)]
    RamChild {
        #[arg(long)]
        keys: u64,
        #[arg(long)]
        value_bytes: usize,
    },
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir)?;
    let dir = cli.dir.canonicalize()?;
    match cli.cmd {
        Cmd::Kv(a) => kv::run(&a, &dir, cli.quick),
        Cmd::Recovery(a) => maintenance::recovery(&a, &dir, cli.quick),
        Cmd::Ram(a) => maintenance::ram(&a, &dir, cli.quick),
        Cmd::Merge(a) => maintenance::merge(&a, &dir, cli.quick),
        Cmd::RamChild { keys, value_bytes } => maintenance::ram_child(&dir, keys, value_bytes),
        Cmd::All => {
            kv::run(&kv::KvArgs::default(), &dir, cli.quick)?;
            maintenance::recovery(&maintenance::RecoveryArgs::default(), &dir, cli.quick)?;
            maintenance::ram(&maintenance::RamArgs::default(), &dir, cli.quick)?;
            maintenance::merge(&maintenance::MergeArgs::default(), &dir, cli.quick)
        }
    }
}

/// The 16-byte key number `i`: a scrambled half (so inserts land in random
/// order for ordered engines) then `i` itself (so keys are unique).
pub fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&splitmix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// SplitMix64: a cheap, good 64-bit mixer.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A per-thread pseudo-random stream.
pub struct Rng(u64);

impl Rng {
    /// A stream seeded by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed ^ 0x5EED))
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        ((splitmix(self.0) as u128 * n as u128) >> 64) as u64
    }
}

/// A latency histogram in nanoseconds, 1 ns to 100 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// Nanoseconds as a short human figure.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        n if n < 10_000 => format!("{n} ns"),
        n if n < 10_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n => format!("{:.1} ms", n as f64 / 1e6),
    }
}

/// Operations per second as a short human figure.
pub fn fmt_rate(r: f64) -> String {
    match r {
        r if r >= 1e6 => format!("{:.2} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

/// Removes and recreates `dir`.
pub fn fresh_dir(dir: &Path) -> Res<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Drops the OS page cache (needs root); whether it worked.
pub fn drop_page_cache() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc_sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

unsafe extern "C" {
    #[link_name = "sync"]
    fn libc_sync();
}
