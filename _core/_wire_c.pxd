# C-level API of aiosrv._wire_c (hand-written, _wire_c.pyx), cimported by the
# fan-out core as ``_wire`` (see _fanout_c.pxd). The pure twin with the same
# names is aiosrv/_wire_py.py.

cpdef bytes encode_frame(bytes payload, object opcode=*, bint rsv1=*)
cpdef bytes unmask(bytes data, bytes mask)
cpdef bytes unmask_at(object buf, Py_ssize_t start, Py_ssize_t length)
cpdef Py_ssize_t unmask_append(object out, object buf, Py_ssize_t start,
                               Py_ssize_t length) except -1
cpdef long long read_header(object buf, Py_ssize_t pos) except -2
