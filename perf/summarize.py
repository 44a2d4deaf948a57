#!/usr/bin/env python3
"""Summarise perf/compare.sh results as Markdown tables (stdlib only).

    python3 perf/summarize.py perf/results/<timestamp>          # or .../results.jsonl

Reads results.jsonl (one loadgen JSON line per run, with "bench", "server", "rep" added by
compare.sh) and env.txt if present; prints medians per scenario x server and ratios to
uWebSockets.js ("uws"), ready to paste into docs/benchmarks.md.
"""
import json
import os
import statistics
import sys

SERVER_ORDER = ["shardcast", "shardcast-s1", "shardcast-s2", "shardcast-env-raw", "shardcast-env-json",
                "shardcast-env-cbor", "shardcast-base", "shardcast-deflate-off", "shardcast-deflate-shared",
                "shardcast-deflate-dedicated", "node-ws", "uws"]
DEFLATE_PREFIX = "shardcast-deflate-"
REF = "uws"


def load(path):
    if os.path.isdir(path):
        env_path = os.path.join(path, "env.txt")
        path = os.path.join(path, "results.jsonl")
    else:
        env_path = os.path.join(os.path.dirname(path), "env.txt")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                print(f"<!-- skipped line {n}: {e} -->", file=sys.stderr)
    env = open(env_path).read().strip() if os.path.exists(env_path) else ""
    return rows, env


def med(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return statistics.median(vals) if vals else None


def fmt(v, kind="num"):
    if v is None:
        return "–"
    if kind == "ratio":
        return f"{v:.2f}×"
    if kind == "cpu":
        return f"{v:.2f}"
    if kind == "kib":
        return f"{v:.2f}"
    if kind == "mib":
        return f"{v / 1024:.1f}"
    if kind == "us":
        if v >= 1000:
            return f"{v / 1000:.1f} ms"
        return f"{v:.0f} µs"
    if kind == "rate":
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f} M"
        if abs(v) >= 1e3:
            return f"{v / 1e3:.1f} k"
        return f"{v:.1f}"
    return f"{v:g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def order(servers):
    return sorted(servers, key=lambda s: (SERVER_ORDER.index(s) if s in SERVER_ORDER else 99, s))


def errors_cell(runs):
    total = sum(int(r.get("errors_total") or 0) for r in runs)
    losses = sum(int(r.get("losses") or 0) + int(r.get("losses_tail") or 0) for r in runs)
    closes = {}
    for r in runs:
        for code, n in (r.get("server_closes_by_code") or {}).items():
            closes[code] = closes.get(code, 0) + n
    parts = []
    if total:
        parts.append(f"{total} err")
    if closes:
        parts.append("closes " + ",".join(f"{k}×{v}" for k, v in sorted(closes.items())))
    if losses:
        parts.append(f"{losses} lost")
    return "; ".join(parts) if parts else "0"


def message_table(bench, by_server):
    ref = by_server.get(REF)
    ref_d = med(ref, "deliveries_per_s") if ref else None
    ref_c = med(ref, "deliveries_per_server_cpu_s") if ref else None
    ref_p = med(ref, "lat_p99_us") if ref else None
    head = ["server", "runs", "deliveries/s", "p50", "p99", "p99.9", "server CPU", "deliveries / server CPU-s",
            "loadgen CPU", "other CPU", "errors"]
    if ref:
        head += ["deliveries/s vs uWS", "per CPU-s vs uWS", "p99 vs uWS"]
    lines = []
    for s in order(by_server):
        runs = by_server[s]
        d = med(runs, "deliveries_per_s")
        c = med(runs, "deliveries_per_server_cpu_s")
        p99 = med(runs, "lat_p99_us")
        line = [s, len(runs), fmt(d, "rate"), fmt(med(runs, "lat_p50_us"), "us"), fmt(p99, "us"),
                fmt(med(runs, "lat_p999_us"), "us"), fmt(med(runs, "server_cpu"), "cpu"), fmt(c, "rate"),
                fmt(med(runs, "loadgen_cpu"), "cpu"), fmt(med(runs, "host_other_cores"), "cpu"), errors_cell(runs)]
        if ref:
            line += [fmt(ratio(d, ref_d), "ratio"), fmt(ratio(c, ref_c), "ratio"), fmt(ratio(p99, ref_p), "ratio")]
        lines.append(line)
    return table(head, lines) + metrics_note(by_server) + contended_note(by_server)


def metrics_note(by_server):
    """The daemon's /metrics counters compare.sh read after the run (fanout-1k-env-max,
    fanout-1k-sse-max). SSE frames are encoded once per broadcast: sse_encodings_total is about
    messages_in_total (the publishes, + the publisher's subscribe) plus one per join and one per
    leave event (about 2 per stream over a run), never about deliveries_total."""
    lines = []
    for s in order(by_server):
        runs = [r for r in by_server[s] if isinstance(r.get("server_metrics"), dict)]
        if not runs:
            continue
        enc = statistics.median(r["server_metrics"].get("sse_encodings_total", 0) for r in runs)
        pub = statistics.median(r["server_metrics"].get("messages_in_total", 0) for r in runs)
        dl = statistics.median(r["server_metrics"].get("deliveries_total", 0) for r in runs)
        conns = statistics.median(r.get("connections") or 0 for r in runs)
        extra = f", {(enc - pub) / conns:.2f} per connection beyond the publishes" if enc and conns else ""
        lines.append(f"{s}: sse_encodings_total {enc:,.0f}, messages_in_total {pub:,.0f}, "
                     f"deliveries_total {dl:,.0f}{extra} (medians, whole run)")
    return ("\n\nServer /metrics after the run: " + "; ".join(lines)) if lines else ""


def contended_note(by_server):
    bad = [s for s in order(by_server) if (med(by_server[s], "host_other_cores") or 0) > 0.25]
    if not bad:
        return ""
    return ("\n\n⚠ contended: other processes used more than 0.25 cores during the measured phase for "
            + ", ".join(bad) + " (median *other CPU*); compare per-CPU-second figures rather than rates and latency.")


def idle_table(bench, by_server):
    ref = by_server.get(REF)
    ref_k = med(ref, "rss_per_conn_kib") if ref else None
    head = ["server", "runs", "connections", "handshakes/s", "RSS before (MiB)", "RSS after (MiB)", "RSS/conn (KiB)",
            "errors"]
    if ref:
        head += ["RSS/conn vs uWS"]
    lines = []
    for s in order(by_server):
        runs = by_server[s]
        k = med(runs, "rss_per_conn_kib")
        line = [s, len(runs), fmt(med(runs, "open_at_end")), fmt(med(runs, "handshakes_per_s"), "rate"),
                fmt(med(runs, "server_rss_before_kib"), "mib"), fmt(med(runs, "server_rss_after_kib"), "mib"),
                fmt(k, "kib"), errors_cell(runs)]
        if ref:
            line.append(fmt(ratio(k, ref_k), "ratio"))
        lines.append(line)
    return table(head, lines)


def churn_table(bench, by_server):
    head = ["server", "runs", "cycles/s", "connect+close/s", "handshakes/s", "handshakes / server CPU-s",
            "RSS before (MiB)", "RSS after 1st cycle (MiB)", "RSS after (MiB)", "growth after 1st cycle (KiB)",
            "errors"]
    lines = []
    for s in order(by_server):
        runs = by_server[s]
        lines.append([s, len(runs), fmt(med(runs, "cycles_per_s"), "cpu"), fmt(med(runs, "conns_per_s"), "rate"),
                      fmt(med(runs, "handshakes_per_s"), "rate"),
                      fmt(med(runs, "handshakes_per_server_cpu_s"), "rate"),
                      fmt(med(runs, "server_rss_before_kib"), "mib"),
                      fmt(med(runs, "server_rss_after_first_cycle_kib"), "mib"),
                      fmt(med(runs, "server_rss_after_kib"), "mib"),
                      fmt(med(runs, "rss_growth_after_first_cycle_kib")), errors_cell(runs)])
    return table(head, lines)


def deflate_variant(server):
    return server[len(DEFLATE_PREFIX):] if server.startswith(DEFLATE_PREFIX) else server


def deflate_fanout_table(bench, by_server):
    """permessage-deflate off / shared / dedicated on the same JSON fan-out."""
    off = by_server.get(DEFLATE_PREFIX + "off")
    off_c = med(off, "deliveries_per_server_cpu_s") if off else None
    head = ["compression", "runs", "negotiated", "deliveries/s", "deliveries / server CPU-s", "per CPU-s vs off",
            "p50", "p99", "wire B / delivery", "inflated B / delivery", "ratio", "server CPU", "loadgen CPU",
            "other CPU", "errors"]
    lines = []
    for s in order(by_server):
        runs = by_server[s]
        c = med(runs, "deliveries_per_server_cpu_s")
        w = med(runs, "wire_bytes_per_delivery")
        lines.append([deflate_variant(s), len(runs), fmt(med(runs, "deflate_negotiated")),
                      fmt(med(runs, "deliveries_per_s"), "rate"), fmt(c, "rate"), fmt(ratio(c, off_c), "ratio"),
                      fmt(med(runs, "lat_p50_us"), "us"), fmt(med(runs, "lat_p99_us"), "us"),
                      "–" if w is None else f"{w:.0f}", fmt(med(runs, "inflated_bytes_per_delivery")),
                      fmt(med(runs, "compression_ratio"), "ratio"), fmt(med(runs, "server_cpu"), "cpu"),
                      fmt(med(runs, "loadgen_cpu"), "cpu"), fmt(med(runs, "host_other_cores"), "cpu"),
                      errors_cell(runs)])
    return table(head, lines) + contended_note(by_server)


def deflate_idle_table(bench, by_server):
    """RSS per connection with permessage-deflate, idle and after one broadcast to all."""
    head = ["compression", "runs", "connections", "negotiated", "RSS/conn idle (KiB)",
            "RSS/conn after 1 broadcast (KiB)", "RSS after broadcast (MiB)", "broadcast received", "broadcast time",
            "wire B / conn", "errors"]
    lines = []
    for s in order(by_server):
        runs = by_server[s]
        missing = sum(int(r.get("broadcast_missing") or 0) for r in runs)
        err = errors_cell(runs)
        if missing:
            err = f"{missing} missed broadcast" if err == "0" else f"{err}; {missing} missed broadcast"
        w = med(runs, "wire_bytes_per_delivery")
        took = med(runs, "broadcast_s")
        lines.append([deflate_variant(s), len(runs), fmt(med(runs, "open_at_end")), fmt(med(runs, "deflate_negotiated")),
                      fmt(med(runs, "rss_per_conn_kib"), "kib"), fmt(med(runs, "rss_per_conn_after_broadcast_kib"), "kib"),
                      fmt(med(runs, "server_rss_after_broadcast_kib"), "mib"), fmt(med(runs, "broadcast_received")),
                      "–" if took is None else fmt(took * 1e6, "us"), "–" if w is None else f"{w:.0f}", err])
    return table(head, lines)


def shards_table(rows):
    head = ["scenario", "shards", "runs", "deliveries/s", "deliveries / server CPU-s", "server CPU", "p50", "p99",
            "p99.9", "errors"]
    lines = []
    for bench in ["fanout-1k-max", "fanout-10k-rate10"]:
        for s, label in [("shardcast-s1", "1 (CPU 0, loadgen CPU 1)"), ("shardcast-s2", "2 (unpinned, loadgen too)")]:
            runs = [r for r in rows if r.get("bench") == bench and r.get("server") == s]
            if not runs:
                continue
            lines.append([bench, label, len(runs), fmt(med(runs, "deliveries_per_s"), "rate"),
                          fmt(med(runs, "deliveries_per_server_cpu_s"), "rate"), fmt(med(runs, "server_cpu"), "cpu"),
                          fmt(med(runs, "lat_p50_us"), "us"), fmt(med(runs, "lat_p99_us"), "us"),
                          fmt(med(runs, "lat_p999_us"), "us"), errors_cell(runs)])
    return table(head, lines) if lines else None


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    rows, env = load(sys.argv[1])
    ok = [r for r in rows if not r.get("failed")]
    failed = [r for r in rows if r.get("failed")]
    out = []
    if env:
        out += ["## Environment", "", "```", env, "```", ""]
    out += [
        "Medians over repetitions; each run uses a fresh server pinned to CPU 0 and loadgen pinned to CPU 1",
        "(64-byte binary messages unless stated). Latency is publish-to-delivery, measured by loadgen in one",
        "process. *server CPU* and *loadgen CPU* are in cores (1.00 = one core busy, utime+stime from /proc);",
        "*other CPU* is busy time of the machine outside both (other processes: a noise indicator; a run",
        "with other CPU well above 0 competed for the cores). *deliveries / server CPU-s* = deliveries/s ÷",
        "server CPU. On loopback much of the receiver's TCP work runs in the sender's context and is charged",
        "to it (and vice versa).",
        "",
    ]
    benches = []
    for r in ok:
        if r["bench"] not in benches:
            benches.append(r["bench"])
    shard_servers = {"shardcast-s1", "shardcast-s2"}
    for bench in benches:
        by_server = {}
        for r in ok:
            if r["bench"] == bench and r["server"] not in shard_servers:
                by_server.setdefault(r["server"], []).append(r)
        if not by_server:
            continue
        scenario = next(iter(by_server.values()))[0].get("scenario")
        out.append(f"### {bench}")
        out.append("")
        deflate = all(s.startswith(DEFLATE_PREFIX) for s in by_server)
        if deflate and scenario == "fanout":
            out += ["shardcast only, permessage-deflate off / shared / dedicated (perf/configs/deflate-*.toml); "
                    "1 KiB JSON text messages. *wire B* = frame bytes received per delivery (headers included), "
                    "*ratio* = inflated ÷ wire.", ""]
            out.append(deflate_fanout_table(bench, by_server))
        elif deflate and scenario == "idle":
            out += ["shardcast only; server RSS growth per connection after connecting (idle), and again after "
                    "one 1 KiB JSON broadcast reached every connection (+1 s): dedicated mode creates a "
                    "connection's compressor on its first compressed message.", ""]
            out.append(deflate_idle_table(bench, by_server))
        elif scenario == "idle":
            out.append(idle_table(bench, by_server))
        elif scenario == "churn":
            out.append(churn_table(bench, by_server))
        else:
            out.append(message_table(bench, by_server))
        out.append("")
    st = shards_table(ok)
    if st:
        out += ["### shards2: shardcast --shards 1 vs --shards 2", "",
                "Deliveries per server CPU-second compare across placements; deliveries/s and latency of the",
                "2-shard runs include loadgen sharing the server's two cores (see perf/compare.sh).", "", st, ""]
    if failed:
        out.append("Failed runs: " + ", ".join(f"{r['bench']}/{r['server']}/rep {r['rep']} ({r.get('reason')})"
                                               for r in failed))
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
