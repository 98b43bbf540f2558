"""Nothing a client sent is lost when its input ends.

Every frame before a close frame (or before a framing error, or before the
client closes its side of the TCP connection) is handled, in order, before the
connection ends, including the actions that wait on the broker (publish,
recovery, history). Each test sends the frames in one write, so they arrive in
one read: the close frame sits right behind the publish in the same buffer.
"""

from __future__ import annotations

import asyncio

from tests.conftest import Running, StartServer
from tests.server.conftest import (
    Client,
    RawClient,
    RawConnect,
    WsConnect,
    client_frame,
    close_frame,
    json_frame,
    wait_until,
)


async def watched(
    running_server: StartServer, ws_client: WsConnect, raw_client: RawConnect
) -> tuple[Running, Client, RawClient]:
    """A server that takes publishes from clients, a watcher subscribed to
    ``t``, and a raw client to publish with."""
    running = await running_server(websocket__allow_client_publish=True)
    watcher = await ws_client(running)
    await watcher.subscribe(["t"])
    return running, watcher, await raw_client(running)


def publish(i: int, type_: str = "t") -> bytes:
    return json_frame(
        {"id": f"p{i}", "action": "publish", "payload": {"type": type_, "payload": {"i": i}}}
    )


async def test_publish_then_close_in_one_write_loses_nothing(
    running_server: StartServer, ws_client: WsConnect, raw_client: RawConnect
) -> None:
    running = await running_server(websocket__allow_client_publish=True)
    watcher = await ws_client(running)
    await watcher.subscribe(["t"])
    publishers = [await raw_client(running) for _ in range(20)]
    for i, raw in enumerate(publishers):
        raw.send_bytes(publish(i) + close_frame(1000, "done"))
    for i, raw in enumerate(publishers):
        ack = await raw.read_json()
        assert (ack["type"], ack["id"], ack["payload"]["action"]) == ("ack", f"p{i}", "publish")
        assert await raw.read_close() == (1000, "")  # the echo of its code, after the ack
        assert await raw.at_eof()
    got = sorted([(await watcher.recv())["payload"]["i"] for _ in range(20)])
    assert got == list(range(20))
    await wait_until(lambda: not running.server.connections.keys() - {_only(running)})


def _only(running) -> str:  # the watcher's connection id
    (cid,) = [c.id for c in running.server.connections.values()]
    return cid


async def test_many_requests_then_close_are_answered_in_order(
    running_server: StartServer, ws_client: WsConnect, raw_client: RawConnect
) -> None:
    running = await running_server(websocket__allow_client_publish=True, history__size=200)
    watcher = await ws_client(running)
    await watcher.subscribe(["t"])
    raw = await raw_client(running)
    frames = b"".join(publish(i) for i in range(100))
    frames += json_frame({"id": "h", "action": "history", "payload": {"type": "t", "limit": 200}})
    frames += json_frame({"id": "ping", "action": "ping"})
    raw.send_bytes(frames + close_frame(1001))
    for i in range(100):
        ack = await raw.read_json()
        assert ack["id"] == f"p{i}" and ack["payload"]["seq"] == i + 1
    history = await raw.read_json()
    assert history["id"] == "h"
    assert [m["payload"]["i"] for m in history["payload"]["messages"]] == list(range(100))
    assert (await raw.read_json())["type"] == "pong"
    assert (await raw.read_close())[0] == 1001
    assert [(await watcher.recv())["payload"]["i"] for _ in range(100)] == list(range(100))


async def test_recovery_then_close_in_one_write_recovers(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    for i in range(5):
        await running.server.publish("t", {"i": i})
    raw = await raw_client(running)
    raw.send_bytes(
        json_frame(
            {"id": "s", "action": "subscribe", "payload": {"types": ["t"], "since": {"t": 2}}}
        )
        + close_frame()
    )
    ack = await raw.read_json()
    assert ack["id"] == "s" and ack["payload"]["recovered"] == {"t": True}
    assert [(await raw.read_json())["seq"] for _ in range(3)] == [3, 4, 5]
    assert (await raw.read_close())[0] == 1000


async def test_publish_then_fin_without_a_close_frame_is_answered(
    running_server: StartServer, ws_client: WsConnect, raw_client: RawConnect
) -> None:
    running, watcher, raw = await watched(running_server, ws_client, raw_client)
    raw.send_bytes(publish(7))
    raw.writer.write_eof()  # FIN right behind the publish
    ack = await raw.read_json()
    assert ack["id"] == "p7"
    assert (await raw.read_close())[0] == 1000
    assert await raw.at_eof()
    assert (await watcher.recv())["payload"] == {"i": 7}
    await wait_until(lambda: len(running.server.connections) == 1, what="the publisher to go")
    assert not running.server.closing_connections or all(
        c.transport.is_closing() for c in running.server.closing_connections
    )


async def test_a_framing_error_after_a_publish_fails_after_answering_it(
    running_server: StartServer, ws_client: WsConnect, raw_client: RawConnect
) -> None:
    _, watcher, raw = await watched(running_server, ws_client, raw_client)
    # an unmasked frame is a protocol error (1002), right behind the publish
    raw.send_bytes(publish(1) + client_frame(b"{}", mask=False) + publish(2))
    ack = await raw.read_json()
    assert ack["id"] == "p1"
    code, reason = await raw.read_close()
    assert code == 1002 and "masked" in reason
    assert (await watcher.recv())["payload"] == {"i": 1}
    await watcher.expect_nothing(0.2)  # nothing after the error was handled


async def test_a_request_stuck_in_the_broker_does_not_hold_the_socket_forever(
    running_server: StartServer, raw_client: RawConnect, monkeypatch
) -> None:
    from aiosrv import session

    monkeypatch.setattr(session, "CLOSE_TIMEOUT", 0.2)
    running = await running_server(websocket__allow_client_publish=True)
    stuck = asyncio.Event()

    async def never(*args, **kwargs):
        await stuck.wait()

    monkeypatch.setattr(running.server.hub, "publish", never)
    raw = await raw_client(running)
    raw.send_bytes(publish(1) + close_frame(1000))
    assert (await raw.read_close(timeout=2.0))[0] == 1000
    assert await raw.at_eof(timeout=2.0)
    await wait_until(lambda: not running.server.connections, what="the client to go")
