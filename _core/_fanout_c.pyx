# cython: language_level=3
"""Compiled fan-out core, built as ``aiosrv._fanout_c``.

Twin of ``aiosrv/_fanout_py.py``: same names, same behaviour, same bytes (the
docstring there describes the design; ``tests/core`` checks the two agree).
What changes here is where the time goes: the receiver loop, the limit check
and the pending-list append run as C over typed attributes, with no Python
attribute lookups or method calls per receiver. Frames are built with one
allocation and a memcpy.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.math cimport ceil, floor
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from aiosrv.errors import FrameError

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

cdef enum:
    _OPEN = 0
    _OVERFLOWED = 1
    _CLOSED = 2

STATE_OPEN = _OPEN
STATE_OVERFLOWED = _OVERFLOWED
STATE_CLOSED = _CLOSED

HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 60.0
cdef double _MIN_TICK = 0.005
cdef double _MAX_TICK = 1.0
cdef Py_ssize_t _MAX_SLOTS = 4096
MIN_TICK = _MIN_TICK
MAX_TICK = _MAX_TICK
MAX_SLOTS = _MAX_SLOTS


cpdef bytes encode_frame(bytes payload, int opcode=0x1, bint rsv1=False):
    """One unmasked, final server-to-client frame (RFC 6455 section 5.2).

    One allocation holds header and payload; the result is shared by every
    receiver of the message. ``rsv1`` marks a message compressed with
    permessage-deflate (RFC 7692).
    """
    if payload is None:
        # typed ``bytes`` arguments admit None, which PyBytes_GET_SIZE must not see
        raise TypeError("payload must be bytes, not None")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t hlen
    cdef unsigned long long ln = <unsigned long long>n
    if n < 126:
        hlen = 2
    elif n < 65536:
        hlen = 4
    else:
        hlen = 10
    cdef bytes out = PyBytes_FromStringAndSize(NULL, hlen + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    cdef int i
    p[0] = 0x80 | (0x40 if rsv1 else 0) | (opcode & 0x0F)
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


def encode_close(int code, str reason=""):
    """A close frame; ``reason`` is cut to the 123 bytes a control frame allows,
    never inside a UTF-8 sequence."""
    cdef bytes raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(code.to_bytes(2, "big") + raw, OP_CLOSE)


cdef class Subscriber:
    """One connection as the core sees it: its filters and its bounded output."""

    cdef public object conn_id
    cdef public object transport
    cdef public Py_ssize_t limit
    cdef public object owner
    cdef public double last_seen
    cdef public bint deflate
    cdef bint _deflate_counted
    cdef list _pending
    cdef Py_ssize_t _pending_bytes
    cdef Py_ssize_t _transport_buffered
    cdef bint _dirty
    cdef int _state
    cdef dict _filters
    cdef double _next_ping
    cdef Py_ssize_t _wheel_slot

    def __init__(self, conn_id, transport, Py_ssize_t limit, owner=None, bint deflate=False):
        self.conn_id = conn_id
        self.deflate = deflate
        self._deflate_counted = False
        self.transport = transport
        self.limit = limit
        self.owner = owner
        self.last_seen = 0.0
        self._pending = []
        self._pending_bytes = 0
        self._transport_buffered = 0
        self._dirty = False
        self._state = _OPEN
        self._filters = {}
        self._next_ping = 0.0
        self._wheel_slot = -1

    @property
    def state(self):
        return self._state

    @property
    def overflowed(self):
        return self._state == _OVERFLOWED

    @property
    def closed(self):
        return self._state != _OPEN

    @property
    def pending_bytes(self):
        return self._pending_bytes

    @property
    def pending_frames(self):
        return len(self._pending)

    @property
    def transport_buffered(self):
        return self._transport_buffered

    @property
    def subscription_count(self):
        return self._subscription_count()

    cdef Py_ssize_t _subscription_count(self):
        cdef Py_ssize_t n = 0
        for ks in self._filters.values():
            n += 1 if ks is None else len(<tuple>ks)
        return n

    def types(self):
        return list(self._filters)

    def filter_for(self, type_):
        return self._filters.get(type_)

    def is_subscribed(self, type_):
        return type_ in self._filters

    def __repr__(self):
        return f"<Subscriber {self.conn_id} state={self._state} pending={self._pending_bytes}>"


cdef class FanOut:
    """The subscription index and write path shared by every connection."""

    cdef dict _all
    cdef dict _by_type
    cdef dict _by_key
    cdef list _dirty
    cdef list _to_close
    cdef public Py_ssize_t deflate_count
    cdef public unsigned long long published
    cdef public unsigned long long delivered
    cdef public unsigned long long writes
    cdef public unsigned long long overflows
    cdef public unsigned long long dropped_bytes
    cdef public unsigned long long pings
    cdef list _wheel
    cdef long long _wheel_pos
    cdef bint _wheel_started
    cdef double _hb_interval
    cdef double _hb_timeout
    cdef double _tick

    def __init__(self):
        self._all = {}
        self._by_type = {}
        self._by_key = {}
        self._dirty = []
        self._to_close = []
        self.deflate_count = 0
        self.published = 0
        self.delivered = 0
        self.writes = 0
        self.overflows = 0
        self.dropped_bytes = 0
        self.pings = 0
        self._wheel = []
        self._wheel_pos = 0
        self._wheel_started = False
        self.configure_heartbeat(HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, 0.0)

    # -- registry ------------------------------------------------------------

    def add(self, Subscriber sub not None):
        if sub not in self._all:
            self._all[sub] = None
            if sub.deflate:
                sub._deflate_counted = True
                self.deflate_count += 1
            sub._next_ping = sub.last_seen + self._hb_interval
            self._schedule(sub)

    def remove(self, Subscriber sub not None):
        cdef Py_ssize_t count = sub._subscription_count()
        for type_ in list(sub._filters):
            self._unindex(sub, type_)
        sub._filters.clear()
        del sub._pending[:]
        sub._pending_bytes = 0
        if sub._state == _OPEN:
            sub._state = _CLOSED
        self._unschedule(sub)
        if sub in self._all:
            del self._all[sub]
            if sub._deflate_counted:
                sub._deflate_counted = False
                self.deflate_count -= 1
        return count

    def subscribe(self, Subscriber sub not None, type_, keys=None):
        cdef dict per_key
        cdef dict subs
        if type_ in sub._filters:
            self._unindex(sub, type_)
        if keys is None:
            sub._filters[type_] = None
            subs = self._by_type.get(type_)
            if subs is None:
                subs = {}
                self._by_type[type_] = subs
            subs[sub] = None
        else:
            wanted = tuple(dict.fromkeys(keys))
            sub._filters[type_] = wanted
            per_key = self._by_key.get(type_)
            if per_key is None:
                per_key = {}
                self._by_key[type_] = per_key
            for k in wanted:
                subs = per_key.get(k)
                if subs is None:
                    subs = {}
                    per_key[k] = subs
                subs[sub] = None

    def unsubscribe(self, Subscriber sub not None, type_):
        if type_ not in sub._filters:
            return False
        self._unindex(sub, type_)
        del sub._filters[type_]
        return True

    cdef _unindex(self, Subscriber sub, type_):
        cdef dict subs
        cdef dict per_key
        keys = sub._filters[type_]
        if keys is None:
            subs = self._by_type.get(type_)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self._by_type[type_]
        else:
            per_key = self._by_key.get(type_)
            if per_key is None:
                return
            for k in <tuple>keys:
                subs = per_key.get(k)
                if subs is not None:
                    subs.pop(sub, None)
                    if not subs:
                        del per_key[k]
            if not per_key:
                del self._by_key[type_]

    # -- fan-out -------------------------------------------------------------

    def receivers(self, type_, key=None):
        out = list(self._by_type.get(type_, ()))
        if key is not None:
            per_key = self._by_key.get(type_)
            if per_key is not None:
                out.extend(per_key.get(key, ()))
        return out

    cpdef Py_ssize_t publish(self, object type_, object key, bytes frame,
                             bytes frame_deflate=None) except -1:
        """Queue one framed message to every receiver; return how many got it.

        With ``frame_deflate`` (the same message compressed once), receivers
        that negotiated permessage-deflate get that frame instead.
        """
        cdef Py_ssize_t n = 0
        cdef PyObject* found
        cdef dict subs
        cdef dict per_key
        cdef Subscriber s
        if frame is None:
            raise TypeError("frame must be bytes, not None")
        cdef bytes alt = frame if frame_deflate is None else frame_deflate
        self.published += 1
        found = PyDict_GetItem(self._by_type, type_)
        if found is not NULL:
            subs = <dict>found
            for sub in subs:
                s = <Subscriber>sub
                n += self._append(s, alt if s.deflate else frame)
        if key is not None:
            found = PyDict_GetItem(self._by_key, type_)
            if found is not NULL:
                per_key = <dict>found
                found = PyDict_GetItem(per_key, key)
                if found is not NULL:
                    subs = <dict>found
                    for sub in subs:
                        s = <Subscriber>sub
                        n += self._append(s, alt if s.deflate else frame)
        self.delivered += n
        return n

    def send(self, Subscriber sub not None, bytes frame not None):
        return self._append(sub, frame) == 1

    def send_all(self, bytes frame not None):
        cdef Py_ssize_t n = 0
        for sub in self._all:
            n += self._append(<Subscriber>sub, frame)
        return n

    cdef inline int _append(self, Subscriber sub, bytes frame) except -1:
        cdef Py_ssize_t size
        if sub._state != _OPEN:
            return 0
        size = PyBytes_GET_SIZE(frame)
        if (sub._pending_bytes + sub._transport_buffered + size > sub.limit
                and (sub._pending_bytes or sub._transport_buffered)):
            # Over the limit on the books: write what is pending now and ask the
            # transport what the kernel really refused before judging.
            self._write(sub)
            if sub._state != _OPEN:
                return 0
            if sub._transport_buffered and sub._transport_buffered + size > sub.limit:
                self._overflow(sub)
                return 0
        sub._pending.append(frame)
        sub._pending_bytes += size
        if not sub._dirty:
            sub._dirty = True
            self._dirty.append(sub)
        return 1

    cdef _overflow(self, Subscriber sub):
        self.overflows += 1
        self.dropped_bytes += sub._pending_bytes + sub._transport_buffered
        del sub._pending[:]
        sub._pending_bytes = 0
        sub._state = _OVERFLOWED
        self._to_close.append(sub)

    cdef _write(self, Subscriber sub):
        cdef list pending = sub._pending
        cdef Py_ssize_t count = PyList_GET_SIZE(pending)
        transport = sub.transport
        try:
            if count:
                sub._pending = []
                sub._pending_bytes = 0
                transport.write(pending[0] if count == 1 else b"".join(pending))
                self.writes += 1
            sub._transport_buffered = transport.get_write_buffer_size()
        except Exception:
            sub._state = _CLOSED
            self._to_close.append(sub)

    def flush(self):
        cdef list dirty = self._dirty
        cdef Py_ssize_t n = 0
        cdef Subscriber sub
        if not dirty:
            return 0
        self._dirty = []
        for obj in dirty:
            sub = <Subscriber>obj
            sub._dirty = False
            if sub._state == _OPEN and PyList_GET_SIZE(sub._pending):
                self._write(sub)
                n += 1
        return n

    def write(self, Subscriber sub not None):
        if sub._state == _OPEN and PyList_GET_SIZE(sub._pending):
            self._write(sub)
            return True
        return False

    def take_to_close(self):
        out = self._to_close
        self._to_close = []
        return out

    # -- heartbeat -------------------------------------------------------------

    @property
    def heartbeat_tick(self):
        return self._tick

    def configure_heartbeat(self, double interval, double timeout, double now):
        cdef Subscriber sub
        cdef Py_ssize_t slots
        cdef double latest
        if not (interval > 0 and timeout > 0):
            raise ValueError("heartbeat interval and timeout must be > 0")
        self._hb_interval = interval
        self._hb_timeout = timeout
        self._tick = min(max(min(interval, timeout) / 8, _MIN_TICK), _MAX_TICK)
        slots = min(<Py_ssize_t>ceil(max(interval, timeout) / self._tick) + 1, _MAX_SLOTS)
        self._wheel = [{} for _ in range(slots)]
        self._wheel_started = False
        latest = now + interval
        for obj in self._all:
            sub = <Subscriber>obj
            sub._wheel_slot = -1
            if sub._state == _OPEN:
                if sub._next_ping > latest:
                    sub._next_ping = latest
                self._schedule(sub)

    def heartbeat(self, double now, bytes ping not None):
        cdef long long target = <long long>floor(now / self._tick)
        cdef Py_ssize_t slots = PyList_GET_SIZE(self._wheel)
        cdef long long first, t
        cdef Py_ssize_t i
        cdef dict bucket
        cdef Subscriber sub
        cdef list out = []
        cdef double interval = self._hb_interval
        cdef double timeout = self._hb_timeout
        if not self._wheel_started or target - self._wheel_pos >= slots:
            first = target - slots + 1
        else:
            first = self._wheel_pos + 1
        if not self._wheel_started or target > self._wheel_pos:
            self._wheel_pos = target
            self._wheel_started = True
        t = first
        while t <= target:
            i = <Py_ssize_t>(t % slots)
            if i < 0:
                i += slots
            t += 1
            bucket = <dict>self._wheel[i]
            if not bucket:
                continue
            self._wheel[i] = {}
            for obj in bucket:
                sub = <Subscriber>obj
                sub._wheel_slot = -1
                if sub._state != _OPEN:
                    continue
                if now - sub.last_seen >= timeout:
                    out.append(sub)
                    continue
                if now >= sub._next_ping:
                    self.pings += self._append(sub, ping)
                    sub._next_ping = now + interval
                    if sub._state != _OPEN:
                        continue
                self._schedule(sub)
        return out

    cdef _schedule(self, Subscriber sub):
        cdef double due = min(sub._next_ping, sub.last_seen + self._hb_timeout)
        cdef long long t = <long long>floor(due / self._tick)
        cdef Py_ssize_t slots = PyList_GET_SIZE(self._wheel)
        cdef Py_ssize_t i
        if self._wheel_started and t <= self._wheel_pos:
            t = self._wheel_pos + 1
        i = <Py_ssize_t>(t % slots)
        if i < 0:
            i += slots
        (<dict>self._wheel[i])[sub] = None
        sub._wheel_slot = i

    cdef _unschedule(self, Subscriber sub):
        if sub._wheel_slot >= 0:
            (<dict>self._wheel[sub._wheel_slot]).pop(sub, None)
            sub._wheel_slot = -1

    # -- introspection ---------------------------------------------------------

    @property
    def subscriber_count(self):
        return len(self._all)

    @property
    def dirty_count(self):
        return len(self._dirty)

    def subscribers(self):
        return list(self._all)

    def subscription_count(self):
        cdef Py_ssize_t n = 0
        for sub in self._all:
            n += (<Subscriber>sub)._subscription_count()
        return n

    def type_counts(self):
        out = {t: len(s) for t, s in self._by_type.items()}
        for t, per_key in self._by_key.items():
            seen = set()
            for subs in per_key.values():
                seen.update(subs)
            out[t] = out.get(t, 0) + len(seen)
        return out

    def pending_bytes_total(self):
        cdef Py_ssize_t n = 0
        for sub in self._all:
            n += (<Subscriber>sub)._pending_bytes
        return n

    def buffered_bytes_total(self):
        cdef Py_ssize_t n = 0
        cdef Subscriber s
        for sub in self._all:
            s = <Subscriber>sub
            n += s._pending_bytes + s._transport_buffered
        return n


# -- reading client frames -----------------------------------------------------


cdef bytes _unmask(const unsigned char* src, Py_ssize_t n, const unsigned char* mask):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char* dst = <unsigned char*>PyBytes_AS_STRING(out)
    cdef unsigned char m8[8]
    cdef uint64_t m64, w
    cdef Py_ssize_t i = 0
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
    return out


def unmask(bytes data not None, bytes mask not None):
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    if PyBytes_GET_SIZE(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    return _unmask(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                   <const unsigned char*>PyBytes_AS_STRING(mask))


cdef class FrameReader:
    """Parses what one client sends into whole messages (see the twin in
    ``aiosrv/_fanout_py.py`` for the contract)."""

    cdef public Py_ssize_t max_size
    cdef public bint deflate
    cdef public object error
    cdef bytearray _buf
    cdef list _frag
    cdef int _frag_op
    cdef bint _frag_rsv1
    cdef Py_ssize_t _frag_size

    def __init__(self, Py_ssize_t max_size, bint deflate=False):
        self.max_size = max_size
        self.deflate = deflate
        self.error = None
        self._buf = bytearray()
        self._frag = []
        self._frag_op = 0
        self._frag_rsv1 = False
        self._frag_size = 0

    @property
    def buffered(self):
        return PyByteArray_GET_SIZE(self._buf)

    def feed(self, data):
        cdef list out = []
        cdef const unsigned char* p
        cdef Py_ssize_t end, pos = 0, start, head
        cdef unsigned long long length
        cdef int b0, b1, opcode, i
        cdef bint fin, rsv1, from_buf
        cdef bytes payload
        if self.error is not None:
            return out
        if not isinstance(data, bytes):
            data = bytes(data)
        from_buf = PyByteArray_GET_SIZE(self._buf) > 0
        if from_buf:
            self._buf += data
            p = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
            end = PyByteArray_GET_SIZE(self._buf)
        else:
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            end = PyBytes_GET_SIZE(data)
        while end - pos >= 2:
            b0 = p[pos]
            b1 = p[pos + 1]
            fin = (b0 & 0x80) != 0
            rsv1 = (b0 & 0x40) != 0
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            head = 6
            if length == 126:
                head = 8
                if end - pos < 4:
                    break
                length = (<unsigned long long>p[pos + 2] << 8) | p[pos + 3]
            elif length == 127:
                head = 14
                if end - pos < 10:
                    break
                length = 0
                for i in range(8):
                    length = (length << 8) | p[pos + 2 + i]
            problem = self._check(fin, rsv1, b0 & 0x30, opcode, b1 & 0x80, length)
            if problem is not None:
                self.error = problem
                self._buf = bytearray()
                self._frag = []
                return out
            # length <= max_size here, so it fits Py_ssize_t
            if <unsigned long long>(end - pos) < <unsigned long long>head + length:
                break
            start = pos + head
            payload = _unmask(p + start, <Py_ssize_t>length, p + start - 4)
            pos = start + <Py_ssize_t>length
            if opcode >= 0x8:
                out.append((opcode, payload, False))
            elif opcode:
                if fin:
                    out.append((opcode, payload, rsv1))
                else:
                    self._frag_op = opcode
                    self._frag_rsv1 = rsv1
                    self._frag = [payload]
                    self._frag_size = <Py_ssize_t>length
            else:
                self._frag.append(payload)
                self._frag_size += <Py_ssize_t>length
                if fin:
                    out.append((self._frag_op, b"".join(self._frag), self._frag_rsv1))
                    self._frag = []
                    self._frag_op = 0
                    self._frag_rsv1 = False
                    self._frag_size = 0
        if from_buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(data[pos:])
        return out

    cdef object _check(self, bint fin, bint rsv1, int rsv23, int opcode, int masked,
                       unsigned long long length):
        cdef unsigned long long size
        if rsv23:
            return FrameError(1002, "RSV2 or RSV3 set: no extension using them was negotiated")
        if not masked:
            return FrameError(1002, "client frames must be masked")
        if opcode >= 0x8:
            if opcode > 0xA:
                return FrameError(1002, f"unknown opcode {opcode:#x}")
            if not fin:
                return FrameError(1002, "a control frame must not be fragmented")
            if length > 125:
                return FrameError(1002, "a control frame's payload must be at most 125 bytes")
            if rsv1:
                return FrameError(1002, "RSV1 set on a control frame")
            return None
        if opcode == 0:
            if not self._frag_op:
                return FrameError(1002, "continuation frame with no fragmented message to continue")
            if rsv1:
                return FrameError(1002, "RSV1 set on a continuation frame")
            size = <unsigned long long>self._frag_size + length
        elif opcode > 0x2:
            return FrameError(1002, f"unknown opcode {opcode:#x}")
        else:
            if self._frag_op:
                return FrameError(1002, "new data frame before the fragmented message ended")
            if rsv1 and not self.deflate:
                return FrameError(1002, "RSV1 set but permessage-deflate was not negotiated")
            size = length
        if size > <unsigned long long>self.max_size:
            return FrameError(1009, f"message of more than {self.max_size} bytes (the limit)")
        return None
