//! Data files are private: every file a node or an engine creates is
//! `0600`, every directory `0700`, whatever the umask allows, and a data
//! directory left open to others is narrowed at startup (issue 13).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use caskade::config::Config;
use caskade::node::Node;
use caskade::storage::{Bitcask, Durability, Engine, ManualClock, Options, SetOptions};
use tempfile::TempDir;

const T0: u64 = 1_767_225_600_000;

/// Every path under `root` (itself included) whose mode is not the
/// expected one, as `path mode` lines.
fn wrong_modes(root: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            wrong.push(format!("{} {mode:04o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    wrong.sort();
    wrong
}

/// Files under `root`, counted, to show the walk saw what it should.
fn count_files(root: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { count_files(&p) } else { 1 };
    }
    n
}

fn opts() -> Options {
    let mut o = Options {
        fsync: Durability::Never,
        segment_bytes: 4096,
        ..Options::default()
    };
    o.limits.max_value_bytes = 1024;
    o.merge.dead_ratio = 0.0;
    o
}

#[test]
fn engine_files_are_private_under_a_permissive_umask() {
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    let root = TempDir::new().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let dir = root.path().join("a/b/engine");
    {
        let e = Bitcask::open_with_clock(&dir, opts(), clock.clone()).unwrap();
        for i in 0..400 {
            let v = Bytes::from(format!("value-{i:0>40}"));
            e.set(format!("k{}", i % 20).as_bytes(), v, SetOptions::default())
                .unwrap();
        }
        e.merge().unwrap();
        for i in 0..100 {
            e.set(
                format!("after{i}").as_bytes(),
                Bytes::from(format!("{i:0>64}")),
                SetOptions::default(),
            )
            .unwrap();
        }
        e.flush().unwrap();
    }
    // A replica-mode engine adds the commit point and epoch files, and a
    // truncation writes a copy of the kept prefix.
    let rdir = root.path().join("replica");
    {
        let e = Bitcask::open_replica(&rdir, opts(), clock.clone()).unwrap();
        e.set_epoch(1).unwrap();
        for i in 0..50 {
            e.set(
                format!("k{i}").as_bytes(),
                Bytes::from("v"),
                SetOptions::default(),
            )
            .unwrap();
        }
        e.truncate(25).unwrap();
        e.flush().unwrap();
    }
    let files = count_files(&dir);
    assert!(files >= 4, "segments, hints and LOCK were written: {files}");
    assert!(count_files(&rdir) >= 3, "segment, commit point, epochs");
    assert_eq!(wrong_modes(&root.path().join("a")), Vec::<String>::new());
    assert_eq!(wrong_modes(&rdir), Vec::<String>::new());
}

#[test]
fn node_data_directory_is_private_and_an_open_one_is_narrowed() {
    // SAFETY: as above.
    unsafe { libc::umask(0o022) };
    let root = TempDir::new().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = Config {
        data_dir: data.clone(),
        partitions: 4,
        ..Config::default()
    };
    let clock = Arc::new(ManualClock::new(T0));
    let node = Node::open_standalone(&config, "127.0.0.1:1".into(), clock).unwrap();
    drop(node);
    assert!(count_files(&data) >= 2, "LOCK and layout.yaml");
    assert_eq!(wrong_modes(&data), Vec::<String>::new());
}
