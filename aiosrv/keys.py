"""The typed keys of aiosrv's aiohttp applications.

They live apart from ``app.py`` (which imports every handler) so that the
handlers can import them at module level: a handler looks its server up with
one dict access, and is type-checked against :class:`~aiosrv.server.Server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from .server import Server
    from .session import SessionContext

SERVER: web.AppKey[Server] = web.AppKey("aiosrv_server")
#: what the WebSocket sessions of the app's server share (upgrade.session_context)
SESSIONS: web.AppKey[SessionContext] = web.AppKey("aiosrv_sessions")
REGISTRY = web.AppKey("aiosrv_registry", CollectorRegistry)
