"""A peer for bench/: the ``websockets`` library with ``websockets.broadcast``.

WebSocket subscribers on ``--port`` (any path; any text frame subscribes);
``POST /api/publish`` with a list of messages on ``--api-port`` (aiohttp, in
the same loop) broadcasts each with ``websockets.broadcast``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop
import websockets
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

clients: set[ServerConnection] = set()
seqs: dict[str, int] = {}


async def handler(ws: ServerConnection) -> None:
    try:
        async for _ in ws:
            clients.add(ws)
    finally:
        clients.discard(ws)


async def publish(request: web.Request) -> web.Response:
    body = await request.json()
    items = body if isinstance(body, list) else [body]
    out = []
    for item in items:
        t = item["type"]
        seqs[t] = seqs.get(t, 0) + 1
        m = {"id": f"{t}:{seqs[t]}", "type": t, "timestamp": int(time.time() * 1000),
             "seq": seqs[t], "payload": item["payload"]}
        websockets.broadcast(clients, json.dumps(m))
        out.append(seqs[t])
    return web.json_response({"seq": out}, status=202)


async def run(port: int, api_port: int) -> None:
    app = web.Application()
    app.add_routes([web.post("/api/publish", publish)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    async with serve(handler, "127.0.0.1", port, ping_interval=None, compression=None,
                     backlog=4096):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--api-port", type=int, default=18080)
    a = ap.parse_args()
    uvloop.run(run(a.port, a.api_port))
