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
//! - arguments are zero-copy slices of the read buffer ([`Bytes`]); a
//!   multibulk command allocates only its argument vector (the scan's
//!   ranges live in the parser, kept across commands).
//!
//! `cargo bench --bench resp_parse` times the parser alone
//! (docs/BENCHMARKS.md).
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
    /// The argument ranges of the multibulk being scanned; kept across
    /// commands, so a scan allocates nothing.
    ranges: Vec<(usize, usize)>,
}

/// What [`Parser::next`] found.
pub type Frame = Vec<Bytes>;

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            need: 0,
            ranges: Vec::new(),
        }
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
            Scan::Need(n) => *n,
            _ => 0,
        };
        Ok(match found {
            Scan::Need(_) => None,
            Scan::Ranges { end } => {
                let mut frame = buf.split_to(end).freeze();
                let mut args = Vec::with_capacity(self.ranges.len());
                if let Some((&(last_start, last_end), rest)) = self.ranges.split_last() {
                    args.extend(rest.iter().map(|&(s, e)| frame.slice(s..e)));
                    // The last argument is the frame itself, cut down: one
                    // reference count update fewer per command.
                    frame.truncate(last_end);
                    frame.advance(last_start);
                    args.push(frame);
                }
                Some(args)
            }
            Scan::Inline { end, args } => {
                buf.advance(end);
                Some(args.into_iter().map(Bytes::from).collect())
            }
        })
    }

    /// Scans a `*` request without consuming anything; its arguments'
    /// ranges are left in `self.ranges`.
    fn multibulk(&mut self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        self.ranges.clear();
        let Some((count, mut pos)) = header(buf, 0, "too big mbulk count string")? else {
            return Ok(Scan::Need(buf.len() + 1));
        };
        let count = match parse_i64(count) {
            Some(n) if n <= 0 => return Ok(Scan::Ranges { end: pos }),
            Some(n) if n as u64 <= self.limits.max_args as u64 => n as usize,
            _ => return Err(ProtocolError::Redis("invalid multibulk length")),
        };
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
            self.ranges.push((start, end));
            pos = end + 2;
        }
        Ok(Scan::Ranges { end: pos })
    }
}

/// The result of scanning the head of the buffer.
enum Scan {
    /// Not complete; the buffer must hold at least this many bytes first.
    Need(usize),
    /// A whole multibulk request of `end` bytes; its arguments are the
    /// parser's `ranges` of it.
    Ranges {
        /// Its length in the buffer.
        end: usize,
    },
    /// A whole inline request of `end` bytes.
    Inline {
        /// Its length in the buffer.
        end: usize,
        /// Its arguments, unescaped.
        args: Vec<Vec<u8>>,
    },
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

/// A strict signed decimal, as Redis' `string2ll`: an optional `-`, then
/// digits without a leading zero (`0` alone; `-0` is refused), no spaces,
/// no `+`, within `i64`. Read byte by byte: every command's headers pass
/// here.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0', ..] if negative || digits.len() > 1 => return None,
        _ => {}
    }
    // Accumulated negative, so that i64::MIN fits.
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative { Some(n) } else { n.checked_neg() }
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
        .map_err(|_| ProtocolError::Redis("unbalanced quotes in request"))?;
    Ok(Scan::Inline { end: nl + 1, args })
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
            b"9223372036854775808",
            b"-9223372036854775809",
            b"-",
            b"--1",
            b"1-",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    }

    /// The rules of `parse_i64` stated through `str` (the implementation
    /// before the byte-by-byte one), for the property test below.
    fn parse_i64_by_str(s: &[u8]) -> Option<i64> {
        let text = std::str::from_utf8(s).ok()?;
        if text.is_empty() || text.starts_with('+') || (text.len() > 1 && text.starts_with('0')) {
            return None;
        }
        if text.starts_with("-0") {
            return None;
        }
        text.parse().ok()
    }

    proptest::proptest! {
        /// Any bytes, and any decimal text with signs, zeros and lengths
        /// around i64's edges: the same answer as the rules through `str`.
        #[test]
        fn parse_i64_agrees_with_the_rules(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            text in "[-+]?0*[0-9]{0,20}",
            n in proptest::prelude::any::<i64>(),
        ) {
            proptest::prop_assert_eq!(parse_i64(&raw), parse_i64_by_str(&raw));
            proptest::prop_assert_eq!(parse_i64(text.as_bytes()), parse_i64_by_str(text.as_bytes()));
            let n = n.to_string();
            proptest::prop_assert_eq!(parse_i64(n.as_bytes()), parse_i64_by_str(n.as_bytes()));
        }
    }
}
