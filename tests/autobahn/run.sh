#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against a locally started shardcast.
#
#   tests/autobahn/run.sh            # all cases except the 84 slow compression cases
#                                    # (12.*.9-10, 12.*.14-18, same in 13: the Python 2
#                                    # client compresses slowly; ~15 of a 20-minute run)
#   tests/autobahn/run.sh --full     # every case, nothing excluded
#
# Steps: setup.sh (Python 2.7 venv with wstest) -> cargo build --release ->
# start target/release/shardcast with shardcast-autobahn.toml -> wait for the
# port -> wstest -m fuzzingclient -> check.py on the produced index.json.
# The exit status is check.py's (non-zero on any failed case, unclean close,
# missing case or empty report), or non-zero if any earlier step failed.
#
# Environment knobs (all optional):
#   AUTOBAHN_EXCLUDE   JSON list of case patterns to exclude
#                      (default: the 84 slow compression cases; ignored with --full)
#   AUTOBAHN_CASES     JSON list of case patterns to run (default '["*"]')
#   AUTOBAHN_TIMEOUT   seconds before wstest is killed (default 3600)
#   AUTOBAHN_REPORTS   report directory (default $REPO/target/autobahn-reports)
#   AUTOBAHN_NO_BUILD  set to 1 to skip `cargo build --release`
#   AUTOBAHN_DAEMON_ARGS extra daemon flags, e.g. "--io-driver epoll"
#   AUTOBAHN_DAEMON    server binary to test (default target/release/shardcast);
#                      it is started as `$AUTOBAHN_DAEMON --config <toml>`
#   AUTOBAHN_TLS       set to 1 to test over wss://: a self-signed certificate is
#                      made with the openssl CLI in $AUTOBAHN_REPORTS/tls, and the
#                      daemon runs shardcast-autobahn.toml plus a [tls] section
#                      (wstest's Twisted client does not verify certificates)
#
# Outputs in $AUTOBAHN_REPORTS: spec.json, expected-cases.txt, wstest.log,
# shardcast.log, and reports/ (index.json, index.html, per-case reports).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${AUTOBAHN_VENV:-$REPO/target/autobahn-venv}"
OUT="${AUTOBAHN_REPORTS:-$REPO/target/autobahn-reports}"
CONFIG="tests/autobahn/shardcast-autobahn.toml"   # relative to $REPO
HOST=127.0.0.1
PORT=9001                                          # must match $CONFIG
URL="ws://$HOST:$PORT/ws/autobahn"
[[ "${AUTOBAHN_TLS:-0}" == 1 ]] && URL="wss://$HOST:$PORT/ws/autobahn"
AGENT=shardcast
DAEMON="${AUTOBAHN_DAEMON:-$REPO/target/release/shardcast}"

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() { printf 'autobahn: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------
FULL=0
for arg in "$@"; do
    case "$arg" in
        --full) FULL=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg (usage: run.sh [--full])" ;;
    esac
done

if [[ "$FULL" == 1 ]]; then
    EXCLUDE='[]'
else
    EXCLUDE="${AUTOBAHN_EXCLUDE:-[\"12.*.9\",\"12.*.10\",\"12.*.14\",\"12.*.15\",\"12.*.16\",\"12.*.17\",\"12.*.18\",\"13.*.9\",\"13.*.10\",\"13.*.14\",\"13.*.15\",\"13.*.16\",\"13.*.17\",\"13.*.18\"]}"
fi
CASES="${AUTOBAHN_CASES:-[\"*\"]}"

cd "$REPO"

# ---------------------------------------------------------------------------
# 1. Python 2.7 venv with wstest.
# ---------------------------------------------------------------------------
bash "$HERE/setup.sh"

# ---------------------------------------------------------------------------
# 2. Build the daemon.
# ---------------------------------------------------------------------------
if [[ "${AUTOBAHN_NO_BUILD:-0}" != 1 ]]; then
    log "cargo build --release"
    cargo build --release
fi
[[ -x "$DAEMON" ]] || die "$DAEMON not found or not executable"

# ---------------------------------------------------------------------------
# 3. Fresh report directory and fuzzingclient spec.
# ---------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT/reports"

if [[ "${AUTOBAHN_TLS:-0}" == 1 ]]; then
    mkdir -p "$OUT/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=$HOST" -addext "subjectAltName=IP:$HOST" \
        -keyout "$OUT/tls/key.pem" -out "$OUT/tls/cert.pem" 2>"$OUT/tls/openssl.log" \
        || die "openssl could not make a certificate (see $OUT/tls/openssl.log)"
    { cat "$CONFIG"; printf '[tls]\ncert_file = "%s"\nkey_file = "%s"\n' \
        "$OUT/tls/cert.pem" "$OUT/tls/key.pem"; } >"$OUT/shardcast-autobahn-tls.toml"
    CONFIG="$OUT/shardcast-autobahn-tls.toml"
    log "TLS: $URL with $CONFIG"
fi

# Build the spec with python3 so AUTOBAHN_EXCLUDE/AUTOBAHN_CASES are
# validated as JSON lists of strings instead of being pasted in blindly.
python3 - "$OUT/spec.json" "$URL" "$AGENT" "$OUT/reports" "$CASES" "$EXCLUDE" <<'PY'
import json, sys
path, url, agent, outdir, cases, exclude = sys.argv[1:]
def strlist(name, text):
    try:
        v = json.loads(text)
    except ValueError as e:
        sys.exit("autobahn: ERROR: %s is not valid JSON: %s" % (name, e))
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        sys.exit("autobahn: ERROR: %s must be a JSON list of strings, got %r" % (name, text))
    return v
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": strlist("AUTOBAHN_CASES", cases),
    "exclude-cases": strlist("AUTOBAHN_EXCLUDE", exclude),
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY
log "spec: $OUT/spec.json (cases $CASES, exclude $EXCLUDE)"

# The case ids this spec selects, computed with the suite's own matcher, so
# check.py can tell "not run" (e.g. daemon crashed, wstest stopped) from "ok".
"$VENV/bin/python" - "$OUT/spec.json" >"$OUT/expected-cases.txt" <<'PY'
import json, sys
from autobahntestsuite.case import (CaseSetname, CaseBasename, Cases,
                                    CaseCategories, CaseSubCategories)
from autobahntestsuite.caseset import CaseSet
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
for cid in cs.parseSpecCases(json.load(open(sys.argv[1]))):
    print(cid)
PY
NCASES="$(wc -l <"$OUT/expected-cases.txt")"
[[ "$NCASES" -gt 0 ]] || die "the spec selects no test cases"
log "$NCASES cases selected"

# ---------------------------------------------------------------------------
# 4. Start the daemon; make sure it is stopped however this script exits.
# ---------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

if port_open; then
    die "$HOST:$PORT is already in use; stop whatever is listening there first"
fi

DAEMON_PID=""
WSTEST_PID=""
cleanup() {
    if [[ -n "$WSTEST_PID" ]]; then
        kill -TERM "$WSTEST_PID" 2>/dev/null || true
        wait "$WSTEST_PID" 2>/dev/null || true
    fi
    if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting $DAEMON --config $CONFIG"
# shellcheck disable=SC2086  # AUTOBAHN_DAEMON_ARGS is a list of extra flags
RUST_LOG="${RUST_LOG:-info}" "$DAEMON" --config "$CONFIG" ${AUTOBAHN_DAEMON_ARGS:-} >"$OUT/shardcast.log" 2>&1 &
DAEMON_PID=$!

# Wait (up to 30 s) for the listener, bailing out if the daemon dies.
for i in $(seq 300); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        wait "$DAEMON_PID" && rc=0 || rc=$?
        DAEMON_PID=""
        log "shardcast exited with status $rc before listening; log tail:"
        tail -n 40 "$OUT/shardcast.log" >&2 || true
        exit 1
    fi
    port_open && break
    [[ "$i" -lt 300 ]] || die "shardcast did not open $HOST:$PORT within 30 s"
    sleep 0.1
done
log "shardcast (pid $DAEMON_PID) is listening on $HOST:$PORT"

# ---------------------------------------------------------------------------
# 5. Run the fuzzing client.
# ---------------------------------------------------------------------------
log "running wstest -m fuzzingclient against $URL (log: $OUT/wstest.log)"
# Run in the background and `wait`, so a TERM/INT sent to this script is
# handled at once (cleanup then stops wstest as well as the daemon).
WSTEST_RC=0
(cd "$OUT" && exec timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-3600}" \
    "$VENV/bin/wstest" -m fuzzingclient -s "$OUT/spec.json") \
    >"$OUT/wstest.log" 2>&1 &
WSTEST_PID=$!
wait "$WSTEST_PID" || WSTEST_RC=$?
WSTEST_PID=""
if [[ "$WSTEST_RC" != 0 ]]; then
    log "wstest exited with status $WSTEST_RC (124 = timed out); log tail:"
    tail -n 20 "$OUT/wstest.log" >&2 || true
fi

DAEMON_ALIVE=1
if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    DAEMON_ALIVE=0
    log "shardcast died during the run; log tail:"
    tail -n 40 "$OUT/shardcast.log" >&2 || true
fi
# A panicking shard thread need not take the process down (the survivors,
# or the main thread, keep the port open), so look for panics explicitly.
if grep -q 'panicked at' "$OUT/shardcast.log"; then
    DAEMON_ALIVE=0
    log "shardcast panicked during the run (see $OUT/shardcast.log):"
    grep -A1 'panicked at' "$OUT/shardcast.log" >&2 || true
fi

# ---------------------------------------------------------------------------
# 6. Judge the report.
# ---------------------------------------------------------------------------
INDEX="$OUT/reports/index.json"
CHECK_RC=0
python3 "$HERE/check.py" "$INDEX" --agent "$AGENT" \
    --expect-cases "$OUT/expected-cases.txt" || CHECK_RC=$?
log "HTML report: $OUT/reports/index.html"

if [[ "$CHECK_RC" != 0 ]]; then
    exit "$CHECK_RC"
fi
# wstest failing, or the daemon dying/panicking, fails the run even if
# every case that did run passed.
if [[ "$WSTEST_RC" != 0 || "$DAEMON_ALIVE" != 1 ]]; then
    exit 1
fi
exit 0
