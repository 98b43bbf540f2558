"""The core's reader of client frames (RFC 6455 section 5), through both twins.

Every rule a server must enforce on what a client sends has a test; the
compiled reader and the pure one must return the same messages and the same
error for random frame sequences cut at random places.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosrv.errors import FrameError
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
        # an absurd 64-bit length is refused from the header alone
        (frame(1, b"", length_form=64)[:2] + (2**63).to_bytes(8, "big"), 1009, "more than"),
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


def test_partial_frame_waits(impl: ModuleType) -> None:
    r = impl.FrameReader(1000)
    data = frame(1, b"x" * 300)
    assert r.feed(data[:3]) == []  # not even the extended length yet
    assert r.feed(data[3:100]) == []
    assert r.buffered == 100
    assert r.feed(data[100:]) == [(1, b"x" * 300, False)]
    assert r.buffered == 0


# -- the twins agree -----------------------------------------------------------

frames = st.lists(
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
