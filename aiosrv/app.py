"""aiohttp applications over one :class:`~aiosrv.server.Server`.

``create_app(config)`` is the library entry point: one application with the
WebSocket endpoint, the HTTP API and ``/metrics``, whose start-up and
clean-up start and stop the server. The ``serve`` command builds one
application per distinct port instead (``runner.py``), all sharing one server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from aiohttp import web

from .api import API_ROUTES, METRICS_ROUTES
from .clock import Clock
from .config import Config, default_config
from .keys import REGISTRY, SERVER, SESSIONS
from .metrics import make_registry
from .server import Server
from .upgrade import session_context, websocket_handler

__all__ = ["REGISTRY", "SERVER", "create_app"]

ALL_PARTS = ("ws", "api", "metrics")

#: Largest HTTP request body (POST /api/publish batches), in bytes.
MAX_HTTP_BODY = 8 * 1024 * 1024


def _ws_routes(config: Config) -> list[web.RouteDef]:
    # every method: a non-GET gets the handshake's 400 (docs/protocol.md), not a 405
    return [web.route("*", path, websocket_handler) for path in config.websocket.paths]


def create_app(
    config: Config | None = None,
    *,
    server: Server | None = None,
    parts: Iterable[str] = ALL_PARTS,
    clock: Clock | None = None,
) -> web.Application:
    """An aiohttp application serving ``parts`` of aiosrv.

    Without ``server`` a new :class:`Server` is made from ``config`` (and
    ``clock``, the real one unless given: see :mod:`aiosrv.clock`) (defaults
    when None) and started and stopped with the application. Publish from
    Python with ``await app[SERVER].publish(type, payload, key=None)``.
    """
    owns = server is None
    if server is None:
        server = Server(config or default_config(), clock=clock)
    parts = tuple(parts)
    app = web.Application(client_max_size=MAX_HTTP_BODY)
    app[SERVER] = server
    if "metrics" in parts:
        app[REGISTRY] = make_registry(server)
        app.add_routes(METRICS_ROUTES)
    if "api" in parts:
        app.add_routes(API_ROUTES)
    if "ws" in parts:
        app[SESSIONS] = session_context(server)
        app.add_routes(_ws_routes(server.config))
    if owns:
        # on_shutdown runs before aiohttp cancels the handlers: clients get 1001
        app.on_shutdown.append(_server_shutdown)
        app.cleanup_ctx.append(_server_lifetime)
    return app


async def _server_shutdown(app: web.Application) -> None:
    await app[SERVER].shutdown()


async def _server_lifetime(app: web.Application) -> AsyncIterator[None]:
    server = app[SERVER]
    await server.start()
    yield
    await server.stop()
