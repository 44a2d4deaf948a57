#!/usr/bin/env bash
# Abuse and storms against the release daemon on real sockets (issue 11), with loadgen
# (perf/loadgen) as the clients and tests/storm/check.py holding each number to its bound:
#
#   storm    10,000 raw-room clients cut at once, reconnecting with full-jitter backoff that
#            honours Retry-After: (1) the daemon restarted (SIGKILL, started again on the same
#            port), (2) the connections cut 3 times in one daemon process (`ss -K`), for RSS and
#            FDs back to baseline, (3) a restart by `--takeover` (the old process drains its
#            clients over 5 s to the new one), (4) a cut with [admission] handshakes_per_second
#            set, so clients are refused with 503 + Retry-After and must come back by it.
#   flood    a 1,000-subscriber room at 20 messages/s, measured alone and while 15,000
#            connections flood the daemon: silent (slowloris), half a request head, garbage.
#   stalled  5,000 clients that never read in a busy room with 100 fast members: the memory per
#            stalled client (RSS + kernel TCP memory) against max_buffered_bytes +
#            socket_unsent_bytes; the fast members lose nothing (p99 reported against a run
#            without the stalled clients).
#
#   tests/storm/run.sh                 bounded checks, the test command's step (~3 min, 2 cores)
#   tests/storm/run.sh --full          full size: longer runs, 3 repetitions, medians, and
#                                      uWebSockets.js (perf/ref/uws) side by side in the storm
#   options: --only storm,flood,stalled   --no-build   --out DIR
#
# Every wait is on an event (a port answering, a ready file, loadgen's own end conditions) with
# a generous deadline printed in the output. Placement: the daemon (one shard) on CPU 0, the
# measuring loadgen on CPU 1, a flood generator on CPU 1 at nice 19 (it must not delay the
# measuring one). Exit status 1 if any bound is violated. Configs: tests/storm/*.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
HERE="$ROOT/tests/storm"
SHARDCAST="$ROOT/target/release/shardcast"
LOADGEN="$ROOT/perf/loadgen/target/release/loadgen"
FULL=0
ONLY="storm,flood,stalled"
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) FULL=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT" ]; then
  if [ "$FULL" = 1 ]; then OUT="$ROOT/perf/results/$(date +%Y%m%d-%H%M%S)-storm"; else OUT="$(mktemp -d /tmp/shardcast-storm.XXXXXX)"; fi
fi
mkdir -p "$OUT"
log() { printf '[storm] %s\n' "$*" >&2; }
only() { [[ ",$ONLY," == *",$1,"* ]]; }

if [ "$BUILD" = 1 ]; then
  log "building shardcast and loadgen (release)"
  cargo build --release --locked --quiet
  cargo build --release --locked --quiet --manifest-path perf/loadgen/Cargo.toml
fi
ulimit -n "$(ulimit -Hn)"
if [ "$(nproc)" -ge 2 ]; then SRV_CPU=(taskset -c 0); GEN_CPU=(taskset -c 1); else SRV_CPU=(); GEN_CPU=(); fi

PIDS=()      # pid files of servers started here
FLOOD_PID=""
cleanup() {
  [ -n "$FLOOD_PID" ] && kill "$FLOOD_PID" 2>/dev/null || true
  for f in "${PIDS[@]}"; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT

PORT=$((9600 + RANDOM % 200))
FAILS=0

# healthy PORT: /healthz answers 200 (bash's /dev/tcp: no curl needed).
healthy() {
  (
    exec 9<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&9
    read -r -t 2 line <&9 || exit 1
    [[ "$line" == *" 200 "* ]]
  ) 2>/dev/null
}

# alive PID: some thread of it still runs (as in restart.sh: a killed process's leader is a
# zombie while its other threads still close its sockets).
alive() {
  local st
  st="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [ "$st" != Z ] || [ "$(ls "/proc/$1/task" 2>/dev/null | wc -l)" -gt 1 ]
}

# server_cmd NAME PORT CONFIG: the command line that starts a server.
server_cmd() {
  case "$1" in
    shardcast) echo "${SRV_CPU[*]} $SHARDCAST --listen 127.0.0.1:$2 --shards 1${3:+ --config $3}" ;;
    uws) echo "${SRV_CPU[*]} $ROOT/perf/ref/run-uws.sh $2" ;;
  esac
}

# start NAME CONFIG: a fresh server on a fresh port; sets PORT, PIDFILE, SRV_PID, SRV_CMD, SRVLOG.
start() {
  PORT=$((PORT + 1))
  PIDFILE="$OUT/server.$PORT.pid"
  SRVLOG="$OUT/server.$PORT.log"
  SRV_CMD="$(server_cmd "$1" "$PORT" "${2:-}")"
  # shellcheck disable=SC2086
  $SRV_CMD >"$SRVLOG" 2>&1 &
  echo $! >"$PIDFILE"
  PIDS+=("$PIDFILE")
  local end=$((SECONDS + 20))
  until healthy "$PORT"; do
    alive "$(cat "$PIDFILE")" || { log "$1 exited at start (see $SRVLOG)"; return 1; }
    [ "$SECONDS" -lt "$end" ] || { log "$1 not answering on $PORT after 20 s"; return 1; }
    sleep 0.05
  done
  SRV_PID="$(cat "$PIDFILE")"
}

stop() {
  local pid
  pid="$(cat "$PIDFILE")"
  kill "$pid" 2>/dev/null || true
  local end=$((SECONDS + 30))
  while alive "$pid" && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
}

# lg NAME ARGS...: loadgen on the measuring CPU, JSON to $OUT/NAME.json; loadgen's own exit
# status is not the verdict (check.py is).
lg() {
  local name="$1"; shift
  "${GEN_CPU[@]}" "$LOADGEN" "$@" --json >"$OUT/$name.json" 2>"$OUT/$name.err" || true
  if ! grep -q '^{' "$OUT/$name.json"; then log "loadgen $name produced no result:"; cat "$OUT/$name.err" >&2; fi
}

verdict() { if python3 "$HERE/check.py" "$@"; then :; else FAILS=$((FAILS + 1)); fi; }

cut_cmd() { echo "ss -K -tn state established '( sport = :$1 )' >/dev/null"; }

# ---- storm ------------------------------------------------------------------------------------
storm() {
  local reps=1 servers="shardcast" clients=10000
  [ "$FULL" = 1 ] && { reps=3; servers="shardcast uws"; }
  if ! ss -K -tn state established '( sport = :1 )' >/dev/null 2>&1; then
    log "ss -K (CONFIG_INET_DIAG_DESTROY) unavailable: same-process cuts skipped"; local nocut=1
  fi
  for rep in $(seq "$reps"); do
    for srv in $servers; do
      if [ "$srv" = uws ] && [ ! -d "$ROOT/perf/ref/uws/node_modules" ]; then
        log "uws not installed (perf/ref/install.sh): skipped"; continue
      fi
      log "storm: $clients clients, $srv restarted with SIGKILL (rep $rep; deadline 120 s)"
      start "$srv" "$HERE/plain.toml" || { FAILS=$((FAILS + 1)); continue; }
      lg "storm-restart-$srv-$rep" storm --url "ws://127.0.0.1:$PORT" --clients "$clients" \
        --server-pid "$SRV_PID" --label "restart-$srv" \
        --cut-cmd "$HERE/restart.sh --port $PORT $PIDFILE KILL $SRVLOG $SRV_CMD"
      if [ "$srv" = shardcast ]; then verdict storm "$OUT/storm-restart-$srv-$rep.json" --mode restart
      else python3 "$HERE/check.py" storm "$OUT/storm-restart-$srv-$rep.json" --mode restart || true; fi
      stop
      [ -n "${nocut:-}" ] && continue
      log "storm: $clients clients, connections cut three times in one $srv process (rep $rep)"
      start "$srv" "$HERE/plain.toml" || { FAILS=$((FAILS + 1)); continue; }
      lg "storm-cut-$srv-$rep" storm --url "ws://127.0.0.1:$PORT" --clients "$clients" \
        --server-pid "$SRV_PID" --label "cut-$srv" --cuts 3 --cut-cmd "$(cut_cmd "$PORT")"
      if [ "$srv" = shardcast ]; then verdict storm "$OUT/storm-cut-$srv-$rep.json" --mode cut
      else python3 "$HERE/check.py" storm "$OUT/storm-cut-$srv-$rep.json" --mode cut || true; fi
      stop
    done
  done
  log "storm: $clients clients, shardcast restarted by --takeover (drain over 5 s; deadline 120 s)"
  start shardcast "$HERE/takeover.toml" || { FAILS=$((FAILS + 1)); return; }
  lg storm-takeover storm --url "ws://127.0.0.1:$PORT" --clients "$clients" --server-pid "$SRV_PID" \
    --label takeover --cut-cmd "$HERE/restart.sh $PIDFILE takeover $SRVLOG $SRV_CMD"
  verdict storm "$OUT/storm-takeover.json" --mode restart
  stop
  [ -n "${nocut:-}" ] && return 0
  log "storm: 5000 clients cut, [admission] handshakes_per_second = 2000 (503 + Retry-After)"
  start shardcast "$HERE/admission.toml" || { FAILS=$((FAILS + 1)); return; }
  lg storm-admission storm --url "ws://127.0.0.1:$PORT" --clients 5000 --server-pid "$SRV_PID" \
    --label admission --cut-cmd "$(cut_cmd "$PORT")"
  verdict storm "$OUT/storm-admission.json" --mode admission
  stop
}

# ---- floods while serving a room --------------------------------------------------------------
flood() {
  local dur=8
  [ "$FULL" = 1 ] && { dur=30; }
  log "flood: room of 1000 subscribers at 20 msg/s for ${dur} s, no flood"
  start shardcast "$HERE/flood.toml" || { FAILS=$((FAILS + 1)); return; }
  lg flood-none fanout --url "ws://127.0.0.1:$PORT" --subscribers 1000 --rate 20 \
    --duration "$dur" --server-pid "$SRV_PID" --label no-flood
  stop
  for kind in silent halfhead garbage; do
    log "flood: the same room while 15000 $kind connections flood the daemon (ready deadline 60 s)"
    start shardcast "$HERE/flood.toml" || { FAILS=$((FAILS + 1)); continue; }
    local ready="$OUT/flood-$kind.ready"
    rm -f "$ready"
    nice -n 19 "${GEN_CPU[@]}" "$LOADGEN" flood --url "ws://127.0.0.1:$PORT" --kind "$kind" \
      --connections 15000 --reopen-rate 15000 --ready-file "$ready" --server-pid "$SRV_PID" \
      --json >"$OUT/flood-gen-$kind.json" 2>"$OUT/flood-gen-$kind.err" &
    FLOOD_PID=$!
    local end=$((SECONDS + 60))
    while [ ! -s "$ready" ] && [ "$SECONDS" -lt "$end" ] && alive "$FLOOD_PID"; do sleep 0.1; done
    [ -s "$ready" ] || log "flood generator not ready after 60 s"
    lg "flood-$kind" fanout --url "ws://127.0.0.1:$PORT" --subscribers 1000 --rate 20 \
      --duration "$dur" --server-pid "$SRV_PID" --label "$kind-flood"
    log "daemon FDs at the end of the $kind flood: $(ls "/proc/$SRV_PID/fd" | wc -l)"
    kill -TERM "$FLOOD_PID"; wait "$FLOOD_PID" || true; FLOOD_PID=""
    verdict flood "$OUT/flood-none.json" "$OUT/flood-$kind.json" "$OUT/flood-gen-$kind.json"
    stop
  done
}

# ---- stalled clients: the memory bound --------------------------------------------------------
stalled() {
  local reps=1 dur=5 factor=3
  [ "$FULL" = 1 ] && { reps=3; dur=10; factor=1.2; }
  # max_buffered_bytes 256 KiB + socket_unsent_bytes 64 KiB (tests/storm/stalled.toml).
  local bound=$((256 * 1024 + 64 * 1024))
  for rep in $(seq "$reps"); do
    for s in 5000 0; do
      log "stalled: $s stalled clients + 100 fast members at 100 x 1 KiB/s (rep $rep; fill deadline 60 s)"
      start shardcast "$HERE/stalled.toml" || { FAILS=$((FAILS + 1)); continue; }
      lg "stalled-$s-$rep" stalled --url "ws://127.0.0.1:$PORT" --stalled "$s" --subscribers 100 \
        --rate 100 --size 1024 --duration "$dur" --bound-bytes "$bound" --server-pid "$SRV_PID" \
        --label "stalled-$s"
      stop
    done
  done
  if [ "$reps" = 1 ]; then
    verdict stalled "$OUT/stalled-5000-1.json" "$OUT/stalled-0-1.json" --p99-factor "$factor"
  else
    # The medians' run (by p99) of each side.
    local a b
    a="$(python3 -c 'import json,sys; r=sorted((json.loads([l for l in open(f) if l.startswith("{")][-1])["lat_p99_us"], f) for f in sys.argv[1:]); print(r[len(r)//2][1])' "$OUT"/stalled-5000-*.json)"
    b="$(python3 -c 'import json,sys; r=sorted((json.loads([l for l in open(f) if l.startswith("{")][-1])["lat_p99_us"], f) for f in sys.argv[1:]); print(r[len(r)//2][1])' "$OUT"/stalled-0-*.json)"
    verdict stalled "$a" "$b" --p99-factor "$factor"
  fi
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' (+ uncommitted changes)')"
  echo "kernel: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "rustc: $(rustc --version 2>/dev/null)"
  echo "node: $(node --version 2>/dev/null || echo none)"
  for k in net/core/somaxconn net/ipv4/tcp_max_syn_backlog net/ipv4/tcp_wmem net/ipv4/tcp_rmem net/ipv4/tcp_mem; do
    echo "$k: $(cat "/proc/sys/$k")"
  done
  echo "full: $FULL"
} >"$OUT/env.txt"
only storm && storm
only flood && flood
only stalled && stalled
rm -f "$OUT"/*.pid "$OUT"/*.ready
log "results in $OUT"
if [ "$FAILS" -gt 0 ]; then log "$FAILS check(s) failed"; exit 1; fi
log "all storm, flood and stalled-client checks passed"
