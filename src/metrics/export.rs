//! The Prometheus exposition (`/metrics` on the admin listener): every shard's counters read at
//! scrape time (relaxed loads, no lock on the shards' side) and encoded with the
//! `prometheus-client` crate, labelled `shard` (and `reason` where a counter has reasons), plus
//! process figures (RSS, open FDs), the I/O driver and the build.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{
    names, ShardStats, Stats, AUTH_REASONS, CLOSE_CODES, QUEUE_BUCKETS, SLOW_CONSUMER_POLICIES,
    WIRE_LABELS,
};

/// A per-shard counter or gauge: exported name (without the `shardcast_` prefix; counters
/// without their `_total`, which the encoder adds), help, and where it lives.
type Field = (&'static str, &'static str, fn(&ShardStats) -> &AtomicU64);

/// Counters, one series per shard.
const COUNTERS: &[Field] = &[
    (names::UPGRADES, "WebSocket upgrades completed", |s| {
        &s.upgrades
    }),
    (
        names::HTTP_REJECTED,
        "HTTP requests refused by the gate",
        |s| &s.http_rejected,
    ),
    (
        names::MESSAGES_IN,
        "Data messages received from clients",
        |s| &s.messages_in,
    ),
    (
        names::DELIVERIES,
        "Frames handed to clients by broadcasts",
        |s| &s.deliveries,
    ),
    (names::WRITE_CALLS, "Send ops (send/writev) made", |s| {
        &s.write_calls
    }),
    (
        names::DROPPED_FRAMES,
        "Broadcast frames dropped for slow consumers",
        |s| &s.dropped_frames,
    ),
    (
        names::DROPPED_REPLIES,
        "Replies dropped for clients over their high-water mark",
        |s| &s.dropped_replies,
    ),
    (
        names::SLOW_CONSUMER_CLOSES,
        "Connections closed 1008 as slow consumers",
        |s| &s.slow_consumer_closes,
    ),
    (
        names::HEARTBEAT_TIMEOUTS,
        "Connections dropped for heartbeat silence",
        |s| &s.heartbeat_timeouts,
    ),
    (
        names::HANDSHAKE_TIMEOUTS,
        "Connections dropped for not finishing the handshake in time",
        |s| &s.handshake_timeouts,
    ),
    (
        names::PROTOCOL_ERRORS,
        "Connections closed for a protocol violation",
        |s| &s.protocol_errors,
    ),
    (
        names::COMPRESSIONS,
        "Broadcasts compressed (shared permessage-deflate: once per broadcast)",
        |s| &s.compressions,
    ),
    (
        names::INFLATIONS,
        "Compressed client messages inflated",
        |s| &s.inflations,
    ),
    (
        names::ENVELOPE_ENCODINGS,
        "Envelope frames serialized (once per message per format)",
        |s| &s.envelope_encodings,
    ),
    (
        names::REFUSED_PUBLISHES,
        "Publishes refused by permissions",
        |s| &s.refused_publishes,
    ),
    (names::FORBIDDEN, "Requests refused as forbidden", |s| {
        &s.forbidden
    }),
    (
        names::TOKEN_EXPIRIES,
        "Connections closed 4001 at their token's expiry",
        |s| &s.token_expiries,
    ),
    (
        names::ROOM_FULL,
        "Joins refused by a room class's max_subscribers",
        |s| &s.room_full,
    ),
    (
        names::RATE_LIMITED,
        "Messages refused by limits.messages_per_second",
        |s| &s.rate_limited,
    ),
    (
        names::RECEIVED_BYTES,
        "Bytes received from WebSocket clients",
        |s| &s.bytes_in,
    ),
    (
        names::BROADCAST_SENT_BYTES,
        "Bytes of broadcast frames handed to connections",
        |s| &s.broadcast_bytes_out,
    ),
    (
        names::CROSS_SHARD_MESSAGES,
        "Messages sent to other shards",
        |s| &s.cross_shard_messages,
    ),
    (
        names::CROSS_SHARD_OVERFLOW,
        "Cross-shard messages that waited for room in a full inbox",
        |s| &s.cross_shard_overflow,
    ),
    (
        names::DEFLATE_INPUT_BYTES,
        "Payload bytes given to permessage-deflate",
        |s| &s.deflate_in_bytes,
    ),
    (
        names::DEFLATE_OUTPUT_BYTES,
        "Bytes permessage-deflate made of them",
        |s| &s.deflate_out_bytes,
    ),
    (
        names::DEDICATED_COMPRESSIONS,
        "Frames compressed once per recipient (dedicated deflate contexts)",
        |s| &s.dedicated_compressions,
    ),
    (
        names::SSE_ENCODINGS,
        "Broadcasts made into Server-Sent Events (once per message)",
        |s| &s.sse_encodings,
    ),
    (
        names::SSE_STREAMS,
        "Server-Sent Events streams opened",
        |s| &s.sse_streams,
    ),
    (
        names::SSE_POSTS,
        "Client operations posted to Server-Sent Events streams",
        |s| &s.sse_posts,
    ),
    (
        names::DUPLICATE_PUBLISHES,
        "Publishes not delivered again (a session's repeated publish id)",
        |s| &s.duplicate_publishes,
    ),
    (
        names::HISTORY_EVICTIONS,
        "Kept messages dropped by a room's size, byte cap or ttl",
        |s| &s.history_evictions,
    ),
];

/// Gauges, one series per shard.
const GAUGES: &[Field] = &[
    (names::CONNECTIONS, "Open WebSocket connections", |s| {
        &s.connections
    }),
    (names::ROOMS, "Rooms with members on the shard", |s| {
        &s.rooms
    }),
    (
        names::HISTORY_MESSAGES,
        "Messages kept for resume and history (rooms this shard is home for)",
        |s| &s.history_messages,
    ),
    (
        names::HISTORY_BYTES,
        "Payload bytes of the kept messages (rooms this shard is home for)",
        |s| &s.history_bytes,
    ),
    (
        names::PRESENCE_MEMBERS,
        "Presence entries of the rooms this shard is home for",
        |s| &s.presence_members,
    ),
];

/// What the process adds to the shards' counters.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// The I/O driver in use (`io_uring` or `epoll`).
    pub io_driver: &'static str,
}

#[derive(Debug)]
struct Scrape {
    stats: Stats,
    process: Process,
}

fn strip_total(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn shard_label(i: usize) -> [(&'static str, String); 1] {
    [("shard", i.to_string())]
}

impl Scrape {
    fn per_shard(&self, e: &mut DescriptorEncoder, f: &Field, counter: bool) -> std::fmt::Result {
        let (name, help, get) = f;
        let n = self.stats.shard_count();
        let load = |i| get(self.stats.shard(i)).load(Ordering::Relaxed);
        if counter {
            let mut m = e.encode_descriptor(
                strip_total(name),
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for i in 0..n {
                ConstCounter::new(load(i)).encode(m.encode_family(&shard_label(i))?)?;
            }
        } else {
            let mut m =
                e.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            for i in 0..n {
                ConstGauge::new(load(i) as i64).encode(m.encode_family(&shard_label(i))?)?;
            }
        }
        Ok(())
    }

    /// A counter with a `reason` label, summed over shards.
    fn by_reason(
        &self,
        e: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        reasons: &[&'static str],
        get: fn(&ShardStats, usize) -> u64,
    ) -> std::fmt::Result {
        self.by_label(e, (name, help), ("reason", reasons), get)
    }

    /// A counter with one label (`key`, one series per value), summed over shards.
    fn by_label(
        &self,
        e: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        (key, reasons): (&'static str, &[&'static str]),
        get: fn(&ShardStats, usize) -> u64,
    ) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            strip_total(name),
            help,
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (r, reason) in reasons.iter().enumerate() {
            let v: u64 = (0..self.stats.shard_count())
                .map(|i| get(self.stats.shard(i), r))
                .sum();
            ConstCounter::new(v).encode(m.encode_family(&[(key, *reason)])?)?;
        }
        Ok(())
    }

    fn sum(&self, get: impl Fn(&ShardStats) -> u64) -> u64 {
        (0..self.stats.shard_count())
            .map(|i| get(self.stats.shard(i)))
            .sum()
    }

    fn resumes_and_closes(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let c = |v: u64| ConstCounter::new(v);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = e.encode_descriptor(
            strip_total(names::RESUMES),
            "Subscribes with since/epoch, by whether they recovered",
            None,
            c(0).metric_type(),
        )?;
        c(self.sum(|s| l(&s.resumes_recovered)))
            .encode(m.encode_family(&[("recovered", "true")])?)?;
        c(self.sum(|s| l(&s.resumes_lost))).encode(m.encode_family(&[("recovered", "false")])?)?;
        let mut m = e.encode_descriptor(
            strip_total(names::CLOSES_SENT),
            "Close frames the server started, by code",
            None,
            c(0).metric_type(),
        )?;
        for (i, code) in CLOSE_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(["other".to_string()])
            .enumerate()
        {
            c(self.sum(|s| l(&s.closes_sent[i])))
                .encode(m.encode_family(&[("code", code.as_str())])?)?;
        }
        Ok(())
    }

    fn by_wire(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            names::CONNECTIONS_BY_WIRE,
            "Open connections by transport and wire format, sampled by the sweep",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (i, (transport, wire)) in WIRE_LABELS.iter().enumerate() {
            let v = self.sum(|s| s.connections_by_wire[i].load(Ordering::Relaxed));
            ConstGauge::new(v as i64)
                .encode(m.encode_family(&[("transport", *transport), ("wire", *wire)])?)?;
        }
        Ok(())
    }

    fn queue_histogram(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts: Vec<u64> = (0..=QUEUE_BUCKETS.len())
            .map(|i| self.sum(|s| l(&s.queue_depth[i])))
            .collect();
        let buckets: Vec<(f64, u64)> = QUEUE_BUCKETS
            .iter()
            .map(|&b| b as f64)
            .chain([f64::MAX])
            .zip(counts.iter().copied())
            .collect();
        let sum = self.sum(|s| l(&s.queued_bytes)) as f64;
        let count = counts.iter().sum();
        let m = e.encode_descriptor(
            names::QUEUED_BYTES,
            "Bytes queued per connection, sampled by the sweep",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        let mut m = m;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn cluster(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let c = &self.stats.cluster;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let g = ConstGauge::new(l(&c.deaf) as i64);
        g.encode(e.encode_descriptor(
            names::CLUSTER_DEAF,
            "1 while this node is deaf or disconnected from Redis (cluster mode)",
            None,
            g.metric_type(),
        )?)?;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                names::CLUSTER_DEAF_EPISODES,
                "Times the deafness canary was late",
                &c.deaf_episodes,
            ),
            (
                names::CLUSTER_RECONNECTS,
                "Reconnections to Redis",
                &c.reconnects,
            ),
            (
                names::CLUSTER_PUBLISHES,
                "Publishes numbered by Redis",
                &c.publishes,
            ),
            (
                names::CLUSTER_UNAVAILABLE,
                "Publishes refused as unavailable",
                &c.unavailable,
            ),
            (
                names::CLUSTER_MESSAGES_IN,
                "Room messages received from Redis",
                &c.messages_in,
            ),
            (
                names::CLUSTER_BAD_MESSAGES,
                "Room messages that could not be decoded",
                &c.bad_messages,
            ),
            (
                names::CLUSTER_REFUSED,
                "Bridge events refused by a full shard channel",
                &c.refused,
            ),
            (
                names::CLUSTER_CATCH_UPS,
                "Catch-ups from a room's history stream",
                &c.catch_ups,
            ),
            (
                names::CLUSTER_GAPS,
                "Messages delivered marked gap",
                &c.gaps,
            ),
            (
                names::CLUSTER_ROOMS_BEHIND,
                "Rooms found behind Redis after a slot move (caught up)",
                &c.rooms_behind,
            ),
        ];
        for (name, help, a) in counters {
            let v = ConstCounter::new(l(a));
            v.encode(e.encode_descriptor(strip_total(name), help, None, v.metric_type())?)?;
        }
        Ok(())
    }

    fn process(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let (rss, fds) = process_figures();
        let g = |v: u64| ConstGauge::new(v as i64);
        g(rss).encode(e.encode_descriptor(
            names::PROCESS_RSS_BYTES,
            "Resident set size of the process",
            None,
            g(0).metric_type(),
        )?)?;
        g(fds).encode(e.encode_descriptor(
            names::PROCESS_OPEN_FDS,
            "Open file descriptors of the process",
            None,
            g(0).metric_type(),
        )?)?;
        let mut m = e.encode_descriptor(
            names::IO_DRIVER,
            "The I/O driver in use (always 1)",
            None,
            g(0).metric_type(),
        )?;
        g(1).encode(m.encode_family(&[("driver", self.process.io_driver)])?)?;
        let mut m = e.encode_descriptor(
            names::BUILD_INFO,
            "The running build (always 1)",
            None,
            g(0).metric_type(),
        )?;
        g(1).encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        for f in COUNTERS {
            self.per_shard(&mut e, f, true)?;
        }
        for f in GAUGES {
            self.per_shard(&mut e, f, false)?;
        }
        self.by_reason(
            &mut e,
            (
                names::AUTH_FAILURES,
                "Upgrades refused for a missing or invalid token",
            ),
            &AUTH_REASONS,
            |s, r| s.auth_failures_by_reason[r].load(Ordering::Relaxed),
        )?;
        self.by_reason(
            &mut e,
            (
                names::ADMISSION_REFUSALS,
                "Upgrades refused by admission control",
            ),
            &crate::admission::REFUSAL_REASONS,
            |s, r| s.admission_refusals_by_reason[r].load(Ordering::Relaxed),
        )?;
        self.by_label(
            &mut e,
            (
                names::SLOW_CONSUMER_ACTIONS,
                "Slow-consumer policies acting: connections closed or frames dropped",
            ),
            ("policy", &SLOW_CONSUMER_POLICIES),
            |s, r| s.slow_consumer_actions[r].load(Ordering::Relaxed),
        )?;
        self.resumes_and_closes(&mut e)?;
        self.by_wire(&mut e)?;
        self.queue_histogram(&mut e)?;
        self.cluster(&mut e)?;
        self.process(&mut e)
    }
}

/// RSS in bytes and open file descriptors, from /proc (0 where unreadable).
fn process_figures() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// The Prometheus text exposition of every counter now.
pub fn render(stats: &Stats, process: &Process) -> String {
    let mut registry = Registry::with_prefix(names::PREFIX.trim_end_matches('_'));
    registry.register_collector(Box::new(Scrape {
        stats: stats.clone(),
        process: process.clone(),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text: counter families are
/// named with their `_total` in `# HELP`/`# TYPE` as that format's parsers expect, and `# EOF`
/// and `# UNIT` lines go. Served unless the scraper asks for OpenMetrics.
pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_exported_per_shard() {
        let stats = Stats::new(2);
        ShardStats::add(&stats.shard(1).deliveries, 7);
        stats.shard(0).count_auth_failure("token_expired");
        stats.shard(1).count_admission_refusal(3);
        stats.shard(0).count_close(1012);
        stats.shard(1).count_close(4999);
        stats
            .shard(0)
            .record_queue_depths([0, 10, 2000, 5 << 20].into_iter());
        let text = render(&stats, &Process { io_driver: "epoll" });
        assert!(
            text.contains("shardcast_deliveries_total{shard=\"1\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("shardcast_deliveries_total{shard=\"0\"} 0\n"));
        assert!(text.contains("# TYPE shardcast_connections gauge\n"));
        assert!(text.contains("shardcast_auth_failures_total{reason=\"token_expired\"} 1\n"));
        assert!(text.contains("shardcast_admission_refusals_total{reason=\"ip_connections\"} 1\n"));
        assert!(text.contains("shardcast_io_driver{driver=\"epoll\"} 1\n"));
        assert!(text.contains("shardcast_process_resident_memory_bytes "));
        for (name, ..) in COUNTERS {
            assert!(
                text.contains(&format!("# TYPE shardcast_{} counter", strip_total(name))),
                "{name}"
            );
        }
        assert!(
            text.contains("shardcast_closes_sent_total{code=\"1012\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("shardcast_closes_sent_total{code=\"other\"} 1\n"));
        assert!(text.contains("shardcast_resumes_total{recovered=\"false\"} 0\n"));
        assert!(
            text.contains("shardcast_connection_queued_bytes_bucket{le=\"0.0\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("shardcast_connection_queued_bytes_bucket{le=\"1024.0\"} 2\n"));
        assert!(text.contains("shardcast_connection_queued_bytes_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("shardcast_connection_queued_bytes_count 4\n"));
        assert!(text.ends_with("# EOF\n"));
        let c = classic(&text);
        assert!(
            c.contains("# TYPE shardcast_deliveries_total counter\n"),
            "{c}"
        );
        assert!(c.contains("# HELP shardcast_deliveries_total "));
        assert!(c.contains("# TYPE shardcast_connections gauge\n"));
        assert!(c.contains("shardcast_deliveries_total{shard=\"1\"} 7\n"));
        assert!(!c.contains("# EOF"));
    }
}
