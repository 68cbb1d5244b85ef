//! Splits a REPL line into arguments, with redis-cli's quoting rules:
//!
//! - arguments are separated by spaces or tabs;
//! - `"..."` may contain spaces and the escapes `\"`, `\\`, `\n`, `\r`, `\t`,
//!   `\b`, `\a` and `\xHH` (any byte, so binary keys and values can be typed);
//! - `'...'` is literal except for `\'`;
//! - a closing quote must be followed by a space or the end of the line.
//!
//! Arguments are bytes rendered back into a `String` only when valid UTF-8;
//! a `\xHH` escape producing invalid UTF-8 is an error (the REPL works on
//! text), which is clearer than a silent replacement character.

/// Splits `line`; the error is the message printed after `(error) `.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return Ok(args);
        };
        let mut arg: Vec<u8> = Vec::new();
        match first {
            '"' => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(unbalanced()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(unbalanced()),
                            Some('n') => arg.push(b'\n'),
                            Some('r') => arg.push(b'\r'),
                            Some('t') => arg.push(b'\t'),
                            Some('b') => arg.push(8),
                            Some('a') => arg.push(7),
                            Some('x') => {
                                let hex: String = (0..2).filter_map(|_| chars.next()).collect();
                                match u8::from_str_radix(&hex, 16) {
                                    Ok(b) if hex.len() == 2 => arg.push(b),
                                    _ => return Err(format!("invalid escape '\\x{hex}'")),
                                }
                            }
                            Some(c) => push_char(&mut arg, c),
                        },
                        Some(c) => push_char(&mut arg, c),
                    }
                }
                closing_quote_ends_arg(&mut chars)?;
            }
            '\'' => {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(unbalanced()),
                        Some('\'') => break,
                        Some('\\') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            arg.push(b'\'');
                        }
                        Some(c) => push_char(&mut arg, c),
                    }
                }
                closing_quote_ends_arg(&mut chars)?;
            }
            _ => {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    push_char(&mut arg, c);
                }
            }
        }
        args.push(
            String::from_utf8(arg)
                .map_err(|_| "argument is not valid UTF-8 after unescaping".to_string())?,
        );
    }
}

/// The message for a quote that is never closed.
fn unbalanced() -> String {
    "unbalanced quotes".into()
}

/// Appends `c` as UTF-8.
fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// After a closing quote only a space or the end of the line may follow.
fn closing_quote_ends_arg(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<(), String> {
    match chars.peek() {
        None => Ok(()),
        Some(c) if c.is_whitespace() => Ok(()),
        Some(_) => Err("a closing quote must be followed by a space".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    fn ok(line: &str) -> Vec<String> {
        split(line).unwrap()
    }

    #[test]
    fn splits_and_unquotes() {
        assert_eq!(
            ok("  set greeting \"hello world\" "),
            ["set", "greeting", "hello world"]
        );
        assert_eq!(ok(r#"set k "a\"b\\c\n\x41""#), ["set", "k", "a\"b\\c\nA"]);
        assert_eq!(ok(r"set k 'don\'t'"), ["set", "k", "don't"]);
        assert_eq!(ok(r#"set "" v"#), ["set", "", "v"]);
        assert!(ok("").is_empty());
    }

    #[test]
    fn rejects_broken_quoting() {
        assert_eq!(split("set k \"abc").unwrap_err(), "unbalanced quotes");
        assert_eq!(
            split("set k \"a\"b").unwrap_err(),
            "a closing quote must be followed by a space"
        );
        assert_eq!(
            split(r#"set k "\xZZ""#).unwrap_err(),
            "invalid escape '\\xZZ'"
        );
        assert_eq!(
            split(r#"set k "\xff""#).unwrap_err(),
            "argument is not valid UTF-8 after unescaping"
        );
    }
}
