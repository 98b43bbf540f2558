"""Recovery with ``since``: the missed messages, then live ones, nothing twice, no gap."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import StartServer

from .conftest import WsConnect, new_id, publish


async def publish_n(http: aiohttp.ClientSession, running, type_: str, first: int, last: int):
    items = [{"type": type_, "payload": {"n": n}} for n in range(first, last + 1)]
    status, body = await publish(http, running, items)
    assert (status, body) == (202, {"seq": list(range(first, last + 1))})


async def test_since_recovers_exactly_the_missed_then_live(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    await publish_n(http, running, "t", 1, 10)
    c = await ws_client(running)
    rid = new_id()
    ack = await c.request("subscribe", {"types": ["t"], "since": {"t": 4}}, id=rid)
    assert ack["type"] == "ack" and ack["id"] == rid
    assert ack["payload"] == {"action": "subscribe", "types": ["t"], "recovered": {"t": True}}
    missed = await c.recv_n(6)
    assert [m["seq"] for m in missed] == [5, 6, 7, 8, 9, 10]
    assert [m["payload"] for m in missed] == [{"n": n} for n in range(5, 11)]
    assert all(m["id"] == f"t:{m['seq']}" for m in missed)

    for n in (11, 12, 13):
        assert await publish(http, running, {"type": "t", "payload": {"n": n}}) == (
            202,
            {"seq": n},
        )
    live = await c.recv_n(3)
    assert [m["seq"] for m in live] == [11, 12, 13]
    await c.expect_nothing(0.2)


async def test_since_older_than_history_is_not_recovered(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(history__size=5)
    await publish_n(http, running, "t", 1, 12)
    c = await ws_client(running)
    ack = await c.subscribe(["t"], since={"t": 3})
    assert ack["payload"]["recovered"] == {"t": False}
    got = await c.recv_n(5)
    assert [m["seq"] for m in got] == [8, 9, 10, 11, 12]
    await publish_n(http, running, "t", 13, 13)
    assert (await c.recv())["seq"] == 13
    await c.expect_nothing(0.2)


async def test_since_just_inside_history_is_recovered(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(history__size=5)
    await publish_n(http, running, "t", 1, 12)
    c = await ws_client(running)
    ack = await c.subscribe(["t"], since={"t": 7})  # 8..12 are all kept
    assert ack["payload"]["recovered"] == {"t": True}
    assert [m["seq"] for m in await c.recv_n(5)] == [8, 9, 10, 11, 12]
    await c.expect_nothing(0.2)


async def test_since_latest_recovers_nothing(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    await publish_n(http, running, "t", 1, 7)
    c = await ws_client(running)
    ack = await c.subscribe(["t"], since={"t": 7})
    assert ack["payload"]["recovered"] == {"t": True}
    await c.expect_nothing(0.2)
    await publish_n(http, running, "t", 8, 9)
    assert [m["seq"] for m in await c.recv_n(2)] == [8, 9]


async def test_since_zero_on_a_new_type(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    c = await ws_client(running)
    ack = await c.subscribe(["fresh"], since={"fresh": 0})
    assert ack["payload"]["recovered"] == {"fresh": True}
    await c.expect_nothing(0.1)
    await publish_n(http, running, "fresh", 1, 1)
    assert (await c.recv())["seq"] == 1


async def test_since_ahead_of_latest_is_not_recovered(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    await publish_n(http, running, "t", 1, 3)
    c = await ws_client(running)
    ack = await c.subscribe(["t"], since={"t": 50})
    assert ack["payload"]["recovered"] == {"t": False}
    await c.expect_nothing(0.1)
    await publish_n(http, running, "t", 4, 4)
    assert (await c.recv())["seq"] == 4


async def test_since_for_several_types_and_only_some(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    await publish_n(http, running, "a", 1, 3)
    await publish_n(http, running, "b", 1, 2)
    await publish_n(http, running, "c", 1, 2)
    c = await ws_client(running)
    ack = await c.subscribe(["a", "b", "c"], since={"a": 1, "b": 0})
    assert ack["payload"] == {
        "action": "subscribe",
        "types": ["a", "b", "c"],
        "recovered": {"a": True, "b": True},
    }
    got = await c.recv_n(4)
    assert [(m["type"], m["seq"]) for m in got] == [("a", 2), ("a", 3), ("b", 1), ("b", 2)]
    await c.expect_nothing(0.2)  # no since for "c": nothing of its past


async def test_recovery_respects_keys(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    items = [
        {"type": "p", "payload": 1, "key": "A"},
        {"type": "p", "payload": 2, "key": "B"},
        {"type": "p", "payload": 3},
        {"type": "p", "payload": 4, "key": "A"},
    ]
    assert await publish(http, running, items) == (202, {"seq": [1, 2, 3, 4]})
    c = await ws_client(running)
    ack = await c.subscribe(["p"], keys={"p": ["A"]}, since={"p": 0})
    assert ack["payload"]["recovered"] == {"p": True}
    got = await c.recv_n(2)
    assert [(m["seq"], m["key"]) for m in got] == [(1, "A"), (4, "A")]
    await c.expect_nothing(0.2)
    await publish(http, running, [{"type": "p", "payload": 5, "key": "B"},
                                  {"type": "p", "payload": 6, "key": "A"}])  # fmt: skip
    assert (await c.recv())["seq"] == 6
    await c.expect_nothing(0.1)


async def test_recovery_while_publishing_has_no_gap_and_no_duplicate(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server()
    total = 200
    published = 0

    async def publisher() -> None:
        nonlocal published
        for n in range(1, total + 1):
            status, body = await publish(http, running, {"type": "r", "payload": n})
            assert (status, body) == (202, {"seq": n})
            published = n

    task = asyncio.create_task(publisher())
    try:
        while published < 30:
            await asyncio.sleep(0.001)
        c = await ws_client(running)
        ack = await c.subscribe(["r"], since={"r": 20})
        assert ack["payload"]["recovered"] == {"r": True}
        got = await c.recv_n(total - 20, timeout=10)
    finally:
        await task
    assert [m["seq"] for m in got] == list(range(21, total + 1))
    assert [m["payload"] for m in got] == list(range(21, total + 1))
    await c.expect_nothing(0.2)


async def test_recovery_while_the_queue_drains(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    """Publications still in the broadcast queue when the subscribe is read reach
    the subscriber live, the ones already fanned out come from recovery: with
    one message fanned out per loop iteration the subscribe lands mid-drain."""
    running = await running_server(broadcast__batch_size=1)
    server = running.server
    c = await ws_client(running)
    await c.ping()
    for n in range(1, 201):
        await server.publish("q", n)
    assert len(server.hub.queue) == 200
    await c.send({"id": "s", "action": "subscribe", "payload": {"types": ["q"], "since": {"q": 5}}})
    ack = await c.recv()
    assert ack["payload"]["recovered"] == {"q": True}
    got = await c.recv_n(195)
    assert [m["seq"] for m in got] == list(range(6, 201))
    await c.expect_nothing(0.2)


async def test_since_still_queued_is_not_delivered_twice(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    """A client may know a seq before this instance fanned it out (a publish
    ack, another instance): what it already has must not come again."""
    running = await running_server(broadcast__batch_size=1)
    server = running.server
    c = await ws_client(running)
    await c.ping()
    for n in range(1, 201):
        await server.publish("q", n)
    await c.send(
        {"id": "s", "action": "subscribe", "payload": {"types": ["q"], "since": {"q": 150}}}
    )
    ack = await c.recv()
    assert ack["payload"]["recovered"] == {"q": True}
    got = await c.recv_n(50)
    assert [m["seq"] for m in got] == list(range(151, 201))
    await c.expect_nothing(0.2)
