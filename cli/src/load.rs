//! `caskade-cli load` and `caskade-cli verify`: write keys and remember
//! which writes were acknowledged, then prove that every acknowledged write
//! is still there. `make demo-failover` uses them around a leader kill.
//!
//! `load --keys N --prefix P` writes keys `P00000000` .. `P{N-1:08}` with
//! `--clients` concurrent writers, each key once, with the value
//! `<key>#<run>` (`run` is the start time in ms, hex, so values of another
//! run never pass for this one's). With `--record FILE`, every write the
//! server acknowledged is appended to FILE as one line `key<TAB>value`
//! (the file is truncated first and fsynced at the end). A write that
//! failed is not recorded: its effect is unknown, so it proves nothing
//! either way. Output: `wrote A of N keys (acks X)` on stdout; failures are
//! an error (exit 1) unless `--allow-errors`, and are summed up on stderr
//! as `(error) F of N writes failed; first: <message>` in both cases.
//!
//! `verify --record FILE` reads every recorded key back (the client's read
//! consistency, `leader` by default: committed data) and prints one line
//! per problem, in record order (at most `--limit`, default 20, then
//! `... and N more`): `missing: KEY`,
//! `wrong value: KEY: expected V, got W`, `unreadable: KEY: <error>`; then
//! `verified N keys: O ok, M missing, W wrong, U unreadable`. Exit 0 only
//! when every key reads back with its recorded value; otherwise exit 1 with
//! `(error) P of N acknowledged writes could not be verified` on stderr.
//! A malformed record file is a usage error (exit 2) naming the line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use caskade::client::{Client, SetOptions};
use caskade::config::ClientConfig;
use caskade::node::Acks;
use clap::Parser;
use parking_lot::Mutex;

use crate::reply::display_value;

/// Flags of `caskade-cli load`.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli load",
    about = "Write keys PREFIX00000000.. and record the acknowledged ones"
)]
pub struct LoadArgs {
    /// Number of keys to write.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub keys: usize,
    /// Key prefix (no tab or newline).
    #[arg(long, default_value = "load:")]
    pub prefix: String,
    /// Write acknowledgement: leader | all (default: the client config's).
    #[arg(long, value_parser = crate::parse_acks)]
    pub acks: Option<Acks>,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// File recording every acknowledged write (`key<TAB>value` lines).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Exit 0 even if some writes failed (they are not recorded).
    #[arg(long)]
    pub allow_errors: bool,
}

/// Flags of `caskade-cli verify`.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-cli verify",
    about = "Read back every write recorded by `load --record` and report any missing or wrong key"
)]
pub struct VerifyArgs {
    /// The record file written by `caskade-cli load --record`.
    #[arg(long, value_name = "FILE")]
    pub record: PathBuf,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Problem lines printed at most (0: all); the rest are counted.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// Runs `load`; returns the exit code.
pub fn load(runtime: &tokio::runtime::Runtime, config: &ClientConfig, args: &LoadArgs) -> i32 {
    if args.clients == 0 {
        eprintln!("caskade-cli load: --clients must be at least 1");
        return 2;
    }
    if args.prefix.contains(['\t', '\n', '\r']) {
        eprintln!("caskade-cli load: --prefix must not contain a tab or a newline");
        return 2;
    }
    let record = match &args.record {
        None => None,
        Some(path) => match File::create(path) {
            Ok(f) => Some(Mutex::new(BufWriter::new(f))),
            Err(e) => {
                eprintln!("caskade-cli load: cannot create {}: {e}", path.display());
                return 2;
            }
        },
    };
    let acks = args.acks.unwrap_or(config.acks);
    let outcome = match runtime.block_on(write_keys(config, args, acks, record.map(Arc::new))) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("(error) {e}");
            return 1;
        }
    };
    println!(
        "wrote {} of {} keys (acks {})",
        outcome.acknowledged,
        args.keys,
        match acks {
            Acks::Leader => "leader",
            Acks::All => "all",
        }
    );
    if let Some(e) = outcome.record_error {
        eprintln!("caskade-cli load: cannot write the record file: {e}");
        return 1;
    }
    if let Some(first) = outcome.first_error {
        eprintln!(
            "(error) {} of {} writes failed; first: {first}",
            args.keys - outcome.acknowledged,
            args.keys
        );
        return if args.allow_errors { 0 } else { 1 };
    }
    0
}

/// What a load did.
struct LoadOutcome {
    /// Writes acknowledged (and recorded).
    acknowledged: usize,
    /// The first failed write's error.
    first_error: Option<String>,
    /// Why the record file could not be written, if so.
    record_error: Option<std::io::Error>,
}

/// The record file, shared by the writers.
type Record = Arc<Mutex<BufWriter<File>>>;

/// Writes the keys with `args.clients` tasks; records the acknowledged ones.
async fn write_keys(
    config: &ClientConfig,
    args: &LoadArgs,
    acks: Acks,
    record: Option<Record>,
) -> caskade::Result<LoadOutcome> {
    let client = Client::new(config)?;
    // Fail fast, with one clear line, when the server is not there.
    client.ping().await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let record_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let (client, next, acknowledged) = (client.clone(), next.clone(), acknowledged.clone());
        let (first_error, record_error) = (first_error.clone(), record_error.clone());
        let (record, prefix, keys) = (record.clone(), args.prefix.clone(), args.keys);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let key = format!("{prefix}{i:08}");
                let value = format!("{key}#{run:x}");
                let opts = SetOptions {
                    acks: Some(acks),
                    ..SetOptions::default()
                };
                match client
                    .set(Bytes::from(key.clone()), Bytes::from(value.clone()), opts)
                    .await
                {
                    Ok(_) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        if let Some(record) = &record
                            && let Err(e) = writeln!(record.lock(), "{key}\t{value}")
                        {
                            record_error.lock().get_or_insert(e);
                        }
                    }
                    Err(e) => {
                        first_error.lock().get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            first_error
                .lock()
                .get_or_insert_with(|| format!("writer task failed: {e}"));
        }
    }
    if let Some(record) = record {
        let mut w = record.lock();
        if let Err(e) = w.flush().and_then(|()| w.get_ref().sync_all()) {
            record_error.lock().get_or_insert(e);
        }
    }
    Ok(LoadOutcome {
        acknowledged: acknowledged.load(Ordering::Relaxed),
        first_error: first_error.lock().take(),
        record_error: record_error.lock().take(),
    })
}

/// Parses a record file into (key, value) pairs, in file order.
fn read_record(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            line.split_once('\t')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    format!(
                        "{} line {}: expected key<TAB>value, got {line:?}",
                        path.display(),
                        n + 1
                    )
                })
        })
        .collect()
}

/// What reading one recorded key back found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// The recorded value.
    Ok,
    /// No such key.
    Missing,
    /// Another value.
    Wrong(Bytes),
    /// The read failed.
    Unreadable(String),
}

/// Runs `verify`; returns the exit code.
pub fn verify(runtime: &tokio::runtime::Runtime, config: &ClientConfig, args: &VerifyArgs) -> i32 {
    if args.clients == 0 {
        eprintln!("caskade-cli verify: --clients must be at least 1");
        return 2;
    }
    let entries = match read_record(&args.record) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("caskade-cli verify: {e}");
            return 2;
        }
    };
    let checks = match runtime.block_on(read_keys(config, &entries, args.clients)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("(error) {e}");
            return 1;
        }
    };
    let (mut ok, mut missing, mut wrong, mut unreadable) = (0, 0, 0, 0);
    let mut lines = Vec::new();
    for ((key, value), check) in entries.iter().zip(&checks) {
        match check {
            Check::Ok => ok += 1,
            Check::Missing => {
                missing += 1;
                lines.push(format!("missing: {key}"));
            }
            Check::Wrong(got) => {
                wrong += 1;
                lines.push(format!(
                    "wrong value: {key}: expected {}, got {}",
                    display_value(value.as_bytes()),
                    display_value(got)
                ));
            }
            Check::Unreadable(e) => {
                unreadable += 1;
                lines.push(format!("unreadable: {key}: {e}"));
            }
        }
    }
    let shown = if args.limit == 0 {
        lines.len()
    } else {
        args.limit.min(lines.len())
    };
    for line in &lines[..shown] {
        println!("{line}");
    }
    if shown < lines.len() {
        println!("... and {} more (--limit 0 shows all)", lines.len() - shown);
    }
    println!(
        "verified {} keys: {ok} ok, {missing} missing, {wrong} wrong, {unreadable} unreadable",
        entries.len()
    );
    if ok == entries.len() {
        return 0;
    }
    eprintln!(
        "(error) {} of {} acknowledged writes could not be verified",
        entries.len() - ok,
        entries.len()
    );
    1
}

/// Reads every entry's key with `clients` tasks; the checks in entry order.
async fn read_keys(
    config: &ClientConfig,
    entries: &[(String, String)],
    clients: usize,
) -> caskade::Result<Vec<Check>> {
    let client = Client::new(config)?;
    client.ping().await?;
    let entries: Arc<Vec<(String, String)>> = Arc::new(entries.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, next, entries) = (client.clone(), next.clone(), entries.clone());
        tasks.push(tokio::spawn(async move {
            let mut found = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, value)) = entries.get(i) else {
                    break;
                };
                let check = match client.get(Bytes::from(key.clone())).await {
                    Ok(Some(v)) if v == value.as_bytes() => Check::Ok,
                    Ok(Some(v)) => Check::Wrong(v),
                    Ok(None) => Check::Missing,
                    Err(e) => Check::Unreadable(e.to_string()),
                };
                found.push((i, check));
            }
            found
        }));
    }
    let mut checks = vec![Check::Unreadable("not read".into()); entries.len()];
    for task in tasks {
        let found = task
            .await
            .map_err(|e| caskade::Error::Internal(format!("reader task failed: {e}")))?;
        for (i, check) in found {
            checks[i] = check;
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec");
        std::fs::write(&path, "a:00000000\ta:00000000#1f\nb\tx\ty\n").unwrap();
        assert_eq!(
            read_record(&path).unwrap(),
            [
                ("a:00000000".to_string(), "a:00000000#1f".to_string()),
                ("b".to_string(), "x\ty".to_string())
            ]
        );
        std::fs::write(&path, "ok\tv\nno tab here\n").unwrap();
        assert_eq!(
            read_record(&path).unwrap_err(),
            format!(
                "{} line 2: expected key<TAB>value, got \"no tab here\"",
                path.display()
            )
        );
    }
}
