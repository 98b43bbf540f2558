"""permessage-deflate over real sockets: negotiated only when enabled, one
compressed frame per message above the threshold, plain frames below it."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from typing import Any

import orjson
from websockets.asyncio.client import connect

from tests.conftest import Running, StartServer
from tests.server.conftest import RawClient, WsConnect

BIG = {"rows": [{"sensor": f"s{i}", "value": i * 1.5, "unit": "celsius"} for i in range(40)]}


class DeflateRawClient(RawClient):
    """A raw client that offers permessage-deflate and shows RSV1 per frame."""

    @classmethod
    async def open(cls, port: int, offer: bool | str = True) -> tuple[DeflateRawClient, bytes]:
        """Upgrade; ``offer`` True offers plain permessage-deflate, a string
        offers that extension header value, False offers nothing."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        if offer is True:
            offer = "permessage-deflate"
        ext = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        writer.write(
            (
                f"GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{ext}\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert b" 101 " in head.split(b"\r\n", 1)[0], head
        return cls(reader, writer), head

    async def read_raw(self) -> tuple[bool, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), 3)
        n = head[1] & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return bool(head[0] & 0x40), head[0] & 0x0F, await self.reader.readexactly(n)


def inflate(body: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    return body[:-4]


async def publish(running: Running, payload: Any) -> None:
    await running.server.publish("t", payload)


async def test_disabled_by_default_no_extension_in_the_handshake(
    running_server: StartServer,
) -> None:
    running = await running_server()
    client, head = await DeflateRawClient.open(running.port)
    try:
        assert b"permessage-deflate" not in head.lower()
        client.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
        assert (await client.read_raw())[0] is False
        await publish(running, BIG)
        rsv1, opcode, body = await client.read_raw()
        assert (rsv1, opcode) == (False, 1)
        assert orjson.loads(body)["payload"] == BIG
    finally:
        await client.close()


async def test_enabled_big_messages_compressed_once_small_ones_plain(
    running_server: StartServer,
) -> None:
    running = await running_server(
        websocket__compression=True, websocket__compression_threshold=512
    )
    clients = [await DeflateRawClient.open(running.port) for _ in range(2)]
    plain, head = await DeflateRawClient.open(running.port, offer=False)
    try:
        for _, h in clients:
            assert b"permessage-deflate" in h.lower()
        assert b"permessage-deflate" not in head.lower()
        for c in [c for c, _ in clients] + [plain]:
            c.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
            assert orjson.loads((await c.read_raw())[2])["type"] == "ack"
        await publish(running, BIG)
        await publish(running, {"small": True})
        raw_big = None
        for c, _ in clients:
            rsv1, opcode, body = await c.read_raw()
            assert (rsv1, opcode) == (True, 1)
            msg = inflate(body)
            assert orjson.loads(msg)["payload"] == BIG
            assert len(body) * 3 < len(msg)  # it did compress
            rsv1, _, body = await c.read_raw()
            assert rsv1 is False
            assert orjson.loads(body)["payload"] == {"small": True}
            raw_big = msg
        rsv1, _, body = await plain.read_raw()
        assert rsv1 is False
        assert body == raw_big
        rsv1, _, body = await plain.read_raw()
        assert (rsv1, orjson.loads(body)["payload"]) == (False, {"small": True})
        assert running.server.hub.compressed == 1
    finally:
        for c, _ in clients:
            await c.close()
        await plain.close()


async def test_a_library_client_negotiates_and_reads_everything_in_order(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__compression=True, websocket__compression_threshold=0)
    deflating = await ws_client(running, compression="deflate")
    assert "permessage-deflate" in deflating.ws.response.headers["Sec-WebSocket-Extensions"]
    # its own frames to the server are compressed too, and understood
    await deflating.subscribe(["t"])
    async with connect(running.ws_url, compression=None) as bare:
        assert "Sec-WebSocket-Extensions" not in bare.response.headers
        await bare.send(orjson.dumps({"action": "subscribe", "payload": {"types": ["t"]}}).decode())
        assert orjson.loads(await bare.recv())["type"] == "ack"
        for n in range(20):
            await publish(running, {"n": n, "pad": "x" * (n * 100)})
        got_deflating = [(await deflating.recv())["payload"]["n"] for _ in range(20)]
        got_bare = [orjson.loads(await bare.recv())["payload"]["n"] for _ in range(20)]
    assert got_deflating == list(range(20))
    assert got_bare == list(range(20))
    assert running.server.hub.compressed == 20


async def test_a_client_that_limits_the_server_window_gets_plain_frames(
    running_server: StartServer,
) -> None:
    # the shared frame is made with the full 32 KiB window, which a client that
    # asked for server_max_window_bits=10 could not inflate: it gets plain ones
    running = await running_server(websocket__compression=True, websocket__compression_threshold=0)
    small, head = await DeflateRawClient.open(
        running.port, "permessage-deflate; server_max_window_bits=10"
    )
    full, _ = await DeflateRawClient.open(running.port)
    try:
        assert b"server_max_window_bits=10" in head
        for c in (small, full):
            c.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
            assert (await c.read_raw())[0] is False
        await publish(running, BIG)
        rsv1, _, body = await small.read_raw()
        assert rsv1 is False
        assert orjson.loads(body)["payload"] == BIG
        rsv1, _, body = await full.read_raw()
        assert rsv1 is True
        assert orjson.loads(inflate(body))["payload"] == BIG
        assert running.server.hub.queue_stats()["deflate_subscribers"] == 1
    finally:
        await small.close()
        await full.close()


async def test_compressed_client_frames_are_understood(running_server: StartServer) -> None:
    running = await running_server(websocket__compression=True)
    client, _ = await DeflateRawClient.open(running.port)
    try:
        request = orjson.dumps({"action": "subscribe", "id": "z", "payload": {"types": ["t"]}})
        client.send_frame(deflate(request), 0x40 | 0x1)  # RSV1: compressed
        rsv1, _, body = await client.read_raw()
        reply = orjson.loads(body)  # replies are sent uncompressed
        assert (rsv1, reply["type"], reply["id"]) == (False, "ack", "z")
        assert reply["payload"]["types"] == ["t"]
    finally:
        await client.close()


async def test_turning_compression_on_and_off_applies_to_new_connections(
    running_server: StartServer,
) -> None:
    running = await running_server(websocket__compression_threshold=0)
    server = running.server
    before, head = await DeflateRawClient.open(running.port)
    assert b"permessage-deflate" not in head.lower()
    server.apply(server.config.replace(**{"websocket.compression": True}))
    assert server.hub.settings.compression is True
    during, head = await DeflateRawClient.open(running.port)
    assert b"permessage-deflate" in head.lower()
    server.apply(server.config.replace(**{"websocket.compression": False}))
    after, head = await DeflateRawClient.open(running.port)
    assert b"permessage-deflate" not in head.lower()
    clients = [before, during, after]
    try:
        for c in clients:
            c.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
            assert (await c.read_raw())[0] is False
        await publish(running, BIG)
        # the connection that negotiated it keeps its compressed frames
        got = [await c.read_raw() for c in clients]
        assert [rsv1 for rsv1, _, _ in got] == [False, True, False]
        assert orjson.loads(inflate(got[1][2]))["payload"] == BIG
        assert got[0][2] == got[2][2] == inflate(got[1][2])
    finally:
        for c in clients:
            await c.close()


async def test_default_threshold_boundary_1024_bytes(running_server: StartServer) -> None:
    # websocket.compression_threshold (1024 by default) is the size of the data
    # message from which on it is compressed: 1023 bytes go plain, 1024 compressed
    running = await running_server(websocket__compression=True)
    assert running.server.config.websocket.compression_threshold == 1024
    client, _ = await DeflateRawClient.open(running.port)
    plain, _ = await DeflateRawClient.open(running.port, offer=False)
    try:
        for c in (client, plain):
            c.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
            assert orjson.loads((await c.read_raw())[2])["type"] == "ack"
        await publish(running, "x" * 100)  # learn the envelope's size (seq stays 1 digit)
        _, _, body = await plain.read_raw()
        overhead = len(body) - 100
        assert (await client.read_raw())[0] is False
        for size, compressed in [(1023, False), (1024, True), (1025, True)]:
            text = "x" * (size - overhead)
            await publish(running, text)
            _, _, body = await plain.read_raw()
            assert len(body) == size
            rsv1, _, raw = await client.read_raw()
            assert rsv1 is compressed, size
            assert (inflate(raw) if rsv1 else raw) == body
        assert running.server.hub.compressed == 2
    finally:
        await client.close()
        await plain.close()
