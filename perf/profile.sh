#!/usr/bin/env bash
# Profile shardcast under a loadgen scenario: CPU flamegraph + syscall/send counts per delivery.
#
#   perf/profile.sh [OPTIONS] SCENARIO-ARGS...
#   perf/profile.sh fanout --subscribers 1000 --max
#   perf/profile.sh --shards 1 --call-graph fp echo --connections 100 --duration 10
#
# Starts shardcast (--shards 1 unless --shards N; pinned to CPU 0), then while loadgen runs the
# given scenario on CPU 1 (with --server-pid and --json added):
#   * perf record (software event cpu-clock: this VM exposes no hardware PMU) with call graphs on
#     the daemon -> perf.data, flamegraph.svg (inferno), top-symbols.txt (top 20, self time);
#   * perf stat on the daemon counting syscalls:sys_enter_* tracepoints plus io_uring submissions
#     (io_uring:io_uring_submit_req), socket sends/receives (sock:sock_send_length /
#     sock:sock_recv_length: counted whether a send came from a syscall or from io_uring) and
#     loopback packets (net:net_dev_xmit) -> syscalls.txt and per-delivery.txt, each count
#     divided by the messages delivered over the whole run (loadgen's deliveries_total; for
#     idle/churn, by connections opened). When syscall tracepoints are missing it falls back to
#     `strace -c -f` (which slows the daemon a lot: its throughput numbers are then meaningless).
# Results go to perf/results/<timestamp>-profile/.
#
# Options:
#   --shards N            shardcast shards (default 1)
#   --io-driver D         shardcast --io-driver (auto | io_uring | epoll; default: its own)
#   --call-graph MODE     dwarf (default: the release profile has debug info but no frame
#                         pointers, so fp gives truncated user stacks) | fp | none
#   --freq HZ             sampling frequency (default 999)
#   --port PORT           (default 9500)
#   --out DIR             results directory
#   --no-build            do not run cargo build
#   --no-stat             skip the perf stat / strace counting
# Installs linux-perf (apt-get) and inferno (cargo install) when missing.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PERF_DIR="$ROOT/perf"
LOADGEN="$PERF_DIR/loadgen/target/release/loadgen"
SHARDCAST="$ROOT/target/release/shardcast"
SHARDS=1
IO_ARGS=()
CALLGRAPH=dwarf
FREQ=999
PORT=9500
OUT=""
BUILD=1
STAT=1

while [ $# -gt 0 ]; do
  case "$1" in
    --shards) SHARDS="$2"; shift 2 ;;
    --io-driver) IO_ARGS=(--io-driver "$2"); shift 2 ;;
    --call-graph) CALLGRAPH="$2"; shift 2 ;;
    --freq) FREQ="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-stat) STAT=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: perf/profile.sh [OPTIONS] SCENARIO-ARGS... (see --help)" >&2; exit 2; }
SCEN=("$@")

log() { echo "[profile] $*" >&2; }
warn() { echo "[profile] WARNING: $*" >&2; }

# ---- tools ----------------------------------------------------------------------------------
if ! command -v perf >/dev/null || ! perf --version >/dev/null 2>&1; then
  log "installing linux-perf with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null \
    || { echo "profile.sh: could not install linux-perf" >&2; exit 1; }
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  log "installing inferno (cargo install inferno --locked)"
  cargo install inferno --locked --quiet || warn "inferno install failed: no flamegraph"
fi
if [ "$BUILD" = 1 ]; then
  log "building shardcast and loadgen (release)"
  (cd "$ROOT" && cargo build --release --quiet) || { echo "profile.sh: shardcast build failed" >&2; exit 1; }
  cargo build --release --quiet --manifest-path "$PERF_DIR/loadgen/Cargo.toml" \
    || { echo "profile.sh: loadgen build failed" >&2; exit 1; }
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

OUT="${OUT:-$PERF_DIR/results/$(date +%Y%m%d-%H%M%S)-profile}"
mkdir -p "$OUT"

# ---- processes we start: always cleaned up ----------------------------------------------------
SRV_PID=""; REC_PID=""; STAT_PID=""; LG_PID=""
stop_pid() {  # pid signal [seconds before SIGKILL, default 10]
  [ -n "$1" ] || return 0
  local state
  kill "-$2" "$1" 2>/dev/null
  for _ in $(seq $(( ${3:-10} * 10 ))); do
    state="$(ps -o stat= -p "$1" 2>/dev/null)"
    case "$state" in ''|Z*) break ;; esac   # gone, or exited and waiting to be reaped
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}
cleanup() {
  stop_pid "$LG_PID" TERM; LG_PID=""
  stop_pid "$REC_PID" INT 60; REC_PID=""
  stop_pid "$STAT_PID" INT 120; STAT_PID=""
  stop_pid "$SRV_PID" TERM; SRV_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ---- server -----------------------------------------------------------------------------------
taskset -c 0 "$SHARDCAST" --listen "127.0.0.1:$PORT" --shards "$SHARDS" ${IO_ARGS[@]+"${IO_ARGS[@]}"} 2>"$OUT/shardcast.log" &
SRV_PID=$!
for _ in $(seq 100); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" && break
  kill -0 "$SRV_PID" 2>/dev/null || { echo "profile.sh: shardcast exited (see $OUT/shardcast.log)" >&2; exit 1; }
  sleep 0.1
done
IO_DRIVER="$(grep -o 'io_driver="[a-z_]*"' "$OUT/shardcast.log" | head -1 | cut -d'"' -f2)"
log "shardcast pid $SRV_PID, shards $SHARDS, io_driver ${IO_DRIVER:-?}"

# A non-interactive shell starts background jobs with SIGINT ignored, and perf (stat) then never
# sees the SIGINT that tells it to stop and write its counts: restore the default first.
with_sigint() { exec python3 -c 'import os,signal,sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' "$@"; }

# ---- perf record ------------------------------------------------------------------------------
case "$CALLGRAPH" in
  dwarf) CG=(--call-graph dwarf,32768) ;;
  fp) CG=(-g) ;;
  none) CG=() ;;
  *) echo "profile.sh: --call-graph dwarf|fp|none" >&2; exit 2 ;;
esac
with_sigint perf record -e cpu-clock -F "$FREQ" "${CG[@]}" -p "$SRV_PID" -o "$OUT/perf.data" 2>"$OUT/perf-record.log" &
REC_PID=$!

# ---- syscall counting -------------------------------------------------------------------------
STAT_MODE=none
if [ "$STAT" = 1 ]; then
  # (grep -c, not grep -q: with pipefail, perf list dying of SIGPIPE would fail the test)
  has_event() { [ "$(perf list "$1" 2>/dev/null | grep -c "${1%\*}")" -gt 0 ]; }
  if has_event 'syscalls:sys_enter_*'; then
    STAT_MODE=perf
    EXTRA=""
    for ev in raw_syscalls:sys_enter io_uring:io_uring_submit_req sock:sock_send_length \
              sock:sock_recv_length net:net_dev_xmit; do
      has_event "$ev" && EXTRA="$EXTRA,$ev"
    done
    with_sigint perf stat -x, -e "syscalls:sys_enter_*$EXTRA" -p "$SRV_PID" -o "$OUT/perf-stat.csv" 2>"$OUT/perf-stat.log" &
    STAT_PID=$!
  elif command -v strace >/dev/null; then
    STAT_MODE=strace
    warn "no syscall tracepoints: falling back to strace -c -f (slows the daemon)"
    with_sigint strace -c -f -p "$SRV_PID" -o "$OUT/strace-c.txt" 2>"$OUT/strace.log" &
    STAT_PID=$!
  else
    warn "neither syscall tracepoints nor strace: no syscall counts"
  fi
fi
sleep 0.5  # let perf attach

# ---- load -------------------------------------------------------------------------------------
log "loadgen ${SCEN[*]}"
timeout -s TERM 600 taskset -c 1 "$LOADGEN" "${SCEN[@]}" --url "ws://127.0.0.1:$PORT" \
  --server-pid "$SRV_PID" --json >"$OUT/loadgen.txt" 2>&1 &
LG_PID=$!
wait "$LG_PID"; LG_RC=$?; LG_PID=""
grep -v '^{' "$OUT/loadgen.txt" >&2
grep '^{' "$OUT/loadgen.txt" | tail -1 >"$OUT/loadgen.json"
[ "$LG_RC" = 0 ] || warn "loadgen exit status $LG_RC"

# perf stat needs ~15 s to tear down ~370 tracepoint events: let it.
log "stopping perf (tracepoint teardown takes a while)"
stop_pid "$STAT_PID" INT 120; STAT_PID=""
stop_pid "$REC_PID" INT 60; REC_PID=""
stop_pid "$SRV_PID" TERM; SRV_PID=""

# ---- reports ----------------------------------------------------------------------------------
{
  echo "# perf/profile.sh ${SCEN[*]}"
  echo "# kernel $(uname -r), $(perf --version), shards $SHARDS, io_driver ${IO_DRIVER:-?}, call graph $CALLGRAPH, event cpu-clock @ ${FREQ} Hz"
} >"$OUT/info.txt"

if [ -s "$OUT/perf.data" ]; then
  perf report -i "$OUT/perf.data" --no-inline --stdio --no-children --sort symbol -g none --percent-limit 0 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -20 >"$OUT/top-symbols.txt"
  if command -v inferno-flamegraph >/dev/null; then
    perf script -i "$OUT/perf.data" --no-inline 2>/dev/null | inferno-collapse-perf 2>/dev/null >"$OUT/stacks.folded"
    inferno-flamegraph --title "shardcast: ${SCEN[*]}" <"$OUT/stacks.folded" >"$OUT/flamegraph.svg" 2>/dev/null \
      || warn "inferno-flamegraph failed"
  fi
else
  warn "perf record produced no data (see $OUT/perf-record.log)"
fi

python3 - "$OUT" "$STAT_MODE" <<'PY' >"$OUT/per-delivery.txt"
import json, os, re, sys
out, mode = sys.argv[1], sys.argv[2]
try:
    lg = json.load(open(os.path.join(out, "loadgen.json")))
except Exception:
    lg = {}
base, what = lg.get("deliveries_total") or 0, "delivered message"
if not base:
    base, what = lg.get("opened") or lg.get("connections") or 0, "connection"
counts = {}
if mode == "perf" and os.path.exists(os.path.join(out, "perf-stat.csv")):
    for line in open(os.path.join(out, "perf-stat.csv")):
        f = line.strip().split(",")
        if len(f) >= 3 and f[0].strip().isdigit():
            counts[f[2]] = int(f[0])
elif mode == "strace" and os.path.exists(os.path.join(out, "strace-c.txt")):
    for line in open(os.path.join(out, "strace-c.txt")):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            counts["syscalls:sys_enter_" + m.group(2)] = int(m.group(1))
print(f"# counts over the whole loadgen run (connect + warm-up + measured + drain), stat mode: {mode}")
print(f"# per {what}: divided by {base:,} ({'deliveries_total' if what.startswith('delivered') else 'connections'})")
if not counts:
    print("(no counts)")
    sys.exit(0)
syscalls = {k: v for k, v in counts.items() if k.startswith("syscalls:") and v > 0}
other = {k: v for k, v in counts.items() if not k.startswith("syscalls:")}
total = sum(syscalls.values())
print(f"{'event':44} {'count':>14} {'per ' + what:>22}")
rows = [("syscalls (sum of sys_enter_*)", total)] + sorted(other.items()) + \
       sorted(syscalls.items(), key=lambda kv: -kv[1])[:25]
for k, v in rows:
    per = f"{v / base:.5f}" if base else "-"
    print(f"{k:44} {v:>14,} {per:>22}")
PY

echo >&2
log "top 20 symbols (self time, cpu-clock samples):"
cat "$OUT/top-symbols.txt" >&2 2>/dev/null
echo >&2
log "per delivery ($OUT/per-delivery.txt):"
head -20 "$OUT/per-delivery.txt" >&2
echo >&2
log "results in $OUT: flamegraph.svg, top-symbols.txt, per-delivery.txt, perf.data, loadgen.json"
