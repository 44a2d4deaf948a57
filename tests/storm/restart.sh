#!/usr/bin/env bash
# Restart a server, for `loadgen storm --cut-cmd`: signal the process whose PID is in PIDFILE,
# wait until it has exited (every thread gone: its sockets, the listener included, closed), start
# CMD detached with its output appended to LOG, write the new PID to PIDFILE and print it (the
# last word loadgen reads).
#
#   tests/storm/restart.sh [--port PORT] PIDFILE SIGNAL LOG CMD [ARGS...]
#   e.g. tests/storm/restart.sh --port 9500 /tmp/s.pid KILL /tmp/s.log target/release/shardcast --listen 127.0.0.1:9500
#
# --port: also wait until nothing listens on PORT any more. The kernel can keep a killed
# process's listening socket (still accepting into its backlog) after the process is gone: with
# io_uring the ring's teardown holds its files for ~0.3 s more. shardcast refuses to start on
# an address another socket still listens on (unless --takeover).
#
# SIGNAL KILL: the abrupt cut (every client sees EOF). TERM: shardcast's graceful drain (close
# to every client, then exit within shutdown.drain_timeout); the new server starts only once the
# old one has exited. takeover: no signal and no wait: CMD is started with --takeover (shardcast
# joins the old process's SO_REUSEPORT group, then tells it to drain: its clients are closed
# with 1012 over drain_timeout and come back to the new one).
set -euo pipefail
port=""
if [ "${1:-}" = --port ]; then port="$2"; shift 2; fi
pidfile="$1" sig="$2" log="$3"
shift 3

# Some thread of PID still runs. A killed multi-threaded process shows its leader as a zombie
# while its other threads are still exiting, and the last one to exit closes the file table:
# until then the old listener still accepts (and resets what it accepted when it finally goes).
alive() {
  local st n
  st="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [ "$st" != Z ] && return 0
  n="$(ls "/proc/$1/task" 2>/dev/null | wc -l)"
  [ "$n" -gt 1 ]
}

if [ "$sig" = takeover ]; then
  setsid "$@" --takeover >>"$log" 2>&1 </dev/null &
  echo "$!" >"$pidfile"
  echo "$!"
  exit 0
fi
old="$(cat "$pidfile")"
kill -"$sig" "$old"
deadline=$((SECONDS + 60))
while alive "$old"; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "restart.sh: $old still alive after 60 s" >&2; exit 1; }
  sleep 0.005
done
if [ -n "$port" ]; then
  while [ -n "$(ss -tlnH "( sport = :$port )")" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "restart.sh: port $port still listening after 60 s" >&2; exit 1; }
    sleep 0.005
  done
fi
setsid "$@" >>"$log" 2>&1 </dev/null &
echo "$!" >"$pidfile"
echo "$!"
