//! Hot path: client frame decoding, `shardcast::protocol::decoder::Decoder::next`.
//!
//! Measures draining a buffer (`BytesMut`) that holds many masked client frames back to back, as a
//! connection's reader does after a `read`: header parse, limit checks, one copy into a
//! ready-to-send server frame, in-place unmask, and (text) UTF-8 validation. Single-frame messages
//! of 64 B, 1 KiB and 64 KiB, binary and text, plus messages split into 16 fragments of 1 KiB
//! (the reassembly path). Each stream is about 256 KiB (4096, 256 or 4 frames; 16 fragmented
//! messages). Throughput is wire bytes consumed, headers included.
//!
//! Streams are built once; each iteration decodes a fresh copy made in criterion's untimed setup.
//! Dropping the decoded messages is part of the timed work, as it is in the server.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use shardcast::protocol::decoder::{Decoder, Event, Progress};
use shardcast::protocol::frame::{encode_client_frame, OpCode};

/// Mask from RFC 6455 §5.7.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Bytes of frames per stream (roughly): large enough to amortise setup, small enough for L2.
const STREAM_BYTES: usize = 256 * 1024;
/// Frame and message limits, as in the default config (1 MiB each).
const MAX_FRAME: usize = 1 << 20;
const MAX_MESSAGE: usize = 1 << 20;

/// ASCII payload (valid UTF-8, so it also serves the text case).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `count` single-frame messages of `len` bytes each.
fn single_frames(opcode: OpCode, len: usize) -> (Vec<u8>, usize) {
    let count = (STREAM_BYTES / len).max(1);
    let p = payload(len);
    let mut out = Vec::new();
    for _ in 0..count {
        out.extend_from_slice(&encode_client_frame(true, opcode, MASK, &p));
    }
    (out, count)
}

/// `count` messages, each split into `fragments` frames of `len` bytes.
fn fragmented(opcode: OpCode, fragments: usize, len: usize) -> (Vec<u8>, usize) {
    let count = (STREAM_BYTES / (fragments * len)).max(1);
    let p = payload(len);
    let mut out = Vec::new();
    for _ in 0..count {
        for i in 0..fragments {
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            out.extend_from_slice(&encode_client_frame(i + 1 == fragments, op, MASK, &p));
        }
    }
    (out, count)
}

/// Decode every message in `buf`; returns how many came out.
fn decode_all(dec: &mut Decoder, buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Progress::Event(ev) = dec.next(buf).expect("valid stream") {
        if let Event::Message(m) = ev {
            black_box(m.frame());
            n += 1;
        }
    }
    n
}

fn size_label(len: usize) -> String {
    match len {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

/// Check once, untimed, that `stream` decodes to `messages` messages and nothing is left over.
fn check(stream: &[u8], messages: usize) {
    let mut buf = BytesMut::from(stream);
    let mut dec = Decoder::new(MAX_FRAME, MAX_MESSAGE, false);
    assert_eq!(decode_all(&mut dec, &mut buf), messages);
    assert!(buf.is_empty() && !dec.in_message());
}

fn bench_stream(g: &mut BenchmarkGroup<'_, WallTime>, label: &str, stream: &[u8], messages: usize) {
    check(stream, messages);
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function(label, |b| {
        let mut dec = Decoder::new(MAX_FRAME, MAX_MESSAGE, false);
        b.iter_batched_ref(
            || BytesMut::from(stream),
            |buf| decode_all(&mut dec, buf),
            BatchSize::LargeInput,
        )
    });
}

fn frame_decode(c: &mut Criterion) {
    for (kind, opcode) in [("binary", OpCode::Binary), ("text", OpCode::Text)] {
        let mut g = c.benchmark_group(format!("frame_decode/{kind}"));
        for len in [64usize, 1024, 64 * 1024] {
            let (stream, n) = single_frames(opcode, len);
            bench_stream(&mut g, &size_label(len), &stream, n);
        }
        let (stream, n) = fragmented(opcode, 16, 1024);
        bench_stream(&mut g, "16x1KiB_fragments", &stream, n);
        g.finish();
    }
}

criterion_group!(benches, frame_decode);
criterion_main!(benches);
