//! The RESP parser alone (src/resp/parse.rs): nanoseconds per command cut
//! out of a read buffer, for the frames `redis-benchmark` sends.
//!
//! ```text
//! cargo bench --bench resp_parse [-- --rounds 7 --frames 200000]
//! ```
//!
//! Lines: `SET` with a 16-byte key and a 100-byte value, `GET` with a
//! 16-byte key, each as one read per command (no pipelining) and as reads
//! of 16 commands (`-P 16`). Every round parses `--frames` commands of each
//! line afresh; the figure is the median over `--rounds` rounds, the
//! spread the lowest and highest. Two builds compare by running their
//! binaries alternately in one session (docs/BENCHMARKS.md).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use caskade::resp::parse::{Limits, Parser};

/// One command as redis-benchmark sends it.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Nanoseconds per command: `frames` commands of `one`, `per_read` to a
/// read buffer, parsed as the connection loop parses them.
fn run(one: &[u8], per_read: usize, frames: usize) -> f64 {
    let read: Vec<u8> = one.repeat(per_read);
    let mut parser = Parser::new(Limits {
        max_bulk: 512 << 20,
        max_args: 1 << 20,
    });
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let started = Instant::now();
    let mut parsed = 0;
    while parsed < frames {
        buf.reserve(16 * 1024);
        buf.extend_from_slice(&read);
        while let Ok(Some(f)) = parser.next(&mut buf) {
            black_box(&f);
            parsed += 1;
        }
    }
    started.elapsed().as_nanos() as f64 / parsed as f64
}

/// `--name value` from the command line, else `default`.
fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let rounds = arg("--rounds", 7).max(1);
    let frames = arg("--frames", 200_000).max(1);
    let key = b"key:000000012345";
    let value = [b'x'; 100];
    let set = command(&[b"SET", key, &value]);
    let get = command(&[b"GET", key]);
    println!("| line | ns per command, median (lowest-highest) |");
    println!("|---|---|");
    for (name, one, per_read) in [
        ("SET", &set, 1),
        ("GET", &get, 1),
        ("SET -P 16", &set, 16),
        ("GET -P 16", &get, 16),
    ] {
        let mut ns: Vec<f64> = (0..rounds).map(|_| run(one, per_read, frames)).collect();
        ns.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} ({:.1}-{:.1}) |",
            ns[ns.len() / 2],
            ns[0],
            ns[ns.len() - 1]
        );
    }
}
