"""Peer for the HTTP publish path: the least an aiohttp app on uvloop can do per publish.

``POST /api/publish`` reads the body (as any handler must, to keep the
connection usable) and answers ``202`` with ``{"seq": N}``: no JSON parsing,
no history, no fan-out. ``bench/http_publish.py`` measures it beside aiosrv's
own ``POST /api/publish`` with the same client, so the gap between the two is
what aiosrv's publish path costs on top of aiohttp itself.

    .venv/bin/python bench/peers/aiohttp_202.py --port 18080
"""

from __future__ import annotations

import asyncio

import uvloop
from aiohttp import web

from _common import args

seq = 0


async def publish(request: web.Request) -> web.Response:
    global seq
    await request.read()
    seq += 1
    return web.Response(status=202, body=b'{"seq":%d}' % seq, content_type="application/json")


async def main() -> None:
    a = args()
    app = web.Application()
    app.add_routes([web.post("/api/publish", publish)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, a.host, a.port, backlog=4096).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
