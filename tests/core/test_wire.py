"""The wire module, the only hand-written Cython of the core (``_core/_wire_c.pyx``)
and its pure twin (``aiosrv/_wire_py.py``): each is checked against a plain
reference written here, so both passes of the suite test whichever twins they
have, and the twins agree because each agrees with the reference."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.conftest import NO_EXTENSIONS

WIRES = ["aiosrv._wire_py"] if NO_EXTENSIONS else ["aiosrv._wire_py", "aiosrv._wire_c"]
MAX_LENGTH = (1 << 47) - 1


# Imported at collection: a missing or broken extension fails, never skips.
each_wire = pytest.mark.parametrize(
    "wire", [importlib.import_module(name) for name in WIRES], ids=lambda m: m.__name__[7:]
)


def ref_unmask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def ref_header(buf: bytes, pos: int) -> int:
    b0, b1 = buf[pos], buf[pos + 1]
    n = b1 & 0x7F
    if n == 126:
        if len(buf) - pos < 4:
            return -1
        n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
    elif n == 127:
        if len(buf) - pos < 10:
            return -1
        n = min(int.from_bytes(buf[pos + 2 : pos + 10], "big"), MAX_LENGTH)
    return n << 16 | b1 << 8 | b0


@each_wire
def test_both_twins_have_the_same_names(wire: ModuleType) -> None:
    names = ["MAX_LENGTH", "encode_frame", "read_header", "unmask", "unmask_append", "unmask_at"]
    assert sorted(wire.__all__) == names
    assert wire.MAX_LENGTH == MAX_LENGTH


@each_wire
@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.binary(max_size=300), st.sampled_from([b"x" * 65535, b"y" * 65536])),
    st.integers(0, 255),
    st.booleans(),
)
def test_encode_frame(wire: ModuleType, payload: bytes, opcode: int, rsv1: bool) -> None:
    n = len(payload)
    first = bytes([0x80 | (0x40 if rsv1 else 0) | (opcode & 0x0F)])
    if n < 126:
        head = first + bytes([n])
    elif n < 65536:
        head = first + b"\x7e" + n.to_bytes(2, "big")
    else:
        head = first + b"\x7f" + n.to_bytes(8, "big")
    assert wire.encode_frame(payload, opcode, rsv1) == head + payload


@each_wire
@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4))
def test_unmask(wire: ModuleType, data: bytes, mask: bytes) -> None:
    assert wire.unmask(data, mask) == ref_unmask(data, mask)


@each_wire
@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=4, max_size=200), st.data(), st.booleans())
def test_unmask_at(wire: ModuleType, buf: bytes, data: st.DataObject, as_bytearray: bool) -> None:
    start = data.draw(st.integers(4, len(buf)))
    length = data.draw(st.integers(0, len(buf) - start))
    got = wire.unmask_at(bytearray(buf) if as_bytearray else buf, start, length)
    assert got == ref_unmask(buf[start : start + length], buf[start - 4 : start])


@each_wire
@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=50), st.binary(min_size=4, max_size=200), st.data(), st.booleans())
def test_unmask_append(
    wire: ModuleType, before: bytes, buf: bytes, data: st.DataObject, as_bytearray: bool
) -> None:
    start = data.draw(st.integers(4, len(buf)))
    length = data.draw(st.integers(0, len(buf) - start))
    out = bytearray(before)
    got = wire.unmask_append(out, bytearray(buf) if as_bytearray else buf, start, length)
    assert out == before + ref_unmask(buf[start : start + length], buf[start - 4 : start])
    assert got == len(out)


@each_wire
def test_unmask_append_grows_one_bytearray(wire: ModuleType) -> None:
    # the fragments of a message: each one's payload after its own mask
    out = bytearray()
    expected = b""
    for n in [0, 1, 7, 8, 9, 300, 0, 65536]:
        mask = os.urandom(4)
        payload = os.urandom(n)
        frame = b"\x80\xfe" + mask + ref_unmask(payload, mask)
        assert wire.unmask_append(out, frame, 6, n) == len(expected) + n
        expected += payload
    assert out == expected


lengths = st.one_of(
    st.integers(0, 125),
    st.integers(126, 65535).map(lambda n: bytes([126]) + n.to_bytes(2, "big")),
    st.integers(0, (1 << 64) - 1).map(lambda n: bytes([127]) + n.to_bytes(8, "big")),
)


@each_wire
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3), st.integers(0, 255), st.booleans(), lengths, st.data())
def test_read_header(wire, prefix, b0, masked, length, data) -> None:
    if isinstance(length, int):
        header = bytes([b0, (0x80 if masked else 0) | length])
    else:
        header = bytes([b0, (0x80 if masked else 0) | length[0]]) + length[1:]
    # cut anywhere after the first two bytes: an incomplete extended length is -1
    cut = data.draw(st.integers(2, len(header) + 2))
    buf = prefix + (header + b"\x01\x02\x03\x04")[:cut]
    for b in (buf, bytearray(buf)):
        assert wire.read_header(b, len(prefix)) == ref_header(buf, len(prefix))


@each_wire
def test_unmask_word_loop_tails(wire: ModuleType) -> None:
    data = os.urandom(100)
    mask = b"\x12\x34\x56\x78"
    for n in range(20):  # every tail length around the 8-byte word loop
        assert wire.unmask(data[:n], mask) == ref_unmask(data[:n], mask)
        assert wire.unmask_at(mask + data[:n], 4, n) == ref_unmask(data[:n], mask)


@each_wire
@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda w: w.encode_frame(None), TypeError),
        (lambda w: w.encode_frame(bytearray(b"x")), TypeError),
        (lambda w: w.encode_frame(memoryview(b"x")), TypeError),
        (lambda w: w.encode_frame(b"x", None), TypeError),
        (lambda w: w.unmask(None, b"abcd"), TypeError),
        (lambda w: w.unmask(b"x", None), TypeError),
        (lambda w: w.unmask(bytearray(b"x"), b"abcd"), TypeError),
        (lambda w: w.unmask(b"x", b"abc"), ValueError),
        (lambda w: w.unmask(b"x", b"abcde"), ValueError),
        (lambda w: w.unmask_at(None, 4, 0), TypeError),
        (lambda w: w.unmask_at(memoryview(b"abcdx"), 4, 1), TypeError),
        (lambda w: w.unmask_at(b"abcdx", 4, 2), IndexError),
        (lambda w: w.unmask_at(b"abcdx", 3, 1), IndexError),
        (lambda w: w.unmask_at(b"abcdx", 4, -1), IndexError),
        (lambda w: w.unmask_append(None, b"abcdx", 4, 1), TypeError),
        (lambda w: w.unmask_append(b"", b"abcdx", 4, 1), TypeError),
        (lambda w: w.unmask_append(memoryview(bytearray()), b"abcdx", 4, 1), TypeError),
        (lambda w: w.unmask_append(bytearray(), None, 4, 0), TypeError),
        (lambda w: w.unmask_append(bytearray(), memoryview(b"abcdx"), 4, 1), TypeError),
        (lambda w: w.unmask_append(bytearray(), b"abcdx", 4, 2), IndexError),
        (lambda w: w.unmask_append(bytearray(), b"abcdx", 3, 1), IndexError),
        (lambda w: w.unmask_append(bytearray(), b"abcdx", 4, -1), IndexError),
        (lambda w: w.unmask_append(*[bytearray(b"abcdx")] * 2, 4, 1), ValueError),
        (lambda w: w.read_header(None, 0), TypeError),
        (lambda w: w.read_header(b"\x81", 0), IndexError),
        (lambda w: w.read_header(b"\x81\x80", 1), IndexError),
        (lambda w: w.read_header(b"\x81\x80", -1), IndexError),
    ],
)
def test_misuse_raises_the_same_errors(wire: ModuleType, call, error) -> None:
    with pytest.raises(error) as info:
        call(wire)
    assert type(info.value) is error
