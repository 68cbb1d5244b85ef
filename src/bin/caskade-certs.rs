//! `caskade-certs`: creates a local CA and certificates for a development
//! cluster (`make certs`): one per node (subject CN = node id, usable as
//! TLS server and client) and one per client. See docs/SECURITY.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "caskade-certs",
    version,
    about = "Creates a local CA and node/client certificates"
)]
struct Args {
    /// Output directory (created if missing; files in it are replaced).
    #[arg(long, default_value = "conf/certs")]
    out: PathBuf,
    /// Node ids, comma-separated (one certificate each, CN = node id).
    #[arg(long, value_delimiter = ',', default_value = "node-1,node-2,node-3")]
    nodes: Vec<String>,
    /// Client names, comma-separated (one client certificate each).
    #[arg(long, value_delimiter = ',', default_value = "client")]
    clients: Vec<String>,
    /// Extra host names or IP addresses every node certificate names
    /// (besides the node id, localhost and 127.0.0.1).
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = caskade::tls::certs::Plan {
        ca_name: "caskade local CA".into(),
        nodes: args.nodes,
        clients: args.clients,
        hosts: args.hosts,
    };
    match caskade::tls::certs::generate(&args.out, &plan) {
        Ok(()) => {
            println!(
                "CA, {} node and {} client certificates in {}",
                plan.nodes.len(),
                plan.clients.len(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("caskade-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
