"""One shared heartbeat timer for every connection.

A timer per connection costs a handle and a callback each; here one timer
ticks a few times per interval: every ``heartbeat_interval`` it queues one
pre-built ping frame to all connections through the core, and on every tick it
asks the core which connections have been silent (no frame of any kind, pongs
included) for ``heartbeat_timeout`` and closes them with 4000.
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
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.pings_sent = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aiosrv-heartbeat")

    def reschedule(self) -> None:
        """Re-read the interval and timeout now (after a reload)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def tick_period(self) -> float:
        cfg = self.server.config.websocket
        return max(0.01, min(cfg.heartbeat_interval, cfg.heartbeat_timeout) / 4)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.server.config.websocket.heartbeat_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.tick_period())
            except asyncio.TimeoutError:
                pass
            if self._wake.is_set():
                self._wake.clear()
                next_ping = min(
                    next_ping, loop.time() + self.server.config.websocket.heartbeat_interval
                )
            try:
                next_ping = self.tick(loop.time(), next_ping)
            except Exception:  # never let one bad tick stop the heartbeat
                log.exception("heartbeat tick failed")

    def tick(self, now: float, next_ping: float) -> float:
        server = self.server
        cfg = server.config.websocket
        if server.draining:
            return next_ping
        for sub in server.core.expired(now - cfg.heartbeat_timeout):
            conn = sub.owner
            if conn is not None and not conn.closing:
                server.stats.heartbeat_timeouts += 1
                log.info(
                    "Client %s heartbeat timeout: no traffic for %.1fs",
                    conn.id,
                    now - sub.last_seen,
                )
                conn.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        if now >= next_ping:
            self.pings_sent += server.core.send_all(PING_FRAME)
            server.hub.flush()
            next_ping = now + cfg.heartbeat_interval
        return next_ping
