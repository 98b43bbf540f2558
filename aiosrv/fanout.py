"""The one place that picks the fan-out core: compiled (``aiosrv._fanout_c``,
built from ``_core/_fanout_c.pyx``) or its pure-Python twin
(``aiosrv._fanout_py``).

``AIOSRV_NO_EXTENSIONS=1`` forces the pure twin. Otherwise the compiled module
is used when it is installed; if it is missing the pure twin is used and
:data:`IMPLEMENTATION` says so, which the server logs at start-up and reports
in ``/status`` (set ``AIOSRV_EXPECT_COMPILED=1`` in CI to turn a silent
fallback into an import error).
"""

from __future__ import annotations

import os

from . import _fanout_py

NO_EXTENSIONS = os.environ.get("AIOSRV_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}
EXPECT_COMPILED = os.environ.get("AIOSRV_EXPECT_COMPILED", "").strip().lower() in {
    "1",
    "true",
    "yes",
}

if NO_EXTENSIONS:
    _impl = _fanout_py
    IMPLEMENTATION = "pure-python"
else:
    try:
        from . import _fanout_c as _impl  # type: ignore[no-redef]

        IMPLEMENTATION = "compiled"
    except ImportError:
        if EXPECT_COMPILED:
            raise
        _impl = _fanout_py
        IMPLEMENTATION = "pure-python"

FanOut = _impl.FanOut
Subscriber = _impl.Subscriber
FrameReader = _impl.FrameReader
unmask = _impl.unmask
encode_frame = _impl.encode_frame
encode_close = _impl.encode_close
OP_TEXT = _fanout_py.OP_TEXT
OP_BINARY = _fanout_py.OP_BINARY
OP_CLOSE = _fanout_py.OP_CLOSE
OP_PING = _fanout_py.OP_PING
OP_PONG = _fanout_py.OP_PONG

__all__ = [
    "IMPLEMENTATION",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FanOut",
    "FrameReader",
    "Subscriber",
    "encode_close",
    "encode_frame",
    "unmask",
]
