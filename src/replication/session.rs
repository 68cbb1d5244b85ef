//! The leader's incremental fetch sessions (as Kafka's KIP-227): what each
//! follower's fetch session holds, so a request lists only what changed
//! and an answer only what is news to the follower.
//!
//! Wire protocol (proto/replication.proto, `Fetch`): a request with
//! session epoch 0 is *full*: it lists every partition with the
//! follower's log end and leader epoch, and opens a session (replacing
//! the one it names). Its answer has an entry for every partition and
//! carries the new session id. Requests with epochs 1, 2, ... are
//! *incremental*: they list only partitions whose offset or leader epoch
//! changed, or that joined, and name those that left (`forgotten`).
//!
//! The session keeps two states: `current`, after the last request seen
//! (epoch `epoch`), and `base`, after the one before it. Each state holds,
//! per partition, the follower's offset and leader epoch and the high
//! watermark last sent in an answer. A follower sends epoch n+1 only once
//! it has the answer to epoch n, so a request for epoch `epoch + 1` proves
//! `current` (with the high watermarks of that answer) reached the
//! follower: it becomes the base of the new `current`. A follower that
//! gave up waiting for the answer to epoch n (its stream restarted) sends
//! epoch n again, with its changes since n-1: the leader rebuilds
//! `current` from `base`, so an answer that never arrived is as if never
//! sent. Any other epoch, or an unknown session, is a session error
//! (`FETCH_SESSION_NOT_FOUND`, `INVALID_FETCH_SESSION_EPOCH`) answered
//! with no partition; the follower then sends a full request.
//!
//! Invariants:
//! - the partitions the leader serves in a round are exactly those of the
//!   follower's fetch set when it sent the request (both sides apply the
//!   same changes to the same base); a partition not listed is served at
//!   its remembered offset, so every partition of the session is noted as
//!   fetched each round (follower progress, ISR, high watermark) and wakes
//!   the long poll with its records;
//! - a request that arrives on a fetch stream older than the newest one
//!   the session was continued on is refused: the follower has left that
//!   stream, and its late request must not overwrite the state the retry
//!   on the new stream built;
//! - a high watermark counts as sent only once a later request proves its
//!   answer arrived; an answer that was abandoned (its stream restarted)
//!   or superseded by a retry records nothing (`generation` check);
//! - at most [`PER_FOLLOWER`] sessions per follower node and
//!   [`MAX_SESSIONS`] in all; a new session evicts the follower's least
//!   recently used one beyond that, and sessions unused for [`IDLE`] are
//!   dropped; an evicted session's next request gets a session error, never
//!   a wrong answer;
//! - session ids start from a value drawn from the clock at startup, so a
//!   restarted leader does not recognise its predecessor's sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::proto::replication as pb;

/// Sessions kept per follower node (one per fetch stream it runs, plus
/// room for a stream being replaced).
pub const PER_FOLLOWER: usize = 4;
/// Sessions kept in all.
pub const MAX_SESSIONS: usize = 4096;
/// A session unused this long is dropped (followers fetch at least every
/// `fetch_max_wait_ms`).
pub const IDLE: Duration = Duration::from_secs(60);

/// Reason of an answer to a request naming an unknown (or evicted)
/// session.
pub const NOT_FOUND: &str = "FETCH_SESSION_NOT_FOUND";
/// Reason of an answer to a request with an unexpected session epoch.
pub const INVALID_EPOCH: &str = "INVALID_FETCH_SESSION_EPOCH";

/// The epoch after `e` (0 is reserved for full requests).
pub fn next_epoch(e: u32) -> u32 {
    if e == u32::MAX { 1 } else { e + 1 }
}

/// One partition of a session, as the leader remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The follower's log end offset (the offset it fetches from).
    pub offset: u64,
    /// The leader epoch the follower fetches at.
    pub leader_epoch: u32,
    /// The high watermark last sent for it in this session (`None`: never).
    pub hw_sent: Option<u64>,
}

/// A session's partitions, by id.
type Parts = BTreeMap<u32, Fetched>;

/// One follower's session.
struct Session {
    /// The follower node that opened it.
    follower: String,
    /// Epoch of the last request seen (0: the full one).
    epoch: u32,
    /// State after the request before the last one (empty for a full one).
    base: Parts,
    /// State after the last request.
    current: Parts,
    /// Bumped at every request: the answer that records its high
    /// watermarks must be for the latest one.
    generation: u64,
    /// Last request.
    used: Instant,
    /// The newest fetch stream (leader-side number, increasing) a request
    /// of the session came on: a request on an older one is stale (the
    /// follower left that stream), even if its epoch looks right.
    stream: u64,
}

/// What one request is to serve.
#[derive(Debug)]
pub struct Turn {
    /// The session (its id goes in the answer).
    pub id: u32,
    /// The session's generation for this request.
    pub generation: u64,
    /// A full request: answer every partition, in request order.
    pub full: bool,
    /// Every partition to serve, with the follower's offset and epoch.
    pub parts: Vec<(u32, Fetched)>,
}

/// A request that cannot continue its session.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionError {
    /// [`NOT_FOUND`] or [`INVALID_EPOCH`].
    pub reason: &'static str,
    /// For the follower's log.
    pub message: String,
}

/// Counters of the fetch traffic a leader served (for tests and figures).
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Requests served.
    pub requests: AtomicU64,
    /// Of which full.
    pub full_requests: AtomicU64,
    /// Partition entries in requests.
    pub request_entries: AtomicU64,
    /// Partition entries in answers.
    pub answer_entries: AtomicU64,
    /// Requests answered with a session error.
    pub session_errors: AtomicU64,
    /// Encoded bytes of the requests.
    pub request_bytes: AtomicU64,
    /// Encoded bytes of the answers.
    pub answer_bytes: AtomicU64,
    /// Rounds whose records were all read from the logs' tails in memory
    /// (no read in place, see serve.rs).
    pub memory_rounds: AtomicU64,
}

/// A snapshot of [`FetchStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchCounts {
    /// Requests served.
    pub requests: u64,
    /// Of which full.
    pub full_requests: u64,
    /// Partition entries in requests.
    pub request_entries: u64,
    /// Partition entries in answers.
    pub answer_entries: u64,
    /// Requests answered with a session error.
    pub session_errors: u64,
    /// Encoded bytes of the requests.
    pub request_bytes: u64,
    /// Encoded bytes of the answers.
    pub answer_bytes: u64,
    /// Rounds whose records were all read from the logs' tails in memory.
    pub memory_rounds: u64,
}

impl FetchStats {
    /// The counts now.
    pub fn counts(&self) -> FetchCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FetchCounts {
            requests: l(&self.requests),
            full_requests: l(&self.full_requests),
            request_entries: l(&self.request_entries),
            answer_entries: l(&self.answer_entries),
            session_errors: l(&self.session_errors),
            request_bytes: l(&self.request_bytes),
            answer_bytes: l(&self.answer_bytes),
            memory_rounds: l(&self.memory_rounds),
        }
    }
}

/// Every fetch session this leader keeps.
pub struct FetchSessions {
    /// Sessions by id. A parking_lot mutex, never held across an await.
    map: Mutex<HashMap<u32, Session>>,
    /// The next session id to try.
    next_id: Mutex<u32>,
    /// Fetch streams opened (numbers them).
    streams: AtomicU64,
    /// Traffic counters.
    pub stats: FetchStats,
}

impl Default for FetchSessions {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                d.as_nanos() as u32 ^ (d.as_secs() as u32).rotate_left(16)
            });
        FetchSessions {
            map: Mutex::default(),
            next_id: Mutex::new(seed.max(1)),
            streams: AtomicU64::new(0),
            stats: FetchStats::default(),
        }
    }
}

impl FetchSessions {
    /// A number for a fetch stream being opened, higher than any before.
    pub fn open_stream(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Opens or continues the session of `req`, which came on fetch
    /// stream `stream` ([`Self::open_stream`]): the partitions to serve,
    /// or why the session cannot go on.
    pub fn begin(&self, req: &pb::FetchRequest, stream: u64) -> Result<Turn, SessionError> {
        let now = Instant::now();
        let mut map = self.map.lock();
        if req.session_epoch == 0 {
            if map
                .get(&req.session_id)
                .is_some_and(|s| s.follower == req.follower_id)
            {
                map.remove(&req.session_id);
            }
            let mut order = Vec::with_capacity(req.partitions.len());
            let mut current = Parts::new();
            for pf in &req.partitions {
                let f = Fetched {
                    offset: pf.offset,
                    leader_epoch: pf.leader_epoch,
                    hw_sent: None,
                };
                if current.insert(pf.partition, f).is_none() {
                    order.push(pf.partition);
                }
            }
            let parts = order.into_iter().map(|p| (p, current[&p])).collect();
            self.evict(&mut map, &req.follower_id, now);
            let id = self.fresh_id(&map);
            map.insert(
                id,
                Session {
                    follower: req.follower_id.clone(),
                    epoch: 0,
                    base: Parts::new(),
                    current,
                    generation: 0,
                    used: now,
                    stream,
                },
            );
            return Ok(Turn {
                id,
                generation: 0,
                full: true,
                parts,
            });
        }
        let Some(s) = map
            .get_mut(&req.session_id)
            .filter(|s| s.follower == req.follower_id)
        else {
            return Err(SessionError {
                reason: NOT_FOUND,
                message: format!(
                    "fetch session {} of {} is not known here (evicted, or this node \
                     restarted): send a full request",
                    req.session_id, req.follower_id
                ),
            });
        };
        if stream < s.stream {
            return Err(SessionError {
                reason: INVALID_EPOCH,
                message: format!(
                    "fetch session {}: request of a stream the follower has left",
                    req.session_id
                ),
            });
        }
        if req.session_epoch == next_epoch(s.epoch) {
            s.base = std::mem::take(&mut s.current);
        } else if req.session_epoch != s.epoch {
            return Err(SessionError {
                reason: INVALID_EPOCH,
                message: format!(
                    "fetch session {}: epoch {} is neither {} nor the next one",
                    req.session_id, req.session_epoch, s.epoch
                ),
            });
        }
        let mut current = s.base.clone();
        for p in &req.forgotten {
            current.remove(p);
        }
        for pf in &req.partitions {
            let f = current.entry(pf.partition).or_insert(Fetched {
                offset: pf.offset,
                leader_epoch: pf.leader_epoch,
                hw_sent: None,
            });
            f.offset = pf.offset;
            f.leader_epoch = pf.leader_epoch;
        }
        s.current = current;
        s.epoch = req.session_epoch;
        s.generation += 1;
        s.used = now;
        s.stream = stream;
        Ok(Turn {
            id: req.session_id,
            generation: s.generation,
            full: false,
            parts: s.current.iter().map(|(&p, &f)| (p, f)).collect(),
        })
    }

    /// Records the high watermarks an answer for `turn` sends, unless a
    /// later request of the session superseded it.
    pub fn sent(&self, turn: &Turn, hws: impl IntoIterator<Item = (u32, u64)>) {
        let mut map = self.map.lock();
        let Some(s) = map.get_mut(&turn.id) else {
            return;
        };
        if s.generation != turn.generation {
            return;
        }
        for (p, hw) in hws {
            if let Some(f) = s.current.get_mut(&p) {
                f.hw_sent = Some(hw);
            }
        }
    }

    /// Sessions kept now (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Drops every session, as a restart would (tests).
    #[cfg(test)]
    pub fn clear(&self) {
        self.map.lock().clear();
    }

    /// Makes room for a new session of `follower`: drops idle sessions,
    /// then the follower's least recently used beyond [`PER_FOLLOWER`] - 1,
    /// then the least recently used beyond [`MAX_SESSIONS`] - 1.
    fn evict(&self, map: &mut HashMap<u32, Session>, follower: &str, now: Instant) {
        map.retain(|_, s| now.duration_since(s.used) < IDLE);
        loop {
            let mine: Vec<(Instant, u32)> = map
                .iter()
                .filter(|(_, s)| s.follower == follower)
                .map(|(&id, s)| (s.used, id))
                .collect();
            let over_mine = mine.len() >= PER_FOLLOWER;
            let over_all = map.len() >= MAX_SESSIONS;
            let victim = if over_mine {
                mine.into_iter().min().map(|(_, id)| id)
            } else if over_all {
                map.iter()
                    .map(|(&id, s)| (s.used, id))
                    .min()
                    .map(|(_, id)| id)
            } else {
                None
            };
            match victim {
                Some(id) => {
                    map.remove(&id);
                }
                None => return,
            }
        }
    }

    /// An id no session has (never 0).
    fn fresh_id(&self, map: &HashMap<u32, Session>) -> u32 {
        let mut next = self.next_id.lock();
        loop {
            let id = *next;
            *next = next.wrapping_add(1).max(1);
            if id != 0 && !map.contains_key(&id) {
                return id;
            }
        }
    }
}
