"""The heartbeat timer on a manual clock: when pings go and when silent clients
are closed, to the wheel's resolution, without waiting for real time (the
socket tests in tests/server/test_heartbeat.py show the same over TCP).
Runs over both cores."""

from __future__ import annotations

from typing import Any

import pytest

from aiosrv.clock import ManualClock
from aiosrv.counters import Counters
from aiosrv.heartbeat import PING_FRAME, Heartbeat
from tests.core.conftest import FakeTransport, decode_frames


class Owner:
    """A connection as the heartbeat sees it, recording its close."""

    def __init__(self, id_: str) -> None:
        self.id = id_
        self.closing = False
        self.closed: list[tuple[int, str]] = []

    def close_soon(self, code: int, reason: str, *, drop_pending: bool = False) -> None:
        self.closing = True
        self.closed.append((code, reason))


class Rig:
    def __init__(self, impl: Any, interval: float, timeout: float) -> None:
        self.clock = ManualClock()
        self.core = impl.FanOut()
        self.counters = Counters()
        self.settings = (interval, timeout)
        self.draining = False
        self.flushes = 0
        self.heartbeat = Heartbeat(
            self.core,
            settings=lambda: self.settings,
            schedule_flush=self._flush,
            counters=self.counters,
            clock=self.clock,
            is_draining=lambda: self.draining,
        )
        self.heartbeat.configure()

    def _flush(self) -> None:
        self.flushes += 1
        self.core.flush(-1)

    def connect(self, impl: Any, name: str) -> tuple[Any, Owner]:
        owner = Owner(name)
        sub = impl.Subscriber(name, FakeTransport(), 1 << 20, owner)
        sub.last_seen = self.clock.time()
        self.core.add(sub)
        return sub, owner

    @property
    def tick(self) -> float:
        return float(self.core.heartbeat_tick)


def pings(sub: Any) -> int:
    return sum(1 for op, _ in decode_frames(sub.transport.data) if op == 0x9)


def test_pings_go_every_interval_and_silence_closes_at_the_timeout(impl: Any) -> None:
    rig = Rig(impl, interval=1.0, timeout=3.0)
    t0 = rig.clock.time()
    sub, owner = rig.connect(impl, "a")
    rig.heartbeat.start()
    tick = rig.tick
    assert tick == pytest.approx(1.0 / 8)
    rig.clock.advance(1.0 - tick)
    assert pings(sub) == 0
    rig.clock.advance(2 * tick)
    assert pings(sub) == 1
    assert sub.transport.writes[-1] == PING_FRAME
    rig.clock.advance(1.0)
    assert pings(sub) == 2
    # silent since it connected: closed once timeout has passed, not before
    rig.clock.advance(t0 + 3.0 - 2 * tick - rig.clock.time())
    assert owner.closed == []
    rig.clock.advance(3 * tick)
    assert owner.closed == [(4000, "heartbeat timeout")]
    assert rig.counters.heartbeat_timeouts == 1
    rig.clock.advance(10.0)
    assert owner.closed == [(4000, "heartbeat timeout")]  # once


def test_any_traffic_keeps_a_client_open(impl: Any) -> None:
    rig = Rig(impl, interval=0.2, timeout=0.6)
    sub, owner = rig.connect(impl, "talker")
    _, quiet_owner = rig.connect(impl, "quiet")
    rig.heartbeat.start()
    for _ in range(20):  # 4 s, a message every 0.2 s, never a pong
        rig.clock.advance(0.2)
        sub.last_seen = rig.clock.time()
    assert owner.closed == []
    assert quiet_owner.closed == [(4000, "heartbeat timeout")]
    assert pings(sub) >= 15


def test_nothing_is_closed_while_draining(impl: Any) -> None:
    rig = Rig(impl, interval=0.2, timeout=0.4)
    _, owner = rig.connect(impl, "a")
    rig.draining = True
    rig.heartbeat.start()
    rig.clock.advance(2.0)
    assert owner.closed == []
    rig.draining = False
    rig.clock.advance(rig.tick * 2)
    assert owner.closed == [(4000, "heartbeat timeout")]


def test_a_reload_brings_pings_forward(impl: Any) -> None:
    rig = Rig(impl, interval=30.0, timeout=90.0)
    sub, _ = rig.connect(impl, "a")
    rig.heartbeat.start()
    rig.clock.advance(1.0)
    assert pings(sub) == 0
    rig.settings = (0.5, 90.0)
    rig.heartbeat.reschedule()
    rig.clock.advance(0.5 + 0.1)
    assert pings(sub) == 1
    assert rig.flushes >= 1


async def test_stop_cancels_the_timer(impl: Any) -> None:
    rig = Rig(impl, interval=0.2, timeout=0.4)
    sub, owner = rig.connect(impl, "a")
    rig.heartbeat.start()
    assert rig.heartbeat.running
    await rig.heartbeat.stop()
    assert not rig.heartbeat.running
    assert rig.clock.pending() == 0
    rig.clock.advance(5.0)
    assert pings(sub) == 0 and owner.closed == []
