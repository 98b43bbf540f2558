"""The hub: between the broker and the fan-out core.

Publications arrive from the broker (``_on_publication``) into the broadcast
queue; the hub drains it on the event loop, frames each message once, lets the
core queue it to every receiver, and decides when to flush.

Flushing is paced by what it costs (:mod:`aiosrv.pacing`). The hub times every
flush; while flushing takes less than ``write_share`` of the loop's time it
flushes as soon as a message is fanned out, in the loop iteration the message
arrived in: no added latency. When writing would take more, the next flush
waits until that share is kept (at most ``flush_interval``), and carries every
message fanned out meanwhile in one write per connection: the number of system
calls stays bounded by the time available, whatever the number of messages or
receivers, and batching grows exactly as much as the load needs. A pass over
many connections goes in chunks of :data:`FLUSH_CHUNK`, with the loop served
in between.

Replies to one client (acks, pongs, errors, history) do not wait for the next
flush and do not flush anyone else: :meth:`Hub.write_soon` writes that one
connection at the end of the loop iteration, with whatever data is pending for
it, in order.

Queue policy when full (``queue_limit`` publications waiting): local publishers
(HTTP, WebSocket ``publish``, the Python API) are refused with ``queue_full``
before anything is stored, so nothing is lost silently; publications arriving
from other instances through the broker are dropped from this instance's
fan-out and counted (``queue_dropped``); their clients recover them with
``since``.

The hub also keeps, per type, the last ``history.size`` publications it has
fanned out. Recovery (``subscribe`` with ``since``) answers from that ring, so
what a client is sent as "missed" and what it will receive live meet exactly:
nothing twice, nothing skipped.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .broker import Broker, Publication
from .clock import Clock, LoopClock, Timer
from .errors import BrokerUnavailable, QueueFull
from .fanout import OP_TEXT, FanOut, Subscriber, encode_frame
from .pacing import IDLE_WEIGHT, FlushPacer, PacerSettings
from .protocol import check_key, check_type

log = logging.getLogger("aiosrv.hub")

#: Longest a recovering subscribe waits for its ``since`` to be fanned out here.
RECOVERY_WAIT = 1.0

#: Most connections one flush writes before the loop serves other work. A
#: whole pass over 10,000 connections takes 40 to 70 ms, during which no
#: request would be read; in chunks of this many (3 to 7 ms each), requests
#: that arrive meanwhile are read and fanned out, and the connections not yet
#: written in this pass carry their messages at once.
FLUSH_CHUNK = 1000


@dataclass(slots=True)
class HubSettings:
    batch_size: int = 100  # most publications fanned out per loop iteration
    flush_interval: float = 0.05  # longest wait of a paced flush
    write_share: float = 0.5  # share of the time flushing may take under load
    queue_limit: int = 10000
    history_size: int = 50
    # websocket.compression: whether new connections may negotiate
    # permessage-deflate. Messages are compressed while any registered
    # subscriber negotiated it (core.deflate_count), so connections made before
    # compression was turned off keep receiving compressed frames.
    compression: bool = False
    compression_threshold: int = 1024
    compression_level: int = 6


class Hub:
    def __init__(
        self,
        core: FanOut,
        broker: Broker,
        settings: HubSettings,
        on_overflow: Callable[[list[Subscriber]], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``on_overflow`` closes the connections the core gave up on (over
        their send-buffer limit, or their transport failed); ``clock`` times
        flushes and sets the hub's timers (:class:`~aiosrv.clock.LoopClock`
        unless given)."""
        self.core = core
        self.broker = broker
        self.settings = settings
        self._on_overflow = on_overflow
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.pacer = FlushPacer(_pacer_settings(settings), self.clock.time())
        self.queue: deque[Publication] = deque()
        self._drain_handle: Timer | None = None
        # the next flush (or the next chunk of one), when armed
        self._flush_handle: Timer | None = None
        # connections with a reply to write at the end of this iteration
        self._prompt: list[Subscriber] = []
        self._prompt_handle: Timer | None = None
        # types whose subscription is in progress, and the pending unlisten
        self._held: Counter[str] = Counter()
        self._interest_handle: Timer | None = None
        self._recent: dict[str, deque[Publication]] = {}
        self._last_fanned: dict[str, int] = {}
        self._unflushed = 0  # messages fanned out since the last flush
        # counters (read by stats and metrics)
        self.queue_rejected = 0
        self.in_flight = 0  # publishes waiting on the broker
        self.queue_dropped = 0
        self.queue_high_water = 0
        self.fanned_out = 0
        self.flushes = 0
        self.coalesced_flushes = 0  # flushes that carried more than one message
        self.prompt_writes = 0  # connections written at once for a reply
        self.compressed = 0
        self.compressed_bytes_in = 0
        self.compressed_bytes_out = 0
        broker.bind(self._on_publication)

    def configure(self, settings: HubSettings) -> None:
        """Apply new settings (hot reload); the history ring is resized in place."""
        if settings.history_size != self.settings.history_size:
            for type_, ring in list(self._recent.items()):
                self._recent[type_] = deque(ring, maxlen=max(settings.history_size, 1))
            self.broker.set_history_size(settings.history_size)
        self.settings = settings
        self.pacer.configure(_pacer_settings(settings))

    # -- publishing ----------------------------------------------------------

    def _admit(self, count: int = 1) -> None:
        # Publishes waiting on the broker count against the limit too: with a
        # slow Redis they pile up there, not in the queue, and memory must
        # stay bounded all the same.
        waiting = len(self.queue) + self.in_flight
        if waiting + count > self.settings.queue_limit:
            self.queue_rejected += count
            raise QueueFull(
                f"broadcast queue is full ({len(self.queue)} queued and {self.in_flight} "
                f"waiting on the broker, of {self.settings.queue_limit}); retry shortly"
            )
        health = self.broker.health()
        if not health.ok:
            raise BrokerUnavailable(f"broker {self.broker.name} is unavailable: {health.reason}")

    async def publish(self, type_: str, payload: Any, key: str | None = None) -> Publication:
        """Publish one message from this process (the library API).

        ``payload`` is any JSON-serialisable value, or ``bytes`` already holding
        JSON. Returns the publication once it is in history and queued for
        delivery. Raises :class:`~aiosrv.errors.ClientError` subclasses for a
        bad type or key, a full queue or an unavailable broker.
        """
        check_type(type_, "type")
        if key is not None:
            check_key(key, "key")
        return await self.publish_checked(type_, payload, key)

    async def publish_checked(self, type_: str, payload: Any, key: str | None) -> Publication:
        """:meth:`publish` for a type and key already checked (the protocol's
        parsers did), so a request is validated once and its payload, as
        decoded, is encoded once, into the data message."""
        self._admit()
        self.in_flight += 1
        try:
            return await self.broker.publish(type_, payload, key)
        finally:
            self.in_flight -= 1

    async def publish_many(self, items: Sequence[tuple[str, Any, str | None]]) -> list[Publication]:
        """Publish already-checked ``(type, payload, key)`` items in order."""
        self._admit(len(items))
        self.in_flight += len(items)
        try:
            return await self.broker.publish_many(items)
        finally:
            self.in_flight -= len(items)

    def _on_publication(self, pub: Publication) -> None:
        if len(self.queue) >= self.settings.queue_limit:
            self.queue_dropped += 1
            log.warning(
                "performance: broadcast queue full (%d), dropped %s:%d for local fan-out",
                len(self.queue),
                pub.type,
                pub.seq,
            )
            return
        self.queue.append(pub)
        if len(self.queue) > self.queue_high_water:
            self.queue_high_water = len(self.queue)
        if self._drain_handle is None:
            self._drain_handle = self.clock.call_soon(self._drain)

    # -- fan-out and flushing --------------------------------------------------

    def _drain(self) -> None:
        self._drain_handle = None
        queue = self.queue
        core = self.core
        recent = self._recent
        last_fanned = self._last_fanned
        ring_size = max(self.settings.history_size, 1)
        n = min(len(queue), self.settings.batch_size)
        # compress only when someone takes compressed frames: once per message
        threshold = self.settings.compression_threshold if core.deflate_count else -1
        for _ in range(n):
            pub = queue.popleft()
            if 0 <= threshold <= len(pub.data):
                core.publish(pub.type, pub.key, encode_frame(pub.data), self._deflate(pub.data))
            else:
                core.publish(pub.type, pub.key, encode_frame(pub.data))
            ring = recent.get(pub.type)
            if ring is None:
                ring = recent[pub.type] = deque(maxlen=ring_size)
            ring.append(pub)
            last_fanned[pub.type] = pub.seq
        self.fanned_out += n
        self._unflushed += n
        if queue:
            self._drain_handle = self.clock.call_soon(self._drain)
        self.schedule_flush()

    def _deflate(self, data: bytes) -> bytes:
        """The permessage-deflate frame of a message (RFC 7692 7.2.1): a fresh
        compressor per message, so no context is taken over and every client
        that negotiated the extension can read it."""
        c = zlib.compressobj(self.settings.compression_level, zlib.DEFLATED, -15)
        body = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        if body.endswith(b"\x00\x00\xff\xff"):
            body = body[:-4]
        self.compressed += 1
        self.compressed_bytes_in += len(data)
        self.compressed_bytes_out += len(body)
        return encode_frame(body, OP_TEXT, True)

    def drain_now(self, deadline: float) -> None:
        """Fan out the whole queue and write everything, without yielding
        (shutdown), until ``deadline`` on the loop's clock."""
        while self.queue and self.clock.time() < deadline:
            self._drain()
        self.flush(everything=True)

    def schedule_flush(self) -> None:
        """Flush now if the pacer allows it, else once its wait is over.

        Call after queuing frames that may wait for the next flush (fan-out,
        heartbeat pings)."""
        if self._flush_handle is not None:
            # A flush is armed. Under load the loop serves its timers late
            # (after a whole iteration of requests), so whoever queues frames
            # next and finds the wait over flushes at once.
            if self.pacer.delay(self.clock.time(), self.clock.cpu_time()) <= 0:
                self.flush(True)
            return
        if not self.core.dirty_count:
            self.close_given_up()  # a frame refused at the limit queued nothing
            return
        delay = self.pacer.delay(self.clock.time(), self.clock.cpu_time())
        if delay <= 0:
            self.flush()
        else:
            self._arm(delay)

    def _arm(self, delay: float) -> None:
        """Flush once ``delay`` seconds of debt are paid (at once: 0). Idle time
        pays faster (``pacing.IDLE_WEIGHT``), so the timer first assumes an
        idle loop and looks again when it fires; a busy loop waits the rest,
        never longer than ``delay`` in all."""
        if delay > 0:
            # uvloop's timers count whole milliseconds and can fire up to one early
            deadline = self.clock.time() + delay
            self._flush_handle = self.clock.call_later(
                delay / IDLE_WEIGHT + 0.001, self._flush_when_paid, deadline
            )
        else:
            self._flush_handle = self.clock.call_soon(self.flush)

    def _flush_when_paid(self, deadline: float) -> None:
        self._flush_handle = None
        now = self.clock.time()
        if self.pacer.delay(now, self.clock.cpu_time()) > 0 and now < deadline:
            # the loop was busy meanwhile: wait the rest off, up to the deadline
            self._flush_handle = self.clock.call_later(deadline - now + 0.001, self.flush, True)
        else:
            self.flush(True)

    def flush(self, paced: bool = False, everything: bool = False) -> None:
        """Write the pending frames of up to :data:`FLUSH_CHUNK` connections
        now (``everything``: of all), and close the ones that overflowed
        (through ``on_overflow``); the rest of the pass follows as the pacer
        allows, after the loop has served its other work. ``paced``: the
        flush waited for the pacer."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        clock = self.clock.time
        cpu_clock = self.clock.cpu_time
        core = self.core
        pacer = self.pacer
        pacer.pass_size = core.subscriber_count
        start = clock()
        cpu_start = cpu_clock()
        written = core.flush(-1 if everything else FLUSH_CHUNK)
        pacer.record(start, clock(), cpu_start, cpu_clock(), paced, written)
        self.flushes += 1
        self.coalesced_flushes += self._unflushed > 1
        self._unflushed = 0
        self.close_given_up()
        if core.dirty_count and self._flush_handle is None:
            self._arm(pacer.delay(clock(), cpu_clock()))

    def close_given_up(self) -> None:
        """Hand the subscribers the core gave up on since the last call (over
        their send-buffer limit, or their transport failed) to ``on_overflow``.
        :meth:`flush` ends with it; call it after queuing outside a flush."""
        to_close = self.core.take_to_close()
        if to_close and self._on_overflow is not None:
            self._on_overflow(to_close)

    def write_soon(self, sub: Subscriber) -> None:
        """Write this connection at the end of the loop iteration (a reply
        queued with ``core.send``): its pending frames, data before the reply,
        without flushing anyone else."""
        self._prompt.append(sub)
        if self._prompt_handle is None:
            self._prompt_handle = self.clock.call_soon(self._write_prompt)

    def _write_prompt(self) -> None:
        self._prompt_handle = None
        subs = self._prompt
        self._prompt = []
        core = self.core
        clock = self.clock.time
        cpu_clock = self.clock.cpu_time
        start = clock()
        cpu_start = cpu_clock()
        for sub in subs:
            self.prompt_writes += core.write(sub)
        self.pacer.charge(start, clock(), cpu_start, cpu_clock())
        self.close_given_up()

    # -- interest: which types this instance receives ------------------------------

    def listening(self, types: Iterable[str]) -> bool:
        """Whether the broker delivers all of ``types`` here already."""
        return self.broker.listening(types)

    async def listen(self, types: Iterable[str]) -> None:
        """Have the broker deliver ``types`` here before a first local
        subscriber of them is acknowledged (call between :meth:`hold` and
        :meth:`release`, so the types are not dropped meanwhile)."""
        baseline = await self.broker.listen(types)
        # What was published before delivery here began was never fanned out
        # here, and no local client was owed it: recovery fetches it from the
        # broker's history (the ring has nothing of it).
        for t, seq in baseline.items():
            if seq > self._last_fanned.get(t, 0):
                self._last_fanned[t] = seq
                self._recent.pop(t, None)

    def hold(self, types: Iterable[str]) -> None:
        """A subscription to ``types`` is in progress: keep listening to them."""
        for t in types:
            self._held[t] += 1

    def release(self, types: Iterable[str]) -> None:
        for t in types:
            self._held[t] -= 1
            if self._held[t] <= 0:
                del self._held[t]
        self.interest_changed()

    def interest_changed(self) -> None:
        """Subscriptions went (an unsubscribe, a closed connection): once this
        loop iteration is over, stop listening to the types no local client
        subscribes to any more."""
        if self._interest_handle is None and self.broker.listened():
            self._interest_handle = self.clock.call_soon(self._drop_unwanted)

    def _drop_unwanted(self) -> None:
        self._interest_handle = None
        wanted = self.core.type_counts()
        held = self._held
        drop = [t for t in self.broker.listened() if t not in wanted and t not in held]
        if drop:
            self.broker.unlisten(drop)
            for t in drop:  # no longer received: the ring would go stale
                self._recent.pop(t, None)

    # -- recovery ------------------------------------------------------------

    async def recover(self, type_: str, since: int) -> tuple[bool, list[Publication]]:
        """What a subscriber that last saw ``since`` has missed of a type.

        Returns ``(recovered, messages)``: ``recovered`` is False when history no
        longer reaches back to ``since`` (the messages still available follow
        anyway) or when ``since`` is ahead of anything this server published.
        Every message returned has been fanned out already; the ones still in
        the queue reach the subscriber live. The caller must register the
        subscription before it next awaits.
        """
        if since > self._last_fanned.get(type_, 0) and since <= self._latest_known(type_):
            # The client already has messages this instance has not fanned out
            # yet (still queued, or in flight from the broker): subscribing now
            # would deliver them again live. Let the fan-out catch up first.
            await self._fanned_through(type_, since)
        ring = self._recent.get(type_)
        last = self._last_fanned.get(type_, 0)
        covered = since >= last or (ring is not None and ring[0].seq <= since + 1)
        older: list[Publication] = []
        if not covered:
            page = await self.broker.history(type_, self.settings.history_size, since)
            older = page.messages
            covered = page.oldest != 0 and page.oldest <= since + 1
            ring = self._recent.get(type_)
            last = self._last_fanned.get(type_, 0)
        if since > last:
            latest = self._latest_known(type_)
            return since <= latest, []
        # What the broker and the ring still hold after ``since``, up to what was
        # fanned out, merged by seq: the broker's history moves at publish time,
        # so with publications queued the ring can reach further back than it.
        found = {p.seq: p for p in older if p.seq <= last}
        if ring is not None:
            for p in ring:
                if p.seq > since:
                    found.setdefault(p.seq, p)
        return covered, [found[seq] for seq in sorted(found)]

    async def _fanned_through(self, type_: str, seq: int) -> None:
        """Wait (at most ``RECOVERY_WAIT`` seconds) until ``seq`` of a type is fanned out."""
        deadline = self.clock.time() + RECOVERY_WAIT
        while self._last_fanned.get(type_, 0) < seq and self.clock.time() < deadline:
            await asyncio.sleep(0 if self.queue else 0.005)

    def _latest_known(self, type_: str) -> int:
        return self.broker.latest_seq(type_)

    # -- introspection ---------------------------------------------------------

    def queue_stats(self) -> dict[str, Any]:
        pacer = self.pacer
        return {
            "depth": len(self.queue),
            "in_flight": self.in_flight,
            "limit": self.settings.queue_limit,
            "high_water": self.queue_high_water,
            "rejected": self.queue_rejected,
            "dropped": self.queue_dropped,
            "batch_size": self.settings.batch_size,
            "flush_interval": self.settings.flush_interval,
            "write_share": self.settings.write_share,
            "fanned_out": self.fanned_out,
            "flushes": self.flushes,
            "coalesced_flushes": self.coalesced_flushes,
            "paced_flushes": pacer.paced,
            "prompt_writes": self.prompt_writes,
            "flush_ms": round(pacer.cost_ewma * 1000, 3),
            "last_flush_ms": round(pacer.last_cost * 1000, 3),
            "seconds_writing": round(pacer.seconds_writing, 3),
            "flush_credit_ms": round(pacer.credit(self.clock.time()) * 1000, 3),
            "flush_pending": self._flush_handle is not None,
            "compression": self.settings.compression,
            "compression_threshold": self.settings.compression_threshold,
            "compression_level": self.settings.compression_level,
            "deflate_subscribers": self.core.deflate_count,
            "compressed_messages": self.compressed,
            "compressed_bytes_in": self.compressed_bytes_in,
            "compressed_bytes_out": self.compressed_bytes_out,
            "compressed_bytes_saved": self.compressed_bytes_in - self.compressed_bytes_out,
            "policy": "refuse local publishes with queue_full; drop remote arrivals (counted)",
        }


def _pacer_settings(settings: HubSettings) -> PacerSettings:
    return PacerSettings(
        share=settings.write_share,
        max_wait=settings.flush_interval,
    )
