"""What the embedded engine does beyond the contract (tests/broker/test_contract.py):
a synchronous publish, delivery before publish returns, its stats and health."""

from __future__ import annotations

import pytest

from aiosrv.broker_memory import MemoryBroker
from aiosrv.errors import BrokerUnavailable


async def test_publish_now_is_publish_without_await():
    b = MemoryBroker(5)
    p1 = b.publish_now("t", b"1")
    p2 = await b.publish("t", b"2")
    p3 = b.publish_now("t", b"3", "k")
    assert [(p.seq, p.key) for p in (p1, p2, p3)] == [(1, None), (2, None), (3, "k")]
    assert (await b.history("t", 5)).messages == [p1, p2, p3]


async def test_deliver_is_called_before_publish_returns():
    b = MemoryBroker(5)
    got = []
    b.bind(got.append)
    p1 = b.publish_now("t", b"1")
    assert got == [p1]
    p2 = await b.publish("t", b"2")
    assert got == [p1, p2]
    pubs = await b.publish_many([("u", b"3", None)])
    assert got == [p1, p2, *pubs]


async def test_publishes_without_start_and_publish_now_refuses_when_closed():
    b = MemoryBroker(5)
    assert b.publish_now("t", b"1").seq == 1  # no start() needed
    await b.close()
    with pytest.raises(BrokerUnavailable):
        b.publish_now("t", b"2")
    assert b.latest_seq("t") == 1


async def test_stats_and_health():
    b = MemoryBroker(3)
    assert b.stats() == {"engine": "memory", "types": 0, "history_size": 3, "history_messages": 0}
    for type_, count in (("a", 4), ("b", 2)):
        for _ in range(count):
            b.publish_now(type_, b"{}")
    assert b.stats() == {"engine": "memory", "types": 2, "history_size": 3, "history_messages": 5}
    b.set_history_size(0)
    assert b.stats() == {"engine": "memory", "types": 2, "history_size": 0, "history_messages": 0}
    h = b.health()
    assert (h.ok, h.reason, h.details) == (True, "", {"engine": "memory"})
    await b.close()
    h = b.health()
    assert (h.ok, h.reason, h.details) == (False, "closed", {"engine": "memory"})
