"""A client's WebSocket session, sans-I/O: RFC 6455 message rules, action
dispatch, ordering and limits.

The socket is someone else's: :mod:`aiosrv.upgrade` takes it over from
aiohttp and :class:`~aiosrv.connection.Connection` (the asyncio protocol)
feeds this session what it reads. Frames are parsed by the core's
:class:`FrameReader` (the frame-level rules of RFC 6455: header, masking,
control frames, fragmentation, the size limit); the message-level rules are
the functions below (:func:`decode_text`, :func:`inflate`,
:func:`close_from_payload`); text messages are parsed by
:mod:`aiosrv.protocol` and answered inline, in the same loop iteration,
unless an action has to wait (recovery, history, publish through the broker):
then one task per session works through the requests in arrival order and
exits when they are done, reading pauses while too many wait.

Writing: every byte the server sends a client, replies and the close frame
included, goes through the fan-out core's per-connection buffer (or, once
fan-out to it has stopped, straight to the transport after everything queued
before it), so replies and data reach a client in the order they were queued
and the send-buffer limit covers everything.

Ending: nothing a client sent is lost. When its input ends (its close frame, a
framing error, or its side of the TCP connection closed) while requests it sent
before are still waiting (a publish, a recovery, a history call), the close
waits behind them, in order; reading stops there, and :data:`CLOSE_TIMEOUT`
bounds the wait.

What a session needs of the server comes in a :class:`SessionContext`: the
core, the hub, the broker's history, a configuration getter, the counters,
the registry of open connections, the clock and a way to start a task.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from . import handshake, protocol
from .auth import AuthFailed, Principal, SecurityPolicy
from .broker import HistoryPage
from .clock import Clock, Timer
from .config import Config
from .counters import Counters
from .errors import (
    BUILTIN_TYPES,
    FLOOD_WINDOW,
    ClientError,
    CloseCode,
    Forbidden,
    FrameError,
    InvalidMessage,
    PublishForbidden,
    RateLimited,
    TooManySubscriptions,
    Unauthorized,
)
from .fanout import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FanOut,
    FrameReader,
    Subscriber,
    encode_close,
    encode_frame,
)
from .hub import Hub
from .logs import audit
from .ratelimit import TokenBucket

# operators grep the connect and disconnect lines by this name
log = logging.getLogger("aiosrv.connection")

#: How long a close handshake may take before the socket is aborted.
CLOSE_TIMEOUT = 5.0

#: Requests that may wait behind an action in progress before reading pauses.
MAX_WAITING_REQUESTS = 64

#: Close codes a client may send (RFC 6455 section 7.4.1; 3000-4999 too).
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


def new_connection_id() -> str:
    return secrets.token_hex(6)


class Registry(Protocol):
    """The open connections (the server)."""

    def unregister(self, conn: Any) -> None:
        """No longer open: fan-out to it stops (its close began, or it went)."""
        ...

    def lingering(self, conn: Any) -> None:
        """Its close began; the socket stays until the client answers."""
        ...

    def gone(self, conn: Any) -> None:
        """Its socket is closed."""
        ...


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session of one server shares."""

    core: FanOut
    hub: Hub
    history: Callable[[str, int, int | None], Awaitable[HistoryPage]]
    config: Callable[[], Config]
    counters: Counters
    registry: Registry
    clock: Clock
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    policy: Callable[[], SecurityPolicy]


# -- RFC 6455 message rules (the frame rules are the core's FrameReader) ----------


@dataclass(frozen=True, slots=True)
class _Close:
    """The end of a client's input (its close frame, a framing error, or its
    FIN), waiting behind the requests it sent before it."""

    frame: bytes  # the close frame to send (an echo of the client's, or ours)
    code: int
    reason: str
    failed: bool = False  # the client broke the protocol: logged as a warning


def decode_text(payload: bytes) -> str:
    """A text message's payload as text; invalid UTF-8 fails the connection (1007)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(
            CloseCode.INVALID_DATA, f"text frame is not valid UTF-8 ({exc.reason})"
        ) from None


def inflate(inflater: Any, payload: bytes, limit: int) -> bytes:
    """A permessage-deflate message (RFC 7692) decompressed, at most ``limit``
    bytes: more fails with 1009, a corrupt stream with 1002."""
    try:
        out: bytes = inflater.decompress(payload + b"\x00\x00\xff\xff", limit + 1)
    except zlib.error as exc:
        raise FrameError(
            CloseCode.PROTOCOL_ERROR, f"compressed message does not inflate: {exc}"
        ) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise FrameError(
            CloseCode.MESSAGE_TOO_BIG,
            f"message of more than {limit} bytes once decompressed (the limit)",
        )
    return out


def close_from_payload(payload: bytes) -> _Close:
    """What a client's close frame means: the close to answer it with
    (echoing its code), or a :class:`FrameError` for a malformed one."""
    if len(payload) == 1:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    if not payload:
        return _Close(encode_frame(b"", OP_CLOSE), 1005, "client closed")
    code = int.from_bytes(payload[:2], "big")
    if code not in SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None
    return _Close(encode_frame(payload[:2], OP_CLOSE), code, f"client closed: {reason}")


def _needs_await(req: protocol.Request, hub: Hub) -> bool:
    """Whether answering ``req`` waits on the broker: history, publish,
    recovery, or a subscription to a type the broker does not deliver here
    yet (its first local subscriber, with the Redis engine)."""
    if isinstance(req, protocol.Subscribe):
        return bool(req.since) or not hub.listening(req.types)
    return isinstance(req, (protocol.History, protocol.Publish))


class Session:
    """One client's WebSocket session: bytes in, frames and actions out.

    Sans-I/O: it reads nothing itself. The protocol adapter
    (:class:`~aiosrv.connection.Connection`) feeds it what the socket
    received (:meth:`receive_data`, :meth:`receive_eof`,
    :meth:`connection_lost`); it writes through the fan-out core (the
    subscriber's buffer, written by the hub) and the transport it is given,
    sets timers on the context's clock and runs waiting actions as tasks
    made by ``context.spawn``. Tests drive it with a fake transport and a
    manual clock."""

    __slots__ = (
        "_bucket",
        "_close_sent",
        "_close_timer",
        "_eof",
        "_expiry_timer",
        "_inflate_reset",
        "_inflater",
        "_input_ended",
        "_strikes",
        "_waiting",
        "_worker",
        "close_code",
        "close_reason",
        "closing",
        "connected_at",
        "ctx",
        "id",
        "messages_in",
        "path",
        "peer",
        "principal",
        "reader",
        "sub",
        "transport",
    )

    def __init__(
        self,
        ctx: SessionContext,
        transport: asyncio.Transport,
        peer: str,
        deflate: handshake.Deflate | None = None,
        path: str = "",
        principal: Principal | None = None,
    ) -> None:
        self.ctx = ctx
        self.transport = transport
        self.peer = peer
        self.path = path
        self.principal = principal if principal is not None else (
            ctx.policy().authenticator.anonymous()
        )
        # the message rate limit (security.message_rate) and its flood count
        self._bucket: TokenBucket | None = None
        self._strikes: TokenBucket | None = None
        self._expiry_timer: Timer | None = None
        self.id = new_connection_id()
        self.connected_at = ctx.clock.time()
        self.messages_in = 0
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        cfg = ctx.config().websocket
        self.reader = FrameReader(cfg.max_message_size, deflate is not None)
        # decompression of the client's messages, made on its first compressed one
        self._inflater: Any = None
        self._inflate_reset = deflate is not None and deflate.client_no_context_takeover
        # requests (and errors to send, and a close) waiting behind one that awaits
        self._waiting: deque[protocol.Request | ClientError | _Close] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._close_timer: Timer | None = None
        self._close_sent = False
        self._input_ended = False  # the client's close frame came, or its framing failed
        self._eof = False  # the client closed its side of the TCP connection
        # permessage-deflate at the full window: this client takes the hub's
        # shared compressed frames
        shared = deflate is not None and deflate.shared
        self.sub = Subscriber(self.id, transport, cfg.send_buffer_limit, self, shared)
        self.sub.last_seen = ctx.clock.time()

    # -- sending -------------------------------------------------------------

    def send_json(self, data: bytes) -> None:
        """Queue one encoded JSON message to this client, written this iteration."""
        self._send(encode_frame(data))

    def _send(self, frame: bytes) -> None:
        # Written at the end of this iteration whether or not the frame was
        # queued: a frame refused because it passed the send-buffer limit made
        # the core give up on this client, and that closes it (1013).
        self.ctx.core.send(self.sub, frame)
        self.ctx.hub.write_soon(self.sub)

    def send_error(self, error: ClientError) -> None:
        self.ctx.counters.count_error(error.code)
        self.send_json(protocol.encode_error(error))

    # -- what the socket received ---------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client."""
        self.sub.last_seen = self.ctx.clock.time()
        if self._input_ended and not self._close_sent:
            return  # nothing after the client's close frame (or its error) counts
        try:
            for opcode, payload, compressed in self.reader.feed(data):
                if self._close_sent:
                    # after our close frame only the client's close matters
                    if opcode == OP_CLOSE:
                        self.transport.close()
                        return
                    continue
                self._on_message(opcode, payload, compressed)
                if self._input_ended:
                    return
            error = self.reader.error
            if error is not None and not self._close_sent:
                self._fail(error.code, error.reason)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
        except Exception as exc:  # a bug: tell the client and keep serving the others
            log.exception("Client %s: unexpected error", self.id)
            self._fail(CloseCode.INTERNAL_ERROR, f"internal error: {exc}")

    def receive_eof(self) -> bool:
        """The client closed its side of the TCP connection; True keeps ours
        open for writing (``asyncio.Protocol.eof_received``)."""
        # The client closed its side. After our close frame that ends it: the
        # transport closes. Before, what it sent is still answered (replies
        # queued, requests waiting) and our close frame sent; the socket stays
        # open for writing until then.
        if self._close_sent:
            return False
        self._eof = True
        self._end_input(_Close(encode_close(CloseCode.NORMAL), 1006, "client closed TCP"))
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket is closed."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._waiting = None
        self._inflater = None
        self.ctx.registry.gone(self)
        log.info(
            "Client %s disconnected from %s: code %s, %s, after %.1fs",
            self.id,
            self.peer,
            self.close_code if self.close_code is not None else 1006,
            self.close_reason or (f"connection lost: {exc}" if exc else "connection lost"),
            self.ctx.clock.time() - self.connected_at,
        )

    # -- messages ------------------------------------------------------------

    def _on_message(self, opcode: int, payload: bytes, compressed: bool) -> None:
        if opcode != OP_PONG and opcode != OP_CLOSE and not self._within_rate():
            return
        if opcode == OP_TEXT:
            self.messages_in += 1
            self.ctx.counters.messages_in += 1
            if compressed:
                payload = self._inflate(payload)
            self._on_text(decode_text(payload))
        elif opcode == OP_PING:
            self._send(encode_frame(payload, OP_PONG))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_BINARY:
            self.messages_in += 1
            if compressed:
                self._inflate(payload)  # still checked against the size limit
            self.send_error(
                InvalidMessage("binary frames are not accepted; send JSON in text frames")
            )
        elif opcode == OP_CLOSE:
            self._on_close_frame(payload)

    def _within_rate(self) -> bool:
        """Whether this message (text, binary or ping) is within the rate
        limit. Beyond it the message is refused with ``rate_limited``; a client
        refused more than ``flood_limit`` times in :data:`FLOOD_WINDOW`
        seconds is closed with 1008."""
        sec = self.ctx.config().security
        if not sec.rate_limit_enabled:
            return True
        now = self.ctx.clock.time()
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = TokenBucket(sec.message_burst, now)
        if bucket.take(now, sec.message_rate, sec.message_burst):
            return True
        counters = self.ctx.counters
        counters.rate_limited_messages += 1
        strikes = self._strikes
        if strikes is None:
            strikes = self._strikes = TokenBucket(sec.flood_limit, now)
        if not strikes.take(now, sec.flood_limit / FLOOD_WINDOW, sec.flood_limit):
            counters.flood_closes += 1
            audit(self.ctx.config().logging.audit_log, logging.WARNING,
                  "connection closed, flooding", addr=self.peer, user=self.principal.user,
                  client=self.id, limit=f"{sec.message_rate:g}/s")  # fmt: skip
            self._fail(
                CloseCode.POLICY_VIOLATION,
                f"flooding: more than {sec.flood_limit} messages refused in "
                f"{FLOOD_WINDOW:g} s (limit {sec.message_rate:g} per second)",
            )
            return False
        self.send_error(
            RateLimited(
                f"message refused, not processed: more than {sec.message_rate:g} messages "
                f"per second (burst {sec.message_burst}); send it again later"
            )
        )
        return False

    def _inflate(self, payload: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None or self._inflate_reset:
            inflater = self._inflater = zlib.decompressobj(-15)
        return inflate(inflater, payload, self.reader.max_size)

    def _on_close_frame(self, payload: bytes) -> None:
        self._end_input(close_from_payload(payload))

    def _on_text(self, text: str) -> None:
        try:
            req = protocol.parse_request(text)
        except ClientError as exc:
            if self._waiting is not None:
                self._wait(exc)
            else:
                self.send_error(exc)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Client %s: %s", self.id, protocol.describe(req))
        if self._waiting is not None:
            self._wait(req)
        elif _needs_await(req, self.ctx.hub):
            self._waiting = deque((req,))
            self._worker = self.ctx.spawn(self._work())
        else:
            try:
                self._handle_now(req)
            except ClientError as exc:
                self.send_error(exc)

    def _wait(self, item: Any) -> None:
        waiting = self._waiting
        assert waiting is not None
        waiting.append(item)
        if len(waiting) == MAX_WAITING_REQUESTS:
            self.transport.pause_reading()

    async def _work(self) -> None:
        """Answer waiting requests in arrival order; exits when none is left."""
        waiting = self._waiting
        try:
            while waiting:
                item = waiting.popleft()
                if isinstance(item, _Close):
                    # everything the client sent before its close is answered
                    self._waiting = None
                    self._worker = None
                    self._finish_input(item)
                    return
                if (
                    len(waiting) == MAX_WAITING_REQUESTS - 1
                    and not self.closing
                    and not self._input_ended
                ):
                    self.transport.resume_reading()
                if isinstance(item, ClientError):
                    self.send_error(item)
                    continue
                try:
                    if _needs_await(item, self.ctx.hub):
                        await self._handle_later(item)
                    else:
                        self._handle_now(item)
                except ClientError as exc:
                    if exc.request_id is None:  # raised below the session (the broker)
                        exc.request_id = item.id
                    self.send_error(exc)
                if self.sub.closed:
                    return
        except Exception as exc:
            log.exception("Client %s: unexpected error", self.id)
            if self._waiting is waiting:  # nothing is answered after this: close now
                self._waiting = None
                self._worker = None
            self._fail(CloseCode.INTERNAL_ERROR, f"internal error: {exc}")
        finally:
            if self._waiting is waiting:
                self._waiting = None
                self._worker = None

    def _handle_now(self, req: protocol.Request) -> None:
        self._check_permission(req)
        if isinstance(req, protocol.Subscribe):
            self._subscribe(req, {}, [])
        elif isinstance(req, protocol.Unsubscribe):
            self._unsubscribe(req)
        elif isinstance(req, protocol.Ping):
            self.send_json(protocol.encode_reply("pong", req.id, {}))
        elif isinstance(req, protocol.Refresh):
            self._refresh(req)
        else:  # pragma: no cover - _needs_await routes the others
            raise AssertionError(req)

    async def _handle_later(self, req: protocol.Request) -> None:
        self._check_permission(req)
        if isinstance(req, protocol.Subscribe):
            hub = self.ctx.hub
            hub.hold(req.types)
            try:
                await hub.listen(req.types)
                await self._subscribe_since(req)
            finally:
                hub.release(req.types)
        elif isinstance(req, protocol.History):
            await self._history(req)
        elif isinstance(req, protocol.Publish):
            await self._publish(req)

    # -- permissions and tokens ------------------------------------------------

    def _check_permission(self, req: protocol.Request) -> None:
        """Refuse with ``forbidden`` what this client's principal may not do:
        subscribe to (or read the history of) a type outside its subscribe
        patterns, publish to a built-in type or outside its publish patterns."""
        principal = self.principal
        if isinstance(req, protocol.Subscribe):
            denied = [t for t in req.types if not principal.subscribe.allows(t)]
            if denied:
                self._refuse(req, "subscribe to", denied)
        elif isinstance(req, protocol.History):
            if not principal.subscribe.allows(req.type):
                self._refuse(req, "read the history of", [req.type])
        elif isinstance(req, protocol.Publish):
            if not self.ctx.config().websocket.allow_client_publish:
                raise PublishForbidden(
                    "this server does not accept publish from WebSocket clients "
                    "(websocket.allow_client_publish is false); use POST /api/publish",
                    req.id,
                )
            if req.type in BUILTIN_TYPES:
                self._refuse(
                    req, "publish to", [req.type], "it is one of the server's built-in types"
                )
            if not principal.publish.allows(req.type):
                self._refuse(req, "publish to", [req.type])

    def _refuse(
        self, req: protocol.Request, what: str, types: list[str], why: str = ""
    ) -> None:
        action = type(req).__name__.lower()
        audit(self.ctx.config().logging.audit_log, logging.WARNING, "permission refused",
              addr=self.peer, user=self.principal.user, client=self.id, action=action,
              types=",".join(types))  # fmt: skip
        shown = ", ".join(repr(t) for t in types)
        raise Forbidden(
            f"user {self.principal.user!r} may not {what} {shown}"
            + (f": {why}" if why else " (not in its permissions)"),
            req.id,
        )

    def start_expiry_timer(self) -> None:
        """Close with 1008 when the token expires, unless refreshed first."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        left = self.ctx.policy().authenticator.seconds_left(self.principal)
        if left is not None:
            self._expiry_timer = self.ctx.clock.call_later(max(0.0, left), self._token_expired)

    def _token_expired(self) -> None:
        self._expiry_timer = None
        if self.closing:
            return
        self.ctx.counters.token_expired_closes += 1
        audit(self.ctx.config().logging.audit_log, logging.INFO, "token expired",
              addr=self.peer, user=self.principal.user, client=self.id)  # fmt: skip
        self.close_soon(
            CloseCode.POLICY_VIOLATION, "token expired: reconnect with a new token"
        )

    def _refresh(self, req: protocol.Refresh) -> None:
        authenticator = self.ctx.policy().authenticator
        if not authenticator.enabled:
            raise InvalidMessage(
                "authentication is off on this server: there is no token to refresh", req.id
            )
        try:
            principal = authenticator.authenticate(req.token)
        except AuthFailed as exc:
            audit(self.ctx.config().logging.audit_log, logging.WARNING,
                  "authentication failed", addr=self.peer, user=self.principal.user,
                  client=self.id, action="refresh", reason=exc.reason)  # fmt: skip
            raise Unauthorized(
                f"refresh refused: {exc.reason}; the connection keeps its current token",
                req.id,
            ) from None
        if principal.user != self.principal.user:
            raise Forbidden(
                f"refresh refused: the token is for user {principal.user!r}, this "
                f"connection's user is {self.principal.user!r}",
                req.id,
            )
        self.principal = principal
        self.start_expiry_timer()
        # a narrower token loses the subscriptions it no longer allows
        dropped = [t for t in self.sub.types() if not principal.subscribe.allows(t)]
        for t in dropped:
            self.ctx.core.unsubscribe(self.sub, t)
        if dropped:
            self.ctx.hub.interest_changed()
        self.send_json(
            protocol.encode_reply(
                "ack",
                req.id,
                {
                    "action": "refresh",
                    "user": principal.user,
                    "expires_at": principal.expires_at,
                    "types": self.sub.types(),
                    "dropped": dropped,
                },
            )
        )

    # -- actions ---------------------------------------------------------------

    def _check_subscription_limit(self, req: protocol.Subscribe) -> None:
        sub = self.sub
        limit = self.ctx.config().websocket.max_subscriptions_per_client
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

    async def _subscribe_since(self, req: protocol.Subscribe) -> None:
        self._check_subscription_limit(req)
        recovered: dict[str, bool] = {}
        missed: list[bytes] = []
        for t in req.types:
            if t in req.since:
                ok, pubs = await self.ctx.hub.recover(t, req.since[t])
                recovered[t] = ok
                # a type narrowed to keys recovers only messages with those keys
                keys = req.keys.get(t)
                missed.extend(p.data for p in pubs if keys is None or p.key in keys)
        if self.sub.closed:
            return
        self._subscribe(req, recovered, missed)

    def _subscribe(
        self, req: protocol.Subscribe, recovered: dict[str, bool], missed: list[bytes]
    ) -> None:
        # No await in here: the subscription must be in place before the hub
        # next drains, so recovery and live delivery meet exactly.
        self._check_subscription_limit(req)
        sub = self.sub
        core = self.ctx.core
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
            self.ctx.core.unsubscribe(self.sub, t)
        self.ctx.hub.interest_changed()
        self.send_json(
            protocol.encode_reply(
                "ack", req.id, {"action": "unsubscribe", "types": self.sub.types()}
            )
        )

    async def _history(self, req: protocol.History) -> None:
        size = self.ctx.config().history.size
        limit = size if req.limit is None else min(req.limit, size)
        page = await self.ctx.history(req.type, limit, req.since)
        self.send_json(
            protocol.encode_history(
                req.id,
                req.type,
                [p.data for p in page.messages],
                {"limit": limit, "latest": page.latest, "oldest": page.oldest},
            )
        )

    async def _publish(self, req: protocol.Publish) -> None:
        pub = await self.ctx.hub.publish_checked(req.type, req.payload, req.key)
        self.ctx.counters.published_ws += 1
        self.send_json(
            protocol.encode_reply(
                "ack", req.id, {"action": "publish", "type": pub.type, "seq": pub.seq}
            )
        )

    # -- closing ---------------------------------------------------------------

    def _note_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason.strip()

    def close_soon(self, code: int, reason: str, *, drop_pending: bool = False) -> None:
        """Close this client from outside (overflow, heartbeat, shutdown):
        requests it sent that are still waiting are answered and frames
        already queued for it are sent first, unless ``drop_pending`` (then it
        closes at once and what was queued is dropped); then the close frame
        (see :meth:`_send_close`)."""
        if self.closing:
            return
        if drop_pending:
            self._note_close(code, reason)
            self._send_close(encode_close(code, reason), flush=False)
        else:
            self._end_input(_Close(encode_close(code, reason), code, reason))

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7) for what the client sent,
        after answering what it sent before."""
        self._end_input(_Close(encode_close(code, reason), code, reason, failed=True))

    def _end_input(self, close: _Close) -> None:
        """The client's input ended: close once the requests before it are answered."""
        if self.closing or self._input_ended:
            return
        self._input_ended = True
        if self._waiting is None:
            self._finish_input(close)
            return
        self._waiting.append(close)
        if not self._eof:
            self.transport.pause_reading()
        # bounded: a request stuck in the broker must not keep the socket forever
        self._close_timer = self.ctx.clock.call_later(CLOSE_TIMEOUT, self._finish_input, close)

    def _finish_input(self, close: _Close) -> None:
        if self.closing:
            return
        if close.failed:
            log.warning("Client %s: closing with %d: %s", self.id, close.code, close.reason)
        self._note_close(close.code, close.reason)
        self._send_close(close.frame, flush=True)

    def _send_close(self, frame: bytes, flush: bool) -> None:
        """Write the close frame after everything queued for this client, then
        half-close the socket (FIN once the transport has written it all).

        Reading goes on, discarding all but the client's close frame, so the
        client's last frames never meet a closed socket (which would make the
        kernel reset the connection and lose what it still had to send). The
        socket closes when the client closes its side or answers the close
        frame, and is aborted after :data:`CLOSE_TIMEOUT` in any case.
        """
        self.closing = True
        self._close_sent = True
        if flush:
            self.ctx.core.write(self.sub)  # what is queued for it goes first
        # the connection stops counting as open and fan-out to it stops here
        registry = self.ctx.registry
        registry.unregister(self)
        registry.lingering(self)
        if self._worker is not None:
            self._worker.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        transport = self.transport
        self._close_timer = self.ctx.clock.call_later(CLOSE_TIMEOUT, self._abort)
        try:
            transport.write(frame)
            if self._eof:
                transport.close()  # the client closed its side already
            elif transport.can_write_eof():
                transport.write_eof()
            else:  # pragma: no cover - TCP transports can
                transport.close()
            if self._input_ended and not self._eof:
                transport.resume_reading()  # for the client's FIN
        except Exception:  # the socket is already gone
            transport.abort()

    def _abort(self) -> None:
        self._close_timer = None
        self.transport.abort()

    # -- what the server asks of a client (server.Client) --------------------------

    def unwritten(self) -> int:
        return self.transport.get_write_buffer_size()

    def end(self, abort: bool = False) -> None:
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
