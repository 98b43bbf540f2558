"""Built-in data sources: the ``status``, ``stats`` and ``health`` types.

Every ``sources.interval`` seconds the server samples its own state (the same
snapshots ``/status``, ``/stats`` and ``/health`` answer with) and publishes a
type when its value changed, and at least every ``sources.max_silence``
seconds, and when it gained subscribers since the last sample, so a new
subscriber gets its first message within one interval.
Fields that change on every sample (timestamps, uptime) do not count as a
change. The interval's own delay also gives the event loop lag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson

from .clock import Clock
from .counters import Counters, Sampler
from .errors import ClientError

log = logging.getLogger("aiosrv.sources")

VOLATILE = ("timestamp", "uptime_seconds")

Snapshot = Callable[[], dict[str, Any]]


class SourceSettings(Protocol):
    """The ``sources`` section of the configuration."""

    @property
    def enabled(self) -> bool: ...

    @property
    def interval(self) -> float: ...

    @property
    def max_silence(self) -> float: ...


def _signature(snapshot: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {k: v for k, v in snapshot.items() if k not in VOLATILE}, option=orjson.OPT_SORT_KEYS
    )


class Sources:
    """Publishes ``snapshots`` (type -> function making its value) through
    ``publish`` while ``settings().enabled``; ``type_counts()`` gives the
    subscribers per type (a type that gained some is published at once)."""

    def __init__(
        self,
        snapshots: Mapping[str, Snapshot],
        publish: Callable[[str, Any], Awaitable[Any]],
        type_counts: Callable[[], Mapping[str, int]],
        settings: Callable[[], SourceSettings],
        sampler: Sampler,
        counters: Counters,
        clock: Clock,
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.snapshots = dict(snapshots)
        self._publish = publish
        self._type_counts = type_counts
        self._settings = settings
        self.sampler = sampler
        self.counters = counters
        self.clock = clock
        self._is_draining = is_draining
        self._task: asyncio.Task[None] | None = None
        self._last_sig: dict[str, bytes] = {}
        self._last_sent: dict[str, float] = {}
        self._subscribers: dict[str, int] = {}
        self._failing: dict[str, str] = {}  # type -> why its last publish failed
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="aiosrv-sources")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        clock = self.clock
        while True:
            interval = self._settings().interval
            expected = clock.time() + interval
            await asyncio.sleep(interval)
            self.sampler.loop_lag = max(0.0, clock.time() - expected)
            try:
                await self.tick(clock.time())
            except Exception:
                log.exception("built-in sources tick failed")

    async def tick(self, now: float) -> int:
        """Sample and publish what changed; returns how many types were published."""
        self.sampler.sample(force=True)
        cfg = self._settings()
        if not cfg.enabled or self._is_draining():
            return 0
        n = 0
        # Sample every type before publishing any: otherwise the later snapshots
        # count this tick's own publications (queue depth) as a change.
        snaps = [(type_, make()) for type_, make in self.snapshots.items()]
        # A type that gained subscribers is published now, changed or not, so a
        # new subscriber waits one interval for its first value, not max_silence.
        counts = self._type_counts()
        for type_, snap in snaps:
            sig = _signature(snap)
            last = self._last_sent.get(type_)
            gained = counts.get(type_, 0) > self._subscribers.get(type_, 0)
            self._subscribers[type_] = counts.get(type_, 0)
            if (
                not gained
                and sig == self._last_sig.get(type_)
                and last is not None
                and now - last < cfg.max_silence
            ):
                continue
            try:
                await self._publish(type_, snap)
            except ClientError as exc:  # queue full or broker down: try next tick
                if self._failing.get(type_) != exc.message:  # once per cause, not per tick
                    log.warning("built-in source %s not published: %s", type_, exc.message)
                    self._failing[type_] = exc.message
                continue
            if self._failing.pop(type_, None) is not None:
                log.info("built-in source %s published again", type_)
            self._last_sig[type_] = sig
            self._last_sent[type_] = now
            self.counters.published_sources += 1
            n += 1
        self.published += n
        return n
