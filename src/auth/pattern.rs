//! Room patterns: globs where `*` matches any run of characters (`:` included), used by the
//! token's `rooms` claim and by room classes. In a token's patterns `{sub}` stands for the
//! token's own subject and is expanded once, when the token is checked.

/// A compiled room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern as written (no expansion).
    pub fn new(text: &str) -> Pattern {
        Pattern(text.to_string())
    }

    /// A token pattern with `{sub}` replaced by `sub`. The subject is matched literally: a `*`
    /// inside it is escaped so it cannot widen the pattern.
    pub fn for_subject(text: &str, sub: &str) -> Pattern {
        let lit = sub.replace('\\', "\\\\").replace('*', "\\*");
        Pattern(text.replace("{sub}", &lit))
    }

    /// Does `room` match?
    pub fn matches(&self, room: &str) -> bool {
        glob(self.0.as_bytes(), room.as_bytes())
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Iterative glob match with `*` and `\` escapes; linear in practice (one backtrack point).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(b'\\') if p.get(pi + 1) == Some(&s[si]) => {
                pi += 2;
                si += 1;
                continue;
            }
            Some(&c) if c != b'\\' && c == s[si] => {
                pi += 1;
                si += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| Pattern::new(p).matches(s);
        assert!(m("chat:*", "chat:42"));
        assert!(m("chat:*", "chat:"));
        assert!(m("chat:*", "chat:a:b"));
        assert!(!m("chat:*", "chat"));
        assert!(!m("chat:*", "news:1"));
        assert!(m("*", "anything"));
        assert!(m("*:admin", "team:7:admin"));
        assert!(!m("*:admin", "team:7:admins"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("lobby", "lobby"));
        assert!(!m("lobby", "lobby2"));
        assert!(!m("", "x"));
    }

    #[test]
    fn subject_expands_literally() {
        let p = Pattern::for_subject("user:{sub}", "ada");
        assert!(p.matches("user:ada"));
        assert!(!p.matches("user:bob"));
        assert!(!p.matches("user:ada2"));
        // A subject cannot smuggle a wildcard in.
        let p = Pattern::for_subject("user:{sub}", "*");
        assert!(p.matches("user:*"));
        assert!(!p.matches("user:bob"));
        let p = Pattern::for_subject("dm:{sub}:*", "ada");
        assert!(p.matches("dm:ada:bob"));
        assert!(!p.matches("dm:bob:ada"));
    }
}
