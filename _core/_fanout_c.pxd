# C types for the fan-out core. setup.py compiles aiosrv/_fanout_py.py (copied
# as _fanout_c.py) with this file into aiosrv._fanout_c: Cython's pure-Python
# mode, where a .pxd beside a .py turns its classes into extension types with
# these C attributes, its methods declared here into cdef/cpdef methods, and
# types their locals. The algorithm is only in the .py; nothing here restates
# it. Names declared here must match the .py (Cython checks the signatures).

cimport cython
from libc cimport math

# Overrides the .py's ``from . import _wire_py as _wire``: every _wire.<name>
# call below is a C call into the hand-written aiosrv._wire_c. Only names
# declared in _wire_c.pxd may be used through _wire in the .py.
from aiosrv cimport _wire_c as _wire

cdef int _OPEN, _OVERFLOWED, _CLOSED
cdef Py_ssize_t _MAX_FRAGMENTS

cdef void _check_sub(object sub) except *
cdef void _check_frame(object frame, str name=*) except *


@cython.final
cdef class Subscriber:
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

    @cython.locals(n=Py_ssize_t)
    cdef Py_ssize_t _subscription_count(self) except -1


@cython.final
cdef class FanOut:
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

    @cython.locals(subs=dict, per_key=dict)
    cdef void _unindex(self, Subscriber sub, object type_) except *

    @cython.locals(n=Py_ssize_t, subs=dict, per_key=dict, alt=bytes)
    cpdef Py_ssize_t publish(self, object type_, object key, bytes frame,
                             bytes frame_deflate=*) except -1

    @cython.locals(n=Py_ssize_t)
    cpdef Py_ssize_t send_all(self, bytes frame) except -1

    @cython.locals(size=Py_ssize_t)
    cdef int _append(self, Subscriber sub, bytes frame) except -1

    cdef void _overflow(self, Subscriber sub) except *

    @cython.locals(pending=list)
    cdef void _write(self, Subscriber sub) except *

    @cython.locals(n=Py_ssize_t, dirty=list)
    cpdef Py_ssize_t flush(self, Py_ssize_t limit=*) except -1

    @cython.locals(slots=Py_ssize_t, latest=double, longest=double)
    cpdef void configure_heartbeat(self, double interval, double timeout, double now) except *

    @cython.locals(target="long long", first="long long", t="long long", slots=Py_ssize_t,
                   i=Py_ssize_t, bucket=dict, out=list, interval=double, timeout=double)
    cpdef list heartbeat(self, double now, bytes ping)

    @cython.locals(due=double, t="long long", i=Py_ssize_t, bucket=dict)
    cdef void _schedule(self, Subscriber sub) except *

    @cython.locals(bucket=dict)
    cdef void _unschedule(self, Subscriber sub) except *


@cython.final
cdef class FrameReader:
    cdef public Py_ssize_t max_size
    cdef public bint deflate
    cdef public object error
    cdef bytearray _buf
    cdef bytearray _frag
    cdef Py_ssize_t _frag_count
    cdef int _frag_op
    cdef bint _frag_rsv1

    @cython.locals(out=list, end=Py_ssize_t, pos=Py_ssize_t, header="long long",
                   b0=cython.int, b1=cython.int, length="long long", code=cython.int,
                   head=Py_ssize_t, fin=cython.int, rsv1=cython.int, opcode=cython.int,
                   start=Py_ssize_t)
    cpdef list feed(self, object data)

    @cython.locals(size="long long")
    cdef object _check(self, int fin, int rsv1, int rsv23, int opcode, int masked,
                       long long length)
