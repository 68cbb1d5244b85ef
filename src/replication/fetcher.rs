//! The follower side: one fetch session per leader node this node follows,
//! carrying every partition it follows there (as Kafka's fetch sessions),
//! so one round trip moves the records of all of them.
//!
//! A session round: connect to the leader's replication service; for the
//! member partitions that are not fetching yet, find where each log
//! diverges from the leader's and truncate there (KIP-101 with the KIP-279
//! loop, [`super::divergence`]), all of them together: one `EpochEndOffset`
//! call per lookup round carries every member still looking, and the
//! leader answers or refuses each on its own; then keep one long-poll
//! fetch outstanding for the members that are fetching (on the fetch wire,
//! [`super::fetch_wire`], without TLS; else on a `Fetch` stream), appending what arrives (CRC-checked by the
//! engine) and committing up to the leader's high watermark, every
//! partition of an answer in one step run in place
//! (`tokio::task::block_in_place`: the worker hands its other tasks to
//! another thread first, so the runtime is not blocked and the round trip
//! has no hand-off to the blocking pool and back).
//!
//! Sessions are incremental (KIP-227, [`super::session`]): the first
//! request of a session is full, later ones list only the partitions whose
//! log end or epoch changed, or that joined, and those that left, computed
//! against the fetch set the leader holds after the last answered request
//! ([`Wire`]); an idle round sends and receives no partition entry.
//!
//! A partition the leader refuses, or whose append fails, leaves the fetch
//! set and rejoins after a short pause, truncating again first; an error of
//! the stream itself sends every member back to truncation. A member added
//! or removed restarts the stream at once, so a new follower does not wait
//! out a long poll.
//!
//! Invariants:
//! - the next request's changes are computed against what the leader holds
//!   after the last request whose answer arrived: a request whose answer
//!   was abandoned (the stream restarted) is sent again with the same
//!   session epoch and every change since; a session error makes the next
//!   request full, so no partition of the fetch set is ever unknown to the
//!   leader;
//! - no failover path makes one round trip per partition: epoch lookups
//!   go out in one call per round for the whole session (as many calls as
//!   the longest KIP-279 loop), and members due within [`TOGETHER`] of
//!   each other rejoin, and look up, together;
//! - appends and truncations happen under the partition's `append` lock,
//!   and only while the replica still follows the session's leader at the
//!   member's epoch (checked under the lock); a role transition changes the
//!   role first, then takes the lock, so nothing lands after the replica
//!   stopped following;
//! - a partition is fetched only after it was truncated to the leader's log
//!   since it joined or last failed, so a follower never appends after a
//!   point where it might disagree with the leader;
//! - truncation never goes below the commit point, except when the leader's
//!   log is shorter than it (an unclean election): that is logged as data
//!   loss with the offsets lost; a divergence point below the commit point
//!   with a leader log that covers it keeps the committed records but is
//!   logged as an error with the offsets (it means two replicas committed
//!   different records);
//! - a member the leader keeps refusing with FENCED_LEADER_EPOCH or
//!   NOT_LEADER for [`REREAD_AFTER`] has its state re-read from ZooKeeper
//!   (again every [`REREAD_AFTER`] while it lasts): a missed notice does
//!   not leave it following a stale leader or epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedMutexGuard, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::ReplicaManager;
use super::fetch_wire::{FetchWire, Opened, STREAM_AFTER_NO_WIRE};
use super::partition::Partition;
use crate::error::{Error, Result};
use crate::proto::replication::replication_client::ReplicationClient;
use crate::proto::replication::{FetchRequest, FetchResponse, PartitionFetch};

/// Pause before a partition (or a whole session) that failed tries again.
const RETRY: Duration = Duration::from_millis(100);

/// Pause when the leader only has not caught up with its election yet.
const SOON: Duration = Duration::from_millis(10);

/// Members due to rejoin within this of each other rejoin together (one
/// epoch lookup for all): members failed by one answer get pauses a few
/// microseconds apart.
const TOGETHER: Duration = Duration::from_millis(5);

/// How long a leader may keep refusing a member's epoch (or leadership)
/// before the member's state is re-read from ZooKeeper.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// gRPC channels to other nodes' replication services, by address.
#[derive(Default)]
pub struct Channels(Mutex<HashMap<String, Channel>>);

impl Channels {
    /// A (lazily connecting) channel to `addr`.
    pub fn get(&self, addr: &str) -> Result<Channel> {
        let mut map = self.0.lock();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        // With TLS, this node's certificate is presented (crate::tls).
        let endpoint = crate::tls::node_endpoint(addr)
            .map_err(|e| Error::InvalidInput(format!("bad replication address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// One partition of a session.
struct Member {
    /// The replica.
    part: Arc<Partition>,
    /// The leader epoch it follows at.
    epoch: u32,
    /// Truncated to the leader's log, so fetched.
    fetching: bool,
    /// After a failure: not tried again before this instant.
    retry_at: Option<Instant>,
    /// The last failure logged (a repeated one is logged once).
    last_error: String,
    /// Since when the leader has refused it without a break with
    /// FENCED_LEADER_EPOCH or NOT_LEADER (reset at each re-read).
    refused_since: Option<Instant>,
}

/// A follower's fetch session with one leader node.
pub struct Session {
    /// The leader's node id.
    pub(super) leader: String,
    /// The partitions followed on it, by id.
    members: Mutex<BTreeMap<u32, Member>>,
    /// Membership changed (one stored permit): the stream restarts.
    changed: Notify,
    /// Members whose state is to be re-read from ZooKeeper.
    reread: Mutex<Vec<u32>>,
    /// The incremental session with the leader, as the follower sees it.
    wire: Mutex<Wire>,
    /// Until then, a `Fetch` stream (the leader did not speak the wire).
    stream_until: Mutex<Option<Instant>>,
}

/// The follower's side of an incremental fetch session (KIP-227, see
/// [`super::session`]): the leader's copy of the fetch set as of the last
/// answered request, from which the next request's changes are computed.
#[derive(Default)]
struct Wire {
    /// The leader's session id (0: none yet, or the leader keeps none).
    id: u32,
    /// Epoch of the last request answered (0: the full one).
    epoch: u32,
    /// The next request is full (no session, or the leader refused it).
    full: bool,
    /// The fetch set the leader holds after the last answered request:
    /// `(offset, leader epoch)` by partition.
    acked: BTreeMap<u32, (u64, u32)>,
}

/// A request on its way: what the leader will hold once it is answered.
struct Pending {
    /// It is full.
    full: bool,
    /// Its session epoch.
    epoch: u32,
    /// The fetch set it describes.
    state: BTreeMap<u32, (u64, u32)>,
}

impl Wire {
    /// The next request for the fetch set `now`, and what it leaves the
    /// leader holding. Incremental (only what differs from `acked`) when a
    /// session is open; it repeats the epoch of a request whose answer
    /// never came, with every change since the last answered one.
    fn request(&self, now: BTreeMap<u32, (u64, u32)>) -> (Vec<PartitionFetch>, Vec<u32>, Pending) {
        let entry = |(&partition, &(offset, leader_epoch)): (&u32, &(u64, u32))| PartitionFetch {
            partition,
            offset,
            leader_epoch,
        };
        if self.full || self.id == 0 {
            let all = now.iter().map(entry).collect();
            let pending = Pending {
                full: true,
                epoch: 0,
                state: now,
            };
            return (all, Vec::new(), pending);
        }
        let changed = now
            .iter()
            .filter(|(p, v)| self.acked.get(p) != Some(v))
            .map(entry)
            .collect();
        let forgotten = self
            .acked
            .keys()
            .filter(|p| !now.contains_key(p))
            .copied()
            .collect();
        let pending = Pending {
            full: false,
            epoch: super::session::next_epoch(self.epoch),
            state: now,
        };
        (changed, forgotten, pending)
    }

    /// The answer to `pending` arrived: the leader holds its fetch set, or
    /// (a session error) the next request is full.
    fn answered(&mut self, pending: Pending, resp: &FetchResponse, leader: &str) {
        if !resp.error_reason.is_empty() {
            tracing::info!(
                "fetch session {} with {leader}: {} ({}); sending a full request",
                self.id,
                resp.error_message,
                resp.error_reason
            );
            self.full = true;
            return;
        }
        if pending.full {
            self.id = resp.session_id;
            self.full = resp.session_id == 0;
        }
        self.epoch = pending.epoch;
        self.acked = pending.state;
    }
}

/// The partitions a stream fetches: `(replica, epoch)` by partition id.
type FetchSet = BTreeMap<u32, (Arc<Partition>, u32)>;

impl Session {
    /// `partition` at `epoch` was truncated to the leader's log: fetch it.
    pub(super) fn start_fetching(&self, partition: u32, epoch: u32) {
        if let Some(m) = self.members.lock().get_mut(&partition)
            && m.epoch == epoch
        {
            m.fetching = true;
            m.retry_at = None;
            m.refused_since = None;
        }
    }

    /// `partition` at `epoch` failed with `e`: it leaves the fetch set and
    /// is truncated and fetched again after a pause.
    pub(super) fn fail(&self, partition: u32, epoch: u32, e: &Error) {
        // A leader that has not yet learned of its election answers
        // NOT_LEADER or UNKNOWN_LEADER_EPOCH for a moment: retry soon.
        let pause = match e {
            Error::NotLeader { .. } | Error::UnknownEpoch(_) => SOON,
            _ => RETRY,
        };
        let mut members = self.members.lock();
        let Some(m) = members.get_mut(&partition) else {
            return;
        };
        if m.epoch != epoch {
            return;
        }
        m.fetching = false;
        let now = Instant::now();
        m.retry_at = Some(now + pause);
        if matches!(e, Error::FencedEpoch(_) | Error::NotLeader { .. }) {
            let since = *m.refused_since.get_or_insert(now);
            if now.duration_since(since) >= REREAD_AFTER {
                m.refused_since = Some(now);
                self.reread.lock().push(partition);
            }
        } else {
            m.refused_since = None;
        }
        let text = e.to_string();
        if text != m.last_error {
            tracing::info!(
                partition,
                "fetching from {} (epoch {epoch}): {e}",
                self.leader
            );
            m.last_error = text;
        }
    }

    /// The session itself failed with `e`: every member starts over.
    fn fail_all(&self, e: &Error) {
        let members: Vec<(u32, u32)> = self
            .members
            .lock()
            .iter()
            .map(|(&p, m)| (p, m.epoch))
            .collect();
        for (p, epoch) in members {
            self.fail(p, epoch, e);
        }
    }

    /// When the earliest member waiting to (re)join is due; `None` when
    /// every member is fetching.
    fn next_due(&self) -> Option<Instant> {
        let now = Instant::now();
        self.members
            .lock()
            .values()
            .filter(|m| !m.fetching)
            .map(|m| m.retry_at.unwrap_or(now))
            .min()
    }
}

/// Every fetch session of this node, by leader node id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Arc<Session>>>);

impl Sessions {
    /// Adds `part`, following `leader` at `epoch`, to the session with
    /// `leader`, starting the session if there is none.
    pub fn follow(&self, m: &Arc<ReplicaManager>, part: Arc<Partition>, leader: &str, epoch: u32) {
        let mut map = self.0.lock();
        let session = map.entry(leader.to_string()).or_insert_with(|| {
            let s = Arc::new(Session {
                leader: leader.to_string(),
                members: Mutex::default(),
                changed: Notify::new(),
                reread: Mutex::default(),
                wire: Mutex::default(),
                stream_until: Mutex::default(),
            });
            tokio::spawn(run(m.clone(), s.clone()));
            s
        });
        session.members.lock().insert(
            part.id,
            Member {
                part,
                epoch,
                fetching: false,
                retry_at: None,
                last_error: String::new(),
                refused_since: None,
            },
        );
        session.changed.notify_one();
    }

    /// Removes `partition` from the session with `leader`.
    pub fn unfollow(&self, leader: &str, partition: u32) {
        if let Some(s) = self.0.lock().get(leader) {
            s.members.lock().remove(&partition);
            s.changed.notify_one();
        }
    }

    /// How many partitions the session with `leader` has (tests).
    #[cfg(test)]
    pub fn members(&self, leader: &str) -> usize {
        self.0
            .lock()
            .get(leader)
            .map_or(0, |s| s.members.lock().len())
    }

    /// Ends `session` if it has no member left; returns whether it did.
    fn retire(&self, session: &Arc<Session>) -> bool {
        let mut map = self.0.lock();
        if !session.members.lock().is_empty() {
            return false;
        }
        if map
            .get(&session.leader)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.leader);
        }
        true
    }
}

/// Runs `session` until it has no member left.
async fn run(m: Arc<ReplicaManager>, session: Arc<Session>) {
    loop {
        if m.sessions.retire(&session) {
            return;
        }
        let result = round(&m, &session).await;
        if let Err(e) = &result {
            session.fail_all(e);
        }
        let reread = std::mem::take(&mut *session.reread.lock());
        if !reread.is_empty() {
            m.reread(reread);
        }
        if result.is_err() {
            tokio::select! {
                _ = session.changed.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

/// Sleeps until `at`, forever when `None`.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One stream's worth of fetching. Returns `Ok` when the membership
/// changed or a member is due to rejoin, `Err` when the session failed.
async fn round(m: &Arc<ReplicaManager>, s: &Session) -> Result<()> {
    let node = m
        .node(&s.leader)
        .ok_or_else(|| Error::Unavailable(format!("address of {} unknown", s.leader)))?;
    let channel = m.channels.get(&node.replication_addr)?;
    // Answers fit the leader's message limit, which is this node's too
    // (the same storage limits across the cluster).
    let limit = m.message_limit();
    let mut client = ReplicationClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

    let now = Instant::now();
    let due: Vec<(Arc<Partition>, u32)> = s
        .members
        .lock()
        .values()
        .filter(|mb| !mb.fetching && mb.retry_at.is_none_or(|t| t <= now + TOGETHER))
        .map(|mb| (mb.part.clone(), mb.epoch))
        .collect();
    // The leader is unreachable: the whole session waits.
    super::divergence::truncate_to_leader(&mut client, s, due).await?;

    let mut fetch: FetchSet = s
        .members
        .lock()
        .iter()
        .filter(|(_, mb)| mb.fetching)
        .map(|(&p, mb)| (p, (mb.part.clone(), mb.epoch)))
        .collect();
    if fetch.is_empty() {
        tokio::select! {
            _ = s.changed.notified() => {}
            _ = until(s.next_due()) => {}
        }
        return Ok(());
    }

    let (req, mut pending) = request(m, s, &fetch);
    let mut link = Link::open(m, s, &node.replication_addr, &mut client, req).await?;
    loop {
        let due = s.next_due();
        // Leaving with the answer outstanding drops `pending`: the next
        // request repeats its session epoch.
        let resp = tokio::select! {
            r = link.recv(&s.leader) => r?,
            _ = s.changed.notified() => return Ok(()),
            _ = until(due) => return Ok(()),
        };
        s.wire.lock().answered(pending, &resp, &s.leader);
        apply(s, &mut fetch, resp).await?;
        if fetch.is_empty() {
            return Ok(());
        }
        let (req, next) = request(m, s, &fetch);
        pending = next;
        link.send(req).await?;
    }
}

/// How a session's requests travel to its leader.
enum Link {
    /// A `Fetch` stream over gRPC.
    Stream {
        /// Requests.
        tx: mpsc::Sender<FetchRequest>,
        /// Answers.
        answers: tonic::Streaming<FetchResponse>,
    },
    /// The fetch wire (super::fetch_wire).
    Wire(FetchWire),
}

impl Link {
    /// Opens the session's link to the leader's replication port `addr`
    /// and sends `first` on it: the fetch wire without TLS when the leader
    /// speaks it, else a `Fetch` stream of `client` (for
    /// [`STREAM_AFTER_NO_WIRE`] after a leader did not speak the wire).
    async fn open(
        m: &ReplicaManager,
        s: &Session,
        addr: &str,
        client: &mut ReplicationClient<Channel>,
        first: FetchRequest,
    ) -> Result<Link> {
        let no_wire_yet = s.stream_until.lock().is_some_and(|t| Instant::now() < t);
        if !crate::tls::node_tls() && !no_wire_yet && !super::fetch_wire::off_by_failpoint() {
            let max_wait = Duration::from_millis(m.options().fetch_max_wait_ms);
            match FetchWire::open(addr, m.message_limit(), max_wait).await {
                Opened::Wire(mut wire) => {
                    wire.send(&first).await?;
                    m.fetch_figures.wire_opened.fetch_add(1, Ordering::Relaxed);
                    return Ok(Link::Wire(wire));
                }
                Opened::NoWire(why) => {
                    tracing::info!(
                        "{} does not take a fetch wire ({why}); fetching over a stream for {} s",
                        s.leader,
                        STREAM_AFTER_NO_WIRE.as_secs()
                    );
                    *s.stream_until.lock() = Some(Instant::now() + STREAM_AFTER_NO_WIRE);
                }
                Opened::Failed(e) => return Err(e),
            }
        }
        let (tx, rx) = mpsc::channel(2);
        tx.send(first).await.map_err(|_| closed())?;
        let answers = client
            .fetch(ReceiverStream::new(rx))
            .await
            .map_err(Error::from)?
            .into_inner();
        m.fetch_figures
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Link::Stream { tx, answers })
    }

    /// Sends the next request.
    async fn send(&mut self, req: FetchRequest) -> Result<()> {
        match self {
            Link::Stream { tx, .. } => tx.send(req).await.map_err(|_| closed()),
            Link::Wire(wire) => wire.send(&req).await,
        }
    }

    /// The answer to the request sent last.
    async fn recv(&mut self, leader: &str) -> Result<FetchResponse> {
        match self {
            Link::Stream { answers, .. } => answers
                .message()
                .await
                .map_err(Error::from)?
                .ok_or_else(|| Error::Unavailable(format!("{leader} closed the fetch stream"))),
            Link::Wire(wire) => wire.recv(leader).await,
        }
    }
}

/// A stream whose request channel closed.
fn closed() -> Error {
    Error::Internal("fetch stream closed".into())
}

/// The next fetch of `fetch`, each partition from its log end: full, or
/// only what changed since the last answered request of the session.
fn request(m: &ReplicaManager, s: &Session, fetch: &FetchSet) -> (FetchRequest, Pending) {
    let now = fetch
        .iter()
        .map(|(&p, (part, epoch))| (p, (part.log.written_end(), *epoch)))
        .collect();
    let wire = s.wire.lock();
    let (partitions, forgotten, pending) = wire.request(now);
    let req = FetchRequest {
        follower_id: m.me().id.clone(),
        // Both fit: the config refuses larger values (config/validate.rs).
        max_bytes: u32::try_from(m.options().fetch_max_bytes).unwrap_or(u32::MAX),
        max_wait_ms: u32::try_from(m.options().fetch_max_wait_ms).unwrap_or(u32::MAX),
        partitions,
        session_id: wire.id,
        session_epoch: pending.epoch,
        forgotten,
    };
    (req, pending)
}

/// One partition's share of an answer, ready to append.
struct Work {
    /// The replica.
    part: Arc<Partition>,
    /// Its member epoch.
    epoch: u32,
    /// Held until the append and commit are done.
    guard: OwnedMutexGuard<()>,
    /// Records to append (possibly none).
    records: bytes::Bytes,
    /// The leader's high watermark.
    hw: u64,
}

/// Appends and commits what `resp` carries; refused partitions leave
/// `fetch`. Fails only when running the step itself fails (a panic).
async fn apply(s: &Session, fetch: &mut FetchSet, resp: FetchResponse) -> Result<()> {
    let mut work = Vec::with_capacity(resp.partitions.len());
    for d in resp.partitions {
        let Some((part, epoch)) = fetch.get(&d.partition).cloned() else {
            continue;
        };
        if !d.error_reason.is_empty() {
            let e = Error::from_reason(&d.error_reason, d.error_message, d.partition);
            fetch.remove(&d.partition);
            s.fail(d.partition, epoch, &e);
            continue;
        }
        let guard = part.append.clone().lock_owned().await;
        if !part.follows(&s.leader, epoch) {
            // It left the session; the change restarts the stream.
            fetch.remove(&d.partition);
            continue;
        }
        work.push(Work {
            part,
            epoch,
            guard,
            records: d.records,
            hw: d.high_watermark,
        });
    }
    // After the append, the commit (no I/O); then the append lock goes.
    let settle = |w: Work, appended: crate::storage::Result<usize>| {
        let r = appended.and_then(|_| {
            let end = w.part.log.written_end();
            w.part.log.commit(w.hw.min(end))
        });
        drop(w.guard);
        (w.part, w.epoch, r)
    };
    let step = move |w: Work| {
        let appended = match w.records.is_empty() {
            true => Ok(0),
            false => w.part.log.append(&w.records, w.hw),
        };
        settle(w, appended)
    };
    // Nothing to append, or an append that is one write(2) to the page
    // cache (as a leader's submitted write): here, without a hand-off.
    // The others (an fsync under `always`, a roll, another batch's I/O to
    // wait for) run in place, off the runtime's worker.
    let mut done = Vec::with_capacity(work.len());
    let mut rest = Vec::new();
    for w in work {
        let now = match w.records.is_empty() {
            true => Some(Ok(0)),
            false => w.part.log.append_now(&w.records, w.hw),
        };
        match now {
            Some(appended) => done.push(settle(w, appended)),
            None => rest.push(w),
        }
    }
    if !rest.is_empty() {
        done.extend(
            super::in_place(move || Ok::<_, Error>(rest.into_iter().map(step).collect::<Vec<_>>()))
                .await?,
        );
    }
    for (part, epoch, r) in done {
        match r {
            Ok(committed) => {
                part.publish_log_end();
                part.publish_hw(committed);
            }
            Err(e) => {
                fetch.remove(&part.id);
                s.fail(part.id, epoch, &e.into());
            }
        }
    }
    Ok(())
}
