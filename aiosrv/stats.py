"""The snapshots built from the counters (``/stats``, ``/status``,
``/health``, the built-in sources and the metrics all read these).

Nothing here is invented: every number is read from the fan-out core, the hub,
the broker, the process (psutil) or a counter the server increments when the
event happens.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from . import identity

if TYPE_CHECKING:
    from .server import Server


def connections_snapshot(server: Server) -> dict[str, Any]:
    core = server.core
    cfg = server.config.websocket
    return {
        "active_connections": len(server.connections),
        "max_connections": cfg.max_connections,
        "total_connections": server.stats.connections_total,
        "rejected": dict(server.stats.rejected),
        "handshakes_in_progress": server.handshakes_in_progress(),
        "handshakes_refused": dict(server.stats.handshakes_refused),
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
        "descriptors": descriptors_snapshot(server),
        "broker": server.broker.stats(),
        "core": {"implementation": server.implementation},
        "worker": identity.current().snapshot(),
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
        "worker": identity.current().snapshot(),
    }


def descriptor_usage() -> tuple[int | None, int | None]:
    """(descriptors open, soft RLIMIT_NOFILE) of this process; either None
    when it cannot be read (counting needs a free descriptor itself) or there
    is no limit. Counting lists /proc/self/fd: 10 ms at 10,000 descriptors."""
    try:
        soft: int | None = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = None
    except (OSError, ValueError):
        soft = None
    try:
        with os.scandir("/proc/self/fd") as it:
            n: int | None = sum(1 for _ in it) - 1  # minus the listing's own
    except OSError:
        n = None
    return n, soft


#: How long a descriptor count is reused by the snapshots (it costs 1 µs per
#: descriptor open).
DESCRIPTORS_MAX_AGE = 5.0
_descriptors: list[Any] = [-DESCRIPTORS_MAX_AGE, (None, None)]


def descriptors_snapshot(server: Server) -> dict[str, Any]:
    """Descriptors in use against the soft limit, and failed accepts (the
    listeners ran out of descriptors: /health is degraded for a while)."""
    now = time.monotonic()
    if now - _descriptors[0] >= DESCRIPTORS_MAX_AGE or _descriptors[1][0] is None:
        _descriptors[:] = [now, descriptor_usage()]
    used, soft = _descriptors[1]
    st = server.stats
    at = st.accept_error_at
    clock_now = server.clock.time()
    return {
        "ok": st.accept_trouble(clock_now) is None,
        "open": used,
        "limit": soft,
        "headroom": soft - used if used is not None and soft is not None else None,
        "accept_errors": sum(st.accept_errors.values()),
        "last_accept_error_seconds_ago": round(clock_now - at, 1) if at is not None else None,
        "last_accept_error": st.accept_error_text or None,
    }


def health_snapshot(server: Server) -> dict[str, Any]:
    ok, reasons = server.health()
    broker = server.broker.health()
    return {
        # draining: going away; degraded: serving its clients, but the broker
        # or the queue refuses new work (both answer 503)
        "status": "healthy" if ok else ("unhealthy" if server.draining else "degraded"),
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
                "ok": len(server.connections) + server.handshakes_in_progress()
                < server.config.websocket.max_connections,
                "active": len(server.connections),
                "handshakes_in_progress": server.handshakes_in_progress(),
                "limit": server.config.websocket.max_connections,
            },
            "descriptors": descriptors_snapshot(server),
            "draining": server.draining,
        },
    }


def source_snapshots(server: Server) -> dict[str, Callable[[], dict[str, Any]]]:
    """The built-in sources' types and what each publishes."""
    return {
        "status": partial(status_snapshot, server),
        "stats": partial(stats_snapshot, server),
        "health": partial(health_snapshot, server),
    }
