"""What the one write path relies on, pinned on the loop the tests run on
(uvloop in the compiled pass, as in production; asyncio's own in the pure pass).

The core hands each connection's frames to ``transport.write`` and then reads
``get_write_buffer_size()`` as "what the kernel refused"; the hub times
``core.flush()`` as the cost of writing. Both are true only if the transport
tries the socket at once. If a loop started deferring writes to the end of the
iteration, these tests fail (and ``docs/design.md``, "Writing to the socket",
has to be revisited).
"""

from __future__ import annotations

import asyncio
import socket

from aiosrv.fanout import FanOut, Subscriber, encode_frame


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return transport, peer  # type: ignore[return-value]


async def test_the_transport_writes_at_once_and_reports_what_the_kernel_refused() -> None:
    transport, peer = await _pair()
    try:
        transport.write(b"x" * 1000)
        # in the socket already, before the loop ran again
        assert transport.get_write_buffer_size() == 0
        peer.settimeout(1.0)
        assert peer.recv(4096) == b"x" * 1000
        # a peer that reads nothing: once the kernel's buffers are full, the
        # transport holds exactly what it could not write
        sent = 0
        while transport.get_write_buffer_size() == 0:
            transport.write(b"y" * 65536)
            sent += 65536
            assert sent < 512 * 1024 * 1024, "the kernel took half a GiB: no backpressure seen"
        assert 0 < transport.get_write_buffer_size() <= 65536
    finally:
        transport.abort()
        peer.close()


async def test_a_flush_writes_every_frame_within_the_call() -> None:
    transport, peer = await _pair()
    try:
        core = FanOut()
        sub = Subscriber("c", transport, 1 << 20)
        core.add(sub)
        core.subscribe(sub, "t")
        frames = [encode_frame(f"message {i}".encode()) for i in range(10)]
        for f in frames:
            core.publish("t", None, f)
        assert core.flush() == 1
        assert sub.transport_buffered == 0
        assert core.writes == 1
        peer.settimeout(1.0)
        want = b"".join(frames)
        got = b""
        while len(got) < len(want):
            got += peer.recv(65536)
        assert got == want
    finally:
        transport.abort()
        peer.close()
