//! Request framing: what a Redis client sends, cut into commands.
//!
//! Two forms, decided by the first byte of a request, exactly as Redis
//! (`processMultibulkBuffer` / `processInlineBuffer` in networking.c):
//!
//! ```text
//! multibulk  *<n>\r\n  then n times  $<len>\r\n<len bytes>\r\n
//! inline     any other first byte: one line up to \n (a \r before it is
//!            dropped), split into arguments as redis-cli's own parser
//!            splits them (spaces; "double" quotes with \n \r \t \b \a \\ \"
//!            and \xHH escapes; 'single' quotes with \' only)
//! ```
//!
//! Invariants:
//! - [`Parser::next`] consumes bytes only when it returns a whole command,
//!   an empty one (`*0`, `*-1`, a blank inline line: skipped, no answer), or
//!   an error; on `Ok(None)` the buffer is untouched, so no partial frame is
//!   ever half-consumed and the stream cannot desynchronise;
//! - an error is final: the caller answers it (Redis' words, `ERR Protocol
//!   error: ...`) after the answers of the commands before it and closes
//!   the connection, as Redis does;
//! - memory per connection is bounded: a header line (count or length)
//!   longer than 64 KiB without its `\r\n`, a count above `max_args`, or a
//!   bulk length above `proto_max_bulk_len` is an error before its bytes
//!   are buffered; the bytes of one bulk are at most `proto_max_bulk_len`;
//! - arguments are zero-copy slices of the read buffer ([`Bytes`]).
//!
//! As Redis, the two bytes after a bulk's payload are skipped, not checked.

use bytes::{Buf, Bytes, BytesMut};

/// Longest header line (count, length) or inline request, as Redis'
/// `PROTO_INLINE_MAX_SIZE`.
pub const MAX_LINE: usize = 64 * 1024;

/// A request the client sent wrongly; answered as `-ERR Protocol error: ...`
/// and the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Redis' exact message after `Protocol error: `.
    #[error("Protocol error: {0}")]
    Redis(&'static str),
    /// `expected '$', got 'X'`.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
}

/// The limits a parser enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest bulk string (Redis `proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Most arguments in one multibulk.
    pub max_args: usize,
}

/// Cuts commands out of a connection's read buffer.
#[derive(Debug)]
pub struct Parser {
    /// The limits.
    limits: Limits,
    /// The buffer length below which the frame at its head cannot be
    /// complete (learnt from its headers), so a large value arriving in
    /// many reads is not re-scanned on each.
    need: usize,
}

/// What [`Parser::next`] found.
pub type Frame = Vec<Bytes>;

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser { limits, need: 0 }
    }

    /// At least how many bytes the buffer must hold before [`Parser::next`]
    /// can make progress; a hint for the read buffer's capacity.
    pub fn need(&self) -> usize {
        self.need
    }

    /// The next command at the head of `buf`: `Ok(Some(args))` (consumed;
    /// `args` may be empty, meaning nothing to answer), `Ok(None)` when the
    /// frame is not complete yet (nothing consumed), or the protocol error.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        let found = if buf[0] == b'*' {
            self.multibulk(buf)?
        } else {
            inline(buf)?
        };
        self.need = match &found {
            Scan::Complete { .. } => 0,
            Scan::Need(n) => *n,
        };
        Ok(match found {
            Scan::Need(_) => None,
            Scan::Complete { end, args } => {
                let mut frame = buf.split_to(end).freeze();
                let args = args
                    .into_iter()
                    .map(|a| match a {
                        Arg::Range(s, e) => frame.slice(s..e),
                        Arg::Owned(v) => Bytes::from(v),
                    })
                    .collect();
                frame.advance(frame.len());
                Some(args)
            }
        })
    }

    /// Scans a `*` request without consuming anything.
    fn multibulk(&self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        let Some((count, mut pos)) = header(buf, 0, "too big mbulk count string")? else {
            return Ok(Scan::Need(buf.len() + 1));
        };
        let count = match parse_i64(count) {
            Some(n) if n <= 0 => {
                return Ok(Scan::Complete {
                    end: pos,
                    args: vec![],
                });
            }
            Some(n) if n as u64 <= self.limits.max_args as u64 => n as usize,
            _ => return Err(ProtocolError::Redis("invalid multibulk length")),
        };
        let mut args = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            match buf.get(pos) {
                None => return Ok(Scan::Need(buf.len() + 1)),
                Some(b'$') => {}
                Some(&c) => return Err(ProtocolError::ExpectedBulk(c as char)),
            }
            let Some((len, start)) = header(buf, pos, "too big bulk count string")? else {
                return Ok(Scan::Need(buf.len() + 1));
            };
            let len = match parse_i64(len) {
                Some(n) if n >= 0 && n as u64 <= self.limits.max_bulk as u64 => n as usize,
                _ => return Err(ProtocolError::Redis("invalid bulk length")),
            };
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(Scan::Need(end + 2));
            }
            args.push(Arg::Range(start, end));
            pos = end + 2;
        }
        Ok(Scan::Complete { end: pos, args })
    }
}

/// The result of scanning the head of the buffer.
enum Scan {
    /// Not complete; the buffer must hold at least this many bytes first.
    Need(usize),
    /// A whole request of `end` bytes.
    Complete {
        /// Its length in the buffer.
        end: usize,
        /// Its arguments.
        args: Vec<Arg>,
    },
}

/// One argument: a range of the frame, or bytes rebuilt from escapes.
enum Arg {
    /// `frame[start..end]`.
    Range(usize, usize),
    /// Unescaped inline argument.
    Owned(Vec<u8>),
}

/// The header line at `buf[at]` (its type byte skipped): its text and the
/// position after its `\r\n`; `None` if the line is not complete yet.
fn header<'a>(
    buf: &'a [u8],
    at: usize,
    too_big: &'static str,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let rest = &buf[at..];
    match memchr_crlf(rest) {
        Some(i) => Ok(Some((&rest[1..i], at + i + 2))),
        None if rest.len() > MAX_LINE => Err(ProtocolError::Redis(too_big)),
        None => Ok(None),
    }
}

/// Index of the first `\r\n` in `s`.
fn memchr_crlf(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"\r\n")
}

/// A strict signed decimal, as Redis' `string2ll` (no spaces, no `+`).
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(s).ok()?;
    if text.is_empty() || text.starts_with('+') || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if text.starts_with("-0") {
        return None;
    }
    text.parse().ok()
}

/// Scans an inline request without consuming anything.
fn inline(buf: &[u8]) -> Result<Scan, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtocolError::Redis("too big inline request"));
        }
        return Ok(Scan::Need(buf.len() + 1));
    };
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args = super::split::split(line)
        .map_err(|_| ProtocolError::Redis("unbalanced quotes in request"))?
        .into_iter()
        .map(Arg::Owned)
        .collect();
    Ok(Scan::Complete { end: nl + 1, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 16,
        max_args: 4,
    };

    fn all(input: &[u8]) -> (Vec<Frame>, Option<ProtocolError>, usize) {
        let mut p = Parser::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut frames = Vec::new();
        loop {
            match p.next(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None, buf.len()),
                Err(e) => return (frames, Some(e), buf.len()),
            }
        }
    }

    fn strs(frames: &[Frame]) -> Vec<Vec<&[u8]>> {
        frames
            .iter()
            .map(|f| f.iter().map(|b| &b[..]).collect())
            .collect()
    }

    #[test]
    fn multibulk_and_inline_frames() {
        let (f, e, rest) =
            all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\\x41\"\n*1\r\n$4\r\nPI");
        assert_eq!(e, None);
        assert_eq!(rest, 10, "the partial frame stays whole");
        let want: Vec<Vec<&[u8]>> = vec![
            vec![b"GET", b"k"],
            vec![b"PING"],
            vec![b"set", b"a", b"b cA"],
        ];
        assert_eq!(strs(&f), want);
    }

    #[test]
    fn empty_requests_are_skipped_without_an_answer() {
        let (f, e, rest) = all(b"*0\r\n*-1\r\n\r\n   \n");
        assert_eq!((e, rest), (None, 0));
        assert!(f.iter().all(Vec::is_empty) && f.len() == 4);
    }

    #[test]
    fn errors_use_redis_words() {
        let err = |b: &[u8]| all(b).1.map(|e| e.to_string());
        assert_eq!(
            err(b"*x\r\n").unwrap(),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*5\r\n").unwrap(),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\r\n:3\r\n").unwrap(),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            err(b"*1\r\n$17\r\n").unwrap(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$-1\r\n").unwrap(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"set \"a\n").unwrap(),
            "Protocol error: unbalanced quotes in request"
        );
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(
            err(&long).unwrap(),
            "Protocol error: too big inline request"
        );
        let mut star = b"*".to_vec();
        star.extend(vec![b'1'; MAX_LINE + 1]);
        assert_eq!(
            err(&star).unwrap(),
            "Protocol error: too big mbulk count string"
        );
    }

    #[test]
    fn split_args_as_sdssplitargs() {
        let s = |l: &str| super::super::split::split(l.as_bytes()).ok();
        assert_eq!(
            s("  a  'b c' \"\\n\" "),
            Some(vec![b"a".to_vec(), b"b c".to_vec(), b"\n".to_vec()])
        );
        assert_eq!(s("'it\\'s'"), Some(vec![b"it's".to_vec()]));
        assert_eq!(s("\"a\"b"), None);
        assert_eq!(s("'a"), None);
        assert_eq!(s(""), Some(vec![]));
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse_i64(b"10"), Some(10));
        assert_eq!(parse_i64(b"-3"), Some(-3));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b" 1",
            b"1.0",
            b"-0",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_i64(b"0"), Some(0));
    }
}
