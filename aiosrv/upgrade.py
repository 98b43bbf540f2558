"""The WebSocket upgrade: handshake glue between aiohttp and the session.

aiohttp parses the upgrade request and routes it; :func:`websocket_handler`
checks it (:mod:`aiosrv.handshake`), admits it (:meth:`Server.admission_refusal`),
writes the ``101`` itself and takes the socket away from aiohttp
(:func:`detach`): from then on the transport's protocol is a
:class:`~aiosrv.connection.Connection` feeding a
:class:`~aiosrv.session.Session`, and no aiohttp request, response, parser or
task stays alive per client. That is what keeps an idle connection at a
couple of KiB, where aiohttp's WebSocket handler holds about 15 KiB.

This is the only module that touches aiohttp's private attributes (the request
handler's ``_message_tail``, a site's ``_server``). They are checked for at
start-up (:func:`check_aiohttp`), ``pyproject.toml`` bounds the aiohttp
versions, and ``tests/server/test_upgrade.py`` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from . import handshake
from .auth import AuthFailed, token_from_request
from .connection import Connection
from .errors import ErrorCode
from .keys import SERVER, SESSIONS
from .logs import audit
from .server import Refusal, Server
from .session import Session, SessionContext

log = logging.getLogger("aiosrv.connection")

#: The aiohttp versions whose internals this module was checked against
#: (keep in step with pyproject.toml's bound).
AIOHTTP_TESTED = ((3, 10), (3, 14))


class AiohttpMismatch(RuntimeError):
    """The installed aiohttp lacks what the socket takeover relies on."""


def check_aiohttp() -> None:
    """Refuse to start on an aiohttp whose internals the takeover does not
    know: outside :data:`AIOHTTP_TESTED`, or without the attributes used."""
    try:
        version = tuple(int(p) for p in aiohttp.__version__.split(".")[:2])
    except ValueError:
        version = (0, 0)
    low, high = AIOHTTP_TESTED
    if not low <= version <= high:
        raise AiohttpMismatch(
            f"aiohttp {aiohttp.__version__} is not supported: aiosrv takes the WebSocket "
            f"socket over from aiohttp's request handler and was checked with "
            f"{low[0]}.{low[1]} to {high[0]}.{high[1]}"
        )
    if "_message_tail" not in getattr(RequestHandler, "__slots__", ()):
        raise AiohttpMismatch(
            f"aiohttp {aiohttp.__version__}: RequestHandler has no _message_tail; "
            "the socket takeover cannot recover the bytes after an upgrade request"
        )


def session_context(server: Server) -> SessionContext:
    """What the sessions of ``server`` share: its parts, narrowed."""
    return SessionContext(
        core=server.core,
        hub=server.hub,
        history=server.broker.history,
        config=lambda: server.config,
        counters=server.stats,
        registry=server,
        clock=server.clock,
        policy=lambda: server.policy,
        spawn=_spawn,
    )


def _spawn(coro: Any) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)


def listening_sockets(site: web.BaseSite) -> list[socket.socket]:
    """The sockets a started site listens on."""
    server: Any = getattr(site, "_server", None)
    return list(getattr(server, "sockets", None) or [])


def stop_listening(site: web.BaseSite) -> None:
    """Close a site's listening sockets, leaving its connections open."""
    server: Any = getattr(site, "_server", None)
    if server is not None:
        server.close()


def detach(request: web.Request) -> tuple[asyncio.Transport, bytes]:
    """Take the socket of an accepted upgrade away from aiohttp.

    Returns the transport and the bytes the client sent after the request
    head. aiohttp's request handler is told the connection is gone (so its
    server forgets it and its task ends without writing anything), which
    relies on aiohttp's ``RequestHandler`` keeping the bytes after an upgrade
    request in ``_message_tail``; ``tests/server/test_upgrade.py`` pins that.
    """
    handler: Any = request.protocol
    transport = request.transport
    if transport is None or handler is None:
        raise ConnectionResetError("the client went away during the upgrade")
    tail = bytes(handler._message_tail)
    handler._message_tail = b""
    handler.transport = None
    handler.connection_lost(None)
    return transport, tail


def set_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    """SO_SNDBUF of a connection's socket (websocket.socket_send_buffer)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError as exc:  # a closed socket, or a transport without a real one
        log.debug("cannot set SO_SNDBUF to %d: %s", size, exc)


def _refuse_handshake(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _refused(
    server: Server,
    request: web.Request,
    address: str,
    refusal: Refusal,
    event: str,
    reason: str | None = None,
    **extra: Any,
) -> web.Response:
    audit(server.config.logging.audit_log, logging.WARNING, event, addr=address,
          path=request.path, status=refusal.status, reason=reason or refusal.message,
          **extra)  # fmt: skip
    return _refuse_handshake(refusal.status, refusal.code, refusal.message)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """The upgrade endpoint (``/ws/realtime``, ``/ws`` and ``/``), any method.

    In order: the request must be a valid RFC 6455 upgrade (400, 426), its
    address within the connect rate (429), its origin allowed (403), the
    server not draining or full (503), its token valid when auth is on (401),
    its user within the per-user limit (429). Each refusal is a JSON error
    body saying why, and an audit line for the security ones.
    """
    server = request.app[SERVER]
    ctx = request.app[SESSIONS]
    try:
        key = handshake.check_upgrade(
            request.method, request.headers, (request.version.major, request.version.minor)
        )
    except handshake.NotAnUpgrade:
        return _refuse_handshake(
            426,
            ErrorCode.UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket; send an Upgrade: websocket request",
            Upgrade="websocket",
        )
    except handshake.BadHandshake as exc:
        extra = {"Sec-WebSocket-Version": handshake.VERSION} if exc.status == 426 else {}
        return _refuse_handshake(exc.status, ErrorCode.BAD_HANDSHAKE, exc.message, **extra)
    address = server.client_address(request.transport, request.headers)
    refusal = server.connect_refusal(address)
    if refusal is not None:
        return _refused(server, request, address, refusal, "connection rate limited")
    policy = server.policy
    origin = request.headers.get("Origin")
    if not policy.origins.allows(origin):
        server.stats.rejected["origin"] += 1
        refusal = Refusal(
            403, ErrorCode.ORIGIN_REFUSED, f"origin {origin!r} is not allowed to connect"
        )
        return _refused(server, request, address, refusal, "origin refused", origin=origin)
    refusal = server.admission_refusal()
    if refusal is not None:
        return _refuse_handshake(refusal.status, refusal.code, refusal.message)
    authenticator = policy.authenticator
    subprotocol = None
    if authenticator.enabled:
        token, subprotocol = token_from_request(request.headers, request.query)
        try:
            principal = authenticator.authenticate(token)
        except AuthFailed as exc:
            server.stats.rejected["unauthorized"] += 1
            server.stats.auth_failures += 1
            refusal = Refusal(401, ErrorCode.UNAUTHORIZED, f"authentication failed: {exc.reason}")
            return _refused(
                server, request, address, refusal, "authentication failed", exc.reason
            )
    else:
        principal = authenticator.anonymous()
    refusal = await server.user_refusal(principal, address)
    if refusal is not None:
        return _refuse_handshake(refusal.status, refusal.code, refusal.message)
    cfg = server.config.websocket
    deflate = (
        handshake.negotiate_deflate(request.headers.getall("Sec-WebSocket-Extensions", ()))
        if cfg.compression
        else None
    )
    transport, tail = detach(request)
    if cfg.socket_send_buffer:
        set_send_buffer(transport, cfg.socket_send_buffer)
    peername = transport.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if peername else "unknown"
    if peername and address != str(peername[0]):
        peer = f"{address} via {peer}"  # what a trusted proxy says, and the proxy
    session = Session(ctx, transport, peer, deflate, request.path, principal)
    transport.set_protocol(Connection(session))
    transport.write(handshake.response_head(key, deflate, subprotocol))
    server.register(session)
    log.info("Client %s connected from %s (%s) user=%s", session.id, peer, request.path,
             principal.user)  # fmt: skip
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "Client %s handshake: origin=%s auth=%s expires_at=%s deflate=%s "
            "user-agent=%r",
            session.id, origin, principal.method, principal.expires_at,
            deflate.header if deflate else None, request.headers.get("User-Agent"),
        )  # fmt: skip
    session.start_expiry_timer()
    if not transport.is_reading():
        transport.resume_reading()
    if tail:
        session.receive_data(tail)
    return _Detached(address, principal.user)


class _Detached(web.StreamResponse):
    """What the handler returns once the socket is the Connection's: aiohttp
    has nothing left to write. Its status is what the access log shows."""

    def __init__(self, address: str, user: str) -> None:
        super().__init__(status=101)
        # for the access log: the socket is no longer aiohttp's to ask
        self.client_address = address
        self.user = user

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
