//! Controller election: the campaign for `/controller` (a multi creating
//! the ephemeral and bumping `/controller_epoch` with compare-and-set), the
//! check of an election whose answer was lost, following the current
//! controller, and resigning.

use std::time::Duration;

use zookeeper_client as zk;

use super::super::decide;
use super::super::znode::{self, ControllerZnode, decode, encode};
use super::super::{Shared, session_over};
use super::{Exit, Won};

/// One attempt at `/controller`: `Some` when this node won, `None` when
/// another node holds it.
pub(super) async fn campaign(shared: &Shared, client: &zk::Client) -> Result<Option<Won>, Exit> {
    let paths = &shared.paths;
    let epoch_path = paths.controller_epoch();
    let ctrl_path = paths.controller();
    loop {
        let (data, stat) = znode::retry_loss(|| client.get_data(&epoch_path))
            .await
            .map_err(|e| Exit::zk(&format!("read {epoch_path}"), e))?;
        let epoch: u64 = decode(&epoch_path, &data)?;
        let next = decide::next_controller_epoch(&epoch_path, epoch)?;
        let me = ControllerZnode {
            node_id: shared.me.id.clone(),
            controller_epoch: next,
        };
        let ephemeral = paths.options(zk::CreateMode::Ephemeral);
        let mut w = client.new_multi_writer();
        w.add_create(&ctrl_path, &encode(&me), &ephemeral)
            .map_err(|e| Exit::zk("build the election multi", e))?;
        w.add_set_data(&epoch_path, &encode(&next), Some(stat.version))
            .map_err(|e| Exit::zk("build the election multi", e))?;
        match w.commit().await {
            Ok(results) => {
                let epoch_version = match results.get(1) {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                    _ => stat.version.wrapping_add(1),
                };
                return Ok(Some(Won {
                    epoch: next,
                    epoch_version,
                }));
            }
            Err(zk::MultiWriteError::OperationFailed {
                index: 0,
                source: zk::Error::NodeExists,
            }) => return Ok(None),
            // Another node bumped the epoch meanwhile: try again.
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion,
                ..
            }) => continue,
            Err(zk::MultiWriteError::RequestFailed {
                source: zk::Error::ConnectionLoss,
            }) => {
                // Outcome unknown: won if /controller is ours at `next`.
                if let Some(won) = check_won(client, paths, next).await? {
                    return Ok(Some(won));
                }
            }
            Err(e) => return Err(Exit::zk("controller election", e.into())),
        }
    }
}

/// After an election multi with unknown outcome: whether `/controller` is
/// this session's at `epoch`, and the version of `/controller_epoch`.
async fn check_won(
    client: &zk::Client,
    paths: &super::super::Paths,
    epoch: u64,
) -> Result<Option<Won>, Exit> {
    let ctrl_path = paths.controller();
    let (data, stat) = match znode::retry_loss(|| client.get_data(&ctrl_path)).await {
        Ok(x) => x,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(e) => return Err(Exit::zk(&format!("read {ctrl_path}"), e)),
    };
    let holder: ControllerZnode = decode(&ctrl_path, &data)?;
    if stat.ephemeral_owner != client.session_id().0 || holder.controller_epoch != epoch {
        return Ok(None);
    }
    let epoch_path = paths.controller_epoch();
    let (data, stat) = znode::retry_loss(|| client.get_data(&epoch_path))
        .await
        .map_err(|e| Exit::zk(&format!("read {epoch_path}"), e))?;
    let current: u64 = decode(&epoch_path, &data)?;
    if current != epoch {
        return Ok(None);
    }
    Ok(Some(Won {
        epoch,
        epoch_version: stat.version,
    }))
}

/// Notes the current controller and waits until `/controller` changes.
/// False when the session is over.
pub(super) async fn follow(shared: &Shared, client: &zk::Client) -> bool {
    let ctrl_path = shared.paths.controller();
    match client.get_and_watch_data(&ctrl_path).await {
        Ok((_, stat, _)) if stat.ephemeral_owner == client.session_id().0 => {
            // Ours without a controller running (an election answer lost
            // in a way `check_won` did not recognise): hand it back.
            tracing::warn!("{ctrl_path} is held by this session without a controller; resigning");
            resign(shared, client).await;
            true
        }
        Ok((data, _, watcher)) => {
            let holder = decode::<ControllerZnode>(&ctrl_path, &data)
                .map(|c| c.node_id)
                .map_err(|e| tracing::warn!("{e}"))
                .ok();
            *shared.controller.write() = holder;
            let event = watcher.changed().await;
            !event.session_state.is_terminated()
        }
        Err(zk::Error::NoNode) => {
            *shared.controller.write() = None;
            true
        }
        Err(e) if session_over(&e) => false,
        Err(e) => {
            tracing::debug!("cannot watch {ctrl_path}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            true
        }
    }
}

/// Deletes `/controller` if this session holds it, so that a new election
/// takes place.
pub(super) async fn resign(shared: &Shared, client: &zk::Client) {
    let path = shared.paths.controller();
    if let Ok(Some(stat)) = znode::retry_loss(|| client.check_stat(&path)).await
        && stat.ephemeral_owner == client.session_id().0
    {
        match znode::retry_loss(|| client.delete(&path, Some(stat.version))).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => tracing::warn!("cannot resign as controller: {e}"),
        }
    }
}
