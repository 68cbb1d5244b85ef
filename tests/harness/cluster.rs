//! A real cluster for tests: a throwaway ZooKeeper ([`Zk`]; or a chroot
//! of the process's shared one, [`TestCluster::start_shared`]) and N
//! `caskade-server` processes on fixed free ports of 127.0.0.1, each with
//! its own config file and data directory under one temporary directory.
//! Nodes can be killed (SIGKILL), stopped (SIGSTOP/SIGCONT), restarted on
//! the same ports and data. Everything is killed on drop.
//!
//! With [`ClusterOpts::auth`] every node requires authentication (the
//! `auth:` section of docs/SECURITY.md in each node's config), and the
//! harness itself (metadata, leader and ISR waits, [`TestCluster::client`])
//! logs in as the user it names.
//!
//! One cluster at a time per test process ([`OneCluster`], held by every
//! [`TestCluster`] for its whole life): the test binaries group many files,
//! and two clusters side by side on a loaded machine miss elections'
//! timing, and a node restarted on its old port could find it taken by
//! the other cluster's probe.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use caskade::client::Client;
use caskade::config::ClientConfig;
use caskade::config::auth::ClientAuth;
use caskade::error::Error;
use caskade::proto::MetadataResponse;

use super::zk::Zk;
use super::{Server, ServerOpts, free_port};

/// Cluster settings a test may change.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of nodes.
    pub nodes: usize,
    /// Partitions.
    pub partitions: u32,
    /// Replication factor.
    pub replication_factor: u32,
    /// `min_insync`.
    pub min_insync: u32,
    /// ZooKeeper session timeout.
    pub session_timeout_ms: u64,
    /// `replica_lag_ms`.
    pub replica_lag_ms: u64,
    /// `unclean_leader_election`.
    pub unclean: bool,
    /// `preferred_leader_rebalance`.
    pub rebalance: bool,
    /// `storage.fsync`, as YAML.
    pub fsync: &'static str,
    /// `server.request_timeout_ms` (bounds acks waits).
    pub request_timeout_ms: u64,
    /// Extra environment of every node (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// `cluster.initial_nodes`: the controller creates the partitions once
    /// this many nodes are live (0: `replication_factor`).
    pub initial_nodes: u32,
    /// Users every node requires, and the one the harness logs in as
    /// (`None`: authentication off, as before).
    pub auth: Option<ClusterAuth>,
}

/// The users of an authenticating cluster ([`ClusterOpts::auth`]).
#[derive(Clone, Debug)]
pub struct ClusterAuth {
    /// The `auth:` section of every node's config, as YAML.
    pub yaml: String,
    /// The user the harness reads metadata as, and [`TestCluster::client`]
    /// calls as.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl ClusterAuth {
    /// Every node requires `users` (name, password, permissions such as
    /// `["read", "write"]`; passwords hashed here with argon2, as
    /// `caskade-cli hash-password` does), plus `extra` appended to the
    /// `auth:` section (e.g. `"  max_failed_logins: 0\n"`); the harness
    /// logs in as `harness_user`, which must be one of them.
    pub fn users(users: &[(&str, &str, &[&str])], harness_user: &str, extra: &str) -> ClusterAuth {
        let mut yaml = String::from("auth:\n  users:\n");
        for (name, password, permissions) in users {
            let hash = caskade::auth::hash_password(password.as_bytes()).expect("hash a password");
            yaml.push_str(&format!(
                "    - {{name: {name}, password_hash: '{hash}', permissions: [{}]}}\n",
                permissions.join(", ")
            ));
        }
        yaml.push_str(extra);
        let password = users
            .iter()
            .find(|(n, _, _)| *n == harness_user)
            .unwrap_or_else(|| panic!("the harness user {harness_user} is not among the users"))
            .1
            .to_string();
        ClusterAuth {
            yaml,
            user: harness_user.to_string(),
            password,
        }
    }
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            nodes: 3,
            partitions: 4,
            replication_factor: 3,
            min_insync: 2,
            session_timeout_ms: 2000,
            replica_lag_ms: 1500,
            unclean: false,
            rebalance: false,
            fsync: "never",
            request_timeout_ms: 5000,
            env: Vec::new(),
            initial_nodes: 0,
            auth: None,
        }
    }
}

/// One node's fixed identity.
pub struct NodeSpec {
    /// `node-<i+1>`.
    pub id: String,
    /// Client address.
    pub addr: String,
    /// Replication (node-to-node) address.
    pub repl_addr: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its data directory.
    pub data: PathBuf,
}

/// A running test cluster.
pub struct TestCluster {
    /// Settings.
    pub opts: ClusterOpts,
    /// Nodes by index.
    pub specs: Vec<NodeSpec>,
    /// Running processes by index.
    pub servers: Vec<Option<Server>>,
    /// ZooKeeper (dropped after the servers).
    pub zk: Zk,
    /// Group id each node runs as (`None`: the test's own).
    pub gids: Vec<Option<u32>>,
    /// Guards a test hands over to live as long as the cluster (e.g. a
    /// filesystem mounted on a node's data directory): dropped after every
    /// node is killed, before the files are removed.
    pub guards: Vec<Box<dyn std::any::Any + Send>>,
    /// Holds every file.
    _dir: tempfile::TempDir,
    /// This process's one cluster at a time; released last.
    _one: OneCluster,
}

/// Whether a cluster runs in this process, and how many have taken it.
static BUSY: (std::sync::Mutex<(bool, u64)>, std::sync::Condvar) =
    (std::sync::Mutex::new((false, 0)), std::sync::Condvar::new());

/// The right to run this process's one test cluster (module docs), until
/// dropped. Tests that load the machine as much as a cluster (the
/// controller simulation) take it too.
pub struct OneCluster(());

impl OneCluster {
    /// Longest one holder may keep the others waiting (a `make torture`
    /// soak scenario runs `TORTURE_SECS` plus set-up).
    const HOLD: Duration = Duration::from_secs(1800);

    /// Waits until no other cluster runs in this process. Panics when one
    /// holder keeps it past [`OneCluster::HOLD`] (e.g. a test starting a
    /// second cluster while its first is alive).
    pub fn take() -> OneCluster {
        let mut busy = BUSY.0.lock().unwrap_or_else(|e| e.into_inner());
        let (mut holder, mut since) = (busy.1, Instant::now());
        while busy.0 {
            if busy.1 != holder {
                (holder, since) = (busy.1, Instant::now());
            }
            let left = Self::HOLD.saturating_sub(since.elapsed());
            assert!(
                !left.is_zero(),
                "another test cluster of this process ran for {:?}",
                Self::HOLD
            );
            busy = BUSY
                .1
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy = (true, busy.1 + 1);
        OneCluster(())
    }
}

impl Drop for OneCluster {
    fn drop(&mut self) {
        BUSY.0.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
        BUSY.1.notify_all();
    }
}

impl TestCluster {
    /// Starts ZooKeeper and every node, and waits until each partition has
    /// a leader known to every node.
    pub fn start(opts: ClusterOpts) -> TestCluster {
        TestCluster::start_on(opts, Zk::standalone())
    }

    /// As [`TestCluster::start`], on a fresh chroot of the process's shared
    /// ZooKeeper ([`Zk::shared`]) instead of a server of its own: for tests
    /// that never kill, pause or restart ZooKeeper. Saves a ZooKeeper start
    /// and kill (~3.5 s on a loaded 2-core machine).
    pub fn start_shared(opts: ClusterOpts) -> TestCluster {
        TestCluster::start_on(opts, Zk::shared())
    }

    /// As [`TestCluster::start`], on a given ZooKeeper (e.g. an ensemble).
    pub fn start_on(opts: ClusterOpts, zk: Zk) -> TestCluster {
        let gids = vec![None; opts.nodes];
        TestCluster::start_as(opts, zk, gids)
    }

    /// As [`TestCluster::start_on`], node `i` running as group `gids[i]`.
    pub fn start_as(opts: ClusterOpts, zk: Zk, gids: Vec<Option<u32>>) -> TestCluster {
        let one = OneCluster::take();
        let dir = tempfile::tempdir().expect("temp dir");
        let specs = (0..opts.nodes)
            .map(|i| {
                let id = format!("node-{}", i + 1);
                let addr = format!("127.0.0.1:{}", free_port());
                let repl = format!("127.0.0.1:{}", free_port());
                let data = dir.path().join(&id);
                let config = dir.path().join(format!("{id}.yaml"));
                let yaml = format!(
                    "node_id: {id}\nlisten: {addr}\ndata_dir: {data}\npartitions: {p}\n\
                     default_acks: all\nserver:\n  request_timeout_ms: {rt}\n\
                     storage:\n  fsync: {fsync}\ncluster:\n  name: test\n  zk_connect: {zk}\n\
                     \x20 session_timeout_ms: {st}\n  replication_listen: {repl}\n\
                     \x20 replication_factor: {rf}\n  min_insync: {mi}\n  replica_lag_ms: {lag}\n\
                     \x20 unclean_leader_election: {unclean}\n  preferred_leader_rebalance: {rb}\n\
                     \x20 fetch_max_wait_ms: 200\n  initial_nodes: {initial}\n",
                    data = data.display(),
                    p = opts.partitions,
                    rt = opts.request_timeout_ms,
                    fsync = opts.fsync,
                    zk = zk.connect_string(),
                    st = opts.session_timeout_ms,
                    rf = opts.replication_factor,
                    mi = opts.min_insync,
                    lag = opts.replica_lag_ms,
                    unclean = opts.unclean,
                    rb = opts.rebalance,
                    initial = opts.initial_nodes,
                );
                let yaml = match &opts.auth {
                    Some(a) => format!("{yaml}{}", a.yaml),
                    None => yaml,
                };
                std::fs::write(&config, yaml).expect("write node config");
                NodeSpec {
                    id,
                    addr,
                    repl_addr: repl,
                    config,
                    data,
                }
            })
            .collect::<Vec<_>>();
        let mut cluster = TestCluster {
            servers: specs.iter().map(|_| None).collect(),
            opts,
            specs,
            zk,
            gids,
            guards: Vec::new(),
            _dir: dir,
            _one: one,
        };
        for i in 0..cluster.specs.len() {
            cluster.start_node(i);
        }
        cluster.wait_until("every partition has a leader with a full ISR", |c| {
            c.all_led() && c.full_isr()
        });
        cluster
    }

    /// Starts node `i` (again), on its ports and data.
    pub fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]);
    }

    /// Starts node `i` (again) with `env` added to the cluster's.
    pub fn start_node_with(&mut self, i: usize, env: &[(&str, &str)]) {
        let spec = &self.specs[i];
        let mut opts = ServerOpts::default()
            .listen(&spec.addr)
            .arg("--config")
            .arg(spec.config.to_str().expect("utf-8 path"));
        for (k, v) in &self.opts.env {
            opts = opts.env(k, v);
        }
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        opts.gid = self.gids.get(i).copied().flatten();
        let server = Server::start(&spec.data, opts);
        self.servers[i] = Some(server);
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            s.kill9();
        }
    }

    /// Stops node `i` cleanly (SIGTERM: it checkpoints and fsyncs), bounded.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            // SAFETY: kill(2) on a child we started; a paused node must run
            // to handle SIGTERM.
            unsafe {
                libc::kill(s.pid(), libc::SIGCONT);
            }
            s.stop();
        }
    }

    /// The process id of node `i`, when it runs.
    pub fn pid(&self, i: usize) -> Option<i32> {
        self.servers[i].as_ref().map(|s| s.pid())
    }

    /// Sends `signal` to node `i` without waiting.
    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.servers[i].as_ref().expect("node running").pid();
        // SAFETY: plain kill(2) on a child we started.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        self.servers[i]
            .as_ref()
            .map(|s| s.log())
            .unwrap_or_default()
    }

    /// The RESP listener address node `i` logged at startup.
    pub fn resp_addr(&self, i: usize) -> String {
        let log = self.log(i);
        let addr = log
            .lines()
            .find_map(|l| l.split("RESP (Redis protocol) on ").nth(1))
            .unwrap_or_else(|| panic!("no RESP address in the log:\n{log}"));
        addr.trim().to_string()
    }

    /// Index of node `id`.
    pub fn index(&self, id: &str) -> usize {
        self.specs
            .iter()
            .position(|s| s.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// A client seeded with every node, bound to `rt` (logged in as the
    /// harness user when the cluster authenticates).
    pub fn client(&self, rt: &tokio::runtime::Runtime) -> Client {
        let _in = rt.enter();
        Client::new(&self.client_config(self.specs.iter().map(|s| s.addr.clone()).collect(), 8000))
            .expect("client")
    }

    /// A client of node `i` alone (it forwards what it does not lead),
    /// bound to `rt` (logged in as the harness user when the cluster
    /// authenticates).
    pub fn client_of(&self, i: usize, rt: &tokio::runtime::Runtime) -> Client {
        let _in = rt.enter();
        Client::new(&self.client_config(vec![self.specs[i].addr.clone()], 8000)).expect("client")
    }

    /// A client config for `addrs` with the harness user's credentials
    /// ([`ClusterOpts::auth`]), if any.
    pub fn client_config(&self, addrs: Vec<String>, timeout_ms: u64) -> ClientConfig {
        let auth = self
            .opts
            .auth
            .as_ref()
            .map(|a| ClientAuth {
                user: a.user.clone(),
                password: a.password.clone(),
            })
            .unwrap_or_default();
        ClientConfig {
            addrs,
            timeout_ms,
            auth,
            ..ClientConfig::default()
        }
    }

    /// Metadata as node `i` sees it, `None` when it does not answer (read
    /// as the harness user when the cluster authenticates).
    pub fn metadata(&self, i: usize) -> Option<MetadataResponse> {
        self.servers[i].as_ref()?;
        let config = self.client_config(vec![self.specs[i].addr.clone()], 1000);
        let m = super::runtime().block_on(async move {
            let c = Client::new(&config).ok()?;
            Some(c.metadata().await)
        })?;
        match m {
            Ok(m) => Some(m),
            // Not a node still starting: the harness's credentials are wrong.
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                panic!(
                    "{} refused the harness's metadata request: {e}",
                    self.specs[i].id
                )
            }
            Err(_) => None,
        }
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.specs.len())
            .filter(|&i| self.servers[i].is_some())
            .collect()
    }

    /// Whether every running node knows a leader for every partition and
    /// they agree, and that leader is running.
    pub fn all_led(&self) -> bool {
        (0..self.opts.partitions).all(|p| self.leader(p).is_some())
    }

    /// Whether every partition's ISR holds all its replicas (per its leader).
    pub fn full_isr(&self) -> bool {
        (0..self.opts.partitions).all(|p| {
            self.leader(p).is_some_and(|l| {
                self.metadata(l).is_some_and(|m| {
                    let part = &m.partitions[p as usize];
                    part.isr.len() == part.replicas.len() && !part.replicas.is_empty()
                })
            })
        })
    }

    /// The index of the running node every running node names as leader of
    /// `p`, when they agree and it is running.
    pub fn leader(&self, p: u32) -> Option<usize> {
        let mut seen: Option<String> = None;
        // Nodes that do not answer (paused, starting) have no say.
        for i in self.running() {
            let Some(m) = self.metadata(i) else {
                continue;
            };
            let leader = m.partitions.get(p as usize)?.leader.clone();
            if leader.is_empty() {
                return None;
            }
            match &seen {
                Some(s) if *s != leader => return None,
                _ => seen = Some(leader),
            }
        }
        let i = self.index(&seen?);
        self.servers[i].is_some().then_some(i)
    }

    /// Partition `p` as its leader reports it.
    pub fn partition(&self, p: u32) -> Option<caskade::proto::PartitionInfo> {
        let l = self.leader(p)?;
        self.metadata(l)?.partitions.get(p as usize).cloned()
    }

    /// Polls `cond` every 100 ms for up to 30 s; panics naming `what` and
    /// showing the logs when it never holds.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&TestCluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: String = (0..self.specs.len())
            .map(|i| format!("--- {} ---\n{}\n", self.specs[i].id, tail(&self.log(i), 40)))
            .collect();
        panic!("timed out waiting until {what}\n{logs}");
    }

    /// A key of partition `p`, distinct per `n`.
    pub fn key_in(&self, p: u32, n: usize) -> String {
        (0..)
            .map(|i| format!("k{p}-{n}-{i}"))
            .find(|k| caskade::cluster::partition_for(k.as_bytes(), self.opts.partitions) == p)
            .expect("some key hashes to p")
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut s) = s.take() {
                s.kill9();
            }
        }
    }
}
