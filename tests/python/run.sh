#!/usr/bin/env bash
# Third-party client tests (Python `websockets`) against the release daemon.
# Creates a Python 3 virtualenv in target/py3-venv with tests/python/requirements.txt.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
VENV="$REPO/target/py3-venv"
if [[ ! -x "$VENV/bin/python" ]] || ! cmp -s tests/python/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$VENV/.requirements"
fi
PORT=9011
target/release/shardcast --listen "127.0.0.1:$PORT" --shards 2 >target/python-daemon.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.05
done
"$VENV/bin/python" tests/python/test_websockets_client.py "127.0.0.1:$PORT"
