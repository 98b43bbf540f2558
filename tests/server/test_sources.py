"""The built-in ``status``, ``stats`` and ``health`` types carry the server's real state."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from aiosrv import __version__
from tests.conftest import StartServer

from .conftest import Client, WsConnect, get_json, publish, wait_until

FAST = {"sources__enabled": True, "sources__interval": 0.1}


async def next_matching(c: Client, type_: str, pred, timeout: float = 3.0) -> dict[str, Any]:
    """The first ``type_`` data message whose payload satisfies ``pred`` (others skipped)."""
    return (await all_matching(c, {type_: pred}, timeout))[type_]


async def all_matching(
    c: Client, preds: dict[str, Any], timeout: float = 3.0
) -> dict[str, dict[str, Any]]:
    """Read until, for every type, a data message satisfied its predicate."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    last: dict[str, Any] = {}
    while set(found) != set(preds):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching {set(preds) - set(found)}; last seen: {last}")
        try:
            msg = await c.recv(timeout=left)
        except asyncio.TimeoutError:
            continue
        t = msg["type"]
        last[t] = msg["payload"]
        if t in preds and t not in found and preds[t](msg["payload"]):
            found[t] = msg
    return found


async def test_stats_status_health_carry_real_values(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(**FAST)
    server = running.server
    others = [await ws_client(running) for _ in range(2)]
    for o in others:
        await o.ping()
    c = await ws_client(running)
    await c.subscribe(["stats", "status", "health"])
    # connecting and subscribing changed all three: each is published at the next tick
    got = await all_matching(
        c,
        {
            "stats": lambda s: s["connections"]["active_connections"] == 3,
            "status": lambda s: s["subscriptions"] == 3,
            "health": lambda s: s["checks"]["connections"]["active"] == 3,
        },
        timeout=1.0,
    )
    msg = got["stats"]
    p = msg["payload"]
    assert msg["id"] == f"stats:{msg['seq']}"
    assert p["connections"]["active_connections"] == 3
    assert p["connections"]["total_connections"] == 3
    assert p["connections"]["subscriptions_by_type"] == {"stats": 1, "status": 1, "health": 1}
    assert p["message_queue"]["limit"] == 10000
    assert p["memory"]["rss_bytes"] > 0
    assert p["memory"]["rss_per_connection_bytes"] == p["memory"]["rss_bytes"] // 3
    assert p["broker"]["engine"] == "memory"
    assert p["core"]["implementation"] == server.implementation
    assert set(p) >= {"timestamp", "uptime_seconds", "cpu_percent", "event_loop_lag_ms"}

    # the same document as GET /stats, which adds the cluster view
    status, doc = await get_json(http, running, "/stats")
    assert status == 200
    assert set(doc) == set(p) | {"cluster"}
    assert doc["cluster"]["count"] == 1  # the embedded broker: this instance alone
    assert doc["cluster"]["totals"]["connections"] == 3

    st = got["status"]["payload"]
    assert st["connections"] == 3
    assert st["status"] == "running"
    assert st["version"] == __version__
    assert st["instance"] == server.instance_id
    assert st["healthy"] is True
    h = got["health"]["payload"]
    assert h["status"] == "healthy"
    assert h["checks"]["queue"] == {"ok": True, "depth": 0, "limit": 10000}

    # a client leaves: the next stats and status say so
    await others[0].close()
    await all_matching(
        c,
        {
            "stats": lambda s: s["connections"]["active_connections"] == 2,
            "status": lambda s: s["connections"] == 2,
            "health": lambda s: s["checks"]["connections"]["active"] == 2,
        },
    )

    # published messages show up in the stats messages
    await publish(http, running, [{"type": "other", "payload": i} for i in range(5)])
    await next_matching(
        c, "stats", lambda s: s["messages"]["published_total"] >= 5 and s["broker"]["types"] == 4
    )


async def test_late_subscriber_gets_every_builtin_within_max_silence(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(**FAST, sources__max_silence=0.5)
    c = await ws_client(running)
    await c.ping()
    await c.subscribe(["status", "stats", "health"])
    seen: set[str] = set()
    while seen != {"status", "stats", "health"}:
        seen.add((await c.recv(timeout=2))["type"])


async def test_sources_disabled_publish_nothing(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(sources__enabled=False, sources__interval=0.1)
    c = await ws_client(running)
    await c.subscribe(["status", "stats", "health"])
    await c.expect_nothing(0.5)
    assert running.server.sources.published == 0


async def test_builtin_types_are_in_history(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(**FAST)
    await wait_until(lambda: running.server.stats.published_sources >= 3, what="3 sources")
    c = await ws_client(running)
    reply = await c.request("history", {"type": "health", "limit": 1})
    (msg,) = reply["payload"]["messages"]
    assert msg["type"] == "health"
    assert msg["payload"]["status"] == "healthy"
    assert running.server.stats.published_sources >= 3


async def test_a_new_subscriber_gets_an_unchanged_type_within_one_interval(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    # max_silence of an hour: without the new-subscriber rule nothing would come
    running = await running_server(**FAST, sources__max_silence=3600)
    watcher = await ws_client(running)
    await watcher.subscribe(["health"])
    await watcher.recv_type("health", timeout=2)
    client = await ws_client(running)  # connection counts settle with this one
    await watcher.recv_type("health", timeout=2)
    await watcher.expect_nothing(0.3)  # health is unchanged from here on
    # an existing connection subscribing later changes no value in health
    await client.subscribe(["health"])
    msg = await client.recv_type("health", timeout=2)  # max_silence is an hour
    assert msg["payload"]["status"] == "healthy"
    # and the unchanged value is not repeated once everyone has it
    await client.expect_nothing(0.5)
