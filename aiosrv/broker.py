"""The broker interface: where publications get their ``seq``, are kept in
history, and reach every instance.

Engines live beside it, one per file: ``broker_memory.py`` (embedded, the
default) and, for several processes or hosts, the Redis engine. Every engine
passes the same contract suite, ``tests/broker/`` (its ``conftest.py`` lists
the engines it runs against).

:class:`Broker` declares everything the rest of the server uses of an engine
(the hub, the server, the WebSocket connections, ``/stats`` and ``/health``):
``name``, :meth:`~Broker.bind`, :meth:`~Broker.start`, :meth:`~Broker.close`,
:meth:`~Broker.publish`, :meth:`~Broker.publish_many`,
:meth:`~Broker.history`, :meth:`~Broker.latest_seq`, :meth:`~Broker.health`,
:meth:`~Broker.set_history_size`, :meth:`~Broker.stats`, and the interest
calls :meth:`~Broker.listening`, :meth:`~Broker.listen` and
:meth:`~Broker.unlisten`. Nothing else may be assumed of an engine.

Contract for engines:

* **Numbering.** :meth:`Broker.publish` assigns the next ``seq`` of the type:
  one more than the last one assigned to that type, across every instance
  sharing the engine, starting at 1. Types are numbered independently. A
  ``seq`` is never reused or skipped while the engine's state lives (the
  embedded engine starts again at 1 when its process restarts; clients learn
  it from ``recovered: false``, see docs/protocol.md).
* **History.** Every publication is stored in its type's history *before*
  ``publish`` returns, so a :meth:`Broker.history` call made after it sees it.
  History keeps the newest ``history_size`` messages of each type (the
  window; older ones are dropped as new ones arrive); a size of 0 keeps none
  but numbering goes on.
* **Interest.** An instance receives the types it listens to
  (:meth:`Broker.listen`: the hub listens to a type before its first local
  subscriber is acknowledged, and unlistens when the last one leaves), so a
  message crosses the network once per interested instance. Engines without
  a network (memory) deliver every type and ignore these calls.
* **Delivery.** Every publication of a type an instance listens to reaches
  its ``deliver`` callback (set with :meth:`Broker.bind`), this instance's
  own publications included, once, in ``seq`` order per type, from the
  moment :meth:`Broker.listen` returned. ``deliver`` is called on the event loop, never
  concurrently with itself; an engine may call it before ``publish`` returns
  (the memory engine does) or later (an engine that receives its own
  messages back from a server).
* **Down.** When the engine cannot publish (its server is unreachable, or it
  was closed), :meth:`Broker.health` says so (``ok`` False with a ``reason``),
  and :meth:`Broker.publish`, :meth:`Broker.publish_many` and
  :meth:`Broker.history` raise :class:`~aiosrv.errors.BrokerUnavailable`, the
  :class:`~aiosrv.errors.ClientError` the HTTP API answers with 503 and a
  WebSocket with a ``broker_unavailable`` error frame. They never hang: an
  engine bounds its own waits. :meth:`Broker.latest_seq`, :meth:`Broker.health`
  and :meth:`Broker.stats` answer from what the instance knows and never raise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
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
    """Base class of broker engines; see the module docstring for the contract."""

    #: The engine's name, as configured (``broker.engine``): in logs, ``/stats``,
    #: ``/health`` and the ``aiosrv_info`` metric.
    name: str = "broker"

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    def bind(self, deliver: Deliver) -> None:
        """Set the callback that receives every publication; call before start().

        The hub binds itself when it is created; a later call replaces the
        callback."""
        self._deliver = deliver

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and begin delivering.

        Calling it again on a started engine does nothing. Publishing before
        start() is only supported by engines that need no connection (memory)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release connections.

        Idempotent, and allowed on an engine never started. Once closed, the
        engine is down (see the module contract): health() is not ok and
        publish() and history() raise BrokerUnavailable until start() again."""

    @abstractmethod
    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        """Publish one message (``payload``: a JSON value, or bytes of JSON,
        encoded into the data message once) and return it with its ``seq``.

        On return the message is in the type's history; it reaches ``deliver``
        in ``seq`` order (see the module contract). Raises
        :class:`~aiosrv.errors.BrokerUnavailable` when the engine is down."""

    async def publish_many(self, items: Sequence[tuple[str, Any, str | None]]) -> list[Publication]:
        """Publish ``(type, payload, key)`` items in order and return their
        publications in the same order, as consecutive publish() calls would;
        engines may do it in one round trip. Raises
        :class:`~aiosrv.errors.BrokerUnavailable` when the engine is down."""
        return [await self.publish(t, p, k) for t, p, k in items]

    @abstractmethod
    async def history(self, type_: str, limit: int, since: int | None = None) -> HistoryPage:
        """What the type's history holds, oldest first.

        Without ``since``: the newest ``limit`` messages. With ``since``: the
        first ``limit`` messages whose seq is greater than ``since`` (a
        ``since`` older than the window gives the oldest messages still held;
        one at or past the latest gives none). ``limit`` <= 0 gives none.
        ``oldest`` and ``latest`` are filled in whatever the messages (0 when
        the type has no history, or never had a message). A subscriber that
        last saw ``since`` can recover everything it missed exactly when
        ``oldest`` is not 0 and ``oldest <= since + 1``. Raises
        :class:`~aiosrv.errors.BrokerUnavailable` when the engine is down."""

    @abstractmethod
    def latest_seq(self, type_: str) -> int:
        """The last seq this instance knows was assigned to the type (0 when
        none): at least every seq publish() returned here or delivered here.

        Synchronous and without I/O (the hub asks it while deciding whether a
        recovering client's ``since`` is ahead of anything published); never
        raises, even when the engine is down."""

    @abstractmethod
    def health(self) -> BrokerHealth:
        """Whether the engine can publish now, and why not (``reason``).

        Synchronous and cheap: the hub asks before every publish and refuses
        with BrokerUnavailable when it is not ok; ``/health`` reports it."""

    @abstractmethod
    def set_history_size(self, size: int) -> None:
        """Apply a new history window (hot reload): shrinking drops the oldest
        messages of every type at once, growing keeps what is held and lets
        it fill up, 0 keeps none. Numbering is unaffected."""

    def listening(self, types: Iterable[str]) -> bool:
        """Whether every one of ``types`` is delivered here already (so a
        subscription to them can be acknowledged without waiting)."""
        return True

    async def listen(self, types: Iterable[str]) -> dict[str, int]:
        """Deliver ``types`` here from now on: when this returns, every later
        publication of them reaches ``deliver``. Returns, for each type it
        began to listen to, the last seq published before delivery here began
        (what came after it was or will be delivered); types listened to
        already are left out. Raises :class:`~aiosrv.errors.BrokerUnavailable`
        when the engine is down."""
        return {}

    def unlisten(self, types: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Stop delivering ``types`` here (no local subscriber is left)."""

    def listened(self) -> frozenset[str]:
        """The types listened to (empty for engines that deliver every type)."""
        return frozenset()

    def set_instance_record(self, record: Callable[[], dict[str, Any]]) -> None:  # noqa: B027
        """What this instance publishes of itself for the cluster view
        (engines that join several instances call ``record()`` periodically)."""

    async def instances(self) -> list[dict[str, Any]]:
        """The records of every live instance sharing the engine (this one's
        included); empty for engines of one instance. Raises
        :class:`~aiosrv.errors.BrokerUnavailable` when the engine is down."""
        return []

    def set_user_connections(self, user: str, count: int) -> None:  # noqa: B027
        """This instance now holds ``count`` connections of ``user`` (for the
        per-user limit across instances; engines of one instance ignore it)."""

    async def user_connections_elsewhere(self, user: str) -> int:
        """Connections ``user`` holds on the other live instances (0 for engines
        of one instance). Raises :class:`~aiosrv.errors.BrokerUnavailable`
        when the engine is down."""
        return 0

    def stats(self) -> dict[str, Any]:
        """Engine details for ``/stats`` (types, history sizes, connection
        state): a JSON-serialisable dict with at least ``engine`` (the
        engine's name). Never raises, even when the engine is down."""
        return {"engine": self.name}
