#!/usr/bin/env bash
# Tests of the JavaScript client (clients/js) with node --test against a real daemon.
#
# Expects target/release/shardcast (cargo build --release; or SHARDCAST_BIN=path): builds
# nothing. Starts one daemon with its own config in a temp dir on a free port, exports
# SHARDCAST_URL (and SHARDCAST_BIN, for the tests that start, kill and replace their own
# daemons), runs the tests, stops the daemon.
#
# clients/js/test/pending-server.test.mjs tests server features not landed yet (reply ids,
# session dedup, SSE): run only with SHARDCAST_JS_PENDING=1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bin=${SHARDCAST_BIN:-$root/target/release/shardcast}
if [ ! -x "$bin" ]; then
  echo "test-js: $bin missing: run cargo build --release first" >&2
  exit 1
fi
command -v node >/dev/null || { echo "test-js: node (20 or later) is needed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "test-js: node $major is too old (20 or later)" >&2
  exit 1
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/shardcast-js-test.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/shardcast.toml" <<TOML
[server]
listen = "127.0.0.1:0"
shards = 2
demo_pages = false

[admin]
listen = ""

[history]
size = 1000
ttl = "5m"

[shutdown]
drain_timeout = "2s"
TOML

RUST_LOG=info NO_COLOR=1 "$bin" --config "$dir/shardcast.toml" 2>"$dir/daemon.log" &
pid=$!

# The port is the one the start-up line names (listen = port 0: no race for a free port).
addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/.*shardcast started.* listen=\([^ ]*\).*/\1/p' "$dir/daemon.log" | head -n1)
  [ -n "$addr" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "test-js: the daemon exited before starting:" >&2
    cat "$dir/daemon.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "test-js: the daemon did not start within 30 s:" >&2
  cat "$dir/daemon.log" >&2
  exit 1
fi
# ... and accepts connections there.
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then break; fi
  sleep 0.1
done

export SHARDCAST_URL="ws://$addr/ws"
export SHARDCAST_BIN="$bin"
echo "test-js: daemon $pid on $addr"

files=()
for f in clients/js/test/*.test.mjs; do
  if [ "$(basename "$f")" = pending-server.test.mjs ] && [ "${SHARDCAST_JS_PENDING:-0}" != 1 ]; then
    continue
  fi
  files+=("$f")
done
status=0
node --test "${files[@]}" || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
  echo "test-js: the run's daemon died during the tests:" >&2
  tail -n 40 "$dir/daemon.log" >&2
  status=1
fi
exit "$status"
