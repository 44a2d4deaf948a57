# Sourced by tests/browser/run*.sh: Debian's chromium (installed when root) and playwright-core
# from npm (no browser download). Expects to run from the repository root.
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "browser tests: chromium missing (apt-get install chromium)" >&2; exit 1
  fi
fi
[[ -d tests/browser/node_modules/playwright-core ]] || (cd tests/browser && npm install --silent --no-audit --no-fund)
