#!/usr/bin/env bash
# Run one node of the Node `ws` + Redis pub/sub reference cluster in the foreground:
#   REDIS_URL=redis://127.0.0.1:6379 run-node-ws-redis.sh PORT
# exec's node, so $! / the PID of this script is node's PID.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${PORT:-}}"
[ -n "$PORT" ] || { echo "usage: $0 PORT   (REDIS_URL, default redis://127.0.0.1:6379)" >&2; exit 2; }
if [ ! -f "$DIR/node-ws-redis/node_modules/ioredis/package.json" ]; then
  echo "$0: node-ws-redis dependencies missing: run $DIR/install.sh first" >&2
  exit 1
fi
exec node "$DIR/node-ws-redis/server.js" "$PORT"
