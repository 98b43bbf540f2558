"""What the server counts, and the sampler that turns totals into rates.

:class:`Counters` are incremented where the event happens (a connection
refused, an error reply, a close); :class:`Sampler` reads the running totals
and the process (CPU, RSS) on its clock. ``stats.py`` builds the snapshots
that ``/stats``, ``/status``, ``/health``, the built-in sources and the
metrics answer with from these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from .clock import Clock


class Rate:
    """Events per second between the last two samples of a running total,
    smoothed over a few samples so one quiet tick does not read as zero."""

    __slots__ = ("_last_t", "_last_total", "value")

    def __init__(self) -> None:
        self._last_total = 0
        self._last_t = 0.0
        self.value = 0.0

    def sample(self, total: int, now: float) -> float:
        if self._last_t:
            dt = now - self._last_t
            if dt > 0:
                inst = (total - self._last_total) / dt
                self.value = inst if self.value == 0 else 0.5 * self.value + 0.5 * inst
        self._last_total = total
        self._last_t = now
        return self.value


#: How long /health stays degraded after accept() last failed for lack of
#: file descriptors (or memory).
ACCEPT_ERROR_WINDOW = 30.0


@dataclass
class Counters:
    connections_total: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages_in: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    slow_consumer_closes: int = 0
    heartbeat_timeouts: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0
    published_http: int = 0
    published_ws: int = 0
    published_sources: int = 0
    auth_failures: int = 0  # upgrades refused with 401 (also in rejected["unauthorized"])
    user_limit_closes: int = 0  # closed with 1008 to make room for the same user's newer one
    flood_closes: int = 0  # closed with 1008 for flooding past the message rate limit
    rate_limited_messages: int = 0  # messages refused with rate_limited
    token_expired_closes: int = 0  # closed with 1008 when the JWT expired unrefreshed
    #: connections whose first request head was refused before aiohttp saw it
    #: (aiosrv.guard), by reason: handshake_timeout, header_too_large,
    #: max_connections, tls_failed
    handshakes_refused: Counter[str] = field(default_factory=Counter)
    #: accept() calls that failed for lack of a resource (aiosrv.listen), by
    #: errno name (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    accept_errors: Counter[str] = field(default_factory=Counter)
    #: clock time and text of the last of them
    accept_error_at: float | None = None
    accept_error_text: str = ""

    def count_error(self, code: str) -> None:
        self.errors[code] += 1

    def accept_trouble(self, now: float) -> str | None:
        """Why /health is degraded because connections could not be accepted
        (within ACCEPT_ERROR_WINDOW of the last failure), or None."""
        at = self.accept_error_at
        if at is None or now - at >= ACCEPT_ERROR_WINDOW:
            return None
        text = self.accept_error_text
        if text.startswith(("EMFILE", "ENFILE")):
            what = "out of file descriptors"
            fix = "raise the open-files limit (ulimit -n, LimitNOFILE) or lower max_connections"
        else:
            what = "out of memory for sockets"
            fix = "see the host's memory"
        return (
            f"{what}: accept() failed {now - at:.0f} s ago ({text}; "
            f"{sum(self.accept_errors.values())} failures since start), new connections "
            f"wait in the listen backlog; {fix}"
        )


#: Shortest wall time a CPU reading is taken over: psutil counts CPU time in
#: clock ticks (10 ms), so over a few milliseconds one tick reads as hundreds
#: of percent.
CPU_MIN_INTERVAL = 0.25


class Sampler:
    """Process readings and rates, refreshed by :meth:`sample` (once a second
    by the sources task, and on demand by the HTTP API)."""

    def __init__(self, totals: Callable[[], tuple[int, int, int, int]], clock: Clock) -> None:
        """``totals()``: the running totals of messages published (fanned
        out), delivered, received from clients, and error replies."""
        self._totals = totals
        self.clock = clock
        self.process = psutil.Process()
        self.process.cpu_percent(None)
        self._cpu_at = clock.time()
        self.published = Rate()
        self.delivered = Rate()
        self.received = Rate()
        self.errors = Rate()
        self.cpu_percent = 0.0
        self.rss = 0
        self.loop_lag = 0.0
        self._last = 0.0

    def sample(self, force: bool = False) -> None:
        """Read the totals and the process; at most every half second unless
        ``force``."""
        now = self.clock.time()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        published, delivered, received, errors = self._totals()
        self.published.sample(published, now)
        self.delivered.sample(delivered, now)
        self.received.sample(received, now)
        self.errors.sample(errors, now)
        try:
            if now - self._cpu_at >= CPU_MIN_INTERVAL:
                self.cpu_percent = self.process.cpu_percent(None)
                self._cpu_at = now
            self.rss = self.process.memory_info().rss
        except OSError:  # no descriptor free to read /proc: keep the last readings
            pass

    @property
    def error_rate(self) -> float:
        """Errors per client message over the last samples (0 when idle)."""
        received = self.received.value
        return min(self.errors.value / received, 1.0) if received > 0 else 0.0
