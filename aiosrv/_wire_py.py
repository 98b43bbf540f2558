"""Pure-Python twin of ``_core/_wire_c.pyx``: the byte-level work on WebSocket
frames (RFC 6455 section 5) that the compiled build does with pointers.

The fan-out core (``aiosrv/_fanout_py.py``, one source for both builds) calls
these functions through the module name ``_wire``: run as Python it
imports this module; compiled, ``_core/_fanout_c.pxd`` cimports
``aiosrv._wire_c`` under that name, so every call is a C call into the
hand-written module. The two must behave identically, errors included:
``tests/core/test_wire.py`` checks them against each other.

* :func:`encode_frame`: header and payload of one server frame, one object;
* :func:`unmask` and :func:`unmask_at`: XOR with the client's 4-byte mask;
* :func:`unmask_append`: the same XOR, appended to a ``bytearray`` (the
  fragments of a message, collected without an object per fragment);
* :func:`read_header`: the fields of one client frame header, packed in one
  integer, so that the compiled reader's loop allocates nothing per header.
"""

from __future__ import annotations

from operator import index

__all__ = ["MAX_LENGTH", "encode_frame", "read_header", "unmask", "unmask_append", "unmask_at"]

#: A frame's payload length is reported at most this (2**47 - 1), so that
#: ``read_header`` fits it in a signed 64-bit integer beside the two header
#: bytes. A longer frame is above any size limit the reader can have, and is
#: refused the same way.
MAX_LENGTH = (1 << 47) - 1


def _not(expected: str, name: str, value: object) -> TypeError:
    # the message Cython gives for a typed argument, so both twins read alike
    return TypeError(
        f"Argument '{name}' has incorrect type (expected {expected}, got {type(value).__name__})"
    )


def _check_buf(buf: object) -> None:
    if type(buf) is not bytes and type(buf) is not bytearray:
        raise _not("bytes or bytearray", "buf", buf)


def encode_frame(payload: bytes, opcode: int = 0x1, rsv1: bool = False) -> bytes:
    """One unmasked, final server-to-client frame (RFC 6455 section 5.2).

    The result is a new ``bytes`` holding header and payload, made once and
    shared by every receiver of the message. ``rsv1`` marks a message
    compressed with permessage-deflate (RFC 7692). ``payload`` must be
    ``bytes`` (not a subclass, not None).
    """
    if type(payload) is not bytes:
        raise _not("bytes", "payload", payload)
    op = index(opcode)  # as the compiled build converts it to a C int
    if not -(1 << 31) <= op < (1 << 31):
        raise OverflowError("value too large to convert to int")
    n = len(payload)
    first = 0x80 | (0x40 if rsv1 else 0) | (op & 0x0F)
    if n < 126:
        header = bytes((first, n))
    elif n < 65536:
        header = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + n.to_bytes(8, "big")
    return header + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if type(data) is not bytes:
        raise _not("bytes", "data", data)
    if type(mask) is not bytes:
        raise _not("bytes", "mask", mask)
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    n = len(data)
    if not n:
        return b""
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def unmask_at(buf: bytes | bytearray, start: int, length: int) -> bytes:
    """The ``length`` payload bytes at ``buf[start:]`` unmasked with the mask in
    the 4 bytes before them (where a client frame carries it). The caller has
    checked that they are all in ``buf``."""
    _check_buf(buf)
    if start < 4 or length < 0 or start + length > len(buf):
        raise IndexError("unmask_at: out of the buffer")
    return unmask(bytes(buf[start : start + length]), bytes(buf[start - 4 : start]))


def unmask_append(out: bytearray, buf: bytes | bytearray, start: int, length: int) -> int:
    """Append to ``out`` what :func:`unmask_at` returns for the same arguments,
    with no object in between; returns ``len(out)``. ``out`` is a
    ``bytearray`` other than ``buf``."""
    if type(out) is not bytearray:
        raise _not("bytearray", "out", out)
    _check_buf(buf)
    if out is buf:
        raise ValueError("unmask_append: out is buf")
    if start < 4 or length < 0 or start + length > len(buf):
        raise IndexError("unmask_append: out of the buffer")
    out += unmask(bytes(buf[start : start + length]), bytes(buf[start - 4 : start]))
    return len(out)


def read_header(buf: bytes | bytearray, pos: int) -> int:
    """The header of the client frame at ``buf[pos:]`` (at least 2 bytes there).

    Returns ``length << 16 | second_byte << 8 | first_byte``, with the payload
    length read from the extended field when there is one (at most
    :data:`MAX_LENGTH`), or -1 when the extended length is not all in ``buf``
    yet. The header's size follows from the second byte: 2, 4 or 10 bytes
    before the mask, by its low 7 bits. A 64-bit length with its most
    significant bit set (which RFC 6455 section 5.2 forbids) is clamped like
    any other: the caller tells it from the raw byte ``buf[pos + 2]``.
    """
    _check_buf(buf)
    end = len(buf)
    if pos < 0 or end - pos < 2:
        raise IndexError("read_header: fewer than 2 bytes at pos")
    b0 = buf[pos]
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    if length == 126:
        if end - pos < 4:
            return -1
        length = (buf[pos + 2] << 8) | buf[pos + 3]
    elif length == 127:
        if end - pos < 10:
            return -1
        length = min(int.from_bytes(buf[pos + 2 : pos + 10], "big"), MAX_LENGTH)
    return (length << 16) | (b1 << 8) | b0
