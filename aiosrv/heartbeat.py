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

import asyncio
import logging
from typing import TYPE_CHECKING

from .errors import CloseCode
from .fanout import OP_PING, encode_frame

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("aiosrv.heartbeat")

PING_FRAME = encode_frame(b"", OP_PING)


class Heartbeat:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._timer: asyncio.TimerHandle | None = None
        self._settings: tuple[float, float] | None = None

    @property
    def pings_sent(self) -> int:
        return int(self.server.core.pings)

    def start(self) -> None:
        self.configure()
        self._arm()

    def configure(self) -> None:
        """Give the core's wheel the configured interval and timeout (at start
        and after a reload); pings due later than one new interval from now are
        brought forward."""
        cfg = self.server.config.websocket
        self.server.core.configure_heartbeat(
            cfg.heartbeat_interval, cfg.heartbeat_timeout, self.server.loop.time()
        )
        self._settings = (cfg.heartbeat_interval, cfg.heartbeat_timeout)

    def reschedule(self) -> None:
        """Re-read the interval and timeout now (after a reload); nothing to do
        when neither changed."""
        if self._timer is None:
            return
        cfg = self.server.config.websocket
        if self._settings == (cfg.heartbeat_interval, cfg.heartbeat_timeout):
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
        self._timer = self.server.loop.call_later(self.server.core.heartbeat_tick, self._tick)

    def _tick(self) -> None:
        try:
            self.tick(self.server.loop.time())
        except Exception:  # never let one bad tick stop the heartbeat
            log.exception("heartbeat tick failed")
        self._arm()

    def tick(self, now: float) -> None:
        server = self.server
        if server.draining:
            return
        core = server.core
        for sub in core.heartbeat(now, PING_FRAME):
            conn = sub.owner
            if conn is None or conn.closing:
                continue
            server.stats.heartbeat_timeouts += 1
            log.info(
                "Client %s heartbeat timeout: no traffic for %.1fs", conn.id, now - sub.last_seen
            )
            try:
                conn.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
            except Exception:  # one broken connection must not spare the others
                log.exception("Client %s: closing after heartbeat timeout failed", conn.id)
        # Pings ride the next flush, paced with the data. A ping that overflowed
        # a slow consumer queued nothing, but the consumer must still be closed.
        server.hub.schedule_flush()
