"""The heartbeat's timing wheel in the core (``FanOut.heartbeat``), both twins.

Times are plain floats here (the server passes the loop's clock): pings are
due ``interval`` after a subscriber's ``last_seen`` at registration and then
every ``interval``; a subscriber silent for ``timeout`` is reported once.
"""

from __future__ import annotations

import sys
from types import ModuleType

import pytest

from tests.core.conftest import FakeTransport, decode_frames


def ping_frame(impl: ModuleType) -> bytes:
    return impl.encode_frame(b"", impl.OP_PING)


def make(
    impl: ModuleType, interval: float, timeout: float, seen: list[float], limit: int = 1 << 20
):
    fan = impl.FanOut()
    fan.configure_heartbeat(interval, timeout, 0.0)
    subs, transports = [], []
    for i, t in enumerate(seen):
        tr = FakeTransport()
        s = impl.Subscriber(f"s{i}", tr, limit)
        s.last_seen = t
        fan.add(s)
        subs.append(s)
        transports.append(tr)
    return fan, subs, transports


def pinged(transports: list[FakeTransport]) -> list[int]:
    return [sum(op == 0x9 for op, _ in decode_frames(t.data)) for t in transports]


def test_tick_is_an_eighth_of_the_shorter_setting_within_bounds(impl: ModuleType) -> None:
    fan = impl.FanOut()
    assert fan.heartbeat_tick == 1.0  # defaults 30 s / 60 s: capped at 1 s
    fan.configure_heartbeat(0.2, 0.6, 0.0)
    assert fan.heartbeat_tick == pytest.approx(0.025)
    fan.configure_heartbeat(0.01, 0.02, 0.0)
    assert fan.heartbeat_tick == 0.005
    for bad in [(0, 1), (1, 0), (-1, 5)]:
        with pytest.raises(ValueError, match="must be > 0"):
            fan.configure_heartbeat(bad[0], bad[1], 0.0)


def test_first_ping_one_interval_after_registration_then_every_interval(
    impl: ModuleType,
) -> None:
    fan, _, (tr,) = make(impl, 10.0, 100.0, [0.0])
    ping = ping_frame(impl)
    for now in [1.0, 5.0, 9.0, 9.9]:
        assert fan.heartbeat(now, ping) == []
    fan.flush()
    assert pinged([tr]) == [0]
    fan.heartbeat(10.0, ping)
    fan.flush()
    assert pinged([tr]) == [1]
    assert fan.pings == 1
    for now in [12.0, 15.0, 19.9]:
        fan.heartbeat(now, ping)
    fan.flush()
    assert pinged([tr]) == [1]
    fan.heartbeat(20.5, ping)
    fan.flush()
    assert pinged([tr]) == [2]


def test_pings_are_spread_as_connections_arrived(impl: ModuleType) -> None:
    # ten subscribers registered a second apart are pinged a second apart,
    # not all in one burst
    fan, _, transports = make(impl, 10.0, 100.0, [float(i) for i in range(10)])
    ping = ping_frame(impl)
    for k in range(10):
        fan.heartbeat(10.0 + k, ping)
        fan.flush()
        assert pinged(transports) == [1] * (k + 1) + [0] * (9 - k)


def test_silent_subscriber_reported_once_after_the_timeout(impl: ModuleType) -> None:
    fan, (_quiet, talker), _ = make(impl, 1.0, 3.0, [0.0, 0.0])
    ping = ping_frame(impl)
    out = []
    now = 0.0
    while now < 10.0:
        now += 0.25
        talker.last_seen = now - 0.1  # traffic all the time, no bucket move
        out.extend((now, s.conn_id) for s in fan.heartbeat(now, ping))
    assert [c for _, c in out] == ["s0"]
    when = out[0][0]
    assert 3.0 <= when <= 3.0 + fan.heartbeat_tick + 0.25
    assert fan.pings == 2 + 10  # s0 at 1 and 2 s (3 s is its timeout), the talker every second


def test_traffic_since_the_bucket_was_set_postpones_the_timeout(impl: ModuleType) -> None:
    fan, (s,), _ = make(impl, 5.0, 5.0, [0.0])
    ping = ping_frame(impl)
    s.last_seen = 4.0
    assert fan.heartbeat(5.0, ping) == []  # due at 5 as of registration; talked at 4
    assert fan.heartbeat(8.9, ping) == []
    assert fan.heartbeat(9.5, ping) == [s]


def test_removed_subscriber_leaves_the_wheel(impl: ModuleType) -> None:
    fan, (a, b), transports = make(impl, 1.0, 2.0, [0.0, 0.0])
    refs = sys.getrefcount(a)
    fan.remove(a)
    # the registry and the wheel's bucket both let go of it (no subscription held)
    assert sys.getrefcount(a) == refs - 2
    ping = ping_frame(impl)
    assert fan.heartbeat(1.0, ping) == []
    assert fan.heartbeat(5.0, ping) == [b]
    fan.flush()
    assert pinged(transports) == [0, 1]
    assert fan.heartbeat(50.0, ping) == []


def test_time_jump_past_a_whole_turn(impl: ModuleType) -> None:
    fan, _, _ = make(impl, 1.0, 2.0, [0.0, 0.5, 1.7])
    assert fan.heartbeat(0.1, ping_frame(impl)) == []
    # the wheel spans ~2 s; an hour later every subscriber is overdue
    assert sorted(s.conn_id for s in fan.heartbeat(3600.0, ping_frame(impl))) == ["s0", "s1", "s2"]


def test_settings_longer_than_the_wheel(impl: ModuleType) -> None:
    # 1 s ticks, capped at 4096 buckets: a 3-hour timeout goes round several
    # times and still fires on time
    fan, _, (tr,) = make(impl, 3600.0, 3 * 3600.0, [0.0])
    ping = ping_frame(impl)
    now = 0.0
    fired = None
    while now < 4 * 3600 and fired is None:
        now += 1.0
        if fan.heartbeat(now, ping):
            fired = now
    fan.flush()
    assert fired == 3 * 3600.0
    assert pinged([tr]) == [2]  # at 1 h and 2 h (3 h is the timeout)


def test_reconfigure_brings_pings_forward(impl: ModuleType) -> None:
    fan, _, (tr,) = make(impl, 30.0, 60.0, [0.0])
    ping = ping_frame(impl)
    fan.heartbeat(5.0, ping)
    fan.configure_heartbeat(1.0, 60.0, 5.0)
    fan.heartbeat(5.5, ping)
    fan.flush()
    assert pinged([tr]) == [0]
    fan.heartbeat(6.0, ping)
    fan.flush()
    assert pinged([tr]) == [1]
    # a longer interval does not push a due ping back past its old time
    fan.configure_heartbeat(600.0, 1200.0, 6.0)
    fan.heartbeat(8.0, ping)
    fan.flush()
    assert pinged([tr]) == [2]


def test_ping_to_a_slow_subscriber_counts_against_its_limit(impl: ModuleType) -> None:
    fan, (slow, fast), transports = make(impl, 1.0, 100.0, [0.0, 0.0], limit=10)
    transports[0].buffer_size = 9  # the kernel took nothing of what it was given
    ping = ping_frame(impl)
    fan.send(slow, impl.encode_frame(b"1234567"))
    fan.flush()
    fan.heartbeat(1.0, ping)
    assert fan.take_to_close() == [slow]
    assert slow.overflowed
    fan.flush()
    assert pinged(transports) == [0, 1]
    assert fan.pings == 1
    # an overflowed subscriber is neither pinged nor reported again
    assert fan.heartbeat(500.0, ping) == [fast]
