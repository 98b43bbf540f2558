"""permessage-deflate in the core and the hub: one compressed frame per message,
shared by every subscriber that negotiated the extension."""

from __future__ import annotations

import asyncio
import random
import zlib

import orjson

from aiosrv.broker_memory import MemoryBroker
from aiosrv.hub import Hub, HubSettings
from tests.core.conftest import FakeTransport


def inflate(body: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    return d.decompress(body + b"\x00\x00\xff\xff")


def parse(data: bytes) -> list[tuple[bool, int, bytes]]:
    """(rsv1, opcode, payload) of each unmasked server frame."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        n = b1 & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            i += 8
        out.append((bool(b0 & 0x40), b0 & 0x0F, data[i : i + n]))
        i += n
    return out


def test_rsv1_bit(impl) -> None:
    assert impl.encode_frame(b"abc", 0x1, True) == b"\xc1\x03abc"
    assert impl.encode_frame(b"abc", 0x1, False) == b"\x81\x03abc"
    assert impl.encode_frame(b"abc") == b"\x81\x03abc"


def test_deflate_receivers_get_the_shared_compressed_frame(impl) -> None:
    core = impl.FanOut()
    plain = impl.Subscriber("plain", FakeTransport(), 1 << 20)
    d1 = impl.Subscriber("d1", FakeTransport(), 1 << 20, None, True)
    d2 = impl.Subscriber("d2", FakeTransport(), 1 << 20, None, True)
    for sub in (plain, d1, d2):
        core.add(sub)
        core.subscribe(sub, "t")
    assert core.deflate_count == 2
    frame = impl.encode_frame(b"plain")
    frame_z = impl.encode_frame(b"zipped", 0x1, True)
    assert core.publish("t", None, frame, frame_z) == 3
    core.flush()
    assert plain.transport.writes == [frame]
    # the very same object goes to both deflate receivers: no per-subscriber work
    assert d1.transport.writes[0] is frame_z
    assert d2.transport.writes[0] is frame_z
    # without a compressed frame everyone gets the plain one
    core.publish("t", None, frame)
    core.flush()
    assert d1.transport.writes[1] is frame
    core.remove(d1)
    assert core.deflate_count == 1
    core.remove(d1)
    assert core.deflate_count == 1


async def test_hub_compresses_once_above_the_threshold(impl) -> None:
    hs = HubSettings(compression_threshold=200, compression_level=6)
    core = impl.FanOut()
    hub = Hub(core, MemoryBroker(hs.history_size), hs)
    subs = [impl.Subscriber(f"s{i}", FakeTransport(), 1 << 20, None, i > 0) for i in range(3)]
    for sub in subs:
        core.add(sub)
        core.subscribe(sub, "t")
    big = {"rows": [{"name": "sensor", "value": i} for i in range(50)]}
    await hub.publish("t", big)
    await hub.publish("t", {"small": 1})
    for _ in range(3):
        await asyncio.sleep(0)
    assert hub.compressed == 1  # once, for two deflate receivers
    plain_frames = parse(subs[0].transport.data)
    assert [rsv1 for rsv1, _, _ in plain_frames] == [False, False]
    for sub in subs[1:]:
        frames = parse(sub.transport.data)
        assert [rsv1 for rsv1, _, _ in frames] == [True, False]
        _, opcode, body = frames[0]
        assert opcode == 0x1
        assert inflate(body) == plain_frames[0][2]
        assert len(body) < len(plain_frames[0][2])
        assert orjson.loads(inflate(body))["payload"] == big
        assert orjson.loads(frames[1][2])["payload"] == {"small": 1}
    assert hub.compressed_bytes_out < hub.compressed_bytes_in


async def test_hub_does_not_compress_without_deflate_receivers(impl) -> None:
    hs = HubSettings(compression_threshold=0)
    core = impl.FanOut()
    hub = Hub(core, MemoryBroker(hs.history_size), hs)
    sub = impl.Subscriber("plain", FakeTransport(), 1 << 20)
    core.add(sub)
    core.subscribe(sub, "t")
    await hub.publish("t", {"x": "y" * 5000})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert hub.compressed == 0
    assert [rsv1 for rsv1, _, _ in parse(sub.transport.data)] == [False]


def test_deflate_flag_is_settable_and_the_count_never_drifts(impl) -> None:
    core = impl.FanOut()
    sub = impl.Subscriber("s", FakeTransport(), 1 << 20)
    assert sub.deflate is False
    sub.deflate = True  # before add: counted
    core.add(sub)
    core.add(sub)  # adding twice counts once
    assert core.deflate_count == 1
    core.subscribe(sub, "t")
    frame, frame_z = impl.encode_frame(b"p"), impl.encode_frame(b"z", 0x1, True)
    core.publish("t", None, frame, frame_z)
    sub.deflate = False  # the flag is read per publish
    core.publish("t", None, frame, frame_z)
    core.flush()
    assert sub.transport.writes == [frame_z + frame]
    # counted when added, uncounted when removed, whatever the flag says now
    core.remove(sub)
    assert core.deflate_count == 0
    late = impl.Subscriber("late", FakeTransport(), 1 << 20)
    core.add(late)
    late.deflate = True  # after add: not counted, and removing it does not uncount
    assert core.deflate_count == 0
    core.remove(late)
    assert core.deflate_count == 0


def test_key_receivers_and_replies(impl) -> None:
    core = impl.FanOut()
    d = impl.Subscriber("d", FakeTransport(), 1 << 20, None, True)
    core.add(d)
    core.subscribe(d, "t", ["k"])
    frame, frame_z = impl.encode_frame(b"p"), impl.encode_frame(b"z", 0x1, True)
    assert core.publish("t", "k", frame, frame_z) == 1
    reply = impl.encode_frame(b"ack")
    assert core.send(d, reply)  # replies go as given: uncompressed
    core.flush()
    assert d.transport.writes == [frame_z + reply]


async def test_hub_large_message_round_trips(impl) -> None:
    hs = HubSettings(compression=True, compression_threshold=1024, compression_level=9)
    core = impl.FanOut()
    hub = Hub(core, MemoryBroker(hs.history_size), hs)
    sub = impl.Subscriber("d", FakeTransport(), 1 << 22, None, True)
    core.add(sub)
    core.subscribe(sub, "t")
    # incompressible enough that the compressed payload needs the 8-byte length
    rnd = random.Random(7)
    payload = "".join(rnd.choice("0123456789abcdef") for _ in range(200_000))
    await hub.publish("t", payload)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    ((rsv1, opcode, body),) = parse(sub.transport.data)
    assert (rsv1, opcode) == (True, 0x1)
    assert len(body) >= 65536
    assert orjson.loads(inflate(body))["payload"] == payload
    stats = hub.queue_stats()
    assert stats["compression"] is True
    assert stats["compression_level"] == 9
    assert stats["deflate_subscribers"] == 1
    assert stats["compressed_messages"] == 1
    assert stats["compressed_bytes_saved"] == (
        stats["compressed_bytes_in"] - stats["compressed_bytes_out"]
    )
    assert stats["compressed_bytes_saved"] > 0


async def test_hub_threshold_is_inclusive(impl) -> None:
    core = impl.FanOut()
    sub = impl.Subscriber("d", FakeTransport(), 1 << 20, None, True)
    core.add(sub)
    core.subscribe(sub, "t")
    hub = Hub(core, MemoryBroker(50), HubSettings(compression=True))
    # both are queued before the drain runs: size the threshold on the first
    await hub.publish("t", "a" * 100)
    await hub.publish("t", "a" * 99)
    first, second = hub.queue
    assert len(second.data) == len(first.data) - 1
    hub.settings.compression_threshold = len(first.data)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # exactly the threshold: compressed; one byte less: plain
    assert [rsv1 for rsv1, _, _ in parse(sub.transport.data)] == [True, False]
