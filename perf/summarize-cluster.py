#!/usr/bin/env python3
"""Summarise perf/cluster.sh results as Markdown tables (stdlib only).

    python3 perf/summarize-cluster.py perf/results/<timestamp>-cluster   # or .../results.jsonl

One table per scenario ("bench"), one row per server: medians over the reps, and the sums of
expected / received deliveries over all reps (every message counted: a lossy run shows there).
"""
import os
import sys

sys.dont_write_bytecode = True  # no perf/__pycache__ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import load, med  # noqa: E402  (perf/summarize.py: results.jsonl + env.txt)

ORDER = ["shardcast-env", "shardcast-raw", "node-ws-redis"]


def fmt(x, kind):
    if x is None:
        return "-"
    if kind == "int":
        return f"{x:,.0f}"
    if kind == "M":
        return f"{x / 1e6:.2f} M" if x >= 1e5 else f"{x:,.0f}"
    if kind == "ms":
        return f"{x / 1000:.2f} ms"
    if kind == "pct":
        return f"{x * 100:.0f} %"
    if kind == "f1":
        return f"{x:.1f}"
    if kind == "f2":
        return f"{x:.2f}"
    return str(x)


COLS = [
    ("deliveries/s", "deliveries_per_s", "M"),
    ("publishes/s", "sent_per_s", "int"),
    ("p50", "lat_p50_us", "ms"),
    ("p99", "lat_p99_us", "ms"),
    ("nodes CPU (cores)", "server_cpu", "f2"),
    ("Redis CPU", "redis_cpu", "pct"),
    ("deliveries / nodes CPU-s", "deliveries_per_server_cpu_s", "M"),
    ("deliveries / (nodes+Redis) CPU-s", "deliveries_per_server_redis_cpu_s", "M"),
    ("Redis CPU µs / broadcast", "redis_us_per_broadcast", "f1"),
    ("Redis cmds / broadcast", "redis_cmds_per_broadcast", "f2"),
    ("loadgen CPU", "loadgen_cpu", "f2"),
    ("others' CPU", "others_cpu", "f2"),
]


def add_others(rows):
    """others_cpu: cores busy with neither the nodes, Redis nor loadgen (other work on the
    machine during the measured phase; loadgen's host_other_cores counts Redis in)."""
    for r in rows:
        o, rc = r.get("host_other_cores"), r.get("redis_cpu")
        if isinstance(o, (int, float)):
            r["others_cpu"] = max(0.0, o - (rc if isinstance(rc, (int, float)) else 0.0))
        if isinstance(rc, (int, float)) and r.get("sent_per_s"):
            r["redis_us_per_broadcast"] = rc * 1e6 / r["sent_per_s"]


def table(rows):
    servers = sorted({r["server"] for r in rows},
                     key=lambda s: (ORDER.index(s) if s in ORDER else 99, s))
    head = ["server", "clients"] + [c[0] for c in COLS] + ["expected / received (all reps)", "reps"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in servers:
        rs = [r for r in rows if r["server"] == s]
        exp = sum(r.get("expected_deliveries", 0) for r in rs)
        rec = sum(r.get("received_deliveries", 0) for r in rs)
        errs = sum(r.get("errors_total", 0) for r in rs)
        acct = f"{exp:,} / {rec:,}" + ("" if exp == rec else f" (**{exp - rec:,} missing**)")
        if errs:
            acct += f", {errs} errors"
        cells = [s, rs[0].get("envelope", "?")] + [fmt(med(rs, k), kind) for _, k, kind in COLS]
        out.append("| " + " | ".join(cells + [acct, str(len(rs))]) + " |")
    return "\n".join(out)


def cmds(rows):
    out = []
    for s in sorted({r["server"] for r in rows}):
        rs = [r for r in rows if r["server"] == s]
        tot = {}
        sent = 0
        for r in rs:
            for k, v in (r.get("redis_cmds") or {}).items():
                tot[k] = tot.get(k, 0) + v
            sent += r.get("sent", 0)
        if sent:
            per = ", ".join(f"{k} {v / sent:.2f}" for k, v in sorted(tot.items(), key=lambda kv: -kv[1]))
            out.append(f"- {s}: Redis calls per broadcast (measured phases): {per}")
    return "\n".join(out)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    rows, env = load(sys.argv[1])
    add_others(rows)
    if env:
        print("```\n" + env + "\n```\n")
    kinds = ["cluster-max", "cluster-rate", "cluster-rooms"]

    def order(b):
        name, _, n = b.partition("@")
        return (kinds.index(name) if name in kinds else 9, int(n) if n.isdigit() else 0)

    for bench in sorted({r["bench"] for r in rows}, key=order):
        rs = [r for r in rows if r["bench"] == bench]
        r0 = rs[0]
        what = (f"{r0.get('subscribers', r0.get('clients'))} "
                f"{'subscribers' if r0.get('scenario') == 'fanout' else 'clients'}, "
                f"{r0.get('publishers', '-')} publishers, mode {r0.get('mode', 'rooms')}"
                + (f", window {r0['window']}" if r0.get("window") else "")
                + (f", rate {r0['rate']}" if r0.get("rate") else "")
                + (f", room size {r0['room_size']}" if r0.get("room_size") else ""))
        print(f"### {bench} ({what}; medians)\n")
        print(table(rs))
        print()
        print(cmds(rs))
        print()


if __name__ == "__main__":
    main()
