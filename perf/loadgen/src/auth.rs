//! `--token` / `--token-file`: bearer tokens sent in the upgrade request
//! (`Authorization: Bearer TOKEN`), one per connection, round-robin over the list.

/// A token must fit in an HTTP header value as is: visible ASCII, no spaces (a JWT is three
/// base64url parts joined by dots, so this never rejects a real one).
fn check(tok: &str) -> Result<(), String> {
    if tok.is_empty() {
        return Err("empty token".into());
    }
    if let Some(b) = tok.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(format!(
            "token contains byte 0x{b:02x} (only visible ASCII fits in a header)"
        ));
    }
    Ok(())
}

/// `--token TOKEN`.
pub fn single(tok: &str) -> Result<Vec<String>, String> {
    check(tok).map_err(|e| format!("--token: {e}"))?;
    Ok(vec![tok.to_string()])
}

/// `--token-file FILE`'s text: one token per line, surrounding whitespace (a `\r` included)
/// trimmed, blank lines skipped. At least one token.
pub fn parse_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let tok = line.trim();
        if tok.is_empty() {
            continue;
        }
        check(tok).map_err(|e| format!("line {}: {e}", n + 1))?;
        out.push(tok.to_string());
    }
    if out.is_empty() {
        return Err("no token in the file".into());
    }
    Ok(out)
}

/// The header line (CRLF included) for one token.
pub fn header(tok: &str) -> String {
    format!("Authorization: Bearer {tok}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines() {
        let t = parse_file("a.b.c\r\n\n  d.e.f  \n\ng.h.i").unwrap();
        assert_eq!(t, ["a.b.c", "d.e.f", "g.h.i"]);
        assert!(parse_file("\n \r\n").is_err());
        let e = parse_file("ok\nbad token\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_file("x\u{e9}y").is_err());
    }

    #[test]
    fn single_token() {
        assert_eq!(single("abc.def.ghi").unwrap(), ["abc.def.ghi"]);
        assert!(single("").is_err());
        assert!(single("a\r\nX-Injected: 1").is_err());
        assert_eq!(header("t"), "Authorization: Bearer t\r\n");
    }
}
