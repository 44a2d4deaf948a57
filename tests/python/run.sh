#!/usr/bin/env bash
# Third-party client tests (Python `websockets`, `cbor2`, PyJWT) against the release daemon.
# Creates a Python 3 virtualenv in target/py3-venv with tests/python/requirements.txt.
#
#   bash tests/python/run.sh          # every suite
#   bash tests/python/run.sh auth     # only the auth suite (test_auth.py starts its own daemons)
#   bash tests/python/run.sh tls      # only the TLS suite (test_tls.py: its own CA and daemons)
#   bash tests/python/run.sh cluster  # only cluster mode (test_cluster.py: its own redis-server
#                                     # and three daemons; needs redis-server, see scripts/test.sh)
#   bash tests/python/run.sh rcluster # only Redis Cluster mode (test_redis_cluster.py: three
#                                     # cluster-enabled redis-servers and three daemons)
#   bash tests/python/run.sh sentinel # rediss:// and Redis Sentinel failover (test_sentinel.py;
#                                     # needs redis-server and openssl)
set -euo pipefail
SUITE="${1:-all}"
case "$SUITE" in
  all | auth | tls | cluster | rcluster | sentinel) ;;
  *) echo "usage: $0 [auth|tls|cluster|rcluster|sentinel]" >&2; exit 2 ;;
esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
VENV="$REPO/target/py3-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s tests/python/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$VENV/.requirements"
fi

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
}

# Auth (tokens signed by PyJWT, permissions, refresh, origins, API): test_auth.py generates its
# keys in a temp dir and starts its own daemons (SHARDCAST_BIN, 2 shards, free ports; the token
# refusal cases on io_uring and on epoll), so it needs nothing from the daemons below.
run_auth() {
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_auth.py
  # Admission control and rate limits (issue #11), on the same machinery.
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_abuse.py
  # Operations (issue #12): metrics, readyz, sd_notify and watchdog, SIGHUP reload.
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_ops.py
  # The Server-Sent Events transport (issue #13): streams, posts, resume, tokens, encode-once.
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_sse.py
}
if [[ $SUITE == auth ]]; then
  run_auth
  exit 0
fi

# TLS (wss:// and HTTPS with a CA made at run time, curl, plain HTTP on the TLS port, bad
# certificate files): test_tls.py starts its own daemons (both I/O drivers, free ports).
run_tls() {
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_tls.py
}
if [[ $SUITE == tls ]]; then
  run_tls
  exit 0
fi

# Cluster mode over Redis (issue 14): test_cluster.py starts its own redis-server on a free port
# and three daemons with [cluster] (3,000 subscribers, resume across nodes, Redis outage, deafness).
run_cluster() {
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_cluster.py
}
if [[ $SUITE == cluster ]]; then
  run_cluster
  exit 0
fi

# Cluster mode over a Redis Cluster (sharded pub/sub): test_redis_cluster.py starts three
# cluster-enabled redis-servers on free ports, makes them one cluster, and three daemons with
# `redis_cluster` (rooms on every master, commandstats, resume, a slot move during traffic).
run_rcluster() {
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_redis_cluster.py
}
if [[ $SUITE == rcluster ]]; then
  run_rcluster
  exit 0
fi

# TLS to Redis and Redis Sentinel (issue 14): test_sentinel.py starts its own TLS redis-server
# (certificates made with openssl), master + replica + three sentinels and the daemons; mid-stream
# `SENTINEL FAILOVER`, then per-subscriber accounting (zero silent losses).
run_sentinel() {
  SHARDCAST_BIN="${SHARDCAST_BIN:-$REPO/target/release/shardcast}" "$VENV/bin/python" tests/python/test_sentinel.py
}
if [[ $SUITE == sentinel ]]; then
  run_sentinel
  exit 0
fi

# Raw rooms and permessage-deflate with the `websockets` client.
PORT=9011
target/release/shardcast --listen "127.0.0.1:$PORT" --shards 2 >target/python-daemon.log 2>&1 &
PIDS+=($!)
wait_port $PORT
"$VENV/bin/python" tests/python/test_websockets_client.py "127.0.0.1:$PORT"

# The envelope protocol (docs/protocol.md), HTTP API and raw interop; config listens on 9012.
target/release/shardcast --config tests/python/envelope.toml >target/python-envelope-daemon.log 2>&1 &
PIDS+=($!)
wait_port 9012
"$VENV/bin/python" tests/python/test_envelope.py 127.0.0.1:9012

cleanup  # the auth suite runs its own daemons
PIDS=()
run_auth
run_tls
run_cluster
run_rcluster
run_sentinel
