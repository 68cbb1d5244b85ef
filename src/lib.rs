//! caskade: a distributed key-value store.
//!
//! The crate is layered; data flows downward only:
//!
//! - [`server`]: gRPC services and request routing (client -> partition leader).
//! - [`storage`]: the Bitcask engine, one instance per partition replica. It
//!   knows nothing about the network or ZooKeeper.
//! - [`config`]: the YAML configuration with environment and flag overrides.
//! - [`error`]: the error type at the API edge, mapped to gRPC status codes.
//!
//! Replication and cluster coordination are added as `replication` and
//! `cluster` layers on top of the same storage contract.

pub mod error;
pub mod storage;

pub use error::{Error, Result};
