"""The server's state and life cycle, independent of ports and sites.

:class:`Server` is the composition root: it builds the fan-out core, the
broker, the hub, the heartbeat, the sampler and the built-in sources, and
hands each the narrow dependencies it needs (the core, the hub's methods, a
getter of its part of the configuration, the counters, the clock). None of
them knows the server. It keeps the open connections (any :class:`Client`:
the WebSocket sessions register themselves), the configuration, and knows how
to reload it and how to shut down. ``app.py`` and ``upgrade.py`` expose it
over HTTP and WebSocket routes; ``runner.py`` binds those to ports and
signals. Nothing below this module imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import __version__
from .auth import Principal, SecurityPolicy, client_address
from .broker import Broker, Publication
from .broker_memory import MemoryBroker
from .clock import Clock, LoopClock, Timer
from .config import Change, Config, ConfigError, apply_live, diff_config, load_config
from .counters import Counters, Sampler
from .errors import MAX_TRACKED_ADDRESSES, ClientError, CloseCode, ErrorCode
from .fanout import IMPLEMENTATION, FanOut, Subscriber
from .heartbeat import Heartbeat
from .hub import Hub, HubSettings
from .logs import audit, set_level
from .ratelimit import AddressLimiter
from .sources import Sources
from .stats import source_snapshots

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


def make_broker(config: Config, instance_id: str = "") -> Broker:
    """The broker engine the configuration asks for."""
    if config.broker.engine == "memory":
        return MemoryBroker(config.history.size)
    if config.broker.engine == "redis":
        try:
            from .broker_redis import RedisBroker
        except ImportError as exc:  # redis-py is an extra: pip install 'aiosrv[redis]'
            raise ConfigError.single(
                "broker.engine",
                "redis",
                f"the Redis engine needs redis-py (pip install 'aiosrv[redis]'): {exc}",
            ) from exc
        return RedisBroker(config, instance_id)
    raise ConfigError.single("broker.engine", config.broker.engine, "unknown engine")


class Client(Protocol):
    """An open connection as the server sees it (``session.Session`` is one)."""

    id: str
    peer: str
    principal: Principal
    sub: Subscriber
    closing: bool
    close_code: int | None

    def close_soon(self, code: int, reason: str, *, drop_pending: bool = False) -> None:
        """Close after answering what the client sent and sending what is
        queued (``drop_pending``: at once, dropping it)."""
        ...

    def unwritten(self) -> int:
        """Bytes its socket has not written yet."""
        ...

    def end(self, abort: bool = False) -> None:
        """Close its socket (``abort``: without writing what is left)."""
        ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A connection the server will not take: the HTTP status and the error."""

    status: int
    code: str
    message: str


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
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        # what a reload re-reads: the same file, env and flags as at start-up
        self._reload_env = env
        self._reload_overrides = overrides or {}
        self.instance_id = secrets.token_hex(4)
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.stats = Counters()
        self.connections: dict[str, Client] = {}
        #: how many connections are still sending their request head (aiosrv.guard
        #: sets this to its count); they count against websocket.max_connections
        self.handshakes_in_progress: Callable[[], int] = lambda: 0
        #: connections of each user the per-user limit applies to, oldest first
        self.users: dict[str, dict[str, Client]] = {}
        #: authentication, origins, trusted proxies: rebuilt on reload
        self.policy = SecurityPolicy.from_config(config.security)
        #: connection attempts per client address (security.connect_rate)
        self.connect_limiter = AddressLimiter(MAX_TRACKED_ADDRESSES)
        #: connections whose close has begun: their socket lingers until the
        #: client answers the close frame or CLOSE_TIMEOUT passes
        self.closing_connections: set[Client] = set()
        self.draining = False
        #: the closes shutdown has spread over shutdown.drain_window, not yet due
        self._drain_timers: list[Timer] = []
        self.started = False
        self.started_at = self.clock.time()
        self._tasks: set[asyncio.Task[Any]] = set()

        self.core = FanOut()
        self.broker = make_broker(config, self.instance_id)
        self.hub = Hub(
            self.core,
            self.broker,
            hub_settings(config),
            on_overflow=self._close_overflowed,
            clock=self.clock,
        )
        self.broker.set_instance_record(self.instance_record)
        self.heartbeat = Heartbeat(
            self.core,
            settings=self._heartbeat_settings,
            schedule_flush=self.hub.schedule_flush,
            counters=self.stats,
            clock=self.clock,
            is_draining=self._is_draining,
        )
        self.sampler = Sampler(self._totals, self.clock)
        self.sources = Sources(
            source_snapshots(self),
            publish=self.hub.publish,
            type_counts=self.core.type_counts,
            settings=lambda: self.config.sources,
            sampler=self.sampler,
            counters=self.stats,
            clock=self.clock,
            is_draining=self._is_draining,
        )

    # -- what the collaborators read -------------------------------------------

    def instance_record(self) -> dict[str, Any]:
        """What this instance tells the others about itself (the cluster view)."""
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "version": self.version,
            "uptime_seconds": round(self.uptime, 1),
            "connections": len(self.connections),
            "subscriptions": self.core.subscription_count(),
            "published": self.hub.fanned_out,
            "delivered": self.core.delivered,
            "draining": self.draining,
        }

    async def cluster(self) -> dict[str, Any]:
        """Every live instance sharing the broker (this one's record fresh),
        with totals; for an engine of one instance, this one alone."""
        try:
            records = await self.broker.instances()
            error = None
        except ClientError as exc:  # the broker is down: say so, show what is known
            records, error = [], exc.message
        mine = {"instance": self.instance_id, **self.instance_record()}
        others = [r for r in records if r.get("instance") != self.instance_id]
        instances = [mine, *others]
        totals = {
            k: sum(int(r.get(k, 0) or 0) for r in instances)
            for k in ("connections", "subscriptions", "published", "delivered")
        }
        view: dict[str, Any] = {"instances": instances, "count": len(instances), "totals": totals}
        if error is not None:
            view["error"] = error
        return view

    def _heartbeat_settings(self) -> tuple[float, float]:
        cfg = self.config.websocket
        return cfg.heartbeat_interval, cfg.heartbeat_timeout

    def _is_draining(self) -> bool:
        return self.draining

    def _totals(self) -> tuple[int, int, int, int]:
        stats = self.stats
        return (
            self.hub.fanned_out,
            self.core.delivered,
            stats.messages_in,
            sum(stats.errors.values()),
        )

    # -- life cycle ------------------------------------------------------------

    @property
    def uptime(self) -> float:
        return self.clock.time() - self.started_at

    async def start(self) -> None:
        if self.started:
            return
        self.started_at = self.clock.time()
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
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self, grace: float | None = None, window: float | None = None) -> None:
        """Close every client with 1001 after flushing what is queued for it,
        then stop the background tasks and the broker, within ``grace`` seconds.

        With a drain ``window`` (``shutdown.drain_window``) the closes are
        spread over it: the clients in a random order, each at a random moment
        of its own equal slice of the window, so they reconnect elsewhere at an
        even rate instead of all at once. Clients not yet closed keep receiving
        meanwhile. :meth:`hasten_drain` (a second SIGTERM) closes the rest now."""
        settings = self.config.shutdown
        grace = settings.grace_period if grace is None else grace
        window = min(settings.drain_window if window is None else window, grace)
        self.draining = True
        clock = self.clock
        deadline = clock.time() + grace
        # fan out what is already queued, so in-flight messages are delivered
        self.hub.drain_now(deadline)
        conns = list(self.connections.values())
        if window > 0 and len(conns) > 1:
            log.info("draining %d connections over %.3g s", len(conns), window)
            random.shuffle(conns)
            slice_ = window / len(conns)
            self._drain_timers = [
                clock.call_later(slice_ * (i + random.random()), self._drain_one, conn)
                for i, conn in enumerate(conns)
            ]
        else:
            for conn in conns:
                self._drain_one(conn)
        # wait for the close frames to be written (not for the clients' answers)
        while (
            self.connections or self._tasks or any(c.unwritten() for c in self.closing_connections)
        ) and clock.time() < deadline:
            await asyncio.sleep(0.02)
        self.hasten_drain()
        for conn in [*self.connections.values(), *self.closing_connections]:
            conn.end(abort=conn.unwritten() > 0)  # after the grace period: abort
        await self.stop()

    def _drain_one(self, conn: Client) -> None:
        if conn.id in self.connections:  # not gone by itself meanwhile
            conn.close_soon(CloseCode.GOING_AWAY, "server shutting down")

    def hasten_drain(self) -> None:
        """Close now every client whose spread-out shutdown close is not due yet."""
        timers, self._drain_timers = self._drain_timers, []
        for timer in timers:
            timer.cancel()
        if timers and self.connections:
            log.info("closing the %d connections still open at once", len(self.connections))
        for conn in list(self.connections.values()):
            self._drain_one(conn)

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

    def admission_refusal(self) -> Refusal | None:
        """Why a new connection is refused (answered with 503), or None to accept it.
        Open connections and request heads still arriving count against the limit."""
        if self.draining:
            self.stats.rejected["draining"] += 1
            return Refusal(
                503, "draining", "the server is shutting down; connect to another instance"
            )
        limit = self.config.websocket.max_connections
        if len(self.connections) + self.handshakes_in_progress() >= limit:
            self.stats.rejected["max_connections"] += 1
            log.warning("performance: connection refused, at the limit of %d connections", limit)
            return Refusal(
                503, "max_connections", f"the server holds its maximum of {limit} connections"
            )
        return None

    def client_address(self, transport: Any, headers: Mapping[str, str]) -> str:
        """The address of the client of a request on ``transport``: its
        socket's peer, or what a trusted proxy's headers say."""
        peername = transport.get_extra_info("peername") if transport is not None else None
        peer = str(peername[0]) if peername else "unknown"
        return client_address(peer, headers, self.policy.proxies)

    def connect_refusal(self, address: str) -> Refusal | None:
        """Refused (429) when ``address`` opens connections faster than
        security.connect_rate allows (with rate limits on)."""
        cfg = self.config.security
        if not cfg.rate_limit_enabled:
            return None
        if self.connect_limiter.allow(
            address, self.clock.time(), cfg.connect_rate, cfg.connect_burst
        ):
            return None
        self.stats.rejected["rate_limited"] += 1
        return Refusal(
            429,
            ErrorCode.RATE_LIMITED,
            f"too many connection attempts from {address}: at most {cfg.connect_rate:g} "
            f"per second (burst {cfg.connect_burst}); retry later",
        )

    async def user_refusal(self, principal: Principal, address: str) -> Refusal | None:
        """The per-user connection limit (security.max_connections_per_user),
        counted across the instances sharing the broker: refuse the new
        connection (429), or close the user's oldest ones here with 1008 to
        make room (policy close_oldest), or None when there is room."""
        cfg = self.config.security
        limit = cfg.max_connections_per_user
        if not limit or not principal.limited:
            return None
        user = principal.user
        try:
            elsewhere = await self.broker.user_connections_elsewhere(user)
        except ClientError as exc:  # the broker is down: what this instance knows
            log.debug("per-user limit: counting %r here only: %s", user, exc.message)
            elsewhere = 0
        held = self.users.get(user, {})
        total = len(held) + elsewhere
        if total < limit:
            return None
        excess = total - limit + 1
        if cfg.user_limit_policy == "refuse" or excess > len(held):
            self.stats.rejected["user_limit"] += 1
            audit(self.config.logging.audit_log, logging.WARNING,
                  "connection refused, user limit", addr=address, user=user,
                  held=total, limit=limit)  # fmt: skip
            where = f" ({elsewhere} on other instances)" if elsewhere else ""
            return Refusal(
                429,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"user {user!r} already holds {total} connections{where}, the most "
                f"allowed per user ({limit}); close one first",
            )
        for old in list(held.values())[:excess]:
            self.stats.user_limit_closes += 1
            audit(self.config.logging.audit_log, logging.WARNING,
                  "connection closed, user limit", addr=old.peer, user=principal.user,
                  client=old.id, limit=limit)  # fmt: skip
            old.close_soon(
                CloseCode.POLICY_VIOLATION,
                f"replaced by a newer connection of the same user (at most {limit} per user)",
            )
        return None

    def register(self, conn: Client) -> None:
        self.connections[conn.id] = conn
        if conn.principal.limited:
            held = self.users.setdefault(conn.principal.user, {})
            held[conn.id] = conn
            self.broker.set_user_connections(conn.principal.user, len(held))
        self.core.add(conn.sub)
        self.stats.connections_total += 1

    def unregister(self, conn: Client) -> None:
        """The connection is no longer open (its close began, or its socket
        went); idempotent."""
        if self.connections.pop(conn.id, None) is None:
            return
        held = self.users.get(conn.principal.user)
        if held is not None and held.pop(conn.id, None) is not None:
            if not held:
                del self.users[conn.principal.user]
            self.broker.set_user_connections(conn.principal.user, len(held))
        self.core.remove(conn.sub)
        self.hub.interest_changed()
        if conn.close_code is not None:
            self.stats.closes[conn.close_code] += 1

    def lingering(self, conn: Client) -> None:
        """Its close began: the socket stays until the client answers."""
        self.closing_connections.add(conn)

    def gone(self, conn: Client) -> None:
        """Its socket is closed."""
        self.unregister(conn)
        self.closing_connections.discard(conn)

    def _close_overflowed(self, subs: list[Subscriber]) -> None:
        for sub in subs:
            conn: Client | None = sub.owner
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
        accept_trouble = self.stats.accept_trouble(self.clock.time())
        if accept_trouble is not None:
            reasons.append(accept_trouble)
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
        try:
            SecurityPolicy.from_config(effective.security)  # a key file may be bad
        except ConfigError as exc:
            self.stats.reloads_failed += 1
            errors = [str(p) for p in exc.problems]
            log.error("config reload failed, keeping the running config: %s", "; ".join(errors))
            return ReloadResult(False, path, errors=errors)
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
        if config.security != old.security:
            self.policy = SecurityPolicy.from_config(config.security)
        self.config = config
        self.hub.configure(hub_settings(config))
        if config.logging.level != old.logging.level:
            set_level(config.logging.level)
        limit = config.websocket.send_buffer_limit
        if limit != old.websocket.send_buffer_limit:
            for conn in self.connections.values():
                conn.sub.limit = limit
        self.heartbeat.reschedule()

