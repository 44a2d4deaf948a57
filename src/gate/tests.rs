//! Every routing and refusal outcome of the gate, on request heads as clients send them.

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A config for one test (leaked: tests are short-lived processes).
fn leak(cfg: Config) -> &'static Config {
    Box::leak(Box::new(cfg))
}

fn base() -> Config {
    Config {
        max_header_bytes: 8192,
        max_info_bytes: 64,
        max_connections: 10,
        ..Config::default()
    }
}

fn policy() -> Policy<'static> {
    with(base())
}

fn with(cfg: Config) -> Policy<'static> {
    Policy {
        cfg: leak(cfg),
        open_connections: 0,
        draining: false,
        client: None,
    }
}

fn head(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
}

fn upgrade_head(target: &str, extra: &str) -> String {
    let ws = format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}"
    );
    head("GET", target, &ws)
}

fn plan(text: &str, p: &Policy) -> Result<Plan, Rejection> {
    let (req, used) = parse_head(text.as_bytes(), p)
        .expect("head parses")
        .expect("head complete");
    assert_eq!(used, text.len());
    plan_upgrade(&req, p)
}

fn upgrade(text: &str) -> Upgrade {
    match plan(text, &policy()) {
        Ok(Plan::Upgrade(u)) => u,
        other => panic!("not an upgrade: {other:?}"),
    }
}

fn response(u: &Upgrade) -> String {
    String::from_utf8(u.response.clone()).unwrap()
}

#[test]
fn raw_room_upgrades() {
    let u = upgrade(&upgrade_head("/ws/chat:42", ""));
    assert_eq!(
        u.target,
        Target::Room {
            name: "chat:42".into(),
            may_publish: true
        }
    );
    let r = response(&u);
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    // RFC 6455 §1.3's example key and accept value.
    assert!(
        r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{r}"
    );
    assert!(!r.contains("Sec-WebSocket-Protocol"), "{r}");
    assert_eq!((u.deflate, u.shared_deflate), (None, false));
}

#[test]
fn bad_room_is_400() {
    for target in ["/ws/a%20b", "/ws/", "/ws/a/b"] {
        let e = plan(&upgrade_head(target, ""), &policy()).unwrap_err();
        assert_eq!(e, Rejection::BadRoom, "{target}");
        assert_eq!(e.status(), 400);
    }
    let long = format!("/ws/{}", "x".repeat(129));
    assert_eq!(
        plan(&upgrade_head(&long, ""), &policy()),
        Err(Rejection::BadRoom)
    );
}

#[test]
fn envelope_needs_a_subprotocol() {
    let e = plan(&upgrade_head("/ws", ""), &policy()).unwrap_err();
    assert_eq!((e.clone(), e.status()), (Rejection::NoSubprotocol, 400));
    let e = plan(
        &upgrade_head("/ws", "Sec-WebSocket-Protocol: chat\r\n"),
        &policy(),
    );
    assert_eq!(e, Err(Rejection::NoSubprotocol));
    let body = String::from_utf8(Rejection::NoSubprotocol.response()).unwrap();
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    assert!(
        body.contains("shardcast.v1.json") && body.contains("/ws/{room}"),
        "{body}"
    );
}

#[test]
fn sessions_are_short_safe_names() {
    let proto = "Sec-WebSocket-Protocol: shardcast.v1.json\r\n";
    let u = upgrade(&upgrade_head("/ws?session=ab_C-9", proto));
    assert!(
        matches!(&u.target, Target::Envelope { session: Some(s), .. } if &**s == "ab_C-9"),
        "{:?}",
        u.target
    );
    let long = format!("/ws?session={}", "a".repeat(65));
    for bad in [
        "/ws?session=",
        "/ws?session=a%20b",
        "/ws?session=a.b",
        long.as_str(),
    ] {
        let e = plan(&upgrade_head(bad, proto), &policy()).unwrap_err();
        assert_eq!(
            (e.clone(), e.status()),
            (Rejection::BadSession, 400),
            "{bad}"
        );
    }
}

#[test]
fn event_streams_open_with_a_plain_get() {
    let u = upgrade(&head("GET", "/sse?rooms=a,b&since=a:3&session=s1", ""));
    match &u.target {
        Target::Sse { subs, session, .. } => {
            assert_eq!(session.as_deref(), Some("s1"));
            assert_eq!(subs.len(), 2);
            assert_eq!((subs[0].room.as_str(), subs[0].since), ("a", Some(3)));
        }
        t => panic!("{t:?}"),
    }
    let r = response(&u);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/event-stream\r\n") && !r.contains("Content-Length"));
    // Last-Event-ID resumes its room.
    let u = upgrade(&head("GET", "/sse?rooms=a", "Last-Event-ID: a:41\r\n"));
    assert!(matches!(&u.target, Target::Sse { subs, .. } if subs[0].since == Some(41)));
    let e = plan(&head("GET", "/sse?rooms=bad!", ""), &policy()).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().starts_with("sse: bad room name"), "{e}");
    assert_eq!(
        plan(
            &head("POST", "/sse/1-0000000000000001", "Content-Length: 2\r\n"),
            &policy()
        ),
        Ok(Plan::SsePost)
    );
}

#[test]
fn envelope_upgrades_with_its_subprotocol_and_info() {
    let proto = "Sec-WebSocket-Protocol: chat, shardcast.v1.cbor\r\n";
    let u = upgrade(&upgrade_head("/ws?info=%7B%22n%22%3A1%7D", proto));
    match &u.target {
        Target::Envelope { format, info, .. } => {
            assert_eq!(*format, Format::Cbor);
            assert_ne!(**info, Data::Null);
        }
        t => panic!("{t:?}"),
    }
    assert!(response(&u).contains("Sec-WebSocket-Protocol: shardcast.v1.cbor\r\n"));
    let big = format!("/ws?info=%22{}%22", "a".repeat(100));
    let e = plan(&upgrade_head(&big, proto), &policy()).unwrap_err();
    assert!(
        matches!(e, Rejection::BadInfo(_)) && e.status() == 400,
        "{e:?}"
    );
}

#[test]
fn not_a_websocket_request() {
    // A plain GET of a room: no Upgrade headers.
    let e = plan(&head("GET", "/ws/lobby", ""), &policy()).unwrap_err();
    assert!(
        matches!(e, Rejection::Handshake(HandshakeError::BadUpgrade(_))),
        "{e:?}"
    );
    assert_eq!(e.status(), 400);
    // Wrong version: 426 with the version we speak.
    let v8 = upgrade_head("/ws/lobby", "").replace("Version: 13", "Version: 8");
    let e = plan(&v8, &policy()).unwrap_err();
    assert_eq!(e, Rejection::Handshake(HandshakeError::UnsupportedVersion));
    assert_eq!(e.status(), 426);
    let r = String::from_utf8(e.response()).unwrap();
    assert!(r.contains("Sec-WebSocket-Version: 13\r\n"), "{r}");
}

#[test]
fn oversized_and_malformed_heads() {
    let p = with(Config {
        max_header_bytes: 256,
        ..base()
    });
    let big = upgrade_head("/ws/lobby", &format!("X-Pad: {}\r\n", "p".repeat(300)));
    let e = parse_head(big.as_bytes(), &p).unwrap_err();
    assert_eq!(e, Rejection::Handshake(HandshakeError::HeadTooLarge));
    assert_eq!(e.status(), 431);
    // Incomplete but already over the limit: refused without waiting for the rest.
    let partial = "GET /ws/lobby HTTP/1.1\r\nX-Pad: ".to_string() + &"p".repeat(300);
    assert_eq!(
        parse_head(partial.as_bytes(), &p).unwrap_err().status(),
        431
    );
    // Incomplete and within it: wait.
    assert_eq!(parse_head(b"GET /ws/lobby HTTP/1.1\r\n", &p), Ok(None));
    let e = parse_head(b"\x00\x01 nonsense\r\n\r\n", &p).unwrap_err();
    assert!(
        matches!(e, Rejection::Handshake(HandshakeError::Malformed(_))),
        "{e:?}"
    );
    assert_eq!(e.status(), 400);
}

#[test]
fn admission_refuses_at_capacity_and_while_draining() {
    let full = Policy {
        open_connections: 10,
        ..policy()
    };
    for target in ["/ws/lobby", "/ws"] {
        let text = upgrade_head(target, "Sec-WebSocket-Protocol: shardcast.v1.json\r\n");
        let e = plan(&text, &full).unwrap_err();
        assert_eq!(
            (e.clone(), e.status()),
            (Rejection::AtCapacity, 503),
            "{target}"
        );
    }
    let draining = Policy {
        draining: true,
        ..policy()
    };
    let e = plan(&upgrade_head("/ws/lobby", ""), &draining).unwrap_err();
    assert_eq!((e.clone(), e.status()), (Rejection::Draining, 503));
    // A bad request stays a bad request at capacity: validation comes first.
    assert_eq!(
        plan(&upgrade_head("/ws/a!b", ""), &full),
        Err(Rejection::BadRoom)
    );
    assert!(String::from_utf8(Rejection::AtCapacity.response())
        .unwrap()
        .starts_with("HTTP/1.1 503"));
}

#[test]
fn api_routes_skip_websocket_admission() {
    let full = Policy {
        open_connections: 10,
        ..policy()
    };
    for (m, t) in [
        ("POST", "/api/publish"),
        ("GET", "/api/rooms"),
        ("GET", "/api/rooms/presence"),
        ("DELETE", "/api/anything"),
    ] {
        assert_eq!(plan(&head(m, t, ""), &full), Ok(Plan::Api), "{m} {t}");
    }
}

#[test]
fn pages_and_unknown_paths() {
    let p = policy();
    assert_eq!(plan(&head("GET", "/healthz", ""), &p), Ok(Plan::Health));
    assert_eq!(plan(&head("HEAD", "/healthz", ""), &p), Ok(Plan::Health));
    assert_eq!(plan(&head("GET", "/status", ""), &p), Ok(Plan::Status));
    assert!(matches!(plan(&head("GET", "/", ""), &p), Ok(Plan::Asset(a)) if a.path == "/"));
    let e = plan(&head("GET", "/nope", ""), &p).unwrap_err();
    assert_eq!((e.clone(), e.status()), (Rejection::NotFound, 404));
    let e = plan(&head("POST", "/", ""), &p).unwrap_err();
    assert_eq!((e.clone(), e.status()), (Rejection::MethodNotAllowed, 405));
    assert!(String::from_utf8(e.response())
        .unwrap()
        .contains("Allow: GET\r\n"));
}

#[test]
fn deflate_is_negotiated_when_enabled() {
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let u = upgrade(&upgrade_head("/ws/lobby", offer));
    assert!(u.deflate.is_some() && u.shared_deflate);
    assert!(response(&u).contains("Sec-WebSocket-Extensions: permessage-deflate"));
    // A client asking for a smaller server window gets plain broadcasts (still valid).
    let small = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let u = upgrade(&upgrade_head("/ws/lobby", small));
    assert!(u.deflate.is_some() && !u.shared_deflate);
    let off = with(Config {
        compression: Compression {
            enabled: false,
            ..Compression::default()
        },
        ..base()
    });
    match plan(&upgrade_head("/ws/lobby", offer), &off) {
        Ok(Plan::Upgrade(u)) => assert!(u.deflate.is_none() && !response(&u).contains("Ext")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejections_have_labels() {
    let all = [
        Rejection::Handshake(HandshakeError::HeadTooLarge),
        Rejection::NoSubprotocol,
        Rejection::BadRoom,
        Rejection::BadInfo("x".into()),
        Rejection::MethodNotAllowed,
        Rejection::NotFound,
        Rejection::AtCapacity,
        Rejection::Draining,
    ];
    let labels: std::collections::HashSet<_> = all.iter().map(Rejection::as_str).collect();
    assert_eq!(labels.len(), all.len());
}

mod auth {
    use super::*;
    use crate::auth::origin::{OriginPattern, Origins};
    use crate::auth::token::{KeySource, Verifier};
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"gate-test-secret-0123456789abcdef";

    fn jwt_cfg() -> Config {
        let src = KeySource {
            hs256_secret: Some(SECRET.to_vec()),
            leeway: std::time::Duration::from_secs(0),
            ..KeySource::default()
        };
        let mut c = base();
        c.auth.verifier = Some(Arc::new(Verifier::new(&src).unwrap()));
        c.auth.token_cookie = Some("sc".into());
        c
    }

    fn now() -> u64 {
        crate::heartbeat::unix_now()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn ada(rooms: Option<serde_json::Value>) -> String {
        let mut c = serde_json::json!({"sub": "ada", "exp": now() + 60, "info": {"n": 1}});
        if let Some(r) = rooms {
            c["rooms"] = r;
        }
        token(c)
    }

    #[test]
    fn token_sources_in_order() {
        let p = with(jwt_cfg());
        let t = ada(None);
        let header = format!("Authorization: Bearer {t}\r\n");
        assert!(matches!(
            plan(&upgrade_head("/ws/lobby", &header), &p),
            Ok(Plan::Upgrade(_))
        ));
        let q = format!("/ws/lobby?token={t}");
        assert!(matches!(
            plan(&upgrade_head(&q, ""), &p),
            Ok(Plan::Upgrade(_))
        ));
        let cookie = format!("Cookie: a=b; sc={t}\r\n");
        let u = match plan(&upgrade_head("/ws/lobby", &cookie), &p) {
            Ok(Plan::Upgrade(u)) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(u.identity.as_ref().map(|i| &*i.sub), Some("ada"));
        let lower = format!("Authorization: bearer {t}\r\n");
        assert!(
            matches!(
                plan(&upgrade_head("/ws/lobby", &lower), &p),
                Ok(Plan::Upgrade(_))
            ),
            "the scheme is case-insensitive"
        );
        // The header wins: a bad header token is not retried with the query.
        let both = "Authorization: Bearer x.y.z\r\n";
        let e = plan(&upgrade_head(&q, both), &p).unwrap_err();
        assert_eq!(e, Rejection::Unauthorized(AuthError::Malformed));
    }

    #[test]
    fn refusals_are_401_with_the_reason() {
        let p = with(jwt_cfg());
        let e = plan(&upgrade_head("/ws/lobby", ""), &p).unwrap_err();
        assert_eq!(e, Rejection::Unauthorized(AuthError::Missing));
        let r = String::from_utf8(e.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(
            r.contains("WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"),
            "{r}"
        );
        assert!(r.ends_with("token missing\n"), "{r}");
        let cases = [
            (
                token(serde_json::json!({"sub": "a", "exp": now() - 10})),
                AuthError::Expired,
            ),
            (
                token(serde_json::json!({"sub": "a", "exp": now() + 60, "nbf": now() + 30})),
                AuthError::NotYetValid,
            ),
            (
                token(serde_json::json!({"exp": now() + 60})),
                AuthError::MissingClaim("sub"),
            ),
            (
                token(serde_json::json!({"sub": "a"})),
                AuthError::MissingClaim("exp"),
            ),
            (
                token(serde_json::json!({"sub": "a", "exp": now() + 60, "info": "x".repeat(2000)})),
                AuthError::InfoTooLarge,
            ),
            ("garbage".to_string(), AuthError::Malformed),
        ];
        for (t, want) in cases {
            let h = format!("Authorization: Bearer {t}\r\n");
            assert_eq!(
                plan(&upgrade_head("/ws/lobby", &h), &p),
                Err(Rejection::Unauthorized(want.clone())),
                "{want:?}"
            );
        }
        // Signed with another secret.
        let other = encode(
            &Header::default(),
            &serde_json::json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        let h = format!("Authorization: Bearer {other}\r\n");
        let e = plan(&upgrade_head("/ws/lobby", &h), &p).unwrap_err();
        assert_eq!(e, Rejection::Unauthorized(AuthError::BadSignature));
        // alg none is never allowed.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        let h = format!("Authorization: Bearer {none}\r\n");
        let e = plan(&upgrade_head("/ws/lobby", &h), &p).unwrap_err();
        assert_eq!(e, Rejection::Unauthorized(AuthError::AlgorithmNotAllowed));
    }

    #[test]
    fn raw_rooms_need_subscribe_and_carry_publish() {
        let p = with(jwt_cfg());
        let t = ada(Some(
            serde_json::json!({"subscribe": ["chat:*", "user:{sub}"], "publish": ["chat:*"]}),
        ));
        let h = format!("Authorization: Bearer {t}\r\n");
        let room = |r: &str| plan(&upgrade_head(&format!("/ws/{r}"), &h), &p);
        match room("chat:1") {
            Ok(Plan::Upgrade(u)) => assert!(matches!(
                u.target,
                Target::Room {
                    may_publish: true,
                    ..
                }
            )),
            other => panic!("{other:?}"),
        }
        match room("user:ada") {
            Ok(Plan::Upgrade(u)) => assert!(matches!(
                u.target,
                Target::Room {
                    may_publish: false,
                    ..
                }
            )),
            other => panic!("{other:?}"),
        }
        let e = room("user:bob").unwrap_err();
        assert_eq!((e.clone(), e.status()), (Rejection::RoomNotAllowed, 403));
        // The token's info replaces ?info= on /ws.
        let proto = format!("{h}Sec-WebSocket-Protocol: shardcast.v1.json\r\n");
        match plan(&upgrade_head("/ws?info=%22q%22", &proto), &p) {
            Ok(Plan::Upgrade(Upgrade {
                target: Target::Envelope { info, .. },
                ..
            })) => assert_ne!(*info, Data::Text("q".into())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn origins() {
        let mut c = base();
        c.origins = Origins {
            allowed: Some(vec![
                OriginPattern::parse("https://app.example.com").unwrap(),
                OriginPattern::parse("https://*.example.com").unwrap(),
            ]),
            require: false,
        };
        let p = with(c.clone());
        let o = |origin: &str| {
            plan(
                &upgrade_head("/ws/lobby", &format!("Origin: {origin}\r\n")),
                &p,
            )
        };
        assert!(o("https://app.example.com").is_ok());
        assert!(o("https://a.b.example.com").is_ok());
        let e = o("https://example.com").unwrap_err();
        assert_eq!((e.clone(), e.status()), (Rejection::OriginNotAllowed, 403));
        assert_eq!(
            o("http://app.example.com"),
            Err(Rejection::OriginNotAllowed)
        );
        assert!(plan(&upgrade_head("/ws/lobby", ""), &p).is_ok());
        c.origins.require = true;
        let strict = with(c);
        let e = plan(&upgrade_head("/ws/lobby", ""), &strict).unwrap_err();
        assert_eq!((e.clone(), e.status()), (Rejection::OriginRequired, 403));
    }
}

/// A policy that admits connection `uid` from `peer` against `adm`, with `cfg`.
fn from<'a>(cfg: &'static Config, adm: &'a Arc<Admission>, peer: &str, uid: u64) -> Policy<'a> {
    Policy {
        cfg,
        open_connections: 0,
        draining: false,
        client: Some(Client {
            admission: adm,
            peer: peer.parse().unwrap(),
            conn: Holder {
                shard: crate::ids::ShardId(0),
                id: crate::ids::ConnId(uid as usize),
                uid,
            },
            jitter: 0.5,
        }),
    }
}

#[test]
fn admission_per_ip_cap_gives_429_with_retry_after() {
    let mut cfg = base();
    cfg.admission.max_connections_per_ip = Some(1);
    let cfg = leak(cfg);
    let adm = Arc::new(Admission::default());
    let first = plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "127.0.0.2", 1),
    );
    assert!(matches!(first, Ok(Plan::Upgrade(_))), "{first:?}");
    let e = plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "127.0.0.2", 2),
    )
    .unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(e.as_str(), "ip_connections");
    let text = String::from_utf8(e.response()).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nRetry-After: 2\r\n"),
        "1 s + jitter 0.5 of 2: {text}"
    );
    assert!(
        text.ends_with("too many connections from this address\n"),
        "{text}"
    );
    // Another address is its own count; the API is not admission-controlled.
    assert!(plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "127.0.0.3", 3)
    )
    .is_ok());
    assert_eq!(
        plan(
            &head("GET", "/api/rooms", ""),
            &from(cfg, &adm, "127.0.0.2", 4)
        ),
        Ok(Plan::Api)
    );
    // The first connection closes: its ticket goes, and the address may connect again.
    drop(first);
    assert!(plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "127.0.0.2", 5)
    )
    .is_ok());
}

#[test]
fn admission_global_rate_gives_503_and_comes_before_the_token() {
    let mut cfg = base();
    cfg.admission.handshakes = Some(crate::admission::Rate {
        per_second: 0.5,
        burst: 1,
    });
    let src = crate::auth::token::KeySource {
        hs256_secret: Some(b"secret".to_vec()),
        ..Default::default()
    };
    cfg.auth.verifier = Some(Arc::new(crate::auth::Verifier::new(&src).unwrap()));
    let cfg = leak(cfg);
    let adm = Arc::new(Admission::default());
    let e = plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "10.0.0.1", 1),
    )
    .unwrap_err();
    assert_eq!(
        e.status(),
        401,
        "the first one is charged, then checked: no token"
    );
    let e = plan(
        &upgrade_head("/ws/lobby", ""),
        &from(cfg, &adm, "10.0.0.2", 2),
    )
    .unwrap_err();
    assert_eq!((e.status(), e.as_str()), (503, "handshake_rate"));
    let text = String::from_utf8(e.response()).unwrap();
    // 2 s to the next token, plus jitter 0.5 of 0..=2 more.
    assert!(text.contains("\r\nRetry-After: 3\r\n"), "{text}");
}

#[test]
fn admission_trusts_forwarding_headers_only_from_trusted_proxies() {
    let mut cfg = base();
    cfg.admission.max_connections_per_ip = Some(1);
    cfg.admission.trusted_proxies = Arc::from(vec!["127.0.0.1/32".parse().unwrap()]);
    let cfg = leak(cfg);
    let adm = Arc::new(Admission::default());
    let xff = |ip: &str| upgrade_head("/ws/lobby", &format!("X-Forwarded-For: {ip}\r\n"));
    // Through the proxy: one per forwarded client.
    let _a = plan(&xff("198.51.100.1"), &from(cfg, &adm, "127.0.0.1", 1)).unwrap();
    let _b = plan(&xff("198.51.100.2"), &from(cfg, &adm, "127.0.0.1", 2)).unwrap();
    assert_eq!(
        plan(&xff("198.51.100.1"), &from(cfg, &adm, "127.0.0.1", 3))
            .unwrap_err()
            .status(),
        429
    );
    // From an untrusted peer the header is ignored: the peer itself is counted.
    let _c = plan(&xff("198.51.100.3"), &from(cfg, &adm, "127.0.0.5", 4)).unwrap();
    assert_eq!(
        plan(&xff("198.51.100.4"), &from(cfg, &adm, "127.0.0.5", 5))
            .unwrap_err()
            .status(),
        429
    );
}
