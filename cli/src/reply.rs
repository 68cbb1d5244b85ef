//! Replies and how they are printed, as redis-cli prints them.
//!
//! Two forms, chosen as redis-cli chooses them: [`Output::Terminal`] when
//! stdout is a terminal (or `--no-raw`), [`Output::Raw`] otherwise (or
//! `--raw`).
//!
//! | reply   | terminal                               | raw                  |
//! |---------|----------------------------------------|----------------------|
//! | status  | `OK`, `PONG`                           | the same             |
//! | value   | `"hello world"`, `""`, `"\x00\xff"`    | the bytes as they are|
//! | nil     | `(nil)`                                | an empty line        |
//! | integer | `(integer) 3`                          | `3`                  |
//! | error   | `(error) ERR syntax error`             | `ERR syntax error`   |
//! | array   | `1) "a"` / `2) (nil)`, `(empty array)` | one element per line |
//!
//! Values are quoted as redis-cli's `sdscatrepr` does: `\\ \" \n \r \t \a
//! \b` escaped, other bytes outside printable ASCII (0x20-0x7e) as `\xHH`.
//!
//! Invariant: nothing that came from the server or the user reaches the
//! terminal as a control character except in a raw value (which `--raw`
//! promises byte for byte, as redis-cli): statuses, errors and the CLI's
//! own text (help, info, metadata, cluster) have every control character
//! but newline and tab written as `\xHH`, so a key, a node id or an error
//! message cannot move the cursor or change the terminal's state.

use std::fmt::Write as _;

use bytes::Bytes;

/// How replies are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Types shown, values quoted: stdout is a terminal or `--no-raw`.
    Terminal,
    /// Values as they are: stdout is not a terminal or `--raw`.
    Raw,
}

/// What the server (or the CLI itself) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status line: `OK`, `PONG`.
    Status(&'static str),
    /// `(nil)`
    Nil,
    /// `(integer) N`
    Integer(i64),
    /// A value (bulk string).
    Bulk(Bytes),
    /// Numbered elements.
    Array(Vec<Reply>),
    /// The CLI's own text (help, info, metadata, cluster), printed as is
    /// in both forms, control characters escaped.
    Text(String),
    /// `(error) <message>`
    Error(String),
}

impl Reply {
    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The reply as printed, without the final newline.
    pub fn render(&self, output: Output) -> Vec<u8> {
        let mut out = Vec::new();
        match output {
            Output::Terminal => {
                self.terminal(&mut out, "");
                // Every element ends with a newline; the caller adds the last.
                out.pop();
            }
            Output::Raw => self.raw(&mut out),
        }
        out
    }

    /// redis-cli's `cliFormatReplyTTY`: every element ends with a newline;
    /// `prefix` indents the lines of a nested array after its first.
    fn terminal(&self, out: &mut Vec<u8>, prefix: &str) {
        match self {
            Reply::Status(s) => out.extend_from_slice(s.as_bytes()),
            Reply::Nil => out.extend_from_slice(b"(nil)"),
            Reply::Integer(n) => out.extend_from_slice(format!("(integer) {n}").as_bytes()),
            Reply::Bulk(b) => out.extend_from_slice(quote(b).as_bytes()),
            Reply::Text(t) => out.extend_from_slice(escape_controls(t).as_bytes()),
            Reply::Error(e) => {
                out.extend_from_slice(format!("(error) {}", escape_controls(e)).as_bytes());
            }
            Reply::Array(items) if items.is_empty() => out.extend_from_slice(b"(empty array)"),
            Reply::Array(items) => {
                let width = items.len().to_string().len();
                let inner = format!("{prefix}{}", " ".repeat(width + 2));
                for (i, item) in items.iter().enumerate() {
                    let lead = if i == 0 { "" } else { prefix };
                    out.extend_from_slice(format!("{lead}{:>width$}) ", i + 1).as_bytes());
                    item.terminal(out, &inner);
                }
                return;
            }
        }
        out.push(b'\n');
    }

    /// redis-cli's `cliFormatReplyRaw`.
    fn raw(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Status(s) => out.extend_from_slice(s.as_bytes()),
            Reply::Nil => {}
            Reply::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Reply::Bulk(b) => out.extend_from_slice(b),
            Reply::Text(t) | Reply::Error(t) => {
                out.extend_from_slice(escape_controls(t).as_bytes());
            }
            Reply::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    item.raw(out);
                }
            }
        }
    }
}

/// `bytes` quoted as redis-cli's `sdscatrepr`: `"hello world"`, `""`,
/// `"\x00\xff"`, `"caf\xc3\xa9"`.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            7 => out.push_str("\\a"),
            8 => out.push_str("\\b"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    out
}

/// A value inside a line of text (`verify`'s report): as is when it is
/// UTF-8 without control characters, else [`quote`]d.
pub fn display_value(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => quote(bytes),
    }
}

/// `text` with every control character except newline and tab written as
/// its UTF-8 bytes in `\xHH` form (ESC is `\x1b`, U+009B is `\xc2\x9b`).
pub fn escape_controls(text: &str) -> String {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes from the user or the server shown inside a message: as text when
/// valid UTF-8, else lossily; control characters are escaped on printing.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(r: &Reply) -> String {
        String::from_utf8(r.render(Output::Terminal)).unwrap()
    }

    fn raw(r: &Reply) -> Vec<u8> {
        r.render(Output::Raw)
    }

    fn bulk(b: &'static [u8]) -> Reply {
        Reply::Bulk(Bytes::from_static(b))
    }

    /// Expected strings were printed by redis-cli 7.0 for the same replies
    /// from redis-server (`redis-cli --no-raw` and `redis-cli | od -c`).
    #[test]
    fn terminal_form_as_redis_cli() {
        assert_eq!(term(&Reply::Status("OK")), "OK");
        assert_eq!(term(&Reply::Nil), "(nil)");
        assert_eq!(term(&Reply::Integer(-2)), "(integer) -2");
        assert_eq!(term(&bulk(b"hello world")), "\"hello world\"");
        assert_eq!(term(&bulk(b"")), "\"\"");
        assert_eq!(
            term(&bulk(b"h\xc3\xa9\x01\x7f\t\\\"")),
            r#""h\xc3\xa9\x01\x7f\t\\\"""#
        );
        assert_eq!(
            term(&bulk(b"\x00\xff\x07\x08\r\n")),
            r#""\x00\xff\a\b\r\n""#
        );
        assert_eq!(
            term(&Reply::Error("ERR syntax error".into())),
            "(error) ERR syntax error"
        );
        assert_eq!(
            term(&Reply::Array(vec![bulk(b"a b"), Reply::Nil, Reply::Nil])),
            "1) \"a b\"\n2) (nil)\n3) (nil)"
        );
        assert_eq!(term(&Reply::Array(vec![])), "(empty array)");
        let ten: Vec<Reply> = (1..=10).map(Reply::Integer).collect();
        let printed = term(&Reply::Array(ten));
        assert!(printed.starts_with(" 1) (integer) 1\n 2) (integer) 2\n"));
        assert!(printed.ends_with("\n10) (integer) 10"));
        let nested = Reply::Array(vec![
            Reply::Array(vec![bulk(b"x"), Reply::Integer(1)]),
            bulk(b"y"),
        ]);
        assert_eq!(term(&nested), "1) 1) \"x\"\n   2) (integer) 1\n2) \"y\"");
    }

    #[test]
    fn raw_form_as_redis_cli_raw() {
        assert_eq!(raw(&Reply::Status("PONG")), b"PONG");
        assert_eq!(raw(&Reply::Nil), b"");
        assert_eq!(raw(&Reply::Integer(-2)), b"-2");
        assert_eq!(raw(&bulk(b"a\x00\xff\x1b[2J")), b"a\x00\xff\x1b[2J");
        assert_eq!(
            raw(&Reply::Array(vec![bulk(b"a b"), Reply::Nil, Reply::Nil])),
            b"a b\n\n"
        );
        assert_eq!(
            raw(&Reply::Error("ERR syntax error".into())),
            b"ERR syntax error"
        );
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let evil = "node-\x1b]0;pwned\x07 \u{9b}31m\nnext\tline";
        let shown = r"node-\x1b]0;pwned\x07 \xc2\x9b31m
next	line";
        assert_eq!(escape_controls(evil), shown);
        for output in [Output::Terminal, Output::Raw] {
            assert_eq!(Reply::Text(evil.into()).render(output), shown.as_bytes());
            let err = String::from_utf8(Reply::Error(evil.into()).render(output)).unwrap();
            assert!(err.ends_with(shown), "{err}");
        }
    }
}
