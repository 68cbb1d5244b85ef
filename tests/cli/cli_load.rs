//! `caskade-cli load` and `caskade-cli verify` against a real server: the
//! record holds exactly the acknowledged writes, verify passes on intact
//! data and names every missing or wrong key otherwise, failed writes are
//! never recorded, and every error has its exact line and exit code.

use crate::harness;

use harness::{Server, ServerOpts, cli_at, free_port};

#[test]
fn load_then_verify_names_missing_and_wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let a = server.addr.as_str();
    let record = dir.path().join("acked.tsv");
    let rec = record.to_str().unwrap();

    let (code, out, err) = cli_at(
        a,
        &[
            "load", "--keys", "200", "--prefix", "demo:", "--acks", "all", "--record", rec,
        ],
    );
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "wrote 200 of 200 keys (acks all)\n");
    let text = std::fs::read_to_string(&record).unwrap();
    let mut keys: Vec<&str> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            assert!(v.starts_with(&format!("{k}#")), "{l}");
            k
        })
        .collect();
    keys.sort_unstable();
    let expected: Vec<String> = (0..200).map(|i| format!("demo:{i:08}")).collect();
    assert_eq!(keys, expected);

    let (code, out, err) = cli_at(a, &["verify", "--record", rec]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        "verified 200 keys: 200 ok, 0 missing, 0 wrong, 0 unreadable\n"
    );

    // One writer: the record is in key order, so are the problem lines.
    let (code, out, _) = cli_at(
        a,
        &[
            "load",
            "-n",
            "5",
            "--prefix",
            "k",
            "--clients",
            "1",
            "--record",
            rec,
        ],
    );
    assert_eq!((code, out.as_str()), (0, "wrote 5 of 5 keys (acks all)\n"));
    let value3 = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .split_once('\t')
        .unwrap()
        .1
        .to_string();
    assert_eq!(cli_at(a, &["del", "k00000001"]).1, "1\n");
    assert_eq!(cli_at(a, &["set", "k00000003", "tampered"]).1, "OK\n");
    let (code, out, err) = cli_at(a, &["verify", "--record", rec, "--clients", "3"]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!(
            "missing: k00000001\n\
             wrong value: k00000003: expected {value3}, got tampered\n\
             verified 5 keys: 3 ok, 1 missing, 1 wrong, 0 unreadable\n"
        )
    );
    assert_eq!(
        err,
        "(error) 2 of 5 acknowledged writes could not be verified\n"
    );
    // At most --limit problem lines; the summary still counts them all.
    assert_eq!(cli_at(a, &["del", "k00000004"]).1, "1\n");
    let (code, out, _) = cli_at(a, &["verify", "--record", rec, "--limit", "1"]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "missing: k00000001\n\
         ... and 2 more (--limit 0 shows all)\n\
         verified 5 keys: 2 ok, 2 missing, 1 wrong, 0 unreadable\n"
    );
}

#[test]
fn failed_writes_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        ServerOpts::default().env("CASKADE_STORAGE_LIMITS_MAX_KEY_BYTES", "16"),
    );
    let a = server.addr.as_str();
    let record = dir.path().join("acked.tsv");
    let rec = record.to_str().unwrap();
    // 9-byte prefix + 8 digits = 17 bytes: every write is refused.
    let args = ["load", "-n", "5", "--prefix", "prefix-9:", "--record", rec];
    let (code, out, err) = cli_at(a, &args);
    assert_eq!(code, 1);
    assert_eq!(out, "wrote 0 of 5 keys (acks all)\n");
    assert_eq!(
        err,
        "(error) 5 of 5 writes failed; first: key is 17 bytes, the limit is 16\n"
    );
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "");
    let mut allowed = args.to_vec();
    allowed.push("--allow-errors");
    let (code, out, err) = cli_at(a, &allowed);
    assert_eq!(code, 0);
    assert_eq!(out, "wrote 0 of 5 keys (acks all)\n");
    assert_eq!(
        err,
        "(error) 5 of 5 writes failed; first: key is 17 bytes, the limit is 16\n"
    );
    // An empty record verifies trivially.
    let (code, out, _) = cli_at(a, &["verify", "--record", rec]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "verified 0 keys: 0 ok, 0 missing, 0 wrong, 0 unreadable\n"
        )
    );
}

#[test]
fn load_and_verify_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let refused = format!("(error) could not connect to caskade at {dead}: connection refused\n");
    let record = dir.path().join("acked.tsv");
    let rec = record.to_str().unwrap();

    let (code, out, err) = cli_at(&dead, &["load", "-n", "3", "--record", rec]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", refused.as_str())
    );

    std::fs::write(&record, "k\tv\n").unwrap();
    let (code, out, err) = cli_at(&dead, &["verify", "--record", rec]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", refused.as_str())
    );

    std::fs::write(&record, "k\tv\nbroken\n").unwrap();
    let (code, _, err) = cli_at(&dead, &["verify", "--record", rec]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!("caskade-cli verify: {rec} line 2: expected key<TAB>value, got \"broken\"\n")
    );

    let (code, _, err) = cli_at(&dead, &["load", "--prefix", "a\tb"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "caskade-cli load: --prefix must not contain a tab or a newline\n"
    );
    let (code, _, err) = cli_at(&dead, &["verify"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: the following required arguments were not provided:"),
        "{err}"
    );
}
