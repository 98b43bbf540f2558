"""Connection, subscription and message-size limits, and bad framing."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Running, StartServer

from .conftest import RawConnect, WsConnect, get_json, new_id, slow_consumer, wait_until


def padded_ping(size: int) -> tuple[str, str]:
    """A valid ping message of exactly ``size`` bytes, and its id."""
    empty = orjson.dumps({"action": "ping", "id": ""})
    rid = "p" * (size - len(empty))
    text = orjson.dumps({"action": "ping", "id": rid}).decode()
    assert len(text.encode()) == size
    return text, rid


async def assert_others_work(running: Running, ws_client: WsConnect) -> None:
    other = await ws_client(running)
    await other.ping()


# --------------------------------------------------------------------------- connections


async def test_over_max_connections_gets_503_and_health_stays_200(
    running_server: StartServer, ws_client: WsConnect, http
) -> None:
    running = await running_server(websocket__max_connections=2)
    first = await ws_client(running)
    second = await ws_client(running)
    await first.ping()
    await second.ping()
    with pytest.raises(InvalidStatus) as info:
        await ws_client(running)
    assert info.value.response.status_code == 503
    body = orjson.loads(info.value.response.body)
    assert body["error"]["code"] == "max_connections"
    assert running.server.stats.rejected["max_connections"] == 1

    status, health = await get_json(http, running, "/health")
    assert status == 200
    assert health["status"] == "healthy"
    assert health["checks"]["connections"] == {
        "ok": False,
        "active": 2,
        "handshakes_in_progress": 0,
        "limit": 2,
    }

    # the two connected clients are unaffected
    await first.ping()
    await second.ping()

    # a slot frees up when a client leaves
    await first.close()
    await wait_until(lambda: len(running.server.connections) == 1, what="unregister")
    third = await ws_client(running)
    await third.ping()
    with pytest.raises(InvalidStatus) as info:
        await ws_client(running)
    assert info.value.response.status_code == 503


async def test_plain_http_get_on_ws_path_gets_426(running_server: StartServer, http) -> None:
    running = await running_server()
    async with http.get(running.ws_url) as resp:
        assert resp.status == 426
        assert resp.headers["Upgrade"] == "websocket"
        body = await resp.json()
    assert body["error"]["code"] == "upgrade_required"


@pytest.mark.parametrize("path", ["/ws/realtime", "/ws", "/"])
async def test_every_ws_path_upgrades(
    running_server: StartServer, ws_client: WsConnect, path: str
) -> None:
    running = await running_server()
    c = await ws_client(running, path)
    await c.ping()


# --------------------------------------------------------------------------- subscriptions


async def test_too_many_subscriptions_counts_one_per_key(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_subscriptions_per_client=3)
    c = await ws_client(running)
    await c.subscribe(["prices"], keys={"prices": ["A", "B", "C"]})
    assert running.server.core.subscription_count() == 3

    rid = new_id()
    reply = await c.request("subscribe", {"types": ["news"]}, id=rid)
    assert reply["type"] == "error" and reply["id"] == rid
    assert reply["payload"]["code"] == "too_many_subscriptions"

    rid = new_id()
    reply = await c.request(
        "subscribe", {"types": ["prices"], "keys": {"prices": ["A", "B", "C", "D"]}}, id=rid
    )
    assert reply["payload"]["code"] == "too_many_subscriptions"
    assert running.server.core.subscription_count() == 3

    # narrowing the type to one key frees two subscriptions
    ack = await c.subscribe(["prices"], keys={"prices": ["A"]})
    assert ack["payload"]["types"] == ["prices"]
    ack = await c.subscribe(["news", "alerts"])
    assert ack["payload"]["types"] == ["prices", "news", "alerts"]
    assert running.server.core.subscription_count() == 3
    reply = await c.request("subscribe", {"types": ["x"]})
    assert reply["payload"]["code"] == "too_many_subscriptions"
    # unsubscribing frees one again
    await c.request("unsubscribe", {"types": ["news"]})
    ack = await c.subscribe(["x"])
    assert ack["payload"]["types"] == ["prices", "alerts", "x"]
    await assert_others_work(running, ws_client)


async def test_limit_is_per_connection(running_server: StartServer, ws_client: WsConnect) -> None:
    running = await running_server(websocket__max_subscriptions_per_client=2)
    one = await ws_client(running)
    two = await ws_client(running)
    await one.subscribe(["a", "b"])
    ack = await two.subscribe(["a", "b"])
    assert ack["payload"]["types"] == ["a", "b"]
    assert running.server.core.subscription_count() == 4


# --------------------------------------------------------------------------- message size


@pytest.mark.parametrize("limit", [1000, 1024 * 1024])
async def test_message_of_exactly_the_limit_is_answered(
    running_server: StartServer, ws_client: WsConnect, limit: int
) -> None:
    settings = {} if limit == 1024 * 1024 else {"websocket__max_message_size": limit}
    running = await running_server(**settings)
    assert running.server.config.websocket.max_message_size == limit
    c = await ws_client(running, max_size=None)
    text, rid = padded_ping(limit)
    await c.send(text)
    reply = await c.recv(timeout=10)
    assert reply["type"] == "pong"
    assert reply["id"] == rid
    await c.ping()


@pytest.mark.parametrize("limit", [1000, 1024 * 1024])
async def test_message_one_byte_over_the_limit_closes_1009(
    running_server: StartServer, ws_client: WsConnect, limit: int
) -> None:
    settings = {} if limit == 1024 * 1024 else {"websocket__max_message_size": limit}
    running = await running_server(**settings)
    other = await ws_client(running)
    await other.subscribe(["t"])
    c = await ws_client(running, max_size=None)
    await c.ping()
    text, _ = padded_ping(limit + 1)
    await c.send(text)
    assert await c.close_code() == 1009
    await wait_until(lambda: len(running.server.connections) == 1, what="unregister")
    assert running.server.stats.closes[1009] == 1
    # the other client keeps working, and new ones can connect
    await other.ping()
    await assert_others_work(running, ws_client)


async def test_fragmented_message_counts_whole_size(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_message_size=1000)
    ok = await raw_client(running)
    text, rid = padded_ping(1000)
    raw = text.encode()
    ok.send_frame(raw[:600], 0x1, fin=False)
    ok.send_frame(raw[600:], 0x0, fin=True)
    reply = await ok.read_json()
    assert reply["type"] == "pong" and reply["id"] == rid

    big = await raw_client(running)
    text, _ = padded_ping(1001)
    raw = text.encode()
    big.send_frame(raw[:600], 0x1, fin=False)
    big.send_frame(raw[600:], 0x0, fin=True)
    code, _ = await big.read_close()
    assert code == 1009
    await assert_others_work(running, ws_client)


# --------------------------------------------------------------------------- bad framing


async def test_invalid_utf8_text_frame_closes_1007(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server()
    other = await ws_client(running)
    bad = await raw_client(running)
    bad.send_json({"action": "ping", "id": "before"})
    assert (await bad.read_json())["id"] == "before"
    bad.send_frame(b'{"action": "ping", "id": "\xff\xfe"}', 0x1)
    code, _ = await bad.read_close()
    assert code == 1007
    bad.send_close(1007)
    assert await bad.at_eof()
    await wait_until(lambda: len(running.server.connections) == 1, what="unregister")
    assert running.server.stats.closes[1007] == 1
    await other.ping()
    await assert_others_work(running, ws_client)


async def test_client_close_is_recorded_and_others_continue(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    one = await ws_client(running)
    two = await ws_client(running)
    await one.ping()
    await two.ping()
    await one.close()
    await wait_until(lambda: len(running.server.connections) == 1, what="unregister")
    assert running.server.stats.closes[1000] == 1
    await two.ping()
    with pytest.raises(ConnectionClosed):
        await one.ping()


async def test_slow_consumer_is_closed_and_others_keep_their_data(
    running_server: StartServer, raw_client: RawConnect, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__send_buffer_limit=256 * 1024)
    server = running.server
    fast = await ws_client(running, max_size=None)
    await fast.subscribe(["big"])
    slow = await raw_client(running)
    slow.send_json({"action": "subscribe", "payload": {"types": ["big"]}})
    assert (await slow.read_json())["type"] == "ack"
    # the slow client stops reading; the kernel buffers fill, then its send buffer
    blob = "x" * 50_000
    for n in range(1, 401):
        await server.publish("big", blob)
        msg = await fast.recv()
        assert msg["seq"] == n
        if server.stats.slow_consumer_closes:
            break
    assert server.stats.slow_consumer_closes == 1
    await wait_until(lambda: len(server.connections) == 1, what="unregister")
    assert server.stats.closes[1013] == 1
    assert await slow.at_eof(timeout=5)
    # the fast client keeps receiving
    pub = await server.publish("big", "after")
    msg = await fast.recv()
    assert (msg["seq"], msg["payload"]) == (pub.seq, "after")
    await fast.ping()


async def test_a_reply_that_passes_the_limit_closes_an_idle_slow_consumer(
    running_server: StartServer, raw_client: RawConnect
) -> None:
    # Nothing else happens on the server after the client's ping: its pong
    # alone passes the limit, and that must get the client closed with 1013.
    running = await running_server()
    server = running.server
    raw = await raw_client(running)
    conn = await slow_consumer(server, raw)
    seen = conn.messages_in
    raw.send_json({"action": "ping", "id": "p"})
    await wait_until(lambda: conn.messages_in > seen, what="the ping read")
    await asyncio.sleep(0.001)
    # closed by the flush of that loop iteration, not by some later timer
    assert conn.closing
    assert conn.id not in server.connections
    assert server.stats.slow_consumer_closes == 1
    code, _ = await raw.read_close(timeout=10)
    assert code == 1013
