"""Hostile input: the bugs the fuzzer (``tests/fuzzing.py``) found, one test
each, with the minimal reproducer.

Each test asserts the behaviour the contract asks for; each failed before
its fix (they were strict xfails until then).

The server is ``aiosrv serve`` as a child process (:mod:`tests.serverproc`),
as the fuzzer runs it: the depth at which Python's recursion limit is hit
depends on the stack the server's code runs on.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fuzzing import OP_TEXT, Input, RawConn, frame, upgrade_request
from tests.serverproc import ServerProcess, start_server

Start = Callable[..., ServerProcess]
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
async def server() -> AsyncIterator[Start]:
    started: list[ServerProcess] = []
    loop = asyncio.get_running_loop()

    async def start(**settings: str) -> ServerProcess:
        srv = await loop.run_in_executor(None, lambda: start_server(settings=settings))
        started.append(srv)
        return srv

    yield start  # type: ignore[misc]
    for srv in started:
        await loop.run_in_executor(None, srv.cleanup)


def post(srv: ServerProcess, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(
        srv.api("/api/publish"), data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with _opener.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        exc.close()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace")


async def send_text(srv: ServerProcess, *texts: str) -> list[str]:
    """Send text frames on one fresh connection; the outcome of each
    (``error:invalid_message``, ``pong``, ``close:1011``...)."""
    conn = await RawConn.connect(srv.ws_port)
    try:
        status, _ = await conn.handshake(upgrade_request(srv.ws_port, "dGhlIHNhbXBsZSBub25jZQ=="))
        assert status == "101"
        out = []
        for i, text in enumerate(texts):
            inp = Input("t", frame(text.encode(), OP_TEXT, key=b"\x01\x02\x03\x04"), rid=f"r{i}")
            if '"id":"r' not in text:
                inp.rid = None
            out.append(await conn.step(inp, 8.0))
            if not conn.open:
                break
        return out
    finally:
        await conn.abort()


def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


PING = '{"id":"r%d","action":"ping"}'

# Found by bench/fuzz_frames.py: protocol._show() repr()s the offending value
# for its error message; a value nested ~1,000 levels deep (orjson parses up
# to 1,024) makes repr() raise RecursionError, which the session reports as
# an unexpected error: close 1011 and a traceback in the log.
NESTED_FIELDS = {
    "action": '{"action":' + nest(998) + "}",
    "id": '{"id":' + nest(1000) + ',"action":"ping"}',
    "payload": '{"id":"r0","action":"ping","payload":' + nest(1000) + "}",
    "types": '{"id":"r0","action":"subscribe","payload":{"types":' + nest(1000) + "}}",
    "since": '{"id":"r0","action":"subscribe","payload":{"types":["a"],"since":{"a":'
    + nest(991)
    + "}}}",
    "limit": '{"id":"r0","action":"history","payload":{"type":"a","limit":' + nest(1000) + "}}",
}


@pytest.mark.parametrize("field", sorted(NESTED_FIELDS))
async def test_a_deeply_nested_field_is_an_error_reply_not_1011(server: Start, field: str) -> None:
    srv = await server()
    outcomes = await send_text(srv, NESTED_FIELDS[field], PING % 1)
    # "Errors never close the connection" (docs/protocol.md)
    assert outcomes == ["error:invalid_message", "pong"], outcomes
    assert "Traceback" not in srv.log_text()


async def test_a_deeply_nested_websocket_publish_is_refused_and_takes_no_seq(
    server: Start,
) -> None:
    # orjson parses 1,024 levels but encodes at most 254: a payload deeper
    # than that was accepted, then failed to encode after its seq was taken
    # (1011, and a gap). Now the payload is encoded before it is numbered:
    # 254 levels are published, 255 refused with an error that says why.
    srv = await server(**{"websocket.allow_client_publish": "true"})
    publish = '{"id":"r%d","action":"publish","payload":{"type":"fuzz","payload":%s}}'
    outcomes = await send_text(srv, publish % (0, nest(255)), publish % (1, nest(254)))
    assert outcomes == ["error:invalid_message", "ack"], outcomes
    status, body = post(srv, b'{"type":"fuzz","payload":2}')
    assert (status, body) == (202, {"seq": 2}), "a seq was taken by the refused publish"
    assert "Traceback" not in srv.log_text()


async def test_an_http_publish_of_a_deeply_nested_payload_is_400_and_takes_no_seq(
    server: Start,
) -> None:
    srv = await server()
    loop = asyncio.get_running_loop()
    deep = ('{"type":"fuzz","payload":' + nest(255) + "}").encode()
    status, body = await loop.run_in_executor(None, post, srv, deep)
    assert status == 400 and "cannot be encoded" in body["error"]["message"], body
    batch = ('[{"type":"fuzz","payload":1},{"type":"fuzz","payload":' + nest(255) + "}]")
    status, body = await loop.run_in_executor(None, post, srv, batch.encode())
    assert status == 400 and "body[1].payload" in body["error"]["message"], body
    status, body = await loop.run_in_executor(None, post, srv, b'{"type":"fuzz","payload":1}')
    # the subscribers of "fuzz" would otherwise see a gap in seq
    assert (status, body) == (202, {"seq": 1}), (status, body)
    assert "Traceback" not in srv.log_text()


async def test_an_http_publish_list_with_a_deeply_nested_item_is_400(server: Start) -> None:
    srv = await server()
    loop = asyncio.get_running_loop()
    status, _ = await loop.run_in_executor(None, post, srv, ("[" + nest(1000) + "]").encode())
    assert status == 400, status
    assert "Traceback" not in srv.log_text()


async def refused_without_traceback(srv: ServerProcess, request_bytes: bytes) -> bytes:
    """Send a malformed request; its status; fail on a traceback in the log."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.ws_port)
    try:
        writer.write(request_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    loop = asyncio.get_running_loop()
    status, _ = await loop.run_in_executor(None, post, srv, b'{"type":"x","payload":1}')
    assert status == 202  # a round trip later the log is written
    assert "Traceback" not in srv.log_text(), srv.log_text()[-2000:]
    return head.split(b" ")[1]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ws/realtime HTTP/1.1\r\nHost: x\r\nX-\x01: y\r\n\r\n",  # BadHttpMessage
        b"GET /ws?x=\x01 HTTP/1.1\r\nHost: x\r\n\r\n",  # InvalidURLError
        b"GET /ws/realtime HTTP/1.1\r\nHost: x\r\n\x00\r\n\r\n",  # BadHttpMessage
    ],
    ids=["bad-header-name", "bad-url", "nul-line"],
)
async def test_a_malformed_request_is_refused_without_a_traceback_in_the_log(
    server: Start, request_bytes: bytes
) -> None:
    # aiohttp logs every malformed request but a bad method at ERROR with a
    # traceback ("Error handling request"): any client can fill the log
    srv = await server()
    assert await refused_without_traceback(srv, request_bytes) == b"400"


async def test_an_oversized_request_head_is_refused_without_a_traceback_in_the_log(
    server: Start,
) -> None:
    srv = await server()
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"
    assert await refused_without_traceback(srv, big) in (b"400", b"431")
