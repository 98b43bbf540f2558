"""Peer: ``picows`` (Cython WebSocket library for asyncio), on uvloop.

Subscribers' transports kept in a set; each published message is serialised
once (orjson) and sent with ``transport.send(TEXT, data)`` to each, the way
picows' own examples broadcast.

    .venv/bin/python bench/peers/picows_server.py --port 18765
"""

from __future__ import annotations

import asyncio

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from _common import ack, args, data_message

clients: set[WSTransport] = set()


class Listener(WSListener):
    transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            clients.discard(transport)
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        req = orjson.loads(frame.get_payload_as_bytes())
        action = req.get("action")
        if action == "subscribe":
            clients.add(transport)
            transport.send(WSMsgType.TEXT, orjson.dumps(ack(req, {"types": req["payload"]["types"]})))
        elif action == "publish":
            m = data_message(req["payload"])
            data = orjson.dumps(m)
            for t in clients:
                t.send(WSMsgType.TEXT, data)
            transport.send(WSMsgType.TEXT, orjson.dumps(ack(req, {"seq": m["seq"]})))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        clients.discard(transport)


async def main() -> None:
    a = args()

    def factory(request: WSUpgradeRequest) -> WSListener:
        return Listener()

    server = await ws_create_server(factory, a.host, a.port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
