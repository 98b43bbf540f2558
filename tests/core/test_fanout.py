"""The fan-out core (FanOut, Subscriber, encode_frame, encode_close), run against
both implementations through the ``impl`` fixture of ``conftest.py``."""

from __future__ import annotations

import pytest

from tests.core.conftest import FakeTransport, decode_frames

# -- frames -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (127, b"\x81\x7e\x00\x7f"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (70000, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70"),
    ],
)
def test_encode_frame_header_by_length(impl, n, header):
    payload = bytes(i % 251 for i in range(n))
    frame = impl.encode_frame(payload)
    assert type(frame) is bytes
    assert frame[: len(header)] == header
    assert frame[len(header) :] == payload
    assert len(frame) == len(header) + n


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_encode_frame_header_decoded_per_rfc6455(impl, n):
    payload = b"x" * n
    frame = impl.encode_frame(payload)
    b0, b1 = frame[0], frame[1]
    assert b0 >> 7 == 1  # FIN
    assert (b0 >> 4) & 0x7 == 0  # RSV1-3
    assert b0 & 0x0F == 0x1  # text
    assert b1 >> 7 == 0  # MASK: server frames are never masked
    length7 = b1 & 0x7F
    if n <= 125:
        assert length7 == n
        offset = 2
    elif n <= 65535:
        assert length7 == 126
        assert frame[2] * 256 + frame[3] == n
        offset = 4
    else:
        assert length7 == 127
        value = 0
        for b in frame[2:10]:
            value = value * 256 + b
        assert value == n
        assert frame[2] & 0x80 == 0  # most significant bit must be 0
        offset = 10
    assert frame[offset:] == payload
    assert decode_frames(frame) == [(1, payload)]


def test_opcode_constants(impl):
    assert (impl.OP_CONT, impl.OP_TEXT, impl.OP_BINARY) == (0x0, 0x1, 0x2)
    assert (impl.OP_CLOSE, impl.OP_PING, impl.OP_PONG) == (0x8, 0x9, 0xA)
    assert (impl.STATE_OPEN, impl.STATE_OVERFLOWED, impl.STATE_CLOSED) == (0, 1, 2)


@pytest.mark.parametrize(
    ("opcode", "first"),
    [(0x0, 0x80), (0x1, 0x81), (0x2, 0x82), (0x8, 0x88), (0x9, 0x89), (0xA, 0x8A), (0x12, 0x82)],
)
def test_encode_frame_opcodes(impl, opcode, first):
    assert impl.encode_frame(b"hi", opcode) == bytes((first, 2)) + b"hi"


def test_encode_frame_default_opcode_is_text(impl):
    assert impl.encode_frame(b'{"a":1}') == b'\x81\x07{"a":1}'


def test_encode_close_code_only(impl):
    assert impl.encode_close(1000) == b"\x88\x02\x03\xe8"
    assert impl.encode_close(4000, "") == b"\x88\x02\x0f\xa0"


def test_encode_close_code_and_reason(impl):
    frame = impl.encode_close(1013, "slow consumer")
    assert frame == b"\x88\x0f\x03\xf5slow consumer"
    assert decode_frames(frame) == [(0x8, b"\x03\xf5slow consumer")]


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        ("a" * 123, "a" * 123),  # exactly the limit: unchanged
        ("a" * 124, "a" * 123),  # one byte over: cut
        ("a" * 500, "a" * 123),
        ("\u00e9" * 62, "\u00e9" * 61),  # 124 bytes of 2-byte chars: 122 kept
        ("a" + "\u00e9" * 62, "a" + "\u00e9" * 61),  # 125 bytes: 123 kept, no split
        ("\u20ac" * 41, "\u20ac" * 41),  # 123 bytes of 3-byte chars: unchanged
        ("\u20ac" * 42, "\u20ac" * 41),
        ("a" + "\u20ac" * 41, "a" + "\u20ac" * 40),  # byte 123 inside a 3-byte char
        ("ab" + "\u20ac" * 41, "ab" + "\u20ac" * 40),
        ("\U0001f600" * 31, "\U0001f600" * 30),  # 4-byte chars: 120 kept
        ("abc" + "\U0001f600" * 30, "abc" + "\U0001f600" * 30),  # 123 bytes exactly
    ],
)
def test_encode_close_reason_truncation(impl, reason, kept):
    frame = impl.encode_close(1001, reason)
    ((opcode, payload),) = decode_frames(frame)
    assert opcode == 0x8
    assert payload[:2] == b"\x03\xe9"
    assert payload[2:].decode("utf-8") == kept
    assert len(payload) <= 125


# -- helpers ------------------------------------------------------------------


def make_sub(impl, fan, conn_id="c1", limit=1 << 20, buffer_size=0, owner=None):
    sub = impl.Subscriber(conn_id, FakeTransport(buffer_size), limit, owner)
    fan.add(sub)
    return sub


def frame_of(impl, size, tag=0):
    """A text frame of exactly ``size`` bytes (``size`` >= 2, < 128)."""
    return impl.encode_frame(bytes([65 + tag % 26]) * (size - 2))


def ids(subs):
    return [s.conn_id for s in subs]


# -- subscriber ----------------------------------------------------------------


def test_new_subscriber_state(impl):
    t = FakeTransport()
    owner = object()
    sub = impl.Subscriber("abc", t, 4096, owner)
    assert sub.conn_id == "abc"
    assert sub.transport is t
    assert sub.limit == 4096
    assert sub.owner is owner
    assert sub.last_seen == 0.0
    assert sub.state == impl.STATE_OPEN
    assert sub.overflowed is False
    assert sub.closed is False
    assert sub.pending_bytes == 0
    assert sub.pending_frames == 0
    assert sub.transport_buffered == 0
    assert sub.subscription_count == 0
    assert sub.types() == []
    assert sub.is_subscribed("t") is False
    assert sub.filter_for("t") is None
    assert impl.Subscriber("x", t, 1).owner is None
    assert repr(sub) == "<Subscriber abc state=0 pending=0>"


# -- subscription index ----------------------------------------------------------


def test_subscribe_unkeyed(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t")
    assert a.is_subscribed("t")
    assert a.filter_for("t") is None
    assert a.types() == ["t"]
    assert a.subscription_count == 1
    assert ids(fan.receivers("t")) == ["a"]
    assert ids(fan.receivers("t", "any-key")) == ["a"]
    assert fan.receivers("other") == []
    assert fan.type_counts() == {"t": 1}
    assert fan.subscription_count() == 1


def test_subscribe_keyed_counts_one_per_key(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t", ["k1", "k2", "k1", "k3"])
    assert b.filter_for("t") == ("k1", "k2", "k3")
    assert b.subscription_count == 3
    assert fan.subscription_count() == 4
    assert ids(fan.receivers("t")) == ["a"]
    assert ids(fan.receivers("t", "k1")) == ["a", "b"]
    assert ids(fan.receivers("t", "k3")) == ["a", "b"]
    assert ids(fan.receivers("t", "zz")) == ["a"]
    # a keyed subscriber is counted once for its type, whatever its key count
    assert fan.type_counts() == {"t": 2}


def test_keys_accept_any_iterable(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t", iter(("x", "y")))
    assert a.filter_for("t") == ("x", "y")
    assert ids(fan.receivers("t", "y")) == ["a"]


def test_receivers_order_type_subscribers_then_key_subscribers(impl, fan):
    subs = [make_sub(impl, fan, name) for name in "abcde"]
    fan.subscribe(subs[3], "t", ["k"])
    fan.subscribe(subs[1], "t")
    fan.subscribe(subs[0], "t", ["k", "j"])
    fan.subscribe(subs[4], "t")
    fan.subscribe(subs[2], "t", ["j"])
    assert ids(fan.receivers("t")) == ["b", "e"]
    assert ids(fan.receivers("t", "k")) == ["b", "e", "d", "a"]
    assert ids(fan.receivers("t", "j")) == ["b", "e", "a", "c"]


def test_resubscribe_replaces_filter(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "x")
    fan.subscribe(a, "t", ["k1"])
    fan.subscribe(a, "y")
    # keyed -> other keys
    fan.subscribe(a, "t", ["k2"])
    assert a.filter_for("t") == ("k2",)
    assert fan.receivers("t", "k1") == []
    assert ids(fan.receivers("t", "k2")) == ["a"]
    # keyed -> every message of the type
    fan.subscribe(a, "t")
    assert a.filter_for("t") is None
    assert ids(fan.receivers("t")) == ["a"]
    assert ids(fan.receivers("t", "k2")) == ["a"]  # once, not twice
    # unkeyed -> keyed
    fan.subscribe(a, "t", ["k3", "k4"])
    assert fan.receivers("t") == []
    assert ids(fan.receivers("t", "k3")) == ["a"]
    assert a.subscription_count == 4  # x, y, k3, k4
    assert fan.type_counts() == {"x": 1, "y": 1, "t": 1}
    # the type keeps its place: types() is in first-subscribed order
    assert a.types() == ["x", "t", "y"]


def test_resubscribe_delivers_once(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t", ["k"])
    fan.subscribe(a, "t")
    assert fan.publish("t", "k", b"\x81\x00") == 1
    assert a.pending_frames == 1


def test_unsubscribe(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(a, "u", ["k"])
    fan.subscribe(b, "u", ["k", "j"])
    assert fan.unsubscribe(a, "t") is True
    assert fan.unsubscribe(a, "t") is False
    assert fan.unsubscribe(a, "never") is False
    assert fan.type_counts() == {"u": 2}
    assert fan.unsubscribe(a, "u") is True
    assert a.types() == []
    assert a.subscription_count == 0
    assert fan.receivers("t") == []
    assert ids(fan.receivers("u", "k")) == ["b"]
    assert fan.type_counts() == {"u": 1}
    assert fan.unsubscribe(b, "u") is True
    assert fan.type_counts() == {}
    assert fan.receivers("u", "k") == []
    assert fan.subscription_count() == 0
    assert fan.subscriber_count == 2  # still registered


def test_remove_returns_subscription_count_and_cleans_index(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(a, "u", ["k1", "k2"])
    fan.subscribe(b, "u", ["k1"])
    fan.publish("t", None, b"\x81\x01x")
    assert a.pending_frames == 1
    assert fan.remove(a) == 3
    assert a.state == impl.STATE_CLOSED
    assert a.closed is True
    assert a.types() == []
    assert a.pending_bytes == 0
    assert a.pending_frames == 0
    assert fan.subscriber_count == 1
    assert ids(fan.subscribers()) == ["b"]
    assert fan.receivers("t") == []
    assert ids(fan.receivers("u", "k1")) == ["b"]
    assert fan.receivers("u", "k2") == []
    assert fan.type_counts() == {"u": 1}
    assert fan.subscription_count() == 1
    # nothing reaches it any more, and its pending frame was dropped
    assert fan.flush() == 0
    assert a.transport.writes == []
    assert fan.publish("t", None, b"\x81\x00") == 0
    assert fan.send(a, b"\x81\x00") is False
    assert fan.send_all(b"\x89\x00") == 1
    assert fan.remove(a) == 0  # twice is harmless


def test_registry(impl, fan):
    assert fan.subscriber_count == 0
    a = make_sub(impl, fan, "a")
    make_sub(impl, fan, "b")
    fan.add(a)  # idempotent, keeps its place
    assert fan.subscriber_count == 2
    assert ids(fan.subscribers()) == ["a", "b"]


# -- publish and flush ---------------------------------------------------------------


def test_publish_returns_receiver_count_and_counts(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    c = make_sub(impl, fan, "c")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t", ["k"])
    fan.subscribe(c, "u")
    f = impl.encode_frame(b"m")
    assert fan.publish("t", "k", f) == 2
    assert fan.publish("t", None, f) == 1
    assert fan.publish("t", "other", f) == 1
    assert fan.publish("nobody", None, f) == 0
    assert fan.publish("u", "k", f) == 1
    assert fan.published == 5
    assert fan.delivered == 5
    assert (a.pending_frames, b.pending_frames, c.pending_frames) == (3, 1, 1)
    assert fan.writes == 0  # nothing written before flush


def test_key_filtering(impl, fan):
    keyed = make_sub(impl, fan, "keyed")
    everyone = make_sub(impl, fan, "all")
    fan.subscribe(keyed, "prices", ["BTC", "ETH"])
    fan.subscribe(everyone, "prices")
    frames = {}
    for i, key in enumerate(["BTC", None, "XRP", "ETH", None, "BTC"]):
        frames[i] = impl.encode_frame(f"{i}".encode())
        fan.publish("prices", key, frames[i])
    fan.publish("other", "BTC", impl.encode_frame(b"nope"))
    fan.flush()
    assert keyed.transport.writes == [frames[0] + frames[3] + frames[5]]
    assert everyone.transport.writes == [b"".join(frames[i] for i in range(6))]


def test_flush_coalesces_one_write_per_dirty_subscriber(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    idle = make_sub(impl, fan, "idle")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    fan.subscribe(idle, "u")
    frames = [impl.encode_frame(f"msg-{i}".encode()) for i in range(5)]
    for f in frames:
        fan.publish("t", None, f)
    assert fan.dirty_count == 2
    assert a.pending_frames == 5
    assert a.pending_bytes == sum(map(len, frames))
    assert fan.pending_bytes_total() == 2 * sum(map(len, frames))
    assert fan.flush() == 2
    assert a.transport.writes == [b"".join(frames)]
    assert b.transport.writes == [b"".join(frames)]
    assert idle.transport.writes == []
    assert fan.writes == 2
    assert fan.dirty_count == 0
    assert a.pending_frames == 0
    assert a.pending_bytes == 0
    assert fan.pending_bytes_total() == 0
    assert [p for _, p in decode_frames(a.transport.data)] == [
        f"msg-{i}".encode() for i in range(5)
    ]
    # nothing dirty: no write at all
    assert fan.flush() == 0
    assert fan.writes == 2


def test_single_frame_is_written_without_copy(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t")
    f = impl.encode_frame(b"shared")
    fan.publish("t", None, f)
    fan.flush()
    assert a.transport.writes[0] is f


def test_order_preserved_across_flushes(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t")
    for i in range(10):
        fan.publish("t", None, impl.encode_frame(str(i).encode()))
        if i % 3 == 0:
            fan.flush()
    fan.flush()
    assert len(a.transport.writes) == 4
    assert [p for _, p in decode_frames(a.transport.data)] == [str(i).encode() for i in range(10)]


def test_flush_with_a_limit_writes_the_first_dirty_and_keeps_the_rest_in_line(impl, fan):
    subs = [make_sub(impl, fan, f"s{i}") for i in range(5)]
    for s in subs:
        fan.subscribe(s, "t")
    one = impl.encode_frame(b"1")
    fan.publish("t", None, one)
    assert fan.dirty_count == 5
    assert fan.flush(2) == 2
    assert [len(s.transport.writes) for s in subs] == [1, 1, 0, 0, 0]
    assert fan.dirty_count == 3
    # a message now: the two written get it at the end of the line, the three
    # waiting carry it in their first write
    two = impl.encode_frame(b"2")
    fan.publish("t", None, two)
    assert fan.dirty_count == 5
    assert fan.flush(3) == 3
    assert [s.transport.writes for s in subs[2:]] == [[one + two]] * 3
    assert [len(s.transport.writes) for s in subs[:2]] == [1, 1]
    assert fan.flush(0) == 0
    assert fan.flush(-1) == 2
    assert [s.transport.writes for s in subs[:2]] == [[one, two]] * 2
    assert fan.dirty_count == 0
    assert fan.flush(10) == 0


def test_send_interleaves_replies_with_data(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    d1, r1, d2, r2 = (impl.encode_frame(x) for x in (b"d1", b"r1", b"d2", b"r2"))
    fan.publish("t", None, d1)
    assert fan.send(a, r1) is True
    fan.publish("t", None, d2)
    assert fan.send(a, r2) is True
    assert fan.published == 2
    assert fan.delivered == 4  # replies are not counted as deliveries
    assert fan.flush() == 2
    assert a.transport.writes == [d1 + r1 + d2 + r2]
    assert b.transport.writes == [d1 + d2]


def test_send_to_unsubscribed_subscriber(impl, fan):
    a = make_sub(impl, fan, "a")
    pong = impl.encode_frame(b"", impl.OP_PONG)
    assert fan.send(a, pong) is True
    assert fan.flush() == 1
    assert a.transport.writes == [b"\x8a\x00"]


def test_send_all(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    c = make_sub(impl, fan, "c")
    fan.subscribe(a, "t")
    data = impl.encode_frame(b"d")
    ping = impl.encode_frame(b"", impl.OP_PING)
    fan.publish("t", None, data)
    fan.remove(c)
    assert fan.send_all(ping) == 2
    assert fan.flush() == 2
    assert a.transport.writes == [data + b"\x89\x00"]
    assert b.transport.writes == [b"\x89\x00"]
    assert c.transport.writes == []


def test_buffered_bytes_total(impl, fan):
    a = make_sub(impl, fan, "a", buffer_size=7)
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    fan.publish("t", None, b"\x81\x03abc")
    fan.flush()
    assert a.transport_buffered == 7
    fan.publish("t", None, b"\x81\x01z")
    assert fan.pending_bytes_total() == 6
    assert fan.buffered_bytes_total() == 7 + 3 + 3


# -- limits and overflow -------------------------------------------------------------


def test_pending_within_limit_is_not_written_before_flush(impl, fan):
    a = make_sub(impl, fan, "a", limit=120)
    fan.subscribe(a, "t")
    for i in range(3):
        assert fan.publish("t", None, frame_of(impl, 40, i)) == 1
    assert a.pending_bytes == 120  # exactly the limit is not over it
    assert a.transport.writes == []
    assert fan.writes == 0


def test_pending_over_limit_is_written_first(impl, fan):
    a = make_sub(impl, fan, "a", limit=100)
    fan.subscribe(a, "t")
    f1, f2, f3 = (frame_of(impl, 40, i) for i in range(3))
    fan.publish("t", None, f1)
    fan.publish("t", None, f2)
    assert fan.publish("t", None, f3) == 1
    # the 80 pending bytes went to the transport, which took them all
    assert a.transport.writes == [f1 + f2]
    assert fan.writes == 1
    assert a.pending_bytes == 40
    assert a.pending_frames == 1
    assert a.state == impl.STATE_OPEN
    assert fan.flush() == 1
    assert a.transport.writes == [f1 + f2, f3]
    assert fan.overflows == 0
    assert fan.take_to_close() == []


def test_buffered_within_limit_does_not_overflow(impl, fan):
    a = make_sub(impl, fan, "a", limit=100, buffer_size=60)
    fan.subscribe(a, "t")
    f1, f2, f3 = (frame_of(impl, 40, i) for i in range(3))
    fan.publish("t", None, f1)
    fan.publish("t", None, f2)
    assert fan.publish("t", None, f3) == 1  # 60 buffered + 40 = 100: at the limit
    assert a.transport_buffered == 60
    assert a.state == impl.STATE_OPEN
    assert a.pending_frames == 1


def test_overflow_when_transport_still_buffers(impl, fan):
    a = make_sub(impl, fan, "a", limit=100, buffer_size=70)
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    f1, f2, f3, f4 = (frame_of(impl, 40, i) for i in range(4))
    fan.publish("t", None, f1)
    fan.publish("t", None, f2)
    assert fan.publish("t", None, f3) == 1  # b only: a is 70 buffered + 40 > 100
    assert a.transport.writes == [f1 + f2]  # what was pending was handed over first
    assert a.state == impl.STATE_OVERFLOWED
    assert a.overflowed is True
    assert a.closed is True
    assert a.pending_bytes == 0
    assert a.pending_frames == 0
    assert fan.overflows == 1
    assert fan.dropped_bytes == 70  # pending (0 after the write) + transport-buffered
    assert fan.delivered == 2 + 2 + 1
    assert ids(fan.take_to_close()) == ["a"]
    assert fan.take_to_close() == []  # reported once
    # later publishes skip it
    assert fan.publish("t", None, f4) == 1
    assert fan.send(a, f4) is False
    assert fan.send_all(f4) == 1
    fan.flush()
    assert a.transport.writes == [f1 + f2]
    assert b.transport.writes == [f1 + f2 + f3 + f4 + f4]
    assert fan.overflows == 1
    assert fan.take_to_close() == []
    # still registered until the caller removes it; removing keeps the state
    assert fan.subscriber_count == 2
    assert fan.remove(a) == 1
    assert a.state == impl.STATE_OVERFLOWED


def test_big_frame_is_delivered_when_nothing_is_buffered(impl, fan):
    a = make_sub(impl, fan, "a", limit=100)
    fan.subscribe(a, "t")
    big = impl.encode_frame(b"B" * 300)
    assert fan.publish("t", None, big) == 1
    assert a.pending_bytes == 304
    assert fan.flush() == 1
    assert a.transport.writes == [big]
    assert a.state == impl.STATE_OPEN
    # again, with a small frame pending before it: the small one is written first
    small = frame_of(impl, 10)
    fan.publish("t", None, small)
    assert fan.publish("t", None, big) == 1
    assert a.transport.writes == [big, small]
    fan.flush()
    assert a.transport.writes == [big, small, big]
    assert fan.overflows == 0


def test_big_frame_overflows_when_transport_buffers(impl, fan):
    a = make_sub(impl, fan, "a", limit=100)
    fan.subscribe(a, "t")
    fan.publish("t", None, frame_of(impl, 10))
    a.transport.buffer_size = 1
    fan.flush()
    assert a.transport_buffered == 1
    assert fan.publish("t", None, impl.encode_frame(b"B" * 300)) == 0
    assert a.overflowed
    assert fan.dropped_bytes == 1
    assert ids(fan.take_to_close()) == ["a"]


def test_stale_transport_buffer_is_refreshed_before_judging(impl, fan):
    a = make_sub(impl, fan, "a", limit=100, buffer_size=90)
    fan.subscribe(a, "t")
    f = frame_of(impl, 40)
    fan.publish("t", None, f)
    fan.flush()
    assert a.transport_buffered == 90
    calls = a.transport.size_calls
    a.transport.buffer_size = 0  # the kernel took it meanwhile
    assert fan.publish("t", None, f) == 1
    assert a.transport.size_calls == calls + 1
    assert a.transport_buffered == 0
    assert a.state == impl.STATE_OPEN
    assert a.transport.writes == [f]  # nothing pending: no write, only the size query
    assert a.pending_frames == 1


def test_overflow_counters_add_up(impl, fan):
    subs = [make_sub(impl, fan, name, limit=50, buffer_size=30) for name in "abc"]
    for s in subs:
        fan.subscribe(s, "t")
    f = frame_of(impl, 30)
    assert fan.publish("t", None, f) == 3
    assert fan.publish("t", None, f) == 0  # 30 pending + 30 > 50: write, 30 buffered + 30 > 50
    assert fan.overflows == 3
    assert fan.dropped_bytes == 90
    assert ids(fan.take_to_close()) == ["a", "b", "c"]


def test_write_failure_closes_and_reports(impl, fan):
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    f = impl.encode_frame(b"x")
    fan.publish("t", None, f)
    a.transport.fail_write = True
    fan.flush()
    assert a.state == impl.STATE_CLOSED
    assert a.closed is True
    assert a.overflowed is False
    assert a.pending_frames == 0
    assert b.transport.writes == [f]
    assert fan.writes == 1  # only b's write counts
    assert fan.overflows == 0
    assert ids(fan.take_to_close()) == ["a"]
    assert fan.take_to_close() == []
    assert fan.publish("t", None, f) == 1
    assert fan.send(a, f) is False
    assert fan.flush() == 1
    assert ids(fan.take_to_close()) == []


def test_write_failure_during_publish_spares_other_receivers(impl, fan):
    a = make_sub(impl, fan, "a", limit=50)
    b = make_sub(impl, fan, "b", limit=50)
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    f = frame_of(impl, 30)
    fan.publish("t", None, f)
    a.transport.fail_write = True
    assert fan.publish("t", None, f) == 1  # a's write is forced and fails; b still gets it
    assert a.state == impl.STATE_CLOSED
    assert ids(fan.take_to_close()) == ["a"]
    assert b.transport.writes == [f]
    assert b.pending_frames == 1


def test_buffer_size_failure_closes_and_reports(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t")
    fan.publish("t", None, b"\x81\x00")
    a.transport.fail_size = True
    fan.flush()
    assert a.state == impl.STATE_CLOSED
    assert ids(fan.take_to_close()) == ["a"]


def test_buffer_size_failure_without_pending_spares_other_receivers(impl, fan):
    # a has buffered bytes on the books and nothing pending: the next frame over
    # its limit makes the core ask the transport again, which fails
    a = make_sub(impl, fan, "a", limit=50, buffer_size=40)
    b = make_sub(impl, fan, "b", limit=50)
    fan.subscribe(a, "t")
    fan.subscribe(b, "t")
    f = frame_of(impl, 20)
    fan.publish("t", None, f)
    fan.flush()
    assert a.transport_buffered == 40
    a.transport.fail_size = True
    assert fan.publish("t", None, f) == 1
    assert a.state == impl.STATE_CLOSED
    assert ids(fan.take_to_close()) == ["a"]
    assert b.pending_frames == 1
    assert fan.delivered == 3


def test_heartbeat_reports_silent_open_subscribers(impl, fan):
    # the default settings: ping every 30 s, time out after 60 s of silence
    a = make_sub(impl, fan, "a")
    b = make_sub(impl, fan, "b")
    c = make_sub(impl, fan, "c")
    d = make_sub(impl, fan, "d")
    # traffic after registration moves nothing in the wheel: last_seen is read
    # when a bucket comes due
    a.last_seen = 10.0
    b.last_seen = 20.0
    c.last_seen = 5.0
    d.last_seen = 1.0
    fan.remove(d)
    ping = impl.encode_frame(b"", impl.OP_PING)
    assert ids(fan.heartbeat(64.0, ping)) == []
    assert ids(fan.heartbeat(65.0, ping)) == ["c"]  # silent for exactly 60 s
    assert ids(fan.heartbeat(75.0, ping)) == ["a"]
    # closed subscribers are not reported
    fan.subscribe(b, "t")
    b.transport.fail_write = True
    fan.publish("t", None, b"\x81\x00")
    fan.flush()
    assert ids(fan.take_to_close()) == ["b"]
    assert ids(fan.heartbeat(100.0, ping)) == []
    assert fan.pings == 3  # a, b and c at 30 s (b's failed write was the ping's)


# -- misuse never crashes the process --------------------------------------------------


# Every entry point whose compiled signature is typed refuses a wrong argument
# with TypeError before it changes anything, in both builds: the compiled one
# checks the C types, the Python one checks explicitly.
MISUSE = {
    "encode_frame(None)": lambda impl, fan, a: impl.encode_frame(None),
    "encode_frame(bytearray)": lambda impl, fan, a: impl.encode_frame(bytearray(b"x")),
    "encode_frame(opcode=None)": lambda impl, fan, a: impl.encode_frame(b"x", None),
    "encode_close(None)": lambda impl, fan, a: impl.encode_close(None),
    "encode_close(float)": lambda impl, fan, a: impl.encode_close(1000.0),
    "encode_close(reason=None)": lambda impl, fan, a: impl.encode_close(1000, None),
    "encode_close(reason=bytes)": lambda impl, fan, a: impl.encode_close(1000, b"bye"),
    "unmask(None, mask)": lambda impl, fan, a: impl.unmask(None, b"abcd"),
    "unmask(data, None)": lambda impl, fan, a: impl.unmask(b"x", None),
    "Subscriber(limit=None)": lambda impl, fan, a: impl.Subscriber("x", FakeTransport(), None),
    "Subscriber(limit=float)": lambda impl, fan, a: impl.Subscriber("x", FakeTransport(), 1.5),
    "FrameReader(None)": lambda impl, fan, a: impl.FrameReader(None),
    "FrameReader(float)": lambda impl, fan, a: impl.FrameReader(1e6),
    "FrameReader.feed(None)": lambda impl, fan, a: impl.FrameReader(100).feed(None),
    "add(None)": lambda impl, fan, a: fan.add(None),
    "remove(None)": lambda impl, fan, a: fan.remove(None),
    "subscribe(None)": lambda impl, fan, a: fan.subscribe(None, "t"),
    "unsubscribe(None)": lambda impl, fan, a: fan.unsubscribe(None, "t"),
    "send(None, frame)": lambda impl, fan, a: fan.send(None, b"\x81\x00"),
    "send(sub, None)": lambda impl, fan, a: fan.send(a, None),
    "send(sub, bytearray)": lambda impl, fan, a: fan.send(a, bytearray(b"\x81\x00")),
    "write(None)": lambda impl, fan, a: fan.write(None),
    "write(not a subscriber)": lambda impl, fan, a: fan.write(object()),
    "publish(frame=None)": lambda impl, fan, a: fan.publish("t", None, None),
    "publish(frame=bytearray)": lambda impl, fan, a: fan.publish("t", None, bytearray(b"\x81\x00")),
    "publish(frame_deflate=bytearray)": lambda impl, fan, a: fan.publish(
        "t", None, b"\x81\x00", bytearray(b"\xc1\x00")
    ),
    "send_all(None)": lambda impl, fan, a: fan.send_all(None),
    "heartbeat(now=None)": lambda impl, fan, a: fan.heartbeat(None, b"\x89\x00"),
    "heartbeat(ping=None)": lambda impl, fan, a: fan.heartbeat(100.0, None),
    "configure_heartbeat(None)": lambda impl, fan, a: fan.configure_heartbeat(None, 60.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(MISUSE))
def test_typed_entry_points_refuse_wrong_arguments(impl, fan, name):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t")
    fan.publish("t", None, b"\x81\x00")
    def state():
        return (fan.published, fan.delivered, fan.writes, a.pending_frames, fan.heartbeat_tick)

    before = state()
    with pytest.raises(TypeError):
        MISUSE[name](impl, fan, a)
    assert state() == before
    assert fan.subscriber_count == 1 and a.state == impl.STATE_OPEN
    assert fan.flush() == 1


def test_none_where_the_signature_allows_it(impl, fan):
    a = make_sub(impl, fan, "a")
    fan.subscribe(a, "t", None)
    assert fan.publish("t", None, b"\x81\x00", None) == 1
    assert impl.Subscriber("x", FakeTransport(), 10, None).owner is None
    assert fan.receivers("t", None) == [a]
