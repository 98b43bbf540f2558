"""The broker contract (aiosrv/broker.py), checked against every engine.

Each test takes ``engine`` (tests/broker/conftest.py), so it runs once per
engine listed there. Nothing here may depend on one engine's internals: what
an engine does beyond the contract is tested in that engine's own file.
"""

from __future__ import annotations

import orjson
import pytest

from aiosrv.broker import Broker, BrokerHealth, HistoryPage, Publication
from aiosrv.errors import BrokerUnavailable, ClientError
from aiosrv.protocol import now_ms


async def fill(broker: Broker, type_: str, count: int, key: str | None = None) -> list[Publication]:
    """Publish ``count`` messages ``{"n": 0}``, ``{"n": 1}``... to ``type_``."""
    return [await broker.publish(type_, {"n": i}, key) for i in range(count)]


def seqs(page: HistoryPage) -> list[int]:
    return [p.seq for p in page.messages]


def payloads(pubs: list[Publication]) -> list:
    return [orjson.loads(p.data)["payload"] for p in pubs]


# -- numbering -------------------------------------------------------------------


async def test_seq_starts_at_one_and_increases_by_one(engine):
    b = await engine()
    assert b.latest_seq("t") == 0
    pubs = await fill(b, "t", 5)
    assert [p.seq for p in pubs] == [1, 2, 3, 4, 5]
    assert b.latest_seq("t") == 5


async def test_types_are_numbered_independently(engine):
    b = await engine()
    got = [(p.type, p.seq) for p in [
        await b.publish("a", 1),
        await b.publish("a", 2),
        await b.publish("b", 1),
        await b.publish("a", 3),
        await b.publish("c", 1),
        await b.publish("b", 2),
    ]]  # fmt: skip
    assert got == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("c", 1), ("b", 2)]
    assert (b.latest_seq("a"), b.latest_seq("b"), b.latest_seq("c")) == (3, 2, 1)
    assert b.latest_seq("never") == 0


async def test_publish_many_numbers_in_order(engine):
    b = await engine()
    await b.publish("t", 0)
    pubs = await b.publish_many([("t", 1, None), ("u", 2, "k"), ("t", 3, None)])
    assert [(p.type, p.seq, p.key) for p in pubs] == [("t", 2, None), ("u", 1, "k"), ("t", 3, None)]
    assert payloads(pubs) == [1, 2, 3]
    assert (b.latest_seq("t"), b.latest_seq("u")) == (3, 1)
    assert await b.publish_many([]) == []


# -- the publication -------------------------------------------------------------


async def test_publication_is_the_data_message(engine):
    b = await engine()
    before = now_ms()
    pub = await b.publish("prices", {"BTC": 1}, "BTC")
    after = now_ms()
    assert isinstance(pub, Publication)
    assert (pub.type, pub.seq, pub.key) == ("prices", 1, "BTC")
    assert before <= pub.timestamp <= after
    assert pub.data == (
        b'{"id":"prices:1","type":"prices","timestamp":'
        + str(pub.timestamp).encode()
        + b',"seq":1,"key":"BTC","payload":{"BTC":1}}'
    )
    plain = await b.publish("prices", [1, 2])
    assert plain.key is None
    assert orjson.loads(plain.data) == {
        "id": "prices:2",
        "type": "prices",
        "timestamp": plain.timestamp,
        "seq": 2,
        "payload": [1, 2],
    }


async def test_payload_as_json_bytes_or_value_is_the_same(engine):
    b = await engine()
    as_bytes = await b.publish("t", b'{"a":[1,2,{"b":null}]}')
    as_value = await b.publish("t", {"a": [1, 2, {"b": None}]})
    assert payloads([as_bytes, as_value]) == [{"a": [1, 2, {"b": None}]}] * 2


# -- history ---------------------------------------------------------------------


async def test_published_message_is_in_history_when_publish_returns(engine):
    b = await engine()
    for i in range(1, 4):
        pub = await b.publish("t", {"n": i})
        page = await b.history("t", 1)
        assert page.messages == [pub]
        assert page.latest == i
    more = await b.publish_many([("t", 4, None), ("t", 5, None)])
    assert (await b.history("t", 2)).messages == more


async def test_history_newest_limit_oldest_first(engine):
    b = await engine(5)
    await fill(b, "t", 8)
    page = await b.history("t", 3)
    assert seqs(page) == [6, 7, 8]
    assert (page.oldest, page.latest) == (4, 8)
    assert seqs(await b.history("t", 5)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 100)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 1)) == [8]
    assert payloads((await b.history("t", 2)).messages) == [{"n": 6}, {"n": 7}]


async def test_history_since_gives_the_first_limit_after_since(engine):
    b = await engine(5)
    await fill(b, "t", 8)
    assert seqs(await b.history("t", 2, since=5)) == [6, 7]
    assert seqs(await b.history("t", 10, since=5)) == [6, 7, 8]
    assert seqs(await b.history("t", 2, since=0)) == [4, 5]  # 1-3 are gone
    assert seqs(await b.history("t", 10, since=2)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 10, since=7)) == [8]
    assert seqs(await b.history("t", 10, since=8)) == []
    assert seqs(await b.history("t", 10, since=100)) == []
    page = await b.history("t", 1, since=3)
    assert (seqs(page), page.oldest, page.latest) == ([4], 4, 8)


@pytest.mark.parametrize("since", [None, 0, 5])
@pytest.mark.parametrize("limit", [0, -1])
async def test_history_limit_zero_or_less_gives_nothing(engine, limit, since):
    b = await engine(5)
    await fill(b, "t", 8)
    page = await b.history("t", limit, since)
    assert (page.messages, page.oldest, page.latest) == ([], 4, 8)


async def test_history_of_a_type_never_published(engine):
    b = await engine(5)
    await fill(b, "other", 2)
    for since in (None, 0, 3):
        page = await b.history("nothing", 10, since)
        assert (page.messages, page.oldest, page.latest) == ([], 0, 0)


async def test_history_is_per_type(engine):
    b = await engine(3)
    await fill(b, "a", 4)
    await fill(b, "b", 2)
    a, bb = await b.history("a", 10), await b.history("b", 10)
    assert (seqs(a), a.oldest, a.latest) == ([2, 3, 4], 2, 4)
    assert (seqs(bb), bb.oldest, bb.latest) == ([1, 2], 1, 2)
    assert {p.type for p in a.messages} == {"a"}
    assert {p.type for p in bb.messages} == {"b"}


async def test_history_holds_the_window_and_no_more(engine):
    size = 4
    b = await engine(size)
    for n in range(1, 3 * size + 1):
        await b.publish("t", n)
        page = await b.history("t", 100)
        expected = list(range(max(1, n - size + 1), n + 1))
        assert seqs(page) == expected
        assert (page.oldest, page.latest) == (expected[0], n)
        assert payloads(page.messages) == expected


async def test_history_holds_what_publish_returned(engine):
    b = await engine()
    pubs = await fill(b, "t", 3, key="k")
    assert (await b.history("t", 10)).messages == pubs
    assert (await b.history("t", 10, since=1)).messages == pubs[1:]


async def test_set_history_size_shrinks_and_grows(engine):
    b = await engine(5)
    await fill(b, "t", 8)
    await fill(b, "u", 3)
    b.set_history_size(2)
    page = await b.history("t", 50)
    assert (seqs(page), page.oldest, page.latest) == ([7, 8], 7, 8)
    assert seqs(await b.history("u", 50)) == [2, 3]
    await fill(b, "t", 1)
    assert seqs(await b.history("t", 50)) == [8, 9]
    b.set_history_size(4)
    assert seqs(await b.history("t", 50)) == [8, 9]  # what was dropped stays dropped
    await fill(b, "t", 3)
    assert seqs(await b.history("t", 50)) == [9, 10, 11, 12]
    b.set_history_size(4)  # the same size: nothing changes
    assert seqs(await b.history("t", 50)) == [9, 10, 11, 12]


async def test_history_size_zero_keeps_none_and_numbering_goes_on(engine):
    b = await engine(5)
    await fill(b, "t", 3)
    b.set_history_size(0)
    page = await b.history("t", 50)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 3)
    assert (await b.publish("t", 4)).seq == 4
    page = await b.history("t", 50, since=2)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 4)
    b.set_history_size(2)
    await fill(b, "t", 3)
    assert seqs(await b.history("t", 50)) == [6, 7]


async def test_engine_made_with_history_size_zero(engine):
    b = await engine(0)
    assert [p.seq for p in await fill(b, "t", 3)] == [1, 2, 3]
    page = await b.history("t", 10)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 3)
    assert b.latest_seq("t") == 3


async def test_latest_seq_is_history_latest(engine):
    b = await engine(2)
    for n in range(1, 6):
        await b.publish("t", n)
        assert b.latest_seq("t") == (await b.history("t", 1)).latest == n


# -- recovery (what subscribe with since relies on) ----------------------------------


def recovered(page: HistoryPage, since: int) -> bool:
    """The hub's rule: every message after ``since`` is still in history."""
    return page.oldest != 0 and page.oldest <= since + 1


async def test_recovery_within_the_window(engine):
    b = await engine(10)
    await fill(b, "t", 4)
    seen = b.latest_seq("t")  # a subscriber saw up to here, then went away
    missed = await fill(b, "t", 5)
    await fill(b, "other", 3)
    page = await b.history("t", 10, since=seen)
    assert recovered(page, seen)
    assert page.messages == missed
    assert page.latest == seen + len(missed)


async def test_recovery_just_inside_and_just_outside_the_window(engine):
    b = await engine(5)
    await fill(b, "t", 10)  # history holds 6..10
    inside = await b.history("t", 5, since=5)
    assert recovered(inside, 5)
    assert seqs(inside) == [6, 7, 8, 9, 10]
    outside = await b.history("t", 5, since=4)
    assert not recovered(outside, 4)  # 5 is gone: the client must learn of the gap
    assert seqs(outside) == [6, 7, 8, 9, 10]  # what is left follows anyway


async def test_recovery_with_nothing_missed(engine):
    b = await engine(5)
    await fill(b, "t", 3)
    page = await b.history("t", 5, since=3)
    assert page.messages == []
    assert recovered(page, 3)
    assert page.latest == 3


# -- delivery --------------------------------------------------------------------


async def test_every_publication_is_delivered_once_in_seq_order(engine):
    b = await engine()
    rec = engine.recorder(b)
    pubs = [await b.publish("a", 1), await b.publish("b", 1)]
    pubs += await b.publish_many([("a", 2, "k"), ("b", 2, None), ("a", 3, None)])
    pubs.append(await b.publish("a", 4))
    delivered = await rec.wait_for(len(pubs))
    for type_ in ("a", "b"):
        got = [p for p in delivered if p.type == type_]
        assert got == [p for p in pubs if p.type == type_]
        assert [p.seq for p in got] == list(range(1, len(got) + 1))
    assert len(delivered) == len(pubs)


async def test_delivery_does_not_depend_on_history(engine):
    b = await engine(0)
    await fill(b, "t", 3)
    assert [p.seq for p in await engine.recorder(b).wait_for(3)] == [1, 2, 3]


# -- health, stats, lifecycle ------------------------------------------------------


async def test_health_when_started(engine):
    b = await engine()
    h = b.health()
    assert isinstance(h, BrokerHealth)
    assert (h.ok, h.reason) == (True, "")
    orjson.dumps(h.details)


async def test_name_and_stats(engine):
    b = await engine()
    assert b.name == engine.name
    await fill(b, "t", 2)
    stats = b.stats()
    assert stats["engine"] == b.name
    assert orjson.loads(orjson.dumps(stats)) == stats  # plain JSON for /stats


async def test_start_and_close_are_idempotent(engine):
    b = await engine()
    await b.start()  # started twice
    assert (await b.publish("t", 1)).seq == 1
    assert b.health().ok
    await b.close()
    await b.close()  # closed twice
    never_started = await engine(start=False)
    await never_started.close()
    await never_started.close()


async def test_a_closed_engine_is_down(engine):
    b = await engine(5)
    await fill(b, "t", 3)
    rec = engine.recorder(b)
    await rec.wait_for(3)
    await b.close()
    h = b.health()
    assert not h.ok
    assert h.reason
    with pytest.raises(BrokerUnavailable) as err:
        await b.publish("t", 4)
    assert isinstance(err.value, ClientError) and err.value.http_status == 503
    with pytest.raises(BrokerUnavailable):
        await b.publish_many([("t", 4, None)])
    with pytest.raises(BrokerUnavailable):
        await b.history("t", 5)
    with pytest.raises(BrokerUnavailable):
        await b.history("t", 5, since=1)
    # what needs no engine still answers
    assert b.latest_seq("t") == 3
    assert b.stats()["engine"] == b.name
    assert len(rec.delivered) == 3


async def test_started_again_after_close(engine):
    b = await engine(5)
    await fill(b, "t", 3)
    await b.close()
    await b.start()
    assert b.health().ok
    assert (await b.publish("t", 4)).seq == 4
    assert seqs(await b.history("t", 10)) == [1, 2, 3, 4]
