"""The HTTP API: publishing, errors, authentication and the introspection routes."""

from __future__ import annotations

import aiohttp
import orjson
import psutil
import pytest

from aiosrv import __version__
from tests.conftest import StartServer

from .conftest import WsConnect, get_json, post_json, publish, wait_until


def assert_http_error(body: object, code: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --------------------------------------------------------------------------- publish


async def test_publish_single_and_list(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    assert await publish(http, running, {"type": "a", "payload": {"x": 1}}) == (202, {"seq": 1})
    assert await publish(http, running, {"type": "a", "payload": {"x": 2}, "key": "k"}) == (
        202,
        {"seq": 2},
    )
    body = [
        {"type": "b", "payload": 1},
        {"type": "a", "payload": 2},
        {"type": "b", "payload": 3, "key": "z"},
    ]
    assert await publish(http, running, body) == (202, {"seq": [1, 3, 2]})
    got = await c.recv_n(5)
    assert [(m["type"], m["seq"], m["payload"]) for m in got] == [
        ("a", 1, {"x": 1}),
        ("a", 2, {"x": 2}),
        ("b", 1, 1),
        ("a", 3, 2),
        ("b", 2, 3),
    ]
    assert got[1]["key"] == "k" and got[4]["key"] == "z"
    assert running.server.stats.published_http == 5


async def test_history_right_after_202_sees_the_message(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    for n in range(1, 21):
        assert await publish(http, running, {"type": "h", "payload": n}) == (202, {"seq": n})
        reply = await c.request("history", {"type": "h", "limit": 1})
        assert [m["seq"] for m in reply["payload"]["messages"]] == [n]
        assert reply["payload"]["messages"][0]["payload"] == n
        assert reply["payload"]["latest"] == n


async def test_history_right_after_202_in_process(running_server: StartServer) -> None:
    """The broker's history answers immediately after publish returns, before fan-out."""
    running = await running_server()
    pub = await running.server.publish("h", {"v": 1})
    page = await running.server.broker.history("h", 10)
    assert [p.seq for p in page.messages] == [pub.seq] == [1]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{nope", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"payload": {}}', "invalid_message"),
        (b'{"type": "", "payload": {}}', "invalid_message"),
        (b'{"type": 5, "payload": {}}', "invalid_message"),
        (b'{"type": "a"}', "invalid_message"),
        (b'{"type": "a", "payload": 1, "extra": 2}', "invalid_message"),
        (b'{"type": "a", "payload": 1, "key": 7}', "invalid_message"),
        (b'{"type": "error", "payload": {}}', "reserved_type"),
        (b"[1, 2]", "invalid_message"),
        (b"[]", "invalid_message"),
        (b'"a string"', "invalid_message"),
        (b"42", "invalid_message"),
        (b'[{"type": "a", "payload": 1}, {"type": "error", "payload": 2}]', "reserved_type"),
    ],
)
async def test_publish_bad_body_is_400(
    running_server: StartServer, http: aiohttp.ClientSession, raw: bytes, code: str
) -> None:
    running = await running_server()
    async with http.post(running.http("/api/publish"), data=raw) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        body = orjson.loads(await resp.read())
    assert_http_error(body, code)
    # nothing was published, not even the valid items of a refused list
    assert running.server.broker.latest_seq("a") == 0
    assert running.server.stats.errors[code] == 1


async def test_publish_too_many_items(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    status, body = await publish(http, running, [{"type": "a", "payload": i} for i in range(1001)])
    assert status == 400
    assert_http_error(body, "invalid_message")
    status, body = await publish(http, running, [{"type": "a", "payload": i} for i in range(1000)])
    assert status == 202 and body["seq"] == list(range(1, 1001))


async def test_publish_with_token(running_server: StartServer, http: aiohttp.ClientSession) -> None:
    running = await running_server(api__token="s3cret-token")
    msg = {"type": "a", "payload": 1}
    status, body = await publish(http, running, msg)
    assert status == 401
    assert_http_error(body, "unauthorized")
    for header in ("Bearer wrong", "Basic s3cret-token", "s3cret-token", "Bearer ", "Bearer"):
        status, body = await publish(http, running, msg, headers={"Authorization": header})
        assert status == 401, header
        assert_http_error(body, "unauthorized")
    assert running.server.broker.latest_seq("a") == 0
    status, body = await publish(
        http, running, msg, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert (status, body) == (202, {"seq": 1})
    status, body = await publish(
        http, running, msg, headers={"Authorization": "bearer s3cret-token"}
    )
    assert (status, body) == (202, {"seq": 2})

    # admin routes need it too; read-only routes do not
    status, body = await post_json(http, running, "/admin/gc")
    assert status == 401
    status, body = await get_json(http, running, "/admin/gc-stats")
    assert status == 401
    status, body = await post_json(http, running, "/admin/reload-config")
    assert status == 401
    status, _ = await post_json(
        http, running, "/admin/gc", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert status == 200
    for path in ("/health", "/status", "/stats", "/config", "/ws/stats", "/ws/queue"):
        status, _ = await get_json(http, running, path)
        assert status == 200, path


async def test_queue_full_is_503(running_server: StartServer, http: aiohttp.ClientSession) -> None:
    running = await running_server(broadcast__queue_limit=5)
    status, body = await publish(http, running, [{"type": "q", "payload": i} for i in range(6)])
    assert status == 503
    assert_http_error(body, "queue_full")
    assert running.server.broker.latest_seq("q") == 0
    assert running.server.hub.queue_rejected == 6
    # exactly the limit fits
    status, body = await publish(http, running, [{"type": "q", "payload": i} for i in range(5)])
    assert (status, body) == (202, {"seq": [1, 2, 3, 4, 5]})
    # and the queue drains: the next one is accepted
    assert await publish(http, running, {"type": "q", "payload": 6}) == (202, {"seq": 6})
    status, queue = await get_json(http, running, "/ws/queue")
    assert queue["depth"] == 0 and queue["limit"] == 5 and queue["rejected"] == 6
    assert queue["high_water"] == 5


async def test_queue_full_single_publish_in_process(running_server: StartServer) -> None:
    from aiosrv.errors import QueueFull

    running = await running_server(broadcast__queue_limit=3)
    for n in range(3):
        await running.server.publish("q", n)
    with pytest.raises(QueueFull):
        await running.server.publish("q", 4)


async def test_unknown_route_is_404(running_server: StartServer, http: aiohttp.ClientSession):
    running = await running_server()
    async with http.get(running.http("/nope")) as resp:
        assert resp.status == 404


# --------------------------------------------------------------------------- introspection


async def test_health(running_server: StartServer, http: aiohttp.ClientSession) -> None:
    running = await running_server(websocket__max_connections=7)
    status, body = await get_json(http, running, "/health")
    assert status == 200
    assert body["status"] == "healthy"
    assert body["reason"] is None
    assert body["checks"]["broker"] == {"ok": True, "engine": "memory", "reason": None}
    assert body["checks"]["queue"] == {"ok": True, "depth": 0, "limit": 10000}
    assert body["checks"]["connections"] == {
        "ok": True,
        "active": 0,
        "handshakes_in_progress": 0,
        "limit": 7,
    }
    assert body["checks"]["descriptors"]["ok"] is True
    assert body["checks"]["descriptors"]["accept_errors"] == 0
    assert body["checks"]["draining"] is False


async def test_status(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server(environment="staging")
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    status, body = await get_json(http, running, "/status")
    assert status == 200
    assert body["status"] == "running"
    assert body["version"] == __version__
    assert body["instance"] == running.server.instance_id
    assert body["environment"] == "staging"
    assert body["connections"] == 1
    assert body["subscriptions"] == 2
    assert body["broker"] == "memory"
    assert body["core"] in {"compiled", "pure-python"}
    assert body["healthy"] is True
    assert 0 <= body["uptime_seconds"] < 60


async def test_stats_counts_open_clients(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server()
    clients = [await ws_client(running) for _ in range(3)]
    for c in clients:
        await c.ping()
    await clients[0].subscribe(["x"])
    await clients[1].subscribe(["x", "y"], keys={"y": ["k1", "k2"]})
    await publish(http, running, [{"type": "x", "payload": 1}, {"type": "x", "payload": 2}])
    await clients[0].recv_n(2)
    await clients[1].recv_n(2)

    status, body = await get_json(http, running, "/stats")
    assert status == 200
    conns = body["connections"]
    assert conns["active_connections"] == 3
    assert conns["total_connections"] == 3
    assert conns["subscriptions"] == 4
    assert conns["subscriptions_by_type"] == {"x": 2, "y": 1}
    msgs = body["messages"]
    assert msgs["published_total"] == 2
    assert msgs["delivered_total"] == 4
    assert msgs["received_total"] == 3 + 2  # three pings, two subscribes
    queue = body["message_queue"]
    assert queue["depth"] == 0 and queue["limit"] == 10000 and queue["fanned_out"] == 2
    mem = body["memory"]
    rss = psutil.Process().memory_info().rss
    assert abs(mem["rss_bytes"] - rss) < rss * 0.25
    assert mem["rss_per_connection_bytes"] == mem["rss_bytes"] // 3
    assert body["broker"]["engine"] == "memory"
    assert body["broker"]["types"] == 1
    assert body["broker"]["history_messages"] == 2

    await clients[2].close()
    await wait_until(lambda: len(running.server.connections) == 2, what="unregister")
    status, body = await get_json(http, running, "/stats")
    assert body["connections"]["active_connections"] == 2
    assert body["connections"]["close_codes"] == {"1000": 1}


async def test_config_shows_heartbeat_and_redacts_token(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server(
        api__token="very-secret",
        websocket__heartbeat_interval=12.5,
        websocket__heartbeat_timeout=40,
    )
    status, body = await get_json(http, running, "/config")
    assert status == 200
    assert body["heartbeat"] == {"interval": 12.5, "timeout": 40.0}
    assert body["api"]["token"] == "***"
    assert "very-secret" not in orjson.dumps(body).decode()
    assert body["websocket"]["heartbeat_interval"] == 12.5
    assert body["websocket"]["max_message_size"] == 1048576
    assert body["sources"]["enabled"] is False
    assert body["source_path"] is None


async def test_config_token_unset_is_null(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    _, body = await get_json(http, running, "/config")
    assert body["api"]["token"] is None
    assert body["heartbeat"] == {"interval": 30.0, "timeout": 60.0}


async def test_ws_stats(
    running_server: StartServer, http: aiohttp.ClientSession, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_connections=50)
    a = await ws_client(running)
    b = await ws_client(running)
    await a.subscribe(["t"])
    await b.ping()
    status, body = await get_json(http, running, "/ws/stats")
    assert status == 200
    assert body["active_connections"] == 2
    assert body["max_connections"] == 50
    assert body["subscriptions"] == 1
    assert body["subscriptions_by_type"] == {"t": 1}
    assert body["closing"] == 0
    assert body["draining"] is False


async def test_ws_queue(running_server: StartServer, http: aiohttp.ClientSession) -> None:
    running = await running_server(broadcast__batch_size=25, broadcast__queue_limit=500)
    await publish(http, running, [{"type": "q", "payload": i} for i in range(60)])
    status, body = await get_json(http, running, "/ws/queue")
    assert status == 200
    assert body["depth"] == 0
    assert body["limit"] == 500
    assert body["batch_size"] == 25
    assert body["flush_interval"] == 0.05
    assert body["fanned_out"] == 60
    assert body["high_water"] == 60
    assert body["rejected"] == 0 and body["dropped"] == 0


async def test_admin_gc_and_gc_stats(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    status, body = await post_json(http, running, "/admin/gc")
    assert status == 200
    assert len(body["collected_by_generation"]) == 3
    assert body["collected"] == sum(body["collected_by_generation"])
    assert body["duration_ms"] >= 0
    assert body["rss_after_mb"] > 0
    assert body["gc"]["enabled"] is True
    assert len(body["gc"]["thresholds"]) == 3

    status, body = await get_json(http, running, "/admin/gc-stats")
    assert status == 200
    assert body["enabled"] is True
    assert len(body["counts"]) == 3
    assert len(body["generations"]) == 3
    assert body["objects"] > 1000
    rss_mb = psutil.Process().memory_info().rss / 1048576
    assert abs(body["rss_mb"] - rss_mb) < rss_mb * 0.25
    async with http.get(running.http("/admin/gc")) as resp:
        assert resp.status == 405
