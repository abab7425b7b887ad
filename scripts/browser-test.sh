#!/usr/bin/env bash
# The web client in headless Chromium against a real server. Installs what it needs on a
# fresh Debian machine: Chromium from Debian's packages, Node.js, and playwright-core (which
# drives the system Chromium; it downloads no browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked --bin switchboard
export SWITCHBOARD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/switchboard"
export SWITCHBOARD_ARTIFACTS="${SWITCHBOARD_ARTIFACTS:-$PWD/artifacts}"
cd tests/browser
node --test --test-concurrency=1 --test-reporter=spec .
