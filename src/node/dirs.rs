//! The data directory: its lock, permissions and `layout.yaml` check, the
//! opening of a partition's engine, and the partition directories a cluster
//! node's [`ReplicaManager`] opens, closes and removes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs4::FileExt;
use serde::{Deserialize, Serialize};

use crate::cluster::PARTITIONER;
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::replication::{Engines, ReplicaLog};
use crate::storage::{self, Clock, Engine, owner_only};

/// Contents of `layout.yaml`.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    /// Layout format version, 1.
    format: u32,
    /// Name of the key -> partition scheme.
    partitioner: String,
    /// Partition count.
    partitions: u32,
}

/// The partition directories of a cluster node (`<data_dir>/partitions`):
/// the [`ReplicaManager`] opens and closes their engines as this node's
/// assignments change. A partition this node was removed from has its
/// directory deleted (`replication/hosting.rs`).
pub(super) struct PartitionDirs {
    /// `<data_dir>/partitions`.
    pub(super) dir: PathBuf,
    /// Engine options (with the node's shared value cache).
    pub(super) storage: storage::Options,
    /// The engines' clock.
    pub(super) clock: Arc<dyn Clock>,
    /// The engines open now, by partition id, to close them explicitly
    /// (off the runtime) rather than wherever the last handle drops.
    pub(super) open: parking_lot::Mutex<std::collections::HashMap<u32, Arc<storage::Bitcask>>>,
}

impl Engines for PartitionDirs {
    fn open(&self, p: u32) -> Result<Arc<dyn ReplicaLog>> {
        let pdir = self.dir.join(p.to_string());
        // At run time these answer the controller's notices: the path goes
        // to the log only (docs/SECURITY.md, "Input validation").
        owner_only::create_dir_all(&pdir).map_err(|e| {
            tracing::error!("cannot create partition directory {}: {e}", pdir.display());
            Error::Unavailable(format!("cannot create the directory of partition {p}: {e}"))
        })?;
        let engine =
            storage::Bitcask::open_replica(&pdir, self.storage.clone(), self.clock.clone())
                .map_err(|e| {
                    tracing::error!("cannot open partition {p} in {}: {e}", pdir.display());
                    Error::Unavailable(format!("cannot open partition {p}: {}", e.client_message()))
                })?;
        let engine = Arc::new(engine);
        self.open.lock().insert(p, engine.clone());
        Ok(engine)
    }

    fn close(&self, p: u32, _log: &Arc<dyn ReplicaLog>) -> Result<()> {
        let engine = self.open.lock().remove(&p);
        match engine {
            Some(e) => Ok(e.close()?),
            None => Ok(()),
        }
    }

    fn remove(&self, p: u32) -> Result<()> {
        let pdir = self.dir.join(p.to_string());
        let gone = |e: std::io::Error| {
            tracing::error!("cannot delete {}: {e}", pdir.display());
            Error::Unavailable(format!("cannot delete the directory of partition {p}: {e}"))
        };
        match fs::remove_dir_all(&pdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(gone(e)),
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(gone)
    }
}

/// Opens the engine of one partition. Switching the durable engine in is
/// this one function.
pub(super) fn open_engine(
    kind: EngineKind,
    dir: &Path,
    options: &storage::Options,
    clock: Arc<dyn Clock>,
) -> storage::Result<Arc<dyn Engine>> {
    match kind {
        EngineKind::Bitcask => Ok(Arc::new(storage::Bitcask::open_with_clock(
            dir,
            options.clone(),
            clock,
        )?)),
        EngineKind::Memory => Ok(Arc::new(storage::Memory::new(clock, options.limits))),
    }
}

/// Makes the data directory private (`0700`) if it is not, with a warning.
pub(super) fn restrict_data_dir(dir: &Path) -> Result<()> {
    match owner_only::restrict_dir(dir) {
        Ok(None) => Ok(()),
        Ok(Some(was)) => {
            tracing::warn!(
                "data directory {} was mode {was:04o}, readable by other users; set to 0700",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(Error::Unavailable(format!(
            "cannot make data directory {} private: {e}",
            dir.display()
        ))),
    }
}

/// Takes the exclusive lock on `<dir>/LOCK`.
pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = owner_only::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    // Qualified: std's inherent `File::try_lock` needs a newer rustc than
    // the workspace's rust-version.
    match FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(Error::Unavailable(format!(
            "data directory {} is in use by another caskade-server (lock on {} is held)",
            dir.display(),
            path.display()
        ))),
        Err(fs4::TryLockError::Error(e)) => Err(Error::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Writes `layout.yaml` on first open; afterwards checks the partition
/// count has not changed.
pub(super) fn check_layout(dir: &Path, partitions: u32) -> Result<()> {
    let path = dir.join("layout.yaml");
    let wanted = Layout {
        format: 1,
        partitioner: PARTITIONER.into(),
        partitions,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found: Layout = serde_yaml_ng::from_str(&text)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            if found.partitions != partitions {
                return Err(Error::InvalidInput(format!(
                    "data directory {} holds {} partitions but the configuration asks for {}; \
                     the partition count cannot change (keys would move)",
                    dir.display(),
                    found.partitions,
                    partitions
                )));
            }
            if found != wanted {
                return Err(Error::Corrupt(format!(
                    "{}: unsupported layout {found:?}",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_yaml_ng::to_string(&wanted)
                .map_err(|e| Error::Internal(format!("cannot encode layout: {e}")))?;
            write_durably(&path, text.as_bytes())
                .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", path.display())))
        }
        Err(e) => Err(Error::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes a small file atomically: temp file, fsync, rename, fsync the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = owner_only::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
