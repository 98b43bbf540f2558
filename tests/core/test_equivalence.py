"""The compiled core and its pure-Python twin behave identically.

Random operation sequences (subscriptions with and without keys, publishes of
every frame-length class, with and without a compressed alternative frame,
subscribers that negotiated permessage-deflate or not, replies, flushes, slow
and failing transports, small send-buffer limits) are applied to both
implementations in lockstep, each with its own identical fake transports; after
every step the return values, the bytes each transport received, the receivers
and their order, the counters and every subscriber's state must be the same.
"""

from __future__ import annotations

import importlib
import importlib.resources

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
    (3, st.tuples(st.just("flush"))),
    (2, st.tuples(st.just("buffer"), sub_index, buffer_size)),
    (1, st.tuples(st.just("send"), sub_index, payload_size)),
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


class World:
    """One implementation's FanOut with its subscribers and their transports."""

    def __init__(self, impl) -> None:
        self.impl = impl
        self.fan = impl.FanOut()
        self.subs: list = []
        self.transports: list[FakeTransport] = []
        self.log: list[tuple[str, int]] = []

    def sub(self, i: int):
        return self.subs[i % len(self.subs)] if self.subs else None

    def apply(self, op: tuple, counter: int):
        """Run one operation; returns a comparable result."""
        kind = op[0]
        fan = self.fan
        if kind == "add":
            name = f"s{len(self.subs)}"
            t = LoggedTransport(name, self.log)
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
            return fan.flush()
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
                "writes": list(self.transports[i].writes),
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
