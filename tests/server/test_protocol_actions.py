"""Every action and error of the wire contract, and the data messages, over real sockets."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import StartServer

from .conftest import WsConnect, new_id, now_ms, publish


def assert_reply_shape(msg: dict[str, Any], kind: str, rid: str | None) -> None:
    assert set(msg) == {"type", "id", "timestamp", "payload"}, msg
    assert msg["type"] == kind
    assert msg["id"] == rid
    assert type(msg["timestamp"]) is int
    assert abs(msg["timestamp"] - now_ms()) < 10_000


def assert_error(msg: dict[str, Any], code: str, rid: str | None) -> None:
    assert_reply_shape(msg, "error", rid)
    assert set(msg["payload"]) == {"code", "message"}
    assert msg["payload"]["code"] == code
    assert isinstance(msg["payload"]["message"], str) and msg["payload"]["message"]


def data_message(msg: dict[str, Any], type_: str, seq: int, payload: Any, key: str | None = None):
    """Check one data message exactly."""
    expected_keys = {"id", "type", "timestamp", "seq", "payload"} | ({"key"} if key else set())
    assert set(msg) == expected_keys, msg
    assert msg["id"] == f"{type_}:{seq}"
    assert msg["type"] == type_
    assert msg["seq"] == seq
    assert type(msg["timestamp"]) is int and abs(msg["timestamp"] - now_ms()) < 10_000
    assert msg["payload"] == payload
    if key:
        assert msg["key"] == key


# --------------------------------------------------------------------------- subscribe


async def test_subscribe_ack_lists_all_current_types(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    rid = new_id()
    ack = await c.request("subscribe", {"types": ["prices", "news"]}, id=rid)
    assert_reply_shape(ack, "ack", rid)
    assert ack["payload"] == {"action": "subscribe", "types": ["prices", "news"]}

    rid2 = new_id()
    ack = await c.request("subscribe", {"types": ["alerts", "prices"]}, id=rid2)
    assert_reply_shape(ack, "ack", rid2)
    assert ack["payload"] == {"action": "subscribe", "types": ["prices", "news", "alerts"]}
    assert running.server.core.subscription_count() == 3


async def test_reply_without_id_echoes_null(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.send({"action": "ping"})
    assert_reply_shape(await c.recv(), "pong", None)
    await c.send({"action": "subscribe", "payload": {"types": ["a"]}})
    ack = await c.recv()
    assert_reply_shape(ack, "ack", None)
    assert ack["payload"]["types"] == ["a"]


async def test_browser_console_snippet_gets_ack_then_live_builtin_data(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(sources__enabled=True, sources__interval=0.1)
    c = await ws_client(running)
    rid = new_id()
    await c.send(
        {
            "id": rid,
            "type": "config",
            "timestamp": now_ms(),
            "action": "subscribe",
            "payload": {"types": ["status", "stats", "health"]},
        }
    )
    ack = await c.recv()
    assert_reply_shape(ack, "ack", rid)
    assert ack["payload"] == {"action": "subscribe", "types": ["status", "stats", "health"]}

    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 3.0
    while len(seen) < 3 and time.monotonic() < deadline:
        msg = await c.recv()
        assert msg["type"] in {"status", "stats", "health"}, msg
        assert msg["id"] == f"{msg['type']}:{msg['seq']}"
        seen.setdefault(msg["type"], msg)
    assert set(seen) == {"status", "stats", "health"}
    assert seen["status"]["payload"]["status"] == "running"
    assert seen["status"]["payload"]["connections"] == 1
    assert seen["stats"]["payload"]["connections"]["active_connections"] == 1
    assert seen["health"]["payload"]["status"] == "healthy"


async def test_unsubscribe_acks_remaining_types_and_stops_delivery(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["a", "b", "c"])
    rid = new_id()
    ack = await c.request("unsubscribe", {"types": ["b", "not-subscribed"]}, id=rid)
    assert_reply_shape(ack, "ack", rid)
    assert ack["payload"] == {"action": "unsubscribe", "types": ["a", "c"]}

    assert await publish(http, running, {"type": "b", "payload": 1}) == (202, {"seq": 1})
    assert await publish(http, running, {"type": "a", "payload": 2}) == (202, {"seq": 1})
    data_message(await c.recv(), "a", 1, 2)
    await c.expect_nothing(0.2)


async def test_ping_pong(running_server: StartServer, ws_client: WsConnect) -> None:
    running = await running_server()
    c = await ws_client(running)
    rid = new_id()
    pong = await c.request("ping", id=rid)
    assert_reply_shape(pong, "pong", rid)
    assert pong["payload"] == {}


# --------------------------------------------------------------------------- history


async def test_history_newest_limit_oldest_first(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    status, body = await publish(http, running, [{"type": "h", "payload": i} for i in range(1, 11)])
    assert (status, body) == (202, {"seq": list(range(1, 11))})
    c = await ws_client(running)

    rid = new_id()
    reply = await c.request("history", {"type": "h", "limit": 3}, id=rid)
    assert_reply_shape(reply, "history", rid)
    p = reply["payload"]
    assert p["type"] == "h"
    assert p["limit"] == 3
    assert p["latest"] == 10 and p["oldest"] == 1
    assert [m["seq"] for m in p["messages"]] == [8, 9, 10]
    for m, seq in zip(p["messages"], [8, 9, 10], strict=True):
        data_message(m, "h", seq, seq)

    # without limit: everything kept (up to the history size)
    reply = await c.request("history", {"type": "h"})
    assert [m["seq"] for m in reply["payload"]["messages"]] == list(range(1, 11))
    assert reply["payload"]["limit"] == 50

    # an unknown type: empty
    reply = await c.request("history", {"type": "nothing-here", "limit": 5})
    assert reply["payload"]["messages"] == []
    assert reply["payload"]["latest"] == 0


async def test_history_since_gives_first_limit_after_since(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    await publish(http, running, [{"type": "h", "payload": i} for i in range(1, 11)])
    c = await ws_client(running)
    reply = await c.request("history", {"type": "h", "since": 4, "limit": 3})
    assert [m["seq"] for m in reply["payload"]["messages"]] == [5, 6, 7]
    reply = await c.request("history", {"type": "h", "since": 8, "limit": 5})
    assert [m["payload"] for m in reply["payload"]["messages"]] == [9, 10]
    reply = await c.request("history", {"type": "h", "since": 10})
    assert reply["payload"]["messages"] == []


async def test_history_limit_is_capped_at_history_size(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(history__size=5)
    await publish(http, running, [{"type": "h", "payload": i} for i in range(1, 9)])
    c = await ws_client(running)
    reply = await c.request("history", {"type": "h", "limit": 1000})
    assert reply["payload"]["limit"] == 5
    assert reply["payload"]["oldest"] == 4
    assert [m["seq"] for m in reply["payload"]["messages"]] == [4, 5, 6, 7, 8]


# --------------------------------------------------------------------------- publish


async def test_ws_publish_forbidden_by_default(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    rid = new_id()
    reply = await c.request("publish", {"type": "x", "payload": {"a": 1}}, id=rid)
    assert_error(reply, "publish_forbidden", rid)
    assert running.server.hub.fanned_out == 0
    await c.ping()


async def test_ws_publish_allowed(running_server: StartServer, ws_client: WsConnect) -> None:
    running = await running_server(websocket__allow_client_publish=True)
    publisher = await ws_client(running)
    reader = await ws_client(running)
    await reader.subscribe(["x"])
    rid = new_id()
    ack = await publisher.request("publish", {"type": "x", "payload": {"a": 1}}, id=rid)
    assert_reply_shape(ack, "ack", rid)
    assert ack["payload"] == {"action": "publish", "type": "x", "seq": 1}
    ack = await publisher.request("publish", {"type": "x", "payload": [2], "key": "k"})
    assert ack["payload"]["seq"] == 2
    assert running.server.stats.published_ws == 2
    data_message(await reader.recv(), "x", 1, {"a": 1})
    data_message(await reader.recv(), "x", 2, [2], key="k")
    # the publisher is not subscribed: it gets nothing more than its acks
    await publisher.expect_nothing(0.2)
    # a reserved type is refused on publish too
    rid = new_id()
    reply = await publisher.request("publish", {"type": "error", "payload": 1}, id=rid)
    assert_error(reply, "reserved_type", rid)


# --------------------------------------------------------------------------- errors


def frame(action: Any = None, payload: Any = None, **extra: Any) -> str:
    """A client frame with id "ID"."""
    msg: dict[str, Any] = {"id": "ID", **extra}
    if action is not None:
        msg["action"] = action
    if payload is not None:
        msg["payload"] = payload
    return orjson.dumps(msg).decode()


@pytest.mark.parametrize(
    ("text", "code", "echo"),
    [
        ("{not json", "invalid_json", False),
        ("", "invalid_json", False),
        ("[1, 2]", "invalid_message", False),
        ('{"id": 5, "action": "ping"}', "invalid_message", False),
        (frame(payload={}), "invalid_message", True),
        (frame(5), "invalid_message", True),
        (frame("subscribe", []), "invalid_message", True),
        (frame("subscribe", {"types": []}), "invalid_message", True),
        (frame("subscribe", {"types": [""]}), "invalid_message", True),
        (frame("subscribe", {"types": ["a"], "keys": {"b": ["k"]}}), "invalid_message", True),
        (frame("subscribe", {"types": ["a"], "since": {"a": -1}}), "invalid_message", True),
        (frame("history", {"type": "a", "limit": 0}), "invalid_message", True),
        (frame("history", {}), "invalid_message", True),
        (frame("dance"), "unknown_action", True),
        (frame("subscribe", {"types": ["error"]}), "reserved_type", True),
        (frame("subscribe", {"types": ["a", "error"]}), "reserved_type", True),
        (frame("unsubscribe", {"types": ["error"]}), "reserved_type", True),
        (frame("history", {"type": "error"}), "reserved_type", True),
    ],
)
async def test_error_codes_and_connection_survives(
    running_server: StartServer, ws_client: WsConnect, text: str, code: str, echo: bool
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.send(text)
    assert_error(await c.recv(), code, "ID" if echo else None)
    # the connection stays open and keeps working
    await c.ping()
    assert running.server.stats.errors[code] == 1
    assert len(running.server.connections) == 1
    # nothing was subscribed by a refused request
    assert running.server.core.subscription_count() == 0


async def test_binary_frame_is_invalid_message(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.send(orjson.dumps({"action": "ping"}))  # bytes: a binary frame
    assert_error(await c.recv(), "invalid_message", None)
    await c.ping()


async def test_too_many_subscriptions_error(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__max_subscriptions_per_client=3)
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    rid = new_id()
    reply = await c.request("subscribe", {"types": ["c", "d"]}, id=rid)
    assert_error(reply, "too_many_subscriptions", rid)
    # nothing of the refused request was applied
    ack = await c.subscribe(["c"])
    assert ack["payload"]["types"] == ["a", "b", "c"]
    await c.ping()


async def test_several_errors_in_a_row_then_normal_use(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    for bad in ("nope", "{}", '{"action": "x"}', '{"action": "subscribe"}'):
        await c.send(bad)
    codes = [m["payload"]["code"] for m in await c.recv_n(4)]
    assert codes == ["invalid_json", "invalid_message", "unknown_action", "invalid_message"]
    await c.subscribe(["t"])
    await publish(http, running, {"type": "t", "payload": "ok"})
    data_message(await c.recv(), "t", 1, "ok")


# --------------------------------------------------------------------------- data messages


async def test_data_message_shape_and_seq_per_type(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    items = [
        {"type": "a", "payload": {"n": 1}},
        {"type": "b", "payload": {"n": 2}},
        {"type": "a", "payload": {"n": 3}, "key": "k1"},
        {"type": "a", "payload": None},
        {"type": "b", "payload": "text"},
    ]
    assert await publish(http, running, items) == (202, {"seq": [1, 1, 2, 3, 2]})
    msgs = await c.recv_n(5)
    data_message(msgs[0], "a", 1, {"n": 1})
    data_message(msgs[1], "b", 1, {"n": 2})
    data_message(msgs[2], "a", 2, {"n": 3}, key="k1")
    data_message(msgs[3], "a", 3, None)
    data_message(msgs[4], "b", 2, "text")
    assert "key" not in msgs[0]


async def test_subscriber_gets_only_its_types(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    one = await ws_client(running)
    two = await ws_client(running)
    await one.subscribe(["a"])
    await two.subscribe(["b", "c"])
    for t in ("a", "b", "c", "d", "a", "c"):
        await publish(http, running, {"type": t, "payload": t})
    got_one = await one.recv_n(2)
    got_two = await two.recv_n(3)
    assert [(m["type"], m["seq"]) for m in got_one] == [("a", 1), ("a", 2)]
    assert [(m["type"], m["seq"]) for m in got_two] == [("b", 1), ("c", 1), ("c", 2)]
    await one.expect_nothing(0.15)
    await two.expect_nothing(0.05)


async def test_keys_narrow_a_type(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    narrow = await ws_client(running)
    wide = await ws_client(running)
    ack = await narrow.subscribe(["prices"], keys={"prices": ["BTC", "ETH"]})
    assert ack["payload"]["types"] == ["prices"]
    await wide.subscribe(["prices"])
    items = [
        {"type": "prices", "payload": 1, "key": "BTC"},
        {"type": "prices", "payload": 2, "key": "DOGE"},
        {"type": "prices", "payload": 3},
        {"type": "prices", "payload": 4, "key": "ETH"},
    ]
    assert await publish(http, running, items) == (202, {"seq": [1, 2, 3, 4]})
    got = await narrow.recv_n(2)
    data_message(got[0], "prices", 1, 1, key="BTC")
    data_message(got[1], "prices", 4, 4, key="ETH")
    assert [m["seq"] for m in await wide.recv_n(4)] == [1, 2, 3, 4]
    await narrow.expect_nothing(0.2)


async def test_resubscribe_without_keys_widens(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["p"], keys={"p": ["A"]})
    await c.subscribe(["p"])
    assert running.server.core.subscription_count() == 1
    await publish(
        http, running, [{"type": "p", "payload": 1, "key": "B"}, {"type": "p", "payload": 2}]
    )
    assert [m["seq"] for m in await c.recv_n(2)] == [1, 2]


async def test_publish_order_preserved_within_a_type(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    await c.subscribe(["o"])
    n = 0
    for batch in range(5):
        items = [{"type": "o", "payload": batch * 100 + i} for i in range(60)]
        status, body = await publish(http, running, items)
        assert status == 202
        assert body["seq"] == list(range(n + 1, n + 61))
        n += 60
    for i in range(20):  # single publishes interleaved too
        assert await publish(http, running, {"type": "o", "payload": 10_000 + i}) == (
            202,
            {"seq": n + 1 + i},
        )
    msgs = await c.recv_n(n + 20)
    assert [m["seq"] for m in msgs] == list(range(1, n + 21))
    expected = [b * 100 + i for b in range(5) for i in range(60)] + [10_000 + i for i in range(20)]
    assert [m["payload"] for m in msgs] == expected


async def test_replies_and_data_keep_order_on_one_connection(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    running = await running_server(websocket__allow_client_publish=True)
    c = await ws_client(running)
    await c.subscribe(["self"])
    ack = await c.request("publish", {"type": "self", "payload": "me"})
    # the ack was queued before the publication was fanned out
    assert ack["type"] == "ack" and ack["payload"]["seq"] == 1
    data_message(await c.recv(), "self", 1, "me")
