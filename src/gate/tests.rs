//! Every routing and refusal outcome of the gate, on request heads as clients send them.

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn policy() -> Policy {
    Policy {
        max_header_bytes: 8192,
        max_info_bytes: 64,
        compression: Compression::default(),
        open_connections: 0,
        max_connections: 10,
        draining: false,
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
    assert_eq!(u.target, Target::Room("chat:42".into()));
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
fn envelope_upgrades_with_its_subprotocol_and_info() {
    let proto = "Sec-WebSocket-Protocol: chat, shardcast.v1.cbor\r\n";
    let u = upgrade(&upgrade_head("/ws?info=%7B%22n%22%3A1%7D", proto));
    match &u.target {
        Target::Envelope { format, info } => {
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
    let p = Policy {
        max_header_bytes: 256,
        ..policy()
    };
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
    assert_eq!(plan(&head("GET", "/", ""), &p), Ok(Plan::Status));
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
    let off = Policy {
        compression: Compression {
            enabled: false,
            ..Compression::default()
        },
        ..policy()
    };
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
