"""The access log: one line per HTTP request and WebSocket upgrade.

aiohttp calls :class:`AccessLogger` after each response (a WebSocket upgrade's
is the ``101`` of :class:`aiosrv.upgrade._Detached`); it writes to the
``aiosrv.access`` logger when ``logging.access_log`` is on (live), in the
operations guide's format plus the duration::

    ADDR - USER [02/Dec/2026:21:40:00 +0000] "GET /ws/realtime?token=*** HTTP/1.1" 101 0 1.2ms

ADDR is the client's (trusted proxies' headers believed), USER the
authenticated user of an upgrade (``anonymous`` with auth off) or ``-``, and
a ``token`` in the query is never written.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .logs import ACCESS

if TYPE_CHECKING:
    from .server import Server

__all__ = ["AccessLogger", "access_logger_for"]


class AccessLogger(AbstractAccessLogger):
    """One line per HTTP request and WebSocket upgrade, when logging.access_log
    is on (live): ``ADDR - USER [TIME] "METHOD PATH HTTP/x.y" STATUS BYTES MSms``,
    the operations guide's format plus the duration. A ``token`` in the query
    shows as ``token=***``. One subclass per server (:func:`access_logger_for`):
    aiohttp makes the instances, and a request it could not parse has no
    application to find the server through."""

    server: ClassVar[Server | None] = None

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float
    ) -> None:
        server = self.server
        if server is None or not server.config.logging.access_log:
            return
        query = "&".join(
            f"{k}=***" if k == "token" else f"{k}={v}" for k, v in request.query.items()
        )
        target = request.path + (f"?{query}" if query else "")
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z")
        ACCESS.info(
            '%s - %s [%s] "%s %s HTTP/%d.%d" %d %s %.1fms',
            getattr(response, "client_address", None)
            or server.client_address(request.transport, request.headers),
            getattr(response, "user", None) or "-",
            stamp,
            request.method,
            target,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length if response.status != 101 else 0,
            elapsed * 1000,
        )

    @property
    def enabled(self) -> bool:
        return ACCESS.isEnabledFor(logging.INFO)


def access_logger_for(server: Server) -> type[AccessLogger]:
    """The access logger class of ``server``'s listeners."""
    return type("AccessLogger", (AccessLogger,), {"server": server})
