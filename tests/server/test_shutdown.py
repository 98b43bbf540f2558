"""Graceful shutdown: queued messages first, then 1001 for everyone; 503 while draining."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import JumpClock, StartServer

from .conftest import RawConnect, WsConnect, get_json, publish, wait_until

#: Not a time limit: how long a shutdown given an hour of grace may take
#: before the test calls it stuck (it must end as soon as its work is done).
WATCHDOG = 10.0


async def test_shutdown_closes_every_client_with_1001(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    clients = [await ws_client(running) for _ in range(3)]
    for c in clients:
        await c.ping()
    # the clients answer the close at once: shutdown does not wait for the grace
    await asyncio.wait_for(running.server.shutdown(grace=3600), WATCHDOG)
    codes = [await c.close_code() for c in clients]
    assert codes == [1001, 1001, 1001]
    assert running.server.connections == {}
    assert running.server.stats.closes[1001] == 3
    for c in clients:
        assert c.ws.close_reason == "server shutting down"


async def test_queued_messages_are_delivered_before_the_close(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    server = running.server
    a = await ws_client(running)
    b = await ws_client(running)
    await a.subscribe(["t"])
    await b.subscribe(["t"], keys={"t": ["even"]})
    for n in range(1, 501):
        await server.publish("t", n, key="even" if n % 2 == 0 else None)
    assert len(server.hub.queue) == 500  # none fanned out yet
    await server.shutdown(grace=3)

    got_a = await a.recv_n(500)
    assert [m["seq"] for m in got_a] == list(range(1, 501))
    assert await a.close_code() == 1001
    got_b = await b.recv_n(250)
    assert [m["payload"] for m in got_b] == list(range(2, 501, 2))
    assert await b.close_code() == 1001


async def test_http_published_just_before_shutdown_is_delivered(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["t"])
    status, _ = await publish(http, running, [{"type": "t", "payload": i} for i in range(50)])
    assert status == 202
    await running.server.shutdown(grace=2)
    assert [m["payload"] for m in await c.recv_n(50)] == list(range(50))
    assert await c.close_code() == 1001


async def test_upgrades_during_draining_get_503(
    running_server: StartServer,
    raw_client: RawConnect,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    clock = JumpClock()
    running = await running_server(clock, websocket__send_buffer_limit=64 * 1024 * 1024)
    server = running.server
    # a client that stops reading with megabytes pending keeps the server
    # draining: its close frame waits behind the data until the grace period ends
    stuck = await raw_client(running)
    stuck.send_json({"action": "subscribe", "payload": {"types": ["big"]}})
    assert (await stuck.read_json())["type"] == "ack"
    blob = "x" * 100_000
    for _ in range(100):
        await server.publish("big", blob)
    await wait_until(lambda: server.core.buffered_bytes_total() > 0, what="a full socket")
    task = asyncio.create_task(server.shutdown(grace=3600))
    try:
        await wait_until(lambda: server.draining, what="draining")
        for _ in range(10):  # the shutdown loop looks every 20 ms: it goes on
            await asyncio.sleep(0.02)
            assert not task.done()
        # its close has begun: no longer open, but its socket is held until the
        # close frame is written or the grace period ends
        assert len(server.connections) == 0
        assert len(server.closing_connections) == 1

        with pytest.raises(InvalidStatus) as info:
            await ws_client(running)
        assert info.value.response.status_code == 503
        assert orjson.loads(info.value.response.body)["error"]["code"] == "draining"
        assert server.stats.rejected["draining"] == 1

        status, health = await get_json(http, running, "/health")
        assert status == 503
        assert health["status"] == "unhealthy"
        assert health["checks"]["draining"] is True
        status, st = await get_json(http, running, "/status")
        assert st["status"] == "draining"
        # the grace period bounds the wait; then the socket is dropped
        clock.jump(3600)
        await asyncio.wait_for(task, WATCHDOG)
    finally:
        await task
    assert await stuck.at_eof(timeout=2)
    await wait_until(lambda: not server.closing_connections, what="the socket to go")


async def test_client_not_answering_the_close_does_not_hold_shutdown(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    silent = await raw_client(running)
    silent.send_json({"action": "ping"})
    await silent.read_json()
    # the close frame is written: shutdown does not wait for the client's answer
    await asyncio.wait_for(running.server.shutdown(grace=3600), WATCHDOG)
    code, reason = await silent.read_close()
    assert (code, reason) == (1001, "server shutting down")
    assert await silent.at_eof(timeout=2)


async def test_closing_the_test_server_closes_clients_with_1001(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    a = await ws_client(running)
    b = await ws_client(running)
    await a.subscribe(["t"])
    await b.ping()
    await running.server.publish("t", "last words")
    await running.test_server.close()
    assert (await a.recv())["payload"] == "last words"
    assert await a.close_code() == 1001
    assert await b.close_code() == 1001
    assert running.server.started is False


async def test_shutdown_with_no_clients_is_quick(running_server: StartServer) -> None:
    running = await running_server()
    await asyncio.wait_for(running.server.shutdown(grace=3600), WATCHDOG)
    assert running.server.started is False


# --------------------------------------------------------------------------- drain window


async def test_drain_window_spreads_the_closes_in_a_random_order(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    window = 2.0
    running = await running_server(shutdown__drain_window=window)
    server = running.server
    clients = [await ws_client(running) for _ in range(20)]
    for c in clients:
        await c.subscribe(["t"])
    loop = asyncio.get_running_loop()
    closed_at: dict[int, float] = {}
    received: dict[int, list[Any]] = {i: [] for i in range(len(clients))}

    async def read(i: int) -> int | None:
        """Everything client ``i`` receives, then when and how it was closed."""
        try:
            async for raw in clients[i].ws:
                received[i].append(orjson.loads(raw)["payload"])
        finally:
            closed_at[i] = loop.time()
        return clients[i].ws.close_code

    readers = [asyncio.create_task(read(i)) for i in range(len(clients))]
    start = loop.time()
    task = asyncio.create_task(server.shutdown(grace=3600))
    # halfway through, the clients not yet closed still receive what is published
    await asyncio.sleep(window / 2)
    open_then = [i for i in range(len(clients)) if i in server_ids_open(server, clients)]
    assert 0 < len(open_then) < len(clients)
    await server.publish("t", "still served")
    await asyncio.wait_for(task, WATCHDOG)
    codes = await asyncio.gather(*readers)
    assert codes == [1001] * len(clients)
    for i in open_then:
        assert received[i] == ["still served"]

    times = sorted(closed_at.values())
    # one close in each of the 20 equal slices of the window: spread, not a burst
    assert times[-1] - times[0] >= window / 2
    assert times[0] - start < window / 2
    order = sorted(closed_at, key=closed_at.__getitem__)
    assert order != list(range(len(clients)))  # not the order they connected in
    assert server.connections == {}
    assert server.stats.closes[1001] == len(clients)


def server_ids_open(server: Any, clients: list[Any]) -> set[int]:
    """Which of ``clients`` (by index) the server still holds open, matched by
    the client's local port."""
    ports = {int(c.peer.rsplit(":", 1)[1]) for c in server.connections.values()}
    return {i for i, c in enumerate(clients) if c.ws.local_address[1] in ports}


async def test_hasten_drain_closes_the_rest_at_once(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    # a window of an hour: without hastening, shutdown would take it
    running = await running_server(shutdown__drain_window=3600, shutdown__grace_period=3600)
    server = running.server
    clients = [await ws_client(running) for _ in range(4)]
    for c in clients:
        await c.ping()
    task = asyncio.create_task(server.shutdown())
    await wait_until(lambda: server.draining, what="draining")
    await asyncio.sleep(0.1)
    assert not task.done()
    server.hasten_drain()
    await asyncio.wait_for(task, WATCHDOG)
    assert [await c.close_code() for c in clients] == [1001] * 4


async def test_drain_window_is_bounded_by_the_grace_period(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    # asked for a longer window than the grace: the closes fit in the grace
    clock = JumpClock()
    running = await running_server(clock)
    server = running.server
    clients = [await ws_client(running) for _ in range(3)]
    for c in clients:
        await c.ping()
    await asyncio.wait_for(server.shutdown(grace=0.5, window=3600), WATCHDOG)
    assert [await c.close_code() for c in clients] == [1001] * 3
