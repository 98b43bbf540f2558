"""The one place that picks the fan-out core: compiled (``aiosrv._fanout_c``)
or pure Python (``aiosrv._fanout_py``).

Both are built from one source: ``aiosrv/_fanout_py.py`` runs as it is, and
``setup.py`` compiles the same file with ``_core/_fanout_c.pxd`` into
``aiosrv._fanout_c`` (which uses the hand-written ``aiosrv._wire_c`` where the
pure build uses ``aiosrv._wire_py``).

``AIOSRV_NO_EXTENSIONS=1`` forces the pure build. Otherwise the compiled module
is used when it is installed and really compiled: a module named
``aiosrv._fanout_c`` that is Python source (a stray copy of the ``.py``) is
not taken for it. If it is missing or not compiled the pure build is used and
:data:`IMPLEMENTATION` says so, which the server logs at start-up and reports
in ``/status``; with ``AIOSRV_EXPECT_COMPILED=1`` (CI) either is an import
error instead.
"""

from __future__ import annotations

import os
from importlib.machinery import ExtensionFileLoader
from types import ModuleType

from . import _fanout_py


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


NO_EXTENSIONS = _flag("AIOSRV_NO_EXTENSIONS")
EXPECT_COMPILED = _flag("AIOSRV_EXPECT_COMPILED")


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension (not from
    Python source or bytecode)."""
    spec = getattr(module, "__spec__", None)
    return isinstance(getattr(spec, "loader", None), ExtensionFileLoader)


if NO_EXTENSIONS:
    _impl = _fanout_py
    IMPLEMENTATION = "pure-python"
else:
    try:
        from . import _fanout_c as _impl  # type: ignore[no-redef]

        if not is_compiled(_impl):
            raise ImportError(
                f"aiosrv._fanout_c at {getattr(_impl, '__file__', '?')} is not a compiled "
                "extension (a Python copy of the core?); rebuild it (make setup)"
            )
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
    "is_compiled",
    "unmask",
]
