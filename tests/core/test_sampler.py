"""The sampler's rates on a manual clock: events per second between samples,
smoothed, and no more than one reading per half second unless forced."""

from __future__ import annotations

import pytest

from aiosrv.clock import ManualClock
from aiosrv.counters import Sampler


def test_rates_follow_the_totals_over_the_clock() -> None:
    clock = ManualClock()
    totals = [0, 0, 0, 0]  # published, delivered, received, errors
    s = Sampler(lambda: (totals[0], totals[1], totals[2], totals[3]), clock)
    s.sample(force=True)
    clock.advance(1.0)
    totals[:] = [100, 1000, 50, 5]
    s.sample()
    assert s.published.value == pytest.approx(100.0)
    assert s.delivered.value == pytest.approx(1000.0)
    assert s.error_rate == pytest.approx(0.1)
    clock.advance(2.0)
    totals[:] = [100, 1000, 50, 5]  # quiet: the smoothed rate halves, not zero
    s.sample()
    assert s.published.value == pytest.approx(50.0)
    assert s.rss > 0


def test_readings_are_at_most_every_half_second_unless_forced() -> None:
    clock = ManualClock()
    calls = []

    def totals() -> tuple[int, int, int, int]:
        calls.append(clock.time())
        return (0, 0, 0, 0)

    s = Sampler(totals, clock)
    s.sample()
    clock.advance(0.4)
    s.sample()
    assert len(calls) == 1
    s.sample(force=True)
    assert len(calls) == 2
    clock.advance(0.5)
    s.sample()
    assert len(calls) == 3
