"""Peer: the obvious aiohttp server a user would write instead of aiosrv.

aiohttp on uvloop; subscribers' WebSocketResponse objects kept in a set; each
published message is sent with the loop from the issue, serialising per
client: ``for ws in clients: await ws.send_str(json.dumps(m))``.

    .venv/bin/python bench/peers/aiohttp_naive.py --port 18765
"""

from __future__ import annotations

import json

import uvloop
from aiohttp import WSMsgType, web

from _common import ack, args, data_message

clients: set[web.WebSocketResponse] = set()


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            action = req.get("action")
            if action == "subscribe":
                clients.add(ws)
                await ws.send_str(json.dumps(ack(req, {"types": req["payload"]["types"]})))
            elif action == "publish":
                m = data_message(req["payload"])
                for client in list(clients):
                    await client.send_str(json.dumps(m))
                await ws.send_str(json.dumps(ack(req, {"seq": m["seq"]})))
    finally:
        clients.discard(ws)
    return ws


async def main() -> None:
    a = args()
    app = web.Application()
    app.add_routes([web.get("/{tail:.*}", ws_handler)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, a.host, a.port, backlog=4096).start()
    print("ready", flush=True)
    await __import__("asyncio").Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
