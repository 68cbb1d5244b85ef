//! ZooKeeper paths of a cluster, the JSON stored in each znode, and the
//! reads every part of the ZooKeeper layer shares.
//!
//! Formats (UTF-8 JSON, field order as written; unknown fields are
//! ignored on read so newer writers stay readable):
//!
//! ```text
//! <root>/nodes/<id>              {"id":"node-1","client_addr":"127.0.0.1:7379","replication_addr":"127.0.0.1:7380"}
//! <root>/controller              {"node_id":"node-1","controller_epoch":3}
//! <root>/controller_epoch        3
//! <root>/draining/<id>           {"node_epoch":4294967301}   (ephemeral, controlled shutdown)
//! <root>/isr_change/<p>-<seq>    (empty; persistent sequential: a leader changed p's ISR)
//! <root>/partitions/<p>/replicas ["node-1","node-2","node-3"]
//! <root>/partitions/<p>/state    {"leader":"node-1","leader_epoch":1,"isr":["node-1","node-2"],"controller_epoch":3,"leader_node_epoch":4294967301}
//! <root>/admin/reassign          {"version":1,"throttle_bytes_per_sec":0,"cancel":false,"partitions":{"3":["node-1","node-2","node-4"]}}
//! ```
//!
//! `leader` is `null` while a partition is offline. `<p>` is the partition
//! id in decimal. The *node epoch* of a registration is the czxid of its
//! `/nodes/<id>` (KIP-380's broker epoch): a node that restarts, or whose
//! session expired, registers again and gets a higher one.
//! `leader_node_epoch` is the node epoch of the leader's registration the
//! leadership was given to (0, or absent in states written before node
//! epochs existed, when there is no leader).
//!
//! Invariants:
//! - every znode caskade creates carries the configured ACL
//!   (`cluster.zk_auth`, `acl.rs`): create options are built only by
//!   [`Paths::options`], from the ACL the [`Paths`] of the node hold, so no
//!   call site can forget it. With `zk_auth` that ACL gives ALL only to
//!   the cluster's digest identity (and READ to everyone with
//!   `world_read`); without it, ALL to everyone.
//! - `/partitions/<p>`, its `replicas` and its `state` are created together
//!   in one multi, so a partition either has all three or none.
//! - `replicas` changes only in a reassignment (`reassign.rs`): written by
//!   the controller in the same multi as a state with a higher leader
//!   epoch (compare-and-set), behind the controller-epoch check; `state`
//!   changes only by compare-and-set on its znode version.
//! - Reads of many znodes are pipelined in a sliding window
//!   ([`windowed`]): at most [`READ_WINDOW`] requests are made and not yet
//!   answered at any time (the client sends a request when the call is
//!   made, so the window bounds the calls made, not the awaits). Reading N
//!   partitions costs about N / [`READ_WINDOW`] round trips, and another
//!   request of the session (a heartbeat, a watch) waits behind at most
//!   one window in ZooKeeper's queue, not behind all N.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::cluster::LeaderAndIsr;
use crate::error::Error;

/// Attempts of an operation that failed with `ConnectionLoss` before the
/// error is returned (reads are repeated; a write's outcome is checked).
pub(crate) const LOSS_RETRIES: usize = 20;

/// Pause between two attempts after a `ConnectionLoss`.
pub(crate) const LOSS_BACKOFF: Duration = Duration::from_millis(100);

/// Znodes read by every node of this process, by kind: the controller
/// simulation (`tests/cluster/controller_sim.rs`) asserts on them.
#[doc(hidden)]
pub mod reads {
    use std::sync::atomic::AtomicU64;

    /// `/partitions/<p>/state` reads.
    pub static STATES: AtomicU64 = AtomicU64::new(0);
    /// `/partitions/<p>/replicas` reads.
    pub static REPLICAS: AtomicU64 = AtomicU64::new(0);
    /// `/nodes/<id>` reads.
    pub static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);
}

/// Adds `n` to the counter `c`.
fn count(c: &std::sync::atomic::AtomicU64, n: usize) {
    c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Reads per session made and not yet answered, at most ([`windowed`]).
pub(crate) const READ_WINDOW: usize = 1000;

/// Calls `call` for every item in order, with at most `window` calls made
/// whose answer was not awaited yet; returns the answers in order. The
/// ZooKeeper client sends a request when the call is made, so this bounds
/// what one caller queues in ZooKeeper (a session's requests are answered
/// in order: a heartbeat waits behind everything queued before it).
pub(crate) async fn windowed<T, R, F, Fut>(items: &[T], window: usize, mut call: F) -> Vec<R>
where
    F: FnMut(&T) -> Fut,
    Fut: Future<Output = R>,
{
    let mut out = Vec::with_capacity(items.len());
    let mut pending = VecDeque::with_capacity(window.min(items.len()));
    let mut next = items.iter();
    loop {
        while pending.len() < window.max(1) {
            match next.next() {
                Some(item) => pending.push_back(call(item)),
                None => break,
            }
        }
        match pending.pop_front() {
            Some(fut) => out.push(fut.await),
            None => return out,
        }
    }
}

/// The znode paths of one cluster, and the ACL its znodes are created
/// with.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    /// The cluster root, e.g. `/caskade/default`, without a trailing `/`.
    pub root: String,
    /// The ACL of every znode this node creates (`acl.rs`).
    acl: std::sync::Arc<[zk::Acl]>,
}

impl Paths {
    /// The paths under `root`, whose znodes get `acl`.
    pub fn new(root: String, acl: Vec<zk::Acl>) -> Paths {
        Paths {
            root,
            acl: acl.into(),
        }
    }

    /// Create options of `mode` carrying the configured ACL: the only
    /// place the ZooKeeper layer builds create options.
    pub fn options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'_> {
        mode.with_acls(zk::Acls::new(&self.acl))
    }

    /// `<root>/nodes`.
    pub fn nodes(&self) -> String {
        format!("{}/nodes", self.root)
    }

    /// `<root>/nodes/<id>`.
    pub fn node(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.root)
    }

    /// `<root>/draining` (controlled shutdowns, `drain.rs`).
    pub fn draining(&self) -> String {
        format!("{}/draining", self.root)
    }

    /// `<root>/draining/<id>`.
    pub fn draining_node(&self, id: &str) -> String {
        format!("{}/draining/{id}", self.root)
    }

    /// `<root>/controller`.
    pub fn controller(&self) -> String {
        format!("{}/controller", self.root)
    }

    /// `<root>/controller_epoch`.
    pub fn controller_epoch(&self) -> String {
        format!("{}/controller_epoch", self.root)
    }

    /// `<root>/isr_change` (ISR change notifications, `controller.rs`).
    pub fn isr_change(&self) -> String {
        format!("{}/isr_change", self.root)
    }

    /// `<root>/isr_change/<p>-`: the prefix of partition `p`'s sequential
    /// ISR change notification.
    pub fn isr_change_of(&self, p: u32) -> String {
        format!("{}/isr_change/{p}-", self.root)
    }

    /// `<root>/partitions`.
    pub fn partitions(&self) -> String {
        format!("{}/partitions", self.root)
    }

    /// `<root>/partitions/<p>`.
    pub fn partition(&self, p: u32) -> String {
        format!("{}/partitions/{p}", self.root)
    }

    /// `<root>/partitions/<p>/replicas`.
    pub fn replicas(&self, p: u32) -> String {
        format!("{}/partitions/{p}/replicas", self.root)
    }

    /// `<root>/partitions/<p>/state`.
    pub fn state(&self, p: u32) -> String {
        format!("{}/partitions/{p}/state", self.root)
    }
}

/// Data of `/controller`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ControllerZnode {
    /// Id of the controller node.
    pub node_id: String,
    /// The epoch it was elected at.
    pub controller_epoch: u64,
}

/// Data of `/partitions/<p>/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateZnode {
    /// Leader node id; `None` (`null`) while offline.
    pub leader: Option<String>,
    /// Bumped on every leader change.
    pub leader_epoch: u32,
    /// In-sync replicas, the leader included.
    pub isr: Vec<String>,
    /// Epoch of the controller that wrote the state (or whose state the
    /// leader updated).
    pub controller_epoch: u64,
    /// Node epoch of the leader's registration the leadership was given
    /// to; 0 without a leader (and in states older than node epochs).
    #[serde(default)]
    pub leader_node_epoch: i64,
}

impl StateZnode {
    /// The znode content of `s`.
    pub fn of(s: &LeaderAndIsr) -> StateZnode {
        StateZnode {
            leader: s.leader.clone(),
            leader_epoch: s.leader_epoch,
            isr: s.isr.clone(),
            controller_epoch: s.controller_epoch,
            leader_node_epoch: s.leader_node_epoch,
        }
    }

    /// The full state of partition `p` from this content.
    pub fn into_state(self, p: u32, replicas: Vec<String>, zk_version: i32) -> LeaderAndIsr {
        LeaderAndIsr {
            partition: p,
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            replicas,
            isr: self.isr,
            controller_epoch: self.controller_epoch,
            zk_version,
            leader_node_epoch: self.leader_node_epoch,
        }
    }
}

/// Whether two states carry the same znode content (versions aside).
pub(crate) fn same_content(a: &LeaderAndIsr, b: &LeaderAndIsr) -> bool {
    StateZnode::of(a) == StateZnode::of(b)
}

/// JSON bytes of `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, lists) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Parses the JSON of znode `path`.
pub(crate) fn decode<T: DeserializeOwned>(path: &str, data: &[u8]) -> crate::Result<T> {
    serde_json::from_slice(data).map_err(|e| {
        Error::Unavailable(format!(
            "ZooKeeper znode {path} holds malformed data ({e}): {:?}",
            String::from_utf8_lossy(data)
        ))
    })
}

/// The crate error for a ZooKeeper failure while doing `what`.
pub(crate) fn zk_error(what: &str, e: zk::Error) -> Error {
    Error::Unavailable(format!("ZooKeeper: {what}: {e}"))
}

/// Runs `op` again (up to [`LOSS_RETRIES`] times) while it fails with
/// `ConnectionLoss`. For reads, and for writes whose repetition is
/// harmless (creating a node that may exist, ...).
pub(crate) async fn retry_loss<T, F, Fut>(mut op: F) -> Result<T, zk::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, zk::Error>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(zk::Error::ConnectionLoss) if attempt < LOSS_RETRIES => {
                attempt += 1;
                tokio::time::sleep(LOSS_BACKOFF).await;
            }
            r => return r,
        }
    }
}

/// Creates `path` (persistent, empty) and its missing ancestors, all with
/// the ACL of `paths`.
pub(crate) async fn mkdir(client: &zk::Client, paths: &Paths, path: &str) -> Result<(), zk::Error> {
    let opts = paths.options(zk::CreateMode::Persistent);
    retry_loss(|| client.mkdir(path, &opts)).await
}

/// Creates `path` holding `data` unless it exists.
pub(crate) async fn create_if_missing(
    client: &zk::Client,
    paths: &Paths,
    path: &str,
    data: &[u8],
) -> Result<(), zk::Error> {
    let opts = paths.options(zk::CreateMode::Persistent);
    match retry_loss(|| client.create(path, data, &opts)).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The partition ids present under `/partitions`, ascending. Children
/// whose name is not a number are ignored.
pub(crate) async fn list_partitions(client: &zk::Client, paths: &Paths) -> crate::Result<Vec<u32>> {
    let path = paths.partitions();
    let children = retry_loss(|| client.list_children(&path))
        .await
        .map_err(|e| zk_error(&format!("list {path}"), e))?;
    let mut ids: Vec<u32> = children.iter().filter_map(|c| c.parse().ok()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Reads `replicas` of partitions `ids` (pipelined). Partitions without the
/// znode are left out.
pub(crate) async fn read_replicas(
    client: &zk::Client,
    paths: &Paths,
    ids: &[u32],
) -> crate::Result<BTreeMap<u32, Vec<String>>> {
    let mut attempt = 0;
    'again: loop {
        count(&reads::REPLICAS, ids.len());
        let answers = windowed(ids, READ_WINDOW, |&p| client.get_data(&paths.replicas(p))).await;
        let mut out = BTreeMap::new();
        for (&p, answer) in ids.iter().zip(answers) {
            match answer {
                Ok((data, _)) => {
                    out.insert(p, decode(&paths.replicas(p), &data)?);
                }
                Err(zk::Error::NoNode) => {}
                Err(zk::Error::ConnectionLoss) if attempt < LOSS_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(LOSS_BACKOFF).await;
                    continue 'again;
                }
                Err(e) => return Err(zk_error(&format!("read {}", paths.replicas(p)), e)),
            }
        }
        return Ok(out);
    }
}

/// Reads the state of partitions `ids` (pipelined), given their replicas.
/// Partitions without a state znode, or missing from `replicas`, are left
/// out.
pub(crate) async fn read_states(
    client: &zk::Client,
    paths: &Paths,
    replicas: &BTreeMap<u32, Vec<String>>,
    ids: &[u32],
) -> crate::Result<BTreeMap<u32, LeaderAndIsr>> {
    let ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|p| replicas.contains_key(p))
        .collect();
    let mut attempt = 0;
    'again: loop {
        count(&reads::STATES, ids.len());
        let answers = windowed(&ids, READ_WINDOW, |&p| client.get_data(&paths.state(p))).await;
        let mut out = BTreeMap::new();
        for (&p, answer) in ids.iter().zip(answers) {
            match answer {
                Ok((data, stat)) => {
                    let z: StateZnode = decode(&paths.state(p), &data)?;
                    let r = replicas.get(&p).cloned().unwrap_or_default();
                    out.insert(p, z.into_state(p, r, stat.version));
                }
                Err(zk::Error::NoNode) => {}
                Err(zk::Error::ConnectionLoss) if attempt < LOSS_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(LOSS_BACKOFF).await;
                    continue 'again;
                }
                Err(e) => return Err(zk_error(&format!("read {}", paths.state(p)), e)),
            }
        }
        return Ok(out);
    }
}

/// The registered nodes (`/nodes/*`), sorted by id; malformed entries are
/// skipped with a warning.
pub(crate) async fn read_nodes(
    client: &zk::Client,
    paths: &Paths,
    ids: &[String],
) -> crate::Result<Vec<crate::cluster::NodeAddr>> {
    Ok(read_registrations(client, paths, ids)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// The registered nodes (`/nodes/*`) with their node epochs (czxid),
/// sorted by id; malformed entries are skipped with a warning.
pub(crate) async fn read_registrations(
    client: &zk::Client,
    paths: &Paths,
    ids: &[String],
) -> crate::Result<Vec<(crate::cluster::NodeAddr, i64)>> {
    let mut attempt = 0;
    'again: loop {
        count(&reads::REGISTRATIONS, ids.len());
        let answers = windowed(ids, READ_WINDOW, |id| client.get_data(&paths.node(id))).await;
        let mut out = Vec::with_capacity(ids.len());
        for (id, answer) in ids.iter().zip(answers) {
            match answer {
                Ok((data, stat)) => {
                    match decode::<crate::cluster::NodeAddr>(&paths.node(id), &data) {
                        Ok(n) if &n.id == id => out.push((n, stat.czxid)),
                        Ok(n) => {
                            tracing::warn!("ignoring {}: it names node {:?}", paths.node(id), n.id)
                        }
                        Err(e) => tracing::warn!("ignoring node {id}: {e}"),
                    }
                }
                // Gone between the listing and the read.
                Err(zk::Error::NoNode) => {}
                Err(zk::Error::ConnectionLoss) if attempt < LOSS_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(LOSS_BACKOFF).await;
                    continue 'again;
                }
                Err(e) => return Err(zk_error(&format!("read {}", paths.node(id)), e)),
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        return Ok(out);
    }
}

/// The registrations under `/nodes` as last listed, kept between listings
/// so that a change of membership reads only the registrations that
/// appeared (a membership change costs each watcher one listing and one
/// read per new node, not one read per live node).
///
/// A node that left and registered again between two listings keeps its
/// id but gets a new node epoch (czxid): such a bounce is recognised from
/// `/nodes`' child version, which counts every create and delete: when it
/// moved by more than the ids that appeared and vanished explain, every
/// registration is read again.
#[derive(Debug, Default)]
pub(crate) struct Registrations {
    /// Registration and node epoch by node id.
    by_id: BTreeMap<String, (crate::cluster::NodeAddr, i64)>,
    /// `cversion` of `/nodes` at the last listing; `None` before the first.
    cversion: Option<i32>,
    /// Registrations read so far (tests count them).
    pub reads: u64,
}

impl Registrations {
    /// Updates from a listing of `/nodes` (`ids`, and `stat` of `/nodes`
    /// returned with it): drops the ids gone, reads those that appeared
    /// (or all, after a bounce).
    pub async fn update(
        &mut self,
        client: &zk::Client,
        paths: &Paths,
        ids: &[String],
        stat: &zk::Stat,
    ) -> crate::Result<()> {
        let listed: std::collections::BTreeSet<&String> = ids.iter().collect();
        let gone = self.by_id.keys().filter(|id| !listed.contains(id)).count();
        let appeared: Vec<String> = ids
            .iter()
            .filter(|id| !self.by_id.contains_key(*id))
            .cloned()
            .collect();
        let explained = (gone + appeared.len()) as i64;
        let all = self
            .cversion
            .is_none_or(|c| i64::from(stat.cversion) - i64::from(c) != explained);
        let read = if all { ids.to_vec() } else { appeared };
        let got = read_registrations(client, paths, &read).await?;
        self.reads += read.len() as u64;
        if all {
            self.by_id.clear();
        } else {
            self.by_id.retain(|id, _| listed.contains(id));
        }
        for (n, e) in got {
            self.by_id.insert(n.id.clone(), (n, e));
        }
        self.cversion = Some(stat.cversion);
        Ok(())
    }

    /// The registrations with their node epochs, sorted by id.
    pub fn list(&self) -> Vec<(crate::cluster::NodeAddr, i64)> {
        self.by_id.values().cloned().collect()
    }

    /// The registrations, sorted by id.
    pub fn nodes(&self) -> Vec<crate::cluster::NodeAddr> {
        self.by_id.values().map(|(n, _)| n.clone()).collect()
    }
}

/// Lists `/nodes` and reads every entry.
pub(crate) async fn live_nodes(
    client: &zk::Client,
    paths: &Paths,
) -> crate::Result<Vec<crate::cluster::NodeAddr>> {
    let path = paths.nodes();
    let ids = retry_loss(|| client.list_children(&path))
        .await
        .map_err(|e| zk_error(&format!("list {path}"), e))?;
    read_nodes(client, paths, &ids).await
}

/// The states of every partition listing `me` as a replica.
pub(crate) async fn states_of_replica(
    client: &zk::Client,
    paths: &Paths,
    me: &str,
) -> crate::Result<Vec<LeaderAndIsr>> {
    let ids = list_partitions(client, paths).await?;
    let mut replicas = read_replicas(client, paths, &ids).await?;
    replicas.retain(|_, r| r.iter().any(|n| n == me));
    let mine: Vec<u32> = replicas.keys().copied().collect();
    Ok(read_states(client, paths, &replicas, &mine)
        .await?
        .into_values()
        .collect())
}

/// The states of partitions `ids` (their `replicas` and `state` read
/// fresh: reassignment may have changed either), whether or not they list
/// `me` (so a node learns it was moved off a partition). `None`: every
/// partition listing `me` ([`states_of_replica`]).
pub(crate) async fn states_of(
    client: &zk::Client,
    paths: &Paths,
    me: &str,
    ids: Option<Vec<u32>>,
) -> crate::Result<Vec<LeaderAndIsr>> {
    let Some(ids) = ids else {
        return states_of_replica(client, paths, me).await;
    };
    let replicas = read_replicas(client, paths, &ids).await?;
    Ok(read_states(client, paths, &replicas, &ids)
        .await?
        .into_values()
        .collect())
}

/// The partition named by an ISR change notification `<p>-<seq>`.
pub(crate) fn isr_change_partition(name: &str) -> Option<u32> {
    name.split_once('-').and_then(|(p, _)| p.parse().ok())
}

/// The controlled-shutdown markers (`/draining/*`): node id and the node
/// epoch each names (pipelined reads; malformed ones are skipped).
pub(crate) async fn read_draining(
    client: &zk::Client,
    paths: &Paths,
    ids: &[String],
) -> crate::Result<Vec<(String, i64)>> {
    let pending: Vec<_> = ids
        .iter()
        .map(|id| (id, client.get_data(&paths.draining_node(id))))
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for (id, fut) in pending {
        match fut.await {
            Ok((data, _)) => {
                let path = paths.draining_node(id);
                match decode::<super::drain::DrainingZnode>(&path, &data) {
                    Ok(m) => out.push((id.clone(), m.node_epoch)),
                    Err(e) => tracing::warn!("ignoring {path}: {e}"),
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(zk_error(&format!("read {}", paths.draining_node(id)), e)),
        }
    }
    Ok(out)
}
