#!/usr/bin/env bash
# verify-systemd.sh: check systemd/shardcast.service with `systemd-analyze verify`.
#
# Usage: scripts/verify-systemd.sh BINARY [UNIT]
#   BINARY  a built shardcast binary, e.g. target/release/shardcast
#   UNIT    the unit to check (default: systemd/shardcast.service next to this script)
#
# The unit names /usr/local/bin/shardcast, which need not exist on a build machine, so the unit is
# copied to a temporary directory with that path replaced by BINARY and verified there. Exits
# non-zero if systemd-analyze fails or prints any line about the unit (warnings included).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 BINARY [UNIT]" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(realpath -- "$1")
unit=$(realpath -- "${2:-$here/../systemd/shardcast.service}")
name=$(basename -- "$unit")

if [[ ! -x $bin ]]; then
    echo "$0: $bin is not an executable file" >&2
    exit 2
fi
if [[ ! -f $unit ]]; then
    echo "$0: $unit not found" >&2
    exit 2
fi
command -v systemd-analyze >/dev/null || { echo "$0: systemd-analyze not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# Point every use of the installed path (ExecStartPre, ExecStart) at BINARY.
sed "s|/usr/local/bin/shardcast|$bin|g" "$unit" >"$tmp/$name"
if grep -q '/usr/local/bin/shardcast' "$tmp/$name"; then
    echo "$0: could not rewrite the binary path in $tmp/$name" >&2
    exit 1
fi

echo "verifying $unit (ExecStart -> $bin)"
status=0
out=$(systemd-analyze verify --man=no "$tmp/$name" 2>&1) || status=$?
# Keep only what concerns our unit: systemd-analyze may also report on the host's own units.
ours=$(grep -F -e "$name" -e "$tmp" <<<"$out" || true)

if [[ -n $ours ]]; then
    echo "$ours"
fi
if [[ $status -ne 0 || -n $ours ]]; then
    if [[ -z $ours && -n $out ]]; then
        echo "$out"
    fi
    echo "FAIL: systemd-analyze verify exited $status, $(grep -c . <<<"$ours" || true) line(s) about $name" >&2
    exit 1
fi
echo "OK: systemd-analyze verify accepted $name"
