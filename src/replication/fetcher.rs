//! The follower side: one fetcher task per followed partition.
//!
//! A round: connect to the leader's replication service; find where this
//! log diverges from the leader's and truncate there (KIP-101, with the
//! KIP-279 loop: ask for the end offset of our last epoch; if the leader
//! answers with an older epoch, continue from our own last offset of that
//! epoch, until both agree); then keep one long-poll fetch outstanding on a
//! stream, appending what arrives (CRC-checked by the engine) and committing
//! up to the leader's high watermark. Any error ends the round; the next
//! starts after a short pause, with truncation again, so a follower never
//! appends after a point where it might disagree with the leader.
//!
//! Invariants:
//! - appends happen under the partition's `append` lock, which a role
//!   transition takes after stopping the task, so no append lands after the
//!   replica stopped following;
//! - truncation never goes below the commit point, except when the leader's
//!   log is shorter than it (an unclean election): that is logged as data
//!   loss with the offsets lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::ReplicaManager;
use super::log::epoch_end;
use super::partition::Partition;
use crate::error::{Error, Result};
use crate::proto::replication::replication_client::ReplicationClient;
use crate::proto::replication::{EpochEndOffsetRequest, FetchRequest};

/// Pause between fetch rounds after an error.
const RETRY: Duration = Duration::from_millis(100);

/// Pause when the leader only has not caught up with its election yet.
const SOON: Duration = Duration::from_millis(10);

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
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
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

/// Follows `leader` for `part` at `epoch` until `stop` turns true.
pub async fn run(
    m: Arc<ReplicaManager>,
    part: Arc<Partition>,
    leader: String,
    epoch: u32,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_error = String::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = round(&m, &part, &leader, epoch) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        // A leader that has not yet learned of its election answers
        // NOT_LEADER or UNKNOWN_LEADER_EPOCH for a moment: retry soon.
        let pause = match &result {
            Err(Error::NotLeader { .. } | Error::UnknownEpoch(_)) => SOON,
            _ => RETRY,
        };
        if let Err(e) = result {
            let text = e.to_string();
            if text != last_error {
                tracing::info!(
                    partition = part.id,
                    "fetching from {leader} (epoch {epoch}): {e}"
                );
                last_error = text;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One connection's worth of fetching.
async fn round(m: &ReplicaManager, part: &Arc<Partition>, leader: &str, epoch: u32) -> Result<()> {
    let node = m
        .node(leader)
        .ok_or_else(|| Error::Unavailable(format!("address of {leader} unknown")))?;
    let channel = m.channels().get(&node.replication_addr)?;
    let mut client = ReplicationClient::new(channel);
    truncate_to_leader(&mut client, part, epoch).await?;

    let (tx, rx) = mpsc::channel(2);
    let request = |offset: u64| FetchRequest {
        partition: part.id,
        follower_id: m.me().id.clone(),
        offset,
        leader_epoch: epoch,
        max_bytes: m.options().fetch_max_bytes as u32,
        max_wait_ms: m.options().fetch_max_wait_ms as u32,
    };
    tx.send(request(part.log.written_end()))
        .await
        .map_err(|_| Error::Internal("fetch stream closed".into()))?;
    let mut stream = client
        .fetch(ReceiverStream::new(rx))
        .await
        .map_err(Error::from)?
        .into_inner();
    loop {
        let resp = stream
            .message()
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::Unavailable(format!("{leader} closed the fetch stream")))?;
        let guard = part.append.clone().lock_owned().await;
        let log = part.log.clone();
        let hw = resp.high_watermark;
        let records = resp.records;
        let end = super::blocking(move || {
            let _guard = guard;
            if !records.is_empty() {
                log.append(&records)?;
            }
            let end = log.written_end();
            log.commit(hw.min(end))?;
            Ok::<_, Error>(end)
        })
        .await?;
        part.publish_log_end();
        part.publish_hw(part.log.committed());
        tx.send(request(end))
            .await
            .map_err(|_| Error::Internal("fetch stream closed".into()))?;
    }
}

/// Truncates `part`'s log to the last offset where it agrees with the
/// leader's (leader-epoch truncation).
async fn truncate_to_leader(
    client: &mut ReplicationClient<Channel>,
    part: &Arc<Partition>,
    current_epoch: u32,
) -> Result<()> {
    let starts = part.log.epoch_starts()?;
    let my_end = part.log.written_end();
    let Some(&(mut epoch, _)) = starts.last() else {
        return Ok(());
    };
    let ask = |epoch: u32| EpochEndOffsetRequest {
        partition: part.id,
        current_leader_epoch: current_epoch,
        leader_epoch: epoch,
    };
    let first = starts[0].1;
    let mut target = loop {
        let resp = client
            .epoch_end_offset(ask(epoch))
            .await
            .map_err(Error::from)?
            .into_inner();
        if !resp.found {
            // The leader has no epoch at or below ours: nothing of ours is
            // in its log.
            break first;
        }
        let (their_epoch, their_end) = (resp.leader_epoch, resp.end_offset);
        match epoch_end(&starts, their_epoch, my_end) {
            Some((e, mine)) if e == their_epoch => break mine.min(their_end),
            // We lack their epoch: ask about our newest epoch below it.
            Some((e, _)) => epoch = e,
            None => break first.min(their_end),
        }
    };
    let committed = part.log.committed();
    let id = part.id;
    if target < committed {
        // Committed records are on every ISR member, the leader included,
        // unless it was elected uncleanly: only its log end can tell.
        let leader_end = client
            .epoch_end_offset(ask(u32::MAX))
            .await
            .map_err(Error::from)?
            .into_inner()
            .end_offset;
        if leader_end >= committed {
            target = committed;
        } else {
            target = target.min(leader_end);
            tracing::error!(
                partition = id,
                "DATA LOSS: the leader's log ends at {leader_end}, below this replica's \
                 committed offset {committed}; dropping offsets {target}..{my_end} (unclean \
                 leader election)"
            );
            let log = part.log.clone();
            super::blocking(move || log.truncate_unclean_to(target)).await?;
            part.publish_log_end();
            return Ok(());
        }
    }
    if target >= my_end {
        tracing::info!(
            partition = id,
            "log agrees with the leader's up to its end {my_end} (epoch {epoch}): nothing to \
             truncate; catching up from there"
        );
        return Ok(());
    }
    tracing::warn!(
        partition = id,
        "truncating the log from {my_end} to {target}, where it diverges from the leader's \
         (epoch {current_epoch})"
    );
    let log = part.log.clone();
    super::blocking(move || log.truncate_to(target)).await?;
    part.publish_log_end();
    Ok(())
}
