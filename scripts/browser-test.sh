#!/usr/bin/env bash
# The web client in headless Chromium and Firefox against a real server. Installs what it
# needs on a fresh Debian machine: Chromium and Firefox ESR from Debian's packages, iproute2
# (the Firefox test's network namespace), Node.js, and from npm playwright-core and
# puppeteer-core (which drive the system browsers; neither downloads a browser of its own),
# and aiortc in a virtualenv (scripts/aiortc-venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
[ -x "${FIREFOX:-/usr/bin/firefox-esr}" ] || need_apt+=(firefox-esr)
command -v ip >/dev/null || need_apt+=(iproute2)
# bandwidth.test.mjs makes its microphone wavs (a tone, silence) with ffmpeg.
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "installing ${need_apt[*]} from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
# An aiortc participant joins a call with a page (aiortc.test.mjs).
AIORTC_PYTHON=$(./scripts/aiortc-venv.sh)
export AIORTC_PYTHON
cargo build --locked --bin switchboard
export SWITCHBOARD_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/switchboard"
export SWITCHBOARD_ARTIFACTS="${SWITCHBOARD_ARTIFACTS:-$PWD/artifacts}"
cd tests/browser
node --test --test-concurrency=1 --test-reporter=spec .
