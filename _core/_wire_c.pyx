# cython: language_level=3
"""Byte-level work on WebSocket frames, compiled as ``aiosrv._wire_c``.

The only hand-written Cython of the core: what needs pointers (one allocation
and a memcpy per server frame, word-wise XOR for the client's mask, the
header bytes of a client frame read without objects). Everything else, the
fan-out, the heartbeat wheel and the frame reader's rules, is one Python
source (``aiosrv/_fanout_py.py``) compiled with ``_fanout_c.pxd``, which
cimports this module. ``aiosrv/_wire_py.py`` is the pure twin: same names,
same results, same errors (``tests/core/test_wire.py``).
"""

from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_CheckExact,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

__all__ = ["MAX_LENGTH", "encode_frame", "read_header", "unmask", "unmask_append", "unmask_at"]

cdef long long _MAX_LENGTH = (1LL << 47) - 1
MAX_LENGTH = _MAX_LENGTH


cdef inline TypeError _not(str expected, str name, object value):
    return TypeError(
        f"Argument '{name}' has incorrect type (expected {expected}, got {type(value).__name__})"
    )


cpdef bytes encode_frame(bytes payload, object opcode=0x1, bint rsv1=False):
    """One unmasked, final server-to-client frame (RFC 6455 section 5.2).

    One allocation holds header and payload; the result is shared by every
    receiver of the message. ``rsv1`` marks a message compressed with
    permessage-deflate (RFC 7692). ``payload`` must be ``bytes`` (not a
    subclass, not None).
    """
    if payload is None or not PyBytes_CheckExact(payload):
        raise _not("bytes", "payload", payload)
    # an integer (Cython's C int conversion alone would truncate a float)
    cdef int op = PyNumber_Index(opcode)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef unsigned long long ln = <unsigned long long>n
    cdef Py_ssize_t hlen = 2 if n < 126 else 4 if n < 65536 else 10
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef int i
    p[0] = 0x80 | (0x40 if rsv1 else 0) | (op & 0x0F)
    if hlen == 2:
        p[1] = <unsigned char>n
    elif hlen == 4:
        p[1] = 126
        p[2] = <unsigned char>((n >> 8) & 0xFF)
        p[3] = <unsigned char>(n & 0xFF)
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <unsigned char>((ln >> (56 - 8 * i)) & 0xFF)
    if n:
        memcpy(p + hlen, PyBytes_AS_STRING(payload), n)
    return out


cdef bytes _unmask(const unsigned char* src, Py_ssize_t n, const unsigned char* mask):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    _unmask_to(<unsigned char*>PyBytes_AS_STRING(out), src, n, mask)
    return out


cdef void _unmask_to(unsigned char* dst, const unsigned char* src, Py_ssize_t n,
                     const unsigned char* mask) noexcept:
    cdef unsigned char m8[8]
    cdef uint64_t m64, w
    cdef Py_ssize_t i
    for i in range(8):
        m8[i] = mask[i & 3]
    memcpy(&m64, m8, 8)
    i = 0
    while i + 8 <= n:
        memcpy(&w, src + i, 8)
        w ^= m64
        memcpy(dst + i, &w, 8)
        i += 8
    while i < n:
        dst[i] = src[i] ^ mask[i & 3]
        i += 1


cpdef bytes unmask(bytes data, bytes mask):
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if data is None or not PyBytes_CheckExact(data):
        raise _not("bytes", "data", data)
    if mask is None or not PyBytes_CheckExact(mask):
        raise _not("bytes", "mask", mask)
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    return _unmask(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                   <const unsigned char*>PyBytes_AS_STRING(mask))


cdef inline const unsigned char* _chars(object buf, Py_ssize_t* size) except NULL:
    if PyBytes_CheckExact(buf):
        size[0] = PyBytes_GET_SIZE(buf)
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    if PyByteArray_CheckExact(buf):
        size[0] = PyByteArray_GET_SIZE(buf)
        return <const unsigned char*>PyByteArray_AS_STRING(buf)
    raise _not("bytes or bytearray", "buf", buf)


cpdef bytes unmask_at(object buf, Py_ssize_t start, Py_ssize_t length):
    """The ``length`` payload bytes at ``buf[start:]`` unmasked with the mask in
    the 4 bytes before them (where a client frame carries it). The caller has
    checked that they are all in ``buf``."""
    cdef Py_ssize_t size
    cdef const unsigned char* p = _chars(buf, &size)
    if start < 4 or length < 0 or start + length > size:
        raise IndexError("unmask_at: out of the buffer")
    return _unmask(p + start, length, p + start - 4)


cpdef Py_ssize_t unmask_append(object out, object buf, Py_ssize_t start,
                               Py_ssize_t length) except -1:
    """Append to ``out`` what :func:`unmask_at` returns for the same arguments,
    with no object in between; returns ``len(out)``. ``out`` is a
    ``bytearray`` other than ``buf``."""
    cdef Py_ssize_t size, n
    if out is None or not PyByteArray_CheckExact(out):
        raise _not("bytearray", "out", out)
    cdef const unsigned char* p = _chars(buf, &size)
    if out is buf:
        raise ValueError("unmask_append: out is buf")
    if start < 4 or length < 0 or start + length > size:
        raise IndexError("unmask_append: out of the buffer")
    n = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, n + length)
    # p is still good: buf is not out, the only object resized
    _unmask_to(<unsigned char*>PyByteArray_AS_STRING(out) + n, p + start, length, p + start - 4)
    return n + length


cpdef long long read_header(object buf, Py_ssize_t pos) except -2:
    """The header of the client frame at ``buf[pos:]`` (at least 2 bytes there).

    Returns ``length << 16 | second_byte << 8 | first_byte``, with the payload
    length read from the extended field when there is one (at most
    ``MAX_LENGTH``), or -1 when the extended length is not all in ``buf`` yet.
    A 64-bit length with its most significant bit set (which RFC 6455 section
    5.2 forbids) is clamped like any other: the caller tells it from the raw
    byte ``buf[pos + 2]``.
    """
    cdef Py_ssize_t end
    cdef const unsigned char* p = _chars(buf, &end)
    cdef unsigned long long length
    cdef int i
    if pos < 0 or end - pos < 2:
        raise IndexError("read_header: fewer than 2 bytes at pos")
    p += pos
    end -= pos
    length = p[1] & 0x7F
    if length == 126:
        if end < 4:
            return -1
        length = (<unsigned long long>p[2] << 8) | p[3]
    elif length == 127:
        if end < 10:
            return -1
        length = 0
        for i in range(8):
            length = (length << 8) | p[2 + i]
        if length > <unsigned long long>_MAX_LENGTH:
            length = <unsigned long long>_MAX_LENGTH
    return <long long>((length << 16) | (<unsigned long long>p[1] << 8) | p[0])
