#!/usr/bin/env bash
# Capacity runs on this machine: a release server and the load tester side by side on
# loopback, a fresh server per run so memory figures start from zero.
#   one room, 1 publisher (1 Mbit/s VP8-sized video + Opus-sized audio), growing subscribers
#   one room, 2 publishers and 10 subscribers (time to media from every publisher)
#   10 rooms of 4 publishing participants
#   one room, 1 simulcast publisher (three layers), SIMULCAST_SUBSCRIBERS subscribers of
#   which half sit behind an emulated 500 kbit/s downlink: mixed layers
# Figures land in $OUT/*.json and in a summary table on stdout.
#
#   SERVER_BIN=path   server binary to measure (default: this tree's release build); the
#                     load tester is this tree's, so two servers meet the same tester
#   TESTER_BIN=path   the load tester to use instead (then nothing is built)
#   SERVE_ARGS="..."  extra server flags (an older build may not know --udp-port)
#   SUBSCRIBERS="..." subscriber counts of the one-room shape
#   DURATION=15       seconds of media per run
#   SHAPES="..."      which shapes to run (default: one-room two-pubs ten-rooms simulcast)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TESTER_BIN:-}" ]; then
  TESTER=$TESTER_BIN
else
  cargo build --release --locked --bin switchboard
  TESTER=target/release/switchboard
fi
SERVER_BIN=${SERVER_BIN:-$TESTER}
SERVE_ARGS=${SERVE_ARGS---udp-port 0 --max-sockets-per-ip 1000}
OUT=${OUT:-artifacts/capacity}
DURATION=${DURATION:-15}
mkdir -p "$OUT"

run_shape() { # name, load flags...
  local name=$1; shift
  # shellcheck disable=SC2086
  "$SERVER_BIN" serve --listen 127.0.0.1:0 --max-participants 500 $SERVE_ARGS > "$OUT/$name.server.log" 2>&1 &
  local pid=$!
  local url=""
  for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[^ ]*' "$OUT/$name.server.log" | head -1 | sed 's|listening on http://|ws://|; s|$|/ws|') || true
    [ -n "$url" ] && break
    sleep 0.1
  done
  if [ -z "$url" ]; then
    echo "the server did not start:" >&2
    cat "$OUT/$name.server.log" >&2
    exit 1
  fi
  "$TESTER" load --url "$url" --pid "$pid" --duration "$DURATION" --ramp 20 --quiet \
    --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" || true
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["server"]
f = lambda v, fmt="{:.1f}": "n/a" if v is None else fmt.format(v)
print(f'{sys.argv[2]:<22} parts {r["participants_connected"]:>3}/{r["participants_planned"]:<3} '
      f'fwd {f(s["packets_forwarded_per_second"], "{:.0f}"):>6} pkt/s  '
      f'cpu {f(s["cpu_percent"]):>5}%  {f(s["cpu_us_per_forwarded_packet"], "{:.2f}"):>5} us/pkt  '
      f'steady {f(s["steady_cpu_percent"]):>5}% {f(s["steady_cpu_us_per_forwarded_packet"], "{:.2f}"):>5} us/pkt  '
      f'mem {f(s["rss_bytes_per_participant"] and s["rss_bytes_per_participant"]/1024, "{:.0f}"):>5} KiB/part  '
      f'join p50/p99 {f(r["join_ms_p50"], "{:.0f}")}/{f(r["join_ms_p99"], "{:.0f}")} ms  '
      f'all {f(r["join_all_ms_p50"], "{:.0f}")}/{f(r["join_all_ms_p99"], "{:.0f}")} ms  '
      f'loss {r["loss_percent"]:.3f}%  freezes {r["freezes"]}  '
      f'p50 {f(r["latency"]["p50_ms"])} ms  p99 {f(r["latency"]["p99_ms"])} ms  '
      f'tester {f(r["tester_cpu_percent_per_participant"], "{:.2f}")}%/part')
print("LOSS", r["loss_percent"], file=open(sys.argv[1] + ".loss", "w"))
PY
}

SHAPES=${SHAPES:-one-room two-pubs ten-rooms simulcast}
want() { [[ " $SHAPES " == *" $1 "* ]]; }

if want one-room; then
echo "== one room, 1 publisher at 1 Mbit/s, growing subscribers"
for subs in ${SUBSCRIBERS:-10 50 100 200}; do
  run_shape "one-room-$subs" --rooms 1 --publishers 1 --subscribers "$subs" --video-bitrate 1000000
  loss=$(cut -d' ' -f2 "$OUT/one-room-$subs.json.loss")
  if python3 -c "import sys; sys.exit(0 if float('$loss') > 1.0 else 1)"; then
    echo "loss passed 1% at $subs subscribers; stopping"
    break
  fi
done

fi

if want two-pubs; then
echo "== one room, 2 publishers and 10 subscribers"
run_shape "two-pubs-ten-subs" --rooms 1 --publishers 2 --subscribers 10 --video-bitrate 1000000
fi

if want ten-rooms; then
echo "== 10 rooms of 4 publishing participants"
run_shape "ten-rooms-of-4" --rooms 10 --publishers 4 --video-bitrate 500000
fi

if want simulcast; then
subs=${SIMULCAST_SUBSCRIBERS:-200}
echo "== one room, 1 simulcast publisher (150k/300k/1M), $subs subscribers, half behind 500 kbit/s"
run_shape "simulcast-$subs" --rooms 1 --publishers 1 --subscribers "$subs" --simulcast \
  --video-bitrate 1000000 --downlink 500kbit --shaped-subscribers $((subs / 2))
fi
