"""Hostile fragmentation and lengths from a raw client over a real socket.

A message may come in at most ``MAX_FRAGMENTS`` data frames (1009 past that,
told from the header of the frame one too many), and a 64-bit payload length
with its most significant bit set is a protocol error (1002), not a size one.
"""

from __future__ import annotations

import os
import time

import orjson

from aiosrv.errors import MAX_FRAGMENTS
from tests.conftest import Running, StartServer

from .conftest import RawClient, RawConnect, WsConnect, client_frame, wait_until


def padded_ping(size: int) -> tuple[bytes, str]:
    """A ping message of exactly ``size`` bytes, and its id."""
    rid = "p" * (size - len(orjson.dumps({"action": "ping", "id": ""})))
    text = orjson.dumps({"action": "ping", "id": rid})
    assert len(text) == size
    return text, rid


def one_byte_fragments(message: bytes) -> bytes:
    """``message`` as one masked frame per byte (text, continuations, the last final)."""
    key = os.urandom(4)
    k = key[0]  # a one-byte payload is masked with the key's first byte
    last = len(message) - 1
    return b"".join(
        bytes(((0x80 if i == last else 0) | (0x1 if i == 0 else 0x0), 0x81)) + key + bytes((b ^ k,))
        for i, b in enumerate(message)
    )


async def assert_closed_with(running: Running, raw: RawClient, code: int, words: str) -> None:
    got, reason = await raw.read_close()
    assert (got, words in reason) == (code, True), (got, reason)
    raw.send_close(code)
    assert await raw.at_eof()
    await wait_until(lambda: running.server.stats.closes[code] >= 1, what="the close counted")


async def test_a_message_in_200000_one_byte_fragments_closes_1009(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    # 200,000 bytes, within the default 1 MiB limit, sent as one frame per
    # byte: refused at the frame after MAX_FRAGMENTS, without buffering the rest
    running = await running_server()
    assert running.server.config.websocket.max_message_size == 1024 * 1024
    other = await ws_client(running)
    raw = await raw_client(running)
    text, _ = padded_ping(200_000)
    data = one_byte_fragments(text)
    assert len(data) == 7 * 200_000
    started = time.monotonic()
    raw.send_bytes(data)
    await assert_closed_with(running, raw, 1009, f"more than {MAX_FRAGMENTS} fragments")
    assert time.monotonic() - started < 3
    await other.ping()


async def test_exactly_max_fragments_are_answered(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    running = await running_server()
    raw = await raw_client(running)
    text, rid = padded_ping(MAX_FRAGMENTS)
    raw.send_bytes(one_byte_fragments(text))
    reply = await raw.read_json()
    assert (reply["type"], reply["id"]) == ("pong", rid)
    # with pings between the fragments too: control frames do not count
    text, rid = padded_ping(MAX_FRAGMENTS)
    for i, b in enumerate(text):
        raw.send_frame(bytes((b,)), 0x1 if i == 0 else 0x0, fin=i == len(text) - 1)
        if i % 100 == 0:
            raw.send_frame(b"%d" % i, 0x9)
    for i in range(0, MAX_FRAGMENTS, 100):
        assert await raw.read_frame() == (0xA, b"%d" % i)
    reply = await raw.read_json()
    assert (reply["type"], reply["id"]) == ("pong", rid)


async def test_one_empty_fragment_too_many_closes_1009(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server()
    other = await ws_client(running)
    raw = await raw_client(running)
    raw.send_json({"action": "ping", "id": "before"})
    assert (await raw.read_json())["id"] == "before"
    empty = [client_frame(b"", 0x1, fin=False)]
    empty += [client_frame(b"", 0x0, fin=False)] * (MAX_FRAGMENTS - 1)
    empty += [client_frame(b"", 0x0, fin=True)]  # fragment MAX_FRAGMENTS + 1
    assert len(empty) == 1025
    raw.send_bytes(b"".join(empty))
    await assert_closed_with(
        running, raw, 1009, f"message in more than {MAX_FRAGMENTS} fragments (the limit)"
    )
    await other.ping()


async def test_a_64_bit_length_with_its_top_bit_set_closes_1002(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server()
    other = await ws_client(running)
    raw = await raw_client(running)
    # a text frame of "2**63 + 5 bytes": RFC 6455 5.2, the most significant bit MUST be 0
    raw.send_bytes(b"\x81\xff" + (2**63 + 5).to_bytes(8, "big") + os.urandom(4) + b"x" * 10)
    await assert_closed_with(running, raw, 1002, "most significant bit")
    assert running.server.stats.closes[1009] == 0
    # the largest length with the bit clear is only too big
    big = await raw_client(running)
    big.send_bytes(b"\x81\xff" + (2**63 - 1).to_bytes(8, "big") + os.urandom(4))
    await assert_closed_with(running, big, 1009, "more than")
    await other.ping()
