//! Splits a line into arguments with Redis' rules (`sdssplitargs`, used by
//! redis-cli for what is typed and by the server for inline commands), on
//! bytes, so any byte can be given. The CLI's REPL and the RESP listener's
//! inline commands both split with [`split`]:
//!
//! - blanks before an argument are skipped; an unquoted argument ends at a
//!   space, tab, `\r` or `\n`;
//! - a `"` opens a double-quoted part, also in the middle of an argument
//!   (`a"b c"` is `ab c`); inside, `\xHH` (two hex digits) is that byte,
//!   `\n \r \t \b \a` are the control characters and a backslash before any
//!   other character is that character (`\"`, `\\`, `\xZZ` is `xZZ`);
//! - a `'` opens a literal part in which only `\'` is an escape;
//! - a closing quote must be followed by a blank or the end of the line.
//!
//! Invariant: the result is what redis-cli would send for the same line,
//! byte for byte (tests/cli/cli_repl.rs compares a session's stored values),
//! and what Redis makes of the same inline command.

/// Splits `line`; the error says what is wrong with the quoting (the CLI
/// prints it after `(error) `; the RESP listener answers Redis' own
/// `unbalanced quotes in request` for any of them).
pub fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line
            .get(i)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == 0x0b)
        {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        while let Some(&b) = line.get(i) {
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => break,
                b'"' => i = double_quoted(line, i + 1, &mut arg)?,
                b'\'' => i = single_quoted(line, i + 1, &mut arg)?,
                _ => {
                    arg.push(b);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Reads a `"..."` part starting after its opening quote; returns the index
/// after the closing quote.
fn double_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, String> {
    loop {
        match line.get(i) {
            None => return Err(unbalanced()),
            Some(b'"') => return closing_quote(line, i + 1),
            Some(b'\\') => {
                let hex = line
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (line.get(i + 1), hex) {
                    (Some(b'x'), Some(byte)) => {
                        arg.push(byte);
                        i += 4;
                    }
                    (None, _) => return Err(unbalanced()),
                    (Some(&c), _) => {
                        arg.push(match c {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            c => c,
                        });
                        i += 2;
                    }
                }
            }
            Some(&c) => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

/// Reads a `'...'` part starting after its opening quote; returns the index
/// after the closing quote.
fn single_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Result<usize, String> {
    loop {
        match line.get(i) {
            None => return Err(unbalanced()),
            Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            Some(b'\'') => return closing_quote(line, i + 1),
            Some(&c) => {
                arg.push(c);
                i += 1;
            }
        }
    }
}

/// The message for a quote that is never closed.
fn unbalanced() -> String {
    "unbalanced quotes".into()
}

/// After a closing quote (at `i - 1`) only a blank or the end of the line
/// may follow; returns `i`.
fn closing_quote(line: &[u8], i: usize) -> Result<usize, String> {
    match line.get(i) {
        Some(c) if !(c.is_ascii_whitespace() || *c == 0x0b) => {
            Err("a closing quote must be followed by a space".into())
        }
        _ => Ok(i),
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    fn ok(line: &str) -> Vec<Vec<u8>> {
        split(line.as_bytes()).unwrap()
    }

    fn v(words: &[&[u8]]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.to_vec()).collect()
    }

    #[test]
    fn splits_and_unquotes() {
        assert_eq!(
            ok("  set greeting \"hello world\" "),
            v(&[b"set", b"greeting", b"hello world"])
        );
        assert_eq!(
            ok(r#"set k "a\"b\\c\n\x41""#),
            v(&[b"set", b"k", b"a\"b\\c\nA"])
        );
        assert_eq!(ok(r"set k 'don\'t'"), v(&[b"set", b"k", b"don't"]));
        assert_eq!(ok(r"set k 'a\nb'"), v(&[b"set", b"k", b"a\\nb"]));
        assert_eq!(ok(r#"set "" v"#), v(&[b"set", b"", b"v"]));
        assert!(ok("").is_empty());
    }

    /// The cases below were checked against redis-cli 7.0 (Debian's
    /// redis-tools) on the same lines.
    #[test]
    fn binary_and_redis_cli_corner_cases() {
        // Any byte through \xHH, including NUL and invalid UTF-8.
        assert_eq!(
            ok(r#"set k "\x00\xff\xZZ""#),
            v(&[b"set", b"k", b"\x00\xffxZZ"])
        );
        assert_eq!(ok(r#"set s "a\x4""#), v(&[b"set", b"s", b"ax4"]));
        assert_eq!(ok(r#"set s "\X41\q""#), v(&[b"set", b"s", b"X41q"]));
        // A quote in the middle of an argument opens a quoted part.
        assert_eq!(ok(r#"set k a"b c""#), v(&[b"set", b"k", b"ab c"]));
        assert_eq!(ok("set k a'b c'"), v(&[b"set", b"k", b"ab c"]));
        // Non-ASCII text passes through unchanged.
        assert_eq!(ok("set k héllo"), v(&[b"set", b"k", "héllo".as_bytes()]));
        assert_eq!(ok("get\tk"), v(&[b"get", b"k"]));
    }

    #[test]
    fn rejects_broken_quoting() {
        assert_eq!(split(b"set k \"abc").unwrap_err(), "unbalanced quotes");
        assert_eq!(split(b"set k \"abc\\").unwrap_err(), "unbalanced quotes");
        assert_eq!(split(b"set k 'abc").unwrap_err(), "unbalanced quotes");
        assert_eq!(
            split(b"set k \"a\"b").unwrap_err(),
            "a closing quote must be followed by a space"
        );
        assert_eq!(
            split(b"set k 'x'y").unwrap_err(),
            "a closing quote must be followed by a space"
        );
    }
}
