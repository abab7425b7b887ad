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
import multiprocessing
import queue
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
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


def configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.verbose:
        aiortc_logger = logging.getLogger("aiortc")
        aiortc_logger.addHandler(WARNINGS)
        aiortc_logger.propagate = False
    host = urlparse(args.url).hostname or ""
    if not args.all_interfaces and (host.startswith("127.") or host in ("localhost", "::1")):
        loopback_ice_only()


def check(participants: list["Result"], args: argparse.Namespace) -> list[str]:
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


def check_chat(participants: list["Result"], args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Every chat message reached every participant that was in the room when it was sent,
    exactly once, with the server-set `from` naming its sender, and nobody else more than once.
    Returns the failures and the delivery times (send to receipt, ms) per phase."""
    failures = []
    delays: dict[str, list[float]] = {}
    for sender in participants:
        for sent in sender.chat_sent:
            for receiver in participants:
                got = [(at, m) for at, m in receiver.chat_received if m.get("text") == sent["text"]]
                if receiver is sender:
                    if got:
                        failures.append(f"{sender.name}'s chat {sent['text']!r} was echoed to it")
                    continue
                present = receiver.joined_at is not None and receiver.joined_at < sent["t"]
                if present and len(got) != 1:
                    failures.append(
                        f"{receiver.name} received {sender.name}'s chat {sent['text']!r} "
                        f"{len(got)} times (expected once)"
                    )
                    continue
                if len(got) > 1:
                    failures.append(f"{receiver.name} received {sent['text']!r} {len(got)} times")
                    continue
                if not got:
                    continue
                at, msg = got[0]
                frm = msg.get("from") or {}
                if frm.get("id") != sender.id or frm.get("name") != sender.name:
                    failures.append(f"{receiver.name}: {sent['text']!r} arrived from {frm} (sent by {sender.name} {sender.id})")
                if msg.get("type") != "chat" or not isinstance(msg.get("ts"), int):
                    failures.append(f"{receiver.name}: {sent['text']!r} arrived as {msg}")
                # Timed only where the receiver's channel was open when it was sent (else it
                # waited, by design, for the channel to open).
                if receiver.chat_open_at is not None and receiver.chat_open_at < sent["t"]:
                    delay_ms = (at - sent["t"]) * 1000
                    delays.setdefault(sent["phase"], []).append(delay_ms)
                    if delay_ms > args.max_chat_ms:
                        failures.append(
                            f"{sender.name}'s chat ({sent['phase']}) took {delay_ms:.0f} ms to reach "
                            f"{receiver.name} (bound {args.max_chat_ms:.0f} ms)"
                        )
    phases = {s["phase"] for p in participants for s in p.chat_sent}
    for phase in sorted(phases):
        if not delays.get(phase):
            failures.append(f"no chat sent on {phase} reached anyone with an open channel")
    stats = {}
    for phase, values in delays.items():
        values.sort()
        stats[phase] = {
            "deliveries": len(values),
            "p50_ms": round(values[len(values) // 2], 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            "max_ms": round(values[-1], 1),
        }
    return failures, stats


async def chat_when_media_flows(p: Participant, others: int, deadline: float) -> None:
    """Once this participant decodes audio and video from every other one (so its subscriber
    PC has been renegotiated and media flows both ways), it sends one more chat message."""
    while time.monotonic() < deadline:
        decoded = {(s.publisher_id, s.kind) for s in p.remote if s.matched > 0}
        if len(decoded) >= 2 * others:
            await asyncio.sleep(0.5)
            p.send_chat("media")
            return
        await asyncio.sleep(0.1)


@dataclass
class Result:
    """What one participant's process hands back: everything the checks and the report read."""

    name: str
    id: Optional[str]
    errors: list
    remote: list
    chat_sent: list
    chat_received: list
    joined_at: Optional[float]
    chat_open_at: Optional[float]
    report: dict
    warnings: dict
    trace: Optional[dict]
    failure: Optional[str]


def run_participant(index: int, args: argparse.Namespace, room: str, start: float, results: Any) -> None:
    """One participant in its own process: an interpreter each, as separate clients would have
    (three peers in one interpreter share one core's worth of Python and fall behind on a
    loaded machine, media and chat alike)."""
    configure_logging(args)
    if args.trace:
        rtp_trace.install(start)
    p = Participant(args.url, room, index, t0=start, bundle_policy=args.bundle_policy)
    last_join = args.stagger * (args.participants - 1)

    async def take_part() -> None:
        await asyncio.sleep(max(0.0, start + args.stagger * index - time.monotonic()))
        chat = asyncio.ensure_future(
            chat_when_media_flows(p, args.participants - 1, start + last_join + args.duration - 2.0)
        )
        try:
            await p.run(duration=last_join - args.stagger * index + args.duration)
        finally:
            chat.cancel()

    failure = None
    try:
        asyncio.run(take_part())
    except BaseException as exc:  # reported as this participant's failure
        failure = repr(exc)
    results.put(
        Result(
            name=p.name,
            id=p.id,
            errors=p.errors,
            remote=p.remote,
            chat_sent=p.chat_sent,
            chat_received=p.chat_received,
            joined_at=p.joined_at,
            chat_open_at=p.chat_open_at,
            report=p.report(),
            warnings=WARNINGS.counts,
            trace=rtp_trace.report() if args.trace else None,
            failure=failure,
        )
    )


def run_all(args: argparse.Namespace) -> int:
    room = args.room or f"aiortc-{uuid.uuid4().hex[:8]}"
    # One clock for every process (CLOCK_MONOTONIC is system-wide), so join, send and receipt
    # times compare across them. Forked before any event loop exists.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.monotonic() + 0.5
    processes = [
        context.Process(target=run_participant, args=(i, args, room, start, results), daemon=True)
        for i in range(args.participants)
    ]
    for proc in processes:
        proc.start()
    give_up = start + args.stagger * args.participants + args.duration + 60
    collected: dict[str, Result] = {}
    for _ in processes:
        try:
            r = results.get(timeout=max(1.0, give_up - time.monotonic()))
        except queue.Empty:
            break
        collected[r.name] = r
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    failures = [
        f"p{i} reported nothing (its process died or hung)"
        for i in range(args.participants)
        if f"p{i}" not in collected
    ]
    participants = [collected[f"p{i}"] for i in range(args.participants) if f"p{i}" in collected]
    failures += [f"{r.name} failed: {r.failure}" for r in participants if r.failure]
    failures += check(participants, args)
    chat_failures, chat_delays = check_chat(participants, args)
    failures += chat_failures

    report: dict[str, Any] = {
        "url": args.url,
        "room": room,
        "duration_s": args.duration,
        "thresholds": {
            "min_audio_frames": args.min_audio,
            "min_video_frames": args.min_video,
            "max_mismatch": args.max_mismatch,
            "max_chat_ms": args.max_chat_ms,
        },
        "bundle_policy": args.bundle_policy,
        "participants": [r.report for r in participants],
        "summary": summary(participants),
        "chat_delivery_ms": chat_delays,
        "aiortc_warnings": {r.name: r.warnings for r in participants},
        "failures": failures,
        "pass": not failures,
    }
    if not args.events:
        for p in report["participants"]:
            p.pop("events")
            p.pop("subscriber_offer_sdps")
    if args.trace:
        report["trace"] = {r.name: r.trace for r in participants}
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    print(
        ("PASS" if not failures else "FAIL") + ": " + json.dumps(report["summary"]),
        file=sys.stderr,
    )
    print("chat delivery, send to receipt: " + json.dumps(chat_delays), file=sys.stderr)
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    return 0 if not failures else 1


def summary(participants: list["Result"]) -> dict[str, Any]:
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
    ap.add_argument(
        "--max-chat-ms",
        type=float,
        default=1000.0,
        help="longest a chat message may take from send to receipt (generous: loopback takes milliseconds)",
    )
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
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
