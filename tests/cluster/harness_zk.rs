//! The harness's ZooKeeper shortcuts (tests/harness/zk.rs): a zombie counts
//! as gone, and shares of the process's shared server are isolated by
//! their chroots and cannot be killed.

use crate::harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::runtime;
use harness::zk::{Zk, running};
use zookeeper_client as zk;

/// A live process runs; once it exited and before it is reaped (a zombie)
/// it does not; reaped, it does not either.
#[test]
fn a_zombie_counts_as_gone() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id() as i32;
    assert!(running(pid));
    // SAFETY: kill(2) on a child of this test, not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    // Not reaped (no wait): a zombie until `child.wait()`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(
        stat.rsplit_once(')').unwrap().1.split_whitespace().next(),
        Some("Z")
    );
    child.wait().unwrap();
    assert!(!running(pid));
}

/// Two shares: each sees only its own chroot; a share cannot be killed.
#[test]
fn shares_see_only_their_chroot_and_cannot_be_killed() {
    let (a, b) = (Zk::shared(), Zk::shared());
    assert_eq!(a.client_ports(), b.client_ports(), "one shared server");
    assert_ne!(a.chroot(), b.chroot());
    assert_eq!(
        a.connect_string(),
        format!("127.0.0.1:{}{}", a.client_ports()[0], a.chroot())
    );
    let rt = runtime();
    let connect = |z: &Zk| {
        let s = z.connect_string();
        rt.block_on(async move {
            zk::Client::connector()
                .with_session_timeout(Duration::from_millis(4000))
                .connect(&s)
                .await
                .expect("connect to a share")
        })
    };
    let (ca, cb) = (connect(&a), connect(&b));
    rt.block_on(async {
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        ca.create("/only-a", b"a", &opts).await.unwrap();
        assert_eq!(ca.list_children("/").await.unwrap(), vec!["only-a"]);
        assert_eq!(cb.list_children("/").await.unwrap(), Vec::<String>::new());
        assert!(matches!(
            cb.get_data("/only-a").await,
            Err(zk::Error::NoNode)
        ));
    });
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.kill_member(0)));
    assert!(killed.is_err(), "killing a share must panic");
    // The server still serves the other share.
    rt.block_on(async { cb.list_children("/").await.unwrap() });
}
