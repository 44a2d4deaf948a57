#!/usr/bin/env bash
# Build the .deb with cargo-deb (installed if missing), install it with dpkg -i, check the
# installed unit with systemd-analyze verify and the installed config with `shardcast config
# check`, then remove it and check that nothing but the conffile's directory (purge: nothing)
# is left. Needs root (dpkg).
#
#   bash scripts/test-deb.sh        # after cargo build --release
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "test-deb: needs root (dpkg -i); skipped" >&2
  exit 0
fi
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
# The unit as installed by the package: the binary lives in /usr/bin.
mkdir -p target/deb
sed 's|/usr/local/bin/shardcast|/usr/bin/shardcast|g' systemd/shardcast.service > target/deb/shardcast.service
deb=$(cargo deb --no-build --output target/deb/ 2>/dev/null | tail -1)
[[ -f $deb ]] || { echo "FAIL cargo deb produced no package" >&2; exit 1; }
echo "built $deb ($(du -h "$deb" | cut -f1))"
if dpkg -s shardcast >/dev/null 2>&1; then dpkg -P shardcast >/dev/null; fi
dpkg -i "$deb"
fail() { echo "FAIL $*" >&2; dpkg -P shardcast >/dev/null 2>&1 || true; exit 1; }
[[ -x /usr/bin/shardcast ]] || fail "/usr/bin/shardcast not installed"
getent passwd shardcast >/dev/null || fail "postinst did not create the shardcast user"
[[ $(stat -c '%U:%G %a' /etc/shardcast/shardcast.toml) == "root:shardcast 640" ]] \
  || fail "config owner/mode: $(stat -c '%U:%G %a' /etc/shardcast/shardcast.toml)"
dpkg-query -W -f='${Conffiles}\n' shardcast | grep -q /etc/shardcast/shardcast.toml \
  || fail "shardcast.toml is not a conffile"
systemd-analyze verify /lib/systemd/system/shardcast.service || fail "systemd-analyze verify"
/usr/bin/shardcast config check --config /etc/shardcast/shardcast.toml || fail "config check"
echo "ok   installed: binary, unit (verified), conffile (checked), user, docs"
dpkg -r shardcast
[[ ! -e /usr/bin/shardcast && ! -e /lib/systemd/system/shardcast.service ]] || fail "files left after dpkg -r"
dpkg -P shardcast
[[ ! -e /etc/shardcast ]] || fail "/etc/shardcast left after purge"
! getent passwd shardcast >/dev/null || fail "user left after purge"
echo "ok   dpkg -r removed the binary and unit; dpkg -P removed the config and the user"
