"""The hub between the broker and the fan-out core, on a real event loop with the
embedded broker and fake transports (no sockets). Runs over both cores."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from aiosrv.broker_memory import MemoryBroker
from aiosrv.clock import ManualClock
from aiosrv.errors import ErrorCode, InvalidMessage, QueueFull, ReservedType
from aiosrv.fanout import encode_frame
from aiosrv.hub import Hub, HubSettings
from tests.core.conftest import FakeTransport, decode_frames


class CostlyTransport(FakeTransport):
    """A FakeTransport whose every write keeps the loop busy ``cost`` seconds
    on ``clock``."""

    def __init__(self, clock: ManualClock, cost: float) -> None:
        super().__init__()
        self.clock = clock
        self.cost = cost

    def write(self, data: bytes) -> None:
        self.clock.busy(self.cost)
        super().write(data)


def make_hub(impl, clock=None, on_overflow=None, **settings):
    """A hub on the real loop's clock, or on ``clock`` (a ManualClock: nothing
    runs until the test steps or advances it)."""
    hs = HubSettings(**settings)
    broker = MemoryBroker(hs.history_size)
    core = impl.FanOut()
    hub = Hub(core, broker, hs, on_overflow=on_overflow, clock=clock)
    return hub, broker, core


def connect(impl, core, conn_id, subscriptions, limit=1 << 20, transport=None):
    """A subscriber on a fake transport; ``subscriptions`` maps type -> keys or None."""
    sub = impl.Subscriber(conn_id, transport or FakeTransport(), limit)
    core.add(sub)
    for type_, keys in subscriptions.items():
        core.subscribe(sub, type_, keys)
    return sub


def received(sub):
    """The data messages a subscriber's transport got, decoded."""
    out = []
    for opcode, payload in decode_frames(sub.transport.data):
        assert opcode == 0x1
        out.append(orjson.loads(payload))
    return out


def seqs(sub, type_=None):
    return [m["seq"] for m in received(sub) if type_ is None or m["type"] == type_]


async def test_publish_is_delivered_in_order(impl):
    hub, _broker, core = make_hub(impl)
    every = connect(impl, core, "every", {"t": None})
    keyed = connect(impl, core, "keyed", {"t": ["k1"]})
    other = connect(impl, core, "other", {"u": None})
    pubs = []
    for i, key in enumerate(["k1", None, "k2", "k1"]):
        pubs.append(await hub.publish("t", {"i": i}, key=key))
    assert [p.seq for p in pubs] == [1, 2, 3, 4]
    # queued, not yet fanned out: the hub drains on the loop
    assert len(hub.queue) == 4
    assert every.transport.writes == []
    await asyncio.sleep(0)
    assert len(hub.queue) == 0
    assert every.transport.data == b"".join(hub_frame(p) for p in pubs)
    assert received(every) == [orjson.loads(p.data) for p in pubs]
    assert [m["payload"] for m in received(every)] == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert seqs(keyed) == [1, 4]
    assert [m["key"] for m in received(keyed)] == ["k1", "k1"]
    assert other.transport.writes == []
    assert hub.fanned_out == 4
    assert core.published == 4
    assert core.delivered == 6


def hub_frame(pub):
    return encode_frame(pub.data)


async def test_publish_accepts_encoded_json_bytes(impl):
    hub, _, core = make_hub(impl)
    s = connect(impl, core, "s", {"t": None})
    await hub.publish("t", b'{"raw":true}')
    await asyncio.sleep(0)
    assert received(s)[0]["payload"] == {"raw": True}


async def test_queue_limit_refuses_local_publishes(impl):
    hub, broker, core = make_hub(impl, queue_limit=3)
    s = connect(impl, core, "s", {"t": None})
    for i in range(3):
        await hub.publish("t", i)
    with pytest.raises(QueueFull) as info:
        await hub.publish("t", 99)
    err = info.value
    assert err.code == ErrorCode.QUEUE_FULL == "queue_full"
    assert err.http_status == 503
    assert err.message == (
        "broadcast queue is full (3 queued and 0 waiting on the broker, of 3); retry shortly"
    )
    assert hub.queue_rejected == 1
    # nothing stored: no seq taken, nothing in history
    assert broker.latest_seq("t") == 3
    page = await broker.history("t", 50)
    assert [p.seq for p in page.messages] == [1, 2, 3]
    # several at once are refused whole
    with pytest.raises(QueueFull):
        await hub.publish_many([("t", b"1", None), ("t", b"2", None)])
    assert hub.queue_rejected == 3
    assert broker.latest_seq("t") == 3
    await asyncio.sleep(0)
    assert seqs(s) == [1, 2, 3]
    # room again once drained
    pub = await hub.publish("t", 4)
    assert pub.seq == 4
    stats = hub.queue_stats()
    assert stats["rejected"] == 3
    assert stats["high_water"] == 3
    assert stats["limit"] == 3


async def test_publish_many_fills_the_queue_up_to_the_limit(impl):
    hub, _broker, core = make_hub(impl, queue_limit=3)
    s = connect(impl, core, "s", {"t": None})
    pubs = await hub.publish_many([("t", b"1", None), ("t", b"2", "k"), ("t", b"3", None)])
    assert [p.seq for p in pubs] == [1, 2, 3]
    await asyncio.sleep(0)
    assert seqs(s) == [1, 2, 3]


async def test_remote_arrivals_are_dropped_when_the_queue_is_full(impl):
    hub, broker, core = make_hub(impl, queue_limit=2)
    s = connect(impl, core, "s", {"t": None})
    await hub.publish("t", 1)
    await hub.publish("t", 2)
    # a publication reaching this instance from the broker, not through hub.publish
    broker.publish_now("t", b"3")
    assert hub.queue_dropped == 1
    assert broker.latest_seq("t") == 3  # stored in history all the same
    await asyncio.sleep(0)
    assert seqs(s) == [1, 2]
    assert hub.queue_stats()["dropped"] == 1


async def test_invalid_type_and_key_are_refused_before_storing(impl):
    hub, broker, _ = make_hub(impl)
    with pytest.raises(ReservedType):
        await hub.publish("error", 1)
    with pytest.raises(InvalidMessage):
        await hub.publish("", 1)
    with pytest.raises(InvalidMessage):
        await hub.publish("t", 1, key="")
    assert broker.latest_seq("t") == 0
    assert broker.latest_seq("error") == 0


# -- flushes paced by their cost ------------------------------------------------------


async def wait_for(predicate, timeout=2.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def test_low_rate_flushes_in_the_same_iteration(impl):
    hub, _, core = make_hub(impl, batch_size=10, flush_interval=0.05)
    s = connect(impl, core, "s", {"t": None})
    for i in range(1, 6):
        await hub.publish("t", i)
        await asyncio.sleep(0)
        assert seqs(s) == list(range(1, i + 1))
    assert len(s.transport.writes) == 5  # one write per message: no batching delay
    assert hub.queue_stats()["paced_flushes"] == 0
    assert core.pending_bytes_total() == 0


async def test_a_costly_flush_paces_the_next_and_it_carries_what_came_meanwhile(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, flush_interval=1.0, write_share=0.5)
    subs = [
        connect(impl, core, f"s{i}", {"t": None}, transport=CostlyTransport(clock, 0.002))
        for i in range(5)
    ]  # a flush writes five connections: 10 ms
    await hub.publish("t", 0)
    clock.step()
    assert [seqs(s) for s in subs] == [[1]] * 5  # written at once
    assert hub.pacer.last_cost == pytest.approx(0.010)
    # a flush costs more than the credit left: the next waits off its debt
    # (10 ms at write_share 0.5, less the 1 ms of credit a fresh hub has)
    for i in range(1, 4):
        await hub.publish("t", i)
        clock.step()
    assert [seqs(s) for s in subs] == [[1]] * 5
    stats = hub.queue_stats()
    assert stats["flush_pending"] is True
    assert stats["flush_credit_ms"] == pytest.approx(-9.0)
    # an idle loop pays 3 ms of debt a millisecond (IDLE_WEIGHT): 9 ms take 3
    # ms, and the timer looks 1 ms later (uvloop's timers can fire early)
    clock.advance(0.0039)
    assert [seqs(s) for s in subs] == [[1]] * 5
    clock.advance(0.0002)
    assert [seqs(s) for s in subs] == [[1, 2, 3, 4]] * 5
    # one write per connection carried the three messages
    assert all(len(s.transport.writes) == 2 for s in subs)
    assert hub.queue_stats()["paced_flushes"] == 1
    assert hub.coalesced_flushes == 1


async def test_a_busy_loop_pays_debt_at_its_own_pace(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, flush_interval=1.0, write_share=0.5)
    s = connect(impl, core, "s", {"t": None}, transport=CostlyTransport(clock, 0.010))
    await hub.publish("t", 0)
    clock.step()
    await hub.publish("t", 1)
    clock.step()  # 9 ms of debt
    for _ in range(8):  # the loop serves other work: 1 ms pays 1 ms, no credit
        clock.busy(0.001)
        clock.step()
    assert seqs(s) == [1]
    # paid off at 9 ms; the timer looks 1 ms after (uvloop's fire early)
    clock.busy(0.0019)
    clock.step()
    assert seqs(s) == [1]
    clock.busy(0.0002)
    clock.step()
    assert seqs(s) == [1, 2]


async def test_a_burst_is_fanned_out_in_batches_and_coalesced(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, batch_size=100, flush_interval=1.0)
    s = connect(impl, core, "s", {"t": None}, transport=CostlyTransport(clock, 0.005))
    for i in range(250):
        await hub.publish("t", i)
    assert len(hub.queue) == 250
    clock.step()
    # one drain takes batch_size messages, and the credit pays for their write
    assert len(hub.queue) == 150
    assert len(s.transport.writes) == 1
    assert seqs(s) == list(range(1, 101))
    clock.step()  # the next drains, one batch an iteration: the rest waits
    clock.step()  # for the first write's debt
    assert not hub.queue
    assert len(s.transport.writes) == 1
    clock.advance(0.005)
    # the rest waited off the first write's cost, then went out in one write
    assert core.pending_bytes_total() == 0
    assert seqs(s) == list(range(1, 251))
    assert len(s.transport.writes) == 2
    assert [m["payload"] for m in received(s)] == list(range(250))


async def test_the_wait_is_bounded_by_flush_interval(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, flush_interval=0.05)
    s = connect(impl, core, "s", {"t": None}, transport=CostlyTransport(clock, 10.0))
    await hub.publish("t", 0)
    clock.step()
    await hub.publish("t", 1)  # owes ten seconds, but waits flush_interval at most
    clock.step()
    assert seqs(s) == [1]
    for _ in range(50):  # a busy loop: 50 ms of work, one iteration a millisecond
        clock.busy(0.001)
        clock.step()
    assert seqs(s) == [1]
    clock.busy(0.0011)
    clock.step()
    assert seqs(s) == [1, 2]


async def test_light_load_after_heavy_flushes_at_once_again(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, flush_interval=1.0)
    s = connect(impl, core, "s", {"t": None}, transport=CostlyTransport(clock, 0.003))
    for i in range(20):
        await hub.publish("t", i)
        clock.step()
    clock.advance(0.1)
    assert core.pending_bytes_total() == 0
    assert len(s.transport.writes) < 20  # paced
    clock.advance(1.0)  # a quiet second earns the credit back
    writes = len(s.transport.writes)
    await hub.publish("t", "after")
    clock.step()
    assert len(s.transport.writes) == writes + 1
    assert seqs(s) == list(range(1, 22))


async def test_a_pass_is_written_in_chunks_and_serves_the_loop_between(impl, monkeypatch):
    from aiosrv import hub as hub_module

    monkeypatch.setattr(hub_module, "FLUSH_CHUNK", 2)
    hub, _, core = make_hub(impl)
    subs = [connect(impl, core, f"s{i}", {"t": None}) for i in range(5)]
    await hub.publish("t", 0)
    await asyncio.sleep(0)
    # the first chunk is written at once, the rest after the loop had a turn
    assert [len(seqs(s)) for s in subs] == [1, 1, 0, 0, 0]
    # a message fanned out between chunks: the connections not yet written
    # carry it in this pass, the others in the next
    await hub.publish("t", 1)
    await wait_for(lambda: all(seqs(s) == [1, 2] for s in subs))
    writes = [len(s.transport.writes) for s in subs]
    assert writes[:2] == [2, 2]
    assert writes[-1] == 1  # the last in line carried both messages in one write
    assert hub.flushes >= 3


async def test_write_soon_writes_that_connection_only(impl):
    clock = ManualClock()
    hub, _, core = make_hub(impl, clock=clock, flush_interval=1.0)
    a = connect(impl, core, "a", {"t": None}, transport=CostlyTransport(clock, 0.004))
    b = connect(impl, core, "b", {"t": None}, transport=CostlyTransport(clock, 0.004))
    await hub.publish("t", 0)
    clock.step()
    await hub.publish("t", 1)  # paced: waits for the flush timer
    clock.step()
    assert seqs(a) == seqs(b) == [1]
    reply = encode_frame(b'{"type":"pong"}')
    core.send(a, reply)
    hub.write_soon(a)
    hub.write_soon(a)  # once is enough
    assert len(a.transport.writes) == 1
    clock.step()
    # a's pending data, then its reply, in one write; b still waits for the flush
    assert a.transport.writes[-1] == hub_frame(hub._recent["t"][-1]) + reply
    assert seqs(b) == [1]
    assert hub.queue_stats()["prompt_writes"] == 1
    clock.advance(1.0)
    assert seqs(b) == [1, 2]
    assert len(a.transport.writes) == 2  # the flush found nothing left for a


async def test_overflowed_subscribers_are_handed_to_on_overflow(impl):
    closed = []
    hub, _, core = make_hub(impl, on_overflow=closed.extend)
    slow = connect(impl, core, "slow", {"t": None}, limit=300)
    fast = connect(impl, core, "fast", {"t": None})
    await hub.publish("t", "x" * 100)
    await asyncio.sleep(0)
    slow.transport.buffer_size = 250  # the kernel stops taking its bytes
    await hub.publish("t", "y" * 100)
    await asyncio.sleep(0)
    assert closed == []
    await hub.publish("t", "z" * 100)
    await asyncio.sleep(0)
    assert closed == [slow]
    assert slow.overflowed
    assert seqs(fast) == [1, 2, 3]
    assert seqs(slow) == [1, 2]


# -- recovery -------------------------------------------------------------------------


async def published(hub, type_, count, start=0):
    pubs = [await hub.publish(type_, {"n": start + i}) for i in range(count)]
    await asyncio.sleep(0)
    return pubs


async def test_recover_since_latest_is_complete_and_empty(impl):
    hub, _, _ = make_hub(impl, history_size=5)
    await published(hub, "t", 3)
    assert await hub.recover("t", 3) == (True, [])


async def test_recover_nothing_published(impl):
    hub, _, _ = make_hub(impl, history_size=5)
    assert await hub.recover("t", 0) == (True, [])
    assert await hub.recover("t", 7) == (False, [])


async def test_recover_within_history(impl):
    hub, _, _ = make_hub(impl, history_size=5)
    pubs = await published(hub, "t", 8)
    await published(hub, "u", 2)
    ok, missed = await hub.recover("t", 5)
    assert ok is True
    assert missed == pubs[5:]
    ok, missed = await hub.recover("t", 3)  # the ring holds 4..8: still complete
    assert ok is True
    assert [p.seq for p in missed] == [4, 5, 6, 7, 8]
    ok, missed = await hub.recover("u", 0)
    assert (ok, [p.seq for p in missed]) == (True, [1, 2])


async def test_recover_older_than_history(impl):
    hub, _, _ = make_hub(impl, history_size=5)
    pubs = await published(hub, "t", 12)
    ok, missed = await hub.recover("t", 2)
    assert ok is False
    assert missed == pubs[7:]  # what is still available, in order
    ok, missed = await hub.recover("t", 0)
    assert (ok, [p.seq for p in missed]) == (False, [8, 9, 10, 11, 12])


async def test_recover_ahead_of_latest(impl):
    hub, _, _ = make_hub(impl, history_size=5)
    await published(hub, "t", 3)
    assert await hub.recover("t", 4) == (False, [])
    assert await hub.recover("t", 1000) == (False, [])


async def test_recover_does_not_return_what_is_still_queued(impl):
    hub, broker, core = make_hub(impl, history_size=5)
    s = connect(impl, core, "s", {"t": None})
    await published(hub, "t", 3)
    await hub.publish("t", {"n": 3})  # seq 4, queued, not fanned out yet
    await hub.publish("t", {"n": 4})  # seq 5
    assert broker.latest_seq("t") == 5
    # the queued ones will arrive live: recovery stops at what was fanned out
    ok, missed = await hub.recover("t", 1)
    assert (ok, [p.seq for p in missed]) == (True, [2, 3])
    assert seqs(s) == [1, 2, 3]
    # a client that already saw a queued seq: the hub lets the fan-out catch up
    # first, so nothing it already has is sent again, live or recovered
    ok, missed = await hub.recover("t", 4)
    assert (ok, [p.seq for p in missed]) == (True, [5])
    assert seqs(s) == [1, 2, 3, 4, 5]


async def test_recover_under_load_uses_every_message_still_known(impl):
    # The broker stores at publish time, the hub's ring at fan-out time: with
    # publications queued, the broker's history has moved past the ring's start.
    hub, broker, _ = make_hub(impl, history_size=3)
    await published(hub, "t", 4)  # fanned out 1..4: ring holds 2, 3, 4
    await hub.publish("t", {"n": 4})  # seq 5 queued: broker history holds 3, 4, 5
    page = await broker.history("t", 3)
    assert [p.seq for p in page.messages] == [3, 4, 5]
    ok, missed = await hub.recover("t", 0)
    assert ok is False
    assert [p.seq for p in missed] == [2, 3, 4]


async def test_configure_resizes_history(impl):
    hub, broker, _ = make_hub(impl, history_size=5)
    await published(hub, "t", 5)
    assert (await hub.recover("t", 0))[0] is True
    hub.configure(HubSettings(history_size=2))
    assert hub.settings.history_size == 2
    ok, missed = await hub.recover("t", 0)
    assert (ok, [p.seq for p in missed]) == (False, [4, 5])
    ok, missed = await hub.recover("t", 3)
    assert (ok, [p.seq for p in missed]) == (True, [4, 5])
    page = await broker.history("t", 50)
    assert [p.seq for p in page.messages] == [4, 5]
    # growing keeps what is there and makes room for more
    hub.configure(HubSettings(history_size=4))
    await published(hub, "t", 3, start=5)
    ok, missed = await hub.recover("t", 4)
    assert (ok, [p.seq for p in missed]) == (True, [5, 6, 7, 8])
    page = await broker.history("t", 50)
    assert [p.seq for p in page.messages] == [5, 6, 7, 8]


async def test_configure_applies_batching_settings(impl):
    hub, _, core = make_hub(impl, batch_size=100)
    s = connect(impl, core, "s", {"t": None})
    hub.configure(HubSettings(batch_size=2, queue_limit=5))
    assert hub.queue_stats()["batch_size"] == 2
    for i in range(5):
        await hub.publish("t", i)
    with pytest.raises(QueueFull):
        await hub.publish("t", 5)
    await asyncio.sleep(0)
    assert seqs(s) == [1, 2]  # one drain takes batch_size messages
    for _ in range(50):
        if len(seqs(s)) == 5:
            break
        await asyncio.sleep(0.01)
    assert seqs(s) == [1, 2, 3, 4, 5]
