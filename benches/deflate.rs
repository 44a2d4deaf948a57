//! Hot path: permessage-deflate for a broadcast, in shared mode (compress once per broadcast)
//! against what a per-connection scheme pays (compress once per recipient), and the bounded
//! inflate of a client's compressed message.
//!
//! Payload: a 1 KiB JSON array of cursor updates (what a shared-cursor or dashboard room sends).
//! - `compress_once/1KiB_json`: one `Compressor::compress_frame` with reset (shared mode: the
//!   cost of one broadcast's compressed variant, whatever the room size). Throughput: bytes in.
//! - `per_recipient/1000x1KiB_json`: the same message compressed 1,000 times (a context per
//!   connection, as Node's `ws` does); Throughput: messages delivered, to set beside
//!   `compress_once` (1 message delivered to 1,000 recipients for one compression).
//! - `inflate/1KiB_json`: `Inflater::inflate` of that message, pooled-inflater style (reset).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::deflate::{Compressor, Inflater};
use shardcast::protocol::frame::OpCode;

fn json_1k() -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < 1000 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"user\":\"user-{i}\",\"x\":{},\"y\":{},\"color\":\"#ff8800\"}}",
            i * 3,
            i * 7
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

fn deflate(c: &mut Criterion) {
    let doc = json_1k();
    let mut g = c.benchmark_group("deflate");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    let mut comp = Compressor::new(1, 15);
    g.bench_function("compress_once/1KiB_json", |b| {
        b.iter(|| comp.compress_frame(OpCode::Text, black_box(&doc), true))
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("per_recipient/1000x1KiB_json", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                black_box(comp.compress_frame(OpCode::Text, black_box(&doc), true));
            }
        })
    });
    let mut z = Vec::new();
    Compressor::new(1, 15).compress(&doc, true, &mut z);
    let mut inf = Inflater::new(15);
    let mut out = BytesMut::with_capacity(4096);
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("inflate/1KiB_json", |b| {
        b.iter(|| {
            out.clear();
            inf.inflate(black_box(&z), 1 << 20, true, &mut out)
                .expect("valid");
        })
    });
    g.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);
