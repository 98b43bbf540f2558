"""Peer: uWebSockets (C++) through ``socketify`` (PyPI), the near-limit reference.

socketify ships uWebSockets and uSockets compiled (``libsocketify_linux_amd64.so``,
linked against the system's libuv), driven from Python through CFFI. Only the
publisher's message is handled in Python (one ``orjson`` parse and dump); the
fan-out is uWebSockets' own pub/sub (``App.publish`` to a topic): framing and
the write to every subscriber run in C++. uWebSockets.js (its Node binding)
is not on npm in a build this machine's glibc loads, so this stands in for it.

Backpressure: uWebSockets skips a subscriber whose buffered bytes pass
``max_backpressure``; it is set to 1 MiB, aiosrv's default send-buffer limit,
so a skip would show as loss in the benchmark.

    .venv/bin/python bench/peers/socketify_server.py --port 18765
"""

from __future__ import annotations

from typing import Any

import orjson
from socketify import App, CompressOptions, OpCode

from _common import ack, args, data_message

TOPIC = "bench"


def main() -> None:
    a = args()
    app = App(lifespan=False)

    def on_message(ws: Any, message: Any, opcode: Any) -> None:
        if opcode != OpCode.TEXT:
            return
        req = orjson.loads(message)
        action = req.get("action")
        if action == "subscribe":
            ws.subscribe(TOPIC)
            ws.send(orjson.dumps(ack(req, {"types": req["payload"]["types"]})), OpCode.TEXT)
        elif action == "publish":
            m = data_message(req["payload"])
            app.publish(TOPIC, orjson.dumps(m), OpCode.TEXT)
            ws.send(orjson.dumps(ack(req, {"seq": m["seq"]})), OpCode.TEXT)

    app.ws(
        "/*",
        {
            "compression": CompressOptions.DISABLED,
            "max_payload_length": 16 * 1024 * 1024,
            "idle_timeout": 0,
            "max_backpressure": 1024 * 1024,
            "close_on_backpressure_limit": False,
            "send_pings_automatically": False,
            "message": on_message,
        },
    )
    app.listen({"port": a.port, "host": a.host}, lambda config: print("ready", flush=True))
    app.run()


if __name__ == "__main__":
    main()
