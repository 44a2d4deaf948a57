//! Regression tests for two defects, against the real binary in a child process: the release
//! build aborts on a panic (`panic = "abort"`), and an abort must fail the test, not kill the
//! test binary.
//!
//! 1. `GET /api/rooms/presence` (the presence route with no room segment) sliced the path
//!    backwards and aborted the whole daemon.
//! 2. Replies queued through `push_control` (acks, presence, history pages, subscribe replays)
//!    did not count toward `limits.max_buffered_bytes`: a client sending `history` requests
//!    without reading grew the daemon's memory without bound.

mod common;

use std::io::{self, Write};
use std::time::{Duration, Instant};

use common::{connect_small_rcvbuf_with, http_request, ChildDaemon, Client, MASK};
use serde_json::{json, Value};
use shardcast::protocol::frame::{encode_client_frame, OpCode};

const KEY: &str = "defect-test-key";
const JSON: &str = "Sec-WebSocket-Protocol: shardcast.v1.json\r\n";

/// Send one API request (`METHOD PATH`) with the Bearer key; panics with the daemon's state
/// (exit status, last log lines) when no HTTP answer comes.
fn api(d: &mut ChildDaemon, method: &str, path: &str) -> (u16, String) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    match http_request(d.addr, &req) {
        Ok(r) => r,
        Err(e) => panic!("{method} {path}: no HTTP answer ({e}); {}", d.describe()),
    }
}

fn json_body(what: &str, body: &str) -> Value {
    serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{what}: body not JSON ({e}): {body:?}"))
}

/// Defect 1: `/api/rooms/presence` (no room segment) must be an ordinary 404, not an abort.
#[test]
fn api_presence_route_without_room_is_404_and_daemon_survives() {
    let mut d = ChildDaemon::spawn(
        "presence-route",
        &format!("[api]\nkey = \"{KEY}\"\n"),
        &["--shards", "1"],
    );

    // The key works and the route itself answers (so the 404 below is about the path).
    let (status, body) = api(&mut d, "GET", "/api/rooms/lobby/presence");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_body("presence", &body),
        json!({"members": [], "room": "lobby"})
    );

    // The defect: "rooms/presence" starts with "rooms/" and ends with "/presence", which
    // overlap; the room slice was `[6..5]`.
    for method in ["GET", "HEAD"] {
        let (status, body) = api(&mut d, method, "/api/rooms/presence");
        assert_eq!(
            status,
            404,
            "{method} /api/rooms/presence: {body}; {}",
            d.describe()
        );
        if method == "GET" {
            assert_eq!(
                json_body("not_found", &body)["error"],
                "not_found",
                "{body}"
            );
        }
    }

    // An empty room segment is a bad room name.
    let (status, body) = api(&mut d, "GET", "/api/rooms//presence");
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_body("bad_room", &body)["error"], "bad_room", "{body}");

    // And the daemon is still there.
    let (status, body) = match http_request(d.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") {
        Ok(r) => r,
        Err(e) => panic!("GET /healthz: {e}; {}", d.describe()),
    };
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(d.exit_status(Duration::ZERO).is_none(), "{}", d.describe());
}

/// Messages published to "big" before the flood, and their payload size.
const HISTORY: usize = 1000;
const PAYLOAD: usize = 1000;
/// `[history] max_page`: each `history` answer holds this many messages (~130 KiB of JSON).
const PAGE: usize = 128;
/// `history` requests each slow client sends without reading.
const REQUESTS: usize = 1000;
/// Allowed daemon RSS growth during the flood. The fixed daemon holds at most about
/// `max_buffered_bytes` (1 MiB by default) per slow client plus answers in flight; the old one
/// holds every answer (2 x 1000 x ~130 KiB, about 260 MiB).
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// An envelope JSON client's next frame, decoded (pings answered on the way).
fn recv_json(c: &mut Client, what: &str) -> Value {
    let f = c.recv().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(f.opcode, 0x1, "{what}: not a text frame: {f:?}");
    serde_json::from_slice(&f.payload).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

fn envelope_client(d: &ChildDaemon) -> (Client, u64) {
    let (mut c, head) = Client::connect_with(d.addr, "/ws", JSON);
    assert!(head.contains("shardcast.v1.json"), "{head}");
    let w = recv_json(&mut c, "welcome");
    assert_eq!(w["op"], "welcome", "{w}");
    (c, w["conn"].as_u64().unwrap())
}

/// The status page's slow-consumer close counter (0 if the page cannot be read).
fn slow_consumer_closes(d: &ChildDaemon) -> u64 {
    let Ok((_, page)) = http_request(d.addr, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n") else {
        return 0;
    };
    page.split("slow-consumer closes</td><td>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Defect 2: answers to requests count toward the high-water mark; a client that floods
/// `history` requests and never reads is closed as a slow consumer (1008) instead of growing
/// the daemon's memory, and the other members of the room lose nothing.
#[test]
fn unread_history_answers_hit_the_high_water_mark() {
    let mut d = ChildDaemon::spawn(
        "control-hwm",
        &format!("[history]\nmax_page = {PAGE}\n"),
        &["--shards", "2"],
    );

    // 1. Fill the history of "big" through the envelope protocol (one write), ack on the last.
    let (mut publisher, _) = envelope_client(&d);
    let mut batch = Vec::new();
    for i in 0..HISTORY {
        let data = format!("{i:06}{}", "x".repeat(PAYLOAD - 6));
        let mut p = json!({"op": "publish", "room": "big", "data": data});
        if i + 1 == HISTORY {
            p["id"] = json!("last");
        }
        batch.extend(encode_client_frame(
            true,
            OpCode::Text,
            MASK,
            p.to_string().as_bytes(),
        ));
    }
    publisher.stream.write_all(&batch).unwrap();
    let ack = recv_json(&mut publisher, "ack of the last publish");
    assert_eq!(
        (&ack["op"], &ack["id"]),
        (&json!("ack"), &json!("last")),
        "{ack}"
    );

    // 2. A well-behaved member of "big"; its own history request shows the answer size.
    let (mut member, _) = envelope_client(&d);
    member.send_text(r#"{"op":"subscribe","room":"big"}"#);
    let sub = recv_json(&mut member, "subscribed");
    assert_eq!(sub["op"], "subscribed", "{sub}");
    assert_eq!(sub["seq"], HISTORY as u64, "{sub}");
    member.send_text(r#"{"op":"history","room":"big"}"#);
    let f = member.recv().unwrap();
    let page: Value = serde_json::from_slice(&f.payload).unwrap();
    assert_eq!(page["op"], "history");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(PAGE));
    let answer_bytes = f.payload.len();
    assert!(
        answer_bytes > 100 << 10,
        "history answer is {answer_bytes} bytes"
    );

    // 3. Slow clients with a tiny receive buffer: one on each shard when the conn ids allow
    //    (so both the home shard's local reply and the cross-shard reply are covered).
    let mut slow: Vec<(Client, u64)> = Vec::new();
    for _ in 0..64 {
        if slow.len() == 2 {
            break;
        }
        let (mut c, head) = connect_small_rcvbuf_with(d.addr, "/ws", JSON, 4096);
        assert!(head.contains("shardcast.v1.json"), "{head}");
        let w = recv_json(&mut c, "welcome");
        let shard = w["conn"].as_u64().unwrap() & 1023;
        if slow.iter().all(|(_, s)| *s != shard) {
            slow.push((c, shard));
        }
    }
    if slow.len() < 2 {
        eprintln!("note: all slow clients landed on one shard");
    }

    // 4. The flood: each slow client sends its requests in one write and never reads.
    let request = encode_client_frame(
        true,
        OpCode::Text,
        MASK,
        br#"{"op":"history","room":"big"}"#,
    );
    let flood: Vec<u8> = request.repeat(REQUESTS);
    let before = d.rss_kib();
    let t0 = Instant::now();
    for (c, shard) in slow.iter_mut() {
        c.stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The daemon may stop reading or close: a send error or timeout ends the flood.
        if let Err(e) = c.stream.write_all(&flood) {
            eprintln!("flood from the client on shard {shard} stopped: {e}");
        }
    }
    // Wait for the daemon to be done with the flood: its RSS stopped growing (no new MiB for a
    // second) and it closed the slow clients, or 3 s passed; at most 15 s.
    let (mut peak, mut mark, mut grew) = (before, before, Instant::now());
    let mut closes = 0;
    let mut last_page = Instant::now() - Duration::from_secs(1);
    loop {
        let rss = d.rss_kib();
        peak = peak.max(rss);
        if rss > mark + 1024 {
            (mark, grew) = (rss, Instant::now());
        }
        if last_page.elapsed() >= Duration::from_millis(100) {
            closes = slow_consumer_closes(&d);
            last_page = Instant::now();
        }
        let quiet = grew.elapsed() >= Duration::from_secs(1);
        if (quiet && (closes as usize >= slow.len() || t0.elapsed() >= Duration::from_secs(3)))
            || t0.elapsed() >= Duration::from_secs(15)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{} slow clients x {REQUESTS} history requests, answers of {answer_bytes} bytes: daemon \
         RSS {before} KiB before, peak {peak} KiB (+{} MiB) within {:?}; slow-consumer closes: \
         {closes}",
        slow.len(),
        growth / 1024,
        t0.elapsed()
    );
    assert!(
        growth < RSS_BOUND_KIB,
        "daemon RSS grew by {growth} KiB ({before} -> {peak} KiB) for clients that do not read: \
         unread answers are not bounded by max_buffered_bytes"
    );

    // 5. The well-behaved member still gets what is published after the flood, next in seq.
    publisher.send_text(r#"{"op":"publish","room":"big","data":"after the flood","id":"after"}"#);
    member.set_timeout(Duration::from_secs(10));
    let m = recv_json(&mut member, "message published after the flood");
    assert_eq!(
        (&m["op"], &m["seq"], &m["data"]),
        (
            &json!("message"),
            &json!(HISTORY + 1),
            &json!("after the flood")
        ),
        "{m}"
    );
    let ack = recv_json(&mut publisher, "ack after the flood");
    assert_eq!(ack["id"], "after", "{ack}");

    // 6. Now the slow clients read: whole frames (history answers), then close 1008.
    for (c, shard) in slow.iter_mut() {
        c.set_timeout(Duration::from_secs(5));
        let start = Instant::now();
        let (mut frames, mut bytes) = (0usize, 0usize);
        let close =
            loop {
                assert!(
                start.elapsed() < Duration::from_secs(10),
                "client on shard {shard}: no close within 10 s ({frames} frames, {bytes} bytes \
                 read)"
            );
                let f =
                    match c.recv() {
                        Ok(f) => f,
                        Err(e) => panic!(
                    "client on shard {shard}: {e} after {frames} frames ({bytes} bytes), no \
                     close frame{}",
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                        " (the daemon never closed it)"
                    } else {
                        ""
                    }
                ),
                    };
                if f.opcode == 0x8 {
                    break f;
                }
                assert!(f.fin && f.opcode == 0x1, "client on shard {shard}: {f:?}");
                let v: Value = serde_json::from_slice(&f.payload)
                    .unwrap_or_else(|e| panic!("client on shard {shard}: frame {frames}: {e}"));
                assert_eq!(v["op"], "history", "client on shard {shard}");
                assert_eq!(v["messages"].as_array().map(Vec::len), Some(PAGE));
                frames += 1;
                bytes += f.payload.len();
            };
        eprintln!(
            "client on shard {shard}: {frames} history answers ({bytes} bytes), then close {:?} \
             after {:?}",
            close.close_code(),
            start.elapsed()
        );
        assert_eq!(close.close_code(), Some(1008), "client on shard {shard}");
        assert_eq!(
            &close.payload[2..],
            b"slow consumer",
            "client on shard {shard}"
        );
        c.send_frame(true, OpCode::Close, &[0x03, 0xf0]);
    }
    assert!(d.exit_status(Duration::ZERO).is_none(), "{}", d.describe());
}
