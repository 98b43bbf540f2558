"""The core's reader of client frames (RFC 6455 section 5), through both twins.

Every rule a server must enforce on what a client sends has a test; the
compiled reader and the pure one must return the same messages and the same
error for random frame sequences cut at random places.
"""

from __future__ import annotations

import importlib
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosrv.errors import MAX_FRAGMENTS, CloseCode, FrameError
from tests.core.conftest import COMPILED, NO_EXTENSIONS, PURE

MASK = b"\x12\x34\x56\x78"


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length_form: int | None = None,
) -> bytes:
    """A client frame; ``length_form`` forces the 16- or 64-bit length field."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask is not None else 0
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    if form == 7:
        head = bytes([b0, m | n])
    elif form == 16:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def feed_all(reader, data: bytes, cuts: list[int] | None = None) -> list:
    out = []
    if not cuts:
        return reader.feed(data)
    pos = 0
    for cut in sorted(set(cuts)):
        out += reader.feed(data[pos:cut])
        pos = cut
    out += reader.feed(data[pos:])
    return out


def test_unmask_is_its_own_inverse(impl: ModuleType) -> None:
    data = os.urandom(1000)
    assert impl.unmask(impl.unmask(data, MASK), MASK) == data
    assert impl.unmask(b"", MASK) == b""
    for n in range(20):  # every tail length around the 8-byte word loop
        chunk = data[:n]
        assert impl.unmask(chunk, MASK) == bytes(b ^ MASK[i % 4] for i, b in enumerate(chunk))


def test_messages_of_every_length_form(impl: ModuleType) -> None:
    r = impl.FrameReader(200_000)
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536]
    data = b"".join(frame(1, p) for p in payloads)
    assert r.feed(data) == [(1, p, False) for p in payloads]
    assert r.error is None and r.buffered == 0
    # a non-minimal length field is read as what it says
    assert r.feed(frame(1, b"abc", length_form=64)) == [(1, b"abc", False)]


def test_byte_by_byte_gives_the_same_messages(impl: ModuleType) -> None:
    data = frame(1, b"hello") + frame(9, b"ping!") + frame(2, b"\x00" * 300)
    r = impl.FrameReader(1000)
    out = []
    for i in range(len(data)):
        out += r.feed(data[i : i + 1])
        assert r.buffered <= i + 1
    assert out == [(1, b"hello", False), (9, b"ping!", False), (2, b"\x00" * 300, False)]
    assert r.buffered == 0


def test_fragments_are_joined_and_control_frames_pass_between(impl: ModuleType) -> None:
    r = impl.FrameReader(1000)
    data = (
        frame(1, b"one ", fin=False)
        + frame(9, b"p")
        + frame(0, b"two ", fin=False)
        + frame(10, b"")
        + frame(0, b"three")
    )
    assert r.feed(data) == [(9, b"p", False), (10, b"", False), (1, b"one two three", False)]


def test_rsv1_marks_a_compressed_message_when_negotiated(impl: ModuleType) -> None:
    r = impl.FrameReader(1000, True)
    data = frame(1, b"abc", fin=False, rsv=0x40) + frame(0, b"def")
    assert r.feed(data) == [(1, b"abcdef", True)]
    assert r.feed(frame(1, b"plain")) == [(1, b"plain", False)]


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (frame(1, b"x", mask=None), 1002, "masked"),
        (frame(1, b"x", rsv=0x20), 1002, "RSV2 or RSV3"),
        (frame(1, b"x", rsv=0x10), 1002, "RSV2 or RSV3"),
        (frame(1, b"x", rsv=0x40), 1002, "permessage-deflate was not negotiated"),
        (frame(3, b"x"), 1002, "unknown opcode 0x3"),
        (frame(11, b"x"), 1002, "unknown opcode 0xb"),
        (frame(9, b"x", fin=False), 1002, "must not be fragmented"),
        (frame(9, b"x" * 126), 1002, "at most 125 bytes"),
        (frame(0, b"x"), 1002, "no fragmented message"),
        (frame(1, b"a", fin=False) + frame(1, b"b"), 1002, "before the fragmented message"),
        (frame(1, b"x" * 101), 1009, "more than 100 bytes"),
        (frame(1, b"x" * 60, fin=False) + frame(0, b"y" * 41), 1009, "more than 100 bytes"),
        # an absurd 64-bit length is refused from the header alone: 1009 when
        # it is only too big, 1002 when its most significant bit is set (RFC
        # 6455 5.2: "the most significant bit MUST be 0")
        (frame(1, b"", length_form=64)[:2] + (2**47).to_bytes(8, "big"), 1009, "more than"),
        (frame(1, b"", length_form=64)[:2] + (2**63 - 1).to_bytes(8, "big"), 1009, "more than"),
        (frame(1, b"", length_form=64)[:2] + (2**63).to_bytes(8, "big"), 1002, "significant bit"),
        (frame(2, b"", length_form=64)[:2] + (2**64 - 1).to_bytes(8, "big"), 1002, "significant"),
        (frame(9, b"", length_form=64)[:2] + (2**63 + 5).to_bytes(8, "big"), 1002, "significant"),
        (
            frame(1, b"a", fin=False) + frame(0, b"", length_form=64)[:2] + b"\x80" + bytes(7),
            1002,
            "significant bit",
        ),
    ],
)
def test_violations_stop_the_reader_with_their_code(
    impl: ModuleType, data: bytes, code: int, words: str
) -> None:
    r = impl.FrameReader(100)
    before = frame(1, b"fine")
    assert r.feed(before + data) == [(1, b"fine", False)]
    assert isinstance(r.error, FrameError)
    assert r.error.code == code
    assert words in r.error.reason
    # a stopped reader takes nothing more
    assert r.feed(frame(1, b"after")) == []
    assert r.buffered == 0


def test_rsv1_on_control_and_continuation_frames(impl: ModuleType) -> None:
    r = impl.FrameReader(100, True)
    r.feed(frame(9, b"", rsv=0x40))
    assert r.error == FrameError(1002, "RSV1 set on a control frame")
    r = impl.FrameReader(100, True)
    r.feed(frame(1, b"a", fin=False) + frame(0, b"b", rsv=0x40))
    assert r.error == FrameError(1002, "RSV1 set on a continuation frame")


def test_oversized_frame_refused_before_its_payload_arrives(impl: ModuleType) -> None:
    r = impl.FrameReader(1000)
    head = frame(2, b"x" * 5000)[:8]  # the header and mask only
    assert r.feed(head) == []
    assert r.error is not None and r.error.code == 1009


def test_top_bit_length_is_refused_once_its_header_is_in(impl: ModuleType) -> None:
    # the top bit set on a length that is otherwise small: still 1002, and
    # told from the header alone, byte by byte, before any payload or mask
    data = frame(1, b"abc", length_form=64)
    bad = data[:2] + bytes([data[2] | 0x80]) + data[3:]
    r = impl.FrameReader(1000)
    for i in range(9):
        assert r.feed(bad[i : i + 1]) == []
        assert r.error is None
    assert r.feed(bad[9:10]) == []
    assert r.error == FrameError(
        1002, "64-bit payload length with its most significant bit set (RFC 6455 5.2)"
    )
    assert r.error.code == CloseCode.PROTOCOL_ERROR
    assert r.buffered == 0


def test_partial_frame_waits(impl: ModuleType) -> None:
    r = impl.FrameReader(1000)
    data = frame(1, b"x" * 300)
    assert r.feed(data[:3]) == []  # not even the extended length yet
    assert r.feed(data[3:100]) == []
    assert r.buffered == 100
    assert r.feed(data[100:]) == [(1, b"x" * 300, False)]
    assert r.buffered == 0


# -- fragments: memory and count ------------------------------------------------


TOO_MANY_FRAGMENTS = FrameError(1009, f"message in more than {MAX_FRAGMENTS} fragments (the limit)")


def fragmented(op: int, parts: list[bytes], between: bytes = b"") -> bytes:
    """A data message in ``len(parts)`` frames, ``between`` after each but the last."""
    last = len(parts) - 1
    return b"".join(
        frame(op if i == 0 else 0, p, fin=i == last) + (between if i < last else b"")
        for i, p in enumerate(parts)
    )


@contextmanager
def traced() -> Iterator[list[int]]:
    """Bytes allocated (and still held) inside the block, and their peak:
    ``[held, peak]``, filled in when the block ends. tracemalloc sees the
    compiled core's allocations too (they go through Python's allocators)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    result = [0, 0]
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield result
        held, peak = tracemalloc.get_traced_memory()
        result[:] = [held - base, peak - base]
    finally:
        if started:
            tracemalloc.stop()


def test_one_byte_fragments_are_stopped_by_the_cap_and_cost_nothing_per_fragment(
    impl: ModuleType,
) -> None:
    # A 64 KiB message as 65,536 one-byte fragments, fed as a socket delivers
    # it: a list of one bytes object per fragment held 2.7 MiB (42 times the
    # limit); now the reader stops at fragment MAX_FRAGMENTS + 1 and holds none.
    limit = 1 << 16
    data = fragmented(1, [b"x"] * limit)
    chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    r = impl.FrameReader(limit)
    out = []
    with traced() as mem:
        for chunk in chunks:
            out += r.feed(chunk)
    held, peak = mem
    assert out == []
    assert r.error == TOO_MANY_FRAGMENTS
    assert r.error.code == CloseCode.MESSAGE_TOO_BIG
    assert held < limit // 4, held
    assert peak < limit // 2, peak


def test_fragments_are_held_as_their_payload_bytes(impl: ModuleType) -> None:
    # MAX_FRAGMENTS fragments of 64 bytes make a message of exactly the limit:
    # held before the last one, at most the payload and the bytearray's growth
    # margin (an eighth), where an object per fragment cost 1.65 times the
    # payload; at the last one, that plus the message handed out.
    size = 64
    limit = MAX_FRAGMENTS * size
    parts = [bytes([65 + i % 26]) * size for i in range(MAX_FRAGMENTS)]
    data = fragmented(2, parts)
    last = len(frame(0, parts[-1]))
    r = impl.FrameReader(limit)
    with traced() as mem:
        for i in range(0, len(data) - last, 1000):
            assert r.feed(data[i : min(i + 1000, len(data) - last)]) == []
    held, _ = mem
    assert r.error is None
    assert held <= limit * 1.2, held
    with traced() as mem:
        out = r.feed(data[len(data) - last :])
    held, peak = mem
    assert out == [(2, b"".join(parts), False)]
    # the message out (the limit) is all that is left; the bytearray is gone
    assert held <= limit + 4096, held
    assert peak <= limit * 2.5, peak


@pytest.mark.parametrize("size", [0, 1])
def test_exactly_max_fragments_make_a_message(impl: ModuleType, size: int) -> None:
    parts = [b"y" * size] * MAX_FRAGMENTS
    r = impl.FrameReader(1 << 20)
    assert r.feed(fragmented(1, parts)) == [(1, b"y" * size * MAX_FRAGMENTS, False)]
    assert r.error is None
    # the count starts again with the next message
    assert r.feed(fragmented(1, parts)) == [(1, b"y" * size * MAX_FRAGMENTS, False)]
    assert r.feed(frame(1, b"single")) == [(1, b"single", False)]
    assert r.error is None


@pytest.mark.parametrize("size", [0, 1])
def test_one_fragment_more_than_max_fragments_closes_1009(impl: ModuleType, size: int) -> None:
    parts = [b"z" * size] * (MAX_FRAGMENTS + 1)
    data = frame(1, b"before") + fragmented(1, parts) + frame(1, b"after")
    r = impl.FrameReader(1 << 20)
    assert r.feed(data) == [(1, b"before", False)]
    assert r.error == TOO_MANY_FRAGMENTS
    assert "1024 fragments" in r.error.reason
    assert r.buffered == 0
    assert r.feed(frame(1, b"later")) == []


def test_the_fragment_cap_is_known_from_the_frame_header(impl: ModuleType) -> None:
    # the header of fragment MAX_FRAGMENTS + 1 fails the message: its payload
    # (here far bigger than what is fed) is never waited for
    r = impl.FrameReader(1 << 20)
    # MAX_FRAGMENTS frames of a message (the final one of MAX_FRAGMENTS + 1 cut off)
    assert r.feed(fragmented(1, [b"a"] * (MAX_FRAGMENTS + 1))[:-7]) == []
    assert r.error is None
    assert r.feed(frame(0, b"b" * 70_000)[:14]) == []
    assert r.error is not None and r.error.code == 1009 and "fragments" in r.error.reason


def test_control_frames_between_fragments_do_not_count(impl: ModuleType) -> None:
    ping, pong = frame(9, b"p"), frame(10, b"")
    parts = [b"%d," % i for i in range(MAX_FRAGMENTS)]
    data = fragmented(1, parts, between=ping + pong)
    r = impl.FrameReader(1 << 20)
    out = feed_all(r, data, list(range(0, len(data), 777)))
    controls = [(9, b"p", False), (10, b"", False)] * (MAX_FRAGMENTS - 1)
    assert out == [*controls, (1, b"".join(parts), False)]
    assert r.error is None
    # and with one more data frame the cap still applies
    r = impl.FrameReader(1 << 20)
    out = r.feed(fragmented(1, [*parts, b"!"], between=ping))
    assert out == [(9, b"p", False)] * MAX_FRAGMENTS
    assert r.error is not None and r.error.code == 1009


def test_a_compressed_message_is_handed_out_whole(impl: ModuleType) -> None:
    # RSV1 on the first fragment: the continuations' bytes are appended to it
    # as received (the caller inflates the whole message)
    import zlib

    text = b'{"action": "ping", "id": "' + b"c" * 5000 + b'"}'
    comp = zlib.compressobj(wbits=-15)
    body = comp.compress(text) + comp.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]  # RFC 7692 7.2.1: the final 00 00 ff ff are removed
    parts = [body[i : i + 3] for i in range(0, len(body), 3)]
    assert 1 < len(parts) <= MAX_FRAGMENTS
    first = frame(1, parts[0], fin=False, rsv=0x40)
    rest = b"".join(frame(0, p, fin=i == len(parts) - 2) for i, p in enumerate(parts[1:]))
    r = impl.FrameReader(len(body), True)
    ((opcode, payload, compressed),) = feed_all(r, first + rest, [5, 50, 51, 300])
    assert (opcode, compressed) == (1, True)
    assert payload == body
    assert zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff") == text
    # the size limit is on the compressed bytes as received
    r = impl.FrameReader(len(body) - 1, True)
    assert r.feed(first + rest) == []
    assert r.error is not None and r.error.code == 1009


# -- the twins agree -----------------------------------------------------------

frames = st.lists(
    st.one_of(
        st.builds(
            lambda op, payload, fin, rsv, masked: frame(
                op, payload, fin=fin, rsv=rsv, mask=MASK if masked else None
            ),
            st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11]),
            st.one_of(st.binary(max_size=140), st.binary(min_size=200, max_size=70_000)),
            st.booleans(),
            st.sampled_from([0, 0, 0, 0x40, 0x10]),
            st.sampled_from([True, True, True, False]),
        ),
        # now and then a header with any 64-bit length (the top bit too)
        st.builds(
            lambda op, n: bytes([op, 0xFF]) + n.to_bytes(8, "big") + MASK,
            st.sampled_from([0x00, 0x80, 0x81, 0x82, 0x89]),
            st.integers(0, 2**64 - 1),
        ),
    ),
    max_size=12,
)


@pytest.mark.skipif(NO_EXTENSIONS, reason="a pure-Python run has no compiled twin")
@settings(max_examples=300, deadline=None)
@given(frames, st.lists(st.integers(0, 200_000), max_size=6), st.booleans(), st.integers(0, 80_000))
def test_twins_agree_on_random_frames(chunks, cuts, deflate, max_size):
    py = importlib.import_module(PURE)
    c = importlib.import_module(COMPILED)
    data = b"".join(chunks)
    a = py.FrameReader(max_size, deflate)
    b = c.FrameReader(max_size, deflate)
    cuts = [x for x in cuts if x < len(data)]
    assert feed_all(a, data, cuts) == feed_all(b, data, cuts)
    assert a.error == b.error
    assert a.buffered == b.buffered
