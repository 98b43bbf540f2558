"""The obvious aiohttp server a user would write instead of aiosrv (a peer for bench/).

Subscribers connect on ``/ws/realtime`` and send any subscribe frame; every
message POSTed to ``/api/publish`` (a list, as bench/publisher.py sends) is
serialised and sent to every client in turn:
``for ws in clients: await ws.send_str(json.dumps(m))``.

    python bench/peers/aiohttp_naive.py --port 18765 --api-port 18080
"""

from __future__ import annotations

import argparse
import json
import time

import uvloop
from aiohttp import WSMsgType, web

clients: set[web.WebSocketResponse] = set()
seqs: dict[str, int] = {}


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            clients.add(ws)
    clients.discard(ws)
    return ws


async def publish(request: web.Request) -> web.Response:
    body = await request.json()
    items = body if isinstance(body, list) else [body]
    out = []
    for item in items:
        t = item["type"]
        seqs[t] = seqs.get(t, 0) + 1
        m = {"id": f"{t}:{seqs[t]}", "type": t, "timestamp": int(time.time() * 1000),
             "seq": seqs[t], "payload": item["payload"]}
        for ws in list(clients):
            await ws.send_str(json.dumps(m))
        out.append(seqs[t])
    return web.json_response({"seq": out}, status=202)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--api-port", type=int, default=18080)
    args = ap.parse_args()
    ws_app = web.Application()
    ws_app.add_routes([web.get("/ws/realtime", ws_handler)])
    api_app = web.Application()
    api_app.add_routes([web.post("/api/publish", publish)])

    async def run() -> None:
        runners = []
        for app, port in ((ws_app, args.port), (api_app, args.api_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
            runners.append(runner)
        print("ready", flush=True)
        while True:
            await __import__("asyncio").sleep(3600)

    uvloop.run(run())


if __name__ == "__main__":
    main()
