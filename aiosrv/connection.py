"""One WebSocket client: the aiohttp upgrade, the read loop and the actions.

Reading goes through aiohttp (framing, UTF-8 checks, the size limit with 1009,
control frames); every byte the server sends a client, replies included, goes
through the fan-out core's per-connection buffer, so replies and data messages
reach a client in the order they were queued and the send-buffer limit covers
everything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from . import protocol
from .errors import (
    ClientError,
    CloseCode,
    InvalidMessage,
    PublishForbidden,
    TooManySubscriptions,
)
from .fanout import OP_PONG, Subscriber, encode_frame

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("aiosrv.connection")

#: How long a close handshake may take before the socket is aborted.
CLOSE_TIMEOUT = 5.0


def new_connection_id() -> str:
    return secrets.token_hex(6)


class Connection:
    """A connected client and what the server knows of it."""

    __slots__ = (
        "close_code",
        "close_reason",
        "closing",
        "connected_at",
        "id",
        "messages_in",
        "peer",
        "server",
        "sub",
        "ws",
    )

    def __init__(
        self, server: Server, ws: web.WebSocketResponse, transport: Any, peer: str
    ) -> None:
        self.server = server
        self.ws = ws
        self.peer = peer
        self.id = new_connection_id()
        self.connected_at = time.monotonic()
        self.messages_in = 0
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        cfg = server.config.websocket
        # permessage-deflate at the default window: this client takes the hub's
        # shared compressed frames (other window sizes get plain frames, which
        # RFC 7692 allows)
        deflate = ws.compress == 15
        self.sub = Subscriber(self.id, transport, cfg.send_buffer_limit, self, deflate)
        self.sub.last_seen = server.loop.time()

    # -- sending -------------------------------------------------------------

    def send_json(self, data: bytes) -> None:
        """Queue one encoded JSON message to this client, flushed this iteration."""
        if self.server.core.send(self.sub, encode_frame(data)):
            self.server.hub.flush_soon()

    def send_error(self, error: ClientError) -> None:
        self.server.stats.count_error(error.code)
        self.send_json(protocol.encode_error(error))

    # -- reading -------------------------------------------------------------

    async def run(self) -> None:
        ws = self.ws
        loop = self.server.loop
        sub = self.sub
        while True:
            msg = await ws.receive()
            sub.last_seen = loop.time()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                self.messages_in += 1
                self.server.stats.messages_in += 1
                await self.handle_text(msg.data)
            elif kind is WSMsgType.PING:
                # aiohttp hands ping payloads over as bytearray; the core frames bytes
                if self.server.core.send(sub, encode_frame(bytes(msg.data), OP_PONG)):
                    self.server.hub.flush_soon()
            elif kind is WSMsgType.PONG:
                continue
            elif kind is WSMsgType.BINARY:
                self.messages_in += 1
                self.send_error(
                    InvalidMessage("binary frames are not accepted; send JSON in text frames")
                )
            elif kind is WSMsgType.CLOSE:
                self._closed_by_client(msg.data, msg.extra)
                break
            elif kind is WSMsgType.ERROR:
                exc = msg.data
                code = getattr(exc, "code", None) or ws.close_code or CloseCode.PROTOCOL_ERROR
                self._note_close(int(code), f"protocol error: {exc}")
                break
            else:  # CLOSING, CLOSED
                if self.close_code is None:
                    self._note_close(ws.close_code or CloseCode.NORMAL, "connection closed")
                break

    def _closed_by_client(self, code: Any, reason: Any) -> None:
        self._note_close(int(code) if code is not None else 1005, f"client closed: {reason or ''}")

    def _note_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason.strip()

    async def handle_text(self, text: str) -> None:
        try:
            req = protocol.parse_request(text)
            if isinstance(req, protocol.Subscribe):
                await self._subscribe(req)
            elif isinstance(req, protocol.Unsubscribe):
                self._unsubscribe(req)
            elif isinstance(req, protocol.Ping):
                self.send_json(protocol.encode_reply("pong", req.id, {}))
            elif isinstance(req, protocol.History):
                await self._history(req)
            else:
                await self._publish(req)
        except ClientError as exc:
            self.send_error(exc)

    async def _subscribe(self, req: protocol.Subscribe) -> None:
        sub = self.sub
        core = self.server.core
        limit = self.server.config.websocket.max_subscriptions_per_client
        # Count what the connection would hold afterwards: a type is one
        # subscription, a type narrowed to keys one per key.
        after = {t: sub.filter_for(t) for t in sub.types()}
        for t in req.types:
            after[t] = req.keys.get(t)
        total = sum(1 if ks is None else len(ks) for ks in after.values())
        if total > limit:
            raise TooManySubscriptions(
                f"subscribing would hold {total} subscriptions; the limit is {limit} "
                "per connection (a type counts one, a type narrowed to keys one per key)",
                req.id,
            )
        recovered: dict[str, bool] = {}
        missed: list[bytes] = []
        for t in req.types:
            if t in req.since:
                ok, pubs = await self.server.hub.recover(t, req.since[t])
                recovered[t] = ok
                # a type narrowed to keys recovers only messages with those keys
                keys = req.keys.get(t)
                missed.extend(p.data for p in pubs if keys is None or p.key in keys)
        if sub.closed:
            return
        # No await from here on: the subscription must be in place before the
        # hub next drains, so recovery and live delivery meet exactly.
        for t in req.types:
            core.subscribe(sub, t, req.keys.get(t))
        payload: dict[str, Any] = {"action": "subscribe", "types": sub.types()}
        if req.since:
            payload["recovered"] = recovered
        self.send_json(protocol.encode_reply("ack", req.id, payload))
        for data in missed:
            core.send(sub, encode_frame(data))

    def _unsubscribe(self, req: protocol.Unsubscribe) -> None:
        for t in req.types:
            self.server.core.unsubscribe(self.sub, t)
        self.send_json(
            protocol.encode_reply(
                "ack", req.id, {"action": "unsubscribe", "types": self.sub.types()}
            )
        )

    async def _history(self, req: protocol.History) -> None:
        size = self.server.config.history.size
        limit = size if req.limit is None else min(req.limit, size)
        page = await self.server.broker.history(req.type, limit, req.since)
        self.send_json(
            protocol.encode_history(
                req.id,
                req.type,
                [p.data for p in page.messages],
                {"limit": limit, "latest": page.latest, "oldest": page.oldest},
            )
        )

    async def _publish(self, req: protocol.Publish) -> None:
        if not self.server.config.websocket.allow_client_publish:
            raise PublishForbidden(
                "this server does not accept publish from WebSocket clients "
                "(websocket.allow_client_publish is false); use POST /api/publish",
                req.id,
            )
        try:
            pub = await self.server.hub.publish(req.type, req.payload, req.key)
        except ClientError as exc:
            exc.request_id = req.id
            raise
        self.server.stats.published_ws += 1
        self.send_json(
            protocol.encode_reply(
                "ack", req.id, {"action": "publish", "type": pub.type, "seq": pub.seq}
            )
        )

    # -- closing ---------------------------------------------------------------

    def close_soon(self, code: int, reason: str, *, drop_pending: bool = False) -> None:
        """Close this client from outside its read loop (overflow, heartbeat,
        shutdown). Pending frames are flushed first unless ``drop_pending``."""
        if self.closing:
            return
        self.closing = True
        self._note_close(code, reason)
        if not drop_pending and not self.sub.closed:
            self.server.hub.flush()
        self.server.track(self._close(code, reason, drain=not drop_pending))

    async def _close(self, code: int, reason: str, drain: bool) -> None:
        transport = self.sub.transport
        deadline = self.server.loop.time() + CLOSE_TIMEOUT
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode()[:123], drain=drain),
                CLOSE_TIMEOUT,
            )
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if transport is None:
            return
        # The close frame sits behind whatever the kernel has not taken yet: a
        # client that reads again gets its data and then the close code. One that
        # never reads would hold that buffer for ever, so after CLOSE_TIMEOUT the
        # socket is dropped.
        while transport.get_write_buffer_size() and self.server.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if transport.get_write_buffer_size() or not transport.is_closing():
            transport.abort()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """The upgrade endpoint (``/ws/realtime``, ``/ws`` and ``/``)."""
    from .app import SERVER

    server = request.app[SERVER]
    refusal = server.admission_refusal(request)
    if refusal is not None:
        return refusal
    cfg = server.config.websocket
    ws = web.WebSocketResponse(
        autoping=False,
        # aiohttp refuses a message whose size is >= max_msg_size; the contract
        # answers a message of exactly the limit and closes with 1009 beyond it.
        max_msg_size=cfg.max_message_size + 1,
        compress=cfg.compression,
        timeout=CLOSE_TIMEOUT,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {
                "error": {
                    "code": "upgrade_required",
                    "message": "this endpoint speaks WebSocket; send an Upgrade: websocket request",
                }
            },
            status=426,
            headers={"Upgrade": "websocket"},
        )
    server.pending_upgrades += 1
    try:
        await ws.prepare(request)
    except Exception:
        server.pending_upgrades -= 1
        raise
    server.pending_upgrades -= 1
    peername = request.transport.get_extra_info("peername") if request.transport else None
    peer = f"{peername[0]}:{peername[1]}" if peername else "unknown"
    conn = Connection(server, ws, request.transport, peer)
    server.register(conn)
    log.info("Client %s connected from %s (%s)", conn.id, peer, request.path)
    try:
        await conn.run()
    except asyncio.CancelledError:
        conn._note_close(CloseCode.GOING_AWAY, "server shutting down")
        raise
    except Exception as exc:  # a bug: tell the client and keep serving the others
        log.exception("Client %s: unexpected error", conn.id)
        conn._note_close(CloseCode.INTERNAL_ERROR, f"internal error: {exc}")
        if not ws.closed:
            await ws.close(code=CloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        server.unregister(conn)
        log.info(
            "Client %s disconnected from %s: code %s, %s, after %.1fs",
            conn.id,
            peer,
            conn.close_code if conn.close_code is not None else ws.close_code,
            conn.close_reason or "connection lost",
            time.monotonic() - conn.connected_at,
        )
    return ws
