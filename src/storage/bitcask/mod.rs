//! The Bitcask engine (work in progress in this commit: options only).

mod options;

pub use options::{MergeOptions, Options};
