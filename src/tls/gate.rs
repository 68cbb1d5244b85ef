//! Authorization of the replication service's calls by who sent them
//! (docs/SECURITY.md, "Transport and node identity").
//!
//! Invariants:
//! - a `Fetch` request whose `follower_id` is not the caller's proven node
//!   id (the CN of its TLS client certificate) is refused
//!   (`PERMISSION_DENIED`): a node fetches only as itself, so no one moves
//!   a high watermark or evicts a follower in another node's name;
//! - a `LeaderAndIsr` notice whose controller epoch is higher than the
//!   newest one this node verified is acted on only after ZooKeeper (read
//!   after a `sync`) shows `/controller` held at exactly that epoch and
//!   `/controller_epoch` equal to it; otherwise it is refused
//!   (`STALE_CONTROLLER_EPOCH`) and changes nothing, not even the epoch
//!   this node remembers. A forged epoch (`u64::MAX`) therefore cannot
//!   lock the real controller out. A notice at an epoch below the verified
//!   one is refused as stale;
//! - over TLS, a notice is accepted only from the node that holds
//!   `/controller` at the notice's epoch (its CN is the holder's node id);
//! - without TLS the caller is unknown: the epoch check above still holds,
//!   but a notice at the current epoch, or a fetch under any follower id,
//!   from whoever reaches the port is accepted as before.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::cluster::BoxFuture;
use crate::error::{Error, Result};

/// The controller as ZooKeeper has it: the holder of `/controller` and
/// its epoch (`None` while no node holds it), and `/controller_epoch`.
pub type ControllerRead = (Option<(String, u64)>, u64);

/// Where the gate reads the controller from (ZooKeeper in a node).
pub trait ControllerSource: Send + Sync + 'static {
    /// The controller, read fresh.
    fn read_controller(&self) -> BoxFuture<'static, Result<ControllerRead>>;
}

/// Who called, as the replication listener knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext connection: identity unknown.
    Unknown,
    /// A TLS connection whose client certificate names this node id (its
    /// subject CN; empty when the certificate has none).
    Node(String),
}

/// The controller epoch verified last and its holder.
#[derive(Clone, Debug, Default)]
struct Verified {
    /// The newest controller epoch ZooKeeper confirmed (0: none yet).
    epoch: u64,
    /// The node that held `/controller` at it.
    holder: String,
}

/// The replication service's authorization of callers.
pub struct Gate {
    /// ZooKeeper, once the node joined; `None` in protocol tests
    /// ([`Gate::unchecked`]).
    source: OnceLock<Arc<dyn ControllerSource>>,
    /// Whether notices are checked against the source at all.
    checked: bool,
    /// The newest verified controller epoch.
    verified: Mutex<Verified>,
    /// Serializes the ZooKeeper reads of concurrent notices of a new
    /// epoch (one read answers them all).
    reading: tokio::sync::Mutex<()>,
}

impl Gate {
    /// A gate that checks notices against the source attached later with
    /// [`Gate::attach`]; until then notices of a new epoch are refused
    /// (`UNAVAILABLE`; the controller retries them).
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            source: OnceLock::new(),
            checked: true,
            verified: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    /// A gate that checks no controller epoch against ZooKeeper, for tests
    /// of the replication protocol without ZooKeeper. Fetches are still
    /// checked against the caller's identity.
    pub fn unchecked() -> Arc<Gate> {
        Arc::new(Gate {
            source: OnceLock::new(),
            checked: false,
            verified: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    /// Attaches ZooKeeper (once).
    pub fn attach(&self, source: Arc<dyn ControllerSource>) {
        let _ = self.source.set(source);
    }

    /// Whether `caller` may fetch as `follower_id`.
    pub fn admit_fetch(caller: &Caller, follower_id: &str) -> std::result::Result<(), String> {
        match caller {
            Caller::Unknown => Ok(()),
            Caller::Node(id) if id == follower_id => Ok(()),
            Caller::Node(id) => Err(format!(
                "node {id:?} may fetch only as itself, not as follower {follower_id:?}"
            )),
        }
    }

    /// Whether a notice of controller epoch `epoch` from `caller` may be
    /// acted on (see the module invariants). `Err` carries the refusal.
    pub async fn admit_notice(&self, caller: &Caller, epoch: u64) -> Result<()> {
        if !self.checked {
            return Ok(());
        }
        if let Some(v) = self.known(epoch) {
            return check_sender(caller, &v, epoch);
        }
        let _reading = self.reading.lock().await;
        // A concurrent notice may have verified it meanwhile.
        if let Some(v) = self.known(epoch) {
            return check_sender(caller, &v, epoch);
        }
        let source = self.source.get().ok_or_else(|| {
            Error::Unavailable("not joined to ZooKeeper yet: cannot verify the controller".into())
        })?;
        let (holder, current) = source.read_controller().await?;
        let holder = match holder {
            Some((node, held_at)) if held_at == epoch && current == epoch => node,
            Some((node, held_at)) => {
                return Err(Error::StaleController(format!(
                    "notice claims controller epoch {epoch}, but ZooKeeper has node {node:?} \
                     controller at epoch {held_at} (/controller_epoch {current})"
                )));
            }
            None => {
                return Err(Error::StaleController(format!(
                    "notice claims controller epoch {epoch}, but no node holds /controller \
                     (/controller_epoch {current})"
                )));
            }
        };
        let v = Verified {
            epoch,
            holder: holder.clone(),
        };
        check_sender(caller, &v, epoch)?;
        let mut verified = self.verified.lock();
        if epoch > verified.epoch {
            *verified = v;
        }
        Ok(())
    }

    /// The verified state when `epoch` needs no ZooKeeper read (it is the
    /// verified epoch, or older: then refused by [`check_sender`]).
    fn known(&self, epoch: u64) -> Option<Verified> {
        let v = self.verified.lock();
        (v.epoch > 0 && epoch <= v.epoch).then(|| v.clone())
    }
}

/// Refuses a notice at an epoch below the verified one, and one over TLS
/// from a node other than the holder.
fn check_sender(caller: &Caller, v: &Verified, epoch: u64) -> Result<()> {
    if epoch < v.epoch {
        return Err(Error::StaleController(format!(
            "notice from controller epoch {epoch}, but epoch {} was verified",
            v.epoch
        )));
    }
    match caller {
        Caller::Unknown => Ok(()),
        Caller::Node(id) if *id == v.holder => Ok(()),
        Caller::Node(id) => Err(Error::StaleController(format!(
            "notice at controller epoch {epoch} sent by node {id:?}, but node {:?} holds \
             /controller at that epoch",
            v.holder
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// ZooKeeper stand-in: a fixed controller, counting reads.
    struct Fixed(Option<(String, u64)>, u64, AtomicUsize);

    impl ControllerSource for Fixed {
        fn read_controller(&self) -> BoxFuture<'static, Result<ControllerRead>> {
            self.2.fetch_add(1, Ordering::SeqCst);
            let answer = (self.0.clone(), self.1);
            Box::pin(async move { Ok(answer) })
        }
    }

    fn gate(holder: &str, epoch: u64) -> (Arc<Gate>, Arc<Fixed>) {
        let g = Gate::new();
        let src = Arc::new(Fixed(
            Some((holder.to_string(), epoch)),
            epoch,
            AtomicUsize::new(0),
        ));
        g.attach(src.clone());
        (g, src)
    }

    #[tokio::test]
    async fn forged_epoch_is_refused_and_does_not_lock_the_controller_out() {
        let (g, src) = gate("node-1", 3);
        let err = g
            .admit_notice(&Caller::Unknown, u64::MAX)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "STALE_CONTROLLER_EPOCH");
        // The real controller's notice is still admitted.
        g.admit_notice(&Caller::Unknown, 3).await.unwrap();
        assert_eq!(src.2.load(Ordering::SeqCst), 2);
        // Verified: no further read at that epoch.
        g.admit_notice(&Caller::Unknown, 3).await.unwrap();
        assert_eq!(src.2.load(Ordering::SeqCst), 2);
        // Older ones are stale.
        assert_eq!(
            g.admit_notice(&Caller::Unknown, 2)
                .await
                .unwrap_err()
                .reason(),
            "STALE_CONTROLLER_EPOCH"
        );
    }

    #[tokio::test]
    async fn over_tls_only_the_holder_may_send_notices() {
        let (g, _) = gate("node-1", 3);
        let err = g
            .admit_notice(&Caller::Node("node-2".into()), 3)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            Error::StaleController(
                "notice at controller epoch 3 sent by node \"node-2\", but node \"node-1\" holds \
                 /controller at that epoch"
                    .into()
            )
        );
        g.admit_notice(&Caller::Node("node-1".into()), 3)
            .await
            .unwrap();
        assert!(
            g.admit_notice(&Caller::Node("node-2".into()), 3)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn no_source_yet_is_unavailable() {
        let g = Gate::new();
        assert_eq!(
            g.admit_notice(&Caller::Unknown, 1)
                .await
                .unwrap_err()
                .reason(),
            "UNAVAILABLE"
        );
    }

    #[test]
    fn fetch_only_as_itself() {
        assert!(Gate::admit_fetch(&Caller::Unknown, "node-2").is_ok());
        assert!(Gate::admit_fetch(&Caller::Node("node-2".into()), "node-2").is_ok());
        assert_eq!(
            Gate::admit_fetch(&Caller::Node("node-3".into()), "node-2").unwrap_err(),
            "node \"node-3\" may fetch only as itself, not as follower \"node-2\""
        );
    }
}
