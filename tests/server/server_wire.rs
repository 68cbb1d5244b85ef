//! The forward wire (src/server/service/wire.rs) on a real server's client
//! port, spoken by hand: told apart from gRPC on the same port, messages
//! served as the unary `MGet` / `MSet` and counted, a frame over the limit
//! ends only its connection, and a shutdown sends the end frame.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use caskade::client::{Client, SetOptions};
use caskade::proto;
use caskade::proto::forward_request::Request as Ask;
use caskade::proto::forward_response::Reply;
use prost::Message;

use crate::harness::{Server, ServerOpts, b, bounded, runtime};

/// The wire's first bytes (src/server/service/wire.rs).
const PREFACE: &[u8] = b"CSKDFWD1";

/// Writes one frame: a 4-byte big-endian length and `body`.
fn send(s: &mut TcpStream, body: &[u8]) {
    let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    s.write_all(&frame).unwrap();
}

/// Reads one frame's body; `None` at EOF.
fn receive(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Some(body)
}

/// A wire connection to `addr`, greeted without credentials and open.
fn open(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(PREFACE).unwrap();
    send(&mut s, b"");
    assert_eq!(receive(&mut s), Some(vec![]), "the greeting's answer");
    s
}

/// Sends message `id` carrying `ask` and reads its answer's reply.
fn ask(s: &mut TcpStream, id: u64, ask: Ask) -> Reply {
    let m = proto::ForwardRequest {
        id,
        request: Some(ask),
    };
    send(s, &m.encode_to_vec());
    let a = proto::ForwardResponse::decode(&receive(s).unwrap()[..]).unwrap();
    assert_eq!(a.id, id);
    a.reply.unwrap()
}

/// `calls=N,errors=M` of `command` in the server's `requests` figures.
fn calls(c: &Client, rt: &tokio::runtime::Runtime, command: &str) -> String {
    let info = rt.block_on(c.info()).unwrap();
    let requests = info.sections.iter().find(|s| s.name == "requests").unwrap();
    requests
        .fields
        .iter()
        .find(|f| f.key == format!("cmd_{command}"))
        .map_or("none".into(), |f| {
            f.value.split(",usec").next().unwrap().to_string()
        })
}

#[test]
fn the_forward_wire_shares_the_client_port_with_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), ServerOpts::default());
    let rt = runtime();
    let _in = rt.enter();
    let c = Client::for_addr(&server.addr).unwrap();
    rt.block_on(bounded(async {
        assert!(c.set("a", "1", SetOptions::default()).await.unwrap());
    }));

    let mut w = open(&server.addr);
    let reply = ask(
        &mut w,
        0,
        Ask::MSet(proto::MSetRequest {
            pairs: vec![proto::KeyValue {
                key: b("b"),
                value: b("2"),
            }],
            ..Default::default()
        }),
    );
    assert!(matches!(reply, Reply::MSet(_)), "{reply:?}");
    let reply = ask(
        &mut w,
        1,
        Ask::MGet(proto::MGetRequest {
            keys: vec![b("a"), b("b"), b("nope")],
            ..Default::default()
        }),
    );
    let Reply::MGet(got) = reply else {
        panic!("{reply:?}")
    };
    let values: Vec<_> = got.values.into_iter().map(|v| v.value).collect();
    assert_eq!(values, vec![Some(b("1")), Some(b("2")), None]);
    // Served as the unary calls, and the connection counted as a
    // `Forward` opened; gRPC goes on on the same port meanwhile.
    assert_eq!(calls(&c, &rt, "mget"), "calls=1,errors=0");
    assert_eq!(calls(&c, &rt, "mset"), "calls=1,errors=0");
    assert_eq!(calls(&c, &rt, "forward_wire"), "calls=1,errors=0");
    assert_eq!(calls(&c, &rt, "forward"), "none");
    rt.block_on(bounded(async {
        assert_eq!(c.get("b").await.unwrap(), Some(b("2")));
    }));

    // A frame above the message limit ends its connection, nothing else.
    let mut big = open(&server.addr);
    big.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_eq!(receive(&mut big), None);
    assert_eq!(
        ask(
            &mut w,
            2,
            Ask::MGet(proto::MGetRequest {
                keys: vec![b("a")],
                ..Default::default()
            })
        ),
        Reply::MGet(proto::MGetResponse {
            values: vec![proto::MaybeValue {
                value: Some(b("1"))
            }],
        })
    );

    // Almost the preface: closed unanswered, after its 8 bytes.
    let mut almost = TcpStream::connect(&server.addr).unwrap();
    almost
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    almost.write_all(b"CSKDFWD2").unwrap();
    let mut rest = Vec::new();
    almost.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"");
    // Any other first byte is gRPC's: an HTTP/2 server's SETTINGS frame
    // comes back (frame type 4), not the wire's empty frame.
    let mut other = TcpStream::connect(&server.addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    other
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut header = [0u8; 9];
    other.read_exact(&mut header).unwrap();
    assert_eq!(header[3], 4, "{header:?}");
    // Closed, or the shutdown below would wait for it as for any HTTP/2
    // connection.
    drop(other);
    // Counted: the two wire connections that opened (`w`, `big`); not the
    // one closed at its preface, nor the gRPC one.
    assert_eq!(calls(&c, &rt, "forward_wire"), "calls=2,errors=0");

    // Shutting down: the idle wire connection gets the end frame, then EOF.
    drop(c);
    server.stop();
    assert_eq!(receive(&mut w), Some(vec![]), "the end frame");
    assert_eq!(receive(&mut w), None);
}

/// A message being served when the server starts shutting down is
/// answered, then the end frame comes, then EOF; what it wrote is on disk
/// after the restart (the drain waits for wire connections before the
/// final flush). The failpoint `server::forward_slow` holds each message
/// 1.5 s, so the shutdown starts while the message is served.
#[test]
fn a_message_in_flight_at_shutdown_is_answered_before_the_end_frame() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let slow = ServerOpts::default().env("FAILPOINTS", "server::forward_slow=return(1500)");
    let mut server = Server::start(&data, slow);
    let mut w = open(&server.addr);
    let m = proto::ForwardRequest {
        id: 0,
        request: Some(Ask::MSet(proto::MSetRequest {
            pairs: vec![proto::KeyValue {
                key: b("late"),
                value: b("1"),
            }],
            ..Default::default()
        })),
    };
    let sent = std::time::Instant::now();
    send(&mut w, &m.encode_to_vec());
    std::thread::sleep(Duration::from_millis(500));
    // Returns once the process exited: what it sent waits in our socket.
    server.stop();
    // The message was held (the failpoint is armed: a build without
    // failpoints would answer at once) and the exit waited for it.
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );
    let a = proto::ForwardResponse::decode(&receive(&mut w).unwrap()[..]).unwrap();
    assert_eq!(
        a,
        proto::ForwardResponse {
            id: 0,
            reply: Some(Reply::MSet(proto::MSetResponse {})),
        }
    );
    assert_eq!(receive(&mut w), Some(vec![]), "the end frame");
    assert_eq!(receive(&mut w), None);

    let server = Server::start(&data, ServerOpts::default());
    let rt = runtime();
    let _in = rt.enter();
    let c = Client::for_addr(&server.addr).unwrap();
    rt.block_on(bounded(async {
        assert_eq!(c.get("late").await.unwrap(), Some(b("1")));
    }));
}
