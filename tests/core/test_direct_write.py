"""The core writes to the socket itself while the transport holds nothing.

Through both twins, on real non-blocking socket pairs: the frames go out with
``writev`` (no join, no transport call), the remainder of a partial write goes
to the transport's buffer, and the transport is used whenever it holds data or
is closing, so the byte order on the socket is always the order of queuing.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.core.conftest import FakeTransport


class SocketTransport(FakeTransport):
    """A FakeTransport in front of a real socket: ``write`` records (as a
    transport would buffer) and the test decides what it reports."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def make_core(impl: ModuleType, a: socket.socket, limit: int = 1 << 30) -> tuple:
    core = impl.FanOut()
    transport = SocketTransport()
    sub = impl.Subscriber("c", transport, limit, None, False, a.fileno())
    core.add(sub)
    core.subscribe(sub, "t")
    return core, sub, transport


def test_frames_go_to_the_socket_in_one_writev(impl: ModuleType, pair) -> None:
    a, b = pair
    core, sub, transport = make_core(impl, a)
    frames = [impl.encode_frame(f"message {i}".encode()) for i in range(5)]
    for f in frames:
        core.publish("t", None, f)
    assert core.flush() == 1
    assert transport.writes == []
    assert core.writes == 1
    assert read_all(b) == b"".join(frames)
    assert sub.transport_buffered == 0


def test_a_partial_write_leaves_the_rest_to_the_transport(impl: ModuleType, pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    core, _, transport = make_core(impl, a)
    frames = [impl.encode_frame(bytes([65 + i % 26]) * (1000 + i)) for i in range(400)]
    for f in frames:
        core.publish("t", None, f)
    core.flush()
    assert len(transport.writes) == 1  # the remainder, in one piece
    on_socket = read_all(b)
    assert 0 < len(on_socket) < len(b"".join(frames))
    assert on_socket + transport.writes[0] == b"".join(frames)
    # the transport now holds data: what follows must queue behind it
    transport.buffer_size = len(transport.writes[0])
    late = impl.encode_frame(b"late")
    core.publish("t", None, late)
    core.flush()
    assert transport.writes[-1] == late
    assert read_all(b) == b""


def test_a_closing_transport_is_never_bypassed(impl: ModuleType, pair) -> None:
    a, b = pair
    core, _, transport = make_core(impl, a)
    transport.closing = True
    frame = impl.encode_frame(b"x")
    core.publish("t", None, frame)
    core.flush()
    assert transport.writes == [frame]
    assert read_all(b) == b""


def test_a_reset_peer_closes_the_subscriber(impl: ModuleType, pair) -> None:
    a, b = pair
    core, sub, _ = make_core(impl, a)
    b.close()
    core.publish("t", None, impl.encode_frame(b"x"))
    core.flush()
    assert sub.closed
    assert core.take_to_close() == [sub]


def test_more_frames_than_one_writev_takes(impl: ModuleType, pair) -> None:
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    frames = [impl.encode_frame(str(i).encode()) for i in range(impl.IOV_MAX * 2 + 7)]
    rest = impl.writev_frames(a.fileno(), frames)
    assert read_all(b) + rest == b"".join(frames)
    assert rest == b""
    assert impl.writev_frames(a.fileno(), []) == b""


def fill(sock: socket.socket) -> int:
    """Write to a non-blocking socket until the kernel takes no more."""
    n = 0
    while True:
        try:
            n += sock.send(b"\0" * 65536)
        except BlockingIOError:
            return n


def test_a_full_kernel_buffer_sends_everything_to_the_transport(impl: ModuleType, pair) -> None:
    a, b = pair
    core, sub, transport = make_core(impl, a)
    filled = fill(a)
    frames = [impl.encode_frame(f"m{i}".encode()) for i in range(3)]
    for f in frames:
        core.publish("t", None, f)
    core.flush()
    assert transport.writes == [b"".join(frames)]  # EAGAIN at once: all of it, in order
    assert len(read_all(b)) == filled
    assert sub.closed is False


def test_a_partial_write_in_a_later_writev_chunk(impl: ModuleType, pair) -> None:
    a, b = pair
    small = [impl.encode_frame(b"s") for _ in range(impl.IOV_MAX)]  # the first chunk: ~3 KiB
    large = [impl.encode_frame(bytes([i]) * 65536) for i in range(100)]  # more than any buffer
    frames = small + large
    rest = impl.writev_frames(a.fileno(), frames)
    on_socket = read_all(b)
    assert len(on_socket) > sum(map(len, small))  # the first chunk went whole
    assert rest  # the second did not
    assert on_socket + rest == b"".join(frames)


def test_only_plain_sockets_are_written_directly() -> None:
    from aiosrv.connection import socket_fd

    class Transport:
        def __init__(self, **extra: object) -> None:
            self.extra = extra

        def get_extra_info(self, name: str, default: object = None) -> object:
            return self.extra.get(name, default)

    with socket.socket() as s:
        assert socket_fd(Transport(socket=s)) == s.fileno()  # type: ignore[arg-type]
        assert socket_fd(Transport(socket=s, sslcontext=object())) == -1  # type: ignore[arg-type]
    assert socket_fd(Transport()) == -1  # type: ignore[arg-type]
    closed = socket.socket()
    closed.close()
    assert socket_fd(Transport(socket=closed)) == -1  # type: ignore[arg-type]
