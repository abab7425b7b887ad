#!/usr/bin/env bash
# Regenerates assets/testsrc-vp8.ivf: 4 s of ffmpeg's testsrc pattern, 320x240 at 30 fps,
# VP8 at ~300 kbit/s with a keyframe every second. Needs ffmpeg (Debian: apt-get install ffmpeg).
set -euo pipefail
cd "$(dirname "$0")/.."
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i testsrc=size=320x240:rate=30 -t 4 \
  -c:v libvpx -b:v 300k -g 30 -keyint_min 30 -deadline good -cpu-used 4 \
  -f ivf assets/testsrc-vp8.ivf
ls -l assets/testsrc-vp8.ivf
