"""The built-in sources' publishing rules on a manual clock, with snapshot
functions the test controls: what is published on which tick, without waiting
for real time (tests/server/test_sources.py shows the real types over
WebSocket)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiosrv.clock import ManualClock
from aiosrv.counters import Counters, Sampler
from aiosrv.errors import QueueFull
from aiosrv.sources import Sources


@dataclass
class Settings:
    enabled: bool = True
    interval: float = 1.0
    max_silence: float = 5.0


class Rig:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.values: dict[str, dict[str, Any]] = {"a": {"v": 1}, "b": {"v": 1}}
        self.counts: dict[str, int] = {}
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.refuse = False
        self.settings = Settings()
        self.draining = False
        self.counters = Counters()
        self.sources = Sources(
            {name: (lambda name=name: dict(self.values[name])) for name in self.values},
            publish=self._publish,
            type_counts=lambda: self.counts,
            settings=lambda: self.settings,
            sampler=Sampler(lambda: (0, 0, 0, 0), self.clock),
            counters=self.counters,
            clock=self.clock,
            is_draining=lambda: self.draining,
        )

    async def _publish(self, type_: str, payload: Any) -> None:
        if self.refuse:
            raise QueueFull("the broadcast queue is full")
        self.published.append((type_, payload))

    async def tick(self, seconds: float = 1.0) -> list[str]:
        """Move time on and run one tick; the types published in it."""
        self.clock.advance(seconds)
        before = len(self.published)
        await self.sources.tick(self.clock.time())
        return [t for t, _ in self.published[before:]]


async def test_first_tick_publishes_everything_then_only_changes() -> None:
    rig = Rig()
    assert await rig.tick() == ["a", "b"]
    assert await rig.tick() == []
    rig.values["b"] = {"v": 2}
    assert await rig.tick() == ["b"]
    assert rig.published[-1] == ("b", {"v": 2})
    assert rig.counters.published_sources == 3


async def test_volatile_fields_are_not_a_change() -> None:
    rig = Rig()
    await rig.tick()
    rig.values["a"] = {"v": 1, "timestamp": 123, "uptime_seconds": 9.5}
    assert await rig.tick() == []


async def test_an_unchanged_value_is_repeated_after_max_silence() -> None:
    rig = Rig()
    rig.settings.max_silence = 3.0
    await rig.tick()
    assert await rig.tick() == [] and await rig.tick() == []
    assert await rig.tick() == ["a", "b"]  # 3 s after the last


async def test_a_type_that_gains_subscribers_is_published_at_once() -> None:
    rig = Rig()
    rig.settings.max_silence = 3600
    await rig.tick()
    rig.counts = {"a": 1}
    assert await rig.tick() == ["a"]
    assert await rig.tick() == []  # not again while its count holds
    rig.counts = {"a": 0}
    assert await rig.tick() == []
    rig.counts = {"a": 1}
    assert await rig.tick() == ["a"]


async def test_disabled_or_draining_publishes_nothing() -> None:
    rig = Rig()
    rig.settings.enabled = False
    assert await rig.tick() == []
    rig.settings.enabled = True
    rig.draining = True
    assert await rig.tick() == []
    rig.draining = False
    assert await rig.tick() == ["a", "b"]


async def test_a_refused_publish_is_tried_again_next_tick() -> None:
    rig = Rig()
    rig.refuse = True
    assert await rig.tick() == []
    assert rig.counters.published_sources == 0
    rig.refuse = False
    assert await rig.tick() == ["a", "b"]


async def test_a_failing_publish_is_logged_once_per_cause(caplog) -> None:
    rig = Rig()
    rig.refuse = True
    with caplog.at_level("INFO", logger="aiosrv.sources"):
        for _ in range(5):
            await rig.tick()
        assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]  # a, b
        rig.refuse = False
        await rig.tick()
    assert [r.getMessage() for r in caplog.records[2:]] == [
        "built-in source a published again",
        "built-in source b published again",
    ]
