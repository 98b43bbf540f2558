"""What only the Redis engine does, on a real redis-server: interest per type,
at-most-once publishes, catching up a gap from the history, two engines on
one Redis numbering one stream."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import pytest

from aiosrv.broker import Publication
from aiosrv.broker_redis import RedisBroker
from aiosrv.config import default_config
from aiosrv.protocol import encode_data
from tests.redis_support import RedisServer

_n = itertools.count(1)


@pytest.fixture
async def make(redis_server: RedisServer) -> AsyncIterator[Callable[..., object]]:
    made: list[RedisBroker] = []
    prefix = f"engine{next(_n)}"

    async def build(history: int = 50) -> tuple[RedisBroker, list[Publication]]:
        config = default_config().replace(
            **{
                "history.size": history,
                "redis.host": redis_server.host,
                "redis.port": redis_server.port,
                "redis.channel_prefix": prefix,
            }
        )
        b = RedisBroker(config)
        got: list[Publication] = []
        b.bind(got.append)
        await b.start()
        made.append(b)
        return b, got

    yield build
    for b in made:
        await b.close()


async def settle(got: list[Publication], n: int) -> None:
    for _ in range(200):
        if len(got) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(got)} of {n} delivered")


async def test_only_listened_types_are_delivered(make) -> None:
    b, got = await make()
    await b.listen(["a"])
    assert b.listening(["a"]) and not b.listening(["a", "b"])
    await b.publish("b", "not wanted")
    await b.publish("a", "wanted")
    await settle(got, 1)
    await asyncio.sleep(0.05)
    assert [p.type for p in got] == ["a"]
    b.unlisten(["a"])
    assert b.listened() == frozenset()
    await asyncio.sleep(0.05)  # the unsubscribe reaches Redis
    await b.publish("a", "after")
    await asyncio.sleep(0.1)
    assert [p.type for p in got] == ["a"]


async def test_two_engines_number_one_stream_and_both_receive_it(make) -> None:
    a, got_a = await make()
    b, got_b = await make()
    await a.listen(["t"])
    await b.listen(["t"])
    pubs = await asyncio.gather(*(e.publish("t", i) for i, e in enumerate([a, b] * 10)))
    assert sorted(p.seq for p in pubs) == list(range(1, 21))
    await settle(got_a, 20)
    await settle(got_b, 20)
    assert [p.seq for p in got_a] == [p.seq for p in got_b] == list(range(1, 21))
    assert [p.data for p in got_a] == [p.data for p in sorted(pubs, key=lambda p: p.seq)]


async def test_the_data_message_is_the_embedded_engines(make) -> None:
    b, _ = await make()
    cases = [({"é": [1, 2.5, None]}, 'k"ey'), ("x\n\u2028y", None), (b'{"raw":1}', "k")]
    for payload, key in cases:
        p = await b.publish("ty\"pe", payload, key)
        assert p.data == encode_data("ty\"pe", p.seq, p.timestamp, payload, key)


async def test_a_resent_publish_runs_once(make) -> None:
    b, got = await make()
    await b.listen(["t"])
    first = await b.publish("t", 1)
    b._publishes -= 1  # the same publish id again: what a redis-py retry resends
    again = await b.publish("t", 1)
    assert again.seq == first.seq
    assert [p.seq for p in (await b.history("t", 10)).messages] == [1]
    await settle(got, 1)
    await asyncio.sleep(0.05)
    assert len(got) == 1


async def test_a_gap_is_caught_up_from_the_history(make) -> None:
    a, got = await make()
    other, _ = await make()
    await a.listen(["t"])
    await other.publish("t", 1)
    await settle(got, 1)
    # a message this engine never saw on its channel (as if its connection
    # dropped it), then one it sees: the one in between comes from the history
    a._listened["t"] = 1
    await other.publish("t", 2)
    await settle(got, 2)
    a._listened["t"] = 1  # pretend 2 was lost in transit
    got.pop()
    await other.publish("t", 3)
    await settle(got, 3)
    assert [p.seq for p in got] == [1, 2, 3]
    assert a.stats()["gaps_filled"] >= 1


async def test_redis_that_lost_its_data_restarts_numbering(
    make, redis_server: RedisServer
) -> None:
    b, got = await make()
    await b.listen(["t"])
    for i in range(3):
        await b.publish("t", i)
    await settle(got, 3)
    redis_server.restart()  # empty
    for _ in range(300):
        await asyncio.sleep(0.01)
        if b.health().ok and b.stats()["resets"]:
            break
    p = None
    for _ in range(100):
        try:
            p = await b.publish("t", "new")
            break
        except Exception:
            await asyncio.sleep(0.05)
    assert p is not None and p.seq == 1
    await settle(got, 4)
    assert got[-1].seq == 1 and got[-1].data == p.data
    assert b.stats()["resets"] >= 1


async def test_concurrent_publishes_share_pipelines_and_few_connections(
    make, redis_server: RedisServer
) -> None:
    b, got = await make()
    await b.listen(["t"])
    pubs = await asyncio.gather(*(b.publish("t", i) for i in range(3000)))
    assert sorted(p.seq for p in pubs) == list(range(1, 3001))
    assert b.stats()["publish_batches"] < 100  # batched while a pipeline was out
    clients = int(redis_server.info("clients")["connected_clients"])
    assert clients <= 10  # the pool (8) and the pub/sub connection, not one per publish
    await settle(got, 3000)
    assert [p.seq for p in got] == list(range(1, 3001))
