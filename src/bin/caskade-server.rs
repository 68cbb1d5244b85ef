//! `caskade-server`: loads the configuration (defaults -> YAML -> `CASKADE_*`
//! environment -> flags), opens the node, serves until SIGINT or SIGTERM,
//! then (in a cluster) moves its leaderships away (controlled shutdown),
//! drains, flushes and exits 0. Any startup failure prints one line
//! `caskade-server: <reason>` on stderr and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use caskade::config::Config;
use caskade::node::Node;
use caskade::storage::SystemClock;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// jemalloc instead of glibc's malloc (as Redis): per-thread caches and
/// size-class arenas; less CPU per request on the replicated writes and
/// standalone SET/GET, the same resident memory (docs/BENCHMARKS.md,
/// "Run 13"). The value cache's charge models glibc (docs/STORAGE.md).
/// Behind the default feature `jemalloc`; `make test` builds without it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command-line flags; they override the file and the environment.
#[derive(Parser, Debug)]
#[command(name = "caskade-server", version, about = "Runs one caskade node")]
struct Args {
    /// YAML configuration file (see conf/standalone/server.yaml).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Listen address host:port (overrides `listen`); port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Log filter, e.g. `info` or `caskade=debug` (overrides `log_level`).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("caskade-server: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let (mut config, warnings) =
        Config::load(args.config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    init_logging(&config.log_level)?;
    // Test builds only: failpoints named in `FAILPOINTS` (the `fail` crate's
    // syntax, e.g. `replication::leader_and_isr=3*return`) are armed for
    // the life of the process.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    for w in warnings {
        tracing::warn!("{w}");
    }
    // TLS material is checked before anything binds; this node's calls to
    // other nodes present its certificate.
    if let Some(tls) =
        caskade::tls::NodeTls::load(&config.tls, &config.node_id).map_err(|e| e.to_string())?
    {
        caskade::tls::set_node_client(tls.node_client());
    }
    caskade::server::raise_open_files_limit(config.partitions);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.workers())
        .max_blocking_threads(config.runtime.blocking_threads)
        .enable_all()
        .thread_name("caskade-worker")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), String> {
    // Signals first, so a SIGTERM during startup is not lost.
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listen address: {e}"))?;
    // Before the node opens, so a bad `metrics.listen` fails the start.
    let metrics_listener = match config.metrics.listen.as_str() {
        "" => None,
        addr => Some(
            caskade::server::prometheus::bind(addr)
                .await
                .map_err(|e| e.message())?,
        ),
    };
    let resp_listener = caskade::resp::bind(&config)
        .await
        .map_err(|e| e.message())?;
    // Protected mode (src/auth.rs): before the node opens, one line and exit 1.
    let mut bound = vec![("client", local)];
    if let Some(l) = &resp_listener {
        let addr = l
            .local_addr()
            .map_err(|e| format!("cannot read the RESP address: {e}"))?;
        bound.push(("RESP", addr));
    }
    caskade::auth::check_protected_mode(&config.auth, &bound)?;
    let advertise = if config.advertise.is_empty() {
        local.to_string()
    } else {
        config.advertise.clone()
    };
    let clock = Arc::new(SystemClock);
    let (node, replication, zk) = if config.cluster.is_some() {
        let started = caskade::server::cluster::start(&config, advertise, clock)
            .await
            .map_err(|e| e.message())?;
        let replication = Some((
            started.replication_listener,
            started.manager.clone(),
            started.gate,
        ));
        (
            started.node,
            replication,
            Some((started.zk, started.manager)),
        )
    } else {
        let config = config.clone();
        let node =
            tokio::task::spawn_blocking(move || Node::open_standalone(&config, advertise, clock))
                .await
                .map_err(|e| format!("startup failed: {e}"))?
                .map_err(|e| e.message())?;
        (Arc::new(node), None, None)
    };
    tracing::info!(
        listen = %local,
        data_dir = %config.data_dir.display(),
        partitions = config.partitions,
        engine = ?config.engine,
        fsync = ?config.storage.fsync,
        mode = node.mode(),
        "caskade-server ready"
    );
    let metrics =
        caskade::server::metrics::Metrics::new(node.clone(), zk.as_ref().map(|(zk, _)| zk.clone()));
    if let Some(l) = metrics_listener {
        let addr = l
            .local_addr()
            .map_err(|e| format!("cannot read the metrics address: {e}"))?;
        metrics.set_endpoint(addr.to_string());
        tracing::info!("metrics on http://{addr}/metrics");
        // Tests wait for this line (before the next one) when metrics are on.
        println!("metrics on {addr}");
        let (metrics, limits) = (metrics.clone(), config.limits.clone());
        tokio::spawn(async move { caskade::server::prometheus::serve(l, metrics, &limits).await });
    }
    // The RESP listener (when on) stops with the gRPC server: after the
    // signal and the controlled shutdown, before storage is flushed.
    let resp_stop = tokio::sync::watch::Sender::new(false);
    let mut resp_task = None;
    if let Some(l) = resp_listener {
        let addr = l
            .local_addr()
            .map_err(|e| format!("cannot read the RESP address: {e}"))?;
        tracing::info!("RESP (Redis protocol) on {addr}");
        // Tests wait for this line (before the next one) when RESP is on.
        println!("resp on {addr}");
        let (node, config, metrics) = (node.clone(), config.clone(), metrics.clone());
        let mut stopped = resp_stop.subscribe();
        resp_task = Some(tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = caskade::resp::serve(l, node, &config, metrics, stop).await {
                tracing::error!("RESP listener failed: {e}");
            }
        }));
    }
    // Tests and scripts wait for this exact line on stdout.
    println!("listening on {local}");

    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = sigint.recv() => tracing::info!("SIGINT received"),
        }
        // Controlled shutdown first: the controller moves every leadership
        // away while this node still serves (its clients get NOT_LEADER and
        // follow), then leaving ZooKeeper drops it from every ISR at once.
        if let Some((zk, manager)) = zk {
            caskade::server::cluster::controlled_shutdown(
                &zk,
                &manager,
                caskade::server::cluster::CONTROLLED_SHUTDOWN_TIMEOUT,
            )
            .await;
            zk.shutdown().await;
        }
        resp_stop.send_replace(true);
        if let Some(task) = resp_task {
            let _ = task.await;
        }
    };
    caskade::server::run(listener, node, &config, replication, metrics, shutdown)
        .await
        .map_err(|e| e.to_string())
}

fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("invalid log level '{filter}': {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}
