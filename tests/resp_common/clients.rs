//! Real Redis clients for the RESP tests: a venv with the Python `redis`
//! package (pinned, from PyPI) and `redis-benchmark` with its CSV output
//! checked line by line.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `redis` package version the Python tests run.
pub const REDIS_PY: &str = "5.2.1";

/// Serialises venv creation between the tests of one binary.
static VENV: Mutex<()> = Mutex::new(());

/// The venv's python, created under the target directory on first use
/// (`python3 -m venv`, then `pip install redis==REDIS_PY`); reused after.
/// A venv whose install did not finish has no marker and is made again.
pub fn python() -> PathBuf {
    let _one = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-redis-{REDIS_PY}"));
    let python = dir.join("bin").join("python");
    let marker = dir.join("installed");
    if marker.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let venv = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .expect("run python3 -m venv (scripts/ensure-deps.sh installs python3-venv)");
    assert!(
        venv.status.success(),
        "python3 -m venv failed (scripts/ensure-deps.sh installs python3-venv):\n{}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let pip = Command::new(dir.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("redis=={REDIS_PY}"),
        ])
        .output()
        .expect("run pip");
    assert!(
        pip.status.success(),
        "pip install redis=={REDIS_PY} failed:\n{}{}",
        String::from_utf8_lossy(&pip.stdout),
        String::from_utf8_lossy(&pip.stderr)
    );
    std::fs::write(&marker, REDIS_PY).unwrap();
    python
}

/// Runs tests/python/test_redis_client.py against `port` (`--cluster`
/// when `cluster`) and fails the test with its output unless every test
/// passed.
pub fn run_python_tests(port: u16, cluster: bool) {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_redis_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).args(["--port", &port.to_string()]);
    if cluster {
        cmd.arg("--cluster");
    }
    let out = run_bounded(cmd, Duration::from_secs(300));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python redis tests failed:\n{text}");
    // unittest's summary: every test ran and passed.
    assert!(text.contains("\nOK\n"), "{text}");
    println!("{text}");
}

/// Runs `cmd`, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = waiter.join();
            out.expect("wait")
        }
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// `redis-benchmark -t set,get,incr,mset -n requests --csv` against
/// `port`: asserts it exits 0, prints no error, and reports each of the
/// four tests with a positive rate. Returns the CSV.
pub fn benchmark(port: u16, requests: u32) -> String {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "set,get,incr,mset", "-n", &requests.to_string()])
        .args(["-c", "20", "-r", "1000", "--csv"]);
    let started = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(600));
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "redis-benchmark failed:\n{csv}\n{err}"
    );
    let lower = format!("{csv}{err}").to_ascii_lowercase();
    assert!(
        !lower.contains("err") && !lower.contains("fail"),
        "an error in redis-benchmark's output:\n{csv}\n{err}"
    );
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
             \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\""
        ),
        "{csv}"
    );
    let mut seen = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        assert_eq!(fields.len(), 8, "{line}");
        let rps: f64 = fields[1].parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(rps > 0.0, "{line}");
        seen.push(fields[0].to_string());
    }
    assert_eq!(seen, ["SET", "GET", "INCR", "MSET (10 keys)"], "{csv}");
    println!("redis-benchmark in {:?}:\n{csv}", started.elapsed());
    csv
}

/// The sum of the 1000 counters redis-benchmark's INCR test (`-r 1000`)
/// increments, read with one MGET over a blocking connection to `port`:
/// equal to the INCR requests when no increment was lost.
pub fn counter_sum(port: u16) -> i64 {
    use std::io::{BufRead, BufReader, Read, Write};
    let keys: Vec<String> = (0..1000).map(|i| format!("counter:{i:012}")).collect();
    let mut req = format!("*{}\r\n$4\r\nMGET\r\n", keys.len() + 1);
    for k in &keys {
        req.push_str(&format!("${}\r\n{k}\r\n", k.len()));
    }
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (&stream).write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(&stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, format!("*{}\r\n", keys.len()));
    let mut sum = 0;
    for _ in &keys {
        line.clear();
        r.read_line(&mut line).unwrap();
        let n: i64 = line[1..line.len() - 2].parse().unwrap();
        if n < 0 {
            continue;
        }
        let mut v = vec![0; n as usize + 2];
        r.read_exact(&mut v).unwrap();
        let v = String::from_utf8_lossy(&v[..n as usize]);
        sum += v.parse::<i64>().unwrap_or_else(|_| panic!("counter {v:?}"));
    }
    sum
}
