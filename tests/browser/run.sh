#!/usr/bin/env bash
# Pages in headless Chromium (Debian's chromium, driven by playwright-core from npm; no browser
# download). Here: the admin page under load, with a screenshot in docs/admin-page.png; the demo
# pages (/cursor, /chat) are tests/browser/run-demos.sh.
#
#   bash tests/browser/run.sh      # after cargo build --release and perf/loadgen built
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
source tests/browser/setup.sh
[[ -x perf/loadgen/target/release/loadgen ]] || (cd perf/loadgen && cargo build --release --quiet)
PORT=9061 ADMIN=9062
CFG=$(mktemp --suffix=.toml)
printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$ADMIN" > "$CFG"
target/release/shardcast --config "$CFG" --listen "127.0.0.1:$PORT" --shards 2 > target/browser-daemon.log 2>&1 &
DPID=$!
LPID=
cleanup() { [[ -n $LPID ]] && kill "$LPID" 2>/dev/null; kill "$DPID" 2>/dev/null; wait 2>/dev/null; rm -f "$CFG"; }
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN") 2>/dev/null && break; sleep 0.05; done
# Load: 100 clients in 10 rooms, 5 messages/s each, for as long as the page test runs.
perf/loadgen/target/release/loadgen rooms --url "ws://127.0.0.1:$PORT" --clients 100 --room-size 10 --rate 5 \
  --duration 60 --warmup 0 > target/browser-load.log 2>&1 &
LPID=$!
node tests/browser/admin.mjs "http://127.0.0.1:$ADMIN/" "$REPO/docs/admin-page.png"
