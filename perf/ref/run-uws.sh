#!/usr/bin/env bash
# Run the uWebSockets.js reference server in the foreground: run-uws.sh PORT
# exec's node, so $! / the PID of this script is node's PID.
# On glibc < 2.38, LD_PRELOADs the isoc23 shim built by install.sh (see README.md).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${1:-${PORT:-}}"
[ -n "$PORT" ] || { echo "usage: $0 PORT" >&2; exit 2; }
if [ ! -f "$DIR/uws/node_modules/@btc-vision/uwebsockets.js/package.json" ]; then
  echo "$0: uWebSockets.js missing: run $DIR/install.sh first" >&2
  exit 1
fi
SHIM="$DIR/uws/build/libisoc23_shim.so"
if [ -f "$SHIM" ]; then
  export LD_PRELOAD="$SHIM${LD_PRELOAD:+:$LD_PRELOAD}"
fi
# (server.js itself refuses to start on glibc < 2.38 when the shim is not loaded.)
exec node "$DIR/uws/server.js" "$PORT"
