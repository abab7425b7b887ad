#!/usr/bin/env bash
# A second, independent WebRTC stack against a real server: three aiortc (Python) participants
# in one room, each publishing a tone and a colour, each decoding every other's audio and video
# and checking it comes from the right participant (tests/aiortc/).
#
# Installs aiortc from PyPI into a virtualenv when missing (scripts/aiortc-venv.sh), builds the
# debug server, starts it on an ephemeral port, runs tests/aiortc/three_party.py, stops the
# server and exits with the test's status. The JSON report goes to artifacts/aiortc-report.json.
#
# Extra arguments go to three_party.py (e.g. --duration 20, --events). SWITCHBOARD_BIN names a
# server binary to use instead of building the debug one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

target="${CARGO_TARGET_DIR:-$root/target}"
artifacts="${SWITCHBOARD_ARTIFACTS:-$root/artifacts}"
mkdir -p "$artifacts"
python=$("$root/scripts/aiortc-venv.sh")

# SWITCHBOARD_BIN runs a given binary (a release build, say) instead of building one.
if [ -n "${SWITCHBOARD_BIN:-}" ]; then
  bin=$SWITCHBOARD_BIN
else
  cargo build --locked --bin switchboard
  bin="$target/debug/switchboard"
fi

# The server on an ephemeral port; it prints "listening on http://HOST:PORT" once bound.
log_dir=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$log_dir"
}
trap cleanup EXIT

: >"$log_dir/stdout"
RUST_LOG="${RUST_LOG:-warn}" "$bin" serve --listen 127.0.0.1:0 >"$log_dir/stdout" 2>"$log_dir/stderr" &
server_pid=$!
url=
for _ in $(seq 200); do
  url=$(grep -o 'listening on http://[^[:space:]]*' "$log_dir/stdout" | head -n1 | sed 's/^listening on //') || true
  [ -n "$url" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited before listening:" >&2
    cat "$log_dir/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the server did not start in 20 s" >&2
  exit 1
fi
ws_url="ws://${url#http://}/ws"
echo "aiortc three-party test against $ws_url"

status=0
"$python" "$root/tests/aiortc/three_party.py" "$ws_url" --trace \
  --json "$artifacts/aiortc-report.json" "$@" >/dev/null || status=$?
echo "report: $artifacts/aiortc-report.json"
if [ "$status" -ne 0 ] && [ -s "$log_dir/stderr" ]; then
  echo "server log (last lines):" >&2
  tail -n 20 "$log_dir/stderr" >&2
fi
exit "$status"
