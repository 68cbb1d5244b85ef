//! Merge (compaction): rewrites the sealed segments keeping only live
//! records, then swaps the new files in atomically.
//!
//! A merge always takes a *prefix* of the log: the sealed segments, from the
//! oldest on, whose records are all applied to the keydir. So no older version of any key survives outside the merged
//! range, and a tombstone inside it can be dropped — unless it is at or
//! above the *tombstone horizon* (for replication: the lowest log end offset
//! of the replicas; a follower behind it may still hold an older value).
//!
//! Invariants:
//! - every record of an input segment is applied to the keydir (merge
//!   judges liveness from it): an input's successor starts at or below the
//!   applied end (`written_end` standalone, the commit point in replica
//!   mode). Sealed is not enough: a group commit that overflows a segment
//!   seals it before the batch is applied;
//! - after `COMMIT` the only way is forward: a later error leaves `merge/`
//!   and the merge's remaining steps in `Maintenance`; the next merge,
//!   truncation or hint pass finishes them, open rolls `merge/` forward.
//!   `merge/` with `COMMIT` is never deleted before its inputs are;
//! - `merge/`'s own entry is fsynced into the data directory when created.
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
//! A crash or error before step 3 leaves `merge/` without `COMMIT`: it is
//! deleted (at once, or by recovery). A crash after step 3 is rolled
//! forward by [`recover`]; an error after it by the next maintenance pass. An output may
//! replace an input of the same name (same base offset); the rename keeps the
//! old inode alive for readers that still map it.
//!
//! Reads and writes go on during a merge: it holds no engine lock while it
//! copies, and it is rate-limited by the node's merge budget
//! (`merge.bytes_per_sec`, shared by the merges of all the node's engines).
//! Closing the engine stops a merge that has not reached step 3 (it answers
//! `Closed` and removes `merge/`), so a close, e.g. when a partition leaves
//! the node, never waits for a rate-limited copy; past step 3 it finishes.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::hint::{self, HintEntry};
use super::keydir::Key;
use super::record::{HEADER_LEN, Kind};
use super::segment::{self, HINT_SUFFIX, LOG_SUFFIX, Scanned, Segment};
use super::{Inner, sync_dir};
use crate::storage::error::IoContext;
use crate::storage::owner_only;
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

/// Bytes a merge reads before it takes them from the node's budget.
const PACE_CHUNK: u64 = 64 << 10;

/// Paces a merge by the node's merge budget, shared by the merges of all
/// the node's engines (`merge.bytes_per_sec` is per node).
struct Throttle<'a> {
    /// The pool whose budget is taken from.
    workers: &'a super::Workers,
    /// Bytes read and not yet taken from the budget.
    owed: u64,
}

impl Throttle<'_> {
    /// Accounts for `n` more bytes and sleeps if ahead of the budget.
    fn pace(&mut self, n: u64) {
        self.owed += n;
        if self.owed >= PACE_CHUNK {
            self.workers.merge_budget(std::mem::take(&mut self.owed));
        }
    }
}

/// A merge past its `COMMIT` marker: what its remaining steps (4 to 6)
/// need. Kept behind the maintenance mutex while a step fails, so the next
/// merge (or truncation, or hint pass) rolls it forward from where it
/// stopped; it is never undone.
pub(super) struct Committed {
    /// The input segments (their ids name the keydir entries to move).
    inputs: Vec<Arc<Segment>>,
    /// Base offsets of the inputs.
    input_names: Vec<u64>,
    /// Base offset and length of each output.
    outputs: Vec<(u64, u64)>,
    /// The keydir moves of step 5.
    moves: Vec<Move>,
    /// Step 4 (outputs renamed into the data directory) is done.
    installed: bool,
    /// Step 5 (outputs opened, segment table and keydir switched) is done.
    swapped: bool,
    /// What the merge did, reported when it completes.
    report: MergeReport,
}

/// State behind the maintenance mutex (which serialises merge, truncation
/// and hint writing).
#[derive(Default)]
pub(super) struct Maintenance {
    /// A merge that failed after its `COMMIT`, to roll forward first.
    pub committed_merge: Option<Committed>,
}

impl Inner {
    /// Merges every sealed segment whose records are all applied. See the
    /// module docs.
    pub(super) fn merge(&self) -> Result<MergeReport> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut maintenance = self.maintenance.lock();
        self.finish_merge(&mut maintenance)?;
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
        // Every record of an input must be applied (its liveness is judged
        // from the keydir): a sealed segment qualifies when the next one
        // starts at or below the applied end, since its records are below
        // that base. A batch that rolled publishes the full segment before
        // it is applied; this bound keeps merge off it until then.
        let applied = self.applied_end(&self.writer.lock());
        let inputs: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let sealed = segments.ordered.len().saturating_sub(1);
            let n = (0..sealed)
                .take_while(|&i| segments.ordered[i + 1].base <= applied)
                .count();
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
            if mdir.join(COMMIT).exists() {
                // Only a merge of this engine can leave one (open rolls any
                // earlier one forward), and it would be in `maintenance`.
                return Err(Error::Corrupt(crate::storage::Text::naming(
                    format!(
                        "{} holds a committed merge this engine does not know; reopen the engine to roll it forward",
                        mdir.display()
                    ),
                    &mdir,
                )));
            }
            fs::remove_dir_all(&mdir).ctx_at("remove stale", &mdir)?;
        }
        owner_only::create_dir(&mdir).ctx_at("create", &mdir)?;
        // Its entry must be durable before anything in it counts.
        self.sync_data_dir()?;
        let discard = |e: Error| {
            // Nothing is committed: free the space now.
            if let Err(rm) = fs::remove_dir_all(&mdir) {
                tracing::warn!(dir = %self.dir.display(), "removing {}: {rm}", mdir.display());
            }
            e
        };
        let plan = self
            .merge_outputs(&mdir, &inputs, horizon, &mut report)
            .map_err(discard)?;
        // Step 3: the commit point.
        let output_names: Vec<u64> = plan.outputs.iter().map(|o| o.0).collect();
        if let Err(e) = write_commit(&mdir, &plan.input_names, &output_names) {
            if !mdir.join(COMMIT).exists() {
                return Err(discard(e));
            }
            // Renamed into place, only its fsync failed: it may be durable,
            // so the merge is committed and goes forward.
            maintenance.committed_merge = Some(plan);
            return Err(e);
        }
        maintenance.committed_merge = Some(plan);
        self.finish_merge(&mut maintenance)
            .map(|done| done.unwrap_or(report))
    }

    /// Steps 1 and 2 of a merge: the outputs and their hints. Returns what
    /// the steps after the commit point need.
    fn merge_outputs(
        &self,
        mdir: &Path,
        inputs: &[Arc<Segment>],
        horizon: u64,
        report: &mut MergeReport,
    ) -> Result<Committed> {
        let now = self.clock.now_ms();
        let mut throttle = Throttle {
            workers: &self.workers,
            owed: 0,
        };
        let mut outputs: Vec<Output> = Vec::new();
        let mut moves: Vec<Move> = Vec::new();
        for seg in inputs {
            let mut scanner = seg.scanner()?;
            while let Some(step) = scanner.next() {
                let Scanned::Record { pos, header } = step else {
                    continue; // corrupt bytes were reported at open
                };
                if self.closing.load(Ordering::Relaxed) {
                    // Before the commit point: the caller removes `merge/`.
                    return Err(Error::Closed);
                }
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
                out.file.write_all(raw).ctx_at("write", &out.path)?;
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

        Ok(Committed {
            inputs: inputs.to_vec(),
            input_names: inputs.iter().map(|s| s.base).collect(),
            outputs: outputs.iter().map(|o| (o.base, o.len)).collect(),
            moves,
            installed: false,
            swapped: false,
            report: report.clone(),
        })
    }

    /// Steps 4 to 6 of the committed merge in `maintenance`, if there is
    /// one, from the first step not done yet. On error the merge stays
    /// there (and `merge/` on disk) to be rolled forward again: by the next
    /// merge, truncation or hint pass, or by open. Returns its report once
    /// it completes.
    pub(super) fn finish_merge(
        &self,
        maintenance: &mut Maintenance,
    ) -> Result<Option<MergeReport>> {
        let Some(plan) = maintenance.committed_merge.as_mut() else {
            return Ok(None);
        };
        let mdir = self.dir.join(MERGE_DIR);
        let output_names: Vec<u64> = plan.outputs.iter().map(|o| o.0).collect();
        if !plan.installed {
            fail::fail_point!("merge::after_commit", |_| Err(failpoint()));
            // Step 4. A failed fsync of the data directory refuses writes.
            install(&mdir, &output_names)?;
            self.sync_data_dir()?;
            plan.installed = true;
        }
        fail::fail_point!("merge::after_install", |_| Err(failpoint()));
        if !plan.swapped {
            self.swap(plan)?;
            plan.swapped = true;
        }
        fail::fail_point!("merge::after_swap", |_| Err(failpoint()));

        // Step 6. The inputs go before `COMMIT`, durably.
        cleanup_inputs(&self.dir, &plan.input_names, &output_names)?;
        self.sync_data_dir()?;
        remove_merge_dir(&mdir)?;
        let mut report = plan.report.clone();
        report.outputs = plan.outputs.len();
        report.bytes_after = plan.outputs.iter().map(|o| o.1).sum();
        maintenance.committed_merge = None;
        self.stats.merges.fetch_add(1, Ordering::Relaxed);
        self.stats
            .merge_bytes
            .fetch_add(report.bytes_after, Ordering::Relaxed);
        tracing::info!(
            dir = %self.dir.display(),
            "merged {} segments ({} bytes) into {} ({} bytes): {} records kept, {} dropped",
            report.inputs, report.bytes_before, report.outputs, report.bytes_after,
            report.records_kept, report.records_dropped
        );
        Ok(Some(report))
    }

    /// Step 5: opens the installed outputs (the only fallible part), then
    /// switches the segment table and moves keydir entries to them, key by
    /// key, unless a write moved the key meanwhile.
    fn swap(&self, plan: &mut Committed) -> Result<()> {
        let mut opened = Vec::with_capacity(plan.outputs.len());
        for &(base, _) in &plan.outputs {
            let id = self.next_segment_id.fetch_add(1, Ordering::Relaxed);
            let path = segment::file_path(&self.dir, base, LOG_SUFFIX);
            fail::fail_point!("merge::open_output", |_| Err(Error::io_at(
                "open segment",
                &path,
                std::io::Error::from_raw_os_error(libc::EMFILE)
            )));
            let seg = Arc::new(Segment::open(path, id, base)?);
            seg.seal()?;
            opened.push(seg);
        }
        {
            let mut segments = self.segments.write();
            let old: BTreeSet<u32> = plan.inputs.iter().map(|s| s.id).collect();
            segments.ordered.retain(|s| !old.contains(&s.id));
            for (i, seg) in opened.iter().enumerate() {
                segments.by_id.insert(seg.id, seg.clone());
                segments.ordered.insert(i, seg.clone());
            }
        }
        for m in &plan.moves {
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
        let mut segments = self.segments.write();
        for s in &plan.inputs {
            segments.by_id.remove(&s.id);
        }
        Ok(())
    }
}

/// The error a failpoint returns to simulate a crash at a merge step.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn failpoint() -> Error {
    Error::Io {
        context: "failpoint".into(),
        path: None,
        source: std::io::Error::other("injected crash"),
    }
}

/// Creates an output segment in the merge directory.
fn new_output(mdir: &Path, base: u64) -> Result<Output> {
    let path = segment::file_path(mdir, base, LOG_SUFFIX);
    let file = owner_only::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx_at("create", &path)?;
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
    o.file.sync_all().ctx_at("fsync", &o.path)
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
    let mut f = owner_only::create(&tmp).ctx_at("create", &tmp)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .ctx_at("write", &tmp)?;
    fs::rename(&tmp, mdir.join(COMMIT)).ctx_at("rename", &tmp)?;
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

/// Step 4: moves outputs (hint first, then log) from `mdir` into its
/// parent, the data directory; the caller fsyncs it. Idempotent: an output
/// already moved is skipped.
fn install(mdir: &Path, outputs: &[u64]) -> Result<()> {
    let dir = mdir.parent().unwrap_or(Path::new("."));
    for &base in outputs {
        for suffix in [HINT_SUFFIX, LOG_SUFFIX] {
            let from = segment::file_path(mdir, base, suffix);
            let to = segment::file_path(dir, base, suffix);
            if from.exists() {
                fs::rename(&from, &to).ctx_at("rename", &from)?;
            }
        }
    }
    Ok(())
}

/// Removes `merge/`: its `COMMIT` marker first (the merge is complete
/// once the inputs are gone), then the rest.
fn remove_merge_dir(mdir: &Path) -> Result<()> {
    let commit = mdir.join(COMMIT);
    match fs::remove_file(&commit) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io_at("remove", &commit, e)),
    }
    fs::remove_dir_all(mdir).ctx_at("remove", mdir)
}

/// Step 6: deletes inputs that no output replaced, with their hints; the
/// caller fsyncs the directory. Idempotent.
fn cleanup_inputs(dir: &Path, inputs: &[u64], outputs: &[u64]) -> Result<()> {
    for base in inputs.iter().filter(|b| !outputs.contains(b)) {
        for suffix in [HINT_SUFFIX, LOG_SUFFIX] {
            let path = segment::file_path(dir, *base, suffix);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io_at("remove", &path, e)),
            }
        }
    }
    Ok(())
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
                Error::Corrupt(crate::storage::Text::naming(
                    format!(
                        "merge commit marker {} is damaged; move {} aside to open the directory",
                        commit.display(),
                        mdir.display()
                    ),
                    &commit,
                ))
            })?;
            tracing::info!(dir = %dir.display(), "finishing a merge interrupted after its commit");
            install(&mdir, &outputs)?;
            sync_dir(dir)?;
            cleanup_inputs(dir, &inputs, &outputs)?;
            sync_dir(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(dir = %dir.display(), "discarding a merge interrupted before its commit");
        }
        Err(e) => return Err(Error::io_at("read", &commit, e)),
    }
    remove_merge_dir(&mdir)?;
    sync_dir(dir)
}
