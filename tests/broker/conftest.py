"""The engine contract suite: every test here runs once per broker engine.

``engine`` is a factory: ``broker = await engine(history_size)`` builds an
engine with that history window, binds a :class:`Recorder` to it
(``engine.recorder(broker).delivered`` lists what reached ``deliver``),
starts it, and closes it at teardown.

To run the suite against another engine, add one line to ``ENGINES``: its
name and an async factory ``(history_size) -> Broker`` returning a fresh,
empty engine (not yet started).

The Redis engine runs on one real ``redis-server`` started for the test
session on a free port (``tests/redis_support.py``; a missing binary fails
the run, it never skips), each engine with a key prefix of its own, so tests never see each
other's data. Engines that deliver only the types they listen to get every
type a test uses listened to (``TYPES``) when started.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from aiosrv.broker import Broker, Publication
from aiosrv.broker_memory import MemoryBroker
from aiosrv.broker_redis import RedisBroker
from aiosrv.config import default_config
from tests.redis_support import RedisServer

#: The types the contract tests publish to.
TYPES = ("t", "a", "b", "c", "x", "y", "z")


async def memory_engine(history_size: int) -> Broker:
    return MemoryBroker(history_size)


_redis: RedisServer | None = None
_prefixes = itertools.count(1)


def session_redis() -> RedisServer:
    """One redis-server for the whole test session (stopped at its end)."""
    global _redis
    if _redis is None or not _redis.running:
        _redis = RedisServer().start()
    return _redis


async def redis_engine(history_size: int) -> Broker:
    r = session_redis()
    config = default_config().replace(
        **{
            "history.size": history_size,
            "redis.host": r.host,
            "redis.port": r.port,
            "redis.channel_prefix": f"contract{next(_prefixes)}",
        }
    )
    return RedisBroker(config)


#: Engine name -> async factory of a fresh, unstarted engine.
ENGINES: dict[str, Callable[[int], Awaitable[Broker]]] = {
    "memory": memory_engine,
    "redis": redis_engine,
}


@pytest.fixture(scope="session", autouse=True)
def _stop_session_redis() -> Iterator[None]:
    yield
    if _redis is not None:
        _redis.close()


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
            await broker.listen(TYPES)
        return broker

    def recorder(self, broker: Broker) -> Recorder:
        return self._recorders[id(broker)]


@pytest.fixture(params=sorted(ENGINES))
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engines]:
    engines = Engines(request.param)
    yield engines
    for broker in engines.made:
        await broker.close()
