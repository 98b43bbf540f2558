"""The upgrade and the socket after it, over real sockets.

After the ``101`` the connection's socket belongs to
:class:`aiosrv.connection.Connection` (and its session), not to aiohttp: these tests pin the
handshake answers, the hand-over (bytes sent right behind the request, an
upgrade on a kept-alive connection, nothing of aiohttp kept per client), the
framing rules and the close handshake.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import struct
import zlib

import orjson
from aiohttp import web_protocol, web_request

from tests.conftest import StartServer
from tests.server.conftest import RawClient, RawConnect, _mask, wait_until


def upgrade_request(path: str = "/ws/realtime", **headers: str) -> bytes:
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


def client_frame(payload: bytes, opcode: int = 1, *, rsv1: bool = False) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + key + _mask(payload, key)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


SUBSCRIBE = orjson.dumps({"id": "s", "action": "subscribe", "payload": {"types": ["t"]}})


async def test_frames_sent_with_the_upgrade_request_are_read(running_server: StartServer) -> None:
    running = await running_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        # one write: the request head and a frame right behind it
        writer.write(upgrade_request() + client_frame(SUBSCRIBE))
        status, _, _ = await read_response(reader)
        assert status == 101
        client = RawClient(reader, writer)
        reply = await client.read_json()
        assert (reply["type"], reply["id"]) == ("ack", "s")
    finally:
        writer.close()


async def test_upgrade_on_a_kept_alive_connection(running_server: StartServer) -> None:
    """A proxy may reuse a pooled connection for the upgrade."""
    running = await running_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 426
        assert headers.get("connection", "keep-alive").lower() != "close"
        assert orjson.loads(body)["error"]["code"] == "upgrade_required"
        writer.write(upgrade_request("/ws") + client_frame(SUBSCRIBE))
        status, _, _ = await read_response(reader)
        assert status == 101
        client = RawClient(reader, writer)
        assert (await client.read_json())["type"] == "ack"
        await running.server.publish("t", {"n": 1})
        assert (await client.read_json())["payload"] == {"n": 1}
    finally:
        writer.close()


async def test_nothing_of_aiohttp_stays_per_connection(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    clients = [await raw_client(running) for _ in range(20)]
    for c in clients:
        c.send_json({"action": "subscribe", "payload": {"types": ["t"]}})
        assert (await c.read_json())["type"] == "ack"
    await wait_until(lambda: len(running.server.connections) == 20, what="20 connections")
    gc.collect()
    kept = [
        o
        for o in gc.get_objects()
        if isinstance(o, (web_protocol.RequestHandler, web_request.BaseRequest))
    ]
    assert kept == []
    await running.server.publish("t", "still here")
    for c in clients:
        assert (await c.read_json())["payload"] == "still here"


async def test_bad_handshakes_are_answered_with_what_is_wrong(
    running_server: StartServer,
) -> None:
    running = await running_server()
    cases = [
        (upgrade_request(Sec_WebSocket_Version="8"), 426, "Sec-WebSocket-Version 8"),
        (upgrade_request(Sec_WebSocket_Key=""), 400, "Sec-WebSocket-Key"),
        (upgrade_request(Connection="keep-alive"), 400, "'upgrade'"),
    ]
    for request, status, words in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        try:
            writer.write(request)
            got, headers, body = await read_response(reader)
            assert got == status
            error = orjson.loads(body)["error"]
            assert error["code"] == "bad_handshake"
            assert words in error["message"]
            if status == 426:
                assert headers["sec-websocket-version"] == "13"
        finally:
            writer.close()
    assert running.server.connections == {}


async def test_unmasked_client_frame_closes_1002(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    bad = await raw_client(running)
    good = await raw_client(running)
    bad.send_frame(SUBSCRIBE, mask=False)
    assert await bad.read_close() == (1002, "client frames must be masked")
    assert await bad.at_eof()
    await wait_until(lambda: running.server.stats.closes[1002] == 1, what="the close counted")
    good.send_json({"action": "ping", "id": "p"})
    assert (await good.read_json())["type"] == "pong"


async def test_fragments_with_a_ping_between(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    c = await raw_client(running)
    c.send_frame(SUBSCRIBE[:10], fin=False)
    c.send_frame(b"are you there", 0x9)
    c.send_frame(SUBSCRIBE[10:20], 0x0, fin=False)
    c.send_frame(SUBSCRIBE[20:], 0x0)
    assert await c.read_frame() == (0xA, b"are you there")
    reply = await c.read_json()
    assert (reply["type"], reply["payload"]["types"]) == ("ack", ["t"])


async def test_client_close_is_answered_with_its_code(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    c = await raw_client(running)
    c.send_frame(struct.pack("!H", 4321) + b"bye now", 0x8)
    assert await c.read_close() == (4321, "")
    assert await c.at_eof()
    await wait_until(lambda: running.server.stats.closes[4321] == 1, what="the close counted")


async def test_invalid_close_codes_are_protocol_errors(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    for payload, code in [(struct.pack("!H", 1005), 1002), (b"\x03", 1002)]:
        c = await raw_client(running)
        c.send_frame(payload, 0x8)
        got, _ = await c.read_close()
        assert got == code
        assert await c.at_eof()


async def test_a_compressed_message_over_the_limit_once_inflated_closes_1009(
    running_server: StartServer,
) -> None:
    running = await running_server(websocket__compression=True, websocket__max_message_size=10_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(upgrade_request(Sec_WebSocket_Extensions="permessage-deflate"))
        status, headers, _ = await read_response(reader)
        assert status == 101
        assert "permessage-deflate" in headers["sec-websocket-extensions"]
        client = RawClient(reader, writer)

        def deflate(data: bytes) -> bytes:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

        # a small compressed request is understood
        writer.write(client_frame(deflate(SUBSCRIBE), rsv1=True))
        assert (await client.read_json())["type"] == "ack"
        # 20 kB of JSON in a few hundred compressed bytes: refused once inflated
        bomb = orjson.dumps({"action": "ping", "pad": "x" * 20_000})
        body = deflate(bomb)
        assert len(body) < 1_000
        writer.write(client_frame(body, rsv1=True))
        code, reason = await client.read_close()
        assert code == 1009
        assert "decompressed" in reason
    finally:
        writer.close()
