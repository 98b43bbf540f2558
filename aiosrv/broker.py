"""The broker interface: where publications get their ``seq``, are kept in
history, and reach every instance.

Engines live beside it, one per file: ``broker_memory.py`` (embedded, the
default) and, for several processes or hosts, the Redis engine. Every engine
passes the same test suite (``tests/broker``).

Contract for engines:

* :meth:`Broker.publish` assigns the next ``seq`` of the type (one more than
  the last, across every instance sharing the engine), stores the message in
  the type's history *before* it returns, and makes it reach every instance's
  ``deliver`` callback, this one included, in ``seq`` order per type.
* :meth:`Broker.history` answers from that history, oldest first.
* ``deliver`` is called on the event loop, never concurrently with itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Publication:
    """One published message, encoded once (``data`` is the whole data message)."""

    type: str
    seq: int
    timestamp: int
    key: str | None
    data: bytes


@dataclass(slots=True)
class HistoryPage:
    """What :meth:`Broker.history` found for a type."""

    messages: list[Publication]
    oldest: int  # oldest seq still in history, 0 when history is empty
    latest: int  # last seq assigned to the type, 0 when none ever was


@dataclass(slots=True)
class BrokerHealth:
    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


Deliver = Callable[[Publication], None]


class Broker(ABC):
    """Base class of broker engines."""

    name: str = "broker"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def bind(self, deliver: Deliver) -> None:
        """Set the callback that receives every publication; call before start()."""
        self._deliver = deliver

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and begin delivering."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release connections."""

    @abstractmethod
    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        """Publish one message (``payload``: a JSON value, or bytes of JSON,
        encoded into the data message once); see the module contract."""

    async def publish_many(self, items: Sequence[tuple[str, Any, str | None]]) -> list[Publication]:
        """Publish several messages in order; engines may do it in one round trip."""
        return [await self.publish(t, p, k) for t, p, k in items]

    @abstractmethod
    async def history(self, type_: str, limit: int, since: int | None = None) -> HistoryPage:
        """The newest ``limit`` messages of a type, or with ``since`` the first
        ``limit`` messages after ``since``; oldest first."""

    @abstractmethod
    def health(self) -> BrokerHealth:
        """Whether the engine can publish now, and why not."""

    @abstractmethod
    def set_history_size(self, size: int) -> None:
        """Apply a new history size (hot reload)."""

    def stats(self) -> dict[str, Any]:
        """Engine details for ``/stats`` (types, history sizes, connection state)."""
        return {"engine": self.name}
