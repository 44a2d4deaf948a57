#!/usr/bin/env bash
# The demo pages (/cursor, /chat) in headless Chromium (Debian's chromium, driven by
# playwright-core from npm; no browser download) against a real daemon that the test starts on a
# free port with its own config (issue #13). Writes docs/demo-cursor.png and docs/demo-chat.png.
#
#   bash tests/browser/run-demos.sh                 # every scenario
#   bash tests/browser/run-demos.sh cursor chat     # some: cursor chat sse cut restart
#
# The pages and the client are embedded in the binary, so the daemon is rebuilt first (a no-op
# when nothing changed). See the head of tests/browser/demos.mjs for the options.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
source tests/browser/setup.sh
[[ -n ${SHARDCAST_BIN:-} ]] || nice -n 10 cargo build --release --quiet
exec node tests/browser/demos.mjs "$@"
