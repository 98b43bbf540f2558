"""The server's state and life cycle, independent of ports and sites.

:class:`Server` owns the fan-out core, the broker, the hub, the connections,
the background tasks (heartbeat, built-in sources) and the configuration, and
knows how to reload it and how to shut down. ``app.py`` exposes it over HTTP
and WebSocket routes; ``runner.py`` binds those to ports and signals.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import __version__
from .broker import Broker, Publication
from .broker_memory import MemoryBroker
from .config import Change, Config, ConfigError, apply_live, diff_config, load_config
from .connection import Connection
from .errors import CloseCode
from .fanout import IMPLEMENTATION, FanOut, Subscriber
from .heartbeat import Heartbeat
from .hub import Hub, HubSettings
from .logs import set_level
from .sources import Sources
from .stats import Counters, Sampler

log = logging.getLogger("aiosrv.server")


def hub_settings(config: Config) -> HubSettings:
    return HubSettings(
        batch_size=config.broadcast.batch_size,
        flush_interval=config.broadcast.flush_interval,
        write_share=config.broadcast.write_share,
        queue_limit=config.broadcast.queue_limit,
        history_size=config.history.size,
        compression=config.websocket.compression,
        compression_threshold=config.websocket.compression_threshold,
        compression_level=config.websocket.compression_level,
    )


def make_broker(config: Config) -> Broker:
    """The broker engine the configuration asks for."""
    if config.broker.engine == "memory":
        return MemoryBroker(config.history.size)
    if config.broker.engine == "redis":
        try:
            from .broker_redis import RedisBroker  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError.single(
                "broker.engine", "redis", f"the Redis engine is not available: {exc}"
            ) from exc
        return RedisBroker(config)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError.single("broker.engine", config.broker.engine, "unknown engine")


@dataclass
class ReloadResult:
    ok: bool
    source: str | None
    applied: list[Change] = field(default_factory=list)
    needs_restart: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def show(c: Change) -> dict[str, Any]:
            return {"key": c.path, "old": c.old, "new": c.new}

        return {
            "ok": self.ok,
            "source": self.source,
            "applied": [show(c) for c in self.applied],
            "needs_restart": [show(c) for c in self.needs_restart],
            "errors": self.errors,
        }


class Server:
    """Everything one aiosrv instance is, minus its listening sockets."""

    version = __version__
    implementation = IMPLEMENTATION

    def __init__(
        self,
        config: Config,
        *,
        env: dict[str, str] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        # what a reload re-reads: the same file, env and flags as at start-up
        self._reload_env = env
        self._reload_overrides = overrides or {}
        self.instance_id = secrets.token_hex(4)
        self.core = FanOut()
        self.broker = make_broker(config)
        self.hub = Hub(self.core, self.broker, hub_settings(config))
        self.hub.on_overflow = self._close_overflowed  # type: ignore[method-assign]
        self.connections: dict[str, Connection] = {}
        #: connections whose close has begun: their socket lingers until the
        #: client answers the close frame or CLOSE_TIMEOUT passes
        self.closing_connections: set[Connection] = set()
        self.stats = Counters()
        self.sampler = Sampler()
        self.draining = False
        self.started_at = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.heartbeat = Heartbeat(self)
        self.sources = Sources(self)
        self.started = False

    # -- life cycle ------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    async def start(self) -> None:
        if self.started:
            return
        self._loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
        await self.broker.start()
        self.heartbeat.start()
        self.sources.start()
        self.started = True
        log.info(
            "aiosrv %s core=%s broker=%s instance=%s",
            self.version,
            self.implementation,
            self.broker.name,
            self.instance_id,
        )

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background coroutine the server waits for at shutdown."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, grace: float | None = None) -> None:
        """Close every client with 1001 after flushing what is queued for it,
        then stop the background tasks and the broker, within ``grace`` seconds."""
        if grace is None:
            grace = self.config.shutdown.grace_period
        self.draining = True
        deadline = self.loop.time() + grace
        # fan out what is already queued, so in-flight messages are delivered
        self.hub.drain_now(deadline)
        for conn in list(self.connections.values()):
            conn.close_soon(CloseCode.GOING_AWAY, "server shutting down")
        # wait for the close frames to be written (not for the clients' answers)
        while (
            self.connections
            or self._tasks
            or any(c.transport.get_write_buffer_size() for c in self.closing_connections)
        ) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in [*self.connections.values(), *self.closing_connections]:
            if conn.transport.get_write_buffer_size():
                conn.transport.abort()  # the grace period is over
            else:
                conn.transport.close()
        await self.stop()

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.heartbeat.stop()
        await self.sources.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.close()

    # -- connections -------------------------------------------------------------

    def admission_refusal(self, request: web.Request) -> web.Response | None:
        """The 503 to answer an upgrade with, or None to accept it."""
        if self.draining:
            self.stats.rejected["draining"] += 1
            return _refuse(
                503, "draining", "the server is shutting down; connect to another instance"
            )
        limit = self.config.websocket.max_connections
        if len(self.connections) >= limit:
            self.stats.rejected["max_connections"] += 1
            log.warning("performance: connection refused, at the limit of %d connections", limit)
            return _refuse(
                503, "max_connections", f"the server holds its maximum of {limit} connections"
            )
        return None

    def register(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.core.add(conn.sub)
        self.stats.connections_total += 1

    def unregister(self, conn: Connection) -> None:
        """The connection is no longer open (its close began, or its socket
        went); idempotent."""
        if self.connections.pop(conn.id, None) is None:
            return
        self.core.remove(conn.sub)
        if conn.close_code is not None:
            self.stats.closes[conn.close_code] += 1

    def _close_overflowed(self, subs: list[Subscriber]) -> None:
        for sub in subs:
            conn: Connection | None = sub.owner
            if conn is None:
                continue
            if sub.overflowed:
                self.stats.slow_consumer_closes += 1
                log.warning(
                    "performance: Client %s is a slow consumer (send buffer over %d bytes); "
                    "closing with 1013 and dropping its pending data",
                    conn.id,
                    sub.limit,
                )
                conn.close_soon(
                    CloseCode.TRY_AGAIN_LATER, "slow consumer: send buffer limit", drop_pending=True
                )
            else:
                conn.close_soon(CloseCode.GOING_AWAY, "write failed", drop_pending=True)

    # -- publishing (library API) -----------------------------------------------------

    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        """Publish a message from Python code running in this process.

        ``payload`` is any JSON-serialisable value (or bytes of JSON). Returns
        the :class:`~aiosrv.broker.Publication` with its ``seq`` once it is in
        history and queued for every subscriber.
        """
        return await self.hub.publish(type_, payload, key)

    # -- health -------------------------------------------------------------------

    def health(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.draining:
            reasons.append("draining: the server is shutting down")
        b = self.broker.health()
        if not b.ok:
            reasons.append(f"broker {self.broker.name} unavailable: {b.reason}")
        if len(self.hub.queue) >= self.hub.settings.queue_limit:
            reasons.append(f"broadcast queue full ({len(self.hub.queue)})")
        return (not reasons), reasons

    # -- configuration --------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the configuration (file, environment, flags) and apply what
        can change live; report what needs a restart. An invalid file keeps
        the running configuration and says why."""
        path = self.config.source_path
        if path is None:
            # Without a file nothing can have changed: the environment and the
            # flags are the process's own, and a config built in code stays as built.
            log.info("config reload: the server runs without a config file; nothing to reload")
            self.stats.reloads_ok += 1
            return ReloadResult(True, None)
        try:
            # the same file as at start-up: a server started without one must not
            # pick up config/deployment.yaml from the working directory now
            new = load_config(
                path, self._reload_env, self._reload_overrides, use_default_path=False
            )
        except ConfigError as exc:
            self.stats.reloads_failed += 1
            errors = [str(p) for p in exc.problems]
            log.error("config reload failed, keeping the running config: %s", "; ".join(errors))
            return ReloadResult(False, path, errors=errors)
        effective, restart = apply_live(self.config, new)
        applied = [c for c in diff_config(self.config, effective)]
        self.apply(effective)
        self.stats.reloads_ok += 1
        for c in applied:
            log.info("config reload: %s changed from %r to %r", c.path, c.old, c.new)
        for c in restart:
            log.warning(
                "config reload: %s changed from %r to %r but needs a restart; still using %r",
                c.path,
                c.old,
                c.new,
                c.old,
            )
        if not applied and not restart:
            log.info("config reload: no changes in %s", path or "defaults")
        return ReloadResult(True, path, applied, restart)

    def apply(self, config: Config) -> None:
        """Switch to a new configuration whose restart-only keys are unchanged."""
        old = self.config
        self.config = config
        self.hub.configure(hub_settings(config))
        if config.logging.level != old.logging.level:
            set_level(config.logging.level)
        limit = config.websocket.send_buffer_limit
        if limit != old.websocket.send_buffer_limit:
            for conn in self.connections.values():
                conn.sub.limit = limit
        self.heartbeat.reschedule()


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
