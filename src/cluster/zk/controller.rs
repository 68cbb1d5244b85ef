//! Controller election and the controller itself.
//!
//! Election: every node runs [`candidacy`]. A node wins by a multi that
//! creates the ephemeral `/controller` and bumps `/controller_epoch` with
//! compare-and-set on its version; the losers watch `/controller` and try
//! again when it vanishes. The winner keeps the version of
//! `/controller_epoch` it wrote: every later controller write is a multi
//! starting with a check of that version, so a deposed controller (one
//! whose epoch was bumped by a newer controller) cannot write anything.
//!
//! The controller reconciles every partition on election, on every change
//! of `/nodes`, `/draining` and `/admin/reassign` (one-shot watches,
//! re-armed on each read) and every [`TICK`] (5 minutes); it reconciles
//! only the partitions named by ISR change notifications when
//! `/isr_change` changes:
//! 1. reads every partition's state (pipelined gets in a window of
//!    `znode::READ_WINDOW`; the ISR is written by leaders, so state is
//!    always read fresh, never cached; `replicas` are cached: only the
//!    controller writes them, and the cache follows its own writes,
//!    `reassign_ctl.rs`);
//! 2. creates the partitions `0..partition_count` that are missing once
//!    `replication_factor` nodes are live;
//! 3. elects leaders where the leader is not live (log end offsets asked
//!    with one `log_end_offsets` call per node, concurrently) and removes
//!    dead followers from ISRs;
//! 4. drives the replica reassignments of `/admin/reassign` one step
//!    further (`reassign.rs`, `reassign_ctl.rs`; watched, so a new or
//!    changed reassignment starts a reconciliation), then moves leadership
//!    back to preferred replicas (when enabled);
//! 5. writes the new states with compare-and-set on each znode version, in
//!    multis of up to [`BATCH`] partitions, at most [`MULTI_WINDOW`] of
//!    them in flight (so the session's heartbeats, and other sessions'
//!    requests, never queue behind thousands of operations); a partition
//!    whose write conflicts is read again and decided again (after
//!    [`ROUNDS`], again [`RETRY`] later);
//! 6. queues for each live node the full states of the changed partitions
//!    it hosts (of every partition it hosts, after an election and to a
//!    node that joined), the leaders of the changed partitions (of every
//!    partition, after an election and to a node that joined) for routing,
//!    and the live nodes. The leaders are one compact map per notice round
//!    (`cluster::Leaders`, 16 bytes a partition, replica lists stored
//!    once), shared by every mailbox: a round costs one copy of each changed state per replica and one map,
//!    not N x P states. Each node's queue is delivered in one
//!    `leader_and_isr` at a time, retried with backoff until the node
//!    acknowledges it or leaves (`notify.rs`).
//!
//! Why an idle controller reads nothing: what the controller decides
//! depends on the live nodes (`/nodes`, watched), the controlled-shutdown
//! markers (`/draining`, watched), the partitions' existence (created by
//! the controller itself) and their states. A state changes only by a
//! controller write (the controller knows) or by a leader's ISR change,
//! and every ISR change is written in one multi with a sequential
//! `/isr_change/<p>-<seq>` znode (Kafka's `/isr_change_notification`).
//! The controller watches `/isr_change`; on a change it lists and deletes
//! the notifications, then reads and decides the partitions they name
//! (deleted before the read, so a change after the read leaves a new
//! notification and a new event). That catches what the old 3 s tick was
//! for: a preferred leader back in the ISR (moved back), an ISR member
//! needed by a controlled shutdown. The [`TICK`] stays as a safety net for
//! what no event says (a bug, a notification deleted by hand); at 5
//! minutes (Kafka's leader imbalance check interval) an idle cluster of
//! 100,000 partitions costs ZooKeeper ~330 reads per second on average
//! instead of ~7,000, and a cluster of 1,000 partitions ~3.
//!
//! Node epochs (KIP-380): the controller knows each live node's node
//! epoch (the czxid of `/nodes/<id>`). A node seen again under a new node
//! epoch bounced (restart, expired session): it is handled as a node that
//! left (a reconciliation without it: new leaders where it led, out of the
//! ISRs) and then joined (full state to its new registration). Leaderships
//! are stamped with the leader's node epoch, so a bounce the controller
//! did not see (it was elected later) is caught from the state itself
//! (`decide.rs`).
//!
//! Invariants:
//! - Controller notices are retried until the node acknowledges them or
//!   leaves; every notice names the node epoch it was issued for.
//! - A node never keeps, through the controller, a leadership given to an
//!   earlier registration of it: it gets a new leader epoch or none.

mod election;
mod events;
mod outbound;
mod reconcile;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use zookeeper_client as zk;

use self::election::{campaign, follow, resign};
use super::decide::Live;
use super::notify::Notifier;
use super::reassign_ctl;
use super::znode::{self, zk_error};
use super::{Shared, session_over};
use crate::cluster::NodeAddr;
use crate::error::Error;

/// Partitions per ZooKeeper multi.
pub(crate) const BATCH: usize = 100;

/// Multis one call (`create_partitions`, `write`) has made and not yet
/// seen answered, at most (`znode::windowed`): a creation multi is 301
/// operations, so at most ~1,200 of this session's operations sit in
/// ZooKeeper's queue ahead of anyone else's request.
pub(crate) const MULTI_WINDOW: usize = 4;

/// How often the controller re-reads every state: a safety net for
/// anything an event did not say (see the module doc). Every change the
/// controller acts on has an event (`/nodes`, `/draining`, the ISR change
/// notifications), so an idle cluster costs ZooKeeper one pass per tick.
pub(crate) const TICK: Duration = Duration::from_secs(300);

/// How soon a reconciliation that left write conflicts unresolved (after
/// [`ROUNDS`]) is tried again.
const RETRY: Duration = Duration::from_secs(3);

/// How long a node may take to report its log end offsets.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(3);

/// Rounds of decide-write-reread for partitions whose write conflicts,
/// per reconciliation.
const ROUNDS: usize = 5;

/// Why a controller stopped.
#[derive(Debug)]
enum Exit {
    /// The session is over; the supervisor starts a new one.
    Session(zk::Error),
    /// Another controller took over (epoch bumped, `/controller` gone).
    Deposed(String),
    /// Anything else; this node resigns and runs for election again.
    Failed(Error),
}

impl Exit {
    /// Classifies a ZooKeeper error met while doing `what`.
    fn zk(what: &str, e: zk::Error) -> Exit {
        if session_over(&e) {
            Exit::Session(e)
        } else {
            Exit::Failed(zk_error(what, e))
        }
    }
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        Exit::Failed(e)
    }
}

impl From<reassign_ctl::Failure> for Exit {
    fn from(f: reassign_ctl::Failure) -> Exit {
        match f {
            reassign_ctl::Failure::Deposed(why) => Exit::Deposed(why),
            reassign_ctl::Failure::Zk(what, e) => Exit::zk(&what, e),
            reassign_ctl::Failure::Other(e) => Exit::Failed(e),
        }
    }
}

/// A won election.
#[derive(Clone, Copy, Debug)]
struct Won {
    /// The controller epoch this node was elected at.
    epoch: u64,
    /// The version of `/controller_epoch` holding `epoch`.
    epoch_version: i32,
}

/// Runs for controller for as long as `client`'s session lives: campaigns,
/// controls when elected, follows the controller otherwise.
pub(crate) async fn candidacy(shared: Arc<Shared>, client: zk::Client) {
    loop {
        match campaign(&shared, &client).await {
            Ok(Some(won)) => {
                *shared.controller.write() = Some(shared.me.id.clone());
                tracing::info!("elected controller at controller epoch {}", won.epoch);
                let exit = Controller::new(shared.clone(), client.clone(), won)
                    .run()
                    .await;
                *shared.controller.write() = None;
                match exit {
                    Exit::Session(e) => {
                        tracing::warn!("controller stopped: ZooKeeper session over ({e})");
                        return;
                    }
                    Exit::Deposed(why) => {
                        tracing::warn!("deposed as controller (epoch {}): {why}", won.epoch);
                        resign(&shared, &client).await;
                    }
                    Exit::Failed(e) => {
                        tracing::error!("controller failed: {e}; resigning");
                        resign(&shared, &client).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(None) => {
                if !follow(&shared, &client).await {
                    return;
                }
            }
            Err(Exit::Session(_)) => return,
            Err(e) => {
                tracing::warn!("controller election: {e:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Who gets the full state of every partition in a notice.
enum FullTo {
    /// Every live node (after an election).
    All,
    /// These nodes (they just joined).
    Nodes(BTreeSet<String>),
}

/// The elected controller.
struct Controller {
    /// Shared node state.
    shared: Arc<Shared>,
    /// The session the controller was elected in.
    client: zk::Client,
    /// The epoch it was elected at and the version of `/controller_epoch`.
    won: Won,
    /// Assigned replicas per partition (changed only by this controller's
    /// reassignment writes, which update it).
    replicas: BTreeMap<u32, Vec<String>>,
    /// Live nodes by id.
    live: BTreeMap<String, NodeAddr>,
    /// Node epoch of each live node's registration.
    epochs: Live,
    /// `/nodes/*` as last listed and read (only new entries are read).
    registrations: znode::Registrations,
    /// Nodes that bounced, left out of the reconciliation in progress (it
    /// handles them as gone).
    leaving: BTreeSet<String>,
    /// Controlled-shutdown markers (`/draining/*`): node id, node epoch.
    draining: Vec<(String, i64)>,
    /// Live node count last reported as too few for the initial
    /// assignment (to log that once per change).
    waiting_logged: Option<usize>,
    /// `leader_and_isr` notices not acknowledged yet, per node.
    notices: Notifier,
    /// The last reconciliation left write conflicts: try again after
    /// [`RETRY`].
    conflicts: bool,
}

impl Controller {
    fn new(shared: Arc<Shared>, client: zk::Client, won: Won) -> Controller {
        let notices = Notifier::new(shared.rpc.clone(), won.epoch);
        Controller {
            shared,
            client,
            won,
            notices,
            replicas: BTreeMap::new(),
            live: BTreeMap::new(),
            epochs: Live::new(),
            registrations: znode::Registrations::default(),
            leaving: BTreeSet::new(),
            draining: Vec::new(),
            waiting_logged: None,
            conflicts: false,
        }
    }

    /// Controls until deposed, failed or the session ends.
    async fn run(mut self) -> Exit {
        match self.control().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }
}
