//! Hot path: payload unmasking, `shardcast::protocol::frame::unmask` (fastwebsockets' word-at-a-time
//! XOR), which the decoder runs in place over every client payload.
//!
//! Measures unmasking 64 B, 1 KiB, 64 KiB and 1 MiB in place, throughput in payload bytes. Twice:
//! on a buffer start that is 8-byte aligned, and 2 bytes past it, as in the decoder, where the
//! payload follows a 2-, 4- or 10-byte server header in the same allocation (so the unaligned
//! head and tail are taken byte by byte).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::frame::unmask;

/// Mask from RFC 6455 §5.7.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn size_label(len: usize) -> String {
    match len {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

fn bench_unmask(c: &mut Criterion) {
    for (kind, offset) in [("aligned", 0usize), ("offset_2", 2)] {
        let mut g = c.benchmark_group(format!("unmask/{kind}"));
        for len in [64usize, 1024, 64 * 1024, 1024 * 1024] {
            let mut store = vec![0u8; len + offset + 8];
            let start = store.as_ptr().align_offset(8) + offset;
            let buf = &mut store[start..start + len];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = i as u8;
            }
            g.throughput(Throughput::Bytes(len as u64));
            // Unmasking is an XOR, so running it in place over and over is stable.
            g.bench_function(size_label(len), |b| {
                b.iter(|| unmask(black_box(&mut *buf), black_box(MASK)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_unmask);
criterion_main!(benches);
