"""Server pings, and the 4000 close of clients that go silent, over real sockets.

When they happen, to the wheel's resolution, is tested on a manual clock in
tests/core/test_heartbeat_timer.py; these tests show the behaviour end to end
and assert no wall-clock limits."""

from __future__ import annotations

import asyncio
import dataclasses

from tests.conftest import StartServer

from .conftest import RawConnect, WsConnect, slow_consumer, wait_until

FAST = {"websocket__heartbeat_interval": 0.2, "websocket__heartbeat_timeout": 0.6}


async def test_server_pings_every_interval(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server(
        websocket__heartbeat_interval=0.2, websocket__heartbeat_timeout=5
    )
    raw = await raw_client(running)
    for _ in range(4):
        opcode, payload = await raw.read_frame(timeout=2)
        assert (opcode, payload) == (0x9, b"")
        raw.send_frame(b"", 0xA)  # pong
    assert running.server.heartbeat.pings_sent >= 4


async def test_client_answering_pings_stays_connected(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(**FAST)
    c = await ws_client(running)  # websockets answers pings by itself
    await c.subscribe(["t"])
    # well past the 0.6 s timeout (a ping every 0.2 s), with no message sent
    await wait_until(lambda: running.server.heartbeat.pings_sent >= 8, what="eight pings")
    await c.ping()
    assert len(running.server.connections) == 1
    assert running.server.stats.heartbeat_timeouts == 0
    assert running.server.heartbeat.pings_sent >= 5


async def test_silent_client_is_closed_with_4000(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server(**FAST)
    server = running.server
    alive = await ws_client(running)
    silent = await raw_client(running)
    pings = 0
    while True:  # never answer
        opcode, payload = await silent.read_frame(timeout=3)
        if opcode == 0x9:
            pings += 1
            continue
        break
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 4000
    assert payload[2:] == b"heartbeat timeout"
    assert pings >= 2
    silent.send_close(4000)
    assert await silent.at_eof()
    await wait_until(lambda: len(server.connections) == 1, what="unregister")
    assert server.stats.heartbeat_timeouts == 1
    assert server.stats.closes[4000] == 1
    # the client that answers pings is untouched
    await alive.ping()


async def test_client_messages_count_as_traffic(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server(**FAST)
    raw = await raw_client(running)
    for i in range(8):  # 1.6 s, never answering a ping, but talking
        raw.send_json({"action": "ping", "id": str(i)})
        assert (await raw.read_json())["id"] == str(i)
        await asyncio.sleep(0.2)
    assert running.server.stats.heartbeat_timeouts == 0
    assert len(running.server.connections) == 1


async def test_client_that_stops_answering_is_closed(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server(**FAST)
    raw = await raw_client(running)
    for _ in range(3):  # answers three pings
        opcode, _ = await raw.read_frame(timeout=2)
        assert opcode == 0x9
        raw.send_frame(b"", 0xA)
    # then goes silent: pings keep coming until the close
    while True:
        opcode, payload = await raw.read_frame(timeout=3)
        if opcode != 0x9:
            break
    assert opcode == 0x8
    assert (int.from_bytes(payload[:2], "big"), payload[2:]) == (4000, b"heartbeat timeout")
    assert running.server.stats.heartbeat_timeouts == 1


async def test_ping_that_overflows_an_idle_slow_consumer_closes_it(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    # Nothing else happens on the server after the ping: no publish, no reply.
    # The ping alone must get the slow consumer closed with 1013.
    running = await running_server(
        websocket__heartbeat_interval=0.3, websocket__heartbeat_timeout=30
    )
    server = running.server
    raw = await raw_client(running)
    conn = await slow_consumer(server, raw)
    closes = server.stats.slow_consumer_closes
    await wait_until(
        lambda: conn.id not in server.connections, timeout=3, what="close after the ping"
    )
    assert server.stats.slow_consumer_closes == closes + 1
    assert server.stats.heartbeat_timeouts == 0
    code, reason = await raw.read_close(timeout=10)  # after everything the kernel holds
    assert (code, reason) == (1013, "slow consumer: send buffer limit")


async def test_unchanged_settings_on_reload_keep_the_wheel(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server(**FAST)
    server = running.server
    await raw_client(running)
    tick = server.core.heartbeat_tick
    before = server.heartbeat._timer
    server.apply(server.config)
    assert server.heartbeat._timer is before  # nothing rebuilt or re-armed
    ws = dataclasses.replace(server.config.websocket, heartbeat_interval=0.1)
    server.apply(dataclasses.replace(server.config, websocket=ws))
    assert server.heartbeat._timer is not before
    assert server.core.heartbeat_tick == tick / 2
