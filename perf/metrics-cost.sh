#!/usr/bin/env bash
# What the operator listener costs the fan-out (issue #12): fanout-1k-max with the admin listener
# off, on but never scraped, and on with /metrics scraped every second (and the admin page's
# /events stream open), alternating with a fresh server each run: shardcast on CPU 0 (one
# shard), loadgen and the scraper on CPU 1. The server's CPU time includes its admin thread.
#
#   perf/metrics-cost.sh [--reps N] [--duration SECS]      (default 5 reps of 10 s)
#
# Results: perf/results/<timestamp>-metrics/results.jsonl and a table on stdout (medians of
# deliveries per server CPU-second, and the ratio to "off").
set -euo pipefail
PERF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$PERF")"
REPS=5
DURATION=10
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "metrics-cost.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
SHARDCAST="$ROOT/target/release/shardcast"
LOADGEN="$PERF/loadgen/target/release/loadgen"
for b in "$SHARDCAST" "$LOADGEN"; do
  [ -x "$b" ] || { echo "metrics-cost.sh: $b missing (cargo build --release; and in perf/loadgen)" >&2; exit 1; }
done
OUT="$PERF/results/$(date +%Y%m%d-%H%M%S)-metrics"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.jsonl"
PORT=9700
SRV=""
SCRAPER=""
cleanup() {
  [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null || true
  [ -n "$SRV" ] && kill "$SRV" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

run() {  # mode rep
  local mode="$1" rep="$2" port admin cfg
  PORT=$((PORT + 2))
  port=$PORT
  admin=$((PORT + 1))
  cfg="$OUT/$mode.toml"
  if [ "$mode" = off ]; then
    printf '[admin]\nlisten = ""\n' >"$cfg"
  else
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$admin" >"$cfg"
  fi
  taskset -c 0 "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 --config "$cfg" \
    >"$OUT/logs/$mode.$rep.log" 2>&1 &
  SRV=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" && break
    sleep 0.1
  done
  if [ "$mode" = scraped ]; then
    # /metrics every second, and the admin page's stream held open, as a Prometheus server and
    # an operator's browser tab would.
    (
      taskset -c 1 curl -s -N --max-time $((DURATION + 30)) "http://127.0.0.1:$admin/events" >/dev/null &
      while :; do
        taskset -c 1 curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$admin/metrics" || true
        sleep 1
      done
    ) &
    SCRAPER=$!
  fi
  taskset -c 1 "$LOADGEN" fanout --subscribers 1000 --max --url "ws://127.0.0.1:$port" \
    --server-pid "$SRV" --duration "$DURATION" --warmup 2 --json --label "$mode" \
    >"$OUT/logs/$mode.$rep.loadgen.txt" 2>&1 || true
  local line
  line="$(grep '^{' "$OUT/logs/$mode.$rep.loadgen.txt" | tail -1)"
  if [ -n "$line" ]; then
    echo "$line" | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(mode='$mode', rep=$rep); print(json.dumps(d))" >>"$RESULTS"
  fi
  if [ -n "$SCRAPER" ]; then
    pkill -P "$SCRAPER" 2>/dev/null || true
    kill "$SCRAPER" 2>/dev/null || true
    wait "$SCRAPER" 2>/dev/null || true
    SCRAPER=""
  fi
  kill "$SRV" 2>/dev/null || true
  wait "$SRV" 2>/dev/null || true
  SRV=""
}

for rep in $(seq "$REPS"); do
  for mode in off unscraped scraped; do
    echo "[metrics-cost] $mode rep $rep" >&2
    run "$mode" "$rep"
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def find(d, k):
    if isinstance(d, dict):
        if k in d:
            return d[k]
        for v in d.values():
            r = find(v, k)
            if r is not None:
                return r
    return None
by = {}
for r in runs:
    v = find(r, "deliveries_per_server_cpu_s")
    if v is not None:
        by.setdefault(r["mode"], []).append(v)
off = statistics.median(by["off"]) if by.get("off") else None
print("| admin listener | runs | deliveries / server CPU-s (median) | ratio to off |")
print("|---|---|---|---|")
for m in ("off", "unscraped", "scraped"):
    if by.get(m):
        med = statistics.median(by[m])
        ratio = f"{med / off:.3f}" if off else "-"
        print(f"| {m} | {len(by[m])} | {med / 1e6:.2f} M | {ratio} |")
EOF
echo "results: $RESULTS" >&2
