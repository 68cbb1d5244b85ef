//! caskade: a distributed key-value store.
//!
//! The crate is layered; data flows downward only:
//!
//! - [`server`]: the gRPC service, connection limits, graceful shutdown.
//! - [`resp`]: the Redis-protocol listener (RESP2/RESP3) beside the gRPC
//!   API, over the same service.
//! - [`node`]: the partitions this process hosts and the routing of each
//!   request to the replica of the key's partition.
//! - [`cluster`]: who leads which partition ([`cluster::Coordinator`]); in
//!   standalone mode a local coordinator leads everything; the stable
//!   key -> partition hash.
//! - [`storage`]: the Bitcask engine, one instance per partition replica. It
//!   knows nothing about the network or ZooKeeper.
//! - [`client`]: the Rust client used by the CLI and the load generator.
//! - [`config`]: the YAML configuration with environment and flag overrides.
//! - [`error`]: the error type at the API edge, mapped to gRPC status codes.
//! - [`frames`]: the length-prefixed TCP connections node to node beside
//!   gRPC (forwards and fetches without HTTP/2).
//! - [`proto`]: the generated gRPC code.
//!
//! Replication is added as a `replication` layer between `node` and
//! `storage`, and a ZooKeeper coordinator beside the local one.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod frames;
pub mod node;
pub mod proto;
pub mod replication;
pub mod resp;
pub mod server;
pub mod storage;
pub mod tls;

pub use error::{Error, Result};
