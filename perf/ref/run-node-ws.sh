#!/usr/bin/env bash
# Run the Node `ws` reference server in the foreground: run-node-ws.sh PORT
# exec's node, so $! / the PID of this script is node's PID.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${PORT:-}}"
[ -n "$PORT" ] || { echo "usage: $0 PORT" >&2; exit 2; }
if [ ! -f "$DIR/node-ws/node_modules/ws/package.json" ]; then
  echo "$0: node-ws dependencies missing: run $DIR/install.sh first" >&2
  exit 1
fi
exec node "$DIR/node-ws/server.js" "$PORT"
