#!/usr/bin/env bash
# Every test of the project, from a fresh machine: formatting, lints, unit and integration
# tests (real server, real WebRTC peers on loopback), aiortc, the browser.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# A second, independent WebRTC stack: three aiortc participants (installs aiortc from PyPI
# into a virtualenv when missing).
./scripts/aiortc-test.sh

# The web client in a real browser (installs Chromium and playwright-core when missing).
./scripts/browser-test.sh
