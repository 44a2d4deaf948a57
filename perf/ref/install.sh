#!/usr/bin/env bash
# Install the reference servers (Node ws, Node ws + Redis pub/sub, uWebSockets.js) for shardcast's perf suite.
# Idempotent; safe to re-run. Needs node >= 20 + npm; on glibc < 2.38 also gcc (installed
# with apt-get when missing and running as root).
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[perf/ref/install] $*" >&2; }
die() { echo "[perf/ref/install] ERROR: $*" >&2; exit 1; }

command -v node >/dev/null || die "node not found (need Node.js 20, 22, 24 or 25)"
command -v npm  >/dev/null || die "npm not found"
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
[ "$NODE_MAJOR" -ge 20 ] || die "node $(node -v) too old: need >= 20"

# True when every package in package-lock.json is installed at the locked version.
lock_satisfied() {
  (cd "$1" && node -e '
    const fs = require("fs");
    const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
    for (const [p, meta] of Object.entries(lock.packages || {})) {
      if (!p) continue;
      let v;
      try { v = JSON.parse(fs.readFileSync(p + "/package.json", "utf8")).version; } catch { process.exit(1); }
      if (v !== meta.version) process.exit(1);
    }
  ') 2>/dev/null
}

npm_install() {
  local d="$1"
  if lock_satisfied "$d"; then
    log "$d: node_modules up to date"
  else
    log "$d: npm ci"
    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

npm_install "$DIR/node-ws"
npm_install "$DIR/node-ws-redis"
npm_install "$DIR/uws"

# ---- uWebSockets.js: make the prebuilt addon load on glibc < 2.38 ----------------------------
UWS="$DIR/uws"
PKG="$UWS/node_modules/@btc-vision/uwebsockets.js"
ADDON="$PKG/uws_$(node -p 'process.platform + "_" + process.arch + "_" + process.versions.modules').node"
SHIM="$UWS/build/libisoc23_shim.so"
[ -f "$ADDON" ] || die "no prebuilt uWS addon for this node/platform: $ADDON"

uws_loads() {  # $1 = LD_PRELOAD value ('' for none)
  (cd "$UWS" && LD_BIND_NOW=1 LD_PRELOAD="$1" node -e 'require("@btc-vision/uwebsockets.js")') 2>/dev/null
}

if uws_loads "" ; then
  log "uws: addon loads natively (glibc >= 2.38); no shim needed"
  rm -f "$SHIM"
else
  GLIBC="$(getconf GNU_LIBC_VERSION 2>/dev/null || echo unknown)"
  log "uws: addon does not load as-is ($GLIBC); building isoc23 shim"
  if ! command -v gcc >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "gcc missing; install it (apt-get install gcc) or run as root"
    log "installing gcc with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
  fi
  mkdir -p "$UWS/build"
  gcc -O2 -fPIC -shared -Wall -Wextra \
      -Wl,--version-script="$UWS/isoc23_shim.map" -Wl,-soname,libisoc23_shim.so \
      -o "$SHIM.tmp" "$UWS/isoc23_shim.c"
  mv -f "$SHIM.tmp" "$SHIM"
  node "$UWS/patch-addon.js" "$ADDON" GLIBC_2.38 >&2
  uws_loads "$SHIM" || {
    (cd "$UWS" && LD_BIND_NOW=1 LD_PRELOAD="$SHIM" node -e 'require("@btc-vision/uwebsockets.js")') || true
    die "uws addon still does not load with the shim (see error above)"
  }
  log "uws: addon loads with LD_PRELOAD=$SHIM"
fi

log "done. Run: $DIR/run-node-ws.sh PORT   or   $DIR/run-uws.sh PORT"
