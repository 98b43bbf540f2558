"""Counters and the snapshots built from them (``/stats``, ``/status``,
``/health``, the built-in sources and the metrics all read these).

Nothing here is invented: every number is read from the fan-out core, the hub,
the broker, the process (psutil) or a counter the server increments when the
event happens.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from .server import Server


class Rate:
    """Events per second between the last two samples of a running total,
    smoothed over a few samples so one quiet tick does not read as zero."""

    __slots__ = ("_last_t", "_last_total", "value")

    def __init__(self) -> None:
        self._last_total = 0
        self._last_t = 0.0
        self.value = 0.0

    def sample(self, total: int, now: float) -> float:
        if self._last_t:
            dt = now - self._last_t
            if dt > 0:
                inst = (total - self._last_total) / dt
                self.value = inst if self.value == 0 else 0.5 * self.value + 0.5 * inst
        self._last_total = total
        self._last_t = now
        return self.value


@dataclass
class Counters:
    connections_total: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages_in: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    slow_consumer_closes: int = 0
    heartbeat_timeouts: int = 0
    reloads_ok: int = 0
    reloads_failed: int = 0
    published_http: int = 0
    published_ws: int = 0
    published_sources: int = 0

    def count_error(self, code: str) -> None:
        self.errors[code] += 1


#: Shortest wall time a CPU reading is taken over: psutil counts CPU time in
#: clock ticks (10 ms), so over a few milliseconds one tick reads as hundreds
#: of percent.
CPU_MIN_INTERVAL = 0.25


class Sampler:
    """Process readings and rates, refreshed by :meth:`sample` (once a second
    by the sources task, and on demand by the HTTP API)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.process.cpu_percent(None)
        self._cpu_at = time.monotonic()
        self.published = Rate()
        self.delivered = Rate()
        self.received = Rate()
        self.errors = Rate()
        self.cpu_percent = 0.0
        self.rss = 0
        self.loop_lag = 0.0
        self._last = 0.0

    def sample(self, server: Server, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        self.published.sample(server.hub.fanned_out, now)
        self.delivered.sample(server.core.delivered, now)
        self.received.sample(server.stats.messages_in, now)
        self.errors.sample(sum(server.stats.errors.values()), now)
        if now - self._cpu_at >= CPU_MIN_INTERVAL:
            self.cpu_percent = self.process.cpu_percent(None)
            self._cpu_at = now
        self.rss = self.process.memory_info().rss

    @property
    def error_rate(self) -> float:
        """Errors per client message over the last samples (0 when idle)."""
        received = self.received.value
        return min(self.errors.value / received, 1.0) if received > 0 else 0.0


def connections_snapshot(server: Server) -> dict[str, Any]:
    core = server.core
    cfg = server.config.websocket
    return {
        "active_connections": len(server.connections),
        "max_connections": cfg.max_connections,
        "total_connections": server.stats.connections_total,
        "rejected": dict(server.stats.rejected),
        "subscriptions": core.subscription_count(),
        "subscriptions_by_type": core.type_counts(),
        "slow_consumer_closes": server.stats.slow_consumer_closes,
        "heartbeat_timeouts": server.stats.heartbeat_timeouts,
        "close_codes": {str(k): v for k, v in server.stats.closes.items()},
    }


def messages_snapshot(server: Server) -> dict[str, Any]:
    s = server.sampler
    return {
        "published_total": server.hub.fanned_out,
        "delivered_total": server.core.delivered,
        "received_total": server.stats.messages_in,
        "published_per_second": round(s.published.value, 1),
        "delivered_per_second": round(s.delivered.value, 1),
        "received_per_second": round(s.received.value, 1),
        "errors": dict(server.stats.errors),
        "error_rate": round(s.error_rate, 4),
        "writes_total": server.core.writes,
        "published_by_origin": {
            "http": server.stats.published_http,
            "websocket": server.stats.published_ws,
            "sources": server.stats.published_sources,
        },
        "heartbeat_pings_sent": server.heartbeat.pings_sent,
    }


def memory_snapshot(server: Server) -> dict[str, Any]:
    s = server.sampler
    core = server.core
    n = len(server.connections)
    return {
        "rss_mb": round(s.rss / 1048576, 1),
        "rss_bytes": s.rss,
        "pending_send_bytes": core.pending_bytes_total(),
        "buffered_send_bytes": core.buffered_bytes_total(),
        "rss_per_connection_bytes": (s.rss // n) if n else None,
        "gc_counts": list(gc.get_count()),
    }


def stats_snapshot(server: Server) -> dict[str, Any]:
    return {
        "timestamp": int(time.time() * 1000),
        "uptime_seconds": round(server.uptime, 1),
        "connections": connections_snapshot(server),
        "messages": messages_snapshot(server),
        "message_queue": server.hub.queue_stats(),
        "memory": memory_snapshot(server),
        "cpu_percent": round(server.sampler.cpu_percent, 1),
        "event_loop_lag_ms": round(server.sampler.loop_lag * 1000, 2),
        "broker": server.broker.stats(),
        "core": {"implementation": server.implementation},
    }


def status_snapshot(server: Server) -> dict[str, Any]:
    health_ok, _ = server.health()
    return {
        "status": "draining" if server.draining else ("running" if health_ok else "degraded"),
        "version": server.version,
        "instance": server.instance_id,
        "environment": server.config.environment,
        "uptime_seconds": round(server.uptime, 1),
        "connections": len(server.connections),
        "subscriptions": server.core.subscription_count(),
        "broker": server.broker.name,
        "core": server.implementation,
        "healthy": health_ok,
    }


def health_snapshot(server: Server) -> dict[str, Any]:
    ok, reasons = server.health()
    broker = server.broker.health()
    return {
        "status": "healthy" if ok else "unhealthy",
        "reason": "; ".join(reasons) if reasons else None,
        "checks": {
            "broker": {
                "ok": broker.ok,
                "engine": server.broker.name,
                "reason": broker.reason or None,
            },
            "queue": {
                "ok": len(server.hub.queue) < server.hub.settings.queue_limit,
                "depth": len(server.hub.queue),
                "limit": server.hub.settings.queue_limit,
            },
            "connections": {
                "ok": len(server.connections) < server.config.websocket.max_connections,
                "active": len(server.connections),
                "limit": server.config.websocket.max_connections,
            },
            "draining": server.draining,
        },
    }
