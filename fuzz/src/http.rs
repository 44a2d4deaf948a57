//! `handshake` and `gate`: the HTTP side of a connection, before any WebSocket state exists.
//!
//! `handshake` input: a request head as a client sends it (anything may follow it). It goes
//! through `protocol::handshake::parse_request`, `Request::validate_upgrade`, the cookie and query
//! helpers, permessage-deflate negotiation in both modes and subprotocol negotiation.
//! Properties: no panic; a complete head reports a length within the input and the limit; every
//! proper prefix of a complete head is "incomplete", never an error or another head (the reader
//! calls the parser on a growing buffer); a negotiated extension response is one header-safe
//! line that negotiates again as an offer; `Sec-WebSocket-Accept` is 28 base64 characters.
//!
//! `gate` input: `[policy byte][head][0x00 claims...]`. The policy byte picks one of
//! [`POLICIES`] (auth mode none or jwt, origins, room classes, compression modes) and whether
//! the daemon is draining or at capacity. When claims follow a NUL byte they are signed with
//! the jwt policies' HS256 secret and the token replaces every `@T` in the head, so the fuzzer
//! reaches the verifier's claim checks and the room grants, not only signature failures.
//! Properties: no panic; every response is well-formed HTTP (status line, `Name: value` header
//! lines without stray CR/LF, `Content-Length` equal to the body); a rejection's status line
//! matches `Rejection::status`; an upgrade in jwt mode always carries a verified identity, in
//! mode none never; an upgraded raw room has a valid name; the 101 names the subprotocol of an
//! envelope connection and the extension exactly when deflate was negotiated.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use shardcast::config::Config;
use shardcast::gate::{self, Plan, Policy, Rejection, Target};
use shardcast::protocol::deflate::{negotiate, DeflateMode, MAX_WINDOW_BITS, MIN_WINDOW_BITS};
use shardcast::protocol::envelope::Format;
use shardcast::protocol::handshake::{parse_request, Request};
use shardcast::protocol::room_name::valid_room_name;

use crate::{fnv, Rng};

/// `limits.max_header_bytes` by default.
const MAX_HEAD: usize = 8192;

/// The HS256 secret of the jwt policies (tokens in the corpus are signed with it).
pub const SECRET: &str = "shardcast-fuzz-secret";

/// The gate's policies, as TOML (the same path as a config file; no file is read).
pub const POLICIES: [&str; 5] = [
    // 0: the defaults (mode none, shared compression).
    "",
    // 1: mode none with room classes, an origin list, dedicated compression, small info.
    r#"
[server]
allowed_origins = ["https://app.shardcast.test", "https://*.example.com"]
require_origin = true
[limits]
max_header_bytes = 2048
[compression]
mode = "dedicated"
[envelope]
max_info_bytes = 64
[[rooms.class]]
match = "news:*"
anonymous_subscribe = true
anonymous_publish = false
[[rooms.class]]
match = "closed:*"
anonymous_subscribe = false
"#,
    // 2: jwt (HS256), token cookie, origins, room classes, raw_readonly = "drop".
    r#"
[server]
allowed_origins = ["https://app.shardcast.test"]
[auth]
mode = "jwt"
hs256_secret = "shardcast-fuzz-secret"
token_cookie = "sc_token"
raw_readonly = "drop"
[[rooms.class]]
match = "public:*"
anonymous_subscribe = true
[[rooms.class]]
match = "quiet:*"
presence = false
"#,
    // 3: jwt with audience, issuer, leeway, a custom query parameter, no compression.
    r#"
[auth]
mode = "jwt"
hs256_secret = "shardcast-fuzz-secret"
audience = "shardcast-tests"
issuer = "https://issuer.shardcast.test"
leeway = "1s"
token_query = "access_token"
algorithms = ["HS256"]
[compression]
enabled = false
"#,
    // 4: jwt, algorithms restricted to HS512 (HS256 tokens are refused as not allowed).
    r#"
[auth]
mode = "jwt"
hs256_secret = "shardcast-fuzz-secret"
algorithms = ["HS512"]
"#,
];

fn policies() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        POLICIES
            .iter()
            .map(|toml| Config::from_toml(toml).expect("fuzz policy is valid"))
            .collect()
    })
}

/// The `handshake` target.
pub fn handshake(data: &[u8]) {
    let full = parse_request(data, MAX_HEAD);
    match &full {
        Ok(Some((req, n))) => {
            assert!(*n <= data.len() && *n <= MAX_HEAD, "head of {n} bytes");
            let mut rng = Rng::new(fnv(data));
            let cuts = [n - 1, n / 2, rng.below(*n), rng.below(*n)];
            for cut in cuts {
                let prefix = parse_request(&data[..cut], MAX_HEAD);
                assert!(
                    matches!(prefix, Ok(None)),
                    "prefix of {cut} of a {n}-byte head: {prefix:?}"
                );
            }
            exercise(req);
        }
        Ok(None) => assert!(data.len() < MAX_HEAD, "incomplete at {} bytes", data.len()),
        Err(e) => {
            let _ = e.status();
        }
    }
}

/// Everything the gate does with a parsed request, besides routing.
fn exercise(req: &Request) {
    if let Ok(accept) = req.validate_upgrade() {
        assert_eq!(accept.len(), 28);
    }
    let _ = (req.cookie_value("sc_token"), req.query_value("token"));
    for mode in [DeflateMode::Shared, DeflateMode::Dedicated] {
        let Some((params, response)) = negotiate(&req.extensions, mode) else {
            continue;
        };
        assert!(header_safe(&response), "extension response {response:?}");
        assert!(response.starts_with("permessage-deflate"));
        for bits in [params.server_max_window_bits, params.client_max_window_bits] {
            assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits));
        }
        assert!(
            negotiate(std::slice::from_ref(&response), mode).is_some(),
            "our response {response:?} does not negotiate as an offer"
        );
    }
    let _ = Format::negotiate(&req.protocols);
}

/// A header value we may write: visible ASCII and spaces, no CR, LF or other controls.
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// The `gate` target.
pub fn gate(data: &[u8]) {
    let Some((&select, rest)) = data.split_first() else {
        return;
    };
    let configs = policies();
    let cfg = &configs[usize::from(select & 0x3f) % configs.len()];
    let policy = Policy {
        cfg,
        open_connections: if select & 0x40 != 0 {
            cfg.max_connections
        } else {
            0
        },
        draining: select & 0x80 != 0,
        client: None,
    };
    let head = match rest.iter().position(|&b| b == 0) {
        Some(at) if at + 1 < rest.len() => with_token(&rest[..at], &rest[at + 1..]),
        Some(at) => rest[..at].to_vec(),
        None => rest.to_vec(),
    };
    match gate::parse_head(&head, &policy) {
        Ok(Some((req, n))) => {
            assert!(n <= head.len());
            check_plan(&req, &policy, gate::plan_upgrade(&req, &policy));
        }
        Ok(None) => {}
        Err(rejection) => check_rejection(&rejection),
    }
}

/// `head` with every `@T` replaced by an HS256 token over `claims` (taken as they are: they need
/// not be JSON).
fn with_token(head: &[u8], claims: &[u8]) -> Vec<u8> {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
    else {
        return head.to_vec();
    };
    let token = format!("{message}.{signature}");
    let mut out = Vec::with_capacity(head.len() + token.len());
    let mut i = 0;
    while i < head.len() {
        if head[i..].starts_with(b"@T") {
            out.extend_from_slice(token.as_bytes());
            i += 2;
        } else {
            out.push(head[i]);
            i += 1;
        }
    }
    out
}

fn check_plan(req: &Request, policy: &Policy, plan: Result<Plan, Rejection>) {
    let jwt = policy.cfg.auth.verifier.is_some();
    match plan {
        Ok(Plan::Upgrade(up)) => {
            assert!(!policy.draining, "upgrade while draining");
            assert!(policy.open_connections < policy.cfg.max_connections);
            assert_eq!(up.identity.is_some(), jwt, "identity in jwt mode only");
            let head = check_response(&up.response, 101);
            assert_eq!(
                head.contains("\r\nSec-WebSocket-Extensions: "),
                up.deflate.is_some()
            );
            assert!(!up.shared_deflate || up.deflate.is_some());
            assert!(policy.cfg.compression.enabled || up.deflate.is_none());
            match &up.target {
                Target::Room { name, .. } => {
                    assert!(valid_room_name(name), "room {name:?}");
                    assert!(!head.contains("\r\nSec-WebSocket-Protocol: "));
                }
                Target::Envelope { format, .. } => {
                    let line = format!("\r\nSec-WebSocket-Protocol: {}\r\n", format.name());
                    assert!(head.contains(&line));
                }
            }
        }
        Ok(Plan::Api | Plan::Health | Plan::Status) => {
            assert!(!req.path.starts_with("/ws/") && req.path != "/ws");
        }
        Ok(Plan::Asset(asset)) => {
            assert_eq!(asset.path, req.path);
            assert!(req.method == "GET" || req.method == "HEAD", "{}", req.method);
            assert!(policy.cfg.demo_pages || !asset.demo, "demo page {}", asset.path);
        }
        Err(rejection) => check_rejection(&rejection),
    }
}

fn check_rejection(rejection: &Rejection) {
    let _ = rejection.as_str();
    check_response(&rejection.response(), rejection.status());
}

/// Parse a response we would send: the status, header lines without stray CR/LF, a
/// `Content-Length` that matches the body. Returns the head as text, each line ending in CRLF.
fn check_response(bytes: &[u8], status: u16) -> String {
    let text = std::str::from_utf8(bytes).expect("response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head ends");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "{status_line:?}"
    );
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(": ").expect("header line is `Name: value`");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert!(header_safe(value), "header {name}: {value:?}");
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().expect("Content-Length is a number"));
        }
    }
    match length {
        Some(n) => assert_eq!(n, body.len(), "Content-Length"),
        None => assert!(body.is_empty(), "a body without Content-Length"),
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let used = parsed.parse(bytes).expect("httparse reads our response");
    assert!(used.is_complete());
    assert_eq!(parsed.code, Some(status));
    format!("{head}\r\n")
}
