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
//! [`POLICIES`] (auth mode none or jwt, origins, room classes, compression modes; low 5 bits),
//! whether admission runs (0x20: a client on a trusted proxy's address, fresh admission state,
//! the policy plus [`ADMISSION`]) and whether the daemon is at capacity (0x40) or draining (0x80). When claims follow a NUL byte they are signed with
//! the jwt policies' HS256 secret and the token replaces every `@T` in the head, so the fuzzer
//! reaches the verifier's claim checks and the room grants, not only signature failures.
//! Properties: no panic; every response is well-formed HTTP (status line, `Name: value` header
//! lines without stray CR/LF, `Content-Length` equal to the body); a rejection's status line
//! matches `Rejection::status`; an upgrade in jwt mode always carries a verified identity, in
//! mode none never; an upgraded raw room has a valid name; the 101 names the subprotocol of an
//! envelope connection and the extension exactly when deflate was negotiated. `client_ip` (the
//! `Forwarded` / `X-Forwarded-For` reading) returns an untrusted peer itself, and for a trusted
//! one the peer or an address that is not a trusted proxy. With admission: an upgrade holds an
//! IP ticket; while it is open the same request is refused 429 `ip_connections`
//! (`max_connections_per_ip = 1`), and the same request from another, untrusted address is
//! refused for the same IP key, else in jwt mode is over `max_connections_per_user = 1`
//! (429 `user_connections`, or admitted evicting the first with `close_oldest`), else admitted.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use shardcast::admission::{client_ip, Admission, Holder, IpKey, Refusal};
use shardcast::config::Config;
use shardcast::gate::{self, Client, Plan, Policy, Rejection, Target};
use shardcast::ids::{ConnId, ShardId};
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

/// Appended to each of [`POLICIES`] when the policy byte has 0x20 (`{LIMIT}`: `close_oldest` for
/// policy 3, else `refuse_new`). No rates: they depend on the clock, the target must not.
pub const ADMISSION: &str = r#"
[admission]
max_connections_per_ip = 1
trusted_proxies = ["127.0.0.0/8", "::1", "10.0.0.0/8"]
max_connections_per_user = 1
on_user_limit = "{LIMIT}"
"#;

/// The peer of an admission run: a trusted proxy.
const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// Another client, not a proxy.
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

fn admission_policies() -> &'static [Config] {
    static CONFIGS: OnceLock<Vec<Config>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        POLICIES
            .iter()
            .enumerate()
            .map(|(i, toml)| {
                let limit = if i == 3 { "close_oldest" } else { "refuse_new" };
                let toml = format!("{toml}{}", ADMISSION.replace("{LIMIT}", limit));
                Config::from_toml(&toml).expect("fuzz admission policy is valid")
            })
            .collect()
    })
}

fn client(admission: &Arc<Admission>, peer: IpAddr, uid: u64, jitter: f64) -> Client<'_> {
    Client {
        admission,
        peer,
        conn: Holder {
            shard: ShardId(0),
            id: ConnId(uid as usize),
            uid,
        },
        jitter,
    }
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
    let admit = select & 0x20 != 0;
    let configs = if admit {
        admission_policies()
    } else {
        policies()
    };
    let cfg = &configs[usize::from(select & 0x1f) % configs.len()];
    let admission = Arc::new(Admission::default());
    let jitter = (fnv(data) % 1024) as f64 / 1024.0;
    let policy = Policy {
        cfg,
        open_connections: if select & 0x40 != 0 {
            cfg.max_connections
        } else {
            0
        },
        draining: select & 0x80 != 0,
        client: admit.then(|| client(&admission, PROXY, 1, jitter)),
    };
    let head = match rest.iter().position(|&b| b == 0) {
        Some(at) if at + 1 < rest.len() => with_token(&rest[..at], &rest[at + 1..]),
        Some(at) => rest[..at].to_vec(),
        None => rest.to_vec(),
    };
    match gate::parse_head(&head, &policy) {
        Ok(Some((req, n))) => {
            assert!(n <= head.len());
            check_client_ip(&req);
            let plan = gate::plan_upgrade(&req, &policy);
            check_plan(&req, &policy, &plan);
            if let (true, Ok(Plan::Upgrade(first))) = (admit, &plan) {
                check_admission(&req, &policy, first, &admission, jitter);
            }
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

/// `client_ip` over the request's forwarding headers, from a trusted and an untrusted peer.
fn check_client_ip(req: &Request) {
    let trusted = &admission_policies()[0].admission.trusted_proxies;
    let is_trusted = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        trusted.iter().any(|n| n.contains(&ip))
    };
    let (fwd, xff) = (req.forwarded.as_deref(), req.x_forwarded_for.as_deref());
    let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    for peer in [PROXY, OTHER, mapped, "::1".parse().unwrap()] {
        let ip = client_ip(peer, fwd, xff, trusted);
        if is_trusted(peer) {
            assert!(ip == peer || !is_trusted(ip), "{ip} from proxy {peer}");
        } else {
            assert_eq!(ip, peer, "the headers of an untrusted peer counted");
        }
    }
}

/// While `first` (admitted from [`PROXY`]) is open: the same request again, and from [`OTHER`].
fn check_admission(
    req: &Request,
    policy: &Policy,
    first: &gate::Upgrade,
    admission: &Arc<Admission>,
    jitter: f64,
) {
    assert!(first.tickets.ip.is_some(), "admitted without an IP ticket");
    assert_eq!(first.tickets.user.is_some(), first.identity.is_some());
    let again = gate::plan_upgrade(req, policy);
    assert!(
        matches!(
            again,
            Err(Rejection::Refused {
                refusal: Refusal::IpConnections,
                ..
            })
        ),
        "second connection from one IP: {again:?}"
    );
    check_rejection(again.as_ref().unwrap_err());
    let cfg = policy.cfg;
    let trusted = &cfg.admission.trusted_proxies;
    let (fwd, xff) = (req.forwarded.as_deref(), req.x_forwarded_for.as_deref());
    let first_ip = IpKey::of(client_ip(PROXY, fwd, xff, trusted));
    let other = Policy {
        client: Some(client(admission, OTHER, 2, jitter)),
        ..*policy
    };
    let plan = gate::plan_upgrade(req, &other);
    let close_oldest = cfg.admission.user_limit == shardcast::admission::UserLimit::CloseOldest;
    match &plan {
        Err(Rejection::Refused {
            refusal: Refusal::IpConnections,
            ..
        }) => assert_eq!(first_ip, IpKey::of(OTHER), "refused for another IP's count"),
        Err(Rejection::Refused {
            refusal: Refusal::UserConnections,
            ..
        }) => {
            assert_ne!(first_ip, IpKey::of(OTHER));
            assert!(first.identity.is_some() && !close_oldest);
        }
        Ok(Plan::Upgrade(up)) => {
            assert_ne!(first_ip, IpKey::of(OTHER));
            let evicts = first.identity.is_some() && close_oldest;
            let evicted = policy.client.map(|c| c.conn);
            assert_eq!(up.evict, evicted.filter(|_| evicts), "evict");
        }
        other => panic!("the same request from another address: {other:?}"),
    }
    if let Err(rejection) = &plan {
        check_rejection(rejection);
    }
}

fn check_plan(req: &Request, policy: &Policy, plan: &Result<Plan, Rejection>) {
    let jwt = policy.cfg.auth.verifier.is_some();
    match plan {
        Ok(Plan::Upgrade(up)) => {
            assert!(!policy.draining, "upgrade while draining");
            assert!(policy.open_connections < policy.cfg.max_connections);
            assert_eq!(up.identity.is_some(), jwt, "identity in jwt mode only");
            if let Target::Sse { subs, .. } = &up.target {
                // An event stream: a plain 200 with no length, no WebSocket headers.
                let head = check_response(&up.response, 200);
                assert!(head.contains("Content-Type: text/event-stream\r\n"));
                assert!(up.deflate.is_none() && !head.contains("Sec-WebSocket"));
                assert!(subs.iter().all(|s| valid_room_name(&s.room)));
                return;
            }
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
                Target::Sse { .. } => unreachable!("answered above"),
            }
        }
        Ok(Plan::SsePost) => {
            assert!(req.method == "POST" && req.path.starts_with("/sse/"));
        }
        Ok(Plan::Api | Plan::Health | Plan::Status) => {
            assert!(!req.path.starts_with("/ws/") && req.path != "/ws");
        }
        Ok(Plan::Asset(asset)) => {
            assert_eq!(asset.path, req.path);
            assert!(
                req.method == "GET" || req.method == "HEAD",
                "{}",
                req.method
            );
            assert!(
                policy.cfg.demo_pages || !asset.demo,
                "demo page {}",
                asset.path
            );
        }
        Err(rejection) => check_rejection(rejection),
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
