"""``aiosrv serve``: bind the server to its ports, handle signals, shut down cleanly.

Ports are grouped: the WebSocket endpoint, the HTTP API and ``/metrics`` each
get a listener, and parts configured on the same port share one (API port =
WebSocket port serves everything on one port, as behind Caddy or nginx).

Signals: SIGTERM/SIGINT drain and exit 0 within ``shutdown.grace_period``;
SIGHUP reloads the configuration; SIGUSR1 writes a memory report to the log
and reopens the log file (logrotate's ``postrotate`` sends it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from .app import create_app
from .config import Config
from .logs import reopen_files, setup_logging
from .memreport import memory_report
from .server import Server

log = logging.getLogger("aiosrv.runner")


def listeners(config: Config) -> list[tuple[str, int, tuple[str, ...]]]:
    """(host, port, parts) for each listener the configuration asks for."""
    groups: dict[int, tuple[str, list[str]]] = {}
    wanted = [
        ("ws", config.websocket.host, config.websocket.port),
        ("api", config.api.host, config.api.port),
    ]
    if config.monitoring.enabled and config.monitoring.prometheus_enabled:
        wanted.append(("metrics", config.api.host, config.monitoring.metrics_port))
    for part, host, port in wanted:
        if port in groups:
            groups[port][1].append(part)
        else:
            groups[port] = (host, [part])
    return [(host, port, tuple(parts)) for port, (host, parts) in groups.items()]


class Runner:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.runners: list[web.AppRunner] = []
        self.bound: dict[str, list[tuple[str, int]]] = {}
        self._stop = asyncio.Event()

    async def start(self) -> None:
        server = self.server
        await server.start()
        for host, port, parts in listeners(server.config):
            app = create_app(server=server, parts=parts)
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                await runner.cleanup()
                raise SystemExit(
                    f"aiosrv: cannot listen on {host}:{port} for {'+'.join(parts)}: {exc}"
                ) from None
            self.runners.append(runner)
            listening = getattr(site._server, "sockets", None) or []
            addrs = [s.getsockname()[:2] for s in listening]
            for part in parts:
                self.bound[part] = addrs

    def port_of(self, part: str) -> int:
        return int(self.bound[part][0][1])

    def ready_line(self) -> str:
        cfg = self.server.config
        parts = []
        if "ws" in self.bound:
            parts.append(
                f"websocket ws://{cfg.websocket.host}:{self.port_of('ws')}{cfg.websocket.paths[0]}"
            )
        if "api" in self.bound:
            parts.append(f"api http://{cfg.api.host}:{self.port_of('api')}")
        if "metrics" in self.bound:
            parts.append(f"metrics http://{cfg.api.host}:{self.port_of('metrics')}/metrics")
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
        if not self._stop.is_set():
            log.info("%s received: draining and shutting down", why or "stop")
        self._stop.set()

    def _on_hup(self) -> None:
        log.info("SIGHUP received: reloading configuration")
        self.server.reload()

    def _on_usr1(self) -> None:
        reopen_files()
        for line in memory_report(self.server):
            log.info("%s", line)

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        server = self.server
        server.draining = True
        # stop accepting first: close the listening sockets
        for runner in self.runners:
            for site in list(runner.sites):
                srv = getattr(site, "_server", None)
                if srv is not None:
                    srv.close()
        await server.shutdown()
        for runner in self.runners:
            await runner.cleanup()
        log.info("aiosrv stopped")


async def serve_async(server: Server) -> None:
    runner = Runner(server)
    await runner.start()
    runner.install_signals()
    log.info("%s", runner.ready_line())
    try:
        await runner.wait()
    finally:
        await runner.stop()


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def set_title(config: Config) -> None:
    """Name the process so the operations guide's ``pgrep -f websocket-server``
    and ``pkill -HUP -f websocket-server`` find it."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(
        f"websocket-server aiosrv serve ws:{config.websocket.port} api:{config.api.port} "
        + " ".join(sys.argv[1:])
    )


def serve(
    config: Config, *, env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> int:
    setup_logging(config.logging.level, config.logging.file)
    if config.diagnostics.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    loop_name = install_uvloop()
    set_title(config)
    log.info("starting aiosrv on %s, config %s", loop_name, config.source_path or "(defaults)")
    server = Server(config, env=env, overrides=overrides)
    try:
        asyncio.run(serve_async(server))
    except SystemExit as exc:
        log.error("%s", exc.code)
        return 1
    return 0
