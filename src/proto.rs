//! Generated protobuf and gRPC code for `proto/kv.proto` (package
//! `caskade.v1`), built by `build.rs` with protox and tonic-prost-build.
//! `bytes` fields are `bytes::Bytes`, so keys and values are never copied
//! out of the request buffer.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("caskade.v1");
