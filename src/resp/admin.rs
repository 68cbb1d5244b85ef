//! Connection and server commands: PING, ECHO, QUIT, RESET, SELECT,
//! HELLO, CLIENT, COMMAND, CONFIG, INFO, DBSIZE, WAIT; and the answers to
//! unknown commands and wrong arities. They run one at a time, in order,
//! with the connection's state.
//!
//! Invariants:
//! - `INFO` and `DBSIZE` report figures read now from the node
//!   ([`crate::server::metrics::Metrics::collect`], [`Node::status`]), never
//!   invented ones; what caskade does not track is documented as such in
//!   docs/API.md;
//! - `WAIT` answers from the in-sync replica sets of the partitions this
//!   connection wrote to (every partition when it wrote nothing): a record
//!   acknowledged under `acks: all` is on every member of its partition's
//!   ISR, so the smallest ISR, less the leader, is the number of replicas
//!   holding all of this connection's writes. A partition this node does
//!   not host is known here by its leader only, not its ISR: it counts
//!   `min_insync - 1` under `acks: all` (the leader acknowledges no such
//!   write with fewer in sync), never 0 for a write that is replicated,
//!   so `WAIT n 0` cannot wait forever for a count it already has.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Shared;
use super::commands::{self, arity_error, not_integer, refusal};
use super::connection::Client;
use super::parse::parse_i64;
use super::reply::Reply;
use super::table::{self, COMMANDS};
use crate::proto;
use crate::proto::kv_server::Kv;
use crate::storage::Durability;

/// The Redis version whose commands and answers caskade follows (`HELLO`,
/// `INFO redis_version`): clients use it to pick features.
pub const REDIS_VERSION: &str = "7.2.0";

/// Runs one command that is not part of a key-command batch.
pub async fn run(sh: &Shared, c: &mut Client, f: &[Bytes]) -> Reply {
    let Some(spec) = table::lookup(&f[0]) else {
        return unknown(f);
    };
    if !table::arity_ok(spec.arity, f.len()) {
        return arity_error(spec.name);
    }
    let sub = || f.get(1).map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    match spec.name {
        "ping" => match f.len() {
            1 => Reply::Simple("PONG"),
            2 => Reply::Bulk(f[1].clone()),
            _ => arity_error("ping"),
        },
        "echo" => Reply::Bulk(f[1].clone()),
        "quit" => {
            c.quit = true;
            Reply::OK
        }
        "reset" => {
            c.name = None;
            c.resp = 2;
            c.written.clear();
            Reply::Simple("RESET")
        }
        "select" => match parse_i64(&f[1]) {
            None => not_integer(),
            Some(0) => Reply::OK,
            Some(_) => Reply::err("DB index is out of range"),
        },
        "hello" => hello(c, f),
        "client" => client(sh, c, f, &sub()),
        "command" => command(f, &sub()),
        "config" => config(sh, f, &sub()),
        // Boxed: `info`'s state (the metrics snapshot it holds across its
        // awaits) made this function's future 53,592 bytes, copied twice
        // per admin command (a `WAIT` after every write included).
        "info" => Box::pin(info(sh, f)).await,
        "dbsize" => match sh
            .svc
            .db_size(tonic::Request::new(proto::DbSizeRequest {}))
            .await
        {
            Ok(r) => Reply::Int(r.into_inner().value),
            Err(s) => commands::status(s),
        },
        "wait" => wait(sh, c, f).await,
        // A key command answered alone (wrong arity is decided above).
        _ => commands::run(sh, f).await,
    }
}

/// `ERR unknown command 'x', with args beginning with: 'a' 'b' `, with
/// Redis' 128-character bounds.
fn unknown(f: &[Bytes]) -> Reply {
    let mut args = String::new();
    for a in &f[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        let a = String::from_utf8_lossy(a);
        let a: String = a.chars().take(room).collect();
        args.push_str(&format!("'{a}' "));
    }
    let name: String = String::from_utf8_lossy(&f[0]).chars().take(128).collect();
    Reply::err(format!(
        "unknown command '{name}', with args beginning with: {args}"
    ))
}

/// `ERR unknown subcommand 'x'. Try CMD HELP.`
fn unknown_sub(cmd: &str, f: &[Bytes]) -> Reply {
    let name: String = String::from_utf8_lossy(&f[1]).chars().take(128).collect();
    Reply::err(format!(
        "unknown subcommand '{name}'. Try {} HELP.",
        cmd.to_ascii_uppercase()
    ))
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello(c: &mut Client, f: &[Bytes]) -> Reply {
    let mut version = c.resp;
    let mut j = 1;
    if let Some(v) = f.get(1) {
        match parse_i64(v) {
            Some(v @ 2..=3) => version = v as u8,
            Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
            None => return Reply::err("Protocol version is not an integer or out of range"),
        }
        j = 2;
    }
    let mut name = None;
    while j < f.len() {
        let opt = f[j].to_ascii_lowercase();
        let left = f.len() - j - 1;
        match opt.as_slice() {
            // Its credentials were checked by resp/auth.rs (`hello`)
            // before this runs; here only its syntax.
            b"auth" if left >= 2 => j += 3,
            b"setname" if left >= 1 => {
                if !valid_name(&f[j + 1]) {
                    return bad_name();
                }
                name = Some(f[j + 1].clone());
                j += 2;
            }
            _ => {
                let o = String::from_utf8_lossy(&f[j]);
                return Reply::err(format!("Syntax error in HELLO option '{o}'"));
            }
        }
    }
    if let Some(n) = name {
        c.name = Some(n);
    }
    c.resp = version;
    let s = |t: &str| Reply::text(t);
    Reply::Map(vec![
        (s("server"), s("caskade")),
        (s("version"), s(REDIS_VERSION)),
        (s("proto"), Reply::Int(i64::from(version))),
        (s("id"), Reply::Int(c.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(vec![])),
    ])
}

/// Whether a client name is allowed (Redis: no spaces, newlines or other
/// characters outside `!`..`~`).
fn valid_name(n: &[u8]) -> bool {
    n.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

/// Redis' refusal of a bad client name.
fn bad_name() -> Reply {
    Reply::err("Client names cannot contain spaces, newlines or special characters.")
}

/// `CLIENT ID | GETNAME | SETNAME name | INFO | SETINFO attr value`.
fn client(sh: &Shared, c: &mut Client, f: &[Bytes], sub: &[u8]) -> Reply {
    let arity =
        |n: usize, name: &str| (f.len() != n).then(|| arity_error(&format!("client|{name}")));
    match sub {
        b"id" => arity(2, "id").unwrap_or(Reply::Int(c.id as i64)),
        b"getname" => {
            arity(2, "getname").unwrap_or_else(|| c.name.clone().map_or(Reply::Nil, Reply::Bulk))
        }
        b"setname" => arity(3, "setname").unwrap_or_else(|| {
            if !valid_name(&f[2]) {
                return bad_name();
            }
            c.name = (!f[2].is_empty()).then(|| f[2].clone());
            Reply::OK
        }),
        b"setinfo" => arity(4, "setinfo").unwrap_or_else(|| {
            let value = f[3].clone();
            if !valid_name(&value) {
                return Reply::err(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(&f[2]).to_ascii_uppercase()
                ));
            }
            match f[2].to_ascii_lowercase().as_slice() {
                b"lib-name" => c.lib_name = Some(value),
                b"lib-ver" => c.lib_ver = Some(value),
                _ => {
                    let a = String::from_utf8_lossy(&f[2]);
                    return Reply::err(format!("Unrecognized option '{a}'"));
                }
            }
            Reply::OK
        }),
        b"info" => arity(2, "info").unwrap_or_else(|| Reply::Verbatim(client_line(sh, c))),
        _ => unknown_sub("client", f),
    }
}

/// One `CLIENT INFO` / `CLIENT LIST` line, Redis' fields that apply.
fn client_line(sh: &Shared, c: &Client) -> String {
    let lossy = |b: &Option<Bytes>| {
        b.as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    };
    format!(
        "id={} addr={} laddr={} fd=0 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 \
         qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 \
         events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        c.id,
        c.peer,
        sh.addr,
        lossy(&c.name),
        c.since.elapsed().as_secs(),
        c.resp,
        lossy(&c.lib_name),
        lossy(&c.lib_ver),
    )
}

/// `COMMAND`, `COMMAND COUNT | LIST | INFO name... | DOCS [name...]`.
fn command(f: &[Bytes], sub: &[u8]) -> Reply {
    if f.len() == 1 {
        return Reply::Array(COMMANDS.iter().map(|s| s.info()).collect());
    }
    let named = || f[2..].iter().map(|n| (n, table::lookup(n)));
    match sub {
        b"count" if f.len() == 2 => Reply::Int(COMMANDS.len() as i64),
        b"list" if f.len() == 2 => {
            Reply::Array(COMMANDS.iter().map(|s| Reply::text(s.name)).collect())
        }
        b"info" => Reply::Array(
            named()
                .map(|(_, s)| s.map_or(Reply::NilArray, |s| s.info()))
                .collect(),
        ),
        b"docs" if f.len() == 2 => Reply::Map(
            COMMANDS
                .iter()
                .map(|s| (Reply::text(s.name), s.docs()))
                .collect(),
        ),
        b"docs" => Reply::Map(
            named()
                .filter_map(|(_, s)| s.map(|s| (Reply::text(s.name), s.docs())))
                .collect(),
        ),
        b"count" | b"list" => arity_error(&format!("command|{}", String::from_utf8_lossy(sub))),
        _ => unknown_sub("command", f),
    }
}

/// `CONFIG GET pattern...` over the settings clients ask for;
/// `CONFIG SET` is refused (the YAML file is the configuration).
fn config(sh: &Shared, f: &[Bytes], sub: &[u8]) -> Reply {
    match sub {
        b"get" if f.len() >= 3 => {
            let appendfsync = match sh.fsync {
                Durability::Always => "always",
                Durability::EveryMs(_) => "everysec",
                Durability::Never => "no",
            };
            let aof = match sh.engine {
                crate::config::EngineKind::Bitcask => "yes",
                crate::config::EngineKind::Memory => "no",
            };
            let o = &sh.opts;
            let settings: [(&str, String); 11] = [
                ("appendfsync", appendfsync.into()),
                ("appendonly", aof.into()),
                ("databases", "1".into()),
                ("maxclients", o.maxclients.to_string()),
                ("maxmemory", "0".into()),
                ("maxmemory-policy", "noeviction".into()),
                ("port", sh.addr.port().to_string()),
                ("proto-max-bulk-len", o.proto_max_bulk_len.to_string()),
                ("save", String::new()),
                ("slave-read-only", "yes".into()),
                ("timeout", o.timeout.to_string()),
            ];
            let mut out = Vec::new();
            for (k, v) in &settings {
                let hit = f[2..]
                    .iter()
                    .any(|p| glob(&p.to_ascii_lowercase(), k.as_bytes()));
                if hit {
                    out.push((Reply::text(*k), Reply::text(v.clone())));
                }
            }
            Reply::Map(out)
        }
        b"get" => arity_error("config|get"),
        b"set" if f.len() >= 4 && f.len().is_multiple_of(2) => Reply::err(
            "CONFIG SET is not supported by caskade: change the server's YAML configuration and restart",
        ),
        b"set" => arity_error("config|set"),
        b"resetstat" if f.len() == 2 => Reply::OK,
        _ => unknown_sub("config", f),
    }
}

/// Redis' glob match (`*`, `?`, `[...]` without ranges' negation subtleties
/// beyond `^`), enough for `CONFIG GET`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(b'['), Some(&c)) => match p.iter().position(|&b| b == b']') {
            Some(end) if end > 1 => {
                let set = &p[1..end];
                let (neg, set) = match set.first() {
                    Some(b'^') => (true, &set[1..]),
                    _ => (false, set),
                };
                (set.contains(&c) != neg) && glob(&p[end + 1..], &s[1..])
            }
            _ => c == b'[' && glob(&p[1..], &s[1..]),
        },
        (Some(&a), Some(&b)) => a == b && glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Keys in the partitions this node leads (standalone: every key), from
/// the engines' own counts (expired keys not yet swept included).
async fn led_keys(sh: &Shared) -> crate::Result<u64> {
    let me = sh.node.info().id.clone();
    let (_, states) = sh.node.metadata();
    let led: Vec<u32> = states
        .iter()
        .filter(|p| p.leader.as_deref() == Some(me.as_str()))
        .map(|p| p.id)
        .collect();
    let status = sh.node.status().await?;
    Ok(status
        .iter()
        .filter(|(p, _)| led.contains(p))
        .map(|(_, s)| s.keys)
        .sum())
}

/// `WAIT numreplicas timeout` (see the module invariants).
async fn wait(sh: &Shared, c: &Client, f: &[Bytes]) -> Reply {
    let (Some(want), Some(timeout)) = (parse_i64(&f[1]), parse_i64(&f[2])) else {
        return not_integer();
    };
    if timeout < 0 {
        return Reply::err("timeout is negative");
    }
    let started = Instant::now();
    loop {
        let count = sh
            .node
            .wait_count(c.written.iter().copied(), sh.svc.default_acks());
        let expired = timeout > 0 && started.elapsed() >= Duration::from_millis(timeout as u64);
        if count >= want || expired {
            return Reply::Int(count);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `INFO [section ...]`: Redis' sections and field names where they
/// apply, then caskade's own figures (`caskade_*`, partition lines).
async fn info(sh: &Shared, f: &[Bytes]) -> Reply {
    let snap = match sh.metrics.collect().await {
        Ok(s) => s,
        Err(e) => return refusal(e),
    };
    let keys = match led_keys(sh).await {
        Ok(k) => k,
        Err(e) => return refusal(e),
    };
    let caskade = snap.info();
    let extra = |name: &str| -> Vec<(String, String)> {
        caskade
            .sections
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.fields.iter().map(|f| (f.key.clone(), f.value.clone())))
            .collect()
    };
    let kv = |k: &str, v: String| (k.to_string(), v);
    let up = sh.started.elapsed().as_secs();
    let mut sections: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    let mut server = vec![
        kv("redis_version", REDIS_VERSION.into()),
        kv("redis_mode", "standalone".into()),
        kv("os", std::env::consts::OS.into()),
        kv("arch_bits", (usize::BITS).to_string()),
        kv("process_id", std::process::id().to_string()),
        kv("tcp_port", sh.addr.port().to_string()),
        kv("uptime_in_seconds", up.to_string()),
        kv("uptime_in_days", (up / 86_400).to_string()),
    ];
    server.extend(
        extra("server")
            .into_iter()
            .map(|(k, v)| (format!("caskade_{k}"), v)),
    );
    sections.push(("Server", server));
    let clients = sh.clients.load(std::sync::atomic::Ordering::Relaxed);
    sections.push((
        "Clients",
        vec![
            kv("connected_clients", clients.to_string()),
            kv("maxclients", sh.opts.maxclients.to_string()),
            kv("blocked_clients", "0".into()),
        ],
    ));
    let (aof, fsync) = match (sh.engine, sh.fsync) {
        (crate::config::EngineKind::Memory, _) => ("0", "none".to_string()),
        (_, Durability::Always) => ("1", "always".into()),
        (_, Durability::EveryMs(ms)) => ("1", format!("every_ms={ms}")),
        (_, Durability::Never) => ("1", "never".into()),
    };
    let mut persistence = vec![
        kv("loading", "0".into()),
        kv("aof_enabled", aof.into()),
        kv("caskade_fsync", fsync),
    ];
    persistence.extend(extra("storage"));
    sections.push(("Persistence", persistence));
    let mut stats = vec![
        kv(
            "total_connections_received",
            sh.accepted
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
        kv(
            "total_commands_processed",
            sh.commands
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
        kv(
            "total_error_replies",
            sh.error_replies
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        ),
    ];
    stats.extend(extra("requests"));
    sections.push(("Stats", stats));
    let mut replication = vec![kv("role", "master".into())];
    replication.extend(extra("replication"));
    sections.push(("Replication", replication));
    let mut cluster = vec![kv("cluster_enabled", "0".into())];
    cluster.extend(
        extra("cluster")
            .into_iter()
            .map(|(k, v)| (format!("caskade_{k}"), v)),
    );
    sections.push(("Cluster", cluster));
    let mut keyspace = Vec::new();
    if keys > 0 {
        keyspace.push(kv("db0", format!("keys={keys},expires=0,avg_ttl=0")));
    }
    sections.push(("Keyspace", keyspace));

    let wanted: Vec<String> = f[1..]
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "default" || w == "everything");
    let mut text = String::new();
    for (name, fields) in sections {
        if !all && !wanted.iter().any(|w| w == &name.to_ascii_lowercase()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str(&format!("# {name}\r\n"));
        for (k, v) in fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    Reply::Verbatim(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_as_redis() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"max*", b"maxmemory"));
        assert!(glob(b"s?ve", b"save"));
        assert!(glob(b"[as]ave", b"save"));
        assert!(!glob(b"[^s]ave", b"save"));
        assert!(!glob(b"appendonly", b"appendfsync"));
    }

    #[test]
    fn unknown_command_words() {
        let f: Vec<Bytes> = ["foo", "a", "b"].iter().map(|s| Bytes::from(*s)).collect();
        assert_eq!(
            unknown(&f),
            Reply::err("unknown command 'foo', with args beginning with: 'a' 'b' ")
        );
    }
}
