"""Helpers for the server integration tests: real clients over real sockets.

* ``ws_client(running, ...)`` connects a ``websockets`` client (closed at teardown)
  wrapped in :class:`Client`, which sends and reads JSON messages with timeouts.
* ``raw_client(running, ...)`` opens a plain TCP socket, does the upgrade by hand
  and sends or reads single frames (exact sizes, bad UTF-8, never answering pings).
* ``http`` is an aiohttp ``ClientSession`` (closed at teardown).

Every fixture here depends on ``running_server``, so the clients are closed
before the servers they talk to.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Running, StartServer

#: How long a test waits for one expected message before failing.
RECV_TIMEOUT = 3.0


def new_id() -> str:
    return str(uuid.uuid4())


def now_ms() -> int:
    return int(time.time() * 1000)


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def slow_consumer(server: Any, raw: RawClient, type_: str = "bulk") -> Any:
    """Subscribe ``raw`` (which reads no further than its stream buffer) to
    ``type_`` and publish to it until the kernel's buffers are full and the
    transport holds data; then set its limit one byte above that, so any
    further frame passes it. Returns its server-side Connection."""
    raw.send_json({"action": "subscribe", "id": "s", "payload": {"types": [type_]}})
    await wait_until(lambda: server.core.type_counts().get(type_) == 1, what="subscribe")
    (conn,) = server.connections.values()
    blob = "x" * 16000
    for _ in range(5000):
        await server.publish(type_, {"blob": blob})
        await asyncio.sleep(0.001)
        if conn.transport.get_write_buffer_size() > 0:
            break
    await wait_until(lambda: conn.sub.pending_bytes == 0, what="flush")
    buffered = conn.transport.get_write_buffer_size()
    assert buffered > 0
    conn.sub.limit = buffered + 1
    return conn


# --------------------------------------------------------------------------- clients


class Client:
    """A ``websockets`` client speaking the JSON protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            await self.ws.send(orjson.dumps(message).decode())
        else:
            await self.ws.send(message)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
        msg = orjson.loads(raw)
        assert isinstance(msg, dict), msg
        return msg

    async def recv_n(self, n: int, timeout: float = RECV_TIMEOUT) -> list[dict[str, Any]]:
        return [await self.recv(timeout) for _ in range(n)]

    async def recv_type(self, type_: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The next message of ``type_``, skipping any other."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {type_!r} message within {timeout}s")
            try:
                msg = await self.recv(left)
            except asyncio.TimeoutError:
                raise AssertionError(f"no {type_!r} message within {timeout}s") from None
            if msg.get("type") == type_:
                return msg

    async def expect_nothing(self, wait: float = 0.3) -> None:
        """Fail if any message arrives within ``wait`` seconds."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected message: {raw!r}")

    async def request(
        self, action: str, payload: dict[str, Any] | None = None, *, id: str | None = None
    ) -> dict[str, Any]:
        """Send one action (with a fresh id unless given) and return the next message."""
        msg: dict[str, Any] = {"id": id or new_id(), "action": action}
        if payload is not None:
            msg["payload"] = payload
        await self.send(msg)
        return await self.recv()

    async def subscribe(self, types: list[str], **extra: Any) -> dict[str, Any]:
        reply = await self.request("subscribe", {"types": types, **extra})
        assert reply["type"] == "ack", reply
        return reply

    async def ping(self) -> dict[str, Any]:
        rid = new_id()
        reply = await self.request("ping", id=rid)
        assert reply["type"] == "pong" and reply["id"] == rid, reply
        return reply

    async def close_code(self, timeout: float = RECV_TIMEOUT) -> int | None:
        """Wait for the server to close the connection; the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        await self.ws.close()


class RawClient:
    """A hand-made WebSocket client on a plain TCP socket.

    It never answers pings or close frames by itself: the test decides.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str = "/ws/realtime") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode())
        client = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            await client.close()
            raise AssertionError(f"upgrade refused: {head!r}")
        return client

    def send_frame(
        self, payload: bytes, opcode: int = 0x1, *, fin: bool = True, mask: bool = True
    ) -> None:
        self.writer.write(client_frame(payload, opcode, fin=fin, mask=mask))

    def send_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is, in one write (several frames in one packet)."""
        self.writer.write(data)

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(text.encode() if isinstance(text, str) else text, 0x1)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_frame(orjson.dumps(message), 0x1)

    def send_close(self, code: int = 1000) -> None:
        self.send_frame(struct.pack("!H", code), 0x8)

    async def read_frame(self, timeout: float = RECV_TIMEOUT) -> tuple[int, bytes]:
        """The next frame from the server: ``(opcode, payload)``; the server
        never fragments nor masks."""
        head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        opcode = head[0] & 0x0F
        assert head[0] & 0x80, "the server sent a fragmented frame"
        assert not head[1] & 0x80, "the server sent a masked frame"
        n = head[1] & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        payload = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        return opcode, payload

    async def read_json(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The next text frame as JSON, skipping pings."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x9:
                continue
            assert opcode == 0x1, (opcode, payload)
            msg = orjson.loads(payload)
            assert isinstance(msg, dict)
            return msg

    async def read_close(self, timeout: float = RECV_TIMEOUT) -> tuple[int, str]:
        """Skip frames until a close frame; its code and reason."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    async def at_eof(self, timeout: float = RECV_TIMEOUT) -> bool:
        """True once the server closed the TCP connection (after reading the rest)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except ConnectionError:
            pass
        return True

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def client_frame(
    payload: bytes, opcode: int = 0x1, *, fin: bool = True, mask: bool = True
) -> bytes:
    """One client-to-server frame (RFC 6455 5.2), masked with a random key
    unless ``mask`` is False."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + _mask(payload, key)


def json_frame(message: dict[str, Any]) -> bytes:
    return client_frame(orjson.dumps(message))


def close_frame(code: int = 1000, reason: str = "") -> bytes:
    return client_frame(struct.pack("!H", code) + reason.encode(), 0x8)


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big")


# --------------------------------------------------------------------------- fixtures


WsConnect = Callable[..., Awaitable[Client]]
RawConnect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def ws_client(running_server: StartServer) -> AsyncIterator[WsConnect]:
    """``await ws_client(running, path="/ws/realtime", **connect_kwargs)``."""
    opened: list[Client] = []

    async def open_client(running: Running, path: str = "/ws/realtime", **kw: Any) -> Client:
        kw.setdefault("proxy", None)
        kw.setdefault("ping_interval", None)
        kw.setdefault("compression", None)
        kw.setdefault("close_timeout", 2)
        kw.setdefault("open_timeout", RECV_TIMEOUT)
        ws = await connect(f"ws://127.0.0.1:{running.port}{path}", **kw)
        client = Client(ws)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


@pytest.fixture
async def raw_client(running_server: StartServer) -> AsyncIterator[RawConnect]:
    """``await raw_client(running, path="/ws/realtime")``."""
    opened: list[RawClient] = []

    async def open_raw(running: Running, path: str = "/ws/realtime") -> RawClient:
        client = await RawClient.connect(running.port, path)
        opened.append(client)
        return client

    yield open_raw
    for client in opened:
        await client.close()


@pytest.fixture
async def http(running_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def publish(
    http: aiohttp.ClientSession,
    running: Running,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """POST /api/publish; ``(status, decoded JSON body)``."""
    async with http.post(
        running.http("/api/publish"), data=orjson.dumps(body), headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def get_json(http: aiohttp.ClientSession, running: Running, path: str) -> tuple[int, Any]:
    async with http.get(running.http(path)) as resp:
        return resp.status, orjson.loads(await resp.read())


async def post_json(
    http: aiohttp.ClientSession,
    running: Running,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(running.http(path), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())
