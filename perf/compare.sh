#!/usr/bin/env bash
# Side-by-side comparison of shardcast and the reference servers (perf/ref/) in one run.
#
#   perf/compare.sh [--scenarios a,b,...] [--reps N] [--servers shardcast,node-ws,uws]
#                   [--duration SECS] [--warmup SECS] [--out DIR] [--no-build]
#                   [--quiet-wait SECS] [--quiet-max CORES]
#
# Regression check of a change: build the other version elsewhere and add it as a server,
#   SHARDCAST_BASE=/tmp/base/target/release/shardcast perf/compare.sh --servers shardcast,shardcast-base,uws
# ("shardcast-base" runs exactly like "shardcast": one shard, pinned).
#
# This machine is shared: before each run compare.sh waits (up to --quiet-wait s, default 30)
# until the machine's busy time over 0.5 s is below --quiet-max cores (default 0.25), and records
# what it saw ("busy_before_run"). loadgen's host_other_cores tells how contended each run was.
#
# For each scenario, each repetition, each server in turn (A B C A B C ...): start a FRESH server
# pinned to CPU 0, wait for its port, run loadgen pinned to CPU 1 with --server-pid and --json,
# stop the server. JSON lines go to perf/results/<timestamp>/results.jsonl (one per run, with
# "bench", "server" and "rep" added), server logs to logs/, the environment to env.txt; at the end
# perf/summarize.py prints the Markdown tables (medians, ratios to uWebSockets.js).
#
# Scenarios (default: fanout-1k-max,fanout-10k-rate10,rooms-2000x10-5hz,echo-100,idle-19000):
#   fanout-1k-max       fanout --subscribers 1000 --max (window 16)
#   fanout-10k-rate10   fanout --subscribers 10000 --rate 10
#   rooms-2000x10-5hz   rooms --clients 2000 --room-size 10 --rate 5
#   echo-100            echo --connections 100
#   idle-19000          idle --connections 19000 --hold 5
#   churn-1000x10       churn --connections 1000 --cycles 10   (not in the default list)
#   shards2             shardcast --shards 1 vs --shards 2 on fanout-1k-max and fanout-10k-rate10
#                       (only shardcast; see PLACEMENT below)
#   fanout-1k-json-deflate
#                       only shardcast, permessage-deflate off / shared / dedicated (perf/configs/
#                       deflate-*.toml), alternating with fresh servers: fanout --subscribers 1000
#                       --max --payload json --size 1024 --deflate (1 KiB compressible JSON text
#                       messages; loadgen offers the extension and inflates what it receives)
#   fanout-1k-envelope  only shardcast, raw vs envelope JSON vs envelope CBOR clients
#                       (loadgen --envelope): fanout --subscribers 1000 --max
#   rooms-2000x10-envelope
#                       only shardcast, raw vs JSON vs CBOR: rooms --clients 2000 --room-size 10
#                       --rate 5
#   idle-deflate-5000   only shardcast, deflate shared vs dedicated: idle --connections 5000
#                       --deflate --broadcast-once (RSS per connection idle, and again after one
#                       1 KiB JSON broadcast to all: dedicated mode allocates a connection's
#                       compressor on its first compressed message)
#
# PLACEMENT for shards2: on this 2-core machine a 2-shard server needs both cores, so there is no
# core left to pin the load generator to. "shardcast-s1" runs exactly as everywhere else (server
# on CPU 0, loadgen on CPU 1); "shardcast-s2" runs the server AND loadgen unpinned (both allowed
# on CPUs 0-1; the scheduler shares the cores). Deliveries per server CPU-second are comparable
# across the two (they divide by the server's own CPU time); deliveries/s and latency of s2
# include the load generator competing for the server's cores, so they understate what two
# dedicated cores would give.
#
# Servers whose run script (perf/ref/run-*.sh) is missing or whose dependencies are not installed
# (perf/ref/install.sh) are skipped with a warning.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PERF="$ROOT/perf"
LOADGEN="$PERF/loadgen/target/release/loadgen"
SHARDCAST="$ROOT/target/release/shardcast"

SCENARIOS="fanout-1k-max,fanout-10k-rate10,rooms-2000x10-5hz,echo-100,idle-19000"
SERVERS="shardcast,node-ws,uws"
REPS=3
DURATION=5
WARMUP=1
OUT=""
BUILD=1
SERVER_CPU=0
LOADGEN_CPU=1
PORT=9400
QUIET_WAIT=30
QUIET_MAX=0.25

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
    --quiet-max) QUIET_MAX="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { echo "[compare] $*" >&2; }
warn() { echo "[compare] WARNING: $*" >&2; }

# ---- processes we start: always cleaned up ---------------------------------------------------
SRV_PID=""
LG_PID=""
stop_server() {
  [ -n "$SRV_PID" ] || return 0
  if kill -0 "$SRV_PID" 2>/dev/null; then
    kill -TERM "$SRV_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SRV_PID" 2>/dev/null
  fi
  wait "$SRV_PID" 2>/dev/null
  SRV_PID=""
}
cleanup() {
  # LG_PID is `timeout`'s PID: TERM makes it forward the signal to loadgen and exit.
  [ -n "$LG_PID" ] && kill -TERM "$LG_PID" 2>/dev/null && wait "$LG_PID" 2>/dev/null
  LG_PID=""
  stop_server
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---- build ------------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  log "building shardcast and loadgen (release)"
  (cd "$ROOT" && cargo build --release --quiet) || { echo "compare.sh: shardcast build failed" >&2; exit 1; }
  cargo build --release --quiet --manifest-path "$PERF/loadgen/Cargo.toml" \
    || { echo "compare.sh: loadgen build failed" >&2; exit 1; }
fi
[ -x "$LOADGEN" ] || { echo "compare.sh: $LOADGEN missing (build it)" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
  warn "fewer than 2 CPUs: server and loadgen share CPU 0 (numbers are not comparable)"
  LOADGEN_CPU=0
fi

# Both we and the servers we start get the hard open-files limit (19,000 idle connections).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- which servers can run --------------------------------------------------------------------
server_available() {
  case "$1" in
    shardcast|shardcast-s1|shardcast-s2) [ -x "$SHARDCAST" ] ;;
    shardcast-env-*) [ -x "$SHARDCAST" ] ;;
    shardcast-base)
      [ -n "${SHARDCAST_BASE:-}" ] && [ -x "$SHARDCAST_BASE" ] \
        || { warn "set SHARDCAST_BASE to another shardcast binary for shardcast-base"; return 1; } ;;
    shardcast-deflate-*)
      [ -x "$SHARDCAST" ] || return 1
      [ -f "$PERF/configs/${1#shardcast-}.toml" ] \
        || { warn "perf/configs/${1#shardcast-}.toml missing: skipping $1"; return 1; } ;;
    node-ws)
      [ -x "$PERF/ref/run-node-ws.sh" ] || { warn "perf/ref/run-node-ws.sh missing: skipping node-ws"; return 1; }
      [ -f "$PERF/ref/node-ws/node_modules/ws/package.json" ] \
        || { warn "node-ws not installed (run perf/ref/install.sh): skipping"; return 1; } ;;
    uws)
      [ -x "$PERF/ref/run-uws.sh" ] || { warn "perf/ref/run-uws.sh missing: skipping uws"; return 1; }
      [ -f "$PERF/ref/uws/node_modules/@btc-vision/uwebsockets.js/package.json" ] \
        || { warn "uws not installed (run perf/ref/install.sh): skipping"; return 1; } ;;
    *) warn "unknown server $1"; return 1 ;;
  esac
}
AVAIL=()
IFS=, read -r -a WANT <<<"$SERVERS"
for s in "${WANT[@]}"; do server_available "$s" && AVAIL+=("$s"); done
[ "${#AVAIL[@]}" -gt 0 ] || { echo "compare.sh: no server available" >&2; exit 1; }

# ---- results dir + environment --------------------------------------------------------------
TS="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PERF/results/$TS}"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

# Probe which I/O driver shardcast picks here (its start-up line on stderr).
probe_io_driver() {
  local port=$((PORT - 1)) log="$OUT/logs/io-driver-probe.log" pid
  "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 2>"$log" &
  pid=$!
  for _ in $(seq 50); do grep -q 'io_driver=' "$log" 2>/dev/null && break; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  grep -o 'io_driver="[a-z_]*"' "$log" | head -1 | cut -d'"' -f2
}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "nproc: $(nproc)"
  echo "rustc: $(rustc --version 2>/dev/null || echo n/a)"
  echo "node: $(node --version 2>/dev/null || echo n/a)"
  echo "shardcast_commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo n/a)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  [ -x "$SHARDCAST" ] && echo "shardcast_io_driver: $(probe_io_driver)"
  echo "tcp: congestion_control=$(sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null), autocorking=$(sysctl -n net.ipv4.tcp_autocorking 2>/dev/null), tw_reuse=$(sysctl -n net.ipv4.tcp_tw_reuse 2>/dev/null)"
  echo "cpu_accounting: $(zcat /proc/config.gz 2>/dev/null | grep -q '^CONFIG_IRQ_TIME_ACCOUNTING=y' && echo 'irq time accounted separately' || echo 'tick-based (softirq time charged to the interrupted task)')"
  echo "placement: server taskset -c $SERVER_CPU, loadgen taskset -c $LOADGEN_CPU (shards2: see compare.sh)"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "scenarios: $SCENARIOS"
  echo "servers: ${AVAIL[*]}"
  echo "reps: $REPS, duration: ${DURATION}s, warmup: ${WARMUP}s"
} | tee "$OUT/env.txt"

# Busy cores of the whole machine over 0.5 s (from /proc/stat).
busy_cores() {
  local a b
  a="$(head -1 /proc/stat)"; sleep 0.5; b="$(head -1 /proc/stat)"
  awk -v a="$a" -v b="$b" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    busy = (y[2]+y[3]+y[4]+y[7]+y[8]) - (x[2]+x[3]+x[4]+x[7]+x[8]);
    printf "%.2f", busy / hz / 0.5 }'
}
BUSY_BEFORE=0
wait_quiet() {
  local end=$((SECONDS + QUIET_WAIT))
  while :; do
    BUSY_BEFORE="$(busy_cores)"
    awk -v b="$BUSY_BEFORE" -v m="$QUIET_MAX" 'BEGIN { exit !(b <= m) }' && return 0
    if [ "$SECONDS" -ge "$end" ]; then
      warn "machine still busy (${BUSY_BEFORE} cores used by others) after ${QUIET_WAIT}s: running anyway"
      return 0
    fi
    sleep 1
  done
}

# ---- one run ----------------------------------------------------------------------------------
# start_server NAME PORT LOG CPUS: sets SRV_PID; returns non-zero if it does not come up.
start_server() {
  local name="$1" port="$2" logf="$3" cpus="$4"
  case "$name" in
    shardcast|shardcast-s1|shardcast-env-*) taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 >"$logf" 2>&1 & ;;
    shardcast-s2) taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 2 >"$logf" 2>&1 & ;;
    shardcast-base) taskset -c "$cpus" "$SHARDCAST_BASE" --listen "127.0.0.1:$port" --shards 1 >"$logf" 2>&1 & ;;
    shardcast-deflate-*)  # perf/configs/deflate-{off,shared,dedicated}.toml
      taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 \
        --config "$PERF/configs/${name#shardcast-}.toml" >"$logf" 2>&1 & ;;
    node-ws) taskset -c "$cpus" "$PERF/ref/run-node-ws.sh" "$port" >"$logf" 2>&1 & ;;
    uws) taskset -c "$cpus" "$PERF/ref/run-uws.sh" "$port" >"$logf" 2>&1 & ;;
  esac
  SRV_PID=$!
  for _ in $(seq 100); do
    kill -0 "$SRV_PID" 2>/dev/null || { warn "$name exited at start-up (see $logf)"; SRV_PID=""; return 1; }
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; then return 0; fi
    sleep 0.1
  done
  warn "$name did not answer on port $port within 10 s"
  stop_server
  return 1
}

# loadgen arguments of a benchmark
bench_args() {
  case "$1" in
    fanout-1k-max) echo "fanout --subscribers 1000 --max" ;;
    fanout-10k-rate10) echo "fanout --subscribers 10000 --rate 10" ;;
    rooms-2000x10-5hz) echo "rooms --clients 2000 --room-size 10 --rate 5" ;;
    echo-100) echo "echo --connections 100" ;;
    idle-19000) echo "idle --connections 19000 --hold 5" ;;
    churn-1000x10) echo "churn --connections 1000 --cycles 10" ;;
    fanout-1k-json-deflate) echo "fanout --subscribers 1000 --max --payload json --size 1024 --deflate" ;;
    idle-deflate-5000) echo "idle --connections 5000 --deflate --broadcast-once" ;;
    fanout-1k-envelope) echo "fanout --subscribers 1000 --max" ;;
    rooms-2000x10-envelope) echo "rooms --clients 2000 --room-size 10 --rate 5" ;;
    *) return 1 ;;
  esac
}

run_one() {  # bench server rep server_cpus loadgen_cpus
  local bench="$1" server="$2" rep="$3" scpu="$4" lcpu="$5"
  local args port logf out line
  args="$(bench_args "$bench")" || { warn "unknown scenario $bench"; return; }
  case "$server" in shardcast-env-*) args="$args --envelope ${server#shardcast-env-}" ;; esac
  PORT=$((PORT + 1))
  port=$PORT
  logf="$OUT/logs/$bench.$server.$rep.log"
  wait_quiet
  log "$bench  $server  rep $rep  (port $port, machine busy before: $BUSY_BEFORE cores)"
  if ! start_server "$server" "$port" "$logf" "$scpu"; then
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"failed\":true,\"reason\":\"server did not start\"}" >>"$RESULTS"
    return
  fi
  # A dead loadgen must never outlive its run.
  # shellcheck disable=SC2086
  timeout -s KILL 300 taskset -c "$lcpu" "$LOADGEN" $args --url "ws://127.0.0.1:$port" \
    --server-pid "$SRV_PID" --duration "$DURATION" --warmup "$WARMUP" --json --label "$server" \
    >"$OUT/logs/$bench.$server.$rep.loadgen.txt" 2>&1 &
  LG_PID=$!
  wait "$LG_PID"
  LG_PID=""
  out="$OUT/logs/$bench.$server.$rep.loadgen.txt"
  line="$(grep '^{' "$out" | tail -1)"
  if ! kill -0 "$SRV_PID" 2>/dev/null; then
    warn "$server died during $bench (see $logf)"
  fi
  local drv
  drv="$(grep -o 'io_driver="[a-z_]*"' "$logf" 2>/dev/null | head -1 | cut -d'"' -f2)"
  stop_server
  if [ -n "$line" ]; then
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"io_driver\":\"${drv:-}\",\"busy_before_run\":$BUSY_BEFORE,${line#\{}" >>"$RESULTS"
    grep -E '^  (deliveries_per_s|deliveries_per_server_cpu_s|lat_p99_us|server_cpu |wire_bytes_per_delivery|deflate_negotiated|rss_per_conn_kib|rss_per_conn_after_broadcast_kib|cycles_per_s|errors_total)' "$out" | sed 's/^/    /' >&2
  else
    warn "no JSON from loadgen for $bench/$server (see $out)"
    tail -3 "$out" | sed 's/^/    /' >&2
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"failed\":true,\"reason\":\"no loadgen output\"}" >>"$RESULTS"
  fi
  sleep 1  # let TIME_WAIT / memory settle between runs
}

IFS=, read -r -a BENCHES <<<"$SCENARIOS"
for bench in "${BENCHES[@]}"; do
  if [ "$bench" = shards2 ]; then
    [ -x "$SHARDCAST" ] || { warn "shardcast missing: skipping shards2"; continue; }
    for sub in fanout-1k-max fanout-10k-rate10; do
      for rep in $(seq "$REPS"); do
        run_one "$sub" shardcast-s1 "$rep" "$SERVER_CPU" "$LOADGEN_CPU"
        run_one "$sub" shardcast-s2 "$rep" "0-$(( $(nproc) - 1 ))" "0-$(( $(nproc) - 1 ))"
      done
    done
    continue
  fi
  # permessage-deflate variants: only shardcast, one fresh server per variant (A B C A B C ...).
  variants=""
  case "$bench" in
    fanout-1k-json-deflate) variants="off shared dedicated" ;;
    idle-deflate-5000) variants="shared dedicated" ;;
  esac
  if [ -n "$variants" ]; then
    [ -x "$SHARDCAST" ] || { warn "shardcast missing: skipping $bench"; continue; }
    for rep in $(seq "$REPS"); do
      for v in $variants; do
        server_available "shardcast-deflate-$v" || continue
        run_one "$bench" "shardcast-deflate-$v" "$rep" "$SERVER_CPU" "$LOADGEN_CPU"
      done
    done
    continue
  fi
  # Envelope protocol: the same daemon, clients raw (/ws/{room}) or envelope JSON / CBOR (/ws).
  case "$bench" in
    *-envelope)
      [ -x "$SHARDCAST" ] || { warn "shardcast missing: skipping $bench"; continue; }
      for rep in $(seq "$REPS"); do
        for v in raw json cbor; do
          run_one "$bench" "shardcast-env-$v" "$rep" "$SERVER_CPU" "$LOADGEN_CPU"
        done
      done
      continue ;;
  esac
  for rep in $(seq "$REPS"); do
    for server in "${AVAIL[@]}"; do
      run_one "$bench" "$server" "$rep" "$SERVER_CPU" "$LOADGEN_CPU"
    done
  done
done

echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
log "results: $RESULTS"
python3 "$PERF/summarize.py" "$OUT" | tee "$OUT/summary.md"
