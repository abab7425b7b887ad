"""Optional instrumentation of aiortc's RTP path (three_party.py --trace).

Monkeypatches, without changing behaviour:
- RtpRouter.route_rtp (aiortc/rtcdtlstransport.py): for every SSRC that arrives on a
  transport, when it first arrived, with which payload type, whether the SSRC was already in
  the router's table, which receivers (by mid) were registered for that payload type then,
  and where each packet went (receiver mid, or dropped); whether packets carry the
  sdes:mid / audio-level header extensions;
- RTCRtpReceiver.receive (aiortc/rtcrtpreceiver.py): when each receiver started, for which
  mid, with which SSRCs (from the offer's a=ssrc lines) and payload types;
- RTCPeerConnection.__connect: when it ran.

Every record names the participant and PC it belongs to through LABEL, a context variable the
participant sets before it creates or negotiates a PC (aiortc's tasks inherit it).
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from aiortc import rtcdtlstransport, rtcpeerconnection, rtcrtpreceiver

LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("switchboard_pc", default="?")

_t0 = time.monotonic()
_receivers: dict[int, dict[str, Any]] = {}  # id(receiver) -> {label, mid, ...}
_routes: dict[tuple[int, int], dict[str, Any]] = {}  # (id(router), ssrc) -> record
_router_labels: dict[int, str] = {}
_connects: list[dict[str, Any]] = []
_installed = False


def _now() -> float:
    return round(time.monotonic() - _t0, 3)


def _mid_of(receiver: Any) -> Any:
    r = _receivers.get(id(receiver))
    return r["mid"] if r else None


def install(t0: float) -> None:
    global _installed, _t0
    _t0 = t0
    if _installed:
        return
    _installed = True

    Router = rtcdtlstransport.RtpRouter
    orig_init = Router.__init__
    orig_route = Router.route_rtp

    def router_init(self: Any) -> None:
        orig_init(self)
        _router_labels[id(self)] = LABEL.get()

    def route_rtp(self: Any, packet: Any) -> Any:
        known = packet.ssrc in self.ssrc_table
        pt_receivers = sorted(
            str(_mid_of(r)) for r in self.payload_type_table.get(packet.payload_type, set())
        )
        receiver = orig_route(self, packet)
        key = (id(self), packet.ssrc)
        rec = _routes.get(key)
        if rec is None:
            rec = _routes[key] = {
                "pc": _router_labels.get(id(self), "?"),
                "ssrc": packet.ssrc,
                "payload_type": packet.payload_type,
                "first_at": _now(),
                "ssrc_known_on_arrival": known,
                "receivers_for_pt_on_arrival": pt_receivers,
                "first_routed_to": _mid_of(receiver) if receiver is not None else None,
                "routed": {},
                "dropped": 0,
                "ext_mid": None,
                "ext_audio_level": False,
            }
        if receiver is None:
            rec["dropped"] += 1
        else:
            mid = str(_mid_of(receiver))
            if mid not in rec["routed"]:
                rec["routed"][mid] = {"count": 0, "since": _now()}
            rec["routed"][mid]["count"] += 1
        if packet.extensions.mid is not None:
            rec["ext_mid"] = packet.extensions.mid
        if packet.extensions.audio_level is not None:
            rec["ext_audio_level"] = True
        return receiver

    Router.__init__ = router_init
    Router.route_rtp = route_rtp

    Receiver = rtcrtpreceiver.RTCRtpReceiver
    orig_receive = Receiver.receive

    async def receive(self: Any, parameters: Any) -> None:
        if id(self) not in _receivers:
            _receivers[id(self)] = {
                "pc": LABEL.get(),
                "kind": self._RTCRtpReceiver__kind,
                "mid": parameters.muxId,
                "started_at": _now(),
                "ssrcs": sorted({e.ssrc for e in parameters.encodings}),
                "payload_types": [c.payloadType for c in parameters.codecs],
                "header_extensions": [h.uri for h in parameters.headerExtensions],
            }
        await orig_receive(self, parameters)

    Receiver.receive = receive

    PC = rtcpeerconnection.RTCPeerConnection
    orig_connect = PC._RTCPeerConnection__connect

    async def connect(self: Any) -> None:
        rec = {"pc": LABEL.get(), "at": _now()}
        _connects.append(rec)
        await orig_connect(self)
        rec["done_at"] = _now()

    PC._RTCPeerConnection__connect = connect


def report() -> dict[str, Any]:
    receivers = sorted(_receivers.values(), key=lambda r: (r["pc"], r["started_at"]))
    routes = sorted(_routes.values(), key=lambda r: (r["pc"], r["first_at"]))
    return {
        "receivers_started": receivers,
        "rtp_routing": routes,
        "connect_calls": _connects,
    }
