//! Transport security and node identity (docs/SECURITY.md, "Transport and
//! node identity"), on real processes and a real ZooKeeper:
//!
//! - a three-node cluster with mutual TLS serves TLS clients (gRPC and
//!   RESP) and refuses plaintext ones and clients without a certificate;
//! - on the replication port, a caller without a certificate of the
//!   cluster's CA cannot fetch or send `LeaderAndIsr`; a valid node that is
//!   not the controller cannot send `LeaderAndIsr` (nothing is truncated,
//!   the leader stays); a node fetches only as itself;
//! - without TLS, a forged `LeaderAndIsr` at controller epoch `u64::MAX`
//!   is refused and the real controller keeps being obeyed.
//!
//! The tests of this file run one at a time (the `SERIAL` lock).

use crate::harness;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caskade::client::{Client, SetOptions};
use caskade::config::{ClientConfig, ClientTlsOptions};
use caskade::proto::replication as pb;
use caskade::proto::replication::replication_client::ReplicationClient;
use caskade::tls::certs::{Plan, generate};
use harness::cluster::{ClusterOpts, TestCluster};
use harness::zk::Zk;
use harness::{Server, ServerOpts, b, free_port, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One cluster test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Partitions of the test clusters.
const PARTITIONS: u32 = 2;

/// One node of [`TlsCluster`].
struct Spec {
    /// `node-<i+1>`.
    id: String,
    /// Client gRPC address.
    addr: String,
    /// Replication address.
    repl: String,
    /// RESP address.
    resp: String,
    /// Config file.
    config: PathBuf,
    /// Data directory.
    data: PathBuf,
}

/// Three nodes with mutual TLS (`require_client_cert: true`), certificates
/// from [`generate`]; a second, untrusted CA's certificates in `rogue/`.
struct TlsCluster {
    /// The nodes.
    specs: Vec<Spec>,
    /// Their processes.
    servers: Vec<Server>,
    /// Certificates of the cluster's CA.
    certs: PathBuf,
    /// Certificates of another CA (same names).
    rogue: PathBuf,
    /// ZooKeeper (dropped after the servers).
    zk: Zk,
    /// Credentials of the cluster's own client (`auth:` in `extra`).
    creds: Option<(String, String)>,
    /// Holds every file.
    _dir: tempfile::TempDir,
}

/// The config of node `spec` in ZooKeeper `zk`: its certificate and key
/// from `certs`, trusting `ca`, then `extra` YAML.
fn node_yaml(spec: &Spec, certs: &Path, ca: &Path, zk: &Zk, extra: &str) -> String {
    let c = |f: &str| certs.join(f).display().to_string();
    format!(
        "node_id: {id}\nlisten: {addr}\npartitions: {PARTITIONS}\n\
         default_acks: all\nstorage:\n  fsync: never\n\
         resp:\n  listen: {resp}\n\
         tls:\n  cert: {cert}\n  key: {key}\n  ca: {ca}\n  require_client_cert: true\n\
         cluster:\n  name: test\n  zk_connect: {zk}\n  session_timeout_ms: 2000\n\
         \x20 replication_listen: {repl}\n  replication_factor: 3\n  min_insync: 2\n\
         \x20 replica_lag_ms: 1500\n  preferred_leader_rebalance: false\n\
         \x20 fetch_max_wait_ms: 200\n{extra}",
        id = spec.id,
        addr = spec.addr,
        resp = spec.resp,
        repl = spec.repl,
        cert = c(&format!("{}.pem", spec.id)),
        key = c(&format!("{}.key", spec.id)),
        ca = ca.display(),
        zk = zk.connect_string(),
    )
}

/// A node spec for `id` with free ports, its files under `dir`.
fn spec(dir: &Path, id: String) -> Spec {
    Spec {
        addr: format!("127.0.0.1:{}", free_port()),
        repl: format!("127.0.0.1:{}", free_port()),
        resp: format!("127.0.0.1:{}", free_port()),
        config: dir.join(format!("{id}.yaml")),
        data: dir.join(&id),
        id,
    }
}

/// Node ids `node-1..=n`.
fn ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("node-{i}")).collect()
}

impl TlsCluster {
    fn start() -> TlsCluster {
        TlsCluster::start_with("", None)
    }

    /// [`TlsCluster::start`] with `extra` YAML in every node's config, and
    /// `creds` for the cluster's own client.
    fn start_with(extra: &str, creds: Option<(&str, &str)>) -> TlsCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let rogue = dir.path().join("rogue");
        let plan = |ca: &str, n: usize| Plan {
            ca_name: ca.into(),
            nodes: ids(n),
            clients: vec!["client".into()],
            hosts: vec![],
        };
        generate(&certs, &plan("test CA", 3)).expect("certificates");
        // node-4 exists only in the rogue CA.
        generate(&rogue, &plan("rogue CA", 4)).expect("rogue certificates");
        let zk = Zk::standalone();
        let specs: Vec<Spec> = ids(3)
            .into_iter()
            .map(|id| {
                let spec = spec(dir.path(), id);
                let yaml = node_yaml(&spec, &certs, &certs.join("ca.pem"), &zk, extra);
                std::fs::write(&spec.config, yaml).expect("write node config");
                spec
            })
            .collect();
        let servers = specs
            .iter()
            .map(|s| {
                Server::start(
                    &s.data,
                    ServerOpts::default()
                        .listen(&s.addr)
                        .arg("--config")
                        .arg(s.config.to_str().expect("utf-8 path")),
                )
            })
            .collect();
        let cluster = TlsCluster {
            specs,
            servers,
            certs,
            rogue,
            zk,
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            _dir: dir,
        };
        cluster.wait_until("every partition has a leader with a full ISR", |c| {
            (0..PARTITIONS).all(|p| {
                c.partition(p)
                    .is_some_and(|i| !i.leader.is_empty() && i.isr.len() == 3)
            })
        });
        cluster
    }

    /// Client TLS settings: the cluster's CA, and `cert` (a name in the
    /// certificate directory `dir`) as client certificate when given.
    fn tls(&self, dir: &Path, cert: Option<&str>) -> ClientTlsOptions {
        ClientTlsOptions {
            ca: self.certs.join("ca.pem"),
            cert: cert
                .map(|c| dir.join(format!("{c}.pem")))
                .unwrap_or_default(),
            key: cert
                .map(|c| dir.join(format!("{c}.key")))
                .unwrap_or_default(),
        }
    }

    /// A client of node `i` with `tls`.
    fn client(&self, i: usize, tls: ClientTlsOptions, rt: &tokio::runtime::Runtime) -> Client {
        let _in = rt.enter();
        Client::new(&ClientConfig {
            addrs: vec![self.specs[i].addr.clone()],
            timeout_ms: 3000,
            tls,
            auth: caskade::config::auth::ClientAuth {
                user: self.creds.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                password: self.creds.as_ref().map(|c| c.1.clone()).unwrap_or_default(),
            },
            ..ClientConfig::default()
        })
        .expect("client")
    }

    /// Metadata from node 0 over TLS, `None` when it does not answer.
    fn metadata(&self) -> Option<caskade::proto::MetadataResponse> {
        let rt = runtime();
        let c = self.client(0, self.tls(&self.certs, Some("client")), &rt);
        rt.block_on(c.metadata()).ok()
    }

    /// Metadata from node `i` over TLS, `None` when it does not answer.
    fn metadata_of(&self, i: usize) -> Option<caskade::proto::MetadataResponse> {
        let rt = runtime();
        let c = self.client(i, self.tls(&self.certs, Some("client")), &rt);
        rt.block_on(c.metadata()).ok()
    }

    /// Partition `p` as its leader reports it (the ISR is the leader's).
    fn at_leader(&self, p: u32) -> Option<caskade::proto::PartitionInfo> {
        let leader = self.partition(p)?.leader;
        let i = self.specs.iter().position(|s| s.id == leader)?;
        self.metadata_of(i)?.partitions.get(p as usize).cloned()
    }

    /// Partition `p` as node 0 reports it.
    fn partition(&self, p: u32) -> Option<caskade::proto::PartitionInfo> {
        self.metadata()?.partitions.get(p as usize).cloned()
    }

    /// Index of node `id`.
    fn index(&self, id: &str) -> usize {
        self.specs
            .iter()
            .position(|s| s.id == id)
            .expect("known node")
    }

    /// Polls `cond` for up to 30 s; panics with the logs otherwise.
    fn wait_until(&self, what: &str, cond: impl Fn(&TlsCluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: String = self
            .servers
            .iter()
            .zip(&self.specs)
            .map(|(s, spec)| {
                format!(
                    "--- {} ---\n{}\n",
                    spec.id,
                    harness::cluster::tail(&s.log(), 30)
                )
            })
            .collect();
        panic!("timed out waiting until {what}\n{logs}");
    }

    /// A replication client of node `i` over TLS as `cert` of `dir`
    /// (`None`: plaintext).
    async fn repl(
        &self,
        i: usize,
        who: Option<(&Path, &str)>,
    ) -> ReplicationClient<tonic::transport::Channel> {
        let tls = match who {
            None => None,
            Some((dir, name)) => {
                caskade::tls::load_client(&self.tls(dir, Some(name))).expect("tls")
            }
        };
        let ch = caskade::tls::endpoint(&self.specs[i].repl, tls.as_ref())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        ReplicationClient::new(ch)
    }
}

/// A raw ZooKeeper client.
async fn raw_zk(zk: &Zk) -> zookeeper_client::Client {
    zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_millis(4000))
        .connect(&zk.connect_string())
        .await
        .expect("connect a raw ZooKeeper client")
}

/// `/controller_epoch` and the node epoch of `id` (czxid of `/nodes/<id>`)
/// in the cluster `test`.
async fn epochs(zk: &Zk, id: &str) -> (u64, i64) {
    let c = raw_zk(zk).await;
    let (data, _) = c
        .get_data("/caskade/test/controller_epoch")
        .await
        .expect("controller epoch");
    let epoch: u64 = serde_json::from_slice(&data).expect("a number");
    let (_, stat) = c
        .get_data(&format!("/caskade/test/nodes/{id}"))
        .await
        .expect("registered");
    (epoch, stat.czxid)
}

/// A notice making `leader` the leader of partition 0 at `leader_epoch`
/// with itself alone in the ISR, for the registration `node_epoch`.
fn forged_notice(
    controller_epoch: u64,
    node_epoch: i64,
    leader: &str,
    leader_epoch: u64,
) -> pb::LeaderAndIsrRequest {
    pb::LeaderAndIsrRequest {
        controller_epoch,
        partitions: vec![pb::PartitionState {
            partition: 0,
            leader: leader.into(),
            leader_epoch: u32::try_from(leader_epoch).expect("epoch fits"),
            replicas: ids(3),
            isr: vec![leader.into()],
            zk_version: 0,
            leader_node_epoch: 0,
        }],
        nodes: Vec::new(),
        node_epoch,
        leader_ids: Vec::new(),
        leaders: Vec::new(),
        leaders_full: false,
        replica_sets: Vec::new(),
    }
}

/// The log end offset of partition 0 on the node behind `c`.
async fn log_end(c: &mut ReplicationClient<tonic::transport::Channel>) -> u64 {
    let r = c
        .log_end_offsets(pb::LogEndOffsetsRequest {
            controller_epoch: 0,
            partitions: vec![0],
        })
        .await
        .expect("log end offsets")
        .into_inner();
    r.partitions[0].log_end_offset
}

/// A one-request fetch of partition 0 at offset 0 as `follower`: the
/// first answer (or refusal).
async fn fetch_as(
    c: &mut ReplicationClient<tonic::transport::Channel>,
    follower: &str,
    leader_epoch: u64,
    offset: u64,
) -> Result<pb::FetchResponse, tonic::Status> {
    let req = pb::FetchRequest {
        follower_id: follower.into(),
        max_bytes: 1 << 20,
        max_wait_ms: 10,
        partitions: vec![pb::PartitionFetch {
            partition: 0,
            offset,
            leader_epoch: u32::try_from(leader_epoch).expect("epoch fits"),
        }],
        session_id: 0,
        session_epoch: 0,
        forgotten: Vec::new(),
    };
    let mut stream = c.fetch(tokio_stream::iter(vec![req])).await?.into_inner();
    match stream.message().await? {
        Some(r) => Ok(r),
        None => Err(tonic::Status::unknown(
            "fetch stream ended without an answer",
        )),
    }
}

#[test]
fn tls_clients_work_and_plaintext_clients_are_refused() {
    let _serial = serial();
    let c = TlsCluster::start();
    let rt = runtime();

    // A TLS client with a client certificate: acks: all, so replication
    // (fetches over mutual TLS) carries the write.
    let good = c.client(1, c.tls(&c.certs, Some("client")), &rt);
    rt.block_on(good.set(b("k"), b("v"), SetOptions::default()))
        .expect("TLS set");
    assert_eq!(
        rt.block_on(good.get(b("k"))).expect("TLS get"),
        Some(b("v"))
    );

    // Plaintext to a TLS listener: refused (the handshake never happens).
    let plain = c.client(1, ClientTlsOptions::default(), &rt);
    assert!(
        rt.block_on(plain.get(b("k"))).is_err(),
        "plaintext client served"
    );

    // TLS without a client certificate where one is required: refused.
    let anonymous = c.client(1, c.tls(&c.certs, None), &rt);
    assert!(
        rt.block_on(anonymous.get(b("k"))).is_err(),
        "client without a certificate served"
    );

    // A client certificate of another CA: refused.
    let rogue = c.client(1, c.tls(&c.rogue, Some("client")), &rt);
    assert!(
        rt.block_on(rogue.get(b("k"))).is_err(),
        "client of another CA served"
    );

    // RESP over TLS answers; plaintext RESP gets no answer.
    let resp = c.specs[1].resp.clone();
    let certs = c.certs.clone();
    rt.block_on(async move {
        assert_eq!(resp_ping_tls(&resp, &certs).await, "+PONG\r\n");
        let mut plain = tokio::net::TcpStream::connect(&resp)
            .await
            .expect("connect");
        plain
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
            .await
            .expect("the listener answers or closes in time")
            .unwrap_or(0);
        assert!(
            !buf[..n].starts_with(b"+PONG"),
            "plaintext RESP served: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    });
}

/// `PING` over TLS on the RESP listener at `addr`, as `client` of `certs`.
async fn resp_ping_tls(addr: &str, certs: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let chain = CertificateDer::pem_file_iter(certs.join("client.pem"))
        .expect("client cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("client cert");
    let key = PrivateKeyDer::from_pem_file(certs.join("client.key")).expect("client key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("write");
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn replication_port_authorizes_callers_by_certificate() {
    let _serial = serial();
    let c = TlsCluster::start();
    let rt = runtime();
    let meta = c.metadata().expect("metadata");
    let controller = meta.controller.clone();
    let p0 = meta.partitions[0].clone();
    let leader = c.index(&p0.leader);
    // The forger: a valid node that is not the controller.
    let forger = ids(3)
        .into_iter()
        .find(|id| *id != controller)
        .expect("a node that is not the controller");
    let other = ids(3)
        .into_iter()
        .find(|id| *id != forger)
        .expect("another node");
    let client = c.client(0, c.tls(&c.certs, Some("client")), &rt);
    for i in 0..5 {
        let key = (0..)
            .map(|j| format!("k{i}-{j}"))
            .find(|k| caskade::cluster::partition_for(k.as_bytes(), PARTITIONS) == 0)
            .expect("a key of partition 0");
        rt.block_on(client.set(b(&key), b("v"), SetOptions::default()))
            .expect("write");
    }

    rt.block_on(async {
        let (controller_epoch, leader_node_epoch) = epochs(&c.zk, &c.specs[leader].id).await;
        let mut valid = c.repl(leader, Some((&c.certs, &forger))).await;
        let end = log_end(&mut valid).await;
        assert!(end >= 5, "partition 0 has the 5 writes, log end {end}");

        // No certificate, or one of another CA: no call gets through.
        let mut plain = c.repl(leader, None).await;
        let mut rogue = c.repl(leader, Some((&c.rogue, &forger))).await;
        for (name, r) in [("plaintext", &mut plain), ("rogue", &mut rogue)] {
            let notice = forged_notice(
                controller_epoch,
                leader_node_epoch,
                &forger,
                p0.leader_epoch + 5,
            );
            assert!(
                r.leader_and_isr(notice).await.is_err(),
                "{name} notice accepted"
            );
            assert!(
                fetch_as(r, &forger, p0.leader_epoch, 0).await.is_err(),
                "{name} fetch served"
            );
        }

        // A valid node that is not the controller: refused at the current
        // epoch (sender check) and at a forged one (ZooKeeper check).
        for epoch in [controller_epoch, controller_epoch + 1, u64::MAX] {
            let notice = forged_notice(epoch, leader_node_epoch, &forger, p0.leader_epoch + 5);
            let err = valid
                .leader_and_isr(notice)
                .await
                .expect_err("forged notice accepted");
            let reason = err
                .metadata()
                .get("caskade-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(reason, "STALE_CONTROLLER_EPOCH", "epoch {epoch}: {err:?}");
            let msg = err.message();
            if epoch == controller_epoch {
                assert!(
                    msg.contains(&format!(
                        "sent by node \"{forger}\", but node \"{controller}\""
                    )),
                    "{msg}"
                );
            } else {
                assert!(
                    msg.contains(&format!("notice claims controller epoch {epoch}")),
                    "{msg}"
                );
            }
        }
        // Nothing was truncated, and the leader still leads.
        assert_eq!(log_end(&mut valid).await, end);

        // A node fetches only as itself.
        let err = fetch_as(&mut valid, &other, p0.leader_epoch, end)
            .await
            .expect_err("fetch as another node served");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert_eq!(
            err.message(),
            format!("node \"{forger}\" may fetch only as itself, not as follower \"{other}\"")
        );
    });
    let after = c.partition(0).expect("partition 0");
    assert_eq!(
        (after.leader, after.leader_epoch),
        (p0.leader, p0.leader_epoch)
    );
    for i in 0..5 {
        let key = (0..)
            .map(|j| format!("k{i}-{j}"))
            .find(|k| caskade::cluster::partition_for(k.as_bytes(), PARTITIONS) == 0)
            .expect("a key of partition 0");
        assert_eq!(
            rt.block_on(client.get(b(&key))).expect("read"),
            Some(b("v"))
        );
    }
}

#[test]
fn without_tls_a_forged_controller_epoch_is_refused_and_does_not_lock_out_the_controller() {
    let _serial = serial();
    let mut c = TestCluster::start(ClusterOpts {
        partitions: PARTITIONS,
        ..ClusterOpts::default()
    });
    let rt = runtime();
    let controller = c.metadata(0).expect("metadata").controller;
    let controller = c.index(&controller);
    // The target: a node that is not the controller.
    let target = (0..3).find(|&i| i != controller).expect("another node");
    let target_id = c.specs[target].id.clone();
    let p0 = c.partition(0).expect("partition 0");
    let repl = c.specs[target].repl_addr.clone();
    rt.block_on(async {
        let (_, node_epoch) = epochs(&c.zk, &target_id).await;
        let ch = caskade::tls::endpoint(&repl, None)
            .expect("endpoint")
            .connect_lazy();
        let mut r = ReplicationClient::new(ch);
        let err = r
            .leader_and_isr(forged_notice(
                u64::MAX,
                node_epoch,
                &target_id,
                p0.leader_epoch + 5,
            ))
            .await
            .expect_err("forged notice accepted");
        assert!(
            err.message()
                .contains("notice claims controller epoch 18446744073709551615"),
            "{err:?}"
        );
    });
    // The real controller is still obeyed: stopping it moves its
    // leaderships away (its notices) and elects a new controller, whose
    // notices every node must accept for the survivors to agree on every
    // leader and take acks: all writes.
    c.stop_node(controller);
    c.wait_until(
        "the survivors agree on a running leader of every partition",
        |c| c.all_led(),
    );
    let client = c.client(&rt);
    for p in 0..PARTITIONS {
        let key = c.key_in(p, 0);
        rt.block_on(client.set(b(&key), b("1"), SetOptions::default()))
            .unwrap_or_else(|e| panic!("write to partition {p} after the failover: {e}"));
    }
}

/// A TLS connection to the RESP listener at `addr`, trusting the CA of
/// `certs`, without a client certificate: the handshake's outcome.
async fn resp_tls_connect(
    addr: &str,
    certs: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name").to_owned();
    connector.connect(name, tcp).await
}

/// Over TLS, a RESP client beyond `resp.maxclients` completes its TLS
/// handshake and reads Redis' refusal inside TLS, then the end of the
/// stream (it used to get the refusal in plaintext, which its TLS stack
/// saw as a corrupt handshake).
#[test]
fn resp_max_clients_over_tls_is_refused_inside_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    generate(
        &certs,
        &Plan {
            ca_name: "test CA".into(),
            nodes: ids(1),
            clients: vec![],
            hosts: vec![],
        },
    )
    .expect("certificates");
    let resp = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("server.yaml");
    let c = |f: &str| certs.join(f).display().to_string();
    std::fs::write(
        &config,
        format!(
            "node_id: node-1\nengine: memory\nresp:\n  listen: {resp}\n  maxclients: 1\n\
             tls:\n  cert: {}\n  key: {}\n  ca: {}\n",
            c("node-1.pem"),
            c("node-1.key"),
            c("ca.pem")
        ),
    )
    .expect("config");
    let _server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default()
            .arg("--config")
            .arg(config.to_str().expect("utf-8 path")),
    );
    let rt = runtime();
    rt.block_on(async {
        let mut first = resp_tls_connect(&resp, &certs).await.expect("first client");
        first
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 64];
        let n = first.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"+PONG\r\n");

        let second = tokio::time::timeout(Duration::from_secs(15), async {
            let mut s = resp_tls_connect(&resp, &certs).await?;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await?;
            Ok::<_, std::io::Error>(got)
        })
        .await
        .expect("the refusal comes in time");
        assert_eq!(
            String::from_utf8_lossy(&second.expect("a clean TLS refusal")),
            "-ERR max number of clients reached\r\n"
        );
        // The first client is still served.
        first
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let n = first.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"+PONG\r\n");
    });
}

/// Node ids of partition `p`'s ISR as its leader reports it, sorted.
fn isr(c: &TlsCluster, p: u32) -> Vec<String> {
    let mut isr = c.at_leader(p).map(|i| i.isr).unwrap_or_default();
    isr.sort();
    isr
}

/// A fourth node whose certificate (CN `node-4`) another CA signed starts
/// and registers in ZooKeeper, but cannot join: a reassignment of partition
/// 0 onto it adds it to the replicas and never to the ISR (the
/// controller's `LeaderAndIsr` to it fails at the TLS layer, and it cannot
/// fetch), the reassignment stays in progress, and the cluster keeps
/// serving `acks: all` writes with the exact ISR it had.
#[test]
fn a_node_with_a_certificate_of_another_ca_cannot_join() {
    let _serial = serial();
    let c = TlsCluster::start();
    let rt = runtime();
    let before = c.partition(0).expect("partition 0");
    let original = isr(&c, 0);
    assert_eq!(original, ids(3));

    // node-4: the rogue CA's certificate, trusting the cluster's CA.
    let s4 = spec(c._dir.path(), "node-4".into());
    let yaml = node_yaml(&s4, &c.rogue, &c.certs.join("ca.pem"), &c.zk, "");
    std::fs::write(&s4.config, yaml).expect("write node-4 config");
    let n4 = Server::start(
        &s4.data,
        ServerOpts::default()
            .listen(&s4.addr)
            .arg("--config")
            .arg(s4.config.to_str().expect("utf-8 path")),
    );
    c.wait_until("node-4 registered in ZooKeeper", |c| {
        c.metadata()
            .is_some_and(|m| m.nodes.iter().any(|n| n.id == "node-4"))
    });

    let target = vec![before.leader.clone(), "node-4".to_string()]
        .into_iter()
        .chain(
            before
                .replicas
                .iter()
                .filter(|r| **r != before.leader)
                .take(1)
                .cloned(),
        )
        .collect::<Vec<_>>();
    let admin = c.client(0, c.tls(&c.certs, Some("client")), &rt);
    rt.block_on(admin.reassign(&[(0, target)].into_iter().collect(), 0))
        .expect("reassignment accepted");
    c.wait_until("node-4 is a replica of partition 0", |c| {
        c.partition(0)
            .is_some_and(|i| i.replicas.iter().any(|r| r == "node-4"))
    });
    let controller = c.metadata().expect("metadata").controller;
    let ctl = c.index(&controller);
    c.wait_until("the controller's LeaderAndIsr to node-4 failed", |c| {
        c.servers[ctl]
            .log()
            .contains("leader_and_isr to node-4 (node epoch")
    });
    // Several replica_lag_ms periods: node-4 never catches up.
    std::thread::sleep(Duration::from_secs(5));
    let after = c.partition(0).expect("partition 0");
    assert_eq!(isr(&c, 0), original, "{after:?}");
    assert_eq!(after.leader, before.leader);
    let status = rt
        .block_on(admin.reassign_status())
        .expect("reassign status");
    assert!(status.in_progress, "{status:?}");
    assert_eq!(
        status
            .partitions
            .iter()
            .map(|t| t.partition)
            .collect::<Vec<_>>(),
        vec![0]
    );
    // The cluster serves acks: all writes with its three nodes.
    let key = (0..)
        .map(|j| format!("after-{j}"))
        .find(|k| caskade::cluster::partition_for(k.as_bytes(), PARTITIONS) == 0)
        .expect("a key of partition 0");
    rt.block_on(admin.set(b(&key), b("v"), SetOptions::default()))
        .expect("acks: all write");
    assert_eq!(rt.block_on(admin.get(b(&key))).expect("read"), Some(b("v")));
    assert_eq!(isr(&c, 0), original);
    drop(n4);
}

/// A raw gRPC client of node `i` over TLS (the cluster's client
/// certificate), without the caskade client's routing or retries.
fn kv_tls(
    c: &TlsCluster,
    i: usize,
) -> caskade::proto::kv_client::KvClient<tonic::transport::Channel> {
    let tls = caskade::tls::load_client(&c.tls(&c.certs, Some("client"))).expect("tls");
    let ch = caskade::tls::endpoint(&c.specs[i].addr, tls.as_ref())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    caskade::proto::kv_client::KvClient::new(ch)
}

/// `req` with `authorization: Basic user:password`.
fn as_user<T>(req: T, user: &str, password: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    let v = caskade::auth::basic(user, password.as_bytes());
    r.metadata_mut()
        .insert("authorization", v.parse().expect("header value"));
    r
}

/// `(code, caskade-reason, message)` of a status.
fn parts(s: &tonic::Status) -> (tonic::Code, String, String) {
    let reason = s
        .metadata()
        .get("caskade-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (s.code(), reason, s.message().to_string())
}

/// With users, a request sent to a node that does not lead its partition
/// is forwarded with the caller's credentials, and the leader checks the
/// caller again: a writer's write through a follower succeeds; a read-only
/// user's write is refused with the same PERMISSION_DENIED at the
/// follower and at the leader; and even a follower whose own config lets
/// that user write forwards it as that user, so the leader refuses it
/// (the hop grants nothing: it does not call as a node).
#[test]
fn forwarding_carries_the_callers_credentials_and_grants_nothing() {
    let _serial = serial();
    let rw = caskade::auth::hash_password(b"rw-pw").expect("hash");
    let ro = caskade::auth::hash_password(b"ro-pw").expect("hash");
    let users = |ro_perms: &str| {
        format!(
            "auth:\n  users:\n\
             \x20   - {{name: rw, password_hash: '{rw}', permissions: [read, write, admin]}}\n\
             \x20   - {{name: ro, password_hash: '{ro}', permissions: [{ro_perms}]}}\n"
        )
    };
    let mut c = TlsCluster::start_with(&users("read"), Some(("rw", "rw-pw")));
    let rt = runtime();
    let p0 = c.partition(0).expect("partition 0");
    let leader = c.index(&p0.leader);
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let key = (0..)
        .map(|j| format!("fwd-{j}"))
        .find(|k| caskade::cluster::partition_for(k.as_bytes(), PARTITIONS) == 0)
        .expect("a key of partition 0");
    let set = |v: &str| caskade::proto::SetRequest {
        key: key.as_bytes().to_vec().into(),
        value: v.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let get = || caskade::proto::GetRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let denied = (
        tonic::Code::PermissionDenied,
        "PERMISSION_DENIED".to_string(),
        "user 'ro' has no 'write' permission, which Set needs".to_string(),
    );
    rt.block_on(async {
        let (mut at_leader, mut at_follower) = (kv_tls(&c, leader), kv_tls(&c, follower));
        at_follower
            .set(as_user(set("v1"), "rw", "rw-pw"))
            .await
            .expect("a writer's write through a follower");
        let got = at_leader
            .get(as_user(get(), "ro", "ro-pw"))
            .await
            .expect("read at the leader")
            .into_inner();
        assert_eq!(got.value.as_deref(), Some(&b"v1"[..]));
        let at_l = at_leader
            .set(as_user(set("ro"), "ro", "ro-pw"))
            .await
            .expect_err("read-only write at the leader");
        let at_f = at_follower
            .set(as_user(set("ro"), "ro", "ro-pw"))
            .await
            .expect_err("read-only write through a follower");
        assert_eq!(parts(&at_l), denied);
        assert_eq!(parts(&at_f), denied);
    });

    // The follower now believes `ro` may write; the leader does not.
    let f = &c.specs[follower];
    let yaml = node_yaml(
        f,
        &c.certs,
        &c.certs.join("ca.pem"),
        &c.zk,
        &users("read, write"),
    );
    std::fs::write(&f.config, yaml).expect("rewrite config");
    c.servers[follower].stop();
    c.servers[follower] = Server::start(
        &f.data,
        ServerOpts::default()
            .listen(&f.addr)
            .arg("--config")
            .arg(f.config.to_str().expect("utf-8 path")),
    );
    c.wait_until("the follower is back in every ISR", |c| {
        (0..PARTITIONS).all(|p| c.at_leader(p).is_some_and(|i| i.isr.len() == 3))
    });
    assert_eq!(c.partition(0).expect("partition 0").leader, p0.leader);
    rt.block_on(async {
        let (mut at_leader, mut at_follower) = (kv_tls(&c, leader), kv_tls(&c, follower));
        let via = at_follower
            .set(as_user(set("escalated"), "ro", "ro-pw"))
            .await
            .expect_err("the leader refuses the forwarded write");
        assert_eq!(parts(&via), denied);
        let got = at_leader
            .get(as_user(get(), "rw", "rw-pw"))
            .await
            .expect("read at the leader")
            .into_inner();
        assert_eq!(got.value.as_deref(), Some(&b"v1"[..]), "nothing written");
    });
}
