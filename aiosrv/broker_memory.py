"""The embedded broker: one process, everything in memory, nothing to install.

Sequence numbers and history live in dicts keyed by type; publishing is
synchronous under the hood (the coroutine never suspends), so a message is in
history and handed to the hub before ``publish`` returns. It needs no
start(); after close() it is down (publish and history raise
BrokerUnavailable) until start() again, with its numbering and history kept.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .broker import Broker, BrokerHealth, HistoryPage, Publication
from .errors import BrokerUnavailable
from .protocol import encode_data, encode_payload, now_ms


class MemoryBroker(Broker):
    name = "memory"

    def __init__(self, history_size: int) -> None:
        super().__init__()
        self._history_size = history_size
        self._seq: dict[str, int] = {}
        self._history: dict[str, deque[Publication]] = {}
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerUnavailable(f"broker {self.name} is closed")

    def publish_now(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        """Synchronous publish, for callers already on the event loop."""
        self._check_open()
        if not isinstance(payload, bytes):
            payload = encode_payload(payload)  # a payload it refuses takes no seq
        seq = self._seq.get(type_, 0) + 1
        self._seq[type_] = seq
        ts = now_ms()
        pub = Publication(type_, seq, ts, key, encode_data(type_, seq, ts, payload, key))
        if self._history_size:
            hist = self._history.get(type_)
            if hist is None:
                hist = self._history[type_] = deque(maxlen=self._history_size)
            hist.append(pub)
        if self._deliver is not None:
            self._deliver(pub)
        return pub

    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        return self.publish_now(type_, payload, key)

    async def history(self, type_: str, limit: int, since: int | None = None) -> HistoryPage:
        self._check_open()
        hist = self._history.get(type_, ())
        latest = self._seq.get(type_, 0)
        oldest = hist[0].seq if hist else 0
        if limit <= 0:
            messages = []
        elif since is None:
            messages = list(hist)[-limit:]
        else:
            messages = [p for p in hist if p.seq > since][:limit]
        return HistoryPage(messages, oldest, latest)

    def latest_seq(self, type_: str) -> int:
        return self._seq.get(type_, 0)

    def health(self) -> BrokerHealth:
        if self._closed:
            return BrokerHealth(False, "closed", {"engine": self.name})
        return BrokerHealth(True, "", {"engine": self.name})

    def set_history_size(self, size: int) -> None:
        if size == self._history_size:
            return
        self._history_size = size
        for type_, hist in list(self._history.items()):
            self._history[type_] = deque(list(hist)[-size:] if size else (), maxlen=size or 1)
            if not size:
                del self._history[type_]

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "types": len(self._seq),
            "history_size": self._history_size,
            "history_messages": sum(len(h) for h in self._history.values()),
        }
