"""The compiled core and its pure-Python twin behave identically.

Both are built from one source (``aiosrv/_fanout_py.py``), but the compiled
build gives that source C types (``_core/_fanout_c.pxd``) and its own wire
module: integer widths, typed arguments and the pointer code could still make
them differ, and these tests would see it.

Random operation sequences (subscriptions with and without keys, publishes of
every frame-length class, with and without a compressed alternative frame,
subscribers that negotiated permessage-deflate or not, replies, flushes, writes
of one subscriber, slow and failing transports, small send-buffer limits) are
applied to both implementations in lockstep, each with its own identical
transports; after every step the return values, the bytes each transport
received, the receivers and their order, the counters and every subscriber's
state must be the same. The transports are fakes in one test, and in the other
real non-blocking Unix socket pairs with a small send buffer behind a minimal
transport, whose peers read, stop reading and close, so that the kernel takes
part of a write, refuses the rest, and backpressure and broken pipes happen
(a Unix stream socket is synchronous, so both twins' kernels behave the same).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.conftest import COMPILED, NO_EXTENSIONS, PURE, FakeTransport, decode_frames

if not NO_EXTENSIONS:
    # A missing or broken extension fails collection here, it is never skipped.
    py = importlib.import_module(PURE)
    c = importlib.import_module(COMPILED)

TYPES = ["a", "b"]
KEYS = ["k1", "k2", "k3"]
BIG = [125, 126, 127, 300, 65535, 65536, 70000]


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """one_of with integer weights (each weight is a distinct branch)."""
    branches = [st.just(None).flatmap(lambda _, s=s: s) for w, s in choices for _ in range(w)]
    return st.one_of(branches)


# Frames of 10, 20, 40, 50 and 100 bytes add up to the limits and buffer sizes
# below exactly, so "at the limit" and "one byte over" both happen.
round_size = st.sampled_from([8, 18, 38, 48, 98])
small_size = st.one_of(round_size, st.integers(0, 140))
payload_size = weighted((3, round_size), (2, st.integers(0, 140)), (1, st.sampled_from(BIG)))
sub_index = st.integers(0, 7)
type_name = st.sampled_from(TYPES)
key_or_none = st.one_of(st.none(), st.sampled_from(KEYS), st.just("unused"))
keys_filter = st.one_of(st.none(), st.lists(st.sampled_from(KEYS), max_size=4))
limit = st.sampled_from([1, 40, 40, 100, 100, 150, 300, 1000, 70000, 1 << 20])
buffer_size = st.sampled_from([0, 0, 10, 50, 100, 200, 1000])
# heartbeat settings: ticks of 5 ms to 1 s, wheels of a few to a few hundred buckets
intervals = st.sampled_from([0.04, 0.5, 1.0, 3.0, 7.5, 30.0, 60.0])

operation = weighted(
    (8, st.tuples(st.just("publish"), type_name, key_or_none, payload_size)),
    (3, st.tuples(st.just("flush"), st.sampled_from([-1, -1, 0, 1, 2, 5]))),
    (2, st.tuples(st.just("buffer"), sub_index, buffer_size)),
    (1, st.tuples(st.just("send"), sub_index, payload_size)),
    (1, st.tuples(st.just("write"), sub_index)),
    (1, st.tuples(st.just("send_all"), small_size)),
    (1, st.tuples(st.just("subscribe"), sub_index, type_name, keys_filter)),
    (1, st.tuples(st.just("unsubscribe"), sub_index, type_name)),
    (1, st.tuples(st.just("add"), limit)),
    (1, st.tuples(st.just("remove"), sub_index)),
    (1, st.tuples(st.just("fail_write"), sub_index, st.booleans())),
    (1, st.tuples(st.just("fail_size"), sub_index, st.booleans())),
    (1, st.tuples(st.just("take"))),
    (1, st.tuples(st.just("seen"), sub_index, st.integers(0, 10))),
    (1, st.tuples(st.just("deflate"), sub_index, st.booleans())),
    (2, st.tuples(st.just("heartbeat"), st.integers(0, 200), small_size)),
    (1, st.tuples(st.just("configure_heartbeat"), intervals, intervals, st.integers(0, 200))),
)
operations = st.lists(operation, min_size=10, max_size=80)

# subscribers to start with: (limit, [(type, keys or None), ...]) each
setup = st.lists(
    st.tuples(limit, st.lists(st.tuples(type_name, keys_filter), min_size=1, max_size=3)),
    min_size=1,
    max_size=5,
)


class LoggedTransport(FakeTransport):
    """A FakeTransport that also records, in one log per world, who was written
    to and when: the order of writes across subscribers must match too."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name = name
        self.log = log

    def write(self, data: bytes) -> None:
        super().write(data)
        self.log.append((self.name, len(data)))

    def received(self) -> list[bytes]:
        return list(self.writes)


class World:
    """One implementation's FanOut with its subscribers and their transports."""

    def __init__(self, impl) -> None:
        self.impl = impl
        self.fan = impl.FanOut()
        self.subs: list = []
        self.transports: list = []
        self.log: list[tuple[str, int]] = []

    def transport(self, name: str):
        return LoggedTransport(name, self.log)

    def sub(self, i: int):
        return self.subs[i % len(self.subs)] if self.subs else None

    def apply(self, op: tuple, counter: int):
        """Run one operation; returns a comparable result."""
        kind = op[0]
        fan = self.fan
        if kind == "add":
            name = f"s{len(self.subs)}"
            t = self.transport(name)
            # every third subscriber negotiated permessage-deflate
            s = self.impl.Subscriber(name, t, op[1], None, len(self.subs) % 3 == 1)
            self.subs.append(s)
            self.transports.append(t)
            return fan.add(s)
        if kind == "publish":
            frame = self.impl.encode_frame(bytes([counter % 256]) * op[3])
            if counter % 2:
                return (frame, fan.publish(op[1], op[2], frame))
            # a distinct "compressed" frame, to check who gets which
            alt = self.impl.encode_frame(bytes([(counter + 1) % 256]) * (op[3] // 2))
            return (frame, alt, fan.publish(op[1], op[2], frame, alt))
        if kind == "send_all":
            frame = self.impl.encode_frame(bytes([counter % 256]) * op[1], self.impl.OP_PING)
            return (frame, fan.send_all(frame))
        if kind == "flush":
            return fan.flush(op[1])
        if kind == "take":
            return [s.conn_id for s in fan.take_to_close()]
        if kind == "heartbeat":
            # times in tenths of a second, so buckets come due in any order
            frame = self.impl.encode_frame(bytes([counter % 256]) * op[2], self.impl.OP_PING)
            return (frame, [s.conn_id for s in fan.heartbeat(op[1] / 10, frame)])
        if kind == "configure_heartbeat":
            fan.configure_heartbeat(op[1], op[2], op[3] / 10)
            return fan.heartbeat_tick
        s = self.sub(op[1])
        if s is None:
            return "no subscriber"
        i = self.subs.index(s)
        if kind == "subscribe":
            return fan.subscribe(s, op[2], op[3])
        if kind == "unsubscribe":
            return fan.unsubscribe(s, op[2])
        if kind == "remove":
            return fan.remove(s)
        if kind == "write":
            return fan.write(s)
        if kind == "send":
            frame = self.impl.encode_frame(bytes([counter % 256]) * op[2])
            return (frame, fan.send(s, frame))
        if kind == "buffer":
            self.transports[i].buffer_size = op[2]
            return None
        if kind == "fail_write":
            self.transports[i].fail_write = op[2]
            return None
        if kind == "fail_size":
            self.transports[i].fail_size = op[2]
            return None
        if kind == "deflate":
            s.deflate = op[2]
            return None
        if kind == "seen":
            s.last_seen = float(op[2]) * 2
            return None
        raise AssertionError(f"unknown operation {op!r}")

    def snapshot(self) -> dict:
        fan = self.fan
        receivers = {
            (t, k): [s.conn_id for s in fan.receivers(t, k)]
            for t in TYPES
            for k in [None, *KEYS, "unused"]
        }
        subs = [
            {
                "conn_id": s.conn_id,
                "state": s.state,
                "overflowed": s.overflowed,
                "closed": s.closed,
                "pending_bytes": s.pending_bytes,
                "pending_frames": s.pending_frames,
                "transport_buffered": s.transport_buffered,
                "subscription_count": s.subscription_count,
                "types": s.types(),
                "filters": {t: s.filter_for(t) for t in TYPES},
                "subscribed": {t: s.is_subscribed(t) for t in TYPES},
                "last_seen": s.last_seen,
                "limit": s.limit,
                "deflate": s.deflate,
                "repr": repr(s),
                "received": self.transports[i].received(),
            }
            for i, s in enumerate(self.subs)
        ]
        return {
            "published": fan.published,
            "pings": fan.pings,
            "heartbeat_tick": fan.heartbeat_tick,
            "delivered": fan.delivered,
            "writes": fan.writes,
            "overflows": fan.overflows,
            "dropped_bytes": fan.dropped_bytes,
            "deflate_count": fan.deflate_count,
            "subscriber_count": fan.subscriber_count,
            "dirty_count": fan.dirty_count,
            "subscribers": [s.conn_id for s in fan.subscribers()],
            "subscription_count": fan.subscription_count(),
            "type_counts": fan.type_counts(),
            "pending_bytes_total": fan.pending_bytes_total(),
            "buffered_bytes_total": fan.buffered_bytes_total(),
            "receivers": receivers,
            "subs": subs,
            "write_log": list(self.log),
        }


def outcome(world: World, op: tuple, counter: int):
    try:
        return ("ok", world.apply(op, counter))
    except Exception as exc:  # both must fail the same way, if at all
        return ("raised", type(exc).__name__, str(exc))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(setup, operations)
def test_implementations_agree_on_random_operations(start, ops):
    worlds = [World(py), World(c)]
    first = []
    for i, (sub_limit, subscriptions) in enumerate(start):
        first.append(("add", sub_limit))
        first.extend(("subscribe", i, t, keys) for t, keys in subscriptions)
    for counter, op in enumerate([*first, *ops]):
        results = [outcome(w, op, counter) for w in worlds]
        assert results[0] == results[1], op
        assert results[0][0] == "ok", results[0]
        snapshots = [w.snapshot() for w in worlds]
        assert snapshots[0] == snapshots[1], op
    # a final flush hands everything over, and the bytes are well-formed frames
    assert worlds[0].fan.flush() == worlds[1].fan.flush()
    for t0, t1 in zip(worlds[0].transports, worlds[1].transports, strict=True):
        assert t0.writes == t1.writes
        decode_frames(t0.data)


opcodes = st.integers(0, 255)
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, b: bytes([b]) * n, st.sampled_from(BIG), st.integers(0, 255)),
)


@settings(max_examples=200, deadline=None)
@given(payloads, opcodes)
def test_encode_frame_identical(payload, opcode):
    frame = py.encode_frame(payload, opcode)
    assert c.encode_frame(payload, opcode) == frame
    assert decode_frames(frame) == [(opcode & 0x0F, payload)]
    if opcode == 1:
        assert c.encode_frame(payload) == py.encode_frame(payload) == frame


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.text(max_size=200))
def test_encode_close_identical(code, reason):
    try:
        expected = py.encode_close(code, reason)
    except UnicodeEncodeError:  # lone surrogates cannot be sent
        with pytest.raises(UnicodeEncodeError):
            c.encode_close(code, reason)
        return
    assert c.encode_close(code, reason) == expected
    ((opcode, payload),) = decode_frames(expected)
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == code
    text = payload[2:].decode("utf-8")
    assert len(payload) <= 125
    assert reason.startswith(text)
    raw = reason.encode("utf-8")
    if len(raw) <= 123:
        assert text == reason
    else:
        # the longest prefix of whole characters that fits
        assert len(payload[2:]) > 119
        assert len((text + reason[len(text)]).encode("utf-8")) > 123


def test_both_twins_define_the_same_public_names():
    names = set(py.__all__)
    assert names <= set(dir(c)), sorted(names - set(dir(c)))
    stub = (importlib.resources.files("aiosrv") / "_fanout_c.pyi").read_text()
    assert all(f" {n} as {n}," in stub for n in names)
    for n in names:
        if isinstance(getattr(py, n), (int, float)):
            assert getattr(c, n) == getattr(py, n), n


# -- the write path over real sockets ----------------------------------------------


class SocketTransport:
    """The two transport methods the core calls, over a real non-blocking Unix
    socket pair, as asyncio's selector transport implements them: ``write``
    tries the socket at once when nothing is buffered and keeps what the
    kernel refuses; :meth:`drain` (the loop's "writable" callback) sends the
    buffer later. The peer end reads into :attr:`got` while it is reading."""

    SNDBUF = 4096  # the kernel doubles it; a few frames fill it

    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log
        self.sock, self.peer = socket.socketpair()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SNDBUF)
        self.sock.setblocking(False)
        self.peer.setblocking(False)
        self.buffer = bytearray()
        self.got = bytearray()
        self.reading = True
        self.peer_closed = False

    def write(self, data: bytes) -> None:
        assert type(data) is bytes
        self.log.append((self.name, len(data)))
        if not self.buffer:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            # BrokenPipeError (the peer closed) propagates: the transport is gone
            data = data[sent:]
        self.buffer += data

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def drain(self) -> int:
        """Send what the buffer holds while the kernel takes it; returns the
        bytes sent, or -1 when the socket is broken (the buffer is dropped, as
        a transport does when its connection is lost)."""
        sent = 0
        while self.buffer:
            try:
                n = self.sock.send(self.buffer)
            except BlockingIOError:
                break
            except OSError:
                self.buffer.clear()
                return -1
            del self.buffer[:n]
            sent += n
        return sent

    def read(self, limit: int) -> int:
        """The peer reads up to ``limit`` bytes, if it is reading."""
        if not self.reading or self.peer_closed:
            return 0
        before = len(self.got)
        while len(self.got) - before < limit:
            try:
                chunk = self.peer.recv(min(65536, limit - (len(self.got) - before)))
            except BlockingIOError:
                break
            if not chunk:
                break
            self.got += chunk
        return len(self.got) - before

    def close_peer(self) -> None:
        if not self.peer_closed:
            self.peer_closed = True
            self.peer.close()

    def received(self) -> bytes:
        return bytes(self.got)

    def close(self) -> None:
        self.sock.close()
        self.peer.close()


class SocketWorld(World):
    """A World whose subscribers write to real sockets."""

    def transport(self, name: str) -> SocketTransport:
        return SocketTransport(name, self.log)

    def apply(self, op: tuple, counter: int):
        kind = op[0]
        if kind not in {"drain", "read", "reading", "close_peer"}:
            return super().apply(op, counter)
        if not self.subs:
            return "no subscriber"
        t = self.transports[op[1] % len(self.transports)]
        if kind == "drain":
            return t.drain()
        if kind == "read":
            return t.read(op[2])
        if kind == "reading":
            t.reading = op[2]
            return None
        t.close_peer()
        return None

    def close(self) -> None:
        for t in self.transports:
            t.close()


socket_payload_size = weighted(
    (2, round_size), (2, st.integers(0, 3000)), (2, st.sampled_from([5000, 9000, 20000, 70000]))
)
socket_limit = st.sampled_from([1, 100, 1000, 9000, 20000, 70000, 1 << 20, 1 << 20])
socket_operation = weighted(
    (8, st.tuples(st.just("publish"), type_name, key_or_none, socket_payload_size)),
    (3, st.tuples(st.just("flush"), st.sampled_from([-1, -1, 0, 1, 2, 5]))),
    (1, st.tuples(st.just("send"), sub_index, socket_payload_size)),
    (1, st.tuples(st.just("write"), sub_index)),
    (1, st.tuples(st.just("send_all"), small_size)),
    (1, st.tuples(st.just("subscribe"), sub_index, type_name, keys_filter)),
    (1, st.tuples(st.just("unsubscribe"), sub_index, type_name)),
    (1, st.tuples(st.just("add"), socket_limit)),
    (1, st.tuples(st.just("remove"), sub_index)),
    (1, st.tuples(st.just("take"))),
    (1, st.tuples(st.just("seen"), sub_index, st.integers(0, 10))),
    (1, st.tuples(st.just("deflate"), sub_index, st.booleans())),
    (1, st.tuples(st.just("heartbeat"), st.integers(0, 200), small_size)),
    (3, st.tuples(st.just("drain"), sub_index)),
    (3, st.tuples(st.just("read"), sub_index, st.sampled_from([100, 3000, 20000, 1 << 20]))),
    (2, st.tuples(st.just("reading"), sub_index, st.booleans())),
    (1, st.tuples(st.just("close_peer"), sub_index)),
)
socket_setup = st.lists(
    st.tuples(socket_limit, st.lists(st.tuples(type_name, keys_filter), min_size=1, max_size=3)),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(socket_setup, st.lists(socket_operation, min_size=10, max_size=80))
def test_implementations_agree_over_real_sockets(start, ops):
    worlds = [SocketWorld(py), SocketWorld(c)]
    try:
        first = []
        for i, (sub_limit, subscriptions) in enumerate(start):
            first.append(("add", sub_limit))
            first.extend(("subscribe", i, t, keys) for t, keys in subscriptions)
        for counter, op in enumerate([*first, *ops]):
            results = [outcome(w, op, counter) for w in worlds]
            assert results[0] == results[1], op
            assert results[0][0] == "ok", results[0]
            snapshots = [w.snapshot() for w in worlds]
            assert snapshots[0] == snapshots[1], op
        # Everything still pending goes out; the peers that are open read it all.
        assert worlds[0].fan.flush() == worlds[1].fan.flush()
        for w in worlds:
            for t in w.transports:
                t.reading = True
                while t.drain() > 0 or t.read(1 << 20) > 0:
                    pass
        assert worlds[0].snapshot() == worlds[1].snapshot()
        for w in worlds:
            for t in w.transports:
                if not t.peer_closed:
                    assert not t.buffer
                    decode_frames(t.received())
    finally:
        for w in worlds:
            w.close()


# -- arguments of every kind ---------------------------------------------------------

ODD = [None, 0, 1, True, 1.5, "x", b"x", bytearray(b"x"), 2**40, -1, 10**30]
ENTRY_POINTS = {
    "encode_frame(payload)": lambda m, v: m.encode_frame(v),
    "encode_frame(opcode)": lambda m, v: m.encode_frame(b"x", v),
    "encode_frame(rsv1)": lambda m, v: m.encode_frame(b"x", 1, v),
    "encode_close(code)": lambda m, v: m.encode_close(v),
    "encode_close(reason)": lambda m, v: m.encode_close(1000, v),
    "unmask(data)": lambda m, v: m.unmask(v, b"abcd"),
    "unmask(mask)": lambda m, v: m.unmask(b"abc", v),
    "Subscriber(conn_id)": lambda m, v: repr(m.Subscriber(v, None, 1)),
    "Subscriber(limit)": lambda m, v: m.Subscriber("a", None, v).limit,
    "Subscriber(deflate)": lambda m, v: m.Subscriber("a", None, 1, None, v).deflate,
    "FrameReader(max_size)": lambda m, v: m.FrameReader(v).max_size,
    "FrameReader(deflate)": lambda m, v: m.FrameReader(10, v).deflate,
    "FrameReader.feed": lambda m, v: m.FrameReader(10).feed(v),
    "configure_heartbeat(interval)": lambda m, v: m.FanOut().configure_heartbeat(v, 1, 0),
    "configure_heartbeat(now)": lambda m, v: m.FanOut().configure_heartbeat(1, 1, v),
    "heartbeat(now)": lambda m, v: m.FanOut().heartbeat(v, b""),
    "heartbeat(ping)": lambda m, v: m.FanOut().heartbeat(1.0, v),
    "publish(type, key)": lambda m, v: m.FanOut().publish(v, v, b""),
    "publish(frame)": lambda m, v: m.FanOut().publish("t", None, v),
    "publish(frame_deflate)": lambda m, v: m.FanOut().publish("t", None, b"", v),
    "send_all": lambda m, v: m.FanOut().send_all(v),
    "subscribe(keys)": lambda m, v: m.FanOut().subscribe(m.Subscriber("a", None, 1), "t", v),
    "add": lambda m, v: m.FanOut().add(v),
    "write": lambda m, v: m.FanOut().write(v),
}


def attempt(module, call, value):
    try:
        return ("ok", call(module, value))
    except Exception as exc:
        return ("raised", type(exc).__name__)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_twins_agree_on_arguments_of_every_kind(name):
    """The same result or the same exception type, for None, floats, big and
    negative integers, strings and bytes-likes passed where other types belong."""
    call = ENTRY_POINTS[name]
    for value in ODD:
        assert attempt(py, call, value) == attempt(c, call, value), value


# -- one source, compiled with the compiled wire module ----------------------------

CORE_SOURCES = [  # setup.py's CORE_MODULES, in its order
    "_core/_wire_c.pyx",
    "_core/_wire_c.pxd",
    "aiosrv/_fanout_py.py",
    "_core/_fanout_c.pxd",
]


def test_the_compiled_core_is_built_from_the_current_source():
    """The extension carries a digest of the sources it was compiled from. An
    editable install does not rebuild when aiosrv/_fanout_py.py changes: this
    fails then, instead of comparing the new source against an old build."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in CORE_SOURCES:
        digest.update((root / path).read_bytes())
    assert digest.hexdigest() == c._BUILT_FROM, (
        "aiosrv._fanout_c was built from other sources: rebuild it "
        "(rm .venv/.installed && make setup)"
    )


def test_the_compiled_core_calls_only_the_compiled_wire_module(monkeypatch):
    """``_wire.<name>`` in the source is the pure module when run as Python and
    a C call into aiosrv._wire_c when compiled; none of the compiled core's
    paths may reach the pure functions."""
    wire_py = importlib.import_module("aiosrv._wire_py")
    assert py._wire is wire_py

    def refuse(*args, **kwargs):
        raise AssertionError("the compiled core called aiosrv._wire_py")

    for name in wire_py.__all__:
        if callable(getattr(wire_py, name)):
            monkeypatch.setattr(wire_py, name, refuse)
    assert c.encode_frame(b"x" * 70000)[:2] == b"\x81\x7f"
    assert c.encode_close(1000, "bye") == b"\x88\x05\x03\xe8bye"
    assert c.unmask(b"\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02"
    mask = b"\x01\x02\x03\x04"
    frames = b""
    for opcode, fin, payload in [(1, False, b"a" * 200), (9, True, b"p"), (0, True, b"b" * 70000)]:
        n = len(payload)
        length = bytes([n]) if n < 126 else (
            b"\x7e" + n.to_bytes(2, "big") if n < 65536 else b"\x7f" + n.to_bytes(8, "big")
        )
        head = bytes([(0x80 if fin else 0) | opcode, 0x80 | length[0]]) + length[1:]
        frames += head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    reader = c.FrameReader(1 << 20)
    got = reader.feed(frames[:7]) + reader.feed(frames[7:300]) + reader.feed(frames[300:])
    assert got == [(9, b"p", False), (1, b"a" * 200 + b"b" * 70000, False)]
    fan = c.FanOut()
    sub = c.Subscriber("s", FakeTransport(), 1 << 20)
    fan.add(sub)
    fan.subscribe(sub, "t")
    assert fan.publish("t", None, c.encode_frame(b"m")) == 1
    assert fan.heartbeat(31.0, c.encode_frame(b"", c.OP_PING)) == []
    assert fan.flush() == 1
