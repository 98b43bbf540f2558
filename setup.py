"""Build the fan-out core into extension modules of the ``aiosrv`` package.

The core has one source, ``aiosrv/_fanout_py.py``, which runs as plain Python.
The compiled build is that same file compiled by Cython in pure-Python mode
with ``_core/_fanout_c.pxd`` (C types only), plus one small hand-written module
for what needs pointers, ``_core/_wire_c.pyx`` (its pure twin is
``aiosrv/_wire_py.py``). Cython pairs a ``.py`` with the ``.pxd`` of the same
module name, so the build first lays the sources out as a package in
``build/cython/aiosrv/``: ``_fanout_py.py`` copied as ``_fanout_c.py`` beside
the ``.pxd`` and ``.pyx`` files (a copy, not a symlink, so a checkout, an sdist
and a wheel build alike). Nothing of that folder is installed: the package
gets only the two extension modules, ``aiosrv._fanout_c`` and ``aiosrv._wire_c``.

Set ``AIOSRV_NO_EXTENSIONS=1`` to build a pure-Python install (the server then
says so at start-up), ``AIOSRV_CYTHON_ANNOTATE=1`` to write ``cython -a`` HTML
reports (``build/cython/aiosrv/*.html``), and ``AIOSRV_CYTHON_TRACE=1`` for a
build that line profilers can see into.
"""

from __future__ import annotations

import hashlib
import os
import shutil

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
STAGE = os.path.join("build", "cython")

# module -> (source staged as the module's .py/.pyx, its .pxd); paths from HERE
CORE_MODULES = {
    "_wire_c": ("_core/_wire_c.pyx", "_core/_wire_c.pxd"),
    "_fanout_c": ("aiosrv/_fanout_py.py", "_core/_fanout_c.pxd"),
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def source_digest() -> str:
    """SHA-256 over the core's sources (all of CORE_MODULES' files, in order):
    the compiled module carries it as ``_BUILT_FROM``, so a test can tell a
    build older than the source it is tested against."""
    h = hashlib.sha256()
    for files in CORE_MODULES.values():
        for path in files:
            with open(os.path.join(HERE, path), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _copy(src: str, dst: str, tail: bytes = b"") -> None:
    # copy only on change, so Cython's own up-to-date check keeps working
    src = os.path.join(HERE, src)
    with open(src, "rb") as f:
        data = f.read() + tail
    if os.path.exists(dst):
        with open(dst, "rb") as f:
            if f.read() == data:
                return
    with open(dst, "wb") as f:
        f.write(data)
    shutil.copymode(src, dst)


def stage() -> dict[str, str]:
    """Lay the core's sources out as package ``aiosrv`` under STAGE; returns
    module -> staged source."""
    pkg = os.path.join(HERE, STAGE, "aiosrv")
    os.makedirs(pkg, exist_ok=True)
    init = os.path.join(pkg, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write("# build staging only (setup.py); never installed\n")
    sources = {}
    for name, (source, pxd) in CORE_MODULES.items():
        ext = os.path.splitext(source)[1]
        staged = os.path.join(pkg, name + ext)
        # appended after the last line, so line numbers in tracebacks and
        # annotations are the source's own
        tail = f'\n_BUILT_FROM = "{source_digest()}"  # added by setup.py\n' if ext == ".py" else ""
        _copy(source, staged, tail.encode())
        _copy(pxd, os.path.join(pkg, name + ".pxd"))
        sources[name] = os.path.relpath(staged, HERE)
    return sources


def extensions() -> list[Extension]:
    if _truthy("AIOSRV_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize  # build requirement, pinned in pyproject.toml

    trace = _truthy("AIOSRV_CYTHON_TRACE")
    annotate = _truthy("AIOSRV_CYTHON_ANNOTATE")
    macros = [("CYTHON_TRACE_NOGIL", "1")] if trace else []
    exts = [
        Extension(
            f"aiosrv.{name}",
            [source],
            # the real sources: listed so that an sdist carries them and a
            # change rebuilds
            depends=list(CORE_MODULES[name]),
            extra_compile_args=["-O2"],
            define_macros=macros,
        )
        for name, source in stage().items()
    ]
    return cythonize(
        exts,
        language_level=3,
        include_path=[STAGE],
        annotate=annotate,
        force=annotate or trace,  # an up-to-date .c has no report, or other macros
        compiler_directives={
            # The .py is Python code: it never indexes from the end or out of
            # range, but its % and // on integers keep Python's meaning
            # (cdivision off), as the pure build has it.
            "boundscheck": False,
            "wraparound": False,
            "cdivision": False,
            "embedsignature": True,
            "linetrace": trace,
        },
    )


setup(ext_modules=extensions())
