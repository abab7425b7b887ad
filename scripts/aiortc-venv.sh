#!/usr/bin/env bash
# Makes the Python virtualenv with aiortc that the tests use as an independent WebRTC stack
# (tests/aiortc/requirements.txt, from PyPI), when it is missing or its requirements changed,
# and prints its python's path. AIORTC_VENV overrides where it lives.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

target="${CARGO_TARGET_DIR:-$root/target}"
venv="${AIORTC_VENV:-$target/aiortc-venv}"
requirements="$root/tests/aiortc/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    echo "installing python3-venv from Debian's packages" >&2
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
  fi
fi
stamp="$venv/.switchboard-requirements"
if ! cmp -s "$requirements" "$stamp" \
  || ! "$venv/bin/python" -c 'import aiortc, av, numpy, websockets' 2>/dev/null; then
  echo "installing aiortc and its dependencies into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi
echo "$venv/bin/python"
