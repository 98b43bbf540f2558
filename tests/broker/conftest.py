"""The engine contract suite: every test here runs once per broker engine.

``engine`` is a factory: ``broker = await engine(history_size)`` builds an
engine with that history window, binds a :class:`Recorder` to it
(``engine.recorder(broker).delivered`` lists what reached ``deliver``),
starts it, and closes it at teardown.

To run the suite against another engine, add one line to ``ENGINES``: its
name and an async factory ``(history_size) -> Broker`` returning a fresh,
empty engine (not yet started). The Redis engine, for example, would add::

    "redis": lambda size: redis_engine(size),

where ``redis_engine`` builds a ``RedisBroker`` on a test Redis with a key
prefix of its own (and skips when no ``redis-server`` is available).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from aiosrv.broker import Broker, Publication
from aiosrv.broker_memory import MemoryBroker


async def memory_engine(history_size: int) -> Broker:
    return MemoryBroker(history_size)


#: Engine name -> async factory of a fresh, unstarted engine.
ENGINES: dict[str, Callable[[int], Awaitable[Broker]]] = {
    "memory": memory_engine,
}


class Recorder:
    """The ``deliver`` callback of an engine under test."""

    def __init__(self) -> None:
        self.delivered: list[Publication] = []

    def __call__(self, pub: Publication) -> None:
        self.delivered.append(pub)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[Publication]:
        """Wait until ``count`` publications were delivered (an engine may
        deliver after publish returns); fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.delivered)} of {count} publications delivered in {timeout}s"
                )
            await asyncio.sleep(0.005)
        return self.delivered


class Engines:
    """What the ``engine`` fixture gives a test: ``await engine(history_size)``
    makes a started engine; ``engine.recorder(broker)`` is its ``deliver``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.made: list[Broker] = []
        self._recorders: dict[int, Recorder] = {}

    async def __call__(self, history_size: int = 50, start: bool = True) -> Broker:
        broker = await ENGINES[self.name](history_size)
        recorder = self._recorders[id(broker)] = Recorder()
        broker.bind(recorder)
        self.made.append(broker)
        if start:
            await broker.start()
        return broker

    def recorder(self, broker: Broker) -> Recorder:
        return self._recorders[id(broker)]


@pytest.fixture(params=sorted(ENGINES))
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engines]:
    engines = Engines(request.param)
    yield engines
    for broker in engines.made:
        await broker.close()
