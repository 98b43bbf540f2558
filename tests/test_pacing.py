"""The flush pacer (aiosrv/pacing.py), sans-I/O: every time is given."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosrv.pacing import IDLE_WEIGHT, MAX_BURST, MIN_BURST, FlushPacer, PacerSettings

_cpu: dict[int, float] = {}  # the simulated thread CPU clock of each pacer


def flush(pacer: FlushPacer, start: float, cost: float, other_cpu: float = 0.0) -> float:
    """Record a flush of ``cost`` seconds at ``start``; the thread's CPU clock
    reads as if the loop had spent ``other_cpu`` seconds on other work since
    the previous flush began. Returns the end time."""
    cpu = _cpu.get(id(pacer), 0.0) + other_cpu
    pacer.record(start, start + cost, cpu, cpu + cost)
    _cpu[id(pacer)] = cpu + cost
    return start + cost


def make(share: float = 0.5, max_wait: float = 0.05, now: float = 0.0) -> FlushPacer:
    pacer = FlushPacer(PacerSettings(share=share, max_wait=max_wait), now)
    _cpu[id(pacer)] = 0.0
    return pacer


def test_light_load_never_waits() -> None:
    pacer = make()
    t = 0.0
    for _ in range(100):
        assert pacer.delay(t) == 0.0
        flush(pacer, t, 0.003)  # 3 ms of writing every 10 ms: 30% of the time
        t += 0.010
    assert pacer.paced == 0


def rested(share: float, cost: float) -> tuple[FlushPacer, float]:
    """A pacer that has seen flushes of ``cost`` and then a quiet spell: its
    credit is full (one flush's worth). Returns it and the time."""
    pacer = make(share=share)
    flush(pacer, 0.0, cost)
    assert pacer.credit(1.0) == pytest.approx(cost)
    return pacer, 1.0


def test_a_flush_right_after_another_waits_off_its_cost_at_half_share() -> None:
    pacer, t = rested(0.5, 0.004)
    assert pacer.delay(t) == 0.0
    end = flush(pacer, t, 0.004)  # paid by the credit
    assert pacer.delay(end) == 0.0
    end = flush(pacer, end, 0.004)  # a second one in a row runs into debt
    # a flush that took 4 ms buys 4 ms of other work at share 0.5
    assert pacer.delay(end) == pytest.approx(0.004)
    assert pacer.delay(end + 0.001) == pytest.approx(0.003)
    assert pacer.delay(end + 0.004) == 0.0


def test_the_share_sets_the_wait() -> None:
    pacer, end = rested(0.6, 0.006)
    # each 6 ms flush costs 6 ms x (1 - 0.6) / 0.6 = 4 ms of the 6 ms credit
    end = flush(pacer, end, 0.006)
    assert pacer.delay(end) == 0.0
    end = flush(pacer, end, 0.006)
    assert pacer.delay(end) == pytest.approx(0.002)


def test_idle_time_earns_at_most_one_flush_of_credit() -> None:
    pacer = make()
    end = flush(pacer, 0.0, 0.010)
    # a long quiet spell earns what one flush costs, not more
    assert pacer.credit(end + 60.0) == pytest.approx(0.010)
    end = flush(pacer, end + 60.0, 0.010)
    assert pacer.delay(end) == 0.0  # the credit paid for that one
    end = flush(pacer, end, 0.010)
    assert pacer.delay(end) > 0  # but not for a third in a row


def test_credit_before_any_flush_is_small() -> None:
    pacer = make(now=0.0)
    assert pacer.credit(100.0) == MIN_BURST


def test_the_wait_never_exceeds_max_wait() -> None:
    pacer = make(share=0.1, max_wait=0.02)
    end = flush(pacer, 0.0, 0.001)
    end = flush(pacer, end, 0.050)  # a 50 ms flush at share 0.1 owes 450 ms
    assert pacer.delay(end) == 0.02


def test_configure_checks_the_settings() -> None:
    pacer = make()
    with pytest.raises(ValueError, match="share must be in"):
        pacer.configure(PacerSettings(share=0.0))
    with pytest.raises(ValueError, match="max_wait must be"):
        pacer.configure(PacerSettings(share=0.5, max_wait=-1))
    with pytest.raises(ValueError, match="share must be in"):
        FlushPacer(PacerSettings(share=1.5))
    pacer.configure(PacerSettings(share=0.25, max_wait=0.01))
    assert pacer.share == 0.25
    assert pacer.settings.max_wait == 0.01


@settings(max_examples=40, deadline=None)
@given(
    receivers_cost=st.floats(0.0005, 0.040),  # seconds per flush, whatever it carries
    per_message=st.floats(0.0, 0.0002),  # and per message it carries
    rate=st.floats(10, 5000),  # messages per second, evenly spaced
    share=st.floats(0.1, 1.0),
)
def test_a_simulated_loop_keeps_the_share_and_the_wait_bound(
    receivers_cost: float, per_message: float, rate: float, share: float
) -> None:
    """Messages arrive evenly; each flush costs a fixed part (one write per
    receiver) plus a part per message it carries. Over 2 simulated seconds:
    every message is written; none waits longer than max_wait plus the flush
    in progress when it came; and writing takes at most the share of the time,
    or, when max_wait is too short for that, one flush per max_wait."""
    max_wait = 0.05
    pacer = make(share=share, max_wait=max_wait)
    gap = 1.0 / rate
    t = 0.0
    next_msg = 0.0
    pending: list[float] = []  # arrival times of messages not yet written
    due: float | None = None  # a paced flush waiting for this time
    worst_wait = 0.0
    worst_cost = 0.0
    written = 0
    sent = 0
    horizon = 2.0
    while next_msg < horizon or pending:
        # next event: a message, or a paced flush coming due
        if due is not None and (due <= next_msg or next_msg >= horizon):
            t = max(t, due)
            due = None
        else:
            t = max(t, next_msg)
            # every message that arrived by now (during a flush, several) is
            # fanned out before the next decision, as the hub's drain does
            while next_msg <= t and next_msg < horizon:
                pending.append(next_msg)
                sent += 1
                next_msg += gap
            if due is not None:
                continue
            delay = pacer.delay(t)
            if delay > 0:
                due = t + delay
                continue
        cost = receivers_cost + per_message * len(pending)
        worst_wait = max(worst_wait, t - min(pending))
        worst_cost = max(worst_cost, cost)
        pacer.record(t, t + cost)
        written += len(pending)
        pending.clear()
        t += cost
    assert written == sent
    assert worst_wait <= max_wait + worst_cost + 1e-9
    fraction = max(share, worst_cost / (worst_cost + max_wait))
    assert pacer.seconds_writing <= fraction * t + 2 * worst_cost + MIN_BURST


def test_idle_time_earns_one_pass_over_every_connection() -> None:
    pacer = make(share=0.5, max_wait=0.05)
    pacer.pass_size = 10_000
    pacer.record(0.0, 0.005, 0.0, 0.005, written=1000)  # a chunk: 5 us per connection
    assert pacer.write_cost == pytest.approx(5e-6)
    # a pass over 10,000 connections costs 50 ms: that much credit, no more
    assert pacer.credit(10.0) == pytest.approx(0.05)
    pacer.pass_size = 20_000  # more than max_wait: a pass still goes at once
    assert pacer.credit(20.0) == pytest.approx(0.1)
    pacer.pass_size = 10_000_000  # capped
    assert pacer.credit(30.0) == MAX_BURST
    pacer.pass_size = 100
    assert pacer.credit(40.0) == MIN_BURST  # 0.5 ms a pass; the floor is 1 ms

def test_an_overload_leaves_no_debt_beyond_max_wait() -> None:
    pacer = make(share=0.1, max_wait=0.05)
    t = 0.0
    for _ in range(100):  # 20 ms flushes back to back at share 0.1: 180 ms owed each
        t = flush(pacer, t, 0.020)
    assert pacer.credit(t) == pytest.approx(-0.05)
    # the load is gone: one max_wait of quiet and the next message goes at once
    assert pacer.delay(t + 0.05) == 0.0


def indebted(cpu: float) -> tuple[FlushPacer, float]:
    """A pacer (share 0.5) 4 ms in debt at the time it returns, the thread's
    CPU clock reading ``cpu`` when its last flush ended."""
    pacer = make(share=0.5)
    pacer.record(0.0, 0.004, cpu - 0.008, cpu - 0.004)  # a 4 ms flush
    assert pacer.credit(1.0, cpu - 0.004) == pytest.approx(0.004)  # rested: one pass
    pacer.record(1.0, 1.004, cpu - 0.004, cpu)
    pacer.record(1.004, 1.008, cpu, cpu + 0.004)  # back to back: 4 ms of debt
    assert pacer.credit(1.008, cpu + 0.004) == pytest.approx(-0.004)
    return pacer, 1.008


def test_a_busy_loop_pays_its_debt_but_earns_no_credit() -> None:
    """Time the loop spends on other work (requests waiting) pays a flush's
    debt off second for second, but earns nothing beyond: no flushes back to
    back for a loop that is behind."""
    pacer, t = indebted(cpu=5.0)
    cpu = 5.004
    assert pacer.delay(t + 0.002, cpu + 0.002) == pytest.approx(0.002)
    assert pacer.delay(t + 0.010, cpu + 0.010) == 0.0
    assert pacer.credit(t + 0.010, cpu + 0.010) == pytest.approx(0.0)


def test_idle_time_pays_faster_and_earns_a_pass() -> None:
    pacer, t = indebted(cpu=5.0)
    cpu = 5.004  # the loop does nothing from here on
    idle_to_pay = 0.004 / IDLE_WEIGHT
    assert pacer.delay(t + idle_to_pay / 2, cpu) == pytest.approx(0.002)
    assert pacer.delay(t + idle_to_pay, cpu) == 0.0
    # and more idle time earns credit, as fast, up to one pass (4 ms here)
    assert pacer.credit(t + idle_to_pay + 0.001 / IDLE_WEIGHT, cpu) == pytest.approx(0.001)
    assert pacer.credit(t + 1.0, cpu) == pytest.approx(0.004)


def test_light_load_between_long_passes_writes_each_pass_at_once() -> None:
    """10,000 subscribers at 10 messages/s: a pass of 10 chunks costs 60 ms,
    then 40 ms of idle. The idle time must earn the whole next pass, chunk
    after chunk with no wait (it did not when idle earned at one to one)."""
    pacer = make(share=0.5)
    pacer.pass_size = 10_000
    t = cpu = 0.0
    for _chunk in range(10):  # the first pass measures what writes cost
        pacer.record(t, t + 0.006, cpu, cpu + 0.006, written=1000)
        t += 0.006
        cpu += 0.006
    t += 1.0
    for _message in range(20):
        for _chunk in range(10):
            assert pacer.delay(t, cpu) == 0.0
            pacer.record(t, t + 0.006, cpu, cpu + 0.006, written=1000)
            t += 0.006
            cpu += 0.006
        t += 0.040  # idle until the next message
