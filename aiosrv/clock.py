"""The time the server reads and the timers it sets, in one injectable object.

The hub (flush pacing), the heartbeat, the sampler and the sessions read the
time and set timers only through a :class:`Clock`, so tests drive them with a
:class:`ManualClock` instead of sleeping and asserting wall-clock limits.

* :class:`LoopClock` is the production clock: ``time()`` is
  ``time.monotonic()`` (not ``loop.time()``: uvloop's is the start of the
  loop iteration, the same before and after a flush), ``cpu_time()`` the
  time the loop's thread was busy (:func:`busy_time`: running, or ready to
  run and waiting for a CPU), and the timers are the running loop's.
* :class:`ManualClock` moves only when a test says so: :meth:`ManualClock.step`
  is one loop iteration (the callbacks due now), :meth:`ManualClock.advance`
  moves time on, running the timers that come due in order at their due
  times, and :meth:`ManualClock.busy` is time the loop spends working.

Both clocks read the same timeline for ``time()`` and the timers: a timer set
``delay`` seconds ahead fires when ``time()`` has moved ``delay`` on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

_sched = threading.local()


def busy_time() -> float:
    """Seconds this thread has run or waited for a CPU to run on.

    The flush pacer counts wall time not spent busy as idle (idle time pays
    debt faster and earns credit). A thread that is ready but descheduled
    (another worker or Redis on the same core, a busy VM host) is not idle:
    counting it so made workers sharing a core flush after every message.
    Linux's ``/proc/thread-self/schedstat`` gives both figures (run time and
    run-queue wait, in ns); elsewhere the thread's CPU time."""
    fd = getattr(_sched, "fd", None)
    if fd is None:
        try:
            fd = _sched.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            fd = _sched.fd = -1
    if fd >= 0:
        try:
            run, wait, _ = os.pread(fd, 64, 0).split()
            return (int(run) + int(wait)) / 1e9
        except (OSError, ValueError):
            pass
    return time.thread_time()


class Timer(Protocol):
    """A scheduled callback (``asyncio.Handle`` and ``asyncio.TimerHandle`` are)."""

    def cancel(self) -> None: ...

    def cancelled(self) -> bool: ...


class Clock(Protocol):
    def time(self) -> float:
        """Monotonic seconds."""
        ...

    def cpu_time(self) -> float:
        """Seconds the loop's thread was busy (running or waiting to run)."""
        ...

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once the loop has served what is ready."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` once ``delay`` seconds have passed."""
        ...


class LoopClock:
    """The real clock: monotonic time, the thread's CPU time, the loop's timers.

    The loop is the running one when first needed (so a clock can be made
    before the loop starts)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def time(self) -> float:
        return time.monotonic()

    def cpu_time(self) -> float:
        return busy_time()

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.loop.call_soon(callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.loop.call_later(delay, callback, *args)


class _ManualTimer:
    __slots__ = ("_cancelled", "args", "callback", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class ManualClock:
    """A clock for tests: time stands still until :meth:`advance` moves it.

    ``cpu_time()`` is the time spent inside callbacks run by this clock plus
    whatever a test adds with :meth:`busy` (the loop's "other work")."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cpu = 0.0
        self._queue: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def cpu_time(self) -> float:
        return self._cpu

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_later(0.0, callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = _ManualTimer(self._now + max(delay, 0.0), callback, args)
        heapq.heappush(self._queue, (timer.when, next(self._order), timer))
        return timer

    def busy(self, seconds: float) -> None:
        """The loop worked for ``seconds`` (time and CPU time move together)."""
        self._now += seconds
        self._cpu += seconds

    def pending(self) -> int:
        """Timers set and not yet run or cancelled."""
        return sum(not t.cancelled() for _, _, t in self._queue)

    def next_due(self) -> float | None:
        """When the next live timer is due, or None."""
        queue = self._queue
        while queue and queue[0][2].cancelled():
            heapq.heappop(queue)
        return queue[0][0] if queue else None

    def step(self) -> int:
        """One loop iteration: run the callbacks due now, as they stood when
        it began (what they schedule runs in a later step). Returns how many
        ran."""
        due = []
        queue = self._queue
        while queue and queue[0][0] <= self._now:
            due.append(heapq.heappop(queue)[2])
        ran = 0
        for timer in due:
            if not timer.cancelled():
                timer.callback(*timer.args)
                ran += 1
        return ran

    def advance(self, seconds: float = 0.0) -> int:
        """Move time on by ``seconds``, stepping through every timer due by
        then at its due time (and what those schedule within the window).
        Returns how many callbacks ran."""
        end = self._now + max(seconds, 0.0)
        ran = self.step()
        for _ in range(MAX_STEPS):
            when = self.next_due()
            if when is None or when > end:
                break
            self._now = max(self._now, when)
            ran += self.step()
        else:
            raise RuntimeError(f"ManualClock.advance: still busy after {MAX_STEPS} steps")
        self._now = max(self._now, end)
        return ran


#: Most loop iterations one :meth:`ManualClock.advance` runs (a callback that
#: reschedules itself at once forever would otherwise never return).
MAX_STEPS = 100_000
