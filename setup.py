"""Build the Cython core (``_core/``) into extension modules of the ``aiosrv`` package.

The sources live outside the package so that nothing installs a bare top-level
``_core``: each ``_core/<name>.pyx`` becomes ``aiosrv.<name>``. Set
``AIOSRV_NO_EXTENSIONS=1`` to build a pure-Python install (the server then says
so at start-up), ``AIOSRV_CYTHON_ANNOTATE=1`` to write ``cython -a`` HTML
reports next to the sources, and ``AIOSRV_CYTHON_TRACE=1`` for a build that
line profilers can see into.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

CORE_MODULES = ["_fanout_c"]


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def extensions() -> list[Extension]:
    if _truthy("AIOSRV_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize  # build requirement, pinned in pyproject.toml

    trace = _truthy("AIOSRV_CYTHON_TRACE")
    macros = [("CYTHON_TRACE_NOGIL", "1")] if trace else []
    exts = [
        Extension(
            f"aiosrv.{name}",
            [f"_core/{name}.pyx"],
            extra_compile_args=["-O2"],
            define_macros=macros,
        )
        for name in CORE_MODULES
    ]
    return cythonize(
        exts,
        language_level=3,
        annotate=_truthy("AIOSRV_CYTHON_ANNOTATE"),
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            "linetrace": trace,
        },
    )


setup(ext_modules=extensions())
