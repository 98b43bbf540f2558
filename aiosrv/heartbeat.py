"""One shared heartbeat timer for every connection.

A timer per connection costs a handle and a callback each; here one timer
ticks at the resolution of the core's timing wheel (``FanOut.heartbeat``: an
eighth of the shorter of ``heartbeat_interval`` and ``heartbeat_timeout``,
between 5 ms and 1 s). A tick touches only the connections whose bucket came
due: each gets its pre-built ping frame every ``heartbeat_interval`` after it
connected (so pings are spread over time as connections were, not one burst
to everyone), and those silent (no frame of any kind, pongs included) for
``heartbeat_timeout`` are closed with 4000. An idle tick costs a few list
look-ups, whatever the number of connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from .clock import Clock, Timer
from .counters import Counters
from .errors import CloseCode
from .fanout import OP_PING, FanOut, encode_frame

log = logging.getLogger("aiosrv.heartbeat")

PING_FRAME = encode_frame(b"", OP_PING)


class Closable(Protocol):
    """What the heartbeat needs of a connection (a subscriber's ``owner``)."""

    id: str
    closing: bool

    def close_soon(self, code: int, reason: str, *, drop_pending: bool = False) -> None: ...


class Heartbeat:
    """Pings and silence timeouts for every connection of ``core``.

    ``settings()`` gives the current ``(heartbeat_interval,
    heartbeat_timeout)``; ``schedule_flush`` sends the pings queued (the
    hub's paced flush); ``is_draining()`` stops the checks during shutdown."""

    def __init__(
        self,
        core: FanOut,
        settings: Callable[[], tuple[float, float]],
        schedule_flush: Callable[[], None],
        counters: Counters,
        clock: Clock,
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.core = core
        self._get_settings = settings
        self._schedule_flush = schedule_flush
        self.counters = counters
        self.clock = clock
        self._is_draining = is_draining
        self._timer: Timer | None = None
        self._settings: tuple[float, float] | None = None

    @property
    def pings_sent(self) -> int:
        return int(self.core.pings)

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        self.configure()
        self._arm()

    def configure(self) -> None:
        """Give the core's wheel the configured interval and timeout (at start
        and after a reload); pings due later than one new interval from now are
        brought forward."""
        interval, timeout = self._settings = self._get_settings()
        self.core.configure_heartbeat(interval, timeout, self.clock.time())

    def reschedule(self) -> None:
        """Re-read the interval and timeout now (after a reload); nothing to do
        when neither changed."""
        if self._timer is None:
            return
        if self._settings == self._get_settings():
            return
        self._timer.cancel()
        try:
            self.configure()
        finally:
            self._arm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self.clock.call_later(self.core.heartbeat_tick, self._tick)

    def _tick(self) -> None:
        try:
            self.tick(self.clock.time())
        except Exception:  # never let one bad tick stop the heartbeat
            log.exception("heartbeat tick failed")
        self._arm()

    def tick(self, now: float) -> None:
        if self._is_draining():
            return
        for sub in self.core.heartbeat(now, PING_FRAME):
            conn: Closable | None = sub.owner
            if conn is None or conn.closing:
                continue
            self.counters.heartbeat_timeouts += 1
            log.info(
                "Client %s heartbeat timeout: no traffic for %.1fs", conn.id, now - sub.last_seen
            )
            try:
                conn.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            except Exception:  # one broken connection must not spare the others
                log.exception("Client %s: closing after heartbeat timeout failed", conn.id)
        # Pings ride the next flush, paced with the data. A ping that overflowed
        # a slow consumer queued nothing, but the consumer must still be closed.
        self._schedule_flush()
