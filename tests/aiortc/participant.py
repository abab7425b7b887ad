"""One switchboard participant on aiortc: a second, independent WebRTC stack for the tests.

It speaks the signaling protocol of docs/protocol.md over the WebSocket exactly as a client
author would from that document:

- `join`, then answers every subscriber `offer` the server makes (the server is the offerer of
  the subscriber PC, which carries every forwarded track and the `chat` data channel);
- offers its own publisher PC with two send-only transceivers (audio, video);
- trickles its ICE candidates both ways: its SDP goes out without `a=candidate` lines, each
  candidate follows as a `candidate` message and then `null` for end of candidates; the
  server's candidates are applied as they come (kept until the PC has a remote description).

What it publishes identifies it: a sine tone and a solid colour chosen from the participant's
index (its name is `p<index>`). What it receives is decoded by aiortc, frame by frame, and
each decoded frame is checked against the signature of the participant the track is announced
for (`a=msid:<publisher participant id> <track id>`, the id mapped to a name by `joined` and
`participant_joined`). So the counts say "decoded from the right participant", not merely
"something arrived".
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import av
import numpy as np
import websockets
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from rtp_trace import LABEL

log = logging.getLogger("participant")

AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
AUDIO_SAMPLES = int(AUDIO_RATE * AUDIO_PTIME)  # 960: FFT bins of 50 Hz
VIDEO_CLOCK = 90000
VIDEO_FPS = 15
VIDEO_SIZE = (160, 120)

# Per-participant signatures. Frequencies are multiples of the 50 Hz FFT bin of one 20 ms
# frame, and far apart; colours are far apart in RGB after a VP8 round trip.
TONES = [400.0, 700.0, 1000.0, 1300.0, 1600.0, 1900.0]
COLOURS = [
    (220, 40, 40),
    (40, 200, 40),
    (40, 40, 220),
    (220, 200, 40),
    (200, 40, 200),
    (40, 200, 200),
]
TONE_TOLERANCE_HZ = 60.0
COLOUR_TOLERANCE = 60.0
SILENCE_RMS = 200.0  # s16 units; the tone is sent at ~9800 RMS


def signature_index(name: str) -> Optional[int]:
    m = re.fullmatch(r"p(\d+)", name or "")
    if not m:
        return None
    i = int(m.group(1))
    return i if i < len(TONES) else None


# --------------------------------------------------------------------------------------------
# What a participant sends


class ToneTrack(MediaStreamTrack):
    """A sine tone, paced in real time, 20 ms per frame."""

    kind = "audio"

    def __init__(self, frequency: float) -> None:
        super().__init__()
        self.frequency = frequency
        self._start: Optional[float] = None
        self._samples = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._samples += AUDIO_SAMPLES
            wait = self._start + self._samples / AUDIO_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = np.arange(self._samples, self._samples + AUDIO_SAMPLES)
        tone = 0.3 * 32767 * np.sin(2 * np.pi * self.frequency * n / AUDIO_RATE)
        data = tone.astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


class ColourTrack(MediaStreamTrack):
    """A solid colour with a small moving grey square (so frames differ), paced in real time."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int]) -> None:
        super().__init__()
        self.colour = colour
        self._start: Optional[float] = None
        self._count = 0
        w, h = VIDEO_SIZE
        self._base = np.empty((h, w, 3), dtype=np.uint8)
        self._base[:, :] = colour

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._count += 1
            wait = self._start + self._count / VIDEO_FPS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        img = self._base.copy()
        w, h = VIDEO_SIZE
        x = (self._count * 4) % (w - 16)
        img[h // 2 - 8 : h // 2 + 8, x : x + 16] = 128
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(self._count * VIDEO_CLOCK / VIDEO_FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


# --------------------------------------------------------------------------------------------
# What a participant receives


def dominant_frequency(frame: av.AudioFrame) -> tuple[float, float]:
    """(peak frequency in Hz, RMS) of the frame's first channel."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data[0]
    else:
        samples = data.reshape(-1)[::channels]
    samples = samples.astype(np.float64)
    rms = float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0
    if len(samples) < 64:
        return 0.0, rms
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0
    peak = int(np.argmax(spectrum))
    return peak * frame.sample_rate / len(samples), rms


def mean_colour(frame: av.VideoFrame) -> tuple[float, float, float]:
    img = frame.to_ndarray(format="rgb24")[::4, ::4]
    m = img.reshape(-1, 3).mean(axis=0)
    return float(m[0]), float(m[1]), float(m[2])


@dataclass
class RemoteTrackStats:
    mid: str
    kind: str
    publisher_id: str
    track_id: str
    frames: int = 0
    matched: int = 0
    mismatched: int = 0
    silent: int = 0
    first_frame_s: Optional[float] = None
    last_frame_s: Optional[float] = None
    samples: list = field(default_factory=list)  # a few observed signatures, for the report
    ended: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mid": self.mid,
            "kind": self.kind,
            "publisher_id": self.publisher_id,
            "track_id": self.track_id,
            "frames": self.frames,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "silent": self.silent,
            "first_frame_s": self.first_frame_s,
            "last_frame_s": self.last_frame_s,
            "observed": self.samples,
            "ended": self.ended,
        }


# --------------------------------------------------------------------------------------------
# SDP helpers


def parse_media_sections(sdp: str) -> list[dict[str, Any]]:
    """Per m-line: kind, port, mid, direction, msid (stream, track), ssrcs, extmaps."""
    sections: list[dict[str, Any]] = []
    cur: Optional[dict[str, Any]] = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts = line[2:].split()
            cur = {
                "kind": parts[0],
                "port": int(parts[1]),
                "mid": None,
                "direction": "sendrecv",
                "msid": None,
                "ssrcs": [],
                "extmap": [],
            }
            sections.append(cur)
        elif cur is None:
            continue
        elif line.startswith("a=mid:"):
            cur["mid"] = line[6:].strip()
        elif line.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            cur["direction"] = line.strip()[2:]
        elif line.startswith("a=msid:"):
            parts = line[7:].split()
            cur["msid"] = (parts[0], parts[1] if len(parts) > 1 else None)
        elif line.startswith("a=ssrc:"):
            ssrc = int(line[7:].split()[0])
            if ssrc not in cur["ssrcs"]:
                cur["ssrcs"].append(ssrc)
            m = re.match(r"a=ssrc:\d+ msid:(\S+)(?: (\S+))?", line)
            if m and cur["msid"] is None:
                cur["msid"] = (m.group(1), m.group(2))
        elif line.startswith("a=extmap:"):
            cur["extmap"].append(line[len("a=extmap:") :].strip())
    return sections


def strip_candidates(sdp: str) -> str:
    """The SDP without candidates: they go out as trickle `candidate` messages instead."""
    lines = [
        line
        for line in sdp.splitlines()
        if not line.startswith("a=candidate:") and line != "a=end-of-candidates"
    ]
    return "\r\n".join(lines) + "\r\n"


def local_candidates(pc: RTCPeerConnection) -> list[dict[str, Any]]:
    """The candidates of the PC's local description, as RTCIceCandidateInit dicts for the
    first (BUNDLE-primary) m-line, which is where aiortc gathers them."""
    sdp = pc.localDescription.sdp
    sections = parse_media_sections(sdp)
    mid = sections[0]["mid"] if sections else "0"
    ufrag = None
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line.split(":", 1)[1].strip()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            out.append(
                {
                    "candidate": line[2:],
                    "sdpMid": mid,
                    "sdpMLineIndex": 0,
                    "usernameFragment": ufrag,
                }
            )
        elif line.startswith("m=") and out:
            break  # aiortc repeats the same candidates in every bundled section
    return out


# --------------------------------------------------------------------------------------------


class Participant:
    """One participant: a WebSocket, a publisher PC and a subscriber PC."""

    def __init__(
        self,
        url: str,
        room: str,
        index: int,
        *,
        publish: bool = True,
        label: Optional[str] = None,
        t0: Optional[float] = None,
        bundle_policy: str = "balanced",
    ) -> None:
        self.url = url
        self.room = room
        self.index = index
        self.name = f"p{index}"
        self.label = label or self.name
        self.publish = publish
        # aiortc's default is BALANCED; others only to diagnose (three_party.py --bundle-policy).
        self.bundle_policy = bundle_policy
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.id: Optional[str] = None
        self.names: dict[str, str] = {}  # participant id -> name
        self.ws: Any = None
        self.pub: Optional[RTCPeerConnection] = None
        self.sub: Optional[RTCPeerConnection] = None
        self.pending_candidates: dict[str, list[Optional[dict[str, Any]]]] = {
            "publisher": [],
            "subscriber": [],
        }
        self.sub_candidates_sent = False
        # Every (m-line, announced track) pair seen, in order; the current one per mid.
        self.remote: list[RemoteTrackStats] = []
        self.current: dict[str, Optional[RemoteTrackStats]] = {}
        self.reading: set[str] = set()
        self.unattributed: dict[str, int] = {}  # frames decoded on an m-line not sending
        self.consumers: list[asyncio.Task] = []
        self.tracks_out: list[MediaStreamTrack] = []
        self.events: list[dict[str, Any]] = []  # signaling timeline, for diagnosis
        self.errors: list[dict[str, Any]] = []
        # Every chat message received: (monotonic time, parsed message).
        self.chat_received: list[tuple[float, dict[str, Any]]] = []
        # Every chat message sent: {"text", "t" (monotonic), "phase"}.
        self.chat_sent: list[dict[str, Any]] = []
        self.chat_channel: Any = None
        self.joined_at: Optional[float] = None
        self.chat_open_at: Optional[float] = None
        self.published_ids: dict[str, str] = {}  # kind -> track id
        self.subscriber_offers = 0
        self.answer_extmaps: list[list[str]] = []
        self.offer_sections: list[list[dict[str, Any]]] = []
        self.offer_sdps: list[str] = []
        self._closing = False
        # Set to end `run` before its duration.
        self.stopping = asyncio.Event()

    # ---------------------------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def event(self, what: str, **kw: Any) -> None:
        entry = {"t": self.now(), "event": what, **kw}
        self.events.append(entry)
        log.debug("[%s] %s %s", self.label, what, kw)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def run(self, duration: float) -> None:
        """Joins, takes part for `duration` seconds from the join, then leaves."""
        async with websockets.connect(self.url, max_size=None) as ws:
            self.ws = ws
            await self.send({"type": "join", "room": self.room, "name": self.name})
            self.event("join_sent")
            reader = asyncio.ensure_future(self._read_loop())
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({reader, stop}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            self._closing = True
            try:
                await self.send({"type": "leave"})
            except Exception:
                pass
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass
        await self.close()

    async def close(self) -> None:
        for task in self.consumers:
            task.cancel()
        for track in self.tracks_out:
            track.stop()
        for pc in (self.pub, self.sub):
            if pc is not None:
                await pc.close()

    async def _read_loop(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            try:
                await self._handle(msg)
            except Exception as exc:  # a failure here is a test failure, reported
                log.exception("[%s] handling %s", self.label, msg.get("type"))
                self.errors.append({"t": self.now(), "while": msg.get("type"), "error": repr(exc)})

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "joined":
            self.joined_at = time.monotonic()
            self.id = msg["participant"]["id"]
            self.names[self.id] = self.name
            for p in msg.get("participants", []):
                self.names[p["id"]] = p["name"]
            self.event("joined", id=self.id, others=[p["name"] for p in msg.get("participants", [])])
            if self.publish:
                await self._publish()
        elif kind == "participant_joined":
            p = msg["participant"]
            self.names[p["id"]] = p["name"]
            self.event("participant_joined", name=p["name"])
        elif kind == "participant_left":
            self.event("participant_left", id=msg.get("participant_id"))
        elif kind == "offer" and msg.get("pc") == "subscriber":
            await self._on_subscriber_offer(msg["sdp"])
        elif kind == "answer" and msg.get("pc") == "publisher":
            assert self.pub is not None, "publisher answer without a publisher PC"
            LABEL.set(f"{self.name}/pub")
            await self.pub.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="answer"))
            self.event("publisher_answer_applied")
            await self._flush_candidates("publisher")
        elif kind == "candidate":
            pc_kind = msg.get("pc")
            cand = msg.get("candidate")
            self.event(
                "candidate_received",
                pc=pc_kind,
                sdpMid=(cand or {}).get("sdpMid"),
                end=cand is None,
            )
            self.pending_candidates.setdefault(pc_kind, []).append(msg.get("candidate"))
            await self._flush_candidates(pc_kind)
        elif kind in ("track_published", "track_unpublished", "track_muted"):
            self.event(kind, **{k: v for k, v in msg.items() if k != "type"})
        elif kind == "error":
            self.errors.append({"t": self.now(), **msg})
            self.event("error", **msg)
        elif kind == "pong":
            pass
        else:
            self.event("unhandled", type=kind)

    def _configuration(self) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=[], bundlePolicy=RTCBundlePolicy(self.bundle_policy)
        )

    def send_chat(self, phase: str) -> None:
        """Sends one chat message that names its sender and phase; when it went is kept, so the
        test can say how long it took to reach each receiver (one clock, one process)."""
        if self.chat_channel is None or self.chat_channel.readyState != "open":
            self.errors.append({"t": self.now(), "while": f"chat {phase}", "error": "channel not open"})
            return
        text = f"héllo from {self.name} ({phase})"
        self.chat_sent.append({"text": text, "t": time.monotonic(), "phase": phase})
        self.chat_channel.send(json.dumps({"text": text}))

    # --- publisher ---------------------------------------------------------------------------

    async def _publish(self) -> None:
        LABEL.set(f"{self.name}/pub")
        sig = self.index % len(TONES)
        audio = ToneTrack(TONES[sig])
        video = ColourTrack(COLOURS[sig])
        self.tracks_out = [audio, video]
        self.published_ids = {"audio": audio.id, "video": video.id}
        self.pub = RTCPeerConnection(self._configuration())
        self.pub.addTransceiver(audio, direction="sendonly")
        self.pub.addTransceiver(video, direction="sendonly")
        offer = await self.pub.createOffer()
        await self.pub.setLocalDescription(offer)
        await self.send(
            {"type": "offer", "pc": "publisher", "sdp": strip_candidates(self.pub.localDescription.sdp)}
        )
        self.event("publisher_offer_sent")
        for cand in local_candidates(self.pub):
            await self.send({"type": "candidate", "pc": "publisher", "candidate": cand})
        await self.send({"type": "candidate", "pc": "publisher", "candidate": None})

    # --- subscriber --------------------------------------------------------------------------

    async def _on_subscriber_offer(self, sdp: str) -> None:
        LABEL.set(f"{self.name}/sub")
        self.subscriber_offers += 1
        sections = parse_media_sections(sdp)
        self.offer_sections.append(sections)
        self.offer_sdps.append(sdp)
        self.event(
            "subscriber_offer",
            n=self.subscriber_offers,
            bundle=[l[len("a=group:"):] for l in sdp.splitlines() if l.startswith("a=group:")],
            mlines=[
                {
                    "mid": s["mid"],
                    "kind": s["kind"],
                    "dir": s["direction"],
                    "msid": s["msid"],
                    "ssrcs": s["ssrcs"],
                }
                for s in sections
            ],
        )
        if self.sub is None:
            self.sub = RTCPeerConnection(self._configuration())

            @self.sub.on("datachannel")
            def on_datachannel(channel: Any) -> None:
                if channel.label != "chat":
                    return
                self.chat_channel = channel
                if channel.readyState == "open":
                    self.chat_open_at = time.monotonic()
                else:
                    channel.on("open", lambda: setattr(self, "chat_open_at", time.monotonic()))

                @channel.on("message")
                def on_message(message: Any) -> None:
                    at = time.monotonic()
                    try:
                        self.chat_received.append((at, json.loads(message)))
                    except Exception:
                        self.chat_received.append((at, {"raw": str(message)}))

                def say_hello() -> None:
                    self.send_chat("open")

                if channel.readyState == "open":
                    say_hello()
                else:
                    channel.on("open", say_hello)

        await self.sub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await self.sub.createAnswer()
        await self.sub.setLocalDescription(answer)
        local = self.sub.localDescription.sdp
        self.answer_extmaps.append(
            [e for s in parse_media_sections(local) for e in s["extmap"]]
        )
        await self.send({"type": "answer", "pc": "subscriber", "sdp": strip_candidates(local)})
        self.event("subscriber_answer_sent", n=self.subscriber_offers)
        if not self.sub_candidates_sent:
            self.sub_candidates_sent = True
            for cand in local_candidates(self.sub):
                await self.send({"type": "candidate", "pc": "subscriber", "candidate": cand})
            await self.send({"type": "candidate", "pc": "subscriber", "candidate": None})
        await self._flush_candidates("subscriber")
        self._start_consumers(sections)

    def _start_consumers(self, sections: list[dict[str, Any]]) -> None:
        """Attributes every m-line the server sends on to the publisher its msid names, and
        reads each receiver's track. An m-line the server reuses for another track (new msid)
        starts a new attribution on the same receiver; one it stops sending on ends it."""
        by_mid = {s["mid"]: s for s in sections}
        for transceiver in self.sub.getTransceivers():
            mid = transceiver.mid
            section = by_mid.get(mid)
            track = transceiver.receiver.track
            if section is None or track is None:
                continue
            current = self.current.get(mid)
            sending = section["port"] != 0 and section["direction"] in ("sendonly", "sendrecv")
            if not sending:
                if current is not None:
                    current.ended = "m-line no longer sending"
                    self.current[mid] = None
                continue
            stream_id, track_id = section["msid"] or (None, None)
            if current is not None and (current.publisher_id, current.track_id) == (
                stream_id or "?",
                track_id or "?",
            ):
                continue
            if current is not None:
                current.ended = "m-line reused for another track"
            stats = RemoteTrackStats(
                mid=mid,
                kind=section["kind"],
                publisher_id=stream_id or "?",
                track_id=track_id or "?",
            )
            self.remote.append(stats)
            self.current[mid] = stats
            if mid not in self.reading:
                self.reading.add(mid)
                self.consumers.append(asyncio.ensure_future(self._consume(mid, track)))

    async def _consume(self, mid: str, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append({"t": self.now(), "while": f"reading mid {mid}", "error": repr(exc)})
                return
            stats = self.current.get(mid)
            if stats is None:
                self.unattributed[mid] = self.unattributed.get(mid, 0) + 1
                continue
            now = self.now()
            if stats.first_frame_s is None:
                stats.first_frame_s = now
            stats.last_frame_s = now
            stats.frames += 1
            expected = signature_index(self.names.get(stats.publisher_id, ""))
            if stats.kind == "audio":
                freq, rms = dominant_frequency(frame)
                if rms < SILENCE_RMS:
                    stats.silent += 1
                    continue
                observed: Any = round(freq)
                ok = expected is not None and abs(freq - TONES[expected]) <= TONE_TOLERANCE_HZ
            else:
                colour = mean_colour(frame)
                observed = [round(c) for c in colour]
                ok = expected is not None and (
                    float(np.linalg.norm(np.array(colour) - np.array(COLOURS[expected])))
                    <= COLOUR_TOLERANCE
                )
            if ok:
                stats.matched += 1
            else:
                stats.mismatched += 1
            if len(stats.samples) < 3 or (not ok and len(stats.samples) < 6):
                stats.samples.append(observed)

    # --- candidates --------------------------------------------------------------------------

    async def _flush_candidates(self, pc_kind: str) -> None:
        pc = self.pub if pc_kind == "publisher" else self.sub
        if pc is None or pc.remoteDescription is None:
            return  # kept until the PC has a remote description
        LABEL.set(f"{self.name}/{'pub' if pc_kind == 'publisher' else 'sub'}")
        queue = self.pending_candidates.get(pc_kind, [])
        self.pending_candidates[pc_kind] = []
        for init in queue:
            await pc.addIceCandidate(to_aiortc_candidate(pc, init))

    # --- report ------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        per_publisher: dict[str, Any] = {}
        for stats in self.remote:
            name = self.names.get(stats.publisher_id, stats.publisher_id)
            entry = per_publisher.setdefault(name, {"id": stats.publisher_id, "audio": [], "video": []})
            entry[stats.kind].append(stats.to_json())
        return {
            "name": self.name,
            "id": self.id,
            "published": self.published_ids,
            "subscriber_offers": self.subscriber_offers,
            "from": per_publisher,
            "unattributed_frames": self.unattributed,
            "answer_extmaps": self.answer_extmaps[-1] if self.answer_extmaps else [],
            "chat_received": [
                {"from": (c.get("from") or {}).get("name"), "text": c.get("text")}
                for _, c in self.chat_received
            ],
            "errors": self.errors,
            "events": self.events,
            "subscriber_transceivers": describe_transceivers(self.sub),
            "subscriber_offer_sdps": self.offer_sdps,
        }


def describe_transceivers(pc: Optional[RTCPeerConnection]) -> list[dict[str, Any]]:
    """aiortc's own view of each transceiver: negotiated direction, whether its receiver was
    started (RTCRtpReceiver.receive ran), and the state of its DTLS transport."""
    if pc is None:
        return []
    out = []
    for t in pc.getTransceivers():
        receiver = t.receiver
        out.append(
            {
                "mid": t.mid,
                "kind": t.kind,
                "direction": t.direction,
                "currentDirection": t.currentDirection,
                "receiver_started": bool(getattr(receiver, "_RTCRtpReceiver__started", False)),
                "transport": hex(id(receiver.transport)),
                "transport_state": receiver.transport.state,
            }
        )
    return out


def to_aiortc_candidate(pc: RTCPeerConnection, init: Optional[dict[str, Any]]):
    """A protocol candidate (RTCIceCandidateInit, or null) as aiortc takes it."""
    if init is None or not init.get("candidate"):
        return None  # end of candidates
    text = init["candidate"]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    cand = candidate_from_sdp(text)
    # aiortc applies a candidate only to the transport of the m-line it names, and ignores
    # it for a bundled (non-primary) m-line. Everything here is bundled on the first m-line.
    sections = parse_media_sections(pc.remoteDescription.sdp)
    primary = sections[0]["mid"] if sections else init.get("sdpMid")
    cand.sdpMid = primary
    cand.sdpMLineIndex = 0
    return cand


__all__ = [
    "Participant",
    "TONES",
    "COLOURS",
    "signature_index",
]
