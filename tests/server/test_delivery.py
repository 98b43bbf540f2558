"""The write path over real sockets: coalesced writes, ordering, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import aiohttp
import orjson

from tests.conftest import StartServer
from tests.server.conftest import RawConnect, WsConnect, wait_until


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
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
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
