"""Peer: the ``websockets`` library (asyncio API) with ``websockets.broadcast``.

On uvloop, compression off (as aiosrv's default). Each published message is
serialised once and handed to ``websockets.broadcast(clients, text)``, which
writes it to every open connection without waiting (and, by its design, has
no backpressure: a slow client's buffer grows).

    .venv/bin/python bench/peers/websockets_broadcast.py --port 18765
"""

from __future__ import annotations

import asyncio
import json

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection, serve

from _common import ack, args, data_message

clients: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    try:
        async for text in ws:
            req = json.loads(text)
            action = req.get("action")
            if action == "subscribe":
                clients.add(ws)
                await ws.send(json.dumps(ack(req, {"types": req["payload"]["types"]})))
            elif action == "publish":
                m = data_message(req["payload"])
                websockets.broadcast(clients, json.dumps(m))
                await ws.send(json.dumps(ack(req, {"seq": m["seq"]})))
    finally:
        clients.discard(ws)


async def main() -> None:
    a = args()
    async with serve(handler, a.host, a.port, compression=None, ping_interval=None,
                     max_size=1 << 20, backlog=4096):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
