//! Integration tests: a real daemon in-process on port 0, real sockets, raw bytes; each test runs
//! on both monoio drivers (io_uring and epoll).

mod common;

use std::time::{Duration, Instant};

use common::{daemon, http_raw, wait_until, Client};
use shardcast::protocol::frame::OpCode;
use shardcast::shard::ShutdownMode;

both_drivers!(
    broadcast_reaches_room_across_shards_only,
    opcodes_are_preserved,
    fragmented_messages_are_reassembled,
    echo_to_sender_false_skips_sender,
    slow_consumer_close_policy,
    slow_consumer_drop_policy,
    room_class_drop_oldest,
    room_class_conflate,
    silent_client_is_pruned_by_heartbeat,
    oversized_message_gets_1009,
    invalid_utf8_gets_1007,
    protocol_violation_gets_1002,
    client_close_is_echoed,
    malformed_handshakes_are_refused,
    connection_limit_gives_503,
    slowloris_handshake_is_dropped,
    http_endpoints,
    shutdown_sends_1012_to_every_client,
    idle_writer_retires_and_comes_back,
    messages_before_a_bad_frame_are_delivered_first,
);

/// A valid message and a protocol violation in the same read: the message still reaches the
/// room (its sender included) before the close frame.
fn messages_before_a_bad_frame_are_delivered_first(driver: &str) {
    use std::io::Write;
    let d = daemon(driver, "");
    let mut a = Client::connect(d.local_addr(), "/ws/order");
    let mut b = Client::connect(d.local_addr(), "/ws/order");
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });
    let mut bytes = shardcast::protocol::frame::encode_client_frame(
        true,
        OpCode::Text,
        common::MASK,
        b"before",
    );
    bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']); // unmasked: 1002
    a.stream.write_all(&bytes).unwrap();
    let f = a.recv().unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (0x1, &b"before"[..]));
    assert_eq!(a.expect_close(), 1002);
    assert_eq!(b.recv().unwrap().payload, b"before");
    d.stop().unwrap();
}

/// A connection's writer task exits after ~2 s without output and is spawned again when a frame
/// is queued: delivery must not notice.
fn idle_writer_retires_and_comes_back(driver: &str) {
    let d = daemon(driver, "");
    let mut a = Client::connect(d.local_addr(), "/ws/quiet");
    let mut b = Client::connect(d.local_addr(), "/ws/quiet");
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });
    for round in 0..2 {
        a.send_text(&format!("round {round}"));
        assert_eq!(
            b.recv().unwrap().payload,
            format!("round {round}").as_bytes()
        );
        assert_eq!(
            a.recv().unwrap().payload,
            format!("round {round}").as_bytes()
        );
        if round == 0 {
            std::thread::sleep(Duration::from_millis(3500));
        }
    }
    d.stop().unwrap();
}

fn broadcast_reaches_room_across_shards_only(driver: &str) {
    let d = daemon(driver, "shards = 2\n");
    let addr = d.local_addr();
    let mut room_a: Vec<Client> = (0..24).map(|_| Client::connect(addr, "/ws/a")).collect();
    let mut room_b: Vec<Client> = (0..6).map(|_| Client::connect(addr, "/ws/b")).collect();
    wait_until(Duration::from_secs(5), "30 connections", || {
        d.stats().snapshot().connections == 30
    });
    let per_shard = d.stats().connections_per_shard();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards must hold members: {per_shard:?}"
    );

    // Every member of room a sends one message; every member receives all 24, in each
    // sender's order; room b receives nothing.
    for (i, c) in room_a.iter_mut().enumerate() {
        c.send_text(&format!("hello {i}"));
    }
    for c in room_a.iter_mut() {
        let mut got: Vec<String> = (0..24)
            .map(|_| {
                let f = c.recv().unwrap();
                assert_eq!(f.opcode, 0x1);
                String::from_utf8(f.payload).unwrap()
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..24).map(|i| format!("hello {i}")).collect();
        want.sort();
        assert_eq!(got, want);
    }
    for c in room_b.iter_mut() {
        c.assert_silent(Duration::from_millis(200));
    }
    d.stop().unwrap();
}

fn opcodes_are_preserved(driver: &str) {
    let d = daemon(driver, "shards = 2\n");
    let mut a = Client::connect(d.local_addr(), "/ws/op");
    let mut b = Client::connect(d.local_addr(), "/ws/op");
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });
    a.send_binary(&[0, 159, 146, 150, 255]);
    a.send_text("κόσμε");
    for c in [&mut a, &mut b] {
        let f = c.recv().unwrap();
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (0x2, &[0u8, 159, 146, 150, 255][..])
        );
        let f = c.recv().unwrap();
        assert_eq!((f.opcode, f.payload.as_slice()), (0x1, "κόσμε".as_bytes()));
    }
    d.stop().unwrap();
}

fn fragmented_messages_are_reassembled(driver: &str) {
    let d = daemon(driver, "");
    let mut a = Client::connect(d.local_addr(), "/ws/frag");
    let mut b = Client::connect(d.local_addr(), "/ws/frag");
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });
    a.send_frame(false, OpCode::Text, b"hel");
    a.send_frame(true, OpCode::Ping, b"mid"); // control frames may interleave
    a.send_frame(false, OpCode::Continuation, b"lo ");
    a.send_frame(true, OpCode::Continuation, "wörld".as_bytes());
    let pong = a.recv_frame().unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"mid"[..]));
    for c in [&mut a, &mut b] {
        let f = c.recv().unwrap();
        assert!(f.fin);
        assert_eq!(f.opcode, 0x1);
        assert_eq!(f.payload, "hello wörld".as_bytes());
    }
    d.stop().unwrap();
}

fn echo_to_sender_false_skips_sender(driver: &str) {
    let d = daemon(driver, "[rooms]\necho_to_sender = false\n");
    let mut a = Client::connect(d.local_addr(), "/ws/e");
    let mut b = Client::connect(d.local_addr(), "/ws/e");
    wait_until(Duration::from_secs(5), "2 connections", || {
        d.stats().snapshot().connections == 2
    });
    a.send_text("x");
    assert_eq!(b.recv().unwrap().payload, b"x");
    a.assert_silent(Duration::from_millis(200));
    d.stop().unwrap();
}

/// One publisher, several fast readers and one client that never reads (with a tiny kernel
/// receive buffer). The publisher stays at most `WINDOW` messages ahead of the slowest fast
/// reader, so only the slow client can cross the high-water mark. Every fast reader must see
/// every message, in order.
fn run_slow_consumer(driver: &str, policy: &str) -> (shardcast::server::ServerHandle, Client, u32) {
    run_slow_consumer_with(
        driver,
        &format!(
            "shards = 2\n[limits]\nmax_buffered_bytes = 524288\nslow_consumer = \"{policy}\"\nclose_timeout = \"30s\"\n"
        ),
    )
}

fn run_slow_consumer_with(
    driver: &str,
    cfg: &str,
) -> (shardcast::server::ServerHandle, Client, u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let d = daemon(driver, cfg);
    let addr = d.local_addr();
    let slow = Client::connect_small_rcvbuf(addr, "/ws/flood", 4096);
    let mut publisher = Client::connect(addr, "/ws/flood");
    let mut fast: Vec<Client> = (0..3).map(|_| Client::connect(addr, "/ws/flood")).collect();
    wait_until(Duration::from_secs(5), "5 connections", || {
        d.stats().snapshot().connections == 5
    });
    fast.push(Client::from_stream(publisher.stream.try_clone().unwrap())); // it reads its echoes
    const N: u32 = 1500;
    const WINDOW: u32 = 8;
    let progress: Arc<Vec<AtomicU32>> = Arc::new(fast.iter().map(|_| AtomicU32::new(0)).collect());
    let readers: Vec<_> = fast
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                for want in 0..N {
                    let f = c.recv().unwrap();
                    assert_eq!(f.payload.len(), 16384);
                    let got = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                    assert_eq!(got, want, "fast reader lost or reordered a message");
                    progress[k].store(want + 1, Ordering::Release);
                }
            })
        })
        .collect();
    let mut payload = vec![0u8; 16384];
    for i in 0..N {
        while progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
            + WINDOW
            < i
        {
            std::thread::yield_now();
        }
        payload[..4].copy_from_slice(&i.to_be_bytes());
        publisher.send_binary(&payload);
    }
    for r in readers {
        r.join().unwrap();
    }
    (d, slow, N)
}

fn slow_consumer_close_policy(driver: &str) {
    let (d, mut slow, _) = run_slow_consumer(driver, "close");
    assert!(d.stats().snapshot().slow_consumer_closes >= 1);
    // The slow client gets what was already in flight, then 1008.
    assert_eq!(slow.expect_close(), 1008);
    d.stop().unwrap();
}

/// Read what a formerly stalled client still gets (until 500 ms of silence), checking the
/// sequence numbers only grow; returns the last one and how many frames came.
fn read_in_order(slow: &mut Client, policy: &str) -> (Option<u32>, u64) {
    let mut last = None;
    let mut received = 0u64;
    slow.set_timeout(Duration::from_millis(500));
    while let Ok(f) = slow.recv() {
        let seq = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
        assert!(
            last.is_none_or(|l| seq > l),
            "{policy}: out of order: {seq} after {last:?}"
        );
        last = Some(seq);
        received += 1;
    }
    (last, received)
}

fn slow_consumer_drop_policy(driver: &str) {
    let (d, mut slow, n) = run_slow_consumer(driver, "drop");
    let dropped = d.stats().snapshot().dropped_frames;
    assert!(dropped > 0, "the slow client must have lost frames");
    assert_eq!(d.stats().snapshot().slow_consumer_closes, 0);
    // What it does get is in order, and it is still connected.
    let (_, received) = read_in_order(&mut slow, "drop");
    assert_eq!(received + dropped, n as u64);
    slow.set_timeout(Duration::from_secs(5));
    slow.send_text("still here");
    assert_eq!(slow.recv().unwrap().payload, b"still here");
    d.stop().unwrap();
}

/// A stalled client in a room whose class has the per-room policy `policy`: it is never closed,
/// loses frames, and once it reads it gets what is left in order, ending with the newest
/// message.
fn run_room_class_policy(driver: &str, policy: &str) -> (u64, u64) {
    let cfg = format!(
        "shards = 2\n[limits]\nmax_buffered_bytes = 524288\nclose_timeout = \"30s\"\n\
         [[rooms.class]]\nmatch = \"flood\"\nslow_consumer = \"{policy}\"\n"
    );
    let (d, mut slow, n) = run_slow_consumer_with(driver, &cfg);
    let dropped = d.stats().snapshot().dropped_frames;
    assert!(dropped > 0, "the slow client must have lost frames");
    assert_eq!(
        d.stats().snapshot().slow_consumer_closes,
        0,
        "{policy} never closes"
    );
    let (last, received) = read_in_order(&mut slow, policy);
    assert_eq!(
        last,
        Some(n - 1),
        "{policy}: the newest message is delivered"
    );
    slow.set_timeout(Duration::from_secs(5));
    slow.send_text("still here");
    assert_eq!(slow.recv().unwrap().payload, b"still here");
    d.stop().unwrap();
    (received, dropped)
}

fn room_class_drop_oldest(driver: &str) {
    let (received, _) = run_room_class_policy(driver, "drop_oldest");
    assert!(received > 1);
}

fn room_class_conflate(driver: &str) {
    let (received, dropped) = run_room_class_policy(driver, "conflate");
    assert!(received >= 1 && dropped > 0);
}

fn silent_client_is_pruned_by_heartbeat(driver: &str) {
    let d = daemon(
        driver,
        "[heartbeat]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n",
    );
    let addr = d.local_addr();
    let mut silent = Client::connect(addr, "/ws/hb");
    let mut alive = Client::connect(addr, "/ws/hb");
    let t0 = Instant::now();
    // The live client answers pings (recv() does) for a while; the silent one never does.
    let alive_thread = std::thread::spawn(move || {
        alive.set_timeout(Duration::from_millis(100));
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            match alive.recv() {
                Ok(f) => panic!("unexpected frame {f:?}"),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("live client was dropped: {e}"),
            }
        }
        alive
    });
    // The silent client sees pings, then the connection ends.
    let mut pings = 0;
    loop {
        match silent.recv_frame() {
            Ok(f) if f.opcode == 0x9 => pings += 1,
            Ok(f) => panic!("unexpected {f:?}"),
            Err(_) => break,
        }
    }
    let elapsed = t0.elapsed();
    assert!(pings >= 1, "no ping was sent");
    assert!(
        elapsed >= Duration::from_millis(390),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1200),
        "closed too late: {elapsed:?}"
    );
    let mut alive = alive_thread.join().unwrap();
    wait_until(Duration::from_secs(2), "counted", || {
        d.stats().snapshot().heartbeat_timeouts == 1
    });
    alive.set_timeout(Duration::from_secs(5));
    alive.send_text("ok");
    assert_eq!(alive.recv().unwrap().payload, b"ok");
    d.stop().unwrap();
}

fn oversized_message_gets_1009(driver: &str) {
    let d = daemon(
        driver,
        "[limits]\nmax_message_bytes = 1024\nmax_frame_bytes = 1024\n",
    );
    let mut c = Client::connect(d.local_addr(), "/ws/big");
    c.send_binary(&[0u8; 1025]);
    assert_eq!(c.expect_close(), 1009);
    // Also when the limit is crossed by fragments that are each small.
    let mut c = Client::connect(d.local_addr(), "/ws/big");
    c.send_frame(false, OpCode::Binary, &[]);
    for _ in 0..10 {
        c.send_frame(false, OpCode::Continuation, &[0u8; 200]);
    }
    assert_eq!(c.expect_close(), 1009);
    // Other clients are unaffected.
    let mut ok = Client::connect(d.local_addr(), "/ws/big");
    ok.send_binary(&[1u8; 1024]);
    assert_eq!(ok.recv().unwrap().payload.len(), 1024);
    d.stop().unwrap();
}

fn invalid_utf8_gets_1007(driver: &str) {
    let d = daemon(driver, "");
    let mut c = Client::connect(d.local_addr(), "/ws/u");
    c.send_frame(
        true,
        OpCode::Text,
        &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
        ],
    );
    assert_eq!(c.expect_close(), 1007);
    // Split across fragments.
    let mut c = Client::connect(d.local_addr(), "/ws/u");
    c.send_frame(false, OpCode::Text, &[0xce]);
    c.send_frame(true, OpCode::Continuation, &[0xff]);
    assert_eq!(c.expect_close(), 1007);
    d.stop().unwrap();
}

fn protocol_violation_gets_1002(driver: &str) {
    let d = daemon(driver, "");
    let mut c = Client::connect(d.local_addr(), "/ws/p");
    // Unmasked client frame.
    use std::io::Write;
    c.stream.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(c.expect_close(), 1002);
    let mut c = Client::connect(d.local_addr(), "/ws/p");
    c.send_frame(true, OpCode::Continuation, b"nothing to continue");
    assert_eq!(c.expect_close(), 1002);
    d.stop().unwrap();
}

fn client_close_is_echoed(driver: &str) {
    let d = daemon(driver, "");
    let mut c = Client::connect(d.local_addr(), "/ws/c");
    c.send_frame(true, OpCode::Close, &[0x0f, 0xa0, b'b', b'y', b'e']);
    assert_eq!(c.expect_close(), 4000);
    // ...and then the server closes the TCP connection.
    assert!(c.recv_frame().is_err());
    wait_until(Duration::from_secs(5), "connection released", || {
        d.stats().snapshot().connections == 0
    });
    d.stop().unwrap();
}

fn malformed_handshakes_are_refused(driver: &str) {
    let d = daemon(driver, "[limits]\nmax_header_bytes = 1024\n");
    let addr = d.local_addr();
    let no_key = "GET /ws/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let resp = http_raw(addr, no_key.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(!resp.contains("101"));
    let bad_room = common::upgrade_request("/ws/no%20spaces");
    assert!(http_raw(addr, bad_room.as_bytes()).starts_with("HTTP/1.1 400"));
    let long_room = common::upgrade_request(&format!("/ws/{}", "x".repeat(129)));
    assert!(http_raw(addr, long_room.as_bytes()).starts_with("HTTP/1.1 400"));
    let garbage = http_raw(addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let version = common::upgrade_request("/ws/a").replace("Version: 13", "Version: 8");
    let resp = http_raw(addr, version.as_bytes());
    assert!(
        resp.starts_with("HTTP/1.1 426") && resp.contains("Sec-WebSocket-Version: 13"),
        "{resp}"
    );
    let huge = format!("GET /ws/a HTTP/1.1\r\nX-Big: {}\r\n\r\n", "y".repeat(2000));
    assert!(http_raw(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    assert_eq!(d.stats().snapshot().upgrades, 0);
    d.stop().unwrap();
}

fn connection_limit_gives_503(driver: &str) {
    let d = daemon(driver, "shards = 2\n[limits]\nmax_connections = 3\n");
    let addr = d.local_addr();
    let clients: Vec<Client> = (0..3).map(|_| Client::connect(addr, "/ws/full")).collect();
    let resp = http_raw(addr, common::upgrade_request("/ws/full").as_bytes());
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    drop(clients);
    wait_until(Duration::from_secs(5), "slots freed", || {
        d.stats().snapshot().connections == 0
    });
    let _again = Client::connect(addr, "/ws/full");
    d.stop().unwrap();
}

fn slowloris_handshake_is_dropped(driver: &str) {
    let d = daemon(driver, "[limits]\nhandshake_timeout = \"300ms\"\n");
    let mut s = std::net::TcpStream::connect(d.local_addr()).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /ws/a HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 16];
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to drop the connection");
    assert!(t0.elapsed() < Duration::from_secs(2));
    wait_until(Duration::from_secs(2), "counted", || {
        d.stats().snapshot().handshake_timeouts == 1
    });
    d.stop().unwrap();
}

fn http_endpoints(driver: &str) {
    let d = daemon(driver, "");
    let addr = d.local_addr();
    let r = http_raw(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    let r = http_raw(addr, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("shardcast"),
        "{r}"
    );
    let r = http_raw(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // The embedded files: the demos' index at / and the JavaScript client.
    let r = http_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("/cursor") && r.contains("/chat"),
        "{r}"
    );
    let r = http_raw(
        addr,
        b"GET /client/shardcast.js HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("Content-Type: text/javascript"),
        "{r}"
    );
    let r = http_raw(addr, b"HEAD /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    d.stop().unwrap();
    // Without the demo pages, / is the status page and the demos are not found; the client stays.
    let d = daemon(driver, "[server]\ndemo_pages = false\n");
    let addr = d.local_addr();
    let r = http_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("<td>connections</td>"),
        "{r}"
    );
    let r = http_raw(addr, b"GET /cursor HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = http_raw(
        addr,
        b"GET /client/shardcast.js HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    d.stop().unwrap();
}

fn shutdown_sends_1012_to_every_client(driver: &str) {
    let d = daemon(driver, "shards = 2\n[shutdown]\ndrain_timeout = \"3s\"\n");
    let addr = d.local_addr();
    let mut clients: Vec<Client> = (0..20)
        .map(|i| Client::connect(addr, &format!("/ws/r{}", i % 3)))
        .collect();
    wait_until(Duration::from_secs(5), "20 connections", || {
        d.stats().snapshot().connections == 20
    });
    let t0 = Instant::now();
    d.shutdown(ShutdownMode::Graceful);
    for c in clients.iter_mut() {
        // Rolling drain: 1012, spread over 80 % of drain_timeout.
        assert_eq!(c.expect_close(), 1012);
        // Complete the close handshake like a browser would.
        c.send_frame(true, OpCode::Close, &[0x03, 0xf4]);
    }
    d.join().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "drain took {:?}",
        t0.elapsed()
    );
    // The listener is gone.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
