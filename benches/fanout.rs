//! Hot path: local fan-out, `ShardCore::deliver_local` (reached through the `#[doc(hidden)]` hook
//! `shardcast::shard::bench::LocalFanout`), the loop that queues one encoded frame to every
//! member of a room on this shard.
//!
//! Measures one room of 1,000 socketless open connections and a 64-byte message (a 66-byte server
//! frame, shared by refcount): per iteration, `broadcast` then `drain` (every member's queue
//! emptied, as the writers would; no syscalls, no wakers registered). Throughput is deliveries,
//! one message queued to one member: 1,000 per broadcast. A second variant queues 16 broadcasts
//! before each drain, so queues hold several frames, as under a burst. A third sends the same 16
//! through the per-turn coalescing path (`enqueue_room` + `flush_all`), which hands each member
//! one 1,056-byte buffer instead of 16 frames.
//!
//! `max_buffered_bytes` is the default 1 MiB, far above 16 frames, so no member is ever dropped or
//! closed as a slow consumer and every broadcast reaches all 1,000.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::frame::{encode_server_frame, OpCode};
use shardcast::shard::bench::LocalFanout;

const MEMBERS: usize = 1_000;
/// Default `limits.max_buffered_bytes`.
const MAX_BUFFERED_BYTES: usize = 1 << 20;

fn fanout(c: &mut Criterion) {
    let frame: Bytes = encode_server_frame(OpCode::Text, false, &[b'x'; 64]);
    let mut g = c.benchmark_group("fanout/1000_members/64B");
    for per_drain in [1usize, 16] {
        g.throughput(Throughput::Elements((MEMBERS * per_drain) as u64));
        g.bench_function(format!("{per_drain}_broadcast_per_drain"), |b| {
            let mut f = LocalFanout::new(MEMBERS, MAX_BUFFERED_BYTES);
            b.iter(|| {
                for _ in 0..per_drain {
                    f.broadcast(black_box(&frame));
                }
                f.drain();
            })
        });
    }
    let per_drain = 16;
    g.throughput(Throughput::Elements((MEMBERS * per_drain) as u64));
    g.bench_function(format!("{per_drain}_coalesced_per_drain"), |b| {
        let mut f = LocalFanout::new(MEMBERS, MAX_BUFFERED_BYTES);
        b.iter(|| {
            f.broadcast_coalesced(black_box(&frame), per_drain);
            f.drain();
        })
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
