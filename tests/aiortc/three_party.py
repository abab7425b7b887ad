#!/usr/bin/env python3
"""Three aiortc participants in one room, each publishing a tone and a colour.

    python three_party.py ws://127.0.0.1:PORT/ws [--duration 10] [--trace]

They join one after the other (`--stagger` seconds apart), stay for `--duration` seconds
after the last one joined, then leave. Prints a JSON report on stdout and exits 0 only if
every participant decoded more than `--min-audio` audio frames and more than `--min-video`
video frames from every other participant, identified by the tone and colour that participant
sends, with at most `--max-mismatch` of the decoded frames showing someone else's signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rtp_trace  # noqa: E402
from participant import Participant  # noqa: E402


def loopback_ice_only() -> None:
    """Gather ICE host candidates on 127.0.0.1 only: aioice leaves loopback out by default,
    and the server under test listens on loopback."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class WarningCounter(logging.Handler):
    """Counts aiortc's warnings (e.g. "failed to decode VP8 frame", which two streams mixed
    into one receiver produce) for the report, instead of flooding the console."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name}: {record.getMessage()[:80]}"
        self.counts[key] = self.counts.get(key, 0) + 1


WARNINGS = WarningCounter()


def check(participants: list[Participant], args: argparse.Namespace) -> list[str]:
    failures = []
    for p in participants:
        if p.errors:
            failures.append(f"{p.name}: errors {p.errors}")
        for other in participants:
            if other is p:
                continue
            for kind, minimum in (("audio", args.min_audio), ("video", args.min_video)):
                tracks = [
                    s
                    for s in p.remote
                    if s.kind == kind and s.publisher_id == other.id
                ]
                if not tracks:
                    failures.append(f"{p.name} has no {kind} track from {other.name}")
                    continue
                matched = sum(s.matched for s in tracks)
                decoded = sum(s.frames - s.silent for s in tracks)
                mismatched = sum(s.mismatched for s in tracks)
                if matched <= minimum:
                    failures.append(
                        f"{p.name} decoded {matched} {kind} frames identified as {other.name} "
                        f"(needs > {minimum}; {decoded} non-silent decoded, {mismatched} "
                        f"with another signature)"
                    )
                elif decoded and mismatched / decoded > args.max_mismatch:
                    failures.append(
                        f"{p.name}: {mismatched} of {decoded} {kind} frames on {other.name}'s "
                        f"track show another participant's signature"
                    )
        # A track announced for a publisher that is not in the room at all is a failure too.
        known = {q.id for q in participants}
        for s in p.remote:
            if s.publisher_id not in known:
                failures.append(f"{p.name} got a {s.kind} track for unknown stream {s.publisher_id}")
    return failures


async def main_async(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.trace:
        rtp_trace.install(t0)
    room = args.room or f"aiortc-{uuid.uuid4().hex[:8]}"
    participants = [
        Participant(args.url, room, i, t0=t0, bundle_policy=args.bundle_policy)
        for i in range(args.participants)
    ]
    last_join = args.stagger * (len(participants) - 1)

    async def run(i: int, p: Participant) -> None:
        await asyncio.sleep(args.stagger * i)
        await p.run(duration=last_join - args.stagger * i + args.duration)

    results = await asyncio.gather(
        *(run(i, p) for i, p in enumerate(participants)), return_exceptions=True
    )
    failures = []
    for p, r in zip(participants, results):
        if isinstance(r, BaseException):
            failures.append(f"{p.name} failed: {r!r}")
    failures += check(participants, args)

    report: dict[str, Any] = {
        "url": args.url,
        "room": room,
        "duration_s": args.duration,
        "thresholds": {
            "min_audio_frames": args.min_audio,
            "min_video_frames": args.min_video,
            "max_mismatch": args.max_mismatch,
        },
        "bundle_policy": args.bundle_policy,
        "participants": [p.report() for p in participants],
        "summary": summary(participants),
        "aiortc_warnings": WARNINGS.counts,
        "failures": failures,
        "pass": not failures,
    }
    if not args.events:
        for p in report["participants"]:
            p.pop("events")
            p.pop("subscriber_offer_sdps")
    if args.trace:
        report["trace"] = rtp_trace.report()
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    print(
        ("PASS" if not failures else "FAIL") + ": " + json.dumps(report["summary"]),
        file=sys.stderr,
    )
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    return 0 if not failures else 1


def summary(participants: list[Participant]) -> dict[str, Any]:
    """receiver -> publisher -> "audio matched/decoded, video matched/decoded"."""
    out: dict[str, Any] = {}
    for p in participants:
        row = {}
        for other in participants:
            if other is p:
                continue
            cells = []
            for kind in ("audio", "video"):
                tracks = [s for s in p.remote if s.kind == kind and s.publisher_id == other.id]
                matched = sum(s.matched for s in tracks)
                frames = sum(s.frames for s in tracks)
                cells.append(f"{kind} {matched}/{frames}")
            row[other.name] = ", ".join(cells)
        out[p.name] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="signaling URL, ws://HOST:PORT/ws")
    ap.add_argument("--room", help="room name (default: a fresh random one)")
    ap.add_argument("--participants", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds after the last join")
    ap.add_argument("--stagger", type=float, default=1.0, help="seconds between joins")
    ap.add_argument("--min-audio", type=int, default=100, help="audio frames (20 ms) needed per pair")
    ap.add_argument("--min-video", type=int, default=30, help="video frames needed per pair")
    ap.add_argument("--max-mismatch", type=float, default=0.05, help="fraction of frames allowed to show another signature")
    ap.add_argument(
        "--bundle-policy",
        choices=["balanced", "max-compat", "max-bundle"],
        default="balanced",
        help="aiortc's RTCConfiguration.bundlePolicy (default: aiortc's own default, balanced)",
    )
    ap.add_argument("--trace", action="store_true", help="instrument aiortc's RTP routing and include it in the report")
    ap.add_argument("--events", action="store_true", help="include each participant's signaling timeline and the server's offers")
    ap.add_argument("--json", help="also write the report to this file")
    ap.add_argument("--all-interfaces", action="store_true", help="gather ICE candidates on every interface, not only loopback")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.verbose:
        aiortc_logger = logging.getLogger("aiortc")
        aiortc_logger.addHandler(WARNINGS)
        aiortc_logger.propagate = False
    host = urlparse(args.url).hostname or ""
    if not args.all_interfaces and (host.startswith("127.") or host in ("localhost", "::1")):
        loopback_ice_only()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
