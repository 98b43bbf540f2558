"""``aiosrv serve``: bind the server to its ports, handle signals, shut down cleanly.

Ports are grouped: the WebSocket endpoint, the HTTP API and ``/metrics`` each
get a listener, and parts configured on the same port share one (API port =
WebSocket port serves everything on one port, as behind Caddy or nginx).

Signals: SIGTERM/SIGINT drain and exit 0 within ``shutdown.grace_period``;
SIGHUP reloads the configuration; SIGUSR1 writes a memory report to the log
and reopens the log file (logrotate's ``postrotate`` sends it).

The same path runs each worker of ``serve --workers N`` (started by
``aiosrv/workers.py``, which tells it who it is: :mod:`aiosrv.identity`). A
worker binds its listeners with SO_REUSEPORT, tags its log lines
``worker=INDEX``, names itself in its process title, hands its ready line to
the supervisor (which logs the one ready line) and stops if the supervisor
goes away.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
import sys
from typing import Any

from . import identity as ident
from .app import create_app
from .auth import exposure_warnings
from .config import Config, ConfigError, inert_settings, listeners
from .doctor import needed_fds, nofile_warning, raise_nofile
from .guard import GuardedRunner, GuardUnsupported, check_aiohttp_guard
from .identity import Identity
from .listen import AcceptSite, AcceptWatch, server_ssl_context
from .logs import FORMAT, LogFileError, reopen_files, setup_logging
from .memreport import memory_report
from .server import Server
from .upgrade import AiohttpMismatch, check_aiohttp, listening_sockets, stop_listening

log = logging.getLogger("aiosrv.runner")


def announce(level: int, message: str) -> None:
    """Log ``message`` whatever the configured level (the ready line, a fatal
    start-up error): supervisors and operators wait for these lines."""
    log.handle(log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None))


__all__ = ["Runner", "announce", "listeners", "serve", "serve_async", "set_title"]


class Runner:
    """Every listener of one server. Each is an :class:`aiosrv.guard.GuardedRunner`
    (request heads bounded before aiohttp reads them) bound by an
    :class:`aiosrv.listen.AcceptSite` (failed accepts noticed; TLS when
    ``ssl_context`` is given)."""

    def __init__(
        self,
        server: Server,
        identity: Identity = ident.ALONE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server
        self.identity = identity
        self.ssl_context = ssl_context
        self.runners: list[GuardedRunner] = []
        self.bound: dict[str, list[tuple[str, int]]] = {}
        self.accept_watch = AcceptWatch(server)
        self._stop = asyncio.Event()

    async def start(self) -> None:
        server = self.server
        await server.start()
        for host, port, parts in listeners(server.config):
            app = create_app(server=server, parts=parts)
            runner = GuardedRunner(
                app, server, handle_signals=False, shutdown_timeout=1.0
            )
            await runner.setup()
            # workers share each port with SO_REUSEPORT: the kernel spreads new
            # connections over their listening sockets
            site = AcceptSite(
                runner,
                host,
                port,
                server,
                self.accept_watch,
                ssl_context=self.ssl_context,
                backlog=4096,
                reuse_port=self.identity.supervised,
            )
            try:
                await site.start()
            except OSError as exc:
                await runner.cleanup()
                raise SystemExit(
                    f"aiosrv: cannot listen on {host}:{port} for {'+'.join(parts)}: {exc}"
                ) from None
            self.runners.append(runner)
            addrs = [sock.getsockname()[:2] for sock in listening_sockets(site)]
            for part in parts:
                self.bound[part] = addrs

    def port_of(self, part: str) -> int:
        return int(self.bound[part][0][1])

    def ready_line(self) -> str:
        cfg = self.server.config
        s = "s" if self.ssl_context is not None else ""
        parts = []
        if "ws" in self.bound:
            parts.append(
                f"websocket ws{s}://{cfg.websocket.host}:{self.port_of('ws')}"
                f"{cfg.websocket.paths[0]}"
            )
        if "api" in self.bound:
            parts.append(f"api http{s}://{cfg.api.host}:{self.port_of('api')}")
        if "metrics" in self.bound:
            parts.append(f"metrics http{s}://{cfg.api.host}:{self.port_of('metrics')}/metrics")
        return (
            f"aiosrv ready: {', '.join(parts)} (core={self.server.implementation}, "
            f"broker={self.server.broker.name}, max_connections={cfg.websocket.max_connections})"
        )

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)

    def request_stop(self, why: str = "") -> None:
        """The first request drains (over ``shutdown.drain_window``); a second
        one, while the drain is spread out, closes the remaining clients now."""
        if not self._stop.is_set():
            log.info("%s received: draining and shutting down", why or "stop")
            self._stop.set()
        else:
            log.info("%s received again: not waiting for the drain window", why or "stop")
            self.server.hasten_drain()

    def _on_hup(self) -> None:
        log.info("SIGHUP received: reloading configuration")
        self.server.reload()

    def _on_usr1(self) -> None:
        reopen_files()
        for line in memory_report(self.server):
            log.info("%s", line)

    async def wait(self) -> None:
        await self._stop.wait()

    async def watch_supervisor(self, period: float = 1.0) -> None:
        """A worker whose supervisor died (killed with -9) drains and exits
        rather than hold the ports with nobody to restart or stop it."""
        pid = self.identity.supervisor_pid
        while not self._stop.is_set():
            await asyncio.sleep(period)
            if os.getppid() != pid:
                log.warning("the supervisor (pid %s) is gone", pid)
                self.request_stop("supervisor gone")

    async def stop(self) -> None:
        server = self.server
        server.draining = True
        # stop accepting first: close the listening sockets
        for runner in self.runners:
            for site in list(runner.sites):
                stop_listening(site)
        await server.shutdown()
        for runner in self.runners:
            await runner.cleanup()
        self.accept_watch.close()
        log.info("aiosrv stopped")


def report_ready(identity: Identity, line: str) -> None:
    """A worker's ready line goes to its supervisor (which logs the one ready
    line of all its workers), not to the log."""
    log.info("%s (pid %d) listening: %s", identity.label, os.getpid(), line.split(": ", 1)[-1])
    if identity.ready_fd is None:
        return
    try:
        os.write(identity.ready_fd, line.encode() + b"\n")
        os.close(identity.ready_fd)
    except OSError as exc:  # the supervisor is gone; the watchdog stops us
        log.warning("cannot tell the supervisor this worker is ready: %s", exc)


async def serve_async(
    server: Server, identity: Identity = ident.ALONE, ssl_context: ssl.SSLContext | None = None
) -> None:
    runner = Runner(server, identity, ssl_context)
    await runner.start()
    runner.install_signals()
    set_title(server.config, {part: runner.port_of(part) for part in runner.bound}, identity)
    # What exists now (modules, the app, the server) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise
    # walk it every time and stall the loop for milliseconds each.
    gc.collect()
    gc.freeze()
    watchdog = None
    if identity.supervised:
        report_ready(identity, runner.ready_line())
        watchdog = asyncio.create_task(runner.watch_supervisor())
    else:
        announce(logging.INFO, runner.ready_line())
    try:
        await runner.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await runner.stop()


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def set_title(
    config: Config, bound: dict[str, int] | None = None, identity: Identity = ident.ALONE
) -> None:
    """Name the process so the operations guide's ``pgrep -f websocket-server``
    and ``pkill -HUP -f websocket-server`` find it. Once listening, ``bound``
    gives the actual ports (port 0 in the configuration means any free port).
    A worker's title says which: ``websocket-server worker 2/4 ws:8765 ...``."""
    try:
        import setproctitle
    except ImportError:
        return
    ports = bound or {}
    ws = ports.get("ws", config.websocket.port)
    api = ports.get("api", config.api.port)
    who = f"{identity.label} " if identity.supervised else ""
    setproctitle.setproctitle(
        f"websocket-server {who}ws:{ws} api:{api} aiosrv " + " ".join(sys.argv[1:])
    )


def tag_log_lines(identity: Identity) -> None:
    """Every log line of a worker carries ``worker=INDEX`` (for grep)."""
    fmt = logging.Formatter(FORMAT.replace("%(name)s", f"worker={identity.index} %(name)s", 1))
    for handler in logging.getLogger("aiosrv").handlers:
        handler.setFormatter(fmt)


def check_nofile(max_connections: int) -> None:
    """Raise the soft open-files limit to the hard one (before listening); log
    both, and warn when max_connections cannot be reached within them."""
    before, soft, hard = raise_nofile()
    log.info("open files limit: soft %s%s, hard %s; max_connections %d needs %d",
             soft, f" (raised from {before})" if before != soft else "", hard,
             max_connections, needed_fds(max_connections))  # fmt: skip
    warning = nofile_warning(soft, max_connections)
    if warning:
        log.warning("%s", warning)


def serve(
    config: Config,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    identity: Identity = ident.ALONE,
) -> int:
    try:
        setup_logging(config.logging.level, config.logging.file)
    except LogFileError as exc:
        announce(logging.ERROR, f"aiosrv: {exc}")
        return 2
    ident.set_current(identity)
    if identity.supervised:
        tag_log_lines(identity)
    try:
        check_aiohttp()
        check_aiohttp_guard()
    except (AiohttpMismatch, GuardUnsupported) as exc:
        announce(logging.ERROR, f"aiosrv: {exc}")
        return 2
    if config.diagnostics.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    loop_name = install_uvloop()
    set_title(config, None, identity)
    if identity.supervised:
        log.info("%s starting, pid %d, supervisor pid %s", identity.label, os.getpid(),
                 identity.supervisor_pid)  # fmt: skip
    log.info("starting aiosrv on %s, config %s", loop_name, config.source_path or "(defaults)")
    for note in inert_settings(config):
        log.warning("config: %s", note)
    check_nofile(config.websocket.max_connections)
    for note in exposure_warnings(
        config.security.enable_auth, bool(config.api.token), config.websocket.host,
        config.api.host,
    ):  # fmt: skip
        log.warning("%s", note)
    try:
        server = Server(config, env=env, overrides=overrides)
        ssl_context = server_ssl_context(config.security)
    except ConfigError as exc:
        # found when the configuration is put to use, e.g. an engine not installed
        announce(logging.ERROR, "aiosrv: invalid configuration:")
        for problem in exc.problems:
            announce(logging.ERROR, f"  {problem}")
        return 2
    try:
        asyncio.run(serve_async(server, identity, ssl_context))
    except SystemExit as exc:
        announce(logging.ERROR, str(exc.code))
        return 1
    return 0
