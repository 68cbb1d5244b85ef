//! Auto rebalance (`cluster.auto_rebalance`): a node that joined gets its
//! share of replicas without operator action.
//!
//! Runs on every node beside the controller candidacy, for the life of a
//! session, and acts only while this node is the controller
//! (`Shared::controller` names it). Every [`TICK`] it compares the live
//! nodes with the nodes hosting a replica (read from ZooKeeper when a live
//! node is not among them, or every 30 s; nothing is read in the steady
//! state), then reads the decommissioned marks and `/admin/reassign`. When some live, non-decommissioned node hosts no
//! replica, no reassignment is in progress, and both have held on every
//! tick for `auto_rebalance_grace_ms`, it computes a plan
//! ([`crate::cluster::plan`]) over the live, non-decommissioned nodes and
//! creates `/admin/reassign` with it (create-if-absent, as the admin RPC:
//! an operator's reassignment written meanwhile wins), throttled at
//! `auto_rebalance_throttle_bytes_per_sec`. The controller executes it.
//!
//! Invariants:
//! - nothing is written unless this node is the controller, the condition
//!   held for the whole grace period (a node restarting within it is not
//!   a trigger), and the plan gives one of the empty nodes a replica;
//! - the plan never names a decommissioned or dead node (the plan
//!   generator's eligible set).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::admin::{REASSIGN_FORMAT, Reassignment, create_reassignment, read_decommissioned};
use super::{Shared, znode};
use crate::cluster::plan;
use crate::error::Error;

/// How often the condition is checked.
const TICK: Duration = Duration::from_millis(500);

/// Runs auto rebalance while `client`'s session lives (returns at once
/// when `cluster.auto_rebalance` is off).
pub(crate) async fn run(shared: Arc<Shared>, client: zk::Client) {
    if !shared.opts.auto_rebalance {
        return;
    }
    let grace = Duration::from_millis(shared.opts.auto_rebalance_grace_ms);
    // Since when the condition has held, and for which empty nodes.
    let mut since: Option<Instant> = None;
    let mut hosting: Hosting = None;
    loop {
        tokio::time::sleep(TICK).await;
        let controller = shared.controller.read().as_deref() == Some(shared.me.id.as_str());
        if !controller {
            since = None;
            hosting = None;
            continue;
        }
        match empty_nodes(&shared, &client, &mut hosting).await {
            Ok(empty) if !empty.is_empty() => {
                let start = *since.get_or_insert_with(Instant::now);
                if start.elapsed() < grace {
                    continue;
                }
                since = None;
                hosting = None;
                match write_plan(&shared, &client, &empty).await {
                    Ok(Some(moves)) => tracing::info!(
                        "auto rebalance: node(s) {} hosted no replica for {} ms; wrote a plan \
                         moving {moves} replica(s) to /admin/reassign",
                        empty.iter().cloned().collect::<Vec<_>>().join(","),
                        grace.as_millis()
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("auto rebalance: {e}"),
                }
            }
            Ok(_) => since = None,
            Err(Error::FailedPrecondition(_)) => since = None,
            Err(e) => {
                tracing::debug!("auto rebalance: cannot check the cluster: {e}");
                since = None;
            }
        }
    }
}

/// The nodes hosting a replica, as last read, and when.
type Hosting = Option<(Instant, BTreeSet<String>)>;

/// How long [`Hosting`] is trusted while every live node is in it (a
/// node listed there can only lose all its replicas through a
/// reassignment).
const HOSTING_TTL: Duration = Duration::from_secs(30);

/// The live, non-decommissioned nodes hosting no replica, when no
/// reassignment is in progress and the partitions exist (empty
/// otherwise). In the steady state (every live node hosts something, as
/// last read) this costs no ZooKeeper request: the replicas are read again
/// only when a live node is missing from `hosting` or it is older than
/// [`HOSTING_TTL`].
async fn empty_nodes(
    shared: &Shared,
    client: &zk::Client,
    hosting: &mut Hosting,
) -> crate::Result<BTreeSet<String>> {
    let paths = &shared.paths;
    let live: Vec<String> = shared.nodes.read().iter().map(|n| n.id.clone()).collect();
    let stale = match hosting {
        Some((at, set)) => at.elapsed() > HOSTING_TTL || live.iter().any(|id| !set.contains(id)),
        None => true,
    };
    if stale {
        let ids = znode::list_partitions(client, paths).await?;
        let replicas = znode::read_replicas(client, paths, &ids).await?;
        *hosting = Some((Instant::now(), replicas.into_values().flatten().collect()));
    }
    let Some((_, set)) = hosting else {
        return Ok(BTreeSet::new());
    };
    // No partition yet: the controller creates them, nothing to balance.
    if set.is_empty() {
        return Ok(BTreeSet::new());
    }
    let candidates: BTreeSet<String> = live.into_iter().filter(|id| !set.contains(id)).collect();
    if candidates.is_empty() {
        return Ok(candidates);
    }
    if super::admin::read_reassignment(client, paths)
        .await?
        .is_some()
    {
        return Ok(BTreeSet::new());
    }
    let decommissioned = read_decommissioned(client, paths).await?;
    Ok(candidates
        .into_iter()
        .filter(|id| !decommissioned.contains(id))
        .collect())
}

/// Computes the plan and creates `/admin/reassign`; `Some(moves)` when
/// written, `None` when the plan gives none of `empty` a replica.
async fn write_plan(
    shared: &Shared,
    client: &zk::Client,
    empty: &BTreeSet<String>,
) -> crate::Result<Option<usize>> {
    let paths = &shared.paths;
    let ids = znode::list_partitions(client, paths).await?;
    let current = znode::read_replicas(client, paths, &ids).await?;
    let decommissioned = read_decommissioned(client, paths).await?;
    let eligible: Vec<String> = znode::live_nodes(client, paths)
        .await?
        .into_iter()
        .map(|n| n.id)
        .filter(|id| !decommissioned.contains(id))
        .collect();
    let rf = shared.opts.replication_factor as usize;
    let p = plan::plan(&current, &eligible, rf)
        .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
    let gives = p
        .changed
        .values()
        .any(|r| r.iter().any(|id| empty.contains(id)));
    if !gives {
        return Ok(None);
    }
    let moves = p.moves(&current);
    let plan = Reassignment {
        version: REASSIGN_FORMAT,
        throttle_bytes_per_sec: shared.opts.auto_rebalance_throttle_bytes_per_sec,
        cancel: false,
        partitions: p.changed,
    };
    create_reassignment(client, paths, &plan).await?;
    Ok(Some(moves))
}
