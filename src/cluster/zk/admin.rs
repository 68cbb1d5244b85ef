//! The operator's side of reassignment in ZooKeeper: the admin RPCs
//! (`Reassign`, `ReassignStatus`, `ReassignCancel`, `ReassignThrottle`,
//! `Decommission`) write and read these znodes through this node's session;
//! the controller executes them (not here).
//!
//! ```text
//! <root>/admin/reassign                {"version":1,"throttle_bytes_per_sec":10485760,"cancel":false,
//!                                       "partitions":{"3":["node-1","node-2","node-4"]}}
//! <root>/admin/decommissioned/<id>     {}   (persistent: <id> gets no replicas from plans)
//! ```
//!
//! `partitions` maps a partition id (decimal string) to its TARGET replicas,
//! the first being the preferred leader (docs/REPLICATION.md,
//! "Reassignment"). Unknown fields are ignored on read.
//!
//! Invariants:
//! - `/admin/reassign` is only ever created with create-if-absent: a second
//!   reassignment while one is in progress is refused, never merged;
//! - after creation this side only rewrites `throttle_bytes_per_sec` and
//!   `cancel`, each with a compare-and-set on the znode version (the
//!   controller removes finished partitions concurrently, so a blind write
//!   could bring them back);
//! - a plan is written only if every partition exists, every target has
//!   `replication_factor` distinct ids, each registered now and not
//!   decommissioned.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use super::ZkCluster;
use super::znode::{self, Paths, decode, encode, zk_error};
use crate::error::Error;

/// Version of the `/admin/reassign` format written here.
pub const REASSIGN_FORMAT: u32 = 1;

/// Compare-and-set attempts of a throttle or cancel rewrite before giving
/// up (each failed one means the controller changed the znode meanwhile).
const CAS_ATTEMPTS: usize = 20;

/// What a refused second reassignment says.
pub const IN_PROGRESS: &str =
    "a reassignment is in progress: see `caskade-cli cluster reassign status`, or cancel it";

/// What cancel / throttle say without a reassignment.
pub const NONE_IN_PROGRESS: &str = "no reassignment in progress";

/// Data of `/admin/reassign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    /// Format version, [`REASSIGN_FORMAT`].
    #[serde(default = "format_version")]
    pub version: u32,
    /// Catch-up bytes per second per node for replicas being added; 0 =
    /// unthrottled.
    #[serde(default)]
    pub throttle_bytes_per_sec: u64,
    /// Revert the partitions not finished yet, then delete the znode.
    #[serde(default)]
    pub cancel: bool,
    /// Partition id -> target replicas (first = preferred leader); the
    /// controller removes each partition once it is done.
    #[serde(default)]
    pub partitions: BTreeMap<u32, Vec<String>>,
}

/// The default of [`Reassignment::version`].
fn format_version() -> u32 {
    REASSIGN_FORMAT
}

/// What `ReassignStatus` reports.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ReassignStatus {
    /// The reassignment in progress, if any.
    pub pending: Option<Reassignment>,
    /// Decommissioned node ids, sorted.
    pub decommissioned: Vec<String>,
}

/// `<root>/admin`.
pub(crate) fn admin_path(paths: &Paths) -> String {
    format!("{}/admin", paths.root)
}

/// `<root>/admin/reassign`.
pub(crate) fn reassign_path(paths: &Paths) -> String {
    format!("{}/admin/reassign", paths.root)
}

/// `<root>/admin/decommissioned`.
pub(crate) fn decommissioned_path(paths: &Paths) -> String {
    format!("{}/admin/decommissioned", paths.root)
}

/// The pending reassignment and its znode version, if any.
pub(crate) async fn read_reassignment(
    client: &zk::Client,
    paths: &Paths,
) -> crate::Result<Option<(Reassignment, i32)>> {
    let path = reassign_path(paths);
    match znode::retry_loss(|| client.get_data(&path)).await {
        Ok((data, stat)) => Ok(Some((decode(&path, &data)?, stat.version))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(zk_error(&format!("read {path}"), e)),
    }
}

/// The decommissioned node ids, sorted.
pub(crate) async fn read_decommissioned(
    client: &zk::Client,
    paths: &Paths,
) -> crate::Result<Vec<String>> {
    let path = decommissioned_path(paths);
    match znode::retry_loss(|| client.list_children(&path)).await {
        Ok(mut ids) => {
            ids.sort();
            Ok(ids)
        }
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(zk_error(&format!("list {path}"), e)),
    }
}

/// Checks `partitions` against the cluster (see the module invariants).
pub(crate) fn validate(
    partitions: &BTreeMap<u32, Vec<String>>,
    existing: &[u32],
    registered: &[String],
    decommissioned: &[String],
    rf: usize,
) -> crate::Result<()> {
    if partitions.is_empty() {
        return Err(Error::InvalidInput(
            "the plan lists no partition: nothing to reassign".into(),
        ));
    }
    for (p, target) in partitions {
        if existing.binary_search(p).is_err() {
            return Err(Error::InvalidInput(format!(
                "partition {p} does not exist (the cluster has {} partitions)",
                existing.len()
            )));
        }
        if target.len() != rf {
            return Err(Error::InvalidInput(format!(
                "partition {p}: {} replicas given ({}), the replication factor is {rf}",
                target.len(),
                target.join(",")
            )));
        }
        for (i, id) in target.iter().enumerate() {
            if target[..i].contains(id) {
                return Err(Error::InvalidInput(format!(
                    "partition {p}: node {id} is listed twice"
                )));
            }
            if !registered.contains(id) {
                return Err(Error::InvalidInput(format!(
                    "partition {p}: node {id} is not registered in the cluster (live nodes: {})",
                    registered.join(",")
                )));
            }
            if decommissioned.contains(id) {
                return Err(Error::InvalidInput(format!(
                    "partition {p}: node {id} is decommissioned (`caskade-cli cluster \
                     recommission {id}` to use it again)"
                )));
            }
        }
    }
    Ok(())
}

impl ZkCluster {
    /// Starts a reassignment: validates `partitions` and creates
    /// `/admin/reassign`; refused while one is in progress.
    pub async fn reassign(
        &self,
        partitions: BTreeMap<u32, Vec<String>>,
        throttle_bytes_per_sec: u64,
    ) -> crate::Result<()> {
        let shared = &self.shared;
        let client = shared.client()?;
        let paths = &shared.paths;
        let existing = znode::list_partitions(&client, paths).await?;
        let registered: Vec<String> = znode::live_nodes(&client, paths)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        let decommissioned = read_decommissioned(&client, paths).await?;
        let rf = shared.opts.replication_factor as usize;
        validate(&partitions, &existing, &registered, &decommissioned, rf)?;
        let plan = Reassignment {
            version: REASSIGN_FORMAT,
            throttle_bytes_per_sec,
            cancel: false,
            partitions,
        };
        create_reassignment(&client, paths, &plan).await
    }

    /// The reassignment in progress and the decommissioned nodes.
    pub async fn reassign_status(&self) -> crate::Result<ReassignStatus> {
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        Ok(ReassignStatus {
            pending: read_reassignment(&client, paths).await?.map(|(r, _)| r),
            decommissioned: read_decommissioned(&client, paths).await?,
        })
    }

    /// Asks the controller to revert the partitions not finished yet.
    pub async fn reassign_cancel(&self) -> crate::Result<Reassignment> {
        self.rewrite(|r| r.cancel = true).await
    }

    /// Changes the throttle of the reassignment in progress.
    pub async fn reassign_throttle(&self, bytes_per_sec: u64) -> crate::Result<Reassignment> {
        self.rewrite(|r| r.throttle_bytes_per_sec = bytes_per_sec)
            .await
    }

    /// Read-modify-write of `/admin/reassign` with compare-and-set.
    async fn rewrite(&self, change: impl Fn(&mut Reassignment)) -> crate::Result<Reassignment> {
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        let path = reassign_path(paths);
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut r, version)) = read_reassignment(&client, paths).await? else {
                return Err(Error::FailedPrecondition(NONE_IN_PROGRESS.into()));
            };
            change(&mut r);
            match client.set_data(&path, &encode(&r), Some(version)).await {
                Ok(_) => return Ok(r),
                Err(zk::Error::NoNode) => {
                    return Err(Error::FailedPrecondition(NONE_IN_PROGRESS.into()));
                }
                // Changed meanwhile, or unknown outcome: read it again (a
                // rewrite that landed reads back as already changed).
                Err(zk::Error::BadVersion) | Err(zk::Error::ConnectionLoss) => {
                    tokio::time::sleep(znode::LOSS_BACKOFF).await;
                }
                Err(e) => return Err(zk_error(&format!("write {path}"), e)),
            }
        }
        Err(Error::Unavailable(format!(
            "{path} kept changing; {CAS_ATTEMPTS} compare-and-set attempts failed"
        )))
    }

    /// Marks `node` decommissioned (plans give it no replica), or removes
    /// the mark. Returns the decommissioned nodes after the change. A node
    /// neither registered nor hosting a replica (a typo) is refused.
    pub async fn decommission(&self, node: &str, on: bool) -> crate::Result<Vec<String>> {
        if node.is_empty() || node.contains('/') {
            return Err(Error::InvalidInput(format!("{node:?} is not a node id")));
        }
        let client = self.shared.client()?;
        let paths = &self.shared.paths;
        let path = format!("{}/{node}", decommissioned_path(paths));
        if on {
            let registered = znode::live_nodes(&client, paths)
                .await?
                .iter()
                .any(|n| n.id == node);
            let ids = znode::list_partitions(&client, paths).await?;
            let hosts = znode::read_replicas(&client, paths, &ids)
                .await?
                .values()
                .any(|r| r.iter().any(|n| n == node));
            if !registered && !hosts {
                return Err(Error::InvalidInput(format!(
                    "unknown node {node}: not registered and hosting no replica"
                )));
            }
            znode::mkdir(&client, paths, &decommissioned_path(paths))
                .await
                .map_err(|e| zk_error(&format!("create {}", decommissioned_path(paths)), e))?;
            znode::create_if_missing(&client, paths, &path, b"{}")
                .await
                .map_err(|e| zk_error(&format!("create {path}"), e))?;
        } else {
            match znode::retry_loss(|| client.delete(&path, None)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(zk_error(&format!("delete {path}"), e)),
            }
        }
        read_decommissioned(&client, paths).await
    }
}

/// Creates `/admin/reassign` holding `plan` unless it exists.
pub(crate) async fn create_reassignment(
    client: &zk::Client,
    paths: &Paths,
    plan: &Reassignment,
) -> crate::Result<()> {
    let admin = admin_path(paths);
    znode::mkdir(client, paths, &admin)
        .await
        .map_err(|e| zk_error(&format!("create {admin}"), e))?;
    let path = reassign_path(paths);
    let data = encode(plan);
    let opts = paths.options(zk::CreateMode::Persistent);
    let mut lost = false;
    for _ in 0..=znode::LOSS_RETRIES {
        match client.create(&path, &data, &opts).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::ConnectionLoss) => {
                lost = true;
                tokio::time::sleep(znode::LOSS_BACKOFF).await;
            }
            Err(zk::Error::NodeExists) => {
                // After a lost answer, our own create may be what exists.
                if lost
                    && let Some((r, _)) = read_reassignment(client, paths).await?
                    && &r == plan
                {
                    return Ok(());
                }
                return Err(Error::FailedPrecondition(IN_PROGRESS.into()));
            }
            Err(e) => return Err(zk_error(&format!("create {path}"), e)),
        }
    }
    Err(Error::Unavailable(format!(
        "ZooKeeper did not answer the creation of {path}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    /// The exact contract JSON, and unknown fields ignored on read.
    #[test]
    fn the_znode_format_is_the_contract() {
        let r = Reassignment {
            version: 1,
            throttle_bytes_per_sec: 10_485_760,
            cancel: false,
            partitions: BTreeMap::from([
                (3, ids("node-1,node-2,node-4")),
                (5, ids("node-4,node-1,node-3")),
                (10, ids("node-4,node-2,node-3")),
            ]),
        };
        assert_eq!(
            String::from_utf8(encode(&r)).unwrap(),
            r#"{"version":1,"throttle_bytes_per_sec":10485760,"cancel":false,"partitions":{"3":["node-1","node-2","node-4"],"5":["node-4","node-1","node-3"],"10":["node-4","node-2","node-3"]}}"#
        );
        let read: Reassignment = decode(
            "/x",
            br#"{"partitions":{"7":["a","b"]},"started_by":"x","cancel":true}"#,
        )
        .unwrap();
        assert_eq!(
            read,
            Reassignment {
                version: 1,
                throttle_bytes_per_sec: 0,
                cancel: true,
                partitions: BTreeMap::from([(7, ids("a,b"))]),
            }
        );
    }

    #[test]
    fn plans_are_validated() {
        let ok = |s: &str| -> BTreeMap<u32, Vec<String>> { BTreeMap::from([(1, ids(s))]) };
        let existing = [0, 1, 2];
        let live = ids("a,b,c,d");
        let gone = ids("d");
        let check = |m: &BTreeMap<u32, Vec<String>>| {
            validate(m, &existing, &live, &gone, 3).map_err(|e| e.to_string())
        };
        assert_eq!(check(&ok("a,b,c")), Ok(()));
        assert_eq!(
            check(&BTreeMap::from([(3, ids("a,b,c"))])),
            Err("partition 3 does not exist (the cluster has 3 partitions)".into())
        );
        assert_eq!(
            check(&ok("a,b")),
            Err("partition 1: 2 replicas given (a,b), the replication factor is 3".into())
        );
        assert_eq!(
            check(&ok("a,b,a")),
            Err("partition 1: node a is listed twice".into())
        );
        assert_eq!(
            check(&ok("a,b,x")),
            Err(
                "partition 1: node x is not registered in the cluster (live nodes: a,b,c,d)".into()
            )
        );
        assert_eq!(
            check(&ok("a,b,d")),
            Err(
                "partition 1: node d is decommissioned (`caskade-cli cluster recommission d` to \
                 use it again)"
                    .into()
            )
        );
        assert_eq!(
            check(&BTreeMap::new()),
            Err("the plan lists no partition: nothing to reassign".into())
        );
    }
}
