#!/usr/bin/env bash
# Create (idempotently) the Python 2.7 virtualenv that provides `wstest`,
# the Autobahn|Testsuite driver used by tests/autobahn/run.sh.
#
#   tests/autobahn/setup.sh            # create/verify the venv
#   AUTOBAHN_FORCE=1 setup.sh          # throw the venv away and rebuild it
#
# Environment knobs (all optional):
#   AUTOBAHN_VENV      venv directory   (default: $REPO/target/autobahn-venv)
#   AUTOBAHN_PYTHON27  python2.7 binary (default: pyenv's 2.7.18)
#   PYTHON3            python3 used to run virtualenv (default: python3)
#
# Autobahn|Testsuite only runs on Python 2.7.  On this machine kind, 2.7.18
# comes from pyenv; the venv is created with virtualenv 20.21.1 (the last
# series that can still create 2.7 environments), which is installed into a
# private directory under target/ so the global python3 is left untouched.
# All Python 2.7 packages are pinned in requirements-py27.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${AUTOBAHN_VENV:-$REPO/target/autobahn-venv}"
REQS="$HERE/requirements-py27.txt"
# virtualenv for python3 lives here (pip --target), not in site-packages.
TOOLS="$REPO/target/autobahn-tools"
VIRTUALENV_VERSION="20.21.1"
PYTHON3="${PYTHON3:-python3}"
MARKER="$VENV/.shardcast-autobahn-complete"

log() { printf 'autobahn-setup: %s\n' "$*" >&2; }
die() { printf 'autobahn-setup: ERROR: %s\n' "$*" >&2; exit 1; }

# The marker records a hash of the pin list (and of this script), so editing
# either one triggers a rebuild on the next run.
stamp() {
    cat "$REQS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

# ---------------------------------------------------------------------------
# Fast path: the venv is complete and matches the current pins.
# ---------------------------------------------------------------------------
if [[ "${AUTOBAHN_FORCE:-0}" != 1 && -f "$MARKER" ]] \
    && [[ "$(cat "$MARKER")" == "$(stamp)" ]] \
    && "$VENV/bin/wstest" --help >/dev/null 2>&1; then
    log "venv up to date: $VENV"
    exit 0
fi

# ---------------------------------------------------------------------------
# Locate CPython 2.7.
# ---------------------------------------------------------------------------
find_python27() {
    if [[ -n "${AUTOBAHN_PYTHON27:-}" ]]; then
        printf '%s\n' "$AUTOBAHN_PYTHON27"
        return
    fi
    local root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
    fi
    # pyenv may not be on PATH in non-interactive shells (e.g. CI).
    for r in "$root" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
        [[ -n "$r" ]] || continue
        for exe in "$r/versions/2.7.18/bin/python2.7" "$r/versions/2.7.18/bin/python"; do
            if [[ -x "$exe" ]]; then
                printf '%s\n' "$exe"
                return
            fi
        done
    done
    # Last resort: any python2.7 on PATH.
    command -v python2.7 2>/dev/null || true
}

PY27="$(find_python27)"
# `setup.sh --check`: only say whether a CPython 2.7 is there (exit 0) or not (exit 3).
if [ "${1:-}" = "--check" ]; then
    [ -n "$PY27" ] && exit 0
    exit 3
fi
if [[ -z "$PY27" || ! -x "$PY27" ]]; then
    die "CPython 2.7 not found. Autobahn|Testsuite needs Python 2.7:
    install it with 'pyenv install 2.7.18' (expected at \$(pyenv root)/versions/2.7.18/bin/python2.7),
    or point AUTOBAHN_PYTHON27 at a python2.7 binary."
fi
if ! "$PY27" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null; then
    die "$PY27 is not a working Python 2.7 interpreter
    (install one with 'pyenv install 2.7.18', or set AUTOBAHN_PYTHON27)"
fi
log "using Python 2.7: $PY27"

command -v "$PYTHON3" >/dev/null 2>&1 || die "python3 not found (needed to run virtualenv)"

# ---------------------------------------------------------------------------
# virtualenv 20.21.1 in a private target directory.
# ---------------------------------------------------------------------------
run_virtualenv() {
    PYTHONPATH="$TOOLS${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON3" -m virtualenv "$@"
}
if [[ "$(run_virtualenv --version 2>/dev/null | awk '{print $2}')" != "$VIRTUALENV_VERSION" ]]; then
    log "installing virtualenv==$VIRTUALENV_VERSION into $TOOLS"
    rm -rf "$TOOLS"
    mkdir -p "$TOOLS"
    PIP_ROOT_USER_ACTION=ignore "$PYTHON3" -m pip install --quiet --disable-pip-version-check --no-input \
        --target "$TOOLS" "virtualenv==$VIRTUALENV_VERSION"
fi

# ---------------------------------------------------------------------------
# (Re)create the venv from scratch; a half-built one is never reused.
# ---------------------------------------------------------------------------
if [[ -e "$VENV" ]]; then
    # Refuse to wipe a directory that does not look like a virtualenv.
    if [[ -f "$VENV/pyvenv.cfg" || -z "$(ls -A "$VENV" 2>/dev/null)" ]]; then
        log "removing stale venv $VENV"
        rm -rf "$VENV"
    else
        die "$VENV exists and is not a virtualenv; remove it or set AUTOBAHN_VENV"
    fi
fi
mkdir -p "$(dirname "$VENV")"
log "creating venv $VENV"
# --no-download/--no-periodic-update: seed from virtualenv's bundled wheels
# (pip 20.3.4, setuptools 44.1.1, wheel 0.37.1 for 2.7), never from the net.
run_virtualenv --quiet --no-download --no-periodic-update -p "$PY27" "$VENV"

# ---------------------------------------------------------------------------
# Install the pinned packages.
#   --no-deps:             nothing outside requirements-py27.txt gets in
#   --no-build-isolation:  build sdists (wsaccel) with the venv's pinned
#                          setuptools instead of fetching unpinned build deps
# pip is run in two steps so setuptools==44.0.0 is in place before building.
# ---------------------------------------------------------------------------
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input --no-python-version-warning)
log "installing pinned packages (this builds wsaccel with gcc)"
"${PIP[@]}" install --quiet --no-deps "$(grep -E '^setuptools==' "$REQS")"
"${PIP[@]}" install --quiet --no-deps --no-build-isolation -r "$REQS"

# Verify the pin set is self-consistent and the tool actually starts.
"${PIP[@]}" check >&2
"$VENV/bin/wstest" --help >/dev/null || die "wstest --help failed in $VENV"
"$VENV/bin/python" -c 'import wsaccel, ujson, autobahn, autobahntestsuite, twisted' \
    || die "autobahn/twisted imports failed in $VENV"
log "$("$VENV/bin/wstest" -a 2>&1 | tr '\n' ' ')"

stamp >"$MARKER"
log "venv ready: $VENV"
