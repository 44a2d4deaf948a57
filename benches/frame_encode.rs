//! Hot path: server frame encoding, `shardcast::protocol::frame::encode_server_frame` and
//! `shardcast::protocol::frame::encode_close`.
//!
//! Measures building one unmasked server frame (header plus one copy of the payload into a fresh
//! `Bytes`) for binary payloads of 64 B, 1 KiB and 64 KiB, the path for frames the server
//! originates; throughput is bytes of encoded frame. Also a close frame with a code and a short
//! reason as the server sends them (slow consumer, shutdown, echoed close), in frames per second.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::close::CloseCode;
use shardcast::protocol::frame::{encode_close, encode_server_frame, server_header_len, OpCode};

fn size_label(len: usize) -> String {
    match len {
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode/server_frame");
    for len in [64usize, 1024, 64 * 1024] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes((server_header_len(len) + len) as u64));
        g.bench_function(size_label(len), |b| {
            b.iter(|| encode_server_frame(OpCode::Binary, false, black_box(&payload)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("frame_encode/close");
    g.throughput(Throughput::Elements(1));
    // The three closes the server sends: slow consumer, shutdown, and the echo of a client close.
    for (label, code, reason) in [
        ("1008_slow_consumer", CloseCode::POLICY, "slow consumer"),
        (
            "1001_server_shutting_down",
            CloseCode::GOING_AWAY,
            "server shutting down",
        ),
        ("1000_echo_no_reason", CloseCode::NORMAL, ""),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| encode_close(black_box(code), black_box(reason)))
        });
    }
    g.finish();
}

criterion_group!(benches, frame_encode);
criterion_main!(benches);
