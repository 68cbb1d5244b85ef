//! `make torture`: Jepsen-style tests of a real 3-node cluster on a real
//! ZooKeeper, with concurrent clients recording a history, a seeded
//! nemesis, and checkers (see docs/RELIABILITY.md).
//!
//! - `torture/history.rs`: the operation history (JSON lines).
//! - `torture/linear.rs`: per-key linearizability (Wing-Gong-Lowe).
//! - `torture/checks.rs`: lost acknowledged writes, visible failed writes,
//!   high watermark monotonicity, replica logs identical.
//! - `torture/linear_tests.rs`: the checkers' own tests.

mod harness;

#[path = "torture/checks.rs"]
mod checks;
#[path = "torture/history.rs"]
mod history;
#[path = "torture/linear.rs"]
mod linear;
#[path = "torture/linear_tests.rs"]
#[cfg(test)]
mod linear_tests;
