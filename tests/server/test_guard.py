"""The request-head guard (aiosrv/guard.py) and TLS, over real sockets.

The server runs through ``running_server`` (aiohttp's TestServer with aiosrv's
GuardedRunner, the loop's own accept); ``tests/cli/test_handshake_limits.py``
drives the same through ``aiosrv serve`` (aiosrv's own accept loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect

from aiosrv.clock import ManualClock
from aiosrv.config import ConfigError, default_config
from aiosrv.guard import RateLimitedLog
from aiosrv.listen import server_ssl_context
from aiosrv.metrics import make_registry, render
from tests.certs import client_context, make_cert
from tests.conftest import Running, StartServer
from tests.server.conftest import RawClient, WsConnect, wait_until
from tests.server.test_upgrade import client_frame, read_response, upgrade_request

SUBSCRIBE = orjson.dumps({"id": "s", "action": "subscribe", "payload": {"types": ["t"]}})


async def open_raw(
    running: Running, ctx: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", running.port, ssl=ctx, server_hostname="localhost" if ctx else None
    )


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


def parse(data: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """(status, headers, JSON body) of one whole response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    assert len(body) == int(headers["content-length"]), data
    return int(lines[0].split()[1]), headers, json.loads(body)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


def metric_line(running: Running, name: str) -> str:
    text = render(make_registry(running.server)).decode()
    return next(line for line in text.splitlines() if line.startswith(name))


# --------------------------------------------------------------------------- time


async def test_a_slow_head_gets_408_and_is_closed_at_the_timeout(
    running_server: StartServer,
) -> None:
    running = await running_server(security__handshake_timeout=0.5)
    reader, writer = await open_raw(running)
    head = upgrade_request()
    started = time.monotonic()

    async def drip() -> None:  # a byte every 50 ms, never the end of the head
        for i in range(len(head) - 4):
            writer.write(head[i : i + 1])
            await asyncio.sleep(0.05)

    dripping = asyncio.ensure_future(drip())
    try:
        await wait_until(lambda: running.server.handshakes_in_progress() == 1, what="counted")
        data = await read_to_eof(reader)
        took = time.monotonic() - started
    finally:
        dripping.cancel()
        await close_raw(writer)
    status, headers, body = parse(data)
    assert status == 408
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "handshake_timeout"  # type: ignore[index]
    assert "0.5 s" in body["error"]["message"]  # type: ignore[index]
    assert 0.45 <= took < 1.2, took  # answered and closed (EOF) at the timeout
    assert running.server.stats.handshakes_refused["handshake_timeout"] == 1
    assert running.server.handshakes_in_progress() == 0
    assert 'aiosrv_handshake_refused_total{reason="handshake_timeout"} 1.0' in metric_line(
        running, 'aiosrv_handshake_refused_total{reason="handshake_timeout"}'
    )


async def test_blank_lines_before_the_request_do_not_end_the_head(
    running_server: StartServer,
) -> None:
    running = await running_server(security__handshake_timeout=0.3)
    reader, writer = await open_raw(running)
    try:
        writer.write(b"\r\n\r\n\r\nGET /health HTTP/1.1\r\n")  # no end of head yet
        data = await read_to_eof(reader)
    finally:
        await close_raw(writer)
    assert parse(data)[0] == 408


async def test_a_head_in_many_pieces_within_the_timeout_is_served(
    running_server: StartServer,
) -> None:
    running = await running_server(security__handshake_timeout=2)
    reader, writer = await open_raw(running)
    try:
        head = upgrade_request()
        for i in range(0, len(head), 7):
            writer.write(head[i : i + 7])
            await asyncio.sleep(0.005)
        writer.write(client_frame(SUBSCRIBE))
        status, _, _ = await read_response(reader)
        assert status == 101
        reply = await RawClient(reader, writer).read_json()
        assert (reply["type"], reply["id"]) == ("ack", "s")
        assert len(running.server.connections) == 1
        assert running.server.handshakes_in_progress() == 0
    finally:
        await close_raw(writer)


# --------------------------------------------------------------------------- size


async def test_a_head_over_max_header_size_gets_431(running_server: StartServer) -> None:
    running = await running_server(security__max_header_size=1024)
    reader, writer = await open_raw(running)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1100 + b"\r\n\r\n")
        data = await read_to_eof(reader)
    finally:
        await close_raw(writer)
    status, _, body = parse(data)
    assert status == 431
    assert body["error"]["code"] == "header_too_large"  # type: ignore[index]
    assert "1024 bytes" in body["error"]["message"]  # type: ignore[index]
    assert running.server.stats.handshakes_refused["header_too_large"] == 1


async def test_a_head_of_exactly_max_header_size_is_served(running_server: StartServer) -> None:
    running = await running_server(security__max_header_size=1024)
    start = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = start + b"a" * (1024 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == 1024
    reader, writer = await open_raw(running)
    try:
        writer.write(head)
        status, _, _ = await read_response(reader)
    finally:
        await close_raw(writer)
    assert status == 200


async def test_a_960_kb_header_block_is_refused_with_431(running_server: StartServer) -> None:
    running = await running_server()  # the default limit, 32 KiB
    reader, writer = await open_raw(running)
    block = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(10000))
    assert len(block) > 960_000
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n" + block + b"\r\n")
        status, _, body = await read_response(reader)
    finally:
        await close_raw(writer)
    assert status == 431
    assert b"32768 bytes" in body
    assert running.server.stats.handshakes_refused["header_too_large"] == 1


async def test_keep_alive_requests_are_bounded_by_aiohttps_limits_from_max_header_size(
    running_server: StartServer,
) -> None:
    running = await running_server(security__max_header_size=2048)
    reader, writer = await open_raw(running)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        # a header line up to the limit passes aiohttp's line check...
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 1500 + b"\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        # ...and one over it is refused by aiohttp itself (400, the line is too long)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 2100 + b"\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400
        assert b"2048" in body
    finally:
        await close_raw(writer)


# --------------------------------------------------------------------------- normal use


async def test_http_keep_alive_and_websocket_still_work(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    client = await ws_client(running)
    await client.subscribe(["t"])
    opened = []

    async def count(*_: object) -> None:
        opened.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as http:
        for i in range(3):
            async with http.post(
                running.http("/api/publish"), json={"type": "t", "payload": i}
            ) as resp:
                assert resp.status == 202
    assert len(opened) == 1  # three requests on one kept-alive connection
    assert [m["payload"] for m in await client.recv_n(3)] == [0, 1, 2]
    assert running.server.handshakes_in_progress() == 0


# --------------------------------------------------------------------------- the limit


async def test_heads_in_progress_count_against_max_connections(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_connections=3, security__handshake_timeout=5)
    slow = [await open_raw(running) for _ in range(3)]
    try:
        for _, w in slow:
            w.write(b"GET /ws/realtime HTTP/1.1\r\n")
        await wait_until(lambda: running.server.handshakes_in_progress() == 3, what="3 heads")
        # a fourth connection is answered 503 at once, before it sends anything
        started = time.monotonic()
        reader, writer = await open_raw(running)
        try:
            data = await read_to_eof(reader)
        finally:
            await close_raw(writer)
        assert time.monotonic() - started < 0.5
        status, _, body = parse(data)
        assert status == 503
        assert body["error"]["code"] == "max_connections"  # type: ignore[index]
        assert running.server.stats.handshakes_refused["max_connections"] == 1
        # one head gives up: its place is free, but 2 heads + 1 open connection is the limit
        await close_raw(slow.pop()[1])
        await wait_until(lambda: running.server.handshakes_in_progress() == 2, what="2 heads")
        await ws_client(running)
        assert len(running.server.connections) == 1
        with pytest.raises(Exception) as refused:
            await connect(running.ws_url, proxy=None, open_timeout=3)
        assert "503" in str(refused.value)
        assert running.server.stats.rejected["max_connections"] == 1
    finally:
        for _, w in slow:
            await close_raw(w)
    await wait_until(lambda: running.server.handshakes_in_progress() == 0, what="no heads")


# --------------------------------------------------------------------------- logging


def test_refusal_lines_are_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    logger = logging.getLogger("aiosrv.guard.test")
    limited = RateLimitedLog(logger, 1.0, clock)
    with caplog.at_level(logging.INFO, logger="aiosrv.guard.test"):
        for i in range(5):
            limited.log("slow", logging.INFO, "refused %s", f"10.0.0.{i}")
        limited.log("big", logging.INFO, "big from %s", "10.0.0.9")
        assert [r.getMessage() for r in caplog.records] == [
            "refused 10.0.0.0",
            "big from 10.0.0.9",
        ]
        clock.advance(1.0)  # the interval is over: the last held line, with the count
        assert caplog.records[-1].getMessage() == (
            "refused 10.0.0.4 [and 3 more like it in the last 1 s]"
        )
        clock.advance(0.5)
        limited.log("slow", logging.INFO, "refused %s", "10.0.0.5")
        assert len(caplog.records) == 3  # within a second of the summary: held
        clock.advance(0.5)
        assert caplog.records[-1].getMessage() == "refused 10.0.0.5"
        clock.advance(5)
        limited.log("slow", logging.INFO, "refused %s", "10.0.0.6")
        assert caplog.records[-1].getMessage() == "refused 10.0.0.6"


async def test_a_refusal_is_logged_at_info_with_the_client_address(
    running_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = await running_server(security__max_header_size=1024)
    with caplog.at_level(logging.INFO, logger="aiosrv.guard"):
        for _ in range(3):
            reader, writer = await open_raw(running)
            try:
                writer.write(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 2000 + b"\r\n\r\n")
                await read_to_eof(reader)
            finally:
                await close_raw(writer)
    lines = [r.getMessage() for r in caplog.records if r.name == "aiosrv.guard"]
    assert len(lines) == 1, lines  # three refusals within a second: one line
    assert lines[0].startswith("request head refused (431 header_too_large) from 127.0.0.1:")
    assert running.server.stats.handshakes_refused["header_too_large"] == 3


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path)


async def test_tls_wss_and_https(running_server: StartServer, cert: tuple[Path, Path]) -> None:
    certfile, keyfile = cert
    running = await running_server(
        security__ssl_certfile=str(certfile), security__ssl_keyfile=str(keyfile)
    )
    assert running.ws_url.startswith("wss://")
    ctx = client_context(certfile)
    async with connect(
        running.ws_url.replace("127.0.0.1", "localhost"), ssl=ctx, proxy=None, open_timeout=3
    ) as ws:
        await ws.send(SUBSCRIBE.decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 3))["type"] == "ack"
        async with aiohttp.ClientSession() as http:
            url = running.http("/api/publish").replace("127.0.0.1", "localhost")
            async with http.post(url, json={"type": "t", "payload": "over tls"}, ssl=ctx) as r:
                assert r.status == 202
            async with http.get(url.replace("/api/publish", "/health"), ssl=ctx) as r:
                assert r.status == 200
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 3))
        assert (msg["type"], msg["payload"]) == ("t", "over tls")
        # the socket was taken over from aiohttp over TLS: nothing of it is left
        assert len(running.server.connections) == 1
    await wait_until(lambda: not running.server.connections, what="closed")


async def test_tls_frames_sent_with_the_upgrade_request_are_read(
    running_server: StartServer, cert: tuple[Path, Path]
) -> None:
    certfile, keyfile = cert
    running = await running_server(
        security__ssl_certfile=str(certfile), security__ssl_keyfile=str(keyfile)
    )
    reader, writer = await open_raw(running, client_context(certfile))
    try:
        writer.write(upgrade_request() + client_frame(SUBSCRIBE))
        assert (await read_response(reader))[0] == 101
        reply = await RawClient(reader, writer).read_json()
        assert (reply["type"], reply["id"]) == ("ack", "s")
    finally:
        await close_raw(writer)


async def test_tls_slow_head_gets_408(running_server: StartServer, cert: tuple[Path, Path]) -> None:
    certfile, keyfile = cert
    running = await running_server(
        security__ssl_certfile=str(certfile),
        security__ssl_keyfile=str(keyfile),
        security__handshake_timeout=0.4,
    )
    reader, writer = await open_raw(running, client_context(certfile))
    try:
        writer.write(b"GET /health HTTP/1.1\r\n")
        data = await read_to_eof(reader)
    finally:
        await close_raw(writer)
    assert parse(data)[0] == 408


def test_bad_tls_files_are_named(tmp_path: Path) -> None:
    certfile, keyfile = make_cert(tmp_path)
    other_cert, other_key = make_cert(tmp_path, "other")
    _, locked_key = make_cert(tmp_path, "locked", password=b"secret")
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    both = tmp_path / "both.pem"
    both.write_bytes(certfile.read_bytes() + keyfile.read_bytes())

    def problem(cert: object, key: object = None) -> str:
        cfg = default_config().replace(
            **{"security.ssl_certfile": cert, "security.ssl_keyfile": key}
        )
        with pytest.raises(ConfigError) as err:
            server_ssl_context(cfg.security)
        return str(err.value.problems[0])

    missing = tmp_path / "missing.pem"
    assert f"cannot read {missing}" in problem(str(missing))
    assert "security.ssl_certfile" in problem(str(missing))
    assert f"no PEM certificate in {text}" in problem(str(text), str(keyfile))
    assert f"no PEM private key in {text}" in problem(str(certfile), str(text))
    assert "set security.ssl_keyfile" in problem(str(certfile))  # no key in the cert file
    mismatch = problem(str(certfile), str(other_key))
    assert str(certfile) in mismatch and str(other_key) in mismatch
    assert "encrypted" in problem(str(certfile), str(locked_key))
    assert "set, but security.ssl_certfile is not" in problem(None, str(keyfile))
    # a certificate file holding its key, and a separate key, both work
    for cert_, key_ in ((both, None), (certfile, keyfile), (other_cert, other_key)):
        cfg = default_config().replace(
            **{"security.ssl_certfile": str(cert_), "security.ssl_keyfile": key_ and str(key_)}
        )
        ctx = server_ssl_context(cfg.security)
        assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- hand-over and shutdown


class _Recorder(asyncio.Protocol):
    """Stands in for aiohttp's RequestHandler: records what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append(("connection_made", transport))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data_received", data))

    def pause_writing(self) -> None:
        self.calls.append(("pause_writing", None))


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.closed = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.1", 4000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True


async def test_the_hand_over_gives_aiohttp_the_transport_the_bytes_and_the_write_state() -> None:
    from aiosrv.guard import GuardedServer, guard_stats
    from aiosrv.server import Server

    server = Server(default_config())
    recorder = _Recorder()

    class WebServer:  # what GuardedServer needs of aiohttp's web.Server
        _kwargs: dict[str, object] = {}

        def __call__(self) -> _Recorder:
            return recorder

    guarded = GuardedServer(WebServer(), server, guard_stats(server))  # type: ignore[arg-type]
    guard = guarded()
    transport = _FakeTransport()
    guard.connection_made(transport)
    assert server.handshakes_in_progress() == 1 and guarded.guards == {guard}
    guard.pause_writing()  # the transport's buffer filled before the hand-over
    guard.data_received(b"GET / HTTP/1.1\r\nHost: x")
    assert recorder.calls == [] and transport.protocol is None
    guard.data_received(b"\r\n\r\n\x81\x80")  # the end of the head and a frame behind it
    assert transport.protocol is recorder
    assert recorder.calls == [
        ("connection_made", transport),
        ("pause_writing", None),
        ("data_received", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x80"),
    ]
    assert server.handshakes_in_progress() == 0 and not guarded.guards
    # aiohttp's line limits follow security.max_header_size
    assert WebServer._kwargs["max_line_size"] == WebServer._kwargs["max_field_size"] == 32768
    # a client that half-closes before its head is complete is dropped, not counted
    other = guarded()
    other.connection_made(_FakeTransport())
    other.data_received(b"GET / HTTP/1.1\r\n")
    assert other.eof_received() is None  # the transport closes itself
    assert server.handshakes_in_progress() == 0
    other.connection_lost(None)
    assert not guarded.guards
    assert not server.stats.handshakes_refused


async def test_a_head_in_progress_is_closed_at_shutdown(running_server: StartServer) -> None:
    running = await running_server()
    reader, writer = await open_raw(running)
    try:
        writer.write(b"GET /health HTTP/1.1\r\n")
        await wait_until(lambda: running.server.handshakes_in_progress() == 1, what="counted")
        started = time.monotonic()
        await running.test_server.close()
        # closed: EOF, or a reset when the bytes were still unread at the close
        with contextlib.suppress(ConnectionResetError):
            assert await read_to_eof(reader) == b""
        assert reader.at_eof() or reader.exception() is not None
        assert time.monotonic() - started < 2
    finally:
        await close_raw(writer)
    assert running.server.handshakes_in_progress() == 0
