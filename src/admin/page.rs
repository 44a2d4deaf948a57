//! The live admin page (embedded: no build step, no CDN) and the JSON it streams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::health::{Health, Readiness};
use crate::metrics::Stats;

/// The page: connects to `/events` (same key) and draws the figures and a plot of the last
/// minutes.
pub const PAGE: &str = include_str!("page.html");

/// Rooms listed in a snapshot (the largest by members).
pub const TOP_ROOMS: usize = 50;

/// One `/events` line: per-shard counters, totals of the refusals, readiness, and the largest
/// rooms with their seq (the page turns counters and seqs into rates).
pub fn snapshot(stats: &Stats, health: &Health, rooms: &[(Arc<str>, u64, u64)]) -> String {
    let shards: Vec<serde_json::Value> = (0..stats.shard_count())
        .map(|i| {
            let s = stats.shard(i);
            let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            serde_json::json!({
                "connections": l(&s.connections),
                "messages_in": l(&s.messages_in),
                "deliveries": l(&s.deliveries),
                "rooms": l(&s.rooms),
            })
        })
        .collect();
    let t = stats.snapshot();
    let ready = match health.readiness() {
        Readiness::Ready => "ready",
        Readiness::Starting(_) => "starting",
        Readiness::Draining => "draining",
        Readiness::Deaf => "deaf",
    };
    let mut top: Vec<&(Arc<str>, u64, u64)> = rooms.iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP_ROOMS);
    let top: Vec<serde_json::Value> = top
        .iter()
        .map(|(r, m, seq)| serde_json::json!([&**r, m, seq]))
        .collect();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "t": unix_ms,
        "ready": ready,
        "shards": shards,
        "refusals": {
            "http_rejected": t.http_rejected,
            "auth_failures": t.auth_failures,
            "admission_refusals": t.admission_refusals,
            "rate_limited": t.rate_limited,
            "room_full": t.room_full,
            "forbidden": t.forbidden,
        },
        "slow": {
            "slow_consumer_closes": t.slow_consumer_closes,
            "dropped_frames": t.dropped_frames,
            "dropped_replies": t.dropped_replies,
        },
        "rooms": top,
    })
    .to_string()
}
