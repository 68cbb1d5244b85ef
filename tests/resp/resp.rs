//! The RESP listener over TCP: the exact bytes of every command's answer,
//! Redis' error words, RESP3 after `HELLO 3`, inline commands, pipelining,
//! protocol errors (answer, then close), limits (maxclients, idle timeout,
//! bulk length), and a graceful stop.

use crate::resp_common;

use std::time::Duration;

use resp_common::{Conn, multibulk, start};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_exact_bytes() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    c.cmd(&["SET", "k", "hello"], "+OK\r\n").await;
    c.cmd(&["GET", "k"], "$5\r\nhello\r\n").await;
    c.cmd(&["GET", "nope"], "$-1\r\n").await;
    c.cmd(&["STRLEN", "k"], ":5\r\n").await;
    c.cmd(&["STRLEN", "nope"], ":0\r\n").await;
    c.cmd(&["SET", "k", "x", "NX"], "$-1\r\n").await;
    c.cmd(&["SET", "k2", "x", "XX"], "$-1\r\n").await;
    c.cmd(&["SET", "k2", "two", "nx", "ex", "100"], "+OK\r\n")
        .await;
    c.cmd(&["SETNX", "k2", "y"], ":0\r\n").await;
    c.cmd(&["SETNX", "k3", "y"], ":1\r\n").await;
    c.cmd(
        &["MGET", "k", "nope", "k2"],
        "*3\r\n$5\r\nhello\r\n$-1\r\n$3\r\ntwo\r\n",
    )
    .await;
    c.cmd(&["TTL", "k2"], ":100\r\n").await;
    c.cmd(&["TTL", "k"], ":-1\r\n").await;
    c.cmd(&["TTL", "nope"], ":-2\r\n").await;
    c.cmd(&["PTTL", "nope"], ":-2\r\n").await;
    c.cmd(&["PTTL", "k"], ":-1\r\n").await;
    c.cmd(&["SET", "p", "v", "PX", "50000"], "+OK\r\n").await;
    let pttl = c.call(&["PTTL", "p"]).await;
    let ms: i64 = String::from_utf8_lossy(&pttl[1..pttl.len() - 2])
        .parse()
        .unwrap();
    assert!((49_000..=50_000).contains(&ms), "{ms}");
    c.cmd(&["EXPIRE", "k", "200"], ":1\r\n").await;
    c.cmd(&["TTL", "k"], ":200\r\n").await;
    c.cmd(&["PEXPIRE", "k", "300000"], ":1\r\n").await;
    c.cmd(&["TTL", "k"], ":300\r\n").await;
    c.cmd(&["EXPIRE", "nope", "10"], ":0\r\n").await;
    c.cmd(&["EXISTS", "k", "k", "nope", "k2"], ":3\r\n").await;
    c.cmd(&["TYPE", "k"], "+string\r\n").await;
    c.cmd(&["TYPE", "nope"], "+none\r\n").await;
    c.cmd(&["DBSIZE"], ":4\r\n").await;
    c.cmd(&["DEL", "k", "nope", "k3"], ":2\r\n").await;
    c.cmd(&["UNLINK", "k2", "k2"], ":1\r\n").await;
    // EXPIRE with a time not in the future deletes, as Redis.
    c.cmd(&["EXPIRE", "p", "-1"], ":1\r\n").await;
    c.cmd(&["EXISTS", "p"], ":0\r\n").await;
    c.cmd(&["DBSIZE"], ":0\r\n").await;
    // Binary keys and values round-trip.
    c.0.write_all(b"*3\r\n$3\r\nSET\r\n$2\r\n\x00\xff\r\n$4\r\na\r\nb\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_n(5).await, b"+OK\r\n");
    c.0.write_all(b"*2\r\n$3\r\nGET\r\n$2\r\n\x00\xff\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_n(10).await, b"$4\r\na\r\nb\r\n");
    s.stop().await;
}

/// The integer after `:` of a reply.
fn int(reply: &[u8]) -> i64 {
    assert_eq!(reply[0], b':', "{}", String::from_utf8_lossy(reply));
    String::from_utf8_lossy(&reply[1..reply.len() - 2])
        .parse()
        .unwrap()
}

/// Unix time now in ms.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_exact_bytes() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    // SET GET answers the old value, whether or not NX/XX let it write.
    c.cmd(&["SET", "k", "v1", "GET"], "$-1\r\n").await;
    c.cmd(&["SET", "k", "v2", "GET"], "$2\r\nv1\r\n").await;
    c.cmd(&["SET", "k", "v3", "NX", "GET"], "$2\r\nv2\r\n")
        .await;
    c.cmd(&["GET", "k"], "$2\r\nv2\r\n").await;
    c.cmd(&["SET", "n1", "x", "XX", "GET"], "$-1\r\n").await;
    c.cmd(&["EXISTS", "n1"], ":0\r\n").await;
    // The same unit twice keeps the last, as Redis.
    c.cmd(&["SET", "k", "v", "EX", "10", "ex", "20"], "+OK\r\n")
        .await;
    c.cmd(&["TTL", "k"], ":20\r\n").await;
    c.cmd(&["SET", "k", "w", "KEEPTTL"], "+OK\r\n").await;
    c.cmd(&["TTL", "k"], ":20\r\n").await;
    c.cmd(&["SET", "k", "w"], "+OK\r\n").await;
    c.cmd(&["TTL", "k"], ":-1\r\n").await;
    let at = now_ms() / 1000 + 1000;
    c.cmd(&["SET", "k", "v", "EXAT", &at.to_string()], "+OK\r\n")
        .await;
    c.cmd(&["EXPIRETIME", "k"], &format!(":{at}\r\n")).await;
    c.cmd(&["PEXPIRETIME", "k"], &format!(":{}\r\n", at * 1000))
        .await;
    c.cmd(&["SET", "k", "v", "PXAT", "1700000000123"], "+OK\r\n")
        .await;
    // An instant in the past: written and expired at once.
    c.cmd(&["GET", "k"], "$-1\r\n").await;
    c.cmd(&["EXPIRETIME", "k"], ":-2\r\n").await;
    c.cmd(&["SET", "k", "v"], "+OK\r\n").await;
    c.cmd(&["EXPIRETIME", "k"], ":-1\r\n").await;
    c.cmd(&["PEXPIRETIME", "k"], ":-1\r\n").await;
    // GETSET / GETDEL.
    c.cmd(&["GETSET", "k", "new"], "$1\r\nv\r\n").await;
    c.cmd(&["GETSET", "fresh", "x"], "$-1\r\n").await;
    c.cmd(&["GETDEL", "fresh"], "$1\r\nx\r\n").await;
    c.cmd(&["GETDEL", "fresh"], "$-1\r\n").await;
    // GETEX.
    c.cmd(&["GETEX", "k"], "$3\r\nnew\r\n").await;
    c.cmd(&["TTL", "k"], ":-1\r\n").await;
    c.cmd(&["GETEX", "k", "EX", "50"], "$3\r\nnew\r\n").await;
    c.cmd(&["TTL", "k"], ":50\r\n").await;
    c.cmd(
        &["GETEX", "k", "PX", "70000", "px", "80000"],
        "$3\r\nnew\r\n",
    )
    .await;
    c.cmd(&["TTL", "k"], ":80\r\n").await;
    c.cmd(&["GETEX", "k", "PERSIST"], "$3\r\nnew\r\n").await;
    c.cmd(&["TTL", "k"], ":-1\r\n").await;
    c.cmd(&["GETEX", "k", "EXAT", &at.to_string()], "$3\r\nnew\r\n")
        .await;
    c.cmd(&["EXPIRETIME", "k"], &format!(":{at}\r\n")).await;
    c.cmd(&["GETEX", "nope", "PERSIST"], "$-1\r\n").await;
    // PERSIST.
    c.cmd(&["PERSIST", "k"], ":1\r\n").await;
    c.cmd(&["PERSIST", "k"], ":0\r\n").await;
    c.cmd(&["PERSIST", "nope"], ":0\r\n").await;
    // EXPIRE with NX / XX / GT / LT, as Redis (no expiry = infinite).
    c.cmd(&["EXPIRE", "k", "100", "XX"], ":0\r\n").await;
    c.cmd(&["EXPIRE", "k", "100", "GT"], ":0\r\n").await;
    c.cmd(&["EXPIRE", "k", "100", "LT"], ":1\r\n").await;
    c.cmd(&["EXPIRE", "k", "200", "NX"], ":0\r\n").await;
    c.cmd(&["EXPIRE", "k", "50", "GT"], ":0\r\n").await;
    c.cmd(&["EXPIRE", "k", "200", "gt"], ":1\r\n").await;
    c.cmd(&["TTL", "k"], ":200\r\n").await;
    c.cmd(&["PEXPIRE", "k", "150000", "LT"], ":1\r\n").await;
    c.cmd(&["TTL", "k"], ":150\r\n").await;
    c.cmd(&["EXPIRE", "k", "300", "XX"], ":1\r\n").await;
    c.cmd(&["TTL", "k"], ":300\r\n").await;
    c.cmd(&["EXPIRE", "nope", "300", "NX"], ":0\r\n").await;
    c.cmd(&["EXPIREAT", "k", &at.to_string()], ":1\r\n").await;
    c.cmd(&["EXPIRETIME", "k"], &format!(":{at}\r\n")).await;
    c.cmd(&["PEXPIREAT", "k", &(at * 1000 + 5).to_string()], ":1\r\n")
        .await;
    c.cmd(&["PEXPIRETIME", "k"], &format!(":{}\r\n", at * 1000 + 5))
        .await;
    c.cmd(&["EXPIRETIME", "k"], &format!(":{at}\r\n")).await;
    // EXPIRETIME rounds to the nearest second, as Redis.
    c.cmd(
        &["PEXPIREAT", "k", &(at * 1000 + 500).to_string()],
        ":1\r\n",
    )
    .await;
    c.cmd(&["EXPIRETIME", "k"], &format!(":{}\r\n", at + 1))
        .await;
    let ttl = int(&c.call(&["PTTL", "k"]).await);
    assert!((at * 1000 + 500 - now_ms() - ttl).abs() < 2000, "{ttl}");
    // A past instant deletes the key; PEXPIREAT takes the largest time.
    c.cmd(&["EXPIREAT", "k", "1"], ":1\r\n").await;
    c.cmd(&["EXISTS", "k"], ":0\r\n").await;
    c.cmd(&["SET", "k", "v"], "+OK\r\n").await;
    c.cmd(&["PEXPIREAT", "k", "9223372036854775807"], ":1\r\n")
        .await;
    c.cmd(&["PEXPIRETIME", "k"], ":9223372036854775807\r\n")
        .await;
    // Counters.
    c.cmd(&["INCR", "n"], ":1\r\n").await;
    c.cmd(&["INCRBY", "n", "41"], ":42\r\n").await;
    c.cmd(&["DECR", "n"], ":41\r\n").await;
    c.cmd(&["DECRBY", "n", "50"], ":-9\r\n").await;
    c.cmd(&["DECRBY", "n", "-9"], ":0\r\n").await;
    c.cmd(
        &["INCRBY", "n", "-9223372036854775808"],
        ":-9223372036854775808\r\n",
    )
    .await;
    c.cmd(&["GET", "n"], "$20\r\n-9223372036854775808\r\n")
        .await;
    c.cmd(&["SET", "t", "10", "EX", "100"], "+OK\r\n").await;
    c.cmd(&["INCR", "t"], ":11\r\n").await;
    c.cmd(&["TTL", "t"], ":100\r\n").await;
    // APPEND / STRLEN.
    c.cmd(&["APPEND", "ap", "hi"], ":2\r\n").await;
    c.cmd(&["APPEND", "ap", " there"], ":8\r\n").await;
    c.cmd(&["APPEND", "ap", ""], ":8\r\n").await;
    c.cmd(&["GET", "ap"], "$8\r\nhi there\r\n").await;
    c.cmd(&["STRLEN", "ap"], ":8\r\n").await;
    c.cmd(&["APPEND", "t", "0"], ":3\r\n").await;
    c.cmd(&["TTL", "t"], ":100\r\n").await;
    // MSET: a repeated key keeps its last value.
    c.cmd(&["MSET", "m1", "a", "m2", "b", "m1", "c"], "+OK\r\n")
        .await;
    c.cmd(
        &["MGET", "m1", "m2", "m3"],
        "*3\r\n$1\r\nc\r\n$1\r\nb\r\n$-1\r\n",
    )
    .await;
    // DBSIZE counts live keys only (k, n, t, ap, m1, m2).
    c.cmd(&["SET", "gone", "v", "PX", "1"], "+OK\r\n").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.cmd(&["DBSIZE"], ":6\r\n").await;
    // COMMAND INFO: MSET's keys are every other argument.
    c.cmd(
        &["COMMAND", "INFO", "mset"],
        "*1\r\n*10\r\n$4\r\nmset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:-1\r\n:2\r\n\
         *1\r\n+@string\r\n*0\r\n*0\r\n*0\r\n",
    )
    .await;
    // RESP3: nil is `_`.
    c.cmd(&["HELLO", "3"], "%7\r\n").await;
    let _ = c
        .read_n(
            "$6\r\nserver\r\n$7\r\ncaskade\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
         $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
         $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
                .len(),
        )
        .await;
    c.cmd(&["GETDEL", "nope"], "_\r\n").await;
    c.cmd(&["GETSET", "nope", "1"], "_\r\n").await;
    c.cmd(&["SET", "nope", "2", "GET"], "$1\r\n1\r\n").await;
    c.cmd(&["GETEX", "nope2"], "_\r\n").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_redis_words() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    c.cmd(
        &["FOO", "a", "b"],
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
    )
    .await;
    c.cmd(
        &["foo"],
        "-ERR unknown command 'foo', with args beginning with: \r\n",
    )
    .await;
    c.cmd(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.cmd(
        &["get", "a", "b"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k"],
        "-ERR wrong number of arguments for 'set' command\r\n",
    )
    .await;
    c.cmd(&["SET", "k", "v", "NX", "XX"], "-ERR syntax error\r\n")
        .await;
    c.cmd(
        &["SET", "k", "v", "EX", "10", "PX", "100"],
        "-ERR syntax error\r\n",
    )
    .await;
    c.cmd(&["SET", "k", "v", "EX"], "-ERR syntax error\r\n")
        .await;
    c.cmd(&["SET", "k", "v", "BOGUS"], "-ERR syntax error\r\n")
        .await;
    c.cmd(
        &["SET", "k", "v", "EX", "ten"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "EX", "0"],
        "-ERR invalid expire time in 'set' command\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "PX", "-5"],
        "-ERR invalid expire time in 'set' command\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "EX", "9223372036854775807"],
        "-ERR invalid expire time in 'set' command\r\n",
    )
    .await;
    c.cmd(
        &["EXPIRE", "k", "x"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.cmd(
        &["EXPIRE", "k"],
        "-ERR wrong number of arguments for 'expire' command\r\n",
    )
    .await;
    c.cmd(&["SELECT", "1"], "-ERR DB index is out of range\r\n")
        .await;
    c.cmd(
        &["SELECT", "x"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.cmd(&["SELECT", "0"], "+OK\r\n").await;
    c.cmd(
        &["CONFIG", "nope"],
        "-ERR unknown subcommand 'nope'. Try CONFIG HELP.\r\n",
    )
    .await;
    c.cmd(
        &["CONFIG", "GET"],
        "-ERR wrong number of arguments for 'config|get' command\r\n",
    )
    .await;
    c.cmd(
        &["CLIENT", "SETNAME", "a b"],
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    )
    .await;
    c.cmd(&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n")
        .await;
    // caskade's own limits, clearly: an empty key, a too-long value.
    c.cmd(&["GET", ""], "-ERR empty key\r\n").await;
    let big = "v".repeat((1 << 20) + 1);
    c.cmd(
        &["SET", "k", &big],
        "-ERR value is 1048577 bytes, the limit is 1048576 (storage.limits.max_value_bytes)\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "KEEPTTL", "EX", "5"],
        "-ERR syntax error\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "PX", "9223372036854775807"],
        "-ERR invalid expire time in 'set' command\r\n",
    )
    .await;
    c.cmd(
        &["SET", "k", "v", "EXAT", "9223372036854775807"],
        "-ERR invalid expire time in 'set' command\r\n",
    )
    .await;
    c.cmd(&["GETEX", "k", "NX"], "-ERR syntax error\r\n").await;
    c.cmd(
        &["GETEX", "k", "PERSIST", "EX", "5"],
        "-ERR syntax error\r\n",
    )
    .await;
    // GETEX looks the key up before the number, as Redis.
    c.cmd(&["GETEX", "absent", "EX", "0"], "$-1\r\n").await;
    c.cmd(&["SET", "k", "v"], "+OK\r\n").await;
    c.cmd(
        &["GETEX", "k", "EX", "0"],
        "-ERR invalid expire time in 'getex' command\r\n",
    )
    .await;
    c.cmd(
        &["GETEX", "k", "PX", "abc"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    // The EXPIRE family checks its options before its number.
    c.cmd(
        &["EXPIRE", "k", "x", "NX", "XX"],
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
    )
    .await;
    c.cmd(
        &["PEXPIRE", "k", "10", "GT", "LT"],
        "-ERR GT and LT options at the same time are not compatible\r\n",
    )
    .await;
    c.cmd(
        &["EXPIREAT", "k", "10", "foo"],
        "-ERR Unsupported option foo\r\n",
    )
    .await;
    c.cmd(
        &["EXPIRE", "k", "9223372036854775807"],
        "-ERR invalid expire time in 'expire' command\r\n",
    )
    .await;
    c.cmd(
        &["PEXPIRE", "k", "9223372036854775807"],
        "-ERR invalid expire time in 'pexpire' command\r\n",
    )
    .await;
    c.cmd(
        &["EXPIREAT", "k", "9223372036854775807"],
        "-ERR invalid expire time in 'expireat' command\r\n",
    )
    .await;
    // Counters: Redis' words for each way to fail; nothing is written.
    c.cmd(
        &["INCR", "k"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.cmd(
        &["INCRBY", "n", "1.5"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.cmd(&["SET", "n", "9223372036854775807"], "+OK\r\n").await;
    c.cmd(
        &["INCR", "n"],
        "-ERR increment or decrement would overflow\r\n",
    )
    .await;
    c.cmd(
        &["DECRBY", "n", "-1"],
        "-ERR increment or decrement would overflow\r\n",
    )
    .await;
    c.cmd(
        &["DECRBY", "n", "-9223372036854775808"],
        "-ERR decrement would overflow\r\n",
    )
    .await;
    c.cmd(&["GET", "n"], "$19\r\n9223372036854775807\r\n").await;
    c.cmd(
        &["MSET", "a", "1", "b"],
        "-ERR wrong number of arguments for 'mset' command\r\n",
    )
    .await;
    c.cmd(
        &["MSET", "a"],
        "-ERR wrong number of arguments for 'mset' command\r\n",
    )
    .await;
    c.cmd(
        &["GETSET", "k"],
        "-ERR wrong number of arguments for 'getset' command\r\n",
    )
    .await;
    c.cmd(
        &["MSET", "a", "1", "b", &big],
        "-ERR value is 1048577 bytes, the limit is 1048576 (storage.limits.max_value_bytes)\r\n",
    )
    .await;
    // Nothing of a refused MSET is written.
    c.cmd(&["EXISTS", "a", "b"], ":0\r\n").await;
    c.cmd(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_exact_bytes() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    c.cmd(&["PING"], "+PONG\r\n").await;
    c.cmd(&["PING", "hi there"], "$8\r\nhi there\r\n").await;
    c.cmd(
        &["PING", "a", "b"],
        "-ERR wrong number of arguments for 'ping' command\r\n",
    )
    .await;
    c.cmd(&["ECHO", ""], "$0\r\n\r\n").await;
    c.cmd(&["CLIENT", "ID"], ":1\r\n").await;
    c.cmd(&["CLIENT", "GETNAME"], "$-1\r\n").await;
    c.cmd(&["CLIENT", "SETNAME", "app1"], "+OK\r\n").await;
    c.cmd(&["CLIENT", "GETNAME"], "$4\r\napp1\r\n").await;
    c.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"], "+OK\r\n")
        .await;
    c.cmd(&["CLIENT", "SETINFO", "LIB-VER", "5.0"], "+OK\r\n")
        .await;
    let info = String::from_utf8(c.call(&["CLIENT", "INFO"]).await).unwrap();
    assert!(info.starts_with("$"), "{info}");
    assert!(
        info.contains(" id=1 ") || info.contains("id=1 addr="),
        "{info}"
    );
    assert!(
        info.contains(" name=app1 ") && info.contains(" resp=2 "),
        "{info}"
    );
    assert!(info.contains(" lib-name=redis-py lib-ver=5.0\n"), "{info}");
    c.cmd(
        &["CONFIG", "GET", "maxmemory"],
        "*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n",
    )
    .await;
    c.cmd(
        &["CONFIG", "GET", "save", "appendonly"],
        "*4\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n$4\r\nsave\r\n$0\r\n\r\n",
    )
    .await;
    c.cmd(
        &["CONFIG", "GET", "append*"],
        "*4\r\n$11\r\nappendfsync\r\n$8\r\neverysec\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n",
    )
    .await;
    c.cmd(&["CONFIG", "GET", "nothing"], "*0\r\n").await;
    c.cmd(&["COMMAND", "COUNT"], ":40\r\n").await;
    c.cmd(
        &["COMMAND", "INFO", "get", "nope"],
        "*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
         *1\r\n+@string\r\n*0\r\n*0\r\n*0\r\n*-1\r\n",
    )
    .await;
    c.cmd(
        &["COMMAND", "DOCS", "echo"],
        "*2\r\n$4\r\necho\r\n*8\r\n$7\r\nsummary\r\n$25\r\nReturns the given string.\r\n\
         $5\r\nsince\r\n$5\r\n1.0.0\r\n$5\r\ngroup\r\n$10\r\nconnection\r\n$9\r\narguments\r\n\
         *1\r\n*6\r\n$4\r\nname\r\n$7\r\nmessage\r\n$4\r\ntype\r\n$6\r\nstring\r\n\
         $12\r\ndisplay_text\r\n$7\r\nmessage\r\n",
    )
    .await;
    let all = c.call(&["COMMAND"]).await;
    assert!(all.starts_with(b"*40\r\n*10\r\n$6\r\nappend\r\n:3\r\n"));
    let docs = c.call(&["COMMAND", "DOCS"]).await;
    assert!(docs.starts_with(b"*80\r\n$6\r\nappend\r\n"));
    c.cmd(&["WAIT", "0", "0"], ":0\r\n").await;
    c.cmd(&["SET", "w", "1"], "+OK\r\n").await;
    // Standalone: no replica holds the write; the timeout bounds the wait.
    let started = std::time::Instant::now();
    c.cmd(&["WAIT", "1", "100"], ":0\r\n").await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    c.cmd(&["WAIT", "1", "-1"], "-ERR timeout is negative\r\n")
        .await;
    // RESP3 after HELLO 3: maps and nulls as Redis sends them.
    let hello = c.call(&["HELLO", "3", "SETNAME", "three"]).await;
    assert_eq!(
        String::from_utf8(hello).unwrap(),
        "%7\r\n$6\r\nserver\r\n$7\r\ncaskade\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
         $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
         $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    );
    c.cmd(&["GET", "nope"], "_\r\n").await;
    c.cmd(&["MGET", "nope"], "*1\r\n_\r\n").await;
    c.cmd(&["CLIENT", "GETNAME"], "$5\r\nthree\r\n").await;
    c.cmd(
        &["CONFIG", "GET", "maxmemory"],
        "%1\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n",
    )
    .await;
    let info = String::from_utf8(c.call(&["INFO", "keyspace"]).await).unwrap();
    assert_eq!(
        info,
        "=48\r\ntxt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n"
    );
    c.cmd(&["RESET"], "+RESET\r\n").await;
    c.cmd(&["GET", "nope"], "$-1\r\n").await;
    c.cmd(&["CLIENT", "GETNAME"], "$-1\r\n").await;
    c.cmd(&["QUIT"], "+OK\r\n").await;
    assert_eq!(c.read_to_close().await, b"");
    let mut c2 = s.connect().await;
    c2.cmd(&["CLIENT", "ID"], ":2\r\n").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_real_figures() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    for k in ["a", "b", "c"] {
        c.cmd(&["SET", k, "1"], "+OK\r\n").await;
    }
    let raw = c.call(&["INFO"]).await;
    let text = String::from_utf8(raw).unwrap();
    for want in [
        "# Server\r\nredis_version:7.2.0\r\nredis_mode:standalone\r\n",
        "caskade_mode:standalone\r\n",
        "# Clients\r\nconnected_clients:1\r\nmaxclients:10000\r\n",
        "# Persistence\r\nloading:0\r\naof_enabled:1\r\ncaskade_fsync:every_ms=1000\r\nkeys:3\r\n",
        "records_written:3\r\n",
        "total_commands_processed:3\r\ntotal_error_replies:0\r\n",
        "cmd_set:calls=3,errors=0,",
        "# Replication\r\nrole:master\r\npartitions_hosted:8\r\npartitions_led:8\r\n",
        "partition_0:role=leader,leader=node-1,",
        "# Cluster\r\ncluster_enabled:0\r\n",
        "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let server = String::from_utf8(c.call(&["INFO", "clients"]).await).unwrap();
    assert!(
        server.contains("# Clients") && !server.contains("# Server"),
        "{server}"
    );
    // Error replies, as Redis counts them: refusals before a command runs
    // (arity, unknown command) and failures of commands that ran (INCR of
    // a non-integer, alone and in a pipeline with a command that did not
    // fail), one each; a protocol error on another connection too.
    c.cmd(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.cmd(
        &["NOPE"],
        "-ERR unknown command 'NOPE', with args beginning with: \r\n",
    )
    .await;
    c.cmd(&["SET", "t", "x"], "+OK\r\n").await;
    c.cmd(
        &["INCR", "t"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.check(
        "*2\r\n$4\r\nINCR\r\n$1\r\nt\r\n*2\r\n$3\r\nGET\r\n$1\r\nt\r\n",
        "-ERR value is not an integer or out of range\r\n$1\r\nx\r\n",
    )
    .await;
    let mut bad = s.connect().await;
    bad.check(
        "*1\r\n:1\r\n",
        "-ERR Protocol error: expected '$', got ':'\r\n",
    )
    .await;
    let stats = String::from_utf8(c.call(&["INFO", "stats"]).await).unwrap();
    assert!(
        stats.contains("total_commands_processed:11\r\ntotal_error_replies:5\r\n"),
        "{stats}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_as_telnet_sends_them() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    c.check("PING\r\n", "+PONG\r\n").await;
    c.check("set greeting \"hello world\"\n", "+OK\r\n").await;
    c.check("get greeting\r\n", "$11\r\nhello world\r\n").await;
    c.check("set bin \"\\x00\\xff\"\r\nstrlen bin\r\n", "+OK\r\n:2\r\n")
        .await;
    // A blank line is ignored, as Redis does.
    c.check("\r\n  \r\nECHO 'it\\'s'\r\n", "$4\r\nit's\r\n")
        .await;
    c.check(
        "set a \"b\r\n",
        "-ERR Protocol error: unbalanced quotes in request\r\n",
    )
    .await;
    assert_eq!(c.read_to_close().await, b"");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_answer_then_close() {
    let s = start(|c| c.resp.proto_max_bulk_len = 1000).await;
    let cases: [(&[u8], &str); 6] = [
        (
            b"*1\r\n:1\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$abc\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$1001\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // The commands before the bad frame are answered first.
        (
            b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\nx",
            "+PONG\r\n+PONG\r\n-ERR Protocol error: expected '$', got 'x'\r\n",
        ),
    ];
    for (req, want) in cases {
        let mut c = s.connect().await;
        c.0.write_all(req).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&c.read_to_close().await), want);
    }
    // An unterminated line longer than 64 KiB.
    let mut c = s.connect().await;
    let mut junk = b"*1\r\n$".to_vec();
    junk.extend(vec![b'9'; 70_000]);
    c.0.write_all(&junk).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&c.read_to_close().await),
        "-ERR Protocol error: too big bulk count string\r\n"
    );
    let mut c = s.connect().await;
    c.0.write_all(&vec![b'x'; 70_000]).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&c.read_to_close().await),
        "-ERR Protocol error: too big inline request\r\n"
    );
    // The server is fine.
    s.connect().await.cmd(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_answer_in_order() {
    let s = start(|_| {}).await;
    let mut c = s.connect().await;
    // Same key written, read, written again, deleted, read: order holds.
    let mut req = String::new();
    let mut want = String::new();
    for i in 0..100 {
        req.push_str(&multibulk(&["SET", "k", &i.to_string()]));
        want.push_str("+OK\r\n");
        req.push_str(&multibulk(&["GET", "k"]));
        want.push_str(&format!("${}\r\n{i}\r\n", i.to_string().len()));
        req.push_str(&multibulk(&["SET", &format!("x{i}"), "v", "NX"]));
        want.push_str("+OK\r\n");
    }
    req.push_str(&multibulk(&["DEL", "k"]));
    want.push_str(":1\r\n");
    req.push_str(&multibulk(&["GET", "k"]));
    want.push_str("$-1\r\n");
    req.push_str("PING\r\n");
    want.push_str("+PONG\r\n");
    req.push_str(&multibulk(&["EXISTS", "x0", "x99", "k"]));
    want.push_str(":2\r\n");
    c.check(&req, &want).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxclients_and_idle_timeout() {
    let s = start(|c| {
        c.resp.maxclients = 2;
        c.resp.timeout = 1;
    })
    .await;
    let mut a = s.connect().await;
    let mut b = s.connect().await;
    a.cmd(&["PING"], "+PONG\r\n").await;
    b.cmd(&["PING"], "+PONG\r\n").await;
    let mut third = s.connect().await;
    assert_eq!(
        String::from_utf8_lossy(&third.read_to_close().await),
        "-ERR max number of clients reached\r\n"
    );
    // Idle for more than `timeout` seconds: closed without a word.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.read_to_close().await, b"");
    assert_eq!(b.read_to_close().await, b"");
    let mut d = s.connect().await;
    d.cmd(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

/// A connection's place under `maxclients` is given back before its
/// client sees the close: with `maxclients: 1`, a client that sends `QUIT`,
/// reads the close and reconnects at once is served every time. Before
/// the fix the count went down only after the socket was closed, and a
/// reconnect could be refused for the client's own old connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_quits_and_reconnects_at_once_is_served() {
    let s = start(|c| c.resp.maxclients = 1).await;
    let mut c = s.connect().await;
    for i in 0..300 {
        c.cmd(&["PING"], "+PONG\r\n").await;
        c.0.write_all(multibulk(&["QUIT"]).as_bytes())
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&c.read_to_close().await),
            "+OK\r\n",
            "round {i}"
        );
        c = s.connect().await;
    }
    c.cmd(&["PING"], "+PONG\r\n").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_idle_connections_and_the_listener() {
    let s = start(|_| {}).await;
    let addr = s.addr.clone();
    let mut c: Conn = s.connect().await;
    c.cmd(&["SET", "k", "v"], "+OK\r\n").await;
    s.stop().await;
    assert_eq!(c.read_to_close().await, b"");
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}
