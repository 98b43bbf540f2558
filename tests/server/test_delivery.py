"""The write path over real sockets: coalesced writes, ordering, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import aiohttp
import orjson
import pytest

from tests.conftest import StartServer
from tests.server.conftest import RawConnect, WsConnect, wait_until
from tests.server.test_metrics import scrape, value


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse unmasked server frames from a byte string (all complete)."""
    out = []
    i = 0
    while i < len(data):
        opcode = data[i] & 0x0F
        n = data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append((opcode, data[i : i + n]))
        i += n
    assert i == len(data), "a frame was cut"
    return out


async def open_plain_client(port: int) -> socket.socket:
    """A WebSocket client on a bare socket that only reads when asked, so what
    the server sent waits in the kernel until the test reads it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return sock


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + body


async def test_a_batch_reaches_a_client_in_one_write_and_one_read(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    server = running.server
    loop = asyncio.get_running_loop()
    sock = await open_plain_client(running.port)
    try:
        await loop.sock_sendall(
            sock, masked_text(b'{"action":"subscribe","payload":{"types":["tick"]}}')
        )
        ack = split_frames(await asyncio.wait_for(loop.sock_recv(sock, 65536), 3))
        assert orjson.loads(ack[0][1])["type"] == "ack"
        sub = next(iter(server.connections.values())).sub
        writes_before = server.core.writes

        body = [{"type": "tick", "payload": {"n": n}} for n in range(50)]
        async with http.post(running.http("/api/publish"), json=body) as resp:
            assert resp.status == 202
        await wait_until(lambda: server.hub.fanned_out >= 50 and sub.pending_frames == 0)
        # 50 messages, one subscriber: one write
        assert server.core.writes - writes_before == 1
        # ... and the client finds them all in one read of its socket
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 3)
    finally:
        sock.close()
    frames = split_frames(data)
    assert [orjson.loads(p)["payload"]["n"] for op, p in frames if op == 1] == list(range(50))


async def test_order_is_kept_per_type_across_interleaved_bursts(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(broadcast__batch_size=7)
    everything = await ws_client(running)
    await everything.subscribe(["a", "b"])
    keyed = await ws_client(running)
    await keyed.subscribe(["a"], keys={"a": ["k1"]})

    body = []
    for n in range(300):
        body.append({"type": "a", "payload": n, "key": "k1" if n % 3 == 0 else "k2"})
        body.append({"type": "b", "payload": n})
    async with http.post(running.http("/api/publish"), json=body) as resp:
        assert resp.status == 202

    got = await everything.recv_n(600)
    for type_ in ("a", "b"):
        seqs = [m["seq"] for m in got if m["type"] == type_]
        assert seqs == list(range(1, 301))
    assert [m["payload"] for m in got if m["type"] == "b"] == list(range(300))
    keyed_got = await keyed.recv_n(100)
    assert [m["payload"] for m in keyed_got] == list(range(0, 300, 3))
    assert {m["key"] for m in keyed_got} == {"k1"}
    await keyed.expect_nothing(0.2)


async def test_slow_consumer_gets_1013_and_a_fast_one_misses_nothing(
    running_server: StartServer,
    raw_client: RawConnect,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 128 * 1024
    running = await running_server(websocket__send_buffer_limit=limit)
    server = running.server
    fast = await ws_client(running, max_size=None)
    await fast.subscribe(["big"])
    received: list[int] = []

    async def read_fast() -> None:
        while True:
            received.append((await fast.recv(timeout=10))["seq"])

    reader = asyncio.create_task(read_fast())
    slow = await raw_client(running)
    slow.send_json({"action": "subscribe", "payload": {"types": ["big"]}})
    assert (await slow.read_json())["type"] == "ack"
    # from here on the slow client reads nothing

    blob = "y" * 20_000
    published = 0
    while not server.stats.slow_consumer_closes and published < 3000:
        await server.publish("big", blob)
        published += 1
        await asyncio.sleep(0.001)
    assert server.stats.slow_consumer_closes == 1
    # never more than the limit plus one frame was held for it
    assert 0 < server.core.dropped_bytes <= limit + 20_100
    for _ in range(5):
        await server.publish("big", blob)
        published += 1

    # the fast client has every message, in order
    await wait_until(lambda: len(received) == published, timeout=10, what="the fast client")
    reader.cancel()
    assert received == list(range(1, published + 1))
    # the slow one, reading again, finds the data it was sent, then the 1013 close
    code, reason = await slow.read_close(timeout=10)
    assert code == 1013
    assert "slow consumer" in reason
    await wait_until(lambda: len(server.connections) == 1, what="the slow client to go")
    # counted in the metrics and logged for the operator
    samples = await scrape(http, running)
    assert value(samples, "aiosrv_slow_consumer_disconnects_total") == 1
    assert value(samples, "aiosrv_slow_consumer_dropped_bytes_total") == server.core.dropped_bytes
    (record,) = [r for r in caplog.records if "slow consumer" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert f"send buffer over {limit} bytes" in record.getMessage()


async def test_partial_writes_lose_and_reorder_nothing(running_server: StartServer) -> None:
    # A client that reads in small sips while messages of every frame-length
    # class pour in: the kernel takes part of a write, the rest waits in the
    # transport, the transport drains and the core writes directly again, many
    # times over. Every message must arrive whole, once, in order.
    running = await running_server(websocket__send_buffer_limit=64 * 1024 * 1024)
    server = running.server
    sock = await open_plain_client(running.port)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(
        sock, masked_text(b'{"action":"subscribe","payload":{"types":["p"]}}')
    )
    await wait_until(lambda: server.core.type_counts().get("p") == 1, what="subscribe")
    (conn,) = server.connections.values()
    sizes = [10, 125, 126, 3000, 65535, 65536, 70000, 500]
    count = 400
    expected = [sizes[i % len(sizes)] for i in range(count)]
    buf = bytearray()
    partial_seen = False

    async def publish_all() -> None:
        nonlocal partial_seen
        for i, n in enumerate(expected):
            await server.publish("p", {"i": i, "fill": "z" * n})
            if i % 8 == 0:
                await asyncio.sleep(0)
                partial_seen = partial_seen or conn.transport.get_write_buffer_size() > 0

    publisher = asyncio.create_task(publish_all())
    got: list[int] = []
    while len(got) < count:
        buf += await asyncio.wait_for(loop.sock_recv(sock, 16384), 10)
        await asyncio.sleep(0)  # sip: let the server run between reads
        i = 0
        while True:  # whole frames at the front of buf
            if len(buf) - i < 2:
                break
            n = buf[i + 1] & 0x7F
            head = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) - i < head:
                break
            if n == 126:
                n = int.from_bytes(buf[i + 2 : i + 4], "big")
            elif n == 127:
                n = int.from_bytes(buf[i + 2 : i + 10], "big")
            if len(buf) - i < head + n:
                break
            assert buf[i] == 0x81, buf[i : i + 2]
            msg = orjson.loads(bytes(buf[i + head : i + head + n]))
            i += head + n
            if msg.get("type") == "p":
                assert msg["payload"]["i"] == len(got)
                assert msg["payload"]["fill"] == "z" * expected[len(got)]
                assert msg["seq"] == len(got) + 1
                got.append(msg["seq"])
        del buf[:i]
    await publisher
    sock.close()
    assert partial_seen  # the transport did hold data at times: the mixed path ran
    assert server.stats.slow_consumer_closes == 0
