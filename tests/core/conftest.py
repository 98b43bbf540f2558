"""Fixtures of the sans-I/O tests: both fan-out cores and a fake transport.

Every test that takes ``impl`` runs once per implementation of the core:
``aiosrv._fanout_py`` and the compiled ``aiosrv._fanout_c``. The compiled one
is imported directly, so a missing or broken extension makes those tests fail
(never skip), except when ``AIOSRV_NO_EXTENSIONS=1`` says this is a pure-Python
run, where only the pure twin is exercised.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

NO_EXTENSIONS = os.environ.get("AIOSRV_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}

PURE = "aiosrv._fanout_py"
COMPILED = "aiosrv._fanout_c"
IMPLEMENTATIONS = [PURE] if NO_EXTENSIONS else [PURE, COMPILED]


class TransportGone(ConnectionResetError):
    """What a FakeTransport raises when told to fail."""


class FakeTransport:
    """The two methods the core uses of an asyncio transport, observable.

    ``writes`` records every ``write`` call; ``buffer_size`` is what
    ``get_write_buffer_size`` answers (set it to simulate a kernel that does not
    take everything); ``fail_write`` / ``fail_size`` make those calls raise.
    """

    def __init__(self, buffer_size: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffer_size = buffer_size
        self.fail_write = False
        self.fail_size = False
        self.size_calls = 0

    def write(self, data: bytes) -> None:
        if self.fail_write:
            raise TransportGone("transport closed")
        assert type(data) is bytes
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        self.size_calls += 1
        if self.fail_size:
            raise TransportGone("transport closed")
        return self.buffer_size

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split server-to-client frames (RFC 6455 5.2, unmasked) into (opcode, payload).

    Asserts FIN is set, RSV bits and MASK are clear, and the extended length is
    in its shortest form, as a server must send it.
    """
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80, "FIN must be set"
        assert b0 & 0x70 == 0, "RSV bits must be clear"
        assert b1 & 0x80 == 0, "server frames are not masked"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            n = int.from_bytes(data[i : i + 2], "big")
            assert n >= 126
            i += 2
        elif n == 127:
            n = int.from_bytes(data[i : i + 8], "big")
            assert n >= 65536
            i += 8
        payload = data[i : i + n]
        assert len(payload) == n, "truncated frame"
        out.append((b0 & 0x0F, payload))
        i += n
    return out


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda name: name.rsplit(".", 1)[1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The fan-out core module under test (pure, then compiled)."""
    return importlib.import_module(request.param)


@pytest.fixture
def fan(impl: ModuleType):
    return impl.FanOut()


# The equivalence test compares the two cores; a pure-Python run (CI's second
# pass, AIOSRV_NO_EXTENSIONS=1) has only one, so it does not collect it.
collect_ignore = ["test_equivalence.py"] if NO_EXTENSIONS else []
