//! HTTP/1.1 upgrade handshake (RFC 6455 §4.2): request head parsing and responses.

use base64::Engine;
use sha1::{Digest, Sha1};

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 64;

/// Why a request head was refused. Each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The head is larger than `max_header_bytes` or has too many headers (431).
    #[error("request header fields too large")]
    HeadTooLarge,
    /// Not parseable as HTTP/1.x (400).
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    /// Parsed, but not a valid WebSocket upgrade (400).
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (426).
    #[error("unsupported WebSocket version")]
    UnsupportedVersion,
}

impl HandshakeError {
    /// HTTP status code for the error response.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge => 431,
            HandshakeError::Malformed(_) | HandshakeError::BadUpgrade(_) => 400,
            HandshakeError::UnsupportedVersion => 426,
        }
    }
}

/// A parsed request head, reduced to what the gateway needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string (without `?`), if any.
    pub query: Option<String>,
    /// `Upgrade: websocket` and `Connection: upgrade` were both present.
    pub wants_upgrade: bool,
    /// `Sec-WebSocket-Key`, if present.
    pub key: Option<String>,
    /// `Sec-WebSocket-Version`, if present.
    pub version: Option<String>,
    /// `Sec-WebSocket-Protocol` offers, in order.
    pub protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` header values, verbatim.
    pub extensions: Vec<String>,
    /// HTTP minor version (1 for HTTP/1.1).
    pub http_minor: u8,
    /// `Authorization`, verbatim.
    pub authorization: Option<String>,
    /// `Content-Length`, when present and a valid number.
    pub content_length: Option<usize>,
    /// `Origin`, verbatim (browsers send it with every WebSocket upgrade).
    pub origin: Option<String>,
    /// `Cookie` header values, joined with `; `.
    pub cookie: Option<String>,
    /// `Forwarded` header values (RFC 7239), joined with `, `.
    pub forwarded: Option<String>,
    /// `X-Forwarded-For` header values, joined with `, `.
    pub x_forwarded_for: Option<String>,
    /// `Accept` header values, joined with `, `.
    pub accept: Option<String>,
    /// `Last-Event-ID` (an `EventSource` reconnecting to `/sse`).
    pub last_event_id: Option<String>,
}

/// Parse a request head from the front of `buf`.
/// `Ok(None)` means incomplete; `Ok(Some((req, n)))` means the head used `n` bytes and any bytes
/// after it belong to the WebSocket stream.
pub fn parse_request(
    buf: &[u8],
    max_header_bytes: usize,
) -> Result<Option<(Request, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_header_bytes {
                return Err(HandshakeError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Malformed("unparseable request head")),
    };
    if n > max_header_bytes {
        return Err(HandshakeError::HeadTooLarge);
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut fields = HeaderFields::default();
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HandshakeError::Malformed("non-UTF-8 header value"))?;
        fields.add(h.name, value)?;
    }
    let HeaderFields {
        upgrade,
        connection_upgrade,
        key,
        version,
        protocols,
        extensions,
        authorization,
        content_length,
        origin,
        cookie,
        forwarded,
        x_forwarded_for,
        accept,
        last_event_id,
    } = fields;
    Ok(Some((
        Request {
            method,
            path,
            query,
            wants_upgrade: upgrade && connection_upgrade,
            key,
            version,
            protocols,
            extensions,
            http_minor: req.version.unwrap_or(0),
            authorization,
            content_length,
            origin,
            cookie,
            forwarded,
            x_forwarded_for,
            accept,
            last_event_id,
        },
        n,
    )))
}

/// The headers [`parse_request`] keeps, collected one header at a time.
#[derive(Default)]
struct HeaderFields {
    upgrade: bool,
    connection_upgrade: bool,
    key: Option<String>,
    version: Option<String>,
    protocols: Vec<String>,
    extensions: Vec<String>,
    authorization: Option<String>,
    content_length: Option<usize>,
    origin: Option<String>,
    cookie: Option<String>,
    forwarded: Option<String>,
    x_forwarded_for: Option<String>,
    accept: Option<String>,
    last_event_id: Option<String>,
}

/// Append one header's `value` to a list kept as one string.
fn append(list: &mut Option<String>, sep: &str, value: &str) {
    let l = list.get_or_insert_with(String::new);
    if !l.is_empty() {
        l.push_str(sep);
    }
    l.push_str(value.trim());
}

impl HeaderFields {
    /// Take one header (`value` already checked to be UTF-8); other headers are ignored.
    fn add(&mut self, name: &str, value: &str) -> Result<(), HandshakeError> {
        if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            self.connection_upgrade |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if self.key.is_some() {
                return Err(HandshakeError::BadUpgrade("duplicate Sec-WebSocket-Key"));
            }
            self.key = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            self.version = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            self.protocols.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            self.extensions.push(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            self.authorization = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            if self.origin.is_some() {
                return Err(HandshakeError::Malformed("duplicate Origin"));
            }
            self.origin = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("cookie") {
            append(&mut self.cookie, "; ", value);
        } else if name.eq_ignore_ascii_case("forwarded") {
            append(&mut self.forwarded, ", ", value);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            append(&mut self.x_forwarded_for, ", ", value);
        } else if name.eq_ignore_ascii_case("accept") {
            append(&mut self.accept, ", ", value);
        } else if name.eq_ignore_ascii_case("last-event-id") {
            self.last_event_id = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| HandshakeError::Malformed("bad Content-Length"))?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(HandshakeError::Malformed("conflicting Content-Length"));
            }
            self.content_length = Some(n);
        }
        Ok(())
    }
}

impl Request {
    /// The value of cookie `name`, if sent.
    pub fn cookie_value(&self, name: &str) -> Option<&str> {
        self.cookie.as_deref()?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
    }

    /// The raw (still percent-encoded) value of query parameter `name`, if present.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    /// Check the upgrade headers (RFC 6455 §4.2.1) and return the `Sec-WebSocket-Accept` value.
    pub fn validate_upgrade(&self) -> Result<String, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::BadUpgrade("method must be GET"));
        }
        if self.http_minor < 1 {
            return Err(HandshakeError::BadUpgrade("HTTP/1.1 or later required"));
        }
        if !self.wants_upgrade {
            return Err(HandshakeError::BadUpgrade(
                "missing Upgrade: websocket / Connection: Upgrade",
            ));
        }
        let Some(key) = &self.key else {
            return Err(HandshakeError::BadUpgrade("missing Sec-WebSocket-Key"));
        };
        match base64::engine::general_purpose::STANDARD.decode(key) {
            Ok(raw) if raw.len() == 16 => {}
            _ => {
                return Err(HandshakeError::BadUpgrade(
                    "Sec-WebSocket-Key is not 16 base64-encoded bytes",
                ))
            }
        }
        match self.version.as_deref() {
            Some("13") => {}
            Some(_) => return Err(HandshakeError::UnsupportedVersion),
            None => return Err(HandshakeError::BadUpgrade("missing Sec-WebSocket-Version")),
        }
        Ok(accept_key(key))
    }
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The `101 Switching Protocols` response.
pub fn switching_protocols(accept: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// A complete HTTP response that closes the connection.
pub fn http_response(status: u16, content_type: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        reason = reason_phrase(status),
        len = body.len()
    )
    .into_bytes()
}

/// An HTTP/1.1 response with a byte body; `len` is the `Content-Length` (the body's length, or
/// the length a `HEAD` answer announces without sending it).
pub fn http_response_bytes(
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    len: usize,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra_headers}\r\n",
        reason = reason_phrase(status),
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A query parameter's value with `%XX` and `+` decoded; `None` for a bad escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Standard reason phrase.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        403 => "Forbidden",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /ws/lobby?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81";

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_and_keeps_trailing_bytes() {
        let (req, n) = parse_request(GOOD, 8192).unwrap().unwrap();
        assert_eq!(n, GOOD.len() - 1);
        assert_eq!(req.path, "/ws/lobby");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        assert_eq!(
            req.validate_upgrade().unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn incomplete_then_too_large() {
        assert_eq!(parse_request(&GOOD[..20], 8192), Ok(None));
        assert_eq!(
            parse_request(&GOOD[..100], 100),
            Err(HandshakeError::HeadTooLarge)
        );
    }

    #[test]
    fn bad_upgrades() {
        let cases: &[(&str, u16)] = &[
            ("GET /ws/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET /ws/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET /ws/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
            ("POST /ws/a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            ("GET /ws/a HTTP/1.1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
        ];
        for (text, status) in cases {
            let (req, _) = parse_request(text.as_bytes(), 8192).unwrap().unwrap();
            assert_eq!(
                req.validate_upgrade().unwrap_err().status(),
                *status,
                "{text}"
            );
        }
        assert!(matches!(
            parse_request(b"\x00\x01garbage\r\n\r\n", 8192),
            Err(HandshakeError::Malformed(_))
        ));
    }
}
