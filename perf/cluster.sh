#!/usr/bin/env bash
# Cluster mode (issue 14): 3 shardcast nodes with [cluster] on one redis-server against the
# reference the "scale WebSockets with Redis" articles build (perf/ref/node-ws-redis: 3 Node `ws`
# processes sharing rooms through Redis pub/sub), driven by the same loadgen command.
#
#   perf/cluster.sh [--reps N (3)] [--servers shardcast-env,shardcast-raw,node-ws-redis]
#                   [--scenarios cluster-max,cluster-rate,cluster-rooms] [--subscribers N (3000)]
#                   [--rate R (100)] [--window W (16)] [--duration S (5)] [--warmup S (1)]
#                   [--out DIR] [--no-lock] [--quiet-wait SECS (60)]
#
# Servers:
#   shardcast-env   3 shardcast nodes (--shards 1, [cluster] on the run's redis-server), clients
#                   speak the JSON envelope (loadgen --envelope json): every publish runs one Lua
#                   script in Redis (seq INCR, history XADD, PUBLISH), every delivery carries seq
#   shardcast-raw   the same nodes, raw clients (/ws/{room}); across nodes since main a7e8562
#                   (numbered by Redis like envelope publishes: the same Lua script per publish)
#   node-ws-redis   3 x perf/ref/run-node-ws-redis.sh: a bare PUBLISH per client message, one
#                   SUBSCRIBE per room per node, raw clients
# Scenarios (subscribers and publishers spread round-robin over the 3 nodes: connection i on
# node i % 3; one publisher per node):
#   cluster-max     fanout --subscribers N --publishers 3 --max --window W (W per publisher)
#   cluster-rate    fanout --subscribers N --publishers 3 --rate R (R publishes/s in total):
#                   moderate load, where p99 latency means something
#   cluster-rooms   rooms --clients N --room-size 30 --rate 1 (N/30 rooms, every client
#                   publishes once a second: many room channels, every client on some node)
#   NAME@N          any of them with N subscribers / clients instead of --subscribers
#
# PLACEMENT (2 cores): the system under test (the 3 nodes and redis-server) on CPU 0, loadgen
# alone on CPU 1, for both servers. Redis CPU is reported apart (redis_cpu) and added to the
# nodes' in deliveries_per_server_redis_cpu_s.
#
# Each run: a FRESH redis-server (--save "" --appendonly no, a free port) and 3 fresh nodes,
# loadgen with --server-pid (the 3 pids, CPU summed) --redis-pid --redis-addr (INFO
# commandstats before/after the measured phase: Redis calls per broadcast), then everything
# stopped. Order per rep: servers alternate (A B C A B C ...). Output in perf/results/<ts>-cluster/
# (results.jsonl, env.txt, logs/), then the Markdown table of medians (perf/summarize-cluster.py).
#
# While it runs, /tmp/shardcast-bench-running exists (other builds on this machine pause);
# removed at exit, also on failure (--no-lock: don't create it). Before each run it waits (up to
# --quiet-wait s) until the machine is quiet (busy <= 0.3 cores) and records what it saw
# (busy_before_run); loadgen's host_other_cores tells how contended the run itself was.
#
# Binaries: SHARDCAST (default target/release/shardcast of this checkout) is copied into the
# results directory first, so a rebuild during the run cannot change it (SHARDCAST_COMMIT: what
# env.txt says it was built from; default the HEAD of its checkout); LOADGEN (default
# perf/loadgen/target/release/loadgen).
set -euo pipefail

PERF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$PERF/.." && pwd)"
REPS=3
SERVERS="shardcast-env,shardcast-raw,node-ws-redis"
SCENARIOS="cluster-max,cluster-rate"
SUBS=3000
RATE=100
WINDOW=16
DURATION=5
WARMUP=1
OUT=""
LOCK=1
QUIET_WAIT=60
NODES=3
SCPU=0
LCPU=1
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --servers) SERVERS="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --subscribers) SUBS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --window) WINDOW="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-lock) LOCK=0; shift ;;
    --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "[cluster.sh] $*" >&2; }
die() { echo "[cluster.sh] ERROR: $*" >&2; exit 1; }

SHARDCAST_SRC="${SHARDCAST:-$ROOT/target/release/shardcast}"
LOADGEN="${LOADGEN:-$PERF/loadgen/target/release/loadgen}"
[ -x "$SHARDCAST_SRC" ] || die "no shardcast binary at $SHARDCAST_SRC (cargo build --release, or SHARDCAST=...)"
[ -x "$LOADGEN" ] || die "no loadgen at $LOADGEN (cargo build --release --manifest-path perf/loadgen/Cargo.toml)"
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli not found"
case ",$SERVERS," in
  *,node-ws-redis,*) [ -f "$PERF/ref/node-ws-redis/node_modules/ioredis/package.json" ] \
    || die "node-ws-redis not installed: run perf/ref/install.sh" ;;
esac

TS="$(date -u +%Y%m%d-%H%M%S)"
OUT="${OUT:-$PERF/results/$TS-cluster}"
mkdir -p "$OUT/logs"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
cp "$SHARDCAST_SRC" "$OUT/shardcast.bin"
SHARDCAST="$OUT/shardcast.bin"

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
on_exit() {
  cleanup
  rm -f "$OUT/shardcast.bin"
  [ "$LOCK" = 1 ] && rm -f /tmp/shardcast-bench-running
  return 0
}
trap on_exit EXIT
trap 'exit 130' INT TERM
[ "$LOCK" = 1 ] && touch /tmp/shardcast-bench-running

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {  # PORT [TRIES of 0.05 s]
  local i
  for ((i = 0; i < ${2:-200}; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
wait_ready() {  # ADMIN_PORT: shardcast /readyz 200 (bridge connected, canary back)
  local i
  for ((i = 0; i < 200; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.05
  done
  return 1
}
QUIET_MAX=0.3
# wait_quiet SECS: until the machine's busy time over 0.5 s is at most QUIET_MAX cores (other
# builds paused), at most SECS; BUSY_BEFORE = what was seen last.
wait_quiet() {
  local end=$((SECONDS + $1))
  while :; do
    BUSY_BEFORE="$(busy_cores)"
    awk -v b="$BUSY_BEFORE" -v m="$QUIET_MAX" 'BEGIN { exit !(b <= m) }' && return 0
    if [ "$SECONDS" -ge "$end" ]; then
      log "machine still busy (${BUSY_BEFORE} cores) after $1 s: running anyway"
      return 0
    fi
    sleep 1
  done
}
# shellcheck source=lib.sh
source "$PERF/lib.sh"  # busy_cores

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
  echo "shardcast: $SHARDCAST_SRC sha256 $(sha256sum "$SHARDCAST" | cut -c1-16)"
  commit="${SHARDCAST_COMMIT:-}"
  [ -n "$commit" ] || commit="$(git -C "$(dirname "$SHARDCAST_SRC")" rev-parse --short HEAD 2>/dev/null \
    || echo n/a) (HEAD of the checkout of the binary at copy time)"
  echo "shardcast_commit: $commit; binary built $(date -u -r "$SHARDCAST_SRC" +%FT%TZ)"
  echo "perf_commit: $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "redis: $(redis-server --version | awk '{print $3}')"
  echo "node: $(node -v 2>/dev/null || echo n/a), ws $(node -p 'require(process.argv[1]).version' "$PERF/ref/node-ws-redis/node_modules/ws/package.json" 2>/dev/null || echo n/a), ioredis $(node -p 'require(process.argv[1]).version' "$PERF/ref/node-ws-redis/node_modules/ioredis/package.json" 2>/dev/null || echo n/a)"
  echo "placement: $NODES nodes + redis-server on CPU $SCPU (taskset), loadgen on CPU $LCPU; shardcast --shards 1 per node"
  echo "scenarios: $SCENARIOS; subscribers $SUBS; rate $RATE/s total; window $WINDOW per publisher; duration $DURATION s; warmup $WARMUP s; reps $REPS"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

# start_cluster SERVER TAG: fresh redis-server + NODES nodes; sets REDIS_PORT REDIS_PID NODE_PIDS URLS.
start_cluster() {
  local server="$1" tag="$2" i port admin cfg
  REDIS_PORT="$(free_port)"
  taskset -c "$SCPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no >"$OUT/logs/$tag-redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$REDIS_PORT" || { log "redis did not start"; return 1; }
  NODE_PIDS=""
  URLS=""
  for ((i = 0; i < NODES; i++)); do
    port="$(free_port)"
    case "$server" in
      shardcast-*)
        admin="$(free_port)"
        cfg="$OUT/logs/$tag-node$i.toml"
        cat >"$cfg" <<EOF
[admin]
listen = "127.0.0.1:$admin"
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/0"
node_id = "node$i"
channel_prefix = "perf"
EOF
        taskset -c "$SCPU" "$SHARDCAST" --config "$cfg" --listen "127.0.0.1:$port" --shards 1 \
          >"$OUT/logs/$tag-node$i.log" 2>&1 &
        ;;
      node-ws-redis)
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" taskset -c "$SCPU" \
          "$PERF/ref/run-node-ws-redis.sh" "$port" >"$OUT/logs/$tag-node$i.log" 2>&1 &
        ;;
      *) die "unknown server $server" ;;
    esac
    PIDS+=("$!")
    NODE_PIDS="${NODE_PIDS:+$NODE_PIDS,}$!"
    URLS="${URLS:+$URLS,}ws://127.0.0.1:$port"
    wait_port "$port" || { log "$server node $i did not start"; return 1; }
    case "$server" in
      shardcast-*) wait_ready "$admin" || { log "$server node $i not ready (/readyz)"; return 1; } ;;
    esac
  done
  # node-ws-redis: both ioredis connections up before the first client.
  sleep 0.5
}

# scenario_args SCENARIO SERVER: the loadgen arguments (SCENARIO@N: N subscribers / clients).
scenario_args() {
  local env=() n="$SUBS"
  [ "$2" = shardcast-env ] && env=(--envelope json)
  [[ "$1" == *@* ]] && n="${1#*@}"
  case "${1%@*}" in
    cluster-max) echo fanout --subscribers "$n" --publishers "$NODES" --max --window "$WINDOW" "${env[@]}" ;;
    cluster-rate) echo fanout --subscribers "$n" --publishers "$NODES" --rate "$RATE" "${env[@]}" ;;
    cluster-rooms) echo rooms --clients "$n" --room-size 30 --rate 1 "${env[@]}" ;;
    *) die "unknown scenario $1" ;;
  esac
}

IFS=, read -r -a SCN <<<"$SCENARIOS"
IFS=, read -r -a SRV <<<"$SERVERS"
for bench in "${SCN[@]}"; do
  for ((rep = 1; rep <= REPS; rep++)); do
    for server in "${SRV[@]}"; do
      tag="$bench-$server-r$rep"
      wait_quiet "$QUIET_WAIT"
      busy="$BUSY_BEFORE"
      if ! start_cluster "$server" "$tag"; then
        log "$tag: cluster did not come up (logs in $OUT/logs): skipped"
        cleanup
        continue
      fi
      # shellcheck disable=SC2046
      args=($(scenario_args "$bench" "$server"))
      log "$tag: loadgen ${args[*]}"
      set +e
      taskset -c "$LCPU" "$LOADGEN" "${args[@]}" --urls "$URLS" --server-pid "$NODE_PIDS" \
        --redis-pid "$REDIS_PID" --redis-addr "127.0.0.1:$REDIS_PORT" \
        --duration "$DURATION" --warmup "$WARMUP" --json --label "$tag" \
        >"$OUT/logs/$tag-loadgen.txt" 2>"$OUT/logs/$tag-loadgen.err"
      rc=$?
      set -e
      cleanup
      line="$(grep '^{' "$OUT/logs/$tag-loadgen.txt" | tail -1 || true)"
      if [ -z "$line" ]; then
        log "$tag: no result (rc $rc; see $OUT/logs/$tag-loadgen.err)"
        continue
      fi
      [ "$rc" = 0 ] || log "$tag: loadgen exit $rc (errors counted in the result)"
      python3 - "$bench" "$server" "$rep" "$busy" "$rc" "$line" >>"$RESULTS" <<'EOF'
import json, sys
bench, server, rep, busy, rc, line = sys.argv[1:]
d = json.loads(line)
d.update(bench=bench, server=server, rep=int(rep), busy_before_run=float(busy), loadgen_rc=int(rc))
print(json.dumps(d))
EOF
      grep -E '^  (deliveries_per_s|lat_p99_us|missing_deliveries|redis_cmds_per_broadcast) ' \
        "$OUT/logs/$tag-loadgen.txt" | tr -s ' ' | paste -sd' ' | sed "s/^/[cluster.sh] $tag:/" >&2
    done
  done
done

python3 "$PERF/summarize-cluster.py" "$OUT" | tee "$OUT/summary.md"
log "results in $OUT"
