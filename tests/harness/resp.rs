//! A blocking RESP client for the tests that talk to a node's RESP
//! listener (the `resp` and `security` binaries).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A blocking RESP connection for tests: commands out, whole RESP2 /
/// RESP3 replies back, byte for byte. The stream is public for tests
/// that write raw pipelines.
pub struct Conn(pub TcpStream);

impl Conn {
    /// Connects to `addr`; a read waits at most 20 s.
    pub fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn(s)
    }

    /// A connection to `addr` logged in as `user`.
    pub fn login(addr: &str, user: &str, password: &str) -> Conn {
        let mut c = Conn::open(addr);
        assert_eq!(c.ask(&["AUTH", user, password]), "+OK\r\n");
        c
    }

    /// Sends `args` as one command.
    pub fn send(&mut self, args: &[&str]) {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.write_all(req.as_bytes()).unwrap();
    }

    /// Sends `args` and returns the whole answer, byte for byte.
    pub fn ask(&mut self, args: &[&str]) -> String {
        self.send(args);
        let mut out = Vec::new();
        self.reply(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// Reads one complete RESP2 / RESP3 reply into `out`.
    pub fn reply(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        let mut b = [0u8; 1];
        while !out[start..].ends_with(b"\r\n") {
            self.0.read_exact(&mut b).unwrap();
            out.push(b[0]);
        }
        let head = String::from_utf8_lossy(&out[start + 1..out.len() - 2]).into_owned();
        let n = || head.parse::<i64>().unwrap();
        match out[start] {
            b'$' | b'=' | b'!' if n() >= 0 => {
                let mut body = vec![0; n() as usize + 2];
                self.0.read_exact(&mut body).unwrap();
                out.extend_from_slice(&body);
            }
            b'*' | b'~' | b'>' => (0..n().max(0)).for_each(|_| self.reply(out)),
            b'%' | b'|' => (0..2 * n()).for_each(|_| self.reply(out)),
            _ => {}
        }
    }

    /// One bulk (or verbatim) answer's text.
    pub fn bulk(&mut self, args: &[&str]) -> String {
        let a = self.ask(args);
        let body = a.split_once("\r\n").unwrap().1;
        body.strip_suffix("\r\n").unwrap().to_string()
    }

    /// Sends `args` and asserts the whole answer is `want`.
    pub fn cmd(&mut self, args: &[&str], want: &str) {
        assert_eq!(self.ask(args), want, "{args:?}");
    }
}
