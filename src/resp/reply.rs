//! Replies and their encoding in RESP2 or RESP3, as Redis sends them.
//!
//! ```text
//!               RESP2                      RESP3 (after HELLO 3)
//! simple        +OK\r\n                    same
//! error         -ERR msg\r\n               same
//! integer       :5\r\n                     same
//! bulk          $3\r\nabc\r\n              same
//! null          $-1\r\n (nil bulk)         _\r\n
//! null array    *-1\r\n                    _\r\n
//! array         *2\r\n...                  same
//! map           *4\r\n k v k v (flat)      %2\r\n k v k v
//! set           *n\r\n                     ~n\r\n
//! verbatim      $n\r\ntext                 =n+4\r\ntxt:text
//! double        $n\r\n1.5 (bulk)           ,1.5\r\n
//! ```
//!
//! Invariant: an error text never holds `\r` or `\n` (replaced by spaces),
//! so a reply can never break the framing.

use bytes::{BufMut, Bytes, BytesMut};

/// One reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+text`.
    Simple(&'static str),
    /// `+text`, built at run time.
    Status(String),
    /// `-text`: the text includes its prefix (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:n`.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string / null.
    Nil,
    /// The null array (RESP3: null).
    NilArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP2: a flat array of keys and values).
    Map(Vec<(Reply, Reply)>),
    /// A set (RESP2: an array).
    Set(Vec<Reply>),
    /// A verbatim text (RESP2: a bulk string).
    Verbatim(String),
    /// A double (RESP2: a bulk string).
    Double(f64),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An `ERR`-prefixed error.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string of `text`.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// A bulk string copied from static bytes.
    pub fn bulk_static(b: &'static [u8]) -> Reply {
        Reply::Bulk(Bytes::from_static(b))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of `self` in protocol `version` (2 or 3).
    pub fn encode(&self, version: u8, out: &mut BytesMut) {
        let resp3 = version >= 3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean);
            }
            Reply::Int(n) => line(out, b':', itoa(*n).as_bytes()),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', itoa(items.len() as i64).as_bytes());
                for i in items {
                    i.encode(version, out);
                }
            }
            Reply::Set(items) => {
                let t = if resp3 { b'~' } else { b'*' };
                line(out, t, itoa(items.len() as i64).as_bytes());
                for i in items {
                    i.encode(version, out);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', itoa(pairs.len() as i64).as_bytes());
                } else {
                    line(out, b'*', itoa(2 * pairs.len() as i64).as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Reply::Verbatim(text) if resp3 => {
                line(out, b'=', itoa(text.len() as i64 + 4).as_bytes());
                out.put_slice(b"txt:");
                out.put_slice(text.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => bulk(out, text.as_bytes()),
            Reply::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
            Reply::Double(d) => bulk(out, format_double(*d).as_bytes()),
        }
    }
}

/// `t text \r\n`.
fn line(out: &mut BytesMut, t: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(t);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// `$len\r\nbytes\r\n`.
fn bulk(out: &mut BytesMut, b: &[u8]) {
    line(out, b'$', itoa(b.len() as i64).as_bytes());
    out.reserve(b.len() + 2);
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

/// A decimal.
fn itoa(n: i64) -> String {
    n.to_string()
}

/// A double as Redis prints it (`inf`, `-inf`, `nan`, shortest form).
fn format_double(d: f64) -> String {
    if d.is_infinite() {
        if d > 0.0 { "inf".into() } else { "-inf".into() }
    } else if d.is_nan() {
        "nan".into()
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, v: u8) -> String {
        let mut out = BytesMut::new();
        r.encode(v, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn resp2_and_resp3_encodings() {
        assert_eq!(enc(&Reply::OK, 2), "+OK\r\n");
        assert_eq!(enc(&Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(&Reply::NilArray, 2), "*-1\r\n");
        let map = Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]);
        assert_eq!(enc(&map, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Verbatim("hi".into()), 3), "=6\r\ntxt:hi\r\n");
        assert_eq!(enc(&Reply::Verbatim("hi".into()), 2), "$2\r\nhi\r\n");
        assert_eq!(enc(&Reply::Set(vec![Reply::Int(1)]), 3), "~1\r\n:1\r\n");
        assert_eq!(enc(&Reply::Double(1.5), 3), ",1.5\r\n");
        assert_eq!(enc(&Reply::err("a\r\nb"), 2), "-ERR a  b\r\n");
    }
}
