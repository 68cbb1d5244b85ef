//! Threads of the server process (`runtime:` in the server config): tokio's
//! worker threads, which run every connection and request, and its blocking
//! pool, which runs the engine calls that may block (a write that must read
//! a value from disk, status, flush, opening partitions).
//!
//! Each thread that may be woken for a request costs a kernel wake-up and a
//! context switch; on a small machine those dominate a request that the
//! engine answers from memory (docs/BENCHMARKS.md, "caskade vs Redis over
//! RESP", "Where the time goes"). So the defaults are one worker per core
//! and a bounded blocking pool.
//!
//! Invariants: `blocking_threads` is at least 1 (refused in
//! src/config/validate.rs otherwise); `worker_threads: 0` means one per
//! core as the OS reports it (`available_parallelism`), at least 1.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Thread counts of the server's tokio runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeOptions {
    /// tokio worker threads. 0 = one per core. Default 0.
    pub worker_threads: usize,
    /// Most threads of tokio's blocking pool (they start on demand and
    /// stop after 10 s idle). Default 64 (tokio's own default is 512).
    pub blocking_threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            worker_threads: 0,
            blocking_threads: 64,
        }
    }
}

impl RuntimeOptions {
    /// Worker threads to start: `worker_threads`, or one per core.
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Refuses a blocking pool of 0 threads (nothing that blocks could run).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.blocking_threads == 0 {
            return Err(ConfigError::Invalid(
                "runtime.blocking_threads must be at least 1, got 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RuntimeOptions;

    #[test]
    fn defaults_and_validation() {
        let d = RuntimeOptions::default();
        assert_eq!((d.worker_threads, d.blocking_threads), (0, 64));
        assert_eq!(
            d.workers(),
            std::thread::available_parallelism().unwrap().get()
        );
        let r = RuntimeOptions {
            worker_threads: 3,
            blocking_threads: 0,
        };
        assert_eq!(r.workers(), 3);
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "invalid configuration: runtime.blocking_threads must be at least 1, got 0"
        );
    }
}
