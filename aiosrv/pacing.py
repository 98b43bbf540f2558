"""When to write: flushes paced by what writing costs (sans-I/O).

A flush writes every connection that has frames pending: one system call per
connection, whatever the number of messages each carries. Its cost is set by
the number of receivers, not the number of messages: at 1,000 subscribers a
flush is about 1,000 system calls (3 ms here), at 10,000 about 40 ms. Flushing
once per message therefore saturates the server near 300 messages/s at 1,000
subscribers, while the same CPU flushing every few milliseconds carries
thousands of messages a second.

:class:`FlushPacer` keeps the time spent writing to a share of the loop's time
while messages keep coming, with credit so that light load never waits:

* time outside flushes earns credit, second for second, up to what one pass
  over every connection costs (``pass_size`` connections at the measured
  cost per write, at most ``max_wait``): so a message after a quiet spell is
  written to everyone at once, but a burst of messages cannot run pass after
  pass back to back and starve the loop;
* a flush that took ``c`` seconds spends ``c * (1 - share) / share`` of it
  (with ``share`` 0.5, as much as it took);
* a flush may start when the credit is not negative; otherwise it waits until
  the credit is back to zero, but never longer than ``max_wait`` (so debt
  beyond ``max_wait`` is forgiven: an overload leaves no debt that would
  delay the light load after it).

At light load the credit stays positive and every message is written in the
loop iteration it was fanned out in. When flushing would take more than
``share`` of the time, flushes are spaced so that it takes exactly that, and
each one carries every message that arrived meanwhile: batching grows with the
load and with the number of receivers, with no message counting. The wait is
bounded by ``max_wait`` (``broadcast.flush_interval``).

The share itself follows the rest of the loop's work. Between two flushes the
pacer reads the thread's CPU time: what was not spent flushing is the loop's
other work (reading requests, answering them, parsing client frames). The
share is what is left of :data:`BUSY_TARGET` after that work, between
:data:`MIN_SHARE` and ``max_share`` (``broadcast.write_share``). So when
publishers keep the loop busy, flushes become rarer and larger and the loop
keeps idle time to absorb bursts; a loop with nothing else to do writes as
often as ``max_share`` allows. Without that, a loop 80% busy on average falls
behind for hundreds of milliseconds after any stall (a garbage collection, a
burst of requests), because it has too little idle time to catch up.

The pacer only does arithmetic on the times it is given; the hub supplies them
from its clock, so tests drive it with a clock of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PacerSettings:
    #: the most of the loop's time flushing may take while messages keep coming
    max_share: float = 0.7
    #: the longest a pending frame waits for its flush (seconds)
    max_wait: float = 0.05


#: Least credit idle time can earn (seconds), whatever flushes cost.
MIN_BURST = 0.001
#: The share of the time the loop should be busy at most, flushing included.
BUSY_TARGET = 0.85
#: The least share of the time flushing gets, however busy the loop is.
MIN_SHARE = 0.1
#: Time constant (seconds) of the smoothed measure of the loop's other work.
SMOOTHING = 0.2
#: A debt smaller than this (seconds) is no reason to wait.
EPSILON = 1e-6


class FlushPacer:
    """Decides when the next flush may run, from what the last ones cost."""

    __slots__ = (
        "_at",
        "_credit",
        "_flush_cpu",
        "_settings",
        "_window_cpu",
        "_window_start",
        "cost_ewma",
        "last_cost",
        "other_load",
        "paced",
        "pass_size",
        "seconds_writing",
        "share",
        "write_cost",
    )

    def __init__(self, settings: PacerSettings, now: float = 0.0) -> None:
        self._settings = settings
        self._credit = MIN_BURST
        self._at = now
        self._window_start: float | None = None  # when the last flush began
        self._window_cpu = 0.0  # the thread's CPU time then
        self._flush_cpu = 0.0  # CPU time the last flush took
        self.share = settings.max_share  # the share in force
        self.other_load = 0.0  # smoothed share of the time spent on other work
        self.last_cost = 0.0  # seconds the last flush took
        self.cost_ewma = 0.0  # smoothed seconds per flush (for stats)
        self.write_cost = 0.0  # smoothed seconds per connection written
        self.pass_size = 0  # connections a whole pass writes (the hub keeps it current)
        self.seconds_writing = 0.0  # total time spent in flushes
        self.paced = 0  # flushes that had to wait for credit

    @property
    def settings(self) -> PacerSettings:
        return self._settings

    def configure(self, settings: PacerSettings) -> None:
        if not 0 < settings.max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {settings.max_share}")
        self._settings = settings
        self.share = self._share()
        self._credit = min(self._credit, self.burst)

    @property
    def burst(self) -> float:
        """Most credit idle time can earn: what a pass over ``pass_size``
        connections costs (until writes were measured: what a flush costs), at
        least :data:`MIN_BURST`, at most ``max_wait``."""
        one_pass = self.write_cost * self.pass_size if self.write_cost else self.cost_ewma
        return min(max(one_pass, MIN_BURST), max(self._settings.max_wait, MIN_BURST))

    def credit(self, now: float) -> float:
        """Seconds of credit at ``now`` (negative: the debt a flush must wait off)."""
        if now > self._at:
            self._credit = min(self.burst, self._credit + (now - self._at))
            self._at = now
        return self._credit

    def delay(self, now: float) -> float:
        """Seconds to wait before flushing: 0 means flush now."""
        credit = self.credit(now)
        if credit > -EPSILON:
            return 0.0
        return min(-credit, self._settings.max_wait)

    def charge(self, start: float, end: float) -> float:
        """Writing ran from ``start`` to ``end`` (a flush, or replies to a few
        connections): spend its credit at the share in force. Returns the cost
        in seconds."""
        self.credit(start)
        cost = max(end - start, 0.0)
        # Debt beyond max_wait buys nothing (no flush waits longer) and would
        # outlive the load: after an overload, light load would wait for
        # seconds. So it is forgiven past one max_wait.
        self._credit = max(
            self._credit - cost * (1.0 - self.share) / self.share, -self._settings.max_wait
        )
        self._at = max(end, self._at)
        self.seconds_writing += cost
        return cost

    def record(
        self,
        start: float,
        end: float,
        cpu_start: float,
        cpu_end: float,
        paced: bool = False,
        written: int = 0,
    ) -> None:
        """A flush ran from ``start`` to ``end`` (wall clock), the thread's CPU
        time reading ``cpu_start`` and ``cpu_end`` around it, and wrote to
        ``written`` connections; ``paced``: it waited for credit."""
        if self._window_start is not None:
            window = start - self._window_start
            if window > 0:
                other = (cpu_start - self._window_cpu - self._flush_cpu) / window
                weight = min(1.0, window / SMOOTHING)
                self.other_load += weight * (min(max(other, 0.0), 1.0) - self.other_load)
        self._window_start = start
        self._window_cpu = cpu_start
        self._flush_cpu = max(cpu_end - cpu_start, 0.0)
        self.share = self._share()
        cost = self.charge(start, end)
        self.last_cost = cost
        self.cost_ewma = cost if not self.cost_ewma else self.cost_ewma * 0.9 + cost * 0.1
        if written > 0:
            per_write = cost / written
            self.write_cost = (
                per_write if not self.write_cost else self.write_cost * 0.9 + per_write * 0.1
            )
        self.paced += paced

    def _share(self) -> float:
        return min(self._settings.max_share, max(MIN_SHARE, BUSY_TARGET - self.other_load))
