"""Prometheus metrics, read from the server's state when scraped.

Nothing is observed on the hot path: a collector turns the counters of the
core, the hub and the server into metric families at scrape time. The four
unprefixed gauges are the names the operations guide's alert rules use
(``active_connections``, ``memory_usage_mb``, ``cpu_usage_percent``,
``error_rate``); everything else is ``aiosrv_*``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from .server import Server

__all__ = ["CONTENT_TYPE_LATEST", "make_registry", "render"]


class ServerCollector:
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server
        s.sampler.sample()
        core, hub, st = s.core, s.hub, s.stats

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("active_connections", "Open WebSocket connections.", len(s.connections))
        yield gauge(
            "memory_usage_mb", "Resident memory of the process in MiB.", s.sampler.rss / 1048576
        )
        yield gauge(
            "cpu_usage_percent",
            "CPU use of the process in percent of one core.",
            s.sampler.cpu_percent,
        )
        yield gauge("error_rate", "Error replies per client message, recent.", s.sampler.error_rate)

        yield gauge(
            "aiosrv_connections_limit",
            "Configured maximum connections.",
            s.config.websocket.max_connections,
        )
        yield counter("aiosrv_connections", "Connections accepted.", st.connections_total)
        rej = CounterMetricFamily(
            "aiosrv_connections_rejected", "Upgrades refused.", labels=["reason"]
        )
        for reason, n in sorted(st.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        refused = CounterMetricFamily(
            "aiosrv_handshake_refused",
            "Connections refused before aiohttp read a request (aiosrv.guard): request head "
            "or TLS handshake too slow (handshake_timeout), head too large "
            "(header_too_large), heads in progress at max_connections (max_connections), "
            "TLS errors (tls_failed).",
            labels=["reason"],
        )
        refusals = {"handshake_timeout": 0, "header_too_large": 0, "max_connections": 0}
        refusals.update(st.handshakes_refused)
        for reason, n in sorted(refusals.items()):
            refused.add_metric([reason], n)
        yield refused
        yield gauge(
            "aiosrv_handshakes_in_progress",
            "TLS handshakes and request heads being received (they count against "
            "the connection limit).",
            s.handshakes_in_progress(),
        )
        accept = CounterMetricFamily(
            "aiosrv_accept_errors",
            "accept() calls that failed for lack of file descriptors (EMFILE, ENFILE) "
            "or memory; each pauses accepting for a second.",
            labels=["errno"],
        )
        accept_errors = {"EMFILE": 0}
        accept_errors.update(st.accept_errors)
        for name, n in sorted(accept_errors.items()):
            accept.add_metric([name], n)
        yield accept
        security = CounterMetricFamily(
            "aiosrv_security_events",
            "Security events: connections closed for flooding (flood_close), for an "
            "expired token (token_expired), to make room for the same user (user_limit); "
            "messages refused by the rate limit (rate_limited_message).",
            labels=["event"],
        )
        for event, n in (
            ("flood_close", st.flood_closes),
            ("token_expired", st.token_expired_closes),
            ("user_limit", st.user_limit_closes),
            ("rate_limited_message", st.rate_limited_messages),
        ):
            security.add_metric([event], n)
        yield security
        closes = CounterMetricFamily(
            "aiosrv_disconnects", "Connections closed, by close code.", labels=["code"]
        )
        for close_code, count in sorted(st.closes.items()):
            closes.add_metric([str(close_code)], count)
        yield closes
        yield gauge(
            "aiosrv_subscriptions",
            "Subscriptions held by all connections.",
            core.subscription_count(),
        )
        yield counter(
            "aiosrv_messages_published", "Messages fanned out by this instance.", hub.fanned_out
        )
        yield counter("aiosrv_messages_delivered", "Frames queued to receivers.", core.delivered)
        yield counter(
            "aiosrv_client_messages", "Text messages received from clients.", st.messages_in
        )
        yield counter("aiosrv_socket_writes", "Writes handed to transports.", core.writes)
        yield counter("aiosrv_flushes", "Flushes of the fan-out core.", hub.flushes)
        pacer = hub.pacer
        yield counter(
            "aiosrv_paced_flushes", "Flushes that waited for the write share.", pacer.paced
        )
        yield counter(
            "aiosrv_write_seconds",
            "Seconds spent writing to subscribers (flushes and replies).",
            pacer.seconds_writing,
        )
        errors = CounterMetricFamily(
            "aiosrv_errors", "Error replies sent, by code.", labels=["code"]
        )
        for code, n in sorted(st.errors.items()):
            errors.add_metric([code], n)
        yield errors
        yield gauge(
            "aiosrv_broadcast_queue_depth", "Publications waiting for fan-out.", len(hub.queue)
        )
        yield gauge(
            "aiosrv_broadcast_queue_limit", "Broadcast queue limit.", hub.settings.queue_limit
        )
        yield counter(
            "aiosrv_broadcast_queue_rejected",
            "Local publishes refused, queue full.",
            hub.queue_rejected,
        )
        yield counter(
            "aiosrv_broadcast_queue_dropped",
            "Remote publications dropped, queue full.",
            hub.queue_dropped,
        )
        yield counter(
            "aiosrv_slow_consumer_disconnects",
            "Clients closed with 1013 as slow consumers.",
            st.slow_consumer_closes,
        )
        yield counter(
            "aiosrv_slow_consumer_dropped_bytes",
            "Bytes dropped with slow consumers.",
            core.dropped_bytes,
        )
        yield counter(
            "aiosrv_heartbeat_timeouts", "Clients closed with 4000.", st.heartbeat_timeouts
        )
        yield gauge(
            "aiosrv_send_buffer_bytes",
            "Bytes pending or buffered for clients.",
            core.buffered_bytes_total(),
        )
        yield gauge(
            "aiosrv_event_loop_lag_seconds", "Delay of the sources timer.", s.sampler.loop_lag
        )
        yield gauge("aiosrv_uptime_seconds", "Seconds since start.", s.uptime)
        reloads = CounterMetricFamily("aiosrv_config_reloads", "Config reloads.", labels=["result"])
        reloads.add_metric(["ok"], st.reloads_ok)
        reloads.add_metric(["failed"], st.reloads_failed)
        yield reloads
        yield gauge(
            "aiosrv_broker_in_flight", "Publishes waiting on the broker.", float(s.hub.in_flight)
        )
        b = s.broker.stats()
        yield gauge(
            "aiosrv_broker_up", "1 when the broker engine can publish.", float(s.broker.health().ok)
        )
        if "publish_rtt_ms" in b:  # engines with a network (redis)
            yield gauge(
                "aiosrv_broker_rtt_seconds",
                "Smoothed round trip of a publish to the broker.",
                b["publish_rtt_ms"] / 1000,
            )
            yield counter("aiosrv_broker_reconnects", "Broker reconnections.", b["reconnects"])
            yield counter("aiosrv_broker_errors", "Broker commands that failed.", b["errors"])
            yield counter(
                "aiosrv_broker_received",
                "Messages received from the broker (once per instance).",
                b["received"],
            )
            yield counter(
                "aiosrv_broker_gap_filled",
                "Messages caught up from the broker's history after a gap.",
                b["gaps_filled"],
            )
            yield counter(
                "aiosrv_broker_gap_lost",
                "Messages missed in a gap the history no longer held.",
                b["gaps_lost"],
            )
            yield counter(
                "aiosrv_broker_resets",
                "Times Redis lost its data (restarted empty, failover to a replica "
                "without it): numbering started again, recovering clients got "
                "recovered: false.",
                b["resets"],
            )
            yield gauge("aiosrv_broker_listened_types", "Types received.", b["listened_types"])
        health = 1.0 if s.health()[0] else 0.0
        yield gauge("aiosrv_healthy", "1 when /health answers 200.", health)
        info = GaugeMetricFamily(
            "aiosrv_info", "Build and engine.", labels=["version", "core", "broker", "instance"]
        )
        info.add_metric([s.version, s.implementation, s.broker.name, s.instance_id], 1)
        yield info


def make_registry(server: Server) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
