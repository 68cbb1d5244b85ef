//! Generated protobuf and gRPC code, built by `build.rs` with protox and
//! tonic-prost-build: `proto/kv.proto` (package `caskade.v1`, the client
//! API) at the top level, `proto/replication.proto` (node to node) in
//! [`replication`]. `bytes` fields are `bytes::Bytes`, so keys, values and
//! fetched records are never copied out of the message buffer.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("caskade.v1");

/// Node-to-node API: log fetch, epoch lookups, controller notices.
pub mod replication {
    tonic::include_proto!("caskade.replication.v1");
}
