//! Merge (compaction): rewrites the sealed segments keeping only live
//! records, then swaps the new files in atomically.
//!
//! A merge always takes a *prefix* of the log: every sealed segment, from the
//! oldest on. So no older version of any key survives outside the merged
//! range, and a tombstone inside it can be dropped — unless it is at or
//! above the *tombstone horizon* (for replication: the lowest log end offset
//! of the replicas; a follower behind it may still hold an older value).
//!
//! Replica mode narrows both choices:
//! - inputs are the longest prefix of sealed segments whose records are all
//!   below the commit point (a segment's records are below the next one's
//!   base), so merge never reads or moves an uncommitted record; that
//!   commit point is checkpointed to disk before merge starts (`commit`
//!   itself does no I/O), so a crash never recovers a lower one;
//! - the horizon is `min(retain_from, commit point)`. At or above it, merge
//!   keeps tombstones and also expired records that are still their key's
//!   newest version: a replica that has not fetched them yet holds an older
//!   value, which dropping them would leave alive there forever.
//!
//! Steps, each crash-safe:
//! 1. write live records (offset and epoch unchanged) into new segment files
//!    in `merge/`, named by their first record's offset; fsync each;
//! 2. write their hint files in `merge/`; fsync; fsync `merge/`;
//! 3. write `merge/COMMIT` (the list of inputs and outputs) via a temporary
//!    name, fsync, rename, fsync `merge/` — the commit point;
//! 4. rename outputs (hints first) into the data directory; fsync it;
//! 5. point the keydir at the new records, key by key, unless a write moved
//!    the key meanwhile; retire the old segments;
//! 6. delete inputs that no output replaced, and their hints; fsync; remove
//!    `merge/`.
//!
//! A crash before step 3 leaves `merge/` without `COMMIT`: recovery deletes
//! it. A crash after step 3 is rolled forward by [`recover`]. An output may
//! replace an input of the same name (same base offset); the rename keeps the
//! old inode alive for readers that still map it.
//!
//! Reads and writes go on during a merge: it holds no engine lock while it
//! copies, and it is rate-limited (`merge.bytes_per_sec`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::hint::{self, HintEntry};
use super::keydir::Key;
use super::record::{HEADER_LEN, Kind};
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Scanned, Segment};
use super::{Inner, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::{Error, Result};

/// Name of the merge working directory.
const MERGE_DIR: &str = "merge";
/// Name of the commit marker.
const COMMIT: &str = "COMMIT";

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Segments rewritten.
    pub inputs: usize,
    /// Segments written.
    pub outputs: usize,
    /// Bytes of the inputs.
    pub bytes_before: u64,
    /// Bytes of the outputs.
    pub bytes_after: u64,
    /// Live records copied.
    pub records_kept: u64,
    /// Records dropped (overwritten, deleted, expired, tombstones).
    pub records_dropped: u64,
}

/// An output segment being written.
struct Output {
    /// Base offset (first record's offset).
    base: u64,
    /// Path in `merge/`.
    path: PathBuf,
    /// The file.
    file: File,
    /// Bytes written.
    len: u64,
    /// Hint entries of its records.
    hints: Vec<HintEntry>,
}

/// A live record copied: where it was and where it went (`None`: dropped
/// because it had expired).
struct Move {
    /// The key.
    key: Key,
    /// Old segment id.
    seg: u32,
    /// Old position.
    pos: u32,
    /// New output index and position.
    to: Option<(usize, u32)>,
    /// Record length.
    len: u32,
}

/// Sleeps as needed to keep a byte rate.
struct Throttle {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// When the merge started.
    start: Instant,
    /// Bytes processed so far.
    bytes: u64,
}

impl Throttle {
    /// Accounts for `n` more bytes and sleeps if ahead of the rate.
    fn pace(&mut self, n: u64) {
        self.bytes += n;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed + Duration::from_millis(2) {
            std::thread::sleep(due - elapsed);
        }
    }
}

impl Inner {
    /// Merges every sealed segment. See the module docs.
    pub(super) fn merge(&self) -> Result<MergeReport> {
        let _maintenance = self.maintenance.lock();
        let committed = self
            .replica
            .as_ref()
            .map(|rep| rep.committed.load(Ordering::Acquire));
        if committed.is_some() {
            // Checkpoint the commit point first (after the records it
            // covers): merge only rewrites records below it, so a crash can
            // never bring back a commit point below what merge consumed.
            let durable = self.sync()?;
            self.sync_commit(durable)?;
        }
        let inputs: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let sealed = segments.ordered.len().saturating_sub(1);
            let n = match committed {
                None => sealed,
                Some(c) => (0..sealed)
                    .take_while(|&i| segments.ordered[i + 1].base <= c)
                    .count(),
            };
            segments.ordered[..n].to_vec()
        };
        let mut report = MergeReport {
            inputs: inputs.len(),
            bytes_before: inputs.iter().map(|s| s.len()).sum(),
            ..MergeReport::default()
        };
        if inputs.is_empty() {
            return Ok(report);
        }
        // Standalone: every replica is this one, so every tombstone in the
        // prefix may go. Replica mode: what the slowest replica has passed.
        let horizon = match (&self.replica, committed) {
            (Some(rep), Some(c)) => rep.retain_from.load(Ordering::Acquire).min(c),
            _ => self.writer.lock().next_offset,
        };
        let mdir = self.dir.join(MERGE_DIR);
        if mdir.exists() {
            fs::remove_dir_all(&mdir).ctx(|| format!("remove stale {}", mdir.display()))?;
        }
        fs::create_dir(&mdir).ctx(|| format!("create {}", mdir.display()))?;
        let result = self.merge_into(&mdir, &inputs, horizon, &mut report);
        if let Err(e) = &result {
            // Nothing is committed: free the space now rather than at restart.
            if !matches!(e, Error::Io { context, .. } if context == "failpoint") {
                let _ = fs::remove_dir_all(&mdir);
            }
        }
        result.map(|()| report)
    }

    /// Steps 1 to 6 of a merge.
    fn merge_into(
        &self,
        mdir: &Path,
        inputs: &[Arc<Segment>],
        horizon: u64,
        report: &mut MergeReport,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let mut throttle = Throttle {
            rate: self.opts.merge.bytes_per_sec,
            start: Instant::now(),
            bytes: 0,
        };
        let mut outputs: Vec<Output> = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        for seg in inputs {
            let mut scanner = seg.scanner()?;
            while let Some(step) = scanner.next() {
                let Scanned::Record { pos, header } = step else {
                    continue; // corrupt bytes were reported at open
                };
                let len = header.record_len();
                throttle.pace(len as u64);
                let start = pos as usize;
                let raw = &scanner.data()[start..start + len];
                let key = &raw[HEADER_LEN..HEADER_LEN + header.key_len as usize];
                let live = header.kind.is_put_like()
                    && self
                        .keydir
                        .get(key)
                        .is_some_and(|e| e.is_at(seg.id, pos as u32));
                let expired = header.expire_at_ms != 0 && header.expire_at_ms <= now;
                // A replica that has not passed this record still needs it.
                let keep_tombstone = header.offset >= horizon
                    && match header.kind {
                        Kind::Delete => true,
                        _ => {
                            expired
                                && self
                                    .keydir
                                    .get(key)
                                    .is_none_or(|e| e.is_at(seg.id, pos as u32))
                        }
                    };
                if live && expired {
                    moves.push(Move {
                        key: Key::from_slice(key),
                        seg: seg.id,
                        pos: pos as u32,
                        to: None,
                        len: len as u32,
                    });
                }
                if !(live && !expired || keep_tombstone) {
                    report.records_dropped += 1;
                    continue;
                }
                let roll = outputs
                    .last()
                    .is_none_or(|o| o.len + len as u64 > self.opts.segment_bytes);
                if roll {
                    if let Some(o) = outputs.last_mut() {
                        finish_output(o)?;
                    }
                    outputs.push(new_output(mdir, header.offset)?);
                }
                let index = outputs.len() - 1;
                let out = &mut outputs[index];
                out.file
                    .write_all(raw)
                    .ctx(|| format!("write {}", out.path.display()))?;
                out.hints.push(HintEntry::new(out.len, &header, key));
                if live {
                    moves.push(Move {
                        key: Key::from_slice(key),
                        seg: seg.id,
                        pos: pos as u32,
                        to: Some((index, out.len as u32)),
                        len: len as u32,
                    });
                }
                out.len += len as u64;
                report.records_kept += 1;
            }
        }
        if let Some(o) = outputs.last_mut() {
            finish_output(o)?;
        }
        fail::fail_point!("merge::after_outputs", |_| Err(failpoint()));
        for o in &outputs {
            hint::write(&hint_path(mdir, o.base), o.len, &o.hints)?;
        }
        sync_dir(mdir)?;
        fail::fail_point!("merge::after_hints", |_| Err(failpoint()));

        // Step 3: the commit point.
        let inputs_names: Vec<u64> = inputs.iter().map(|s| s.base).collect();
        let output_names: Vec<u64> = outputs.iter().map(|o| o.base).collect();
        write_commit(mdir, &inputs_names, &output_names)?;
        fail::fail_point!("merge::after_commit", |_| Err(failpoint()));

        // Step 4.
        install(&self.dir, mdir, &output_names)?;
        fail::fail_point!("merge::after_install", |_| Err(failpoint()));

        // Step 5: open the outputs and move keydir entries to them.
        let mut opened = Vec::with_capacity(outputs.len());
        for o in &outputs {
            let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
            let path = segment::file_path(&self.dir, o.base, LOG_SUFFIX);
            let seg = Arc::new(Segment::open(path, id, o.base)?);
            seg.seal()?;
            opened.push(seg);
        }
        {
            let mut segments = self.segments.write();
            let old: BTreeSet<u32> = inputs.iter().map(|s| s.id).collect();
            segments.ordered.retain(|s| !old.contains(&s.id));
            for (i, seg) in opened.iter().enumerate() {
                segments.by_id.insert(seg.id, seg.clone());
                segments.ordered.insert(i, seg.clone());
            }
        }
        for m in &moves {
            let mut shard = self.keydir.shard(&m.key);
            let still_there = shard.get(&m.key).is_some_and(|e| e.is_at(m.seg, m.pos));
            match (still_there, m.to) {
                (true, Some((index, pos))) => {
                    if let Some(e) = shard.get_mut(&m.key) {
                        e.seg = opened[index].id;
                        e.pos = pos;
                    }
                }
                (true, None) => {
                    shard.remove(&m.key);
                }
                (false, Some((index, _))) => {
                    // Overwritten during the merge: the copy is dead already.
                    opened[index]
                        .dead
                        .fetch_add(m.len as u64, Ordering::Relaxed);
                }
                (false, None) => {}
            }
        }
        {
            let mut segments = self.segments.write();
            for s in inputs {
                segments.by_id.remove(&s.id);
            }
        }
        fail::fail_point!("merge::after_swap", |_| Err(failpoint()));

        // Step 6.
        cleanup_inputs(&self.dir, &inputs_names, &output_names)?;
        fs::remove_dir_all(mdir).ctx(|| format!("remove {}", mdir.display()))?;
        report.outputs = outputs.len();
        report.bytes_after = outputs.iter().map(|o| o.len).sum();
        self.stats.merges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            dir = %self.dir.display(),
            "merged {} segments ({} bytes) into {} ({} bytes): {} records kept, {} dropped",
            report.inputs, report.bytes_before, report.outputs, report.bytes_after,
            report.records_kept, report.records_dropped
        );
        Ok(())
    }
}

/// The error a failpoint returns to simulate a crash at a merge step.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn failpoint() -> Error {
    Error::Io {
        context: "failpoint".into(),
        source: std::io::Error::other("injected crash"),
    }
}

/// Creates an output segment in the merge directory.
fn new_output(mdir: &Path, base: u64) -> Result<Output> {
    let path = segment::file_path(mdir, base, LOG_SUFFIX);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(|| format!("create {}", path.display()))?;
    Ok(Output {
        base,
        path,
        file,
        len: 0,
        hints: Vec::new(),
    })
}

/// fsyncs a finished output.
fn finish_output(o: &mut Output) -> Result<()> {
    o.file
        .sync_all()
        .ctx(|| format!("fsync {}", o.path.display()))
}

/// The hint path for `base` in `dir`.
fn hint_path(dir: &Path, base: u64) -> PathBuf {
    segment::file_path(dir, base, HINT_SUFFIX)
}

/// Writes the commit marker: `input <base>` and `output <base>` lines.
fn write_commit(mdir: &Path, inputs: &[u64], outputs: &[u64]) -> Result<()> {
    let mut text = String::new();
    for b in inputs {
        text.push_str(&format!("input {b}\n"));
    }
    for b in outputs {
        text.push_str(&format!("output {b}\n"));
    }
    text.push_str("end\n");
    let tmp = mdir.join("COMMIT.tmp");
    let mut f = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, mdir.join(COMMIT)).ctx(|| format!("rename {}", tmp.display()))?;
    sync_dir(mdir)
}

/// Parses a commit marker; `None` if it is malformed (never written fully,
/// which the temporary-name protocol rules out, or damaged).
fn parse_commit(text: &str) -> Option<(Vec<u64>, Vec<u64>)> {
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let mut ended = false;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("input", b)) => inputs.push(b.parse().ok()?),
            Some(("output", b)) => outputs.push(b.parse().ok()?),
            None if line == "end" => ended = true,
            _ => return None,
        }
    }
    ended.then_some((inputs, outputs))
}

/// Step 4: moves outputs (hint first, then log) into the data directory.
/// Idempotent: an output already moved is skipped.
fn install(dir: &Path, mdir: &Path, outputs: &[u64]) -> Result<()> {
    for &base in outputs {
        for suffix in [HINT_SUFFIX, LOG_SUFFIX] {
            let from = segment::file_path(mdir, base, suffix);
            let to = segment::file_path(dir, base, suffix);
            if from.exists() {
                fs::rename(&from, &to).ctx(|| format!("rename {}", from.display()))?;
            }
        }
    }
    sync_dir(dir)
}

/// Step 6: deletes inputs that no output replaced, with their hints.
/// Idempotent.
fn cleanup_inputs(dir: &Path, inputs: &[u64], outputs: &[u64]) -> Result<()> {
    for base in inputs.iter().filter(|b| !outputs.contains(b)) {
        for suffix in [HINT_SUFFIX, LOG_SUFFIX] {
            let path = segment::file_path(dir, *base, suffix);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
            }
        }
    }
    sync_dir(dir)
}

/// At open: rolls a committed merge forward, deletes an uncommitted one.
pub(super) fn recover(dir: &Path) -> Result<()> {
    let mdir = dir.join(MERGE_DIR);
    if !mdir.exists() {
        return Ok(());
    }
    let commit = mdir.join(COMMIT);
    match fs::read_to_string(&commit) {
        Ok(text) => {
            let (inputs, outputs) = parse_commit(&text).ok_or_else(|| {
                Error::Corrupt(format!(
                    "merge commit marker {} is damaged; move {} aside to open the directory",
                    commit.display(),
                    mdir.display()
                ))
            })?;
            tracing::info!(dir = %dir.display(), "finishing a merge interrupted after its commit");
            install(dir, &mdir, &outputs)?;
            cleanup_inputs(dir, &inputs, &outputs)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(dir = %dir.display(), "discarding a merge interrupted before its commit");
        }
        Err(e) => return Err(Error::io(format!("read {}", commit.display()), e)),
    }
    fs::remove_dir_all(&mdir).ctx(|| format!("remove {}", mdir.display()))?;
    sync_dir(dir)
}
