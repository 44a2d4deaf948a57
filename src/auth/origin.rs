//! Origin checks for browser upgrades (cross-site WebSocket hijacking): `[server]
//! allowed_origins` holds exact origins (`https://app.example.com`, `http://localhost:8080`) or
//! subdomain wildcards (`https://*.example.com`: any subdomain at any depth, not the bare
//! domain), compared case-insensitively.

/// Why an origin pattern was refused at config time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an origin like \"https://app.example.com\" or \"https://*.example.com\"")]
pub struct BadOrigin(pub String);

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `scheme://host[:port]`, lowercased.
    Exact(String),
    /// `scheme://*.domain[:port]`: scheme and the `.domain[:port]` suffix, lowercased.
    Subdomains {
        /// `https://`
        scheme: String,
        /// `.example.com`
        suffix: String,
    },
}

impl OriginPattern {
    /// Parse one entry of `allowed_origins`.
    pub fn parse(text: &str) -> Result<OriginPattern, BadOrigin> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || BadOrigin(text.to_string());
        let (scheme, rest) = t.split_once("://").ok_or_else(bad)?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let scheme = format!("{scheme}://");
        match rest.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Ok(OriginPattern::Subdomains {
                    scheme,
                    suffix: format!(".{domain}"),
                })
            }
            Some(_) => Err(bad()),
            None if rest.contains('*') => Err(bad()),
            None => Ok(OriginPattern::Exact(t)),
        }
    }

    /// Does the request's `Origin` match?
    pub fn matches(&self, origin: &str) -> bool {
        let o = origin.trim().to_ascii_lowercase();
        match self {
            OriginPattern::Exact(e) => o == *e,
            OriginPattern::Subdomains { scheme, suffix } => o
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| !sub.is_empty() && !sub.ends_with('.')),
        }
    }
}

/// The origin rule of the gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// `None`: any origin.
    pub allowed: Option<Vec<OriginPattern>>,
    /// Refuse requests without an `Origin` header.
    pub require: bool,
}

/// Why an origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRefusal {
    /// Not in the list.
    NotAllowed,
    /// No `Origin` header and `require_origin = true`.
    Missing,
}

impl Origins {
    /// Check a request's `Origin` header.
    pub fn check(&self, origin: Option<&str>) -> Result<(), OriginRefusal> {
        let Some(origin) = origin else {
            return if self.require {
                Err(OriginRefusal::Missing)
            } else {
                Ok(())
            };
        };
        match &self.allowed {
            Some(list) if !list.iter().any(|p| p.matches(origin)) => Err(OriginRefusal::NotAllowed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str], require: bool) -> Origins {
        Origins {
            allowed: Some(
                list.iter()
                    .map(|o| OriginPattern::parse(o).unwrap())
                    .collect(),
            ),
            require,
        }
    }

    #[test]
    fn allowlist() {
        let o = origins(&["https://app.example.com", "https://*.example.com"], false);
        assert_eq!(o.check(Some("https://app.example.com")), Ok(()));
        assert_eq!(o.check(Some("HTTPS://App.Example.com")), Ok(()));
        assert_eq!(o.check(Some("https://a.b.example.com")), Ok(()));
        let no = Err(OriginRefusal::NotAllowed);
        assert_eq!(o.check(Some("https://example.com")), no);
        assert_eq!(o.check(Some("http://app.example.com")), no);
        assert_eq!(o.check(Some("https://evil-example.com")), no);
        assert_eq!(o.check(Some("https://example.com.evil.net")), no);
        assert_eq!(o.check(Some("null")), no);
        assert_eq!(o.check(None), Ok(()));
        let strict = origins(&["https://app.example.com"], true);
        assert_eq!(strict.check(None), Err(OriginRefusal::Missing));
        let any = Origins::default();
        assert_eq!(any.check(Some("https://whatever")), Ok(()));
        let any_required = Origins {
            allowed: None,
            require: true,
        };
        assert_eq!(any_required.check(None), Err(OriginRefusal::Missing));
    }

    #[test]
    fn patterns_parse() {
        for bad in [
            "example.com",
            "https://",
            "https://a/b",
            "https://*",
            "https://a.*.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(OriginPattern::parse("http://localhost:8080").is_ok());
        let p = OriginPattern::parse("https://*.example.com:8443").unwrap();
        assert!(p.matches("https://a.example.com:8443"));
        assert!(!p.matches("https://a.example.com"));
    }
}
