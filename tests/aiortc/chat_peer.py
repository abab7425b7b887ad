#!/usr/bin/env python3
"""One aiortc participant driven over its standard streams, for the browser tests.

    python chat_peer.py ws://127.0.0.1:PORT/ws ROOM INDEX

It joins ROOM as `p<INDEX>` and publishes its tone and colour (participant.py), like any other
participant. On stdout, one JSON object per line, with wall-clock times in milliseconds (the
browser page on the same machine uses the same clock):

    {"event": "joined", "id": ...}
    {"event": "chat_open"}
    {"event": "chat", "t_ms": ..., "message": {...as received...}}
    {"event": "sent", "t_ms": ..., "text": ...}
    {"event": "decoded", "from": NAME, "audio": N, "video": N}   (every second)

On stdin it takes `{"say": "text"}` (sends it on the chat channel) and `{"quit": true}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import three_party  # noqa: E402
from participant import Participant  # noqa: E402


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wall_ms(monotonic: float) -> float:
    """A time.monotonic() instant on the wall clock, in milliseconds."""
    return (time.time() - (time.monotonic() - monotonic)) * 1000


async def main(url: str, room: str, index: int) -> None:
    three_party.loopback_ice_only()
    p = Participant(url, room, index)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {"quit": True})

    threading.Thread(target=read_stdin, daemon=True).start()
    session = asyncio.ensure_future(p.run(duration=3600))

    async def report() -> None:
        announced_join = announced_open = False
        reported_chats = 0
        last_decoded = 0.0
        while True:
            if p.id and not announced_join:
                announced_join = True
                emit("joined", id=p.id)
            if p.chat_open_at and not announced_open:
                announced_open = True
                emit("chat_open")
            for at, message in p.chat_received[reported_chats:]:
                emit("chat", t_ms=wall_ms(at), message=message)
            reported_chats = len(p.chat_received)
            if time.monotonic() - last_decoded >= 1.0:
                last_decoded = time.monotonic()
                for publisher_id in {s.publisher_id for s in p.remote}:
                    tracks = [s for s in p.remote if s.publisher_id == publisher_id]
                    emit(
                        "decoded",
                        **{"from": p.names.get(publisher_id, publisher_id)},
                        audio=sum(s.frames - s.silent for s in tracks if s.kind == "audio"),
                        video=sum(s.frames for s in tracks if s.kind == "video"),
                    )
            if p.errors:
                emit("errors", errors=p.errors)
                p.errors = []
            await asyncio.sleep(0.005)

    reporter = asyncio.ensure_future(report())
    while True:
        command = await commands.get()
        if command.get("quit"):
            break
        if "say" in command:
            text = command["say"]
            p.chat_channel.send(json.dumps({"text": text}))
            emit("sent", t_ms=time.time() * 1000, text=text)
    reporter.cancel()
    p.stopping.set()
    await session


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
