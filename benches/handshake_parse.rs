//! Hot path: the HTTP upgrade handshake, `shardcast::protocol::handshake::parse_request` followed
//! by `Request::validate_upgrade` (which computes `Sec-WebSocket-Accept`: SHA-1 and base64).
//!
//! Measures one realistic request head as Chrome sends it (12 headers, about 600 bytes), in
//! handshakes per second: parse alone, validate alone (on a parsed request), and both together,
//! which is the per-connection cost paid at connect storms.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::handshake::parse_request;

/// A Chrome upgrade request, header order and values as captured from a real browser.
const CHROME_REQUEST: &[u8] = b"GET /ws?room=lobby HTTP/1.1\r\n\
Host: gateway.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// Default `limits.max_header_bytes`.
const MAX_HEADER_BYTES: usize = 8 * 1024;

fn handshake_parse(c: &mut Criterion) {
    // Check once, untimed, that the request is accepted and yields the RFC 6455 §1.3 answer.
    let (req, used) = parse_request(CHROME_REQUEST, MAX_HEADER_BYTES)
        .expect("valid request")
        .expect("complete request");
    assert_eq!(used, CHROME_REQUEST.len());
    assert_eq!(
        req.validate_upgrade().expect("valid upgrade"),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );

    let mut g = c.benchmark_group("handshake_parse/chrome");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(CHROME_REQUEST), MAX_HEADER_BYTES))
    });
    g.bench_function("validate_upgrade", |b| {
        b.iter(|| black_box(&req).validate_upgrade())
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let (req, _) = parse_request(black_box(CHROME_REQUEST), MAX_HEADER_BYTES)
                .expect("valid request")
                .expect("complete request");
            req.validate_upgrade()
        })
    });
    g.finish();
}

criterion_group!(benches, handshake_parse);
criterion_main!(benches);
