"""When to write: flushes paced by what writing costs (sans-I/O).

A pass writes every connection that has frames pending: one system call per
connection, whatever the number of messages each carries. Its cost is set by
the number of receivers, not the number of messages: at 1,000 subscribers a
pass is about 1,000 system calls (3.5 ms here), at 10,000 50 to 70 ms. A pass
per message therefore saturates the server near 300 messages/s at 1,000
subscribers, while the same CPU writing every few milliseconds carries
thousands of messages a second.

:class:`FlushPacer` keeps the time spent writing to a ``share`` of the loop's
time while messages keep coming, and lets light load wait for nothing:

* **Debt.** A flush that took ``c`` seconds costs ``c * (1 - share) / share``
  of credit: with ``share`` 0.5, as much as it took. A flush may start when the
  credit is not negative; otherwise it waits until the time outside flushes
  has paid the debt off (never longer than ``max_wait``,
  ``broadcast.flush_interval``), and then carries every message that arrived
  meanwhile. So when messages keep coming, writing takes ``share`` of the time
  and batching grows with the load and the number of receivers, with no
  message counting.
* **Credit from idle time only.** Time the loop spends on other work (reading
  and answering requests, parsing client frames) pays debt off but earns no
  credit beyond zero; only idle time does: wall time the loop's thread was
  not busy (``clock.busy_time``: neither running nor waiting for a CPU, so a
  worker sharing its core with another is not taken for idle).
  A loop that is behind, with requests waiting, therefore never gets flushes
  back to back: each waits its debt off, and the requests get their
  ``1 - share`` of the time.
* **Light load never waits.** Idle time pays debt off faster than busy time
  (:data:`IDLE_WEIGHT`: a loop with nothing else to do may write more than its
  share) and earns up to one pass's worth of credit (the measured cost per
  connection written times ``pass_size``), so a message after a quiet spell
  is written to everyone at once, but a burst of messages cannot run pass
  after pass and starve the loop.
* **No debt outlives the load.** Debt beyond ``max_wait`` buys nothing (no
  flush waits longer) and is forgiven, so the light load after an overload
  does not wait for seconds.

The pacer only does arithmetic on the times it is given; the hub supplies them
from its clocks, so tests drive it with clocks of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PacerSettings:
    #: the share of the loop's time flushing may take while messages keep coming
    share: float = 0.5
    #: the longest a pending frame waits for its flush (seconds)
    max_wait: float = 0.05


#: Least and most credit idle time can earn (seconds), whatever a pass costs.
MIN_BURST = 0.001
MAX_BURST = 1.0
#: How many seconds of debt a second of idle time pays off (a second of other
#: work pays one). With nothing else to do the loop may write more than its
#: share: at 0.5, up to 0.75 of the time when it is otherwise idle.
IDLE_WEIGHT = 3.0
#: A debt smaller than this (seconds) is no reason to wait.
EPSILON = 1e-6


class FlushPacer:
    """Decides when the next flush may run, from what the last ones cost."""

    __slots__ = (
        "_at",
        "_cpu_at",
        "_credit",
        "_settings",
        "cost_ewma",
        "last_cost",
        "paced",
        "pass_size",
        "seconds_writing",
        "write_cost",
    )

    def __init__(self, settings: PacerSettings, now: float = 0.0) -> None:
        _check(settings)
        self._settings = settings
        self._credit = MIN_BURST
        self._at = now  # when the credit was last brought up to date
        self._cpu_at: float | None = None  # the thread's CPU time then, once known
        self.last_cost = 0.0  # seconds the last flush took
        self.cost_ewma = 0.0  # smoothed seconds per flush (for stats)
        self.write_cost = 0.0  # smoothed seconds per connection written
        self.pass_size = 0  # connections a whole pass writes (the hub keeps it current)
        self.seconds_writing = 0.0  # total time spent writing
        self.paced = 0  # flushes that waited for credit

    @property
    def settings(self) -> PacerSettings:
        return self._settings

    @property
    def share(self) -> float:
        return self._settings.share

    def configure(self, settings: PacerSettings) -> None:
        _check(settings)
        self._settings = settings
        self._credit = max(min(self._credit, self.burst), -settings.max_wait)

    @property
    def burst(self) -> float:
        """Most credit idle time can earn: what a pass over ``pass_size``
        connections costs (until writes were measured: what a flush costs),
        between :data:`MIN_BURST` and :data:`MAX_BURST`. A pass goes in chunks
        with the loop served between them, so a whole one at once starves
        nobody; 10,000 connections cost 50 to 70 ms."""
        one_pass = self.write_cost * self.pass_size if self.write_cost else self.cost_ewma
        return min(max(one_pass, MIN_BURST), MAX_BURST)

    def credit(self, now: float, cpu: float | None = None) -> float:
        """Seconds of credit at ``now`` (negative: the debt a flush must wait off).

        ``cpu`` is the thread's CPU time at ``now``: the part of the time since
        the last update that the loop spent working pays debt off but earns
        no credit beyond what it had; the idle part pays and earns
        :data:`IDLE_WEIGHT` times as fast. Without it (and before the first
        reading) all of that time counts as working time."""
        if now > self._at:
            earned = now - self._at
            cap = self.burst
            if cpu is not None:
                if self._cpu_at is not None:
                    idle = max(earned - max(cpu - self._cpu_at, 0.0), 0.0)
                    cap = min(cap, max(self._credit, 0.0) + IDLE_WEIGHT * idle)
                    earned += (IDLE_WEIGHT - 1.0) * idle
                self._cpu_at = cpu
            self._credit = min(cap, self._credit + earned)
            self._at = now
        return self._credit

    def delay(self, now: float, cpu: float | None = None) -> float:
        """Seconds to wait before flushing: 0 means flush now (``cpu``: as
        for :meth:`credit`)."""
        credit = self.credit(now, cpu)
        if credit > -EPSILON:
            return 0.0
        return min(-credit, self._settings.max_wait)

    def charge(
        self, start: float, end: float, cpu_start: float | None = None, cpu_end: float | None = None
    ) -> float:
        """Writing ran from ``start`` to ``end`` (a flush, or replies to a few
        connections; ``cpu_*``: the thread's CPU time then): spend its credit.
        Returns the cost in seconds."""
        self.credit(start, cpu_start)
        cost = max(end - start, 0.0)
        share = self._settings.share
        self._credit = max(self._credit - cost * (1.0 - share) / share, -self._settings.max_wait)
        if end > self._at:
            self._at = end
        if cpu_end is not None:
            self._cpu_at = cpu_end
        self.seconds_writing += cost
        return cost

    def record(
        self,
        start: float,
        end: float,
        cpu_start: float | None = None,
        cpu_end: float | None = None,
        paced: bool = False,
        written: int = 0,
    ) -> None:
        """A flush ran from ``start`` to ``end`` (wall clock; ``cpu_*``: the
        thread's CPU time then) and wrote to ``written`` connections;
        ``paced``: it waited for credit."""
        cost = self.charge(start, end, cpu_start, cpu_end)
        self.last_cost = cost
        self.cost_ewma = cost if not self.cost_ewma else self.cost_ewma * 0.9 + cost * 0.1
        if written > 0:
            per_write = cost / written
            self.write_cost = (
                per_write if not self.write_cost else self.write_cost * 0.9 + per_write * 0.1
            )
        self.paced += paced


def _check(settings: PacerSettings) -> None:
    if not 0 < settings.share <= 1:
        raise ValueError(f"share must be in (0, 1], got {settings.share}")
    if settings.max_wait < 0:
        raise ValueError(f"max_wait must be >= 0, got {settings.max_wait}")
