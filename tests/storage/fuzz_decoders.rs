//! Property tests (bounded fuzzing, issue 13) of the decoders that read
//! bytes caskade did not produce itself, through their public entry points:
//!
//! - record decoding, twice: a segment file of arbitrary bytes (and of
//!   well-formed records with flipped bytes) opened by the engine, standalone
//!   and replica mode; and records arriving from a leader
//!   ([`Bitcask::append_replicated`], what a follower does with a fetch
//!   answer's `records`);
//! - hint decoding: a sealed segment's hint file replaced by entries with a
//!   valid checksum and arbitrary contents (positions, lengths, kinds,
//!   offsets), then the engine opened and every key read;
//! - the config loaders: arbitrary YAML-ish text as the server's and the
//!   CLI's config file.
//!
//! Each must answer `Ok` or an error and never panic, and what it accepts
//! must stay consistent (a replica's log end stays above every offset it
//! accepted). Case counts are small so the file runs in seconds in CI
//! (`PROPTEST_CASES` raises them for a longer run).

use std::path::Path;
use std::sync::Arc;

use caskade::config::{ClientConfig, Config};
use caskade::storage::{Bitcask, Durability, Engine, ManualClock, Options};
use proptest::prelude::*;

/// A fixed "now": 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

fn opts() -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes: 1024,
        cache_bytes: 1 << 16,
        ..Options::default()
    };
    o.limits.max_value_bytes = 256;
    o.limits.max_key_bytes = 32;
    o.merge.dead_ratio = 0.0;
    o
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// One record to encode: (offset, epoch, expire_at_ms, kind byte, key,
/// value, a correct CRC or not).
type Rec = (u64, u32, u64, u8, Vec<u8>, Vec<u8>, bool);

/// Encodes a record as docs/STORAGE.md lays it out (src/storage/bitcask/
/// record.rs): crc32 of bytes 4.. | offset | epoch | expire_at | kind |
/// key_len | value_len | key | value, little endian.
fn encode(out: &mut Vec<u8>, r: &Rec) {
    let (offset, epoch, expire, kind, key, value, good_crc) = r;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&expire.to_le_bytes());
    out.push(*kind);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let mut crc = crc32fast::hash(&out[start + 4..]);
    if !good_crc {
        crc ^= 1;
    }
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Offsets near both ends of the range (`u64::MAX` included).
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![0..64u64, (u64::MAX - 4)..=u64::MAX, any::<u64>()]
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        offset(),
        prop_oneof![0..4u32, Just(u32::MAX), any::<u32>()],
        prop_oneof![Just(0u64), Just(T0 + 1000), Just(1), any::<u64>()],
        0..5u8,
        prop::collection::vec(any::<u8>(), 0..6),
        prop::collection::vec(any::<u8>(), 0..24),
        prop::bool::weighted(0.9),
    )
}

/// Well-formed-looking records, then up to three bytes flipped.
fn records() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(rec(), 0..12),
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..3),
    )
        .prop_map(|(recs, flips)| {
            let mut out = Vec::new();
            for r in &recs {
                encode(&mut out, r);
            }
            if !out.is_empty() {
                for (at, x) in flips {
                    let i = at.index(out.len());
                    out[i] ^= x;
                }
            }
            out
        })
}

/// Arbitrary bytes, or records.
fn segment_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..600), records()]
}

/// Reads every key the engine lists; reads may fail, never panic.
fn read_all(e: &Bitcask) {
    if let Ok(keys) = e.keys() {
        for k in keys {
            let _ = e.get(&k);
            let _ = e.ttl(&k);
        }
    }
    let _ = e.read_log(0, 1 << 20);
}

/// Writes `bytes` as segment 0 (and `second` as segment `base2`) of a new
/// directory.
fn segments(dir: &Path, bytes: &[u8], second: Option<(u64, &[u8])>) {
    std::fs::write(dir.join(format!("{:020}.log", 0)), bytes).unwrap();
    if let Some((base, b)) = second {
        std::fs::write(dir.join(format!("{base:020}.log")), b).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A damaged or hostile segment file is recovered, cut or refused;
    /// the engine never panics, in either mode, and whatever it serves
    /// afterwards reads without panicking.
    #[test]
    fn arbitrary_segments_open_or_fail(
        first in segment_bytes(),
        second in prop::option::of((1..64u64, segment_bytes())),
        replica in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        segments(dir.path(), &first, second.as_ref().map(|(b, s)| (*b, s.as_slice())));
        let opened = if replica {
            Bitcask::open_replica(dir.path(), opts(), clock())
        } else {
            Bitcask::open_with_clock(dir.path(), opts(), clock())
        };
        if let Ok(e) = opened {
            read_all(&e);
            // The engine still takes writes where it accepted the log.
            let _ = e.close();
        }
    }

    /// Records from a "leader": a follower appends a batch whole or refuses
    /// it whole; after an accepted batch its log end is above every offset
    /// in it, so the next batch cannot go back (offsets near u64::MAX
    /// included).
    #[test]
    fn arbitrary_replicated_records(
        batches in prop::collection::vec(segment_bytes(), 1..4),
        hw in offset(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let e = Bitcask::open_replica(dir.path(), opts(), clock()).unwrap();
        for b in &batches {
            let before = e.next_offset();
            match e.append_replicated(b) {
                Ok(0) => prop_assert_eq!(e.next_offset(), before),
                Ok(_) => {
                    let last = e
                        .read_log(before, usize::MAX)
                        .unwrap()
                        .last()
                        .map(|r| r.header.offset)
                        .unwrap();
                    prop_assert!(
                        e.next_offset() > last,
                        "log end {} not above the last accepted offset {}",
                        e.next_offset(),
                        last
                    );
                }
                Err(_) => prop_assert_eq!(e.next_offset(), before),
            }
        }
        let _ = e.commit(hw);
        read_all(&e);
        e.close().unwrap();
        drop(e);
        // And it opens again.
        let e = Bitcask::open_replica(dir.path(), opts(), clock()).unwrap();
        read_all(&e);
    }

    /// A hint file with a valid checksum and arbitrary entries (positions
    /// and lengths outside the segment, wrong kinds, huge offsets): the
    /// engine opens or refuses, and reading every key it lists never
    /// panics.
    #[test]
    fn arbitrary_hints(
        entries in prop::collection::vec(
            (offset(), any::<u32>(), any::<u32>(), any::<u64>(), 0..5u8,
             prop::collection::vec(any::<u8>(), 0..6)),
            0..10,
        ),
        small in any::<bool>(),
        count_delta in prop_oneof![Just(0i64), -2..3i64, Just(1i64 << 40)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        // Two sealed segments and an active one, written by the engine.
        {
            let e = Bitcask::open_with_clock(dir.path(), opts(), clock()).unwrap();
            for i in 0..40u32 {
                e.write(
                    format!("k{}", i % 13).as_bytes(),
                    caskade::storage::WriteOp::Set(
                        vec![b'v'; 60].into(),
                        caskade::storage::SetOptions::default(),
                    ),
                )
                .unwrap();
            }
            e.close().unwrap();
        }
        let mut logs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|d| d.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".log"))
            .collect();
        logs.sort();
        prop_assert!(logs.len() >= 2, "{:?}", logs);
        for name in &logs[..logs.len() - 1] {
            let log = dir.path().join(name);
            let log_len = std::fs::metadata(&log).unwrap().len();
            let mut b = Vec::new();
            b.extend_from_slice(b"CSKH");
            b.push(1);
            b.extend_from_slice(&[0; 3]);
            b.extend_from_slice(&log_len.to_le_bytes());
            let count = (entries.len() as i64 + count_delta).max(0) as u64;
            b.extend_from_slice(&count.to_le_bytes());
            for (offset, pos, len, expire, kind, key) in &entries {
                // Mostly inside the segment, as a plausible hint is.
                let (pos, len) = if small {
                    (pos % log_len.max(1) as u32, len % 200)
                } else {
                    (*pos, *len)
                };
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&pos.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(&expire.to_le_bytes());
                b.push(*kind);
                b.extend_from_slice(&(key.len() as u32).to_le_bytes());
                b.extend_from_slice(key);
            }
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_le_bytes());
            std::fs::write(log.with_extension("hint"), &b).unwrap();
        }
        if let Ok(e) = Bitcask::open_with_clock(dir.path(), opts(), clock()) {
            read_all(&e);
            let _ = e.close();
        }
    }

    /// The server's config loader: arbitrary YAML-ish text is a config or
    /// an error, never a panic.
    #[test]
    fn arbitrary_server_config(text in yamlish()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.yaml");
        std::fs::write(&path, &text).unwrap();
        let _ = Config::load(Some(&path), Vec::<(String, String)>::new());
        // The same text through an environment variable.
        let _ = Config::load(None, vec![("CASKADE_STORAGE_FSYNC".to_string(), text.clone())]);
        let _ = ClientConfig::load(Some(&path), Vec::<(String, String)>::new());
    }
}

/// Text built from YAML's structure, caskade's keys and odd values.
fn yamlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "node_id",
        "listen",
        "advertise",
        "data_dir",
        "partitions",
        "engine",
        "default_acks",
        "default_consistency",
        "server",
        "max_connections",
        "request_timeout_ms",
        "storage",
        "fsync",
        "every_ms",
        "segment_bytes",
        "cache_bytes",
        "limits",
        "max_key_bytes",
        "max_value_bytes",
        "merge",
        "dead_ratio",
        "cluster",
        "zk_connect",
        "session_timeout_ms",
        "replication_factor",
        "min_insync",
        "fetch_max_bytes",
        "resp",
        "maxclients",
        "timeout",
        "addrs",
        "acks",
        "consistency",
        "metrics",
        "background",
        "commit_threads",
        "<<",
        "",
    ]);
    let value = prop::sample::select(vec![
        "",
        "0",
        "-1",
        "1",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1e309",
        ".nan",
        "~",
        "null",
        "true",
        "always",
        "never",
        "{every_ms: 0}",
        "{every_ms: -5}",
        "[]",
        "[a, b]",
        "{}",
        "\"\\u0000\"",
        "'",
        "\"",
        "&a",
        "*a",
        "!!binary AAAA",
        "!<tag> x",
        "|",
        ">",
        "0x10",
        "127.0.0.1:0",
        "[::1]:99999",
        "::",
        "- x",
        "? x",
        "%YAML 1.2",
    ]);
    let line = (0..4usize, key, prop::bool::ANY, value, "[ -~]{0,6}").prop_map(
        |(indent, k, dash, v, junk)| {
            format!(
                "{}{}{k}: {v}{junk}",
                "  ".repeat(indent),
                if dash { "- " } else { "" }
            )
        },
    );
    prop_oneof![
        prop::collection::vec(line, 0..12).prop_map(|l| l.join("\n")),
        "\\PC{0,80}",
        prop::collection::vec(any::<u8>(), 0..80)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// `PROPTEST_CASES` if set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
