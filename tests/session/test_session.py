"""The WebSocket session without a socket: bytes in, frames and transport calls
out, time on a manual clock (the way ``websockets`` tests its protocol
classes). The core, the hub and the embedded broker are the real ones; the
transport is a recording fake and the server's registry a recording list.
The core is the one ``aiosrv.fanout`` selects: ``make test`` runs this file
once on each."""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import Any

import orjson
import pytest

from aiosrv import session as session_module
from aiosrv.auth import SecurityPolicy
from aiosrv.broker_memory import MemoryBroker
from aiosrv.clock import ManualClock
from aiosrv.config import load_config
from aiosrv.counters import Counters
from aiosrv.errors import FrameError
from aiosrv.fanout import FanOut, encode_frame
from aiosrv.hub import Hub, HubSettings
from aiosrv.session import (
    CLOSE_TIMEOUT,
    MAX_WAITING_REQUESTS,
    Session,
    SessionContext,
    close_from_payload,
    decode_text,
    inflate,
)
from tests.core.conftest import decode_frames
from tests.server.conftest import client_frame, close_frame, json_frame


class Transport:
    """What a session calls on its transport, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.reading = True
        self.buffer_size = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def pause_reading(self) -> None:
        self.reading = False
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.reading = True
        self.calls.append("resume_reading")

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def frames(self) -> list[tuple[int, bytes]]:
        return decode_frames(b"".join(self.writes))

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(p) for op, p in self.frames() if op == 0x1]

    def close_code(self) -> int | None:
        closes = [p for op, p in self.frames() if op == 0x8]
        if not closes:
            return None
        assert len(closes) == 1, "one close frame at most"
        return struct.unpack("!H", closes[0][:2])[0] if closes[0] else 1005


class Registry:
    """The server's registry of open connections, recorded."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.events: list[str] = []

    def add(self, s: Session) -> None:
        self.core.add(s.sub)

    def unregister(self, conn: Any) -> None:
        if "unregister" not in self.events:
            self.core.remove(conn.sub)
        self.events.append("unregister")

    def lingering(self, conn: Any) -> None:
        self.events.append("lingering")

    def gone(self, conn: Any) -> None:
        self.events.append("gone")


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = ManualClock()
        self.config = load_config(None, {}, config, use_default_path=False)
        self.core = FanOut()
        self.broker = MemoryBroker(self.config.history.size)
        self.hub = Hub(self.core, self.broker, HubSettings(), clock=self.clock)
        self.registry = Registry(self.core)
        self.counters = Counters()
        self.policy = SecurityPolicy.from_config(self.config.security)
        self.ctx = SessionContext(
            core=self.core,
            hub=self.hub,
            history=self.broker.history,
            config=lambda: self.config,
            counters=self.counters,
            registry=self.registry,
            clock=self.clock,
            spawn=lambda coro: asyncio.get_running_loop().create_task(coro),
            policy=lambda: self.policy,
        )

    def open(self) -> tuple[Session, Transport]:
        t = Transport()
        s = Session(self.ctx, t, "127.0.0.1:1")  # type: ignore[arg-type]
        self.registry.add(s)
        return s, t

    async def settle(self) -> None:
        """Let tasks and the loop-iteration callbacks run until quiet."""
        for _ in range(20):
            await asyncio.sleep(0)
            self.clock.step()


@pytest.fixture
def harness() -> Any:
    return Harness


# -- the message rules, alone -------------------------------------------------------


def test_text_must_be_utf8() -> None:
    assert decode_text("é".encode()) == "é"
    with pytest.raises(FrameError) as e:
        decode_text(b"\xff\xfe")
    assert e.value.code == 1007 and "UTF-8" in e.value.reason


@pytest.mark.parametrize(
    ("payload", "code", "reason_part"),
    [
        (b"\x03", 1002, "1-byte"),
        (struct.pack("!H", 999), 1002, "invalid close code 999"),
        (struct.pack("!H", 1005), 1002, "invalid close code 1005"),
        (struct.pack("!H", 1006), 1002, "invalid close code 1006"),
        (struct.pack("!H", 2999), 1002, "invalid close code 2999"),
        (struct.pack("!H", 1000) + b"\xff", 1007, "not valid UTF-8"),
    ],
)
def test_bad_close_payloads_fail(payload: bytes, code: int, reason_part: str) -> None:
    with pytest.raises(FrameError) as e:
        close_from_payload(payload)
    assert e.value.code == code and reason_part in e.value.reason


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1014, 3000, 4999])
def test_good_close_payloads_are_echoed(code: int) -> None:
    c = close_from_payload(struct.pack("!H", code) + b"bye")
    assert c.code == code and c.reason == "client closed: bye"
    assert c.frame == b"\x88\x02" + struct.pack("!H", code)  # the code, not the reason
    empty = close_from_payload(b"")
    assert empty.code == 1005 and empty.frame == b"\x88\x00"


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_inflate_keeps_to_the_limit() -> None:
    assert inflate(zlib.decompressobj(-15), _deflate(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(FrameError) as e:
        inflate(zlib.decompressobj(-15), _deflate(b"x" * 101), 100)
    assert e.value.code == 1009 and "100 bytes" in e.value.reason
    with pytest.raises(FrameError) as e:
        inflate(zlib.decompressobj(-15), b"\xff\xff\xff\xff", 100)
    assert e.value.code == 1002


# -- the session ---------------------------------------------------------------------


async def test_a_ping_is_answered_in_the_same_iteration(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(json_frame({"action": "ping", "id": "p1"}))
    assert t.writes == []  # queued in the core, written at the end of the iteration
    h.clock.step()
    (pong,) = t.messages()
    assert pong["type"] == "pong" and pong["id"] == "p1"


async def test_subscribe_then_data_then_unsubscribe(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(json_frame({"action": "subscribe", "id": "1", "payload": {"types": ["t"]}}))
    h.clock.step()
    ack = t.messages()[-1]
    assert ack["type"] == "ack" and ack["payload"]["types"] == ["t"]
    await h.hub.publish("t", {"n": 1})
    h.clock.step()
    assert t.messages()[-1]["payload"] == {"n": 1}
    s.receive_data(json_frame({"action": "unsubscribe", "id": "2", "payload": {"types": ["t"]}}))
    h.clock.step()
    await h.hub.publish("t", {"n": 2})
    h.clock.advance(1.0)
    assert [m["type"] for m in t.messages()] == ["ack", "t", "ack"]


async def test_bad_json_gets_an_error_and_the_session_goes_on(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(client_frame(b'{"action": "subscribe",'))
    s.receive_data(json_frame({"action": "fly", "id": "7"}))
    s.receive_data(json_frame({"action": "ping", "id": "8"}))
    h.clock.step()
    first, second, pong = t.messages()
    assert first["type"] == "error" and first["payload"]["code"] == "invalid_json"
    assert second["type"] == "error" and "fly" in second["payload"]["message"]
    assert pong["type"] == "pong"
    assert t.close_code() is None and not s.closing
    assert h.counters.errors["invalid_json"] == 1


async def test_a_binary_frame_is_refused_with_an_error(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(client_frame(b"\x00\x01", 0x2))
    h.clock.step()
    (err,) = t.messages()
    assert "binary frames are not accepted" in err["payload"]["message"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(b"\xff\xfe"), 1007),  # text that is not UTF-8
        (client_frame(struct.pack("!H", 999), 0x8), 1002),  # a close code nobody may send
        (client_frame(b'{"action":"ping"}', mask=False), 1002),  # unmasked: the core's rule
    ],
)
async def test_protocol_errors_fail_the_session(harness: Any, data: bytes, code: int) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(data)
    assert t.close_code() == code
    assert s.closing and s.close_code == code
    assert "write_eof" in t.calls  # half-closed: the client's last bytes still read
    assert h.registry.events == ["unregister", "lingering"]
    assert h.core.subscriber_count == 0


async def test_a_close_frame_is_echoed_and_the_socket_waits_for_the_client(
    harness: Any,
) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(close_frame(1001, "bye"))
    assert t.close_code() == 1001
    assert s.close_reason == "client closed: bye"
    assert "abort" not in t.calls
    s.receive_data(json_frame({"action": "ping"}))  # after its close: ignored
    h.clock.step()
    assert t.messages() == []
    s.connection_lost(None)
    assert h.registry.events[-1] == "gone"


async def test_a_client_that_never_answers_our_close_is_aborted(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.close_soon(1001, "server shutting down")
    assert t.close_code() == 1001
    h.clock.advance(CLOSE_TIMEOUT - 0.01)
    assert "abort" not in t.calls
    h.clock.advance(0.02)
    assert "abort" in t.calls


async def test_publish_and_close_in_one_read_are_answered_in_order(harness: Any) -> None:
    h = harness(**{"websocket.allow_client_publish": True})
    s, t = h.open()
    s.receive_data(
        json_frame({"action": "publish", "id": "a", "payload": {"type": "t", "payload": 1}})
        + json_frame({"action": "ping", "id": "b"})
        + close_frame(1000)
    )
    assert t.close_code() is None  # the close waits behind the publish
    assert "pause_reading" in t.calls
    await h.settle()
    frames = t.frames()
    assert [op for op, _ in frames] == [0x1, 0x1, 0x8]
    ack, pong = t.messages()
    assert ack["payload"] == {"action": "publish", "type": "t", "seq": 1}
    assert pong["type"] == "pong" and pong["id"] == "b"
    assert t.close_code() == 1000
    assert h.counters.published_ws == 1


async def test_a_publish_is_refused_unless_allowed(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    s.receive_data(
        json_frame({"action": "publish", "id": "1", "payload": {"type": "t", "payload": 1}})
    )
    await h.settle()
    (err,) = t.messages()
    assert "allow_client_publish" in err["payload"]["message"]


async def test_reading_pauses_while_too_many_requests_wait(harness: Any) -> None:
    h = harness()
    s, t = h.open()
    history = json_frame({"action": "history", "payload": {"type": "t"}})
    s.receive_data(history * (MAX_WAITING_REQUESTS + 1))
    assert t.calls.count("pause_reading") == 1
    await h.settle()
    assert t.calls[-1] == "resume_reading"
    assert len(t.messages()) == MAX_WAITING_REQUESTS + 1


async def test_a_request_stuck_in_the_broker_is_bounded_by_close_timeout(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness(**{"websocket.allow_client_publish": True})
    stuck = asyncio.Event()

    async def never(*args: Any) -> Any:
        await stuck.wait()

    monkeypatch.setattr(h.hub, "publish_checked", never)
    s, t = h.open()
    s.receive_data(
        json_frame({"action": "publish", "payload": {"type": "t", "payload": 1}})
        + close_frame(1000)
    )
    await h.settle()
    assert t.close_code() is None
    h.clock.advance(session_module.CLOSE_TIMEOUT)
    assert t.close_code() == 1000
    s.connection_lost(None)  # the worker is cancelled with the socket
    await h.settle()


async def test_closing_one_client_writes_only_that_client(harness: Any) -> None:
    h = harness()
    a, ta = h.open()
    b, tb = h.open()
    frame = encode_frame(b'{"type":"t","payload":1}')
    h.core.send(a.sub, frame)  # queued for both, not yet flushed
    h.core.send(b.sub, frame)
    a.close_soon(1000, "bye")
    assert [op for op, _ in ta.frames()] == [0x1, 0x8]  # its data, then its close
    assert tb.writes == []  # the other connection waits for its own flush
    h.hub.flush()
    assert [op for op, _ in tb.frames()] == [0x1]
