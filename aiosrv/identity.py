"""Which process this is: the server on its own, or worker *i* of *N* under the
supervisor of ``aiosrv serve --workers N`` (``aiosrv/workers.py``).

The supervisor tells each worker who it is in the environment variable
``AIOSRV_WORKER``, as ``INDEX/COUNT:SUPERVISOR_PID:READY_FD`` (e.g.
``2/4:1234:5``): workers are numbered from 1, and the worker writes its ready
line to the pipe ``READY_FD`` once it listens. A process without the variable
is on its own: index 0 of 1, no supervisor. ``/status`` (``worker``), the
process title and every log line of a worker (``worker=INDEX``) say which.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The environment variable the supervisor sets for each worker (not for operators).
WORKER_ENV = "AIOSRV_WORKER"

_FORMAT = re.compile(r"(\d+)/(\d+):(\d+):(\d+)")


@dataclass(frozen=True, slots=True)
class Identity:
    index: int  # 1..count for a worker; 0 for a process on its own
    count: int
    supervisor_pid: int | None = None
    ready_fd: int | None = None

    @property
    def supervised(self) -> bool:
        return self.supervisor_pid is not None

    @property
    def label(self) -> str:
        """``worker 2/4`` (or ``single process``)."""
        return f"worker {self.index}/{self.count}" if self.supervised else "single process"

    def env_value(self) -> str:
        return f"{self.index}/{self.count}:{self.supervisor_pid}:{self.ready_fd}"

    def snapshot(self) -> dict[str, Any]:
        """``/status``'s ``worker``: which worker, its pid and its supervisor's."""
        return {
            "index": self.index,
            "of": self.count,
            "pid": os.getpid(),
            "supervisor_pid": self.supervisor_pid,
        }


ALONE = Identity(0, 1)


def parse(value: str) -> Identity:
    """The identity in an ``AIOSRV_WORKER`` value; ValueError if malformed."""
    m = _FORMAT.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{WORKER_ENV}={value!r} is not INDEX/COUNT:SUPERVISOR_PID:READY_FD")
    index, count, pid, fd = (int(g) for g in m.groups())
    if not 1 <= index <= count:
        raise ValueError(f"{WORKER_ENV}={value!r}: index must be between 1 and {count}")
    return Identity(index, count, pid, fd)


def from_env(env: Mapping[str, str]) -> Identity:
    value = env.get(WORKER_ENV)
    return ALONE if not value else parse(value)


_current = ALONE


def current() -> Identity:
    """This process's identity (set once at start-up by ``aiosrv serve``)."""
    return _current


def set_current(identity: Identity) -> None:
    global _current
    _current = identity
