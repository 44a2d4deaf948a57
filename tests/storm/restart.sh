#!/usr/bin/env bash
# Restart a server, for `loadgen storm --cut-cmd`: signal the process whose PID is in PIDFILE,
# wait until it has exited (it is gone, or a zombie: its sockets are closed either way), start
# CMD detached with its output appended to LOG, write the new PID to PIDFILE and print it (the
# last word loadgen reads).
#
#   tests/storm/restart.sh PIDFILE SIGNAL LOG CMD [ARGS...]
#   e.g. tests/storm/restart.sh /tmp/s.pid KILL /tmp/s.log target/release/shardcast --listen 127.0.0.1:9500
#
# SIGNAL KILL: the abrupt cut (every client sees EOF). TERM: shardcast's graceful drain (close
# 1001 to every client, then exit within shutdown.drain_timeout); the new server starts only
# once the old one has exited.
set -euo pipefail
pidfile="$1" sig="$2" log="$3"
shift 3

alive() {  # running, not a zombie
  local st
  st="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [ "$st" != Z ]
}

old="$(cat "$pidfile")"
kill -"$sig" "$old"
deadline=$((SECONDS + 60))
while alive "$old"; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "restart.sh: $old still alive after 60 s" >&2; exit 1; }
  sleep 0.005
done
setsid "$@" >>"$log" 2>&1 </dev/null &
echo "$!" >"$pidfile"
echo "$!"
