"""Shared fixtures: a real server on a free loopback port, and real clients.

``running_server(**config)`` starts ``create_app`` on 127.0.0.1 with port 0
(WebSocket, API and metrics on one listener) through aiohttp's TestServer,
which is a real TCP listener: clients connect with the ``websockets`` library
or aiohttp's client over the socket. Its runner is aiosrv's
:class:`~aiosrv.guard.GuardedRunner`, as in ``aiosrv serve`` (request heads
bounded before aiohttp reads them); with ``security__ssl_certfile`` set it
serves TLS (``wss://``, ``https://``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from aiosrv import SERVER, create_app, default_config
from aiosrv.clock import Clock, LoopClock
from aiosrv.guard import GuardedRunner
from aiosrv.listen import server_ssl_context
from aiosrv.server import Server

#: The event loop every async test runs on: uvloop (what the server runs on in
#: production) unless AIOSRV_TEST_LOOP=asyncio; ``make test`` runs the compiled
#: pass on uvloop and the pure-Python pass on asyncio's own loop.
TEST_LOOP = os.environ.get("AIOSRV_TEST_LOOP", "uvloop").strip().lower()
if TEST_LOOP not in {"uvloop", "asyncio"}:
    raise pytest.UsageError(f"AIOSRV_TEST_LOOP must be uvloop or asyncio, not {TEST_LOOP!r}")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if TEST_LOOP == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage after every test (after its other fixtures are torn down).

    ResourceWarning is an error (pyproject.toml, filterwarnings), but an
    unclosed socket or transport held in a reference cycle only warns when
    the garbage collector frees it, which would otherwise happen during some
    later test, which would then fail instead of the one that leaked.
    """
    yield
    gc.collect()


# Tests never read the developer's config file or environment by accident.
for _name in list(os.environ):
    if _name in {"AIOSRV_CONFIG"}:
        del os.environ[_name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GuardedTestServer(TestServer):
    """aiohttp's TestServer with aiosrv's runner (a guard before each request handler)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GuardedRunner(self.app, **kwargs)


@dataclass
class Running:
    test_server: TestServer
    server: Server
    tls: bool = False

    @property
    def port(self) -> int:
        return int(self.test_server.port)  # type: ignore[arg-type]

    @property
    def ws_url(self) -> str:
        return f"ws{'s' if self.tls else ''}://127.0.0.1:{self.port}/ws/realtime"

    def http(self, path: str) -> str:
        return f"http{'s' if self.tls else ''}://127.0.0.1:{self.port}{path}"


StartServer = Callable[..., Awaitable[Running]]


class JumpClock(LoopClock):
    """The real clock, plus jumps the test makes: a server on it sees time
    pass at once (a grace period, a timeout) without the test waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
async def running_server() -> AsyncIterator[StartServer]:
    started: list[TestServer] = []

    async def start(clock: Clock | None = None, **settings: Any) -> Running:
        """Start a server (on ``clock``, the real one unless given);
        ``settings`` are dotted config keys with '.' written as '__', e.g.
        ``websocket__max_connections=2``."""
        dotted = {k.replace("__", "."): v for k, v in settings.items()}
        dotted.setdefault("sources.enabled", False)
        config = default_config().replace(**dotted)
        app = create_app(config, clock=clock)
        ts = GuardedTestServer(app, host="127.0.0.1", port=0)
        ssl_context = server_ssl_context(config.security)
        await ts.start_server(ssl=ssl_context)
        started.append(ts)
        return Running(ts, app[SERVER], tls=ssl_context is not None)

    yield start
    for ts in reversed(started):
        await ts.close()


# --- Redis for tests: real redis-server processes on free ports (tests/redis_support.py) ---
from tests.redis_support import (  # noqa: E402, F401
    redis_factory,
    redis_sentinel,
    redis_sentinel_factory,
    redis_server,
)
