"""The programs the operations tests drive, found or the test fails (never
skips) saying how to install them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

#: How to get a program from Debian's packages.
SYSTEM_DEPS = "run `make system-deps` (scripts/system-deps.sh, as root) to install Debian's"


def require(name: str, hint: str) -> str:
    """The path of ``name``: on PATH, in the venv's bin (the test extra's
    tools), or in /usr/sbin and /usr/bin (PATH may lack them under sudo or CI);
    else the test fails with ``hint``."""
    for found in (
        shutil.which(name),
        shutil.which(name, path=str(Path(sys.executable).parent)),
        *(p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
    ):
        if found:
            return found
    pytest.fail(f"{name} is not installed: {hint}")


def system_program(name: str, package: str | None = None) -> str:
    """A program from Debian's ``package`` (named like the program by default)."""
    return require(name, f"{SYSTEM_DEPS} {package or name} package")
