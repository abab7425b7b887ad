#!/usr/bin/env python3
"""Offline check of how aiortc (default bundlePolicy "balanced") takes a sequence of
subscriber offers: which transceivers end up on the BUNDLE transport, and which are left on a
transport that was discarded (their receivers never start and their RTP is routed elsewhere).

No server is needed: the offers are built from a template of the server's SDP.

    python bundle_check.py            # prints one line per scenario, exits 1 if an
                                      # "expected ok" scenario is broken

The cause, in aiortc 1.16 (rtcpeerconnection.py):
- __createTransceiver, bundlePolicy BALANCED: a new transceiver takes the DTLS transport of
  the first existing transceiver *of the same kind* and is marked `_bundled = True`;
- setRemoteDescription then moves to the BUNDLE transport only the transceivers with
  `_bundled == False`, and stops the transports it replaced.
So when one offer creates two or more transceivers of a kind that has no transceiver yet, and
the first of them is not the BUNDLE-tagged m-line, the second and later ones keep the first
one's original transport, which is then stopped. They never start (__connect skips a
transport with no local candidates); their SSRCs are unknown to the BUNDLE transport's
RtpRouter, which hands them by payload type to the one started receiver of that kind.
"""

from __future__ import annotations

import asyncio
import sys

import aioice.ice
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

SESSION = """v=0
o=- 1 {version} IN IP4 0.0.0.0
s=-
t=0 0
a=fingerprint:sha-256 EE:1A:89:02:4D:11:0D:E0:66:8E:17:8D:C9:8A:9C:7B:CE:94:AB:B4:46:E9:D1:50:DA:E2:D1:46:E6:F3:55:15
a=extmap-allow-mixed
a=group:BUNDLE {bundle}
"""

ICE = """a=ice-ufrag:IJmVffTdIDlMdQJM
a=ice-pwd:wziHcIOHQVMPqhdVpCGacACsIXFEqZqj
"""

AUDIO = """m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=setup:actpass
a=mid:{mid}
{ice}a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=msid:pub{n} audio{n}
a=ssrc:{ssrc} cname:pub{n}
a=sendonly
"""

VIDEO = """m=video 9 UDP/TLS/RTP/SAVPF 96
c=IN IP4 0.0.0.0
a=setup:actpass
a=mid:{mid}
{ice}a=rtcp-mux
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 nack pli
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=msid:pub{n} video{n}
a=ssrc:{ssrc} cname:pub{n}
a=sendonly
"""

APP = """m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=setup:actpass
a=mid:{mid}
{ice}a=sctp-port:5000
a=max-message-size:65536
"""


def offer(mlines: list[tuple[str, str, int]], version: int) -> str:
    """mlines: (kind, mid, publisher number) in m-line order."""
    body = ""
    for kind, mid, n in mlines:
        template = {"audio": AUDIO, "video": VIDEO, "application": APP}[kind]
        ssrc = 1000 + 10 * n + (1 if kind == "video" else 0)
        body += template.format(mid=mid, n=n, ssrc=ssrc, ice=ICE)
    head = SESSION.format(version=version, bundle=" ".join(m for _, m, _ in mlines))
    return (head + body).replace("\n", "\r\n")


async def negotiate(offers: list[list[tuple[str, str, int]]], policy: str) -> list[str]:
    """Applies each offer in turn (setRemoteDescription, createAnswer, setLocalDescription);
    returns the mids whose transceiver is not on the BUNDLE transport at the end."""
    pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy(policy)))
    try:
        for version, mlines in enumerate(offers, start=1):
            await pc.setRemoteDescription(RTCSessionDescription(offer(mlines, version), "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        primary_mid = offers[-1][0][1]
        transceivers = pc.getTransceivers()
        primary = next(
            (t.receiver.transport for t in transceivers if t.mid == primary_mid),
            pc.sctp.transport if pc.sctp else None,
        )
        return [t.mid for t in transceivers if t.receiver.transport is not primary]
    finally:
        await pc.close()


A, V, D = "audio", "video", "application"

# (name, offers, broken expected with balanced)
SCENARIOS = [
    (
        "third joiner, one offer: A V A V D (what the server does today)",
        [[(A, "0", 1), (V, "1", 1), (A, "2", 2), (V, "3", 2), (D, "4", 0)]],
        True,
    ),
    (
        "third joiner, one offer: V A V A D",
        [[(V, "0", 1), (A, "1", 1), (V, "2", 2), (A, "3", 2), (D, "4", 0)]],
        True,
    ),
    (
        "third joiner, first of each kind alone, then the rest",
        [
            [(A, "0", 1), (V, "1", 1), (D, "2", 0)],
            [(A, "0", 1), (V, "1", 1), (D, "2", 0), (A, "3", 2), (V, "4", 2)],
        ],
        False,
    ),
    (
        "first joiner (chat only), then two publishers' tracks in one offer",
        [
            [(D, "0", 0)],
            [(D, "0", 0), (A, "1", 1), (V, "2", 1), (A, "3", 2), (V, "4", 2)],
        ],
        True,
    ),
    (
        "first joiner (chat only), then one of each kind, then the rest",
        [
            [(D, "0", 0)],
            [(D, "0", 0), (A, "1", 1), (V, "2", 1)],
            [(D, "0", 0), (A, "1", 1), (V, "2", 1), (A, "3", 2), (V, "4", 2)],
        ],
        False,
    ),
    (
        "two publishers' tracks one at a time (what the first two participants get)",
        [
            [(D, "0", 0)],
            [(D, "0", 0), (A, "1", 1)],
            [(D, "0", 0), (A, "1", 1), (V, "2", 1)],
            [(D, "0", 0), (A, "1", 1), (V, "2", 1), (A, "3", 2), (V, "4", 2)],
        ],
        False,
    ),
]


async def main() -> int:
    status = 0
    for policy in ("balanced", "max-bundle", "max-compat"):
        for name, offers, broken_expected in SCENARIOS:
            off = await negotiate(offers, policy)
            expected = broken_expected and policy == "balanced"
            verdict = "as expected" if bool(off) == expected else "UNEXPECTED"
            if verdict == "UNEXPECTED":
                status = 1
            what = f"off the BUNDLE transport: mids {off}" if off else "all on the BUNDLE transport"
            print(f"[{policy:10}] {name}: {what} ({verdict})")
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
