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
#   fanout-1k-env-max   only shardcast: fanout --subscribers 1000 --max --envelope json
#                       --transport ws (1000 JSON-envelope WebSocket subscribers on /ws)
#   fanout-1k-sse-max   only shardcast: the same with --transport sse (the 1000 subscribers
#                       open Server-Sent Events streams GET /sse?rooms=fanout; the publisher
#                       stays a WebSocket). Run the two side by side:
#                         --scenarios fanout-1k-env-max,fanout-1k-sse-max
#                       Both add the daemon's /metrics counters after the run to the results
#                       ("server_metrics": messages_in_total, sse_encodings_total,
#                       deliveries_total, send_ops_total): SSE encodes once per broadcast, so
#                       sse_encodings_total should be about messages_in_total (+ ~2 per stream:
#                       each join and leave event is encoded once too), not 1000x.
#   rooms-2000x10-envelope
#                       only shardcast, raw vs JSON vs CBOR: rooms --clients 2000 --room-size 10
#                       --rate 5
#   idle-deflate-5000   only shardcast, deflate shared vs dedicated: idle --connections 5000
#                       --deflate --broadcast-once (RSS per connection idle, and again after one
#                       1 KiB JSON broadcast to all: dedicated mode allocates a connection's
#                       compressor on its first compressed message)
#   handshake-none      churn --connections 1000 --cycles 20 with a bearer token per connection
#                       (20,000 distinct HS256 tokens), shardcast started with perf/configs/
#                       auth-off.toml (tokens ignored); reports handshakes/s and handshakes per
#                       server CPU-second (server CPU while connecting). Runs on every server.
#   handshake-hs256     the same, shardcast with perf/configs/auth-hs256.toml (JWT, HMAC secret)
#   handshake-es256     the same with ES256 tokens, shardcast with auth-es256.toml (a template:
#                       the P-256 key pair is generated at run time, see AUTH below)
#   fanout-1k-max-auth  fanout-1k-max with shardcast started with auth-hs256.toml and every
#                       connection presenting a valid HS256 token (checked only at the upgrade:
#                       fan-out cost should equal fanout-1k-max's)
#   handshake-* with hs256/es256 and fanout-1k-max-auth run only on shardcast and shardcast-base.
#   fanout-1k-max-tls   fanout-1k-max over wss:// (loadgen --url wss://... --ca): shardcast with a
#                       [tls] config, uws with uWS.SSLApp (TLS_CERT/TLS_KEY); each TLS connection
#                       encrypts its own copy of every broadcast. Compare with fanout-1k-max in
#                       the same run for the cost of TLS.
#   handshake-tls       churn --connections 1000 --cycles 20 over wss:// (full TLS handshakes:
#                       loadgen does not resume sessions); handshakes per server CPU-second.
#   *-tls run on shardcast and uws (node-ws/server.js has no TLS; a shardcast-base built before
#   [tls] existed rejects the config and is skipped).
#
# TLS: a test CA and a server certificate for 127.0.0.1 / localhost (EC P-256, as a typical
# ACME certificate) are made per run with the openssl CLI in a temporary directory (removed at
# exit); loadgen trusts only that CA.
#
# AUTH: tokens are made per run by Python 3 + PyJWT + cryptography in perf/.venv (git-ignored;
# created with `python3 -m venv` + `pip install PyJWT cryptography` when missing): sub "perf-N",
# exp = now + 1 h, one per line in a temporary file passed as loadgen --token-file (used
# round-robin, one per connection). HS256 tokens are signed with auth-hs256.toml's
# hs256_secret. For ES256 a P-256 key pair is generated into a temporary directory (removed at
# exit), and auth-es256.toml is written there with the public key's path substituted.
# A shardcast binary that rejects the [auth] config at start-up (built before [auth] existed) is
# run without it in handshake-none (mode "none" is the default: nothing changes) and, for
# shardcast-base only, in fanout-1k-max-auth (then it is the pre-auth baseline); a warning says
# so and the results' "server_config" records what each server was started with.
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
VENV="$PERF/.venv"           # PyJWT + cryptography for the auth scenarios' tokens
TMPD=""                      # temporary files of this run (tokens, ES256 key pair and config)
TLSD=""                      # the TLS scenarios' CA, certificate and shardcast config
TLS_ON=0                     # the run in progress is a TLS one (wss://, https health check)
HS_CONNS=1000                # handshake-*: churn --connections
HS_CYCLES=20                 #              --cycles (one distinct token per handshake)

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
  [ -n "$TMPD" ] && rm -rf "$TMPD"
  TMPD=""
  [ -n "$TLSD" ] && rm -rf "$TLSD"
  TLSD=""
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

# ---- auth scenarios: token generator, ES256 key pair ------------------------------------------
needs_tokens() {
  case "$1" in handshake-none|handshake-hs256|handshake-es256|fanout-1k-max-auth) return 0 ;; esac
  return 1
}
# Only shardcast can be started with an [auth] config; handshake-none runs everywhere. The
# envelope / SSE fan-out pair speaks shardcast's own protocol: only shardcast(-base) too.
auth_only() {
  case "$1" in
    handshake-hs256|handshake-es256|fanout-1k-max-auth|fanout-1k-env-max|fanout-1k-sse-max) return 0 ;;
  esac
  return 1
}
# Benchmarks whose results get the daemon's /metrics counters (scraped before it stops).
wants_metrics() {
  case "$1:$2" in fanout-1k-env-max:shardcast*|fanout-1k-sse-max:shardcast*) return 0 ;; esac
  return 1
}
# /metrics is on the admin listener, not the public port: those benchmarks start shardcast with
# a config (written per run next to its log) whose [admin] listen is METRICS_PORT_OFFSET above
# the run's port, so no other daemon's admin port (the default 9090) is read by mistake.
METRICS_PORT_OFFSET=10000
# server_metrics PORT: {"name":total,...} of a few shardcast counters (summed over shards).
server_metrics() {
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk '
    BEGIN { n = split("messages_in_total sse_encodings_total deliveries_total send_ops_total", k, " ") }
    /^shardcast_/ { name = $1; sub(/^shardcast_/, "", name); sub(/\{.*/, "", name); v[name] += $NF }
    END { printf "{"; for (i = 1; i <= n; i++) printf "%s\"%s\":%.0f", (i > 1 ? "," : ""), k[i], v[k[i]]; printf "}" }'
}
HS256_SECRET="$(sed -n 's/^hs256_secret *= *"\(.*\)".*/\1/p' "$PERF/configs/auth-hs256.toml" 2>/dev/null | head -1)"
GEN_PY=""
setup_auth() {
  TMPD="$(mktemp -d -t shardcast-perf.XXXXXX)" || { echo "compare.sh: mktemp failed" >&2; exit 1; }
  if ! "$VENV/bin/python" -c 'import jwt, cryptography' 2>/dev/null; then
    log "creating $VENV (PyJWT, cryptography) for the auth scenarios' tokens"
    { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet PyJWT cryptography; } >&2 \
      || { echo "compare.sh: cannot set up $VENV with PyJWT and cryptography" >&2; exit 1; }
  fi
  [ -n "$HS256_SECRET" ] || { echo "compare.sh: no hs256_secret in perf/configs/auth-hs256.toml" >&2; exit 1; }
  GEN_PY="$TMPD/tokens.py"
  cat >"$GEN_PY" <<'PY'
"""keygen PRIV PUB: a P-256 key pair (PKCS#8 / SubjectPublicKeyInfo PEM).
tokens HS256 SECRET N OUT | tokens ES256 PRIV N OUT: N JWTs, sub "perf-<i>", exp now + 1 h."""
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

if sys.argv[1] == "keygen":
    key = ec.generate_private_key(ec.SECP256R1())
    with open(sys.argv[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(sys.argv[3], "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
else:
    alg, key, n, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if alg == "ES256":
        with open(key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    exp = int(time.time()) + 3600
    with open(out, "w") as f:
        for i in range(n):
            f.write(jwt.encode({"sub": f"perf-{i}", "exp": exp}, key, algorithm=alg) + "\n")
PY
  case ",$SCENARIOS," in
    *,handshake-es256,*)
      "$VENV/bin/python" "$GEN_PY" keygen "$TMPD/es256-private.pem" "$TMPD/es256-public.pem" \
        || { echo "compare.sh: ES256 key generation failed" >&2; exit 1; }
      sed "s|@ES256_PUBLIC_KEY@|$TMPD/es256-public.pem|" "$PERF/configs/auth-es256.toml" \
        >"$TMPD/auth-es256.toml" ;;
  esac
  log "auth scenarios: tokens by $("$VENV/bin/python" -c 'import jwt; print("PyJWT", jwt.__version__)'), temporary files in $TMPD"
}
IFS=, read -r -a BENCHES <<<"$SCENARIOS"
for bench in "${BENCHES[@]}"; do
  if needs_tokens "$bench"; then setup_auth; break; fi
done

# ---- TLS scenarios: test CA, server certificate, shardcast config ------------------------------
is_tls() { case "$1" in *-tls) return 0 ;; esac; return 1; }
setup_tls() {
  TLSD="$(mktemp -d -t shardcast-perf-tls.XXXXXX)" || { echo "compare.sh: mktemp failed" >&2; exit 1; }
  command -v openssl >/dev/null || { echo "compare.sh: the TLS scenarios need the openssl CLI" >&2; exit 1; }
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  { openssl req -x509 "${ec[@]}" -keyout "$TLSD/ca.key" -out "$TLSD/ca.pem" -days 2 -subj "/CN=perf CA" \
      && openssl req "${ec[@]}" -keyout "$TLSD/key.pem" -out "$TLSD/srv.csr" -subj "/CN=127.0.0.1" \
      && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLSD/ext" \
      && openssl x509 -req -in "$TLSD/srv.csr" -CA "$TLSD/ca.pem" -CAkey "$TLSD/ca.key" -CAcreateserial \
           -out "$TLSD/cert.pem" -days 2 -extfile "$TLSD/ext"; } >"$TLSD/openssl.log" 2>&1 \
    || { echo "compare.sh: certificate generation failed (see $TLSD/openssl.log)" >&2; cat "$TLSD/openssl.log" >&2; exit 1; }
  printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$TLSD/cert.pem" "$TLSD/key.pem" >"$TLSD/tls.toml"
  log "TLS scenarios: test CA and certificate in $TLSD ($(openssl version))"
}
for bench in "${BENCHES[@]}"; do
  if is_tls "$bench"; then setup_tls; break; fi
done

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
# shellcheck source=lib.sh
source "$PERF/lib.sh"  # busy_cores
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
# start_server NAME PORT LOG CPUS [CONFIG]: sets SRV_PID; returns non-zero if it does not come up.
# CONFIG (shardcast and shardcast-base only): passed as --config.
start_server() {
  local name="$1" port="$2" logf="$3" cpus="$4" cfg=()
  [ -n "${5:-}" ] && cfg=(--config "$5")
  case "$name" in
    shardcast) taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 "${cfg[@]}" >"$logf" 2>&1 & ;;
    shardcast-s1|shardcast-env-*) taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 >"$logf" 2>&1 & ;;
    shardcast-s2) taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 2 >"$logf" 2>&1 & ;;
    shardcast-base) taskset -c "$cpus" "$SHARDCAST_BASE" --listen "127.0.0.1:$port" --shards 1 "${cfg[@]}" >"$logf" 2>&1 & ;;
    shardcast-deflate-*)  # perf/configs/deflate-{off,shared,dedicated}.toml
      taskset -c "$cpus" "$SHARDCAST" --listen "127.0.0.1:$port" --shards 1 \
        --config "$PERF/configs/${name#shardcast-}.toml" >"$logf" 2>&1 & ;;
    node-ws) taskset -c "$cpus" "$PERF/ref/run-node-ws.sh" "$port" >"$logf" 2>&1 & ;;
    uws)
      if [ "$TLS_ON" = 1 ]; then
        TLS_CERT="$TLSD/cert.pem" TLS_KEY="$TLSD/key.pem" taskset -c "$cpus" "$PERF/ref/run-uws.sh" "$port" >"$logf" 2>&1 &
      else
        taskset -c "$cpus" "$PERF/ref/run-uws.sh" "$port" >"$logf" 2>&1 &
      fi ;;
  esac
  SRV_PID=$!
  local health=(curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz")
  [ "$TLS_ON" = 1 ] && health=(curl -s -o /dev/null --max-time 1 --cacert "$TLSD/ca.pem" "https://127.0.0.1:$port/healthz")
  for _ in $(seq 100); do
    kill -0 "$SRV_PID" 2>/dev/null || { warn "$name exited at start-up (see $logf)"; SRV_PID=""; return 1; }
    if "${health[@]}"; then return 0; fi
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
    fanout-1k-env-max) echo "fanout --subscribers 1000 --max --envelope json --transport ws" ;;
    fanout-1k-sse-max) echo "fanout --subscribers 1000 --max --envelope json --transport sse" ;;
    rooms-2000x10-envelope) echo "rooms --clients 2000 --room-size 10 --rate 5" ;;
    handshake-none|handshake-hs256|handshake-es256)
      echo "churn --connections $HS_CONNS --cycles $HS_CYCLES" ;;
    fanout-1k-max-auth) echo "fanout --subscribers 1000 --max" ;;
    fanout-1k-max-tls) echo "fanout --subscribers 1000 --max" ;;
    handshake-tls) echo "churn --connections $HS_CONNS --cycles $HS_CYCLES" ;;
    *) return 1 ;;
  esac
}

# The config shardcast / shardcast-base start with in a benchmark (empty: none).
bench_config() {
  case "$1" in
    handshake-none) echo "$PERF/configs/auth-off.toml" ;;
    handshake-hs256|fanout-1k-max-auth) echo "$PERF/configs/auth-hs256.toml" ;;
    handshake-es256) echo "$TMPD/auth-es256.toml" ;;
    *-tls) echo "$TLSD/tls.toml" ;;
  esac
}

# Tokens of a benchmark: "ALG COUNT" (one distinct token per connection opened).
bench_tokens() {
  case "$1" in
    handshake-none|handshake-hs256) echo "HS256 $((HS_CONNS * HS_CYCLES))" ;;  # none: ignored
    handshake-es256) echo "ES256 $((HS_CONNS * HS_CYCLES))" ;;
    fanout-1k-max-auth) echo "HS256 1001" ;;  # the publisher + 1000 subscribers
  esac
}

# May SERVER run BENCH without its config if it rejects it at start-up? Only where that does not
# change what is measured: handshake-none (mode "none" is the default) and, for shardcast-base
# (the pre-auth baseline of a regression check), fanout-1k-max-auth.
config_optional() {
  case "$1:$2" in
    handshake-none:shardcast|handshake-none:shardcast-base|fanout-1k-max-auth:shardcast-base) return 0 ;;
  esac
  return 1
}

run_one() {  # bench server rep server_cpus loadgen_cpus
  local bench="$1" server="$2" rep="$3" scpu="$4" lcpu="$5"
  local args port logf out line cfg="" cfg_note="null" tok tokfile=""
  args="$(bench_args "$bench")" || { warn "unknown scenario $bench"; return; }
  local scheme=ws
  TLS_ON=0
  if is_tls "$bench"; then TLS_ON=1; scheme=wss; args="$args --ca $TLSD/ca.pem"; fi
  case "$server" in shardcast-env-*) args="$args --envelope ${server#shardcast-env-}" ;; esac
  case "$server" in
    shardcast|shardcast-base) cfg="$(bench_config "$bench")" ;;
    shardcast-deflate-*) cfg_note="\"${server#shardcast-}.toml\"" ;;
  esac
  [ -n "$cfg" ] && cfg_note="\"$(basename "$cfg")\""
  PORT=$((PORT + 1))
  port=$PORT
  logf="$OUT/logs/$bench.$server.$rep.log"
  if [ -z "$cfg" ] && wants_metrics "$bench" "$server"; then
    cfg="$OUT/logs/$bench.$server.$rep.admin.toml"
    printf '# compare.sh: defaults, admin listener (/metrics) on its own port\n[admin]\nlisten = "127.0.0.1:%s"\n' \
      "$((port + METRICS_PORT_OFFSET))" >"$cfg"
    cfg_note="\"$(basename "$cfg")\""
  fi
  tok="$(bench_tokens "$bench")"
  if [ -n "$tok" ]; then
    # Fresh tokens per run (exp = now + 1 h), made before the quiet check so it does not count.
    local alg count key="$HS256_SECRET"
    read -r alg count <<<"$tok"
    [ "$alg" = ES256 ] && key="$TMPD/es256-private.pem"
    tokfile="$TMPD/tokens.$bench.$server.$rep.txt"
    if ! "$VENV/bin/python" "$GEN_PY" tokens "$alg" "$key" "$count" "$tokfile"; then
      echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"failed\":true,\"reason\":\"token generation failed\"}" >>"$RESULTS"
      return
    fi
    args="$args --token-file $tokfile"
  fi
  wait_quiet
  log "$bench  $server  rep $rep  (port $port, machine busy before: $BUSY_BEFORE cores)"
  if ! start_server "$server" "$port" "$logf" "$scpu" "$cfg"; then
    if [ -n "$cfg" ] && config_optional "$bench" "$server"; then
      warn "$server rejected $(basename "$cfg") at start-up ($(grep -m1 -o 'unknown field `[a-z_]*`' "$logf" || tail -1 "$logf")): running it without a config"
      cfg_note="\"none ($(basename "$cfg") rejected)\""
      mv "$logf" "$logf.rejected-config"
      start_server "$server" "$port" "$logf" "$scpu" ""
    else
      false
    fi
  fi || {
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"failed\":true,\"reason\":\"server did not start\",\"server_config\":$cfg_note}" >>"$RESULTS"
    [ -n "$tokfile" ] && rm -f "$tokfile"
    return
  }
  # A dead loadgen must never outlive its run.
  # shellcheck disable=SC2086
  timeout -s KILL 300 taskset -c "$lcpu" "$LOADGEN" $args --url "$scheme://127.0.0.1:$port" \
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
  local drv metrics="null"
  drv="$(grep -o 'io_driver="[a-z_]*"' "$logf" 2>/dev/null | head -1 | cut -d'"' -f2)"
  if wants_metrics "$bench" "$server" && kill -0 "$SRV_PID" 2>/dev/null; then
    metrics="$(server_metrics "$((port + METRICS_PORT_OFFSET))")"
    log "  server metrics after the run: $metrics"
  fi
  stop_server
  [ -n "$tokfile" ] && rm -f "$tokfile"
  if [ -n "$line" ]; then
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"io_driver\":\"${drv:-}\",\"busy_before_run\":$BUSY_BEFORE,\"server_config\":$cfg_note,\"server_metrics\":$metrics,${line#\{}" >>"$RESULTS"
    grep -E '^  (deliveries_per_s|deliveries_per_server_cpu_s|lat_p99_us|server_cpu |wire_bytes_per_delivery|deflate_negotiated|rss_per_conn_kib|rss_per_conn_after_broadcast_kib|cycles_per_s|handshakes_per_s |handshakes_per_server_cpu_s|server_cpu_us_per_handshake|handshake_failures |errors_total)' "$out" | sed 's/^/    /' >&2
  else
    warn "no JSON from loadgen for $bench/$server (see $out)"
    tail -3 "$out" | sed 's/^/    /' >&2
    echo "{\"bench\":\"$bench\",\"server\":\"$server\",\"rep\":$rep,\"failed\":true,\"reason\":\"no loadgen output\"}" >>"$RESULTS"
  fi
  sleep 1  # let TIME_WAIT / memory settle between runs
}

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
  # Auth scenarios: only servers that can be started with an [auth] config.
  servers=()
  for server in "${AVAIL[@]}"; do
    if auth_only "$bench" && [ "$server" != shardcast ] && [ "$server" != shardcast-base ]; then
      warn "$bench runs only on shardcast and shardcast-base: skipping $server"
      continue
    fi
    if is_tls "$bench" && [ "$server" = node-ws ]; then
      warn "$bench: node-ws/server.js has no TLS: skipping node-ws"
      continue
    fi
    servers+=("$server")
  done
  [ "${#servers[@]}" -gt 0 ] || continue
  for rep in $(seq "$REPS"); do
    for server in "${servers[@]}"; do
      run_one "$bench" "$server" "$rep" "$SERVER_CPU" "$LOADGEN_CPU"
    done
  done
done

echo "loadavg_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
log "results: $RESULTS"
python3 "$PERF/summarize.py" "$OUT" | tee "$OUT/summary.md"
