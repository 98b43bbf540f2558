"""``/metrics``: the Prometheus text format, with values that match what happened."""

from __future__ import annotations

import time

import aiohttp
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from aiosrv import __version__
from tests.conftest import JumpClock, Running, StartServer

from .conftest import WsConnect, publish, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, running: Running) -> Samples:
    async with http.get(running.http("/metrics")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_match_reality(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_connections=3)
    m = await scrape(http, running)
    assert value(m, "active_connections") == 0
    assert value(m, "aiosrv_messages_published_total") == 0
    assert value(m, "aiosrv_connections_limit") == 3

    a = await ws_client(running)
    b = await ws_client(running)
    await a.subscribe(["t"])
    await b.subscribe(["t", "u"])
    await a.send("not json")
    assert (await a.recv())["payload"]["code"] == "invalid_json"
    await publish(http, running, [{"type": "t", "payload": i} for i in range(3)])
    await publish(http, running, {"type": "u", "payload": 0})
    await a.recv_n(3)
    await b.recv_n(4)

    m = await scrape(http, running)
    assert value(m, "active_connections") == 2
    assert value(m, "aiosrv_connections_total") == 2
    assert value(m, "aiosrv_subscriptions") == 3
    assert value(m, "aiosrv_messages_published_total") == 4
    assert value(m, "aiosrv_messages_delivered_total") == 7
    assert value(m, "aiosrv_client_messages_total") == 3
    assert value(m, "aiosrv_errors_total", code="invalid_json") == 1
    assert value(m, "aiosrv_broadcast_queue_depth") == 0
    assert value(m, "aiosrv_broadcast_queue_limit") == 10000
    assert value(m, "aiosrv_broadcast_queue_rejected_total") == 0
    assert value(m, "aiosrv_heartbeat_timeouts_total") == 0
    assert value(m, "aiosrv_slow_consumer_disconnects_total") == 0
    assert value(m, "aiosrv_healthy") == 1
    assert value(m, "aiosrv_config_reloads_total", result="ok") == 0
    assert value(m, "aiosrv_config_reloads_total", result="failed") == 0
    server = running.server
    assert (
        value(
            m,
            "aiosrv_info",
            version=__version__,
            core=server.implementation,
            broker="memory",
            instance=server.instance_id,
        )
        == 1
    )
    assert value(m, "aiosrv_socket_writes_total") == server.core.writes
    # the flush pacing: what writing took, the share it may take now
    assert value(m, "aiosrv_flushes_total") == server.hub.flushes > 0
    assert value(m, "aiosrv_paced_flushes_total") == server.hub.pacer.paced
    assert value(m, "aiosrv_write_seconds_total") == server.hub.pacer.seconds_writing > 0
    rss_mb = psutil.Process().memory_info().rss / 1048576
    assert value(m, "memory_usage_mb") == pytest.approx(rss_mb, rel=0.25)
    assert 0 <= value(m, "cpu_usage_percent") <= 100 * (psutil.cpu_count() or 1)
    assert value(m, "error_rate") >= 0
    assert value(m, "aiosrv_uptime_seconds") < 60
    # the process collector is there too
    assert value(m, "process_resident_memory_bytes") == pytest.approx(rss_mb * 1048576, rel=0.25)

    # a refused upgrade and a close are counted
    await ws_client(running)
    with pytest.raises(InvalidStatus):
        await ws_client(running)
    await a.close()
    await wait_until(lambda: len(server.connections) == 2, what="unregister")
    m = await scrape(http, running)
    assert value(m, "active_connections") == 2
    assert value(m, "aiosrv_connections_total") == 3
    assert value(m, "aiosrv_connections_rejected_total", reason="max_connections") == 1
    assert value(m, "aiosrv_disconnects_total", code="1000") == 1
    assert value(m, "aiosrv_subscriptions") == 2


async def test_error_rate_is_errors_per_client_message(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    # the sources timer samples too; keep it out of the way
    clock = JumpClock()
    running = await running_server(clock, sources__interval=60)
    c = await ws_client(running)
    m = await scrape(http, running)  # the first sample: the baseline
    assert value(m, "error_rate") == 0
    for bad in ("x", '{"action": "nope"}'):
        await c.send(bad)
        assert (await c.recv())["type"] == "error"
    await c.ping()
    await c.ping()
    clock.jump(0.6)  # the sampler refreshes at most twice a second
    m = await scrape(http, running)
    assert value(m, "error_rate") == pytest.approx(0.5)
    assert value(m, "aiosrv_errors_total", code="invalid_json") == 1
    assert value(m, "aiosrv_errors_total", code="unknown_action") == 1
    async with http.get(running.http("/stats")) as resp:
        stats = await resp.json()
    assert stats["messages"]["error_rate"] == 0.5
    assert stats["messages"]["errors"] == {"invalid_json": 1, "unknown_action": 1}


async def test_queue_rejections_are_counted(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server(broadcast__queue_limit=2)
    status, _ = await publish(http, running, [{"type": "q", "payload": i} for i in range(3)])
    assert status == 503
    m = await scrape(http, running)
    assert value(m, "aiosrv_broadcast_queue_rejected_total") == 3
    assert value(m, "aiosrv_errors_total", code="queue_full") == 1
    assert value(m, "aiosrv_messages_published_total") == 0


async def test_cpu_usage_stays_within_what_the_machine_has(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Samples taken milliseconds apart (the sources timer, /admin/gc) must not
    read one clock tick of CPU time as hundreds of percent."""
    running = await running_server(sources__interval=60)
    server = running.server
    ceiling = 100 * (psutil.cpu_count() or 1)
    readings = []
    for _ in range(300):  # 0.6 s of busy work, sampled every 2 ms
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:
            pass
        server.sampler.sample(force=True)
        readings.append(server.sampler.cpu_percent)
    assert max(readings) <= ceiling, max(readings)
    assert max(readings) > 0  # the busy loop was seen
    m = await scrape(http, running)
    assert 0 <= value(m, "cpu_usage_percent") <= ceiling
