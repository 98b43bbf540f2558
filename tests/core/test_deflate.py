"""permessage-deflate in the core and the hub: one compressed frame per message,
shared by every subscriber that negotiated the extension."""

from __future__ import annotations

import asyncio
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
    subs = [
        impl.Subscriber(f"s{i}", FakeTransport(), 1 << 20, None, i > 0) for i in range(3)
    ]
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
