"""Listening sockets: TLS, accepting, and running out of file descriptors.

``aiosrv serve`` binds its listeners with :class:`AcceptSite` (an aiohttp
site) instead of ``web.TCPSite``: the site accepts in Python
(``loop.add_reader`` on the listening socket, ``sock.accept()``, then
``loop.connect_accepted_socket``), on uvloop and asyncio alike, because what
the loops do when ``accept()`` fails for lack of descriptors is silent or
worse (measured with uvloop 0.23 and CPython 3.11's asyncio, a listener at
its RLIMIT_NOFILE with more connections waiting):

* uvloop (libuv): nothing reaches Python. libuv closes its reserve
  descriptor, accepts every waiting connection and closes it at once (the
  clients see a reset or an EOF; 24 of 40 in the experiment), reopens the
  reserve and goes on. If it cannot reopen it (the process already over its
  limit, e.g. lowered at run time), ``accept4`` fails in a busy loop (13,500
  calls a second) with no log line; the listener stays open.
* asyncio: calls the loop's exception handler ("socket.accept() out of
  system resource"), stops watching the socket and tries again after 1 s;
  the waiting connections stay in the backlog.

Here a failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) is counted
(``Counters.accept_errors``, the metric ``aiosrv_accept_errors_total``),
logged (at most once per 10 s, with how many failed meanwhile and the
descriptors in use against the soft limit), makes ``/health`` degraded for
:data:`aiosrv.counters.ACCEPT_ERROR_WINDOW` seconds, and pauses accepting on
that socket for :data:`ACCEPT_RETRY_DELAY`; the waiting connections stay in
the backlog and are accepted once descriptors are free again.

With ``security.ssl_certfile`` set every listener serves TLS
(:func:`server_ssl_context`, TLS 1.2 or later); the TLS handshake must end
within ``security.handshake_timeout``, and counts as a handshake in progress
(:class:`aiosrv.guard.GuardStats`) meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .config import ConfigError, SecurityConfig
from .guard import HeadGuard, RateLimitedLog
from .server import Server
from .stats import descriptor_usage

log = logging.getLogger("aiosrv.listen")

__all__ = [
    "ACCEPT_RETRY_DELAY",
    "AcceptSite",
    "AcceptWatch",
    "Listener",
    "bind_sockets",
    "server_ssl_context",
]

#: How long a listener stops accepting after accept() failed for lack of a
#: resource (asyncio's own delay).
ACCEPT_RETRY_DELAY = 1.0
#: At most one log line per this many seconds about failing accepts.
ACCEPT_LOG_INTERVAL = 10.0
#: Connections accepted per readiness of a listening socket before the loop
#: serves other work.
ACCEPT_BATCH = 256
#: accept() errors that mean "no resources now, try later".
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# --------------------------------------------------------------------------- TLS


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # without a callback OpenSSL would prompt on the terminal for the password
    raise _EncryptedKey()


def server_ssl_context(cfg: SecurityConfig) -> ssl.SSLContext | None:
    """The TLS context of every listener when ``security.ssl_certfile`` is set
    (TLS 1.2 or later; the key from ``ssl_keyfile``, else from the certificate
    file), None otherwise. A file that cannot be used raises
    :class:`ConfigError` naming the key, the file and why."""
    certfile, keyfile = cfg.ssl_certfile, cfg.ssl_keyfile
    if not certfile:
        if keyfile:
            raise ConfigError.single(
                "security.ssl_keyfile", keyfile, "set, but security.ssl_certfile is not"
            )
        return None
    for key, path in (("security.ssl_certfile", certfile), ("security.ssl_keyfile", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError.single(key, path, f"cannot read {path}: {exc.strerror}") from None
        if key == "security.ssl_certfile" and b"-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError.single(key, path, f"no PEM certificate in {path}")
        if (key == "security.ssl_keyfile" or keyfile is None) and b"PRIVATE KEY-----" not in text:
            where = (
                f"no PEM private key in {path}"
                if keyfile
                else f"no PEM private key in {path} (set security.ssl_keyfile to the key's file)"
            )
            raise ConfigError.single(key, path, where)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile, keyfile, password=_no_password)
    except _EncryptedKey:
        raise ConfigError.single(
            "security.ssl_keyfile" if keyfile else "security.ssl_certfile",
            keyfile or certfile,
            f"the private key in {keyfile or certfile} is encrypted; aiosrv needs it unencrypted",
        ) from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        pair = f"{certfile} with the key in {keyfile}" if keyfile else certfile
        raise ConfigError.single(
            "security.ssl_certfile",
            certfile,
            f"cannot use the certificate {pair}: {exc}",
        ) from None
    return ctx


# --------------------------------------------------------------------------- descriptors


class AcceptWatch:
    """Counts, logs and reports failed accepts of one server's listeners."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.log = RateLimitedLog(log, ACCEPT_LOG_INTERVAL, server.clock)

    def failed(self, exc: OSError, where: str) -> None:
        server = self.server
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        stats = server.stats
        stats.accept_errors[name] += 1
        stats.accept_error_at = server.clock.time()
        stats.accept_error_text = f"{name}: {exc.strerror}"
        used, soft = descriptor_usage()
        fds = (
            f"{used if used is not None else 'all'} of {soft} descriptors open"
            if soft is not None
            else "no descriptor limit"
        )
        self.log.log(
            name,
            logging.ERROR,
            "cannot accept connections on %s: %s (%s); %s (RLIMIT_NOFILE soft limit); "
            "accepting again in %g s, waiting clients stay in the backlog",
            where,
            name,
            exc.strerror,
            fds,
            ACCEPT_RETRY_DELAY,
        )

    def close(self) -> None:
        self.log.close()


# --------------------------------------------------------------------------- the site


def bind_sockets(
    host: str | None, port: int, backlog: int, reuse_port: bool
) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to; all
    interfaces when empty) and ``port``, as ``loop.create_server`` binds."""
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            # proto from getaddrinfo (IPPROTO_TCP): accepted sockets inherit
            # it, and asyncio sets TCP_NODELAY only on sockets that say TCP
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener(asyncio.AbstractServer):
    """What :class:`AcceptSite` listens with (its ``_server``): the sockets,
    the accept loop and the TLS handshakes in progress."""

    def __init__(
        self,
        socks: list[socket.socket],
        factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext | None,
        server: Server,
        watch: AcceptWatch,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._socks = socks
        self._factory = factory
        self._ssl = ssl_context
        self._server = server
        self._watch = watch
        self._retry: dict[socket.socket, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._socks)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def serve_forever(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting and close the listening sockets (the connections
        stay; TLS handshakes in progress are abandoned)."""
        if self._serving:
            for sock in self._socks:
                self._loop.remove_reader(sock.fileno())
        self._serving = False
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        for sock in self._socks:
            sock.close()
        self._socks = []
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- accepting ----------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._pause(sock, exc)
                return
            self._connect(conn, addr)

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        """accept() failed: stop watching the socket for a while."""
        self._loop.remove_reader(sock.fileno())
        self._retry[sock] = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume, sock)
        addr = sock.getsockname()
        where = f"{addr[0]}:{addr[1]}"
        if exc.errno in RESOURCE_ERRNOS:
            self._watch.failed(exc, where)
        else:
            log.error("cannot accept connections on %s: %s; again in %g s",
                      where, exc, ACCEPT_RETRY_DELAY)  # fmt: skip

    def _resume(self, sock: socket.socket) -> None:
        self._retry.pop(sock, None)
        if self._serving and sock.fileno() >= 0:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _connect(self, conn: socket.socket, addr: Any) -> None:
        try:
            conn.setblocking(False)
            protocol = self._factory()
        except BaseException:
            conn.close()
            raise
        if self._ssl is not None and isinstance(protocol, HeadGuard):
            protocol.tls_started(self._server.clock.time())
        task = self._loop.create_task(self._start(conn, addr, protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, conn: socket.socket, addr: Any, protocol: asyncio.BaseProtocol) -> None:
        loop = self._loop
        if self._ssl is None:
            try:
                await loop.connect_accepted_socket(lambda: protocol, conn)
            except (OSError, asyncio.CancelledError):
                conn.close()
            return
        started = self._server.clock.time()
        timeout = self._server.config.security.handshake_timeout
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._ssl, ssl_handshake_timeout=timeout
            )
        except (OSError, asyncio.CancelledError) as exc:
            conn.close()
            if isinstance(protocol, HeadGuard):
                if isinstance(exc, asyncio.CancelledError):
                    protocol.tls_ended()
                else:
                    protocol.tls_failed(exc, self._server.clock.time() - started, _peer(addr))


def _peer(addr: Any) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "unknown"
    host, port = addr[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class AcceptSite(web.BaseSite):
    """A TCP site (like ``web.TCPSite``) that accepts through a
    :class:`Listener`: failed accepts are counted, logged and retried, TLS
    handshakes are bounded by ``security.handshake_timeout``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        server: Server,
        watch: AcceptWatch,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._aiosrv = server
        self._watch = watch
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        sockets = self._server.sockets if isinstance(self._server, Listener) else ()
        port = sockets[0].getsockname()[1] if sockets else self._port
        return f"{scheme}://{self._host or '0.0.0.0'}:{port}"

    async def start(self) -> None:
        await super().start()
        factory = self._runner.server
        assert factory is not None
        socks = bind_sockets(self._host, self._port, self._backlog, self._reuse_port)
        listener = Listener(socks, factory, self._ssl_context, self._aiosrv, self._watch)
        self._server = listener
        await listener.start_serving()
