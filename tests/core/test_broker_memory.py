"""The embedded broker: seq numbering, history windows, resizing, data bytes."""

from __future__ import annotations

import orjson

from aiosrv.broker import Publication
from aiosrv.broker_memory import MemoryBroker
from aiosrv.protocol import now_ms


def fill(broker, type_, count, key=None):
    return [broker.publish_now(type_, orjson.dumps({"n": i}), key) for i in range(count)]


def seqs(page):
    return [p.seq for p in page.messages]


async def test_seq_per_type_starts_at_one():
    b = MemoryBroker(50)
    assert b.latest_seq("a") == 0
    assert (await b.publish("a", b"1")).seq == 1
    assert (await b.publish("a", b"2")).seq == 2
    assert (await b.publish("b", b"1")).seq == 1
    assert (await b.publish("a", b"3")).seq == 3
    assert (b.latest_seq("a"), b.latest_seq("b"), b.latest_seq("c")) == (3, 1, 0)


async def test_publication_fields_and_data_bytes():
    b = MemoryBroker(50)
    before = now_ms()
    pub = await b.publish("prices", b'{"BTC":1}', "BTC")
    after = now_ms()
    assert isinstance(pub, Publication)
    assert (pub.type, pub.seq, pub.key) == ("prices", 1, "BTC")
    assert before <= pub.timestamp <= after
    assert pub.data == (
        b'{"id":"prices:1","type":"prices","timestamp":'
        + str(pub.timestamp).encode()
        + b',"seq":1,"key":"BTC","payload":{"BTC":1}}'
    )
    plain = await b.publish("prices", b"[1,2]")
    assert plain.key is None
    msg = orjson.loads(plain.data)
    assert msg == {
        "id": "prices:2",
        "type": "prices",
        "timestamp": plain.timestamp,
        "seq": 2,
        "payload": [1, 2],
    }
    assert "key" not in msg


async def test_deliver_is_called_synchronously_in_order():
    b = MemoryBroker(50)
    got = []
    b.bind(got.append)
    p1 = b.publish_now("t", b"1")
    assert got == [p1]
    p2 = await b.publish("t", b"2")
    assert got == [p1, p2]


async def test_publish_many_keeps_order():
    b = MemoryBroker(50)
    pubs = await b.publish_many([("t", b"1", None), ("u", b"2", "k"), ("t", b"3", None)])
    assert [(p.type, p.seq, p.key) for p in pubs] == [("t", 1, None), ("u", 1, "k"), ("t", 2, None)]


async def test_history_newest_limit_oldest_first():
    b = MemoryBroker(5)
    fill(b, "t", 8)
    page = await b.history("t", 3)
    assert seqs(page) == [6, 7, 8]
    assert (page.oldest, page.latest) == (4, 8)
    assert seqs(await b.history("t", 5)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 100)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 1)) == [8]
    assert seqs(await b.history("t", 0)) == []
    assert [orjson.loads(p.data)["payload"] for p in (await b.history("t", 2)).messages] == [
        {"n": 6},
        {"n": 7},
    ]


async def test_history_since_first_limit_after_since():
    b = MemoryBroker(5)
    fill(b, "t", 8)
    assert seqs(await b.history("t", 2, since=5)) == [6, 7]
    assert seqs(await b.history("t", 10, since=5)) == [6, 7, 8]
    assert seqs(await b.history("t", 2, since=0)) == [4, 5]  # older ones are gone
    assert seqs(await b.history("t", 10, since=2)) == [4, 5, 6, 7, 8]
    assert seqs(await b.history("t", 10, since=8)) == []
    assert seqs(await b.history("t", 10, since=100)) == []
    page = await b.history("t", 1, since=3)
    assert (seqs(page), page.oldest, page.latest) == ([4], 4, 8)


async def test_history_of_unknown_type():
    b = MemoryBroker(5)
    page = await b.history("nothing", 10)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 0)
    page = await b.history("nothing", 10, since=3)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 0)


async def test_history_is_per_type():
    b = MemoryBroker(3)
    fill(b, "a", 4)
    fill(b, "b", 2)
    assert seqs(await b.history("a", 10)) == [2, 3, 4]
    assert seqs(await b.history("b", 10)) == [1, 2]
    assert b.stats() == {"engine": "memory", "types": 2, "history_size": 3, "history_messages": 5}


async def test_set_history_size_shrink_and_grow():
    b = MemoryBroker(5)
    fill(b, "t", 8)
    b.set_history_size(2)
    page = await b.history("t", 50)
    assert (seqs(page), page.oldest, page.latest) == ([7, 8], 7, 8)
    fill(b, "t", 1)
    assert seqs(await b.history("t", 50)) == [8, 9]
    b.set_history_size(4)
    assert seqs(await b.history("t", 50)) == [8, 9]
    fill(b, "t", 3)
    assert seqs(await b.history("t", 50)) == [9, 10, 11, 12]
    b.set_history_size(4)  # unchanged size: nothing changes
    assert seqs(await b.history("t", 50)) == [9, 10, 11, 12]


async def test_history_size_zero_keeps_numbering():
    b = MemoryBroker(5)
    fill(b, "t", 3)
    b.set_history_size(0)
    page = await b.history("t", 50)
    assert (page.messages, page.oldest, page.latest) == ([], 0, 3)
    assert fill(b, "t", 1)[0].seq == 4
    assert (await b.history("t", 50)).messages == []
    assert b.stats()["history_messages"] == 0
    b.set_history_size(2)
    fill(b, "t", 3)
    assert seqs(await b.history("t", 50)) == [6, 7]


async def test_health():
    b = MemoryBroker(5)
    h = b.health()
    assert (h.ok, h.reason, h.details) == (True, "", {"engine": "memory"})
    assert b.name == "memory"
