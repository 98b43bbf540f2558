"""The request-head guard: every accepted connection's first request head is
bounded in time and size before aiohttp sees a byte of it.

aiohttp's request handler has no deadline for a request head (a client
sending one byte every 100 ms kept its socket for 838 s) and checks lines,
not the whole head (a 960 KB header block was accepted). So each accepted
connection first gets a :class:`HeadGuard` as its protocol. It buffers what
the client sends until the head's empty line (``\\r\\n\\r\\n``; a bare ``\\n``
is accepted as aiohttp does) and:

* answers ``431 Request Header Fields Too Large`` (``header_too_large``) and
  closes once the head is over ``security.max_header_size`` bytes;
* answers ``408 Request Timeout`` (``handshake_timeout``) and closes if the
  head is not complete ``security.handshake_timeout`` seconds after the
  connection was accepted (for TLS, the TLS handshake is in that time);
* answers ``503`` (``max_connections``) at once, before reading anything,
  when the heads in progress alone fill ``websocket.max_connections``;
* otherwise hands the transport to aiohttp's ``RequestHandler``
  (``transport.set_protocol(handler)``, ``handler.connection_made``,
  ``handler.data_received(buffered)``) and is gone: from then on the
  transport calls the handler directly (data, EOF, flow control, loss).

Both limits are read when they are used, so a reload applies to the next
connection. Heads in progress count against ``websocket.max_connections``
(:attr:`aiosrv.server.Server.handshakes_in_progress` reads
:meth:`GuardStats.in_progress`). A refusal is counted
(``Counters.handshakes_refused``, the metric
``aiosrv_handshake_refused_total{reason}``) and logged at INFO with the
client's address (the peer's: behind a proxy, the proxy's), at most one line
a second per reason; the lines held back are counted in the next one.

After the first request the connection is aiohttp's (keep-alive): its own
limits bound the next heads. The guard sets them from
``security.max_header_size`` for every new connection (request line and each
header at most that many bytes; aiohttp's default of 128 headers stays), and
aiohttp's ``keepalive_timeout`` (3630 s, not changed here) bounds the time
from one response to the end of the next head.

Wiring: :class:`GuardedRunner` is an ``AppRunner`` whose server (the protocol
factory the sites call) is a :class:`GuardedServer`: it makes a guard per
connection and a ``RequestHandler`` (through aiohttp's ``web.Server``) only
at the hand-over, and delegates everything else (``shutdown``,
``connections``, ...) to aiohttp's server. The aiohttp internals this relies
on are checked by :func:`check_aiohttp_guard` at start-up.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import ssl
import weakref
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .access import access_logger_for
from .clock import Clock, Timer
from .errors import ErrorCode
from .keys import SERVER
from .logs import ACCESS
from .server import Server

log = logging.getLogger("aiosrv.guard")

__all__ = [
    "GuardStats",
    "GuardUnsupported",
    "GuardedRunner",
    "GuardedServer",
    "HeadGuard",
    "RateLimitedLog",
    "check_aiohttp_guard",
    "guard_stats",
]

#: The empty line that ends a request head (after at least one line).
_HEAD_END = re.compile(rb"\n\r?\n")

#: After a refusal the socket is half-closed and what the client still sends
#: is read and dropped for this long (at most LINGER_BYTES), so the answer is
#: not lost to a reset from unread data; then it is closed.
LINGER = 1.0
LINGER_BYTES = 256 * 1024

REASONS = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class GuardUnsupported(RuntimeError):
    """The installed aiohttp lacks what the head guard relies on."""


def check_aiohttp_guard() -> None:
    """Refuse to start on an aiohttp whose internals the guard does not know.

    It relies on: ``AppRunner._make_server`` (a coroutine it overrides to wrap
    the server), ``web.Server.__call__`` making the ``RequestHandler`` from
    the dict ``web.Server._kwargs`` (where the head limits go, per
    connection), ``RequestHandler`` being a plain ``asyncio.Protocol`` (not
    buffered) taking ``max_line_size``, ``max_field_size`` and
    ``max_headers``, and ``BaseRunner._reg_site`` (what ``BaseSite.start``
    calls; :mod:`aiosrv.listen` subclasses ``BaseSite``).
    """
    problems = []
    make = getattr(web.AppRunner, "_make_server", None)
    if make is None or not inspect.iscoroutinefunction(make):
        problems.append("AppRunner._make_server is not a coroutine method")
    probe = web.Server(_no_handler, loop=cast(Any, object()))  # loop unused until called
    if not isinstance(getattr(probe, "_kwargs", None), dict):
        problems.append("web.Server keeps no _kwargs dict for its RequestHandler")
    if not issubclass(RequestHandler, asyncio.Protocol) or issubclass(
        RequestHandler, asyncio.BufferedProtocol
    ):
        problems.append("RequestHandler is not a plain asyncio.Protocol")
    params = inspect.signature(RequestHandler.__init__).parameters
    for name in ("max_line_size", "max_field_size", "max_headers"):
        if name not in params:
            problems.append(f"RequestHandler takes no {name}")
    if not hasattr(web.BaseSite, "start") or not hasattr(web.AppRunner, "_reg_site"):
        problems.append("BaseSite.start / BaseRunner._reg_site are gone")
    if problems:
        import aiohttp

        raise GuardUnsupported(
            f"aiohttp {aiohttp.__version__}: the request-head guard cannot work: "
            + "; ".join(problems)
        )


async def _no_handler(request: web.BaseRequest) -> web.StreamResponse:
    raise AssertionError("never called")


class RateLimitedLog:
    """At most one line per ``interval`` seconds per key. Events in between
    are held back and counted; when the interval is over, the last of them is
    logged with how many were held (``[and N more like it ...]``)."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Clock) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        # key -> [next time a line may go, held count, last held (level, msg, args), timer]
        self._keys: dict[str, list[Any]] = {}

    def log(self, key: str, level: int, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock.time()
        entry = self._keys.get(key)
        if entry is None or (now >= entry[0] and not entry[1]):
            self.logger.log(level, msg, *args)
            self._keys[key] = [now + self.interval, 0, None, None]
            return
        entry[1] += 1
        entry[2] = (level, msg, args)
        if entry[3] is None:
            entry[3] = self.clock.call_later(max(0.0, entry[0] - now), self._flush, key)

    def _flush(self, key: str) -> None:
        entry = self._keys.get(key)
        if entry is None or not entry[1]:
            return
        level, msg, args = entry[2]
        held = entry[1]
        if held > 1:
            msg = f"{msg} [and {held - 1} more like it in the last {self.interval:g} s]"
        self.logger.log(level, msg, *args)
        entry[:] = [self.clock.time() + self.interval, 0, None, None]

    def close(self) -> None:
        """Log what is held back now and cancel the timers."""
        for key, entry in list(self._keys.items()):
            if entry[3] is not None:
                entry[3].cancel()
                self._flush(key)


class GuardStats:
    """What the guards of one server are doing now (shared by its listeners)."""

    def __init__(self, clock: Clock) -> None:
        #: connections whose request head is being received
        self.heads = 0
        #: connections in their TLS handshake (accepted by aiosrv.listen)
        self.tls = 0
        self.log = RateLimitedLog(log, 1.0, clock)

    def in_progress(self) -> int:
        """Handshakes in progress: TLS handshakes and request heads."""
        return self.heads + self.tls


_STATS: weakref.WeakKeyDictionary[Server, GuardStats] = weakref.WeakKeyDictionary()


class BadRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (an invalid header, a control
    character in the target) at ERROR with a traceback, so any client could
    fill the log. This filter on ``aiohttp.server`` turns such a record into
    one rate-limited INFO line of ``aiosrv.guard`` naming the peer and what
    was wrong (the client got its 400 from aiohttp all the same)."""

    def __init__(self, rate_limited: RateLimitedLog) -> None:
        super().__init__()
        self.rate_limited = rate_limited

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            detail = " ".join(str(exc.message).split())[:200]
            self.rate_limited.log(
                "bad_request", logging.INFO, "bad HTTP request: %s (%s)", detail,
                record.getMessage(),
            )  # fmt: skip
            return False
        return True


def quiet_bad_requests(rate_limited: RateLimitedLog) -> None:
    """Install :class:`BadRequestFilter` on aiohttp's server logger (once;
    the newest server's rate limiter is used)."""
    logger = logging.getLogger("aiohttp.server")
    for existing in logger.filters:
        if isinstance(existing, BadRequestFilter):
            existing.rate_limited = rate_limited
            return
    logger.addFilter(BadRequestFilter(rate_limited))


def guard_stats(server: Server) -> GuardStats:
    """The guard statistics of ``server`` (made once, and given to the server
    as its ``handshakes_in_progress``)."""
    stats = _STATS.get(server)
    if stats is None:
        stats = _STATS[server] = GuardStats(server.clock)
        server.handshakes_in_progress = stats.in_progress
    return stats


def http_error(status: int, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` response with the JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


# states of a guard
_NEW, _RECEIVING, _REFUSED, _DONE = range(4)


class HeadGuard(asyncio.Protocol):
    """The protocol of one accepted connection until its first request head
    is complete (see the module's docstring)."""

    __slots__ = (
        "_buf",
        "_dropped",
        "_owner",
        "_start",
        "_state",
        "_timer",
        "_tls_pending",
        "_transport",
        "_write_paused",
        "accepted_at",
    )

    def __init__(self, owner: GuardedServer) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._start = -1  # where the request line starts (after blank lines)
        self._state = _NEW
        self._timer: Timer | None = None
        self._tls_pending = False
        self._write_paused = False
        self._dropped = 0
        #: when the socket was accepted (clock time), if known before
        #: connection_made (TLS: the handshake counts against the timeout)
        self.accepted_at: float | None = None

    # -- TLS accounting (aiosrv.listen) ---------------------------------------------

    def tls_started(self, accepted_at: float) -> None:
        """The socket was accepted and its TLS handshake begins."""
        self.accepted_at = accepted_at
        self._tls_pending = True
        self._owner.stats.tls += 1

    def tls_ended(self) -> None:
        """The TLS handshake is over (done or failed); idempotent."""
        if self._tls_pending:
            self._tls_pending = False
            self._owner.stats.tls -= 1

    def tls_failed(self, exc: BaseException, took: float, peer: str) -> None:
        """The TLS handshake failed after ``took`` seconds: a timeout or a TLS
        error is counted and logged; a client that just went away is not."""
        self.tls_ended()
        owner = self._owner
        timeout = owner.server.config.security.handshake_timeout
        if took >= timeout * 0.99:
            code = ErrorCode.HANDSHAKE_TIMEOUT
        elif isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
            code = "tls_failed"
        else:
            log.debug("TLS handshake from %s ended after %.1f s: %r", peer, took, exc)
            return
        owner.server.stats.handshakes_refused[code] += 1
        owner.stats.log.log(
            code,
            logging.INFO,
            "TLS handshake refused (%s) from %s after %.1f s: %s",
            code,
            peer,
            took,
            str(exc) or type(exc).__name__,
        )

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tls_ended()
        self._transport = cast(asyncio.Transport, transport)
        owner = self._owner
        stats = owner.stats
        config = owner.server.config
        limit = config.websocket.max_connections
        owner.guards.add(self)
        if stats.in_progress() >= limit:
            self._refuse(
                503,
                "max_connections",
                f"the server is receiving {stats.in_progress()} request heads, its maximum "
                f"of {limit} connections; retry later",
                "handshakes in progress fill max_connections",
            )
            return
        self._state = _RECEIVING
        stats.heads += 1
        clock = owner.server.clock
        now = clock.time()
        start = self.accepted_at if self.accepted_at is not None else now
        deadline = start + config.security.handshake_timeout
        self._timer = clock.call_later(max(0.0, deadline - now), self._expire)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _REFUSED:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES and self._transport is not None:
                self._transport.close()
            return
        if state != _RECEIVING:
            return
        buf = self._buf
        scanned = len(buf)
        buf += data
        start = self._start
        if start < 0:  # blank lines before the request line are allowed; skip them
            start = scanned
            n = len(buf)
            while start < n and buf[start] in b"\r\n":
                start += 1
            if start == n:
                start = -1
            self._start = start
        limit = self._owner.server.config.security.max_header_size
        end = -1
        if start >= 0:
            m = _HEAD_END.search(buf, max(start, scanned - 2))
            if m is not None:
                end = m.end()
        if end < 0:
            if len(buf) > limit:
                self._too_large(limit, len(buf), complete=False)
            return
        if end > limit:
            self._too_large(limit, end, complete=True)
            return
        self._hand_over()

    def eof_received(self) -> bool | None:
        if self._state == _RECEIVING:
            # the client gave up before its head was complete: nothing to answer
            self._stop()
            self._state = _DONE
        return None  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.tls_ended()
        self._stop()
        self._owner.guards.discard(self)
        self._state = _DONE
        self._transport = None
        self._buf = bytearray()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    # -- the outcomes ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (the server is shutting down)."""
        self._stop()
        self._state = _DONE
        if self._transport is not None:
            self._transport.close()

    def _stop(self) -> None:
        """No longer receiving a head: stop counting it, cancel its timer."""
        if self._state == _RECEIVING:
            self._owner.stats.heads -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._state != _RECEIVING:
            return
        timeout = self._owner.server.config.security.handshake_timeout
        self._refuse(
            408,
            ErrorCode.HANDSHAKE_TIMEOUT,
            f"the request head was not complete within {timeout:g} s (security.handshake_timeout)",
            f"not complete within {timeout:g} s ({len(self._buf)} bytes received)",
        )

    def _too_large(self, limit: int, size: int, complete: bool) -> None:
        self._refuse(
            431,
            ErrorCode.HEADER_TOO_LARGE,
            f"the request line and headers are over {limit} bytes (security.max_header_size)",
            f"{'a head of ' if complete else 'over '}{size} bytes, the limit is {limit}",
        )

    def _refuse(self, status: int, code: str, message: str, detail: str) -> None:
        self._stop()
        self._state = _REFUSED
        self._buf = bytearray()
        owner = self._owner
        owner.server.stats.handshakes_refused[code] += 1
        t = self._transport
        assert t is not None
        owner.stats.log.log(
            code,
            logging.INFO,
            "request head refused (%d %s) from %s: %s",
            status,
            code,
            peer_of(t),
            detail,
        )
        t.write(http_error(status, code, message))
        if t.can_write_eof():
            # half-close and drop what the client still sends for a moment: a
            # close with unread data would reset the connection, answer and all
            t.write_eof()
            self._timer = owner.server.clock.call_later(LINGER, t.close)
        else:  # TLS: no half-close
            t.close()

    def _hand_over(self) -> None:
        self._stop()
        self._state = _DONE
        owner = self._owner
        owner.guards.discard(self)
        t = self._transport
        assert t is not None
        data = bytes(self._buf)
        self._buf = bytearray()
        self._transport = None
        try:
            handler = owner.make_handler()
        except Exception:  # never leave the socket without a protocol
            log.exception("cannot make aiohttp's request handler")
            t.abort()
            return
        t.set_protocol(handler)
        handler.connection_made(t)
        if self._write_paused:
            handler.pause_writing()
        handler.data_received(data)


def peer_of(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    if not peername:
        return "unknown"
    host, port = peername[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class GuardedServer:
    """aiohttp's ``web.Server`` with a :class:`HeadGuard` in front of each
    connection. Calling it (what a site does per accepted connection) makes a
    guard; everything else is aiohttp's server's."""

    def __init__(self, web_server: web.Server, server: Server, stats: GuardStats) -> None:
        kwargs = getattr(web_server, "_kwargs", None)
        if not isinstance(kwargs, dict):
            raise GuardUnsupported("aiohttp's web.Server has no _kwargs dict")
        self.web_server = web_server
        self.server = server
        self.stats = stats
        #: guards that still own their socket (receiving, or refused and lingering)
        self.guards: set[HeadGuard] = set()
        self._kwargs: dict[str, Any] = kwargs
        self._limit = -1

    def __call__(self) -> HeadGuard:
        return HeadGuard(self)

    def make_handler(self) -> RequestHandler:
        """aiohttp's handler for a connection whose head is complete, with
        line limits from the current ``security.max_header_size``."""
        limit = self.server.config.security.max_header_size
        if limit != self._limit:
            self._kwargs["max_line_size"] = limit
            self._kwargs["max_field_size"] = limit
            self._limit = limit
        return self.web_server()

    def pre_shutdown(self) -> None:
        for guard in list(self.guards):
            guard.close()
        self.web_server.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        for guard in list(self.guards):
            guard.close()
        await self.web_server.shutdown(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.web_server, name)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose sites put a :class:`HeadGuard` in front of
    aiohttp's request handler on every connection. ``server`` is the aiosrv
    server whose configuration and counters the guards use (the
    application's own, ``app[SERVER]``, when not given)."""

    def __init__(self, app: web.Application, server: Server | None = None, **kwargs: Any) -> None:
        # the access log: written when logging.access_log is on (aiosrv.access)
        server = server if server is not None else app[SERVER]
        kwargs["access_log"] = ACCESS
        kwargs["access_log_class"] = access_logger_for(server)
        super().__init__(app, **kwargs)
        self.aiosrv_server: Server = server
        self.guard_stats = guard_stats(self.aiosrv_server)
        quiet_bad_requests(self.guard_stats.log)

    async def _make_server(self) -> web.Server:
        web_server = await super()._make_server()
        return cast(web.Server, GuardedServer(web_server, self.aiosrv_server, self.guard_stats))

    async def cleanup(self) -> None:
        await super().cleanup()
        self.guard_stats.log.close()


def make_runner(app: web.Application, server: Server | None = None, **kwargs: Any) -> GuardedRunner:
    """A :class:`GuardedRunner` (``kwargs`` as for ``web.AppRunner``)."""
    return GuardedRunner(app, server, **kwargs)
