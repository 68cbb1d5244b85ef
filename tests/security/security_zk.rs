//! ZooKeeper ACLs on real processes (issue 13, docs/SECURITY.md "ZooKeeper
//! ACLs"): a three-node cluster whose nodes authenticate to a real
//! ZooKeeper with `digest` credentials (`cluster.zk_auth`, through the
//! `CASKADE_CLUSTER_ZK_AUTH_*` environment). Another ZooKeeper user (no
//! credentials, another digest user, caskade's user with another password)
//! cannot rewrite, delete or add to the partition state, replicas,
//! controller, controller epoch, ISR notifications or registrations:
//! ZooKeeper answers `NoAuth` and the bytes stay exactly as they were. The
//! cluster still serves writes and elects after its leader is killed; a
//! node with the wrong password, or with none, refuses to start with one
//! line and exit status 1.

use crate::harness;

use std::time::Duration;

use caskade::client::SetOptions;
use harness::cluster::{ClusterOpts, TestCluster};
use harness::{Server, ServerOpts, b, runtime};
use zookeeper_client as zk;

/// The cluster's ZooKeeper user and password.
const USER: &str = "caskade";
const PASSWORD: &str = "s3cret-zk-password";

/// The cluster root (`cluster.name: test` in the harness).
const ROOT: &str = "/caskade/test";

/// ZooKeeper's `digest` identity of `user` with `password`:
/// `user:base64(sha1("user:password"))` (DigestAuthenticationProvider).
fn digest_id(user: &str, password: &str) -> String {
    use base64::Engine;
    let hash = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{user}:{password}").as_bytes(),
    );
    format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    )
}

/// The cluster's environment: ZooKeeper credentials for every node.
fn env(password: &str) -> Vec<(String, String)> {
    vec![
        ("CASKADE_CLUSTER_ZK_AUTH_USER".into(), USER.into()),
        ("CASKADE_CLUSTER_ZK_AUTH_PASSWORD".into(), password.into()),
    ]
}

/// A ZooKeeper session of the test's cluster with `auth` (`user:password`
/// digest credentials) or none.
async fn session(c: &TestCluster, auth: Option<&str>) -> zk::Client {
    let mut connector = zk::Client::connector().with_session_timeout(Duration::from_millis(4000));
    if let Some(a) = auth {
        connector = connector.with_auth("digest", a.as_bytes());
    }
    connector
        .connect(&c.zk.connect_string())
        .await
        .expect("connect a ZooKeeper session")
}

/// The ACL every caskade znode must carry: ALL for the cluster's digest
/// identity, READ for the world.
fn expected_acl(digest_id: &str) -> Vec<zk::Acl> {
    vec![
        zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", digest_id)),
        zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
    ]
}

/// Starts node `i` of `c` with `env` instead of the cluster's environment;
/// the start must fail. Returns the failure.
fn start_failing(c: &TestCluster, i: usize, env: &[(&str, &str)]) -> harness::StartFailure {
    let spec = &c.specs[i];
    let mut opts = ServerOpts::default()
        .listen(&spec.addr)
        .arg("--config")
        .arg(spec.config.to_str().expect("utf-8 path"));
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    match Server::try_start(&spec.data, opts) {
        Ok(_) => panic!("node {} started though it must not", spec.id),
        Err(f) => f,
    }
}

#[test]
fn another_zookeeper_user_cannot_rewrite_partition_state() {
    let c = TestCluster::start(ClusterOpts {
        env: env(PASSWORD),
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..20 {
            client
                .set(format!("k{i}"), format!("v{i}"), SetOptions::default())
                .await
                .unwrap();
        }
    });

    // The znodes the attack aims at, and what they hold now.
    let state = format!("{ROOT}/partitions/0/state");
    let replicas = format!("{ROOT}/partitions/0/replicas");
    let controller = format!("{ROOT}/controller");
    let epoch = format!("{ROOT}/controller_epoch");
    let node1 = format!("{ROOT}/nodes/node-1");
    let isr_change = format!("{ROOT}/isr_change");
    let targets = [&state, &replicas, &controller, &epoch, &node1];
    rt.block_on(async {
        let ours = session(&c, Some(&format!("{USER}:{PASSWORD}"))).await;
        // Every znode carries exactly ALL for the cluster's identity and
        // READ for the world, the root's ancestors and the ephemerals
        // included.
        let want = expected_acl(&digest_id(USER, PASSWORD));
        for path in [
            "/caskade",
            ROOT,
            &format!("{ROOT}/nodes"),
            &format!("{ROOT}/partitions"),
            &format!("{ROOT}/partitions/0"),
            &format!("{ROOT}/draining"),
            &isr_change,
            &state,
            &replicas,
            &controller,
            &epoch,
            &node1,
            &format!("{ROOT}/nodes/node-2"),
            &format!("{ROOT}/nodes/node-3"),
        ] {
            let (acl, _) = ours.get_acl(path).await.unwrap();
            assert_eq!(acl, want, "ACL of {path}");
        }
        let before: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for path in targets {
                v.push(ours.get_data(path).await.unwrap().0);
            }
            v
        };

        // Three other users: nobody, another digest user, caskade's user
        // with another password.
        for auth in [None, Some("mallory:pw"), Some("caskade:wrong-password")] {
            let other = session(&c, auth).await;
            let open_acl = [zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())];
            for path in targets {
                // World READ: inspecting stays possible.
                let (data, _) = other.get_data(path).await.unwrap();
                assert!(!data.is_empty(), "{path}");
                assert_eq!(
                    other
                        .set_data(path, b"{\"leader\":\"evil\"}", None)
                        .await
                        .err(),
                    Some(zk::Error::NoAuth),
                    "setData {path} as {auth:?}"
                );
                assert_eq!(
                    other.delete(path, None).await,
                    Err(zk::Error::NoAuth),
                    "delete {path} as {auth:?}"
                );
                assert_eq!(
                    other.set_acl(path, &open_acl, None).await.err(),
                    Some(zk::Error::NoAuth),
                    "setAcl {path} as {auth:?}"
                );
            }
            let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            for (parent, child) in [
                (ROOT, "controller_evil"),
                (&format!("{ROOT}/partitions") as &str, "99"),
                (&format!("{ROOT}/partitions/0") as &str, "extra"),
                (&format!("{ROOT}/nodes") as &str, "node-evil"),
                (&isr_change as &str, "0-0000000001"),
            ] {
                let path = format!("{parent}/{child}");
                assert_eq!(
                    other.create(&path, b"{}", &persistent).await.err(),
                    Some(zk::Error::NoAuth),
                    "create {path} as {auth:?}"
                );
            }
        }
        // The bytes are exactly what they were.
        for (path, was) in targets.iter().zip(&before) {
            let (now, _) = ours.get_data(path).await.unwrap();
            assert_eq!(&now, was, "{path} changed");
        }
    });

    // The cluster still serves writes and elects after its leader dies.
    let leader = c.leader(0).expect("partition 0 has a leader");
    let mut c = c;
    c.kill(leader);
    c.wait_until("partition 0 has a new leader", |c| {
        c.leader(0).is_some_and(|l| l != leader)
    });
    let client = c.client(&rt);
    rt.block_on(async {
        for i in 0..20 {
            client
                .set(format!("after{i}"), format!("w{i}"), SetOptions::default())
                .await
                .unwrap();
        }
        assert_eq!(client.get("after7").await.unwrap(), Some(b("w7")));
        assert_eq!(client.get("k7").await.unwrap(), Some(b("v7")));
        // What the new controller and leaders wrote carries the ACL too.
        let ours = session(&c, Some(&format!("{USER}:{PASSWORD}"))).await;
        let want = expected_acl(&digest_id(USER, PASSWORD));
        for path in [&state, &controller] {
            let (acl, _) = ours.get_acl(path).await.unwrap();
            assert_eq!(acl, want, "ACL of {path} after the election");
        }
    });

    // The dead node, started with the wrong password: one line, exit 1.
    let id = c.specs[leader].id.clone();
    let wrong = start_failing(
        &c,
        leader,
        &[
            ("CASKADE_CLUSTER_ZK_AUTH_USER", USER),
            ("CASKADE_CLUSTER_ZK_AUTH_PASSWORD", "not-the-password"),
        ],
    );
    wrong.assert_exits_with_line(
        "caskade-server: ZooKeeper: the cluster root /caskade/test does not let ZooKeeper user \
         \"caskade\" with this password write (its ACL: digest user \"caskade\": ALL, world: \
         READ): wrong cluster.zk_auth password or user?",
    );
    assert!(
        !wrong.stderr.contains("not-the-password"),
        "{}",
        wrong.stderr
    );
    // Without credentials at all: one line, exit 1.
    start_failing(&c, leader, &[]).assert_exits_with_line(
        "caskade-server: ZooKeeper: the cluster root /caskade/test is protected by a ZooKeeper \
         ACL (digest user \"caskade\": ALL, world: READ) and cluster.zk_auth is not set: \
         configure the cluster's ZooKeeper user and password (docs/SECURITY.md, \"ZooKeeper \
         ACLs\")",
    );
    // With the right one it joins again and catches up.
    c.start_node(leader);
    c.wait_until(&format!("{id} is back in every ISR"), |c| {
        c.all_led() && c.full_isr()
    });
    let log = c.log(leader);
    assert!(!log.contains(PASSWORD), "the password is logged:\n{log}");
}

/// Runs ZooKeeper's own `zkCli` (ZooKeeperMain, as `zkCli.sh` does)
/// against the cluster's ZooKeeper with `commands` on stdin, bounded;
/// returns its output.
fn zk_cli(c: &TestCluster, commands: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("timeout")
        .args(["60", "java", "-cp"])
        .arg("/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar")
        .args(["org.apache.zookeeper.ZooKeeperMain", "-server"])
        .arg(c.zk.connect_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run zkCli (java)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{commands}\nquit\n").as_bytes())
        .expect("write zkCli commands");
    let out = child.wait_with_output().expect("wait for zkCli");
    assert_eq!(out.status.code(), Some(0), "zkCli failed");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The documented migration of a cluster created without ZooKeeper
/// authentication: a rolling restart with `zk_auth` makes every node log
/// the world-writable root with the command that closes it (another user
/// can still write meanwhile); after that command, run in ZooKeeper's own
/// zkCli exactly as docs/SECURITY.md gives it, the state is closed to
/// other users and a restarted node logs nothing.
#[test]
fn an_open_cluster_is_reported_then_closed_by_the_documented_set_acl() {
    let mut c = TestCluster::start(ClusterOpts::default());
    let state = format!("{ROOT}/partitions/0/state");
    let warning = "ZooKeeper: the cluster root /caskade/test is writable by anyone (ACL world: \
                   ALL), created before cluster.zk_auth: other ZooKeeper users can rewrite \
                   partition state until you run, in zkCli.sh: `addauth digest \
                   caskade:<password>` then `setAcl -R /caskade/test \
                   auth::cdrwa,world:anyone:r` (docs/SECURITY.md, \"ZooKeeper ACLs\")";
    let auth = [
        ("CASKADE_CLUSTER_ZK_AUTH_USER", USER),
        ("CASKADE_CLUSTER_ZK_AUTH_PASSWORD", PASSWORD),
    ];
    for i in 0..c.specs.len() {
        c.stop_node(i);
        c.start_node_with(i, &auth);
        c.wait_until("every partition is led with a full ISR", |c| {
            c.all_led() && c.full_isr()
        });
        let log = c.log(i);
        assert_eq!(
            log.lines().filter(|l| l.contains(warning)).count(),
            1,
            "node {i} log:\n{log}"
        );
    }
    let rt = runtime();
    rt.block_on(async {
        // Still open: another user writes (and puts it back).
        let other = session(&c, None).await;
        let (was, _) = other.get_data(&state).await.unwrap();
        other.set_data(&state, &was, None).await.unwrap();
    });
    let out = zk_cli(
        &c,
        &format!(
            "addauth digest {USER}:{PASSWORD}\nsetAcl -R {ROOT} auth::cdrwa,world:anyone:r\n\
             getAcl {state}"
        ),
    );
    assert!(
        out.contains("cdrwa") && out.contains("'world,'anyone\n: r"),
        "{out}"
    );
    rt.block_on(async {
        let other = session(&c, Some("mallory:pw")).await;
        let (was, _) = other.get_data(&state).await.unwrap();
        assert_eq!(
            other.set_data(&state, b"{}", None).await.err(),
            Some(zk::Error::NoAuth)
        );
        let ours = session(&c, Some(&format!("{USER}:{PASSWORD}"))).await;
        let want = expected_acl(&digest_id(USER, PASSWORD));
        for path in [ROOT, &state, &format!("{ROOT}/controller_epoch")] {
            assert_eq!(ours.get_acl(path).await.unwrap().0, want, "ACL of {path}");
        }
        assert_eq!(ours.get_data(&state).await.unwrap().0, was);
    });
    // A node restarted now finds nothing to report, and the cluster works.
    c.stop_node(0);
    c.start_node_with(0, &auth);
    c.wait_until("every partition is led with a full ISR", |c| {
        c.all_led() && c.full_isr()
    });
    let log = c.log(0);
    assert!(!log.contains("writable by anyone"), "{log}");
    let client = c.client(&rt);
    rt.block_on(async {
        client
            .set("after", "migration", SetOptions::default())
            .await
            .unwrap();
        assert_eq!(client.get("after").await.unwrap(), Some(b("migration")));
    });
}
