"""The fan-out core: one source, run as Python and compiled into ``aiosrv._fanout_c``.

This file is the core's only statement of its algorithm. Imported as
``aiosrv._fanout_py`` it runs as plain Python (``AIOSRV_NO_EXTENSIONS=1``, or
no compiler). ``setup.py`` also compiles it, with ``_core/_fanout_c.pxd``,
into ``aiosrv._fanout_c`` (Cython's pure-Python mode; see "How the core is
built from one source" in ``docs/design.md``): the ``.pxd`` makes the classes
extension types with C attributes, types the hot methods' locals, and
cimports the hand-written ``aiosrv._wire_c`` under the name ``_wire`` that
this file binds to its pure twin ``aiosrv._wire_py``. So code here is written
to mean the same thing both ways: no negative indexes, integers that fit 64
bits, only names of ``_wire_c.pxd`` used through ``_wire``, and explicit
argument checks where the compiled build checks types itself
(``_check_frame``, ``_check_sub``, ``_ssize``).

The fan-out core is sans-I/O except for one duty: handing each connection's
pending frames to its transport (``write`` and ``get_write_buffer_size``: the
asyncio transport interface). It knows nothing of asyncio, aiohttp or redis.

What it does, per published message:

* the caller encodes the message once and frames it once (:func:`encode_frame`);
* :meth:`FanOut.publish` looks up the receivers (subscribers of the type, plus
  subscribers narrowed to the message's key) and appends a *reference* to the
  frame to each receiver's pending list: no copy, no serialization, no task;
* :meth:`FanOut.flush` hands each dirty subscriber's pending frames to its
  transport in one ``write`` (the frames joined); the event loop's transport
  tries the socket at once, and what the kernel refuses waits in its buffer.

permessage-deflate (RFC 7692) keeps that shape: the caller may pass the same
message compressed once (a frame with RSV1 set, made with no context takeover)
as ``frame_deflate``; receivers whose ``deflate`` flag is set get that object,
the others the plain frame. Per receiver it is a flag check and an append;
nothing is compressed per subscriber. :attr:`FanOut.deflate_count` (subscribers
that were deflate ones when added) tells the caller whether compressing can pay
at all. Replies (:meth:`FanOut.send`) go as they are given, uncompressed.

Memory is bounded per subscriber: bytes the kernel would not take (the
transport's buffer) plus bytes still pending may not pass ``limit``. A
subscriber that passes it is marked overflowed, its pending frames are
dropped, and it is reported by :meth:`FanOut.take_to_close` so the caller can
close it with 1013. A single frame larger than the limit is still delivered
when nothing else is buffered, so a big message never closes a fast client.

Heartbeats run on one timing wheel for every connection
(:meth:`FanOut.heartbeat`): each open subscriber sits in exactly one bucket,
the one of its next event (its next ping, or the moment it times out if that
comes first). A tick visits only the buckets that came due, so its cost is the
number of connections with something to do, not the number connected; reading
a client's traffic is one float store (``last_seen``), never a move between
buckets: a subscriber whose bucket comes due early (it talked since) is put
back in the bucket of its new deadline.

Subscribers are kept in insertion-ordered dicts, so both builds visit receivers
in the same order and produce the same bytes; ``tests/core`` checks that on
random operation sequences, over fake transports and over real sockets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import index
from typing import Any, Protocol, SupportsIndex

# Compiled, the .pxd's ``from aiosrv cimport _wire_c as _wire`` takes this
# name over: every ``_wire.<name>(...)`` below is then a C call into the
# hand-written module (the Python-level import still runs, unused).
from . import _wire_py as _wire
from .errors import MAX_FRAGMENTS, FrameError

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "MAX_SLOTS",
    "MAX_TICK",
    "MIN_TICK",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "STATE_CLOSED",
    "STATE_OPEN",
    "STATE_OVERFLOWED",
    "FanOut",
    "FrameReader",
    "Subscriber",
    "encode_close",
    "encode_frame",
    "unmask",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# The states, as the hot paths read them: C ints in the compiled build (the
# .pxd declares them), so a state check is no dictionary look-up.
_OPEN = 0
_OVERFLOWED = 1
_CLOSED = 2
STATE_OPEN = _OPEN
STATE_OVERFLOWED = _OVERFLOWED
STATE_CLOSED = _CLOSED

# The fragment cap of a data message (errors.MAX_FRAGMENTS), as FrameReader
# reads it: a C Py_ssize_t in the compiled build (the .pxd declares it).
_MAX_FRAGMENTS = MAX_FRAGMENTS

#: Heartbeat defaults (the config's ``websocket.heartbeat_*`` defaults) and the
#: wheel's bounds: its tick in seconds, and its number of buckets.
HEARTBEAT_INTERVAL = 30.0
HEARTBEAT_TIMEOUT = 60.0
MIN_TICK = 0.005
MAX_TICK = 1.0
MAX_SLOTS = 4096

# Type names, keys and connection ids are strings to the type checker. Cython
# reads a plain ``str`` annotation as "exactly str, not None"; through this
# alias it sees an unknown name, so the compiled signatures take any hashable,
# as the Python ones do.
Name = str
# Integer arguments: Cython 3 reads an ``int`` annotation as a Python int that
# it converts floats to (1.5 becomes 1), and as not matching a .pxd that
# declares a C int. It passes over this alias, so the .pxd's C type applies, or
# for an untyped argument ``operator.index`` refuses a float in both builds.
Int = int


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...


def _ssize(value: SupportsIndex) -> int:
    # What storing into a C Py_ssize_t does in the compiled build: an integer
    # (a float is a TypeError) within 64 bits (else OverflowError).
    n = index(value)
    if not -(1 << 63) <= n < (1 << 63):
        raise OverflowError("Python int too large to convert to C ssize_t")
    return n


def _type_error(expected: str, name: str, value: object) -> TypeError:
    # What the compiled build raises for a typed argument (Cython's message),
    # raised by the checks that only the Python build needs.
    return TypeError(
        f"Argument '{name}' has incorrect type (expected {expected}, got {type(value).__name__})"
    )


def encode_frame(payload: bytes, opcode: Int = OP_TEXT, rsv1: bool = False) -> bytes:
    """One unmasked, final server-to-client frame (RFC 6455 section 5.2).

    The result is a new ``bytes`` holding header and payload (one allocation
    and a copy in the compiled build), made once and shared by every receiver
    of the message. ``rsv1`` marks a message compressed with
    permessage-deflate (RFC 7692). ``payload`` must be ``bytes``.
    """
    return _wire.encode_frame(payload, opcode, rsv1)


def encode_close(code: Int, reason: str = "") -> bytes:
    """A close frame; ``reason`` is cut to the 123 bytes a control frame allows,
    never inside a UTF-8 sequence."""
    if type(reason) is not str:
        raise _type_error("str", "reason", reason)
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return _wire.encode_frame(index(code).to_bytes(2, "big") + raw, OP_CLOSE, False)


def unmask(data: bytes, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3)."""
    return _wire.unmask(data, mask)


class Subscriber:
    """One connection as the core sees it: its filters and its bounded output."""

    __slots__ = (
        "_deflate_counted",
        "_dirty",
        "_filters",
        "_next_ping",
        "_pending",
        "_pending_bytes",
        "_state",
        "_transport_buffered",
        "_wheel_slot",
        "conn_id",
        "deflate",
        "last_seen",
        "limit",
        "owner",
        "transport",
    )

    def __init__(
        self,
        conn_id: Name,
        transport: Any,
        limit: Int,
        owner: Any = None,
        deflate: bool = False,
    ) -> None:
        self.conn_id = conn_id
        # negotiated permessage-deflate: receives the shared compressed frame.
        # Settable; set it before add() so FanOut.deflate_count includes it.
        self.deflate = bool(deflate)
        self._deflate_counted = False  # counted in its FanOut's deflate_count
        self.transport = transport
        self.limit = _ssize(limit)
        self.owner = owner
        self.last_seen = 0.0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._transport_buffered = 0
        self._dirty = False
        self._state = _OPEN
        # type -> None (every message of the type) or the tuple of wanted keys
        self._filters: dict[Name, tuple[Name, ...] | None] = {}
        # heartbeat: when the next ping is due, and the wheel bucket it is in
        self._next_ping = 0.0
        self._wheel_slot = -1

    @property
    def state(self) -> int:
        return self._state

    @property
    def overflowed(self) -> bool:
        return self._state == _OVERFLOWED

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    @property
    def pending_bytes(self) -> int:
        """Bytes queued in the core, not yet handed to the transport."""
        return self._pending_bytes

    @property
    def pending_frames(self) -> int:
        return len(self._pending)

    @property
    def transport_buffered(self) -> int:
        """The transport's buffer size as of the last write."""
        return self._transport_buffered

    @property
    def subscription_count(self) -> int:
        """Subscriptions held: a type counts one, a type narrowed to keys one per key."""
        return self._subscription_count()

    def _subscription_count(self) -> int:
        n = 0
        for ks in self._filters.values():
            n += 1 if ks is None else len(ks)
        return n

    def types(self) -> list[Name]:
        """Subscribed types, in the order first subscribed."""
        return list(self._filters)

    def filter_for(self, type_: Name) -> tuple[Name, ...] | None:
        """The keys a type is narrowed to; None when the type is not narrowed."""
        return self._filters.get(type_)

    def is_subscribed(self, type_: Name) -> bool:
        return type_ in self._filters

    def __repr__(self) -> str:
        return f"<Subscriber {self.conn_id} state={self._state} pending={self._pending_bytes}>"


def _check_sub(sub: object) -> None:
    if not isinstance(sub, Subscriber):
        raise _type_error("Subscriber", "sub", sub)


def _check_frame(frame: object, name: str = "frame") -> None:
    if type(frame) is not bytes:
        raise _type_error("bytes", name, frame)


class FanOut:
    """The subscription index and write path shared by every connection."""

    __slots__ = (
        "_all",
        "_by_key",
        "_by_type",
        "_dirty",
        "_hb_interval",
        "_hb_timeout",
        "_tick",
        "_to_close",
        "_wheel",
        "_wheel_pos",
        "_wheel_started",
        "deflate_count",
        "delivered",
        "dropped_bytes",
        "overflows",
        "pings",
        "published",
        "writes",
    )

    def __init__(self) -> None:
        self._all: dict[Subscriber, None] = {}
        self._by_type: dict[Name, dict[Subscriber, None]] = {}
        self._by_key: dict[Name, dict[Name, dict[Subscriber, None]]] = {}
        self._dirty: list[Subscriber] = []
        self._to_close: list[Subscriber] = []
        # registered subscribers that were deflate ones when added: when 0 the
        # hub need not compress at all
        self.deflate_count = 0
        self.published = 0  # messages passed to publish()
        self.delivered = 0  # frames queued to receivers by publish()
        self.writes = 0  # transport writes
        self.overflows = 0  # subscribers closed for passing their limit
        self.dropped_bytes = 0  # pending bytes discarded with them
        self.pings = 0  # heartbeat pings queued
        self._wheel: list[dict[Subscriber, None]] = []
        self._wheel_pos = 0  # the last tick visited, once started
        self._wheel_started = False
        self._hb_interval = self._hb_timeout = self._tick = 0.0
        self.configure_heartbeat(HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, 0.0)

    # -- registry ------------------------------------------------------------

    def add(self, sub: Subscriber) -> None:
        """Register a subscriber; its first ping is due ``heartbeat_interval``
        after its ``last_seen`` (set that first)."""
        _check_sub(sub)
        if sub not in self._all:
            self._all[sub] = None
            if sub.deflate:
                sub._deflate_counted = True
                self.deflate_count += 1
            sub._next_ping = sub.last_seen + self._hb_interval
            self._schedule(sub)

    def remove(self, sub: Subscriber) -> int:
        """Forget a subscriber: its subscriptions, pending frames and registration.

        Returns the number of subscriptions it held. O(its subscriptions).
        """
        _check_sub(sub)
        count = sub._subscription_count()
        for type_ in list(sub._filters):
            self._unindex(sub, type_)
        sub._filters.clear()
        sub._pending.clear()
        sub._pending_bytes = 0
        if sub._state == _OPEN:
            sub._state = _CLOSED
        self._unschedule(sub)
        if sub in self._all:
            del self._all[sub]
            if sub._deflate_counted:
                sub._deflate_counted = False
                self.deflate_count -= 1
        return count

    def subscribe(self, sub: Subscriber, type_: Name, keys: Iterable[Name] | None = None) -> None:
        """Subscribe to a type, replacing any earlier filter for that type.

        ``keys`` None means every message of the type; otherwise only messages
        published with one of those keys.
        """
        _check_sub(sub)
        if type_ in sub._filters:
            self._unindex(sub, type_)
        if keys is None:
            sub._filters[type_] = None
            subs = self._by_type.get(type_)
            if subs is None:
                subs = self._by_type[type_] = {}
            subs[sub] = None
        else:
            wanted = tuple(dict.fromkeys(keys))
            sub._filters[type_] = wanted
            per_key = self._by_key.get(type_)
            if per_key is None:
                per_key = self._by_key[type_] = {}
            for k in wanted:
                subs = per_key.get(k)
                if subs is None:
                    subs = per_key[k] = {}
                subs[sub] = None

    def unsubscribe(self, sub: Subscriber, type_: Name) -> bool:
        _check_sub(sub)
        if type_ not in sub._filters:
            return False
        self._unindex(sub, type_)
        del sub._filters[type_]
        return True

    def _unindex(self, sub: Subscriber, type_: Name) -> None:
        keys = sub._filters[type_]
        if keys is None:
            subs = self._by_type.get(type_)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self._by_type[type_]
        else:
            per_key = self._by_key.get(type_)
            if per_key is None:
                return
            for k in keys:
                subs = per_key.get(k)
                if subs is not None:
                    subs.pop(sub, None)
                    if not subs:
                        del per_key[k]
            if not per_key:
                del self._by_key[type_]

    # -- fan-out -------------------------------------------------------------

    def receivers(self, type_: Name, key: Name | None = None) -> list[Subscriber]:
        """Who :meth:`publish` would deliver to, in delivery order."""
        out = list(self._by_type.get(type_, ()))
        if key is not None:
            per_key = self._by_key.get(type_)
            if per_key is not None:
                out.extend(per_key.get(key, ()))
        return out

    def publish(
        self, type_: Name, key: Name | None, frame: bytes, frame_deflate: bytes | None = None
    ) -> int:
        """Queue one framed message to every receiver; return how many got it.

        With ``frame_deflate`` (the same message compressed once), receivers
        that negotiated permessage-deflate get that frame instead.
        """
        _check_frame(frame)
        if frame_deflate is None:
            alt = frame
        else:
            _check_frame(frame_deflate, "frame_deflate")
            alt = frame_deflate
        self.published += 1
        n = 0
        sub: Subscriber
        subs = self._by_type.get(type_)
        if subs is not None:
            for sub in subs:
                n += self._append(sub, alt if sub.deflate else frame)
        if key is not None:
            per_key = self._by_key.get(type_)
            if per_key is not None:
                subs = per_key.get(key)
                if subs is not None:
                    for sub in subs:
                        n += self._append(sub, alt if sub.deflate else frame)
        self.delivered += n
        return n

    def send(self, sub: Subscriber, frame: bytes) -> bool:
        """Queue a frame for one subscriber (replies), in order with its data."""
        _check_sub(sub)
        _check_frame(frame)
        return self._append(sub, frame) == 1

    def send_all(self, frame: bytes) -> int:
        """Queue a frame for every registered subscriber (the heartbeat pings
        through :meth:`heartbeat` instead, one connection at a time)."""
        _check_frame(frame)
        n = 0
        sub: Subscriber
        for sub in self._all:
            n += self._append(sub, frame)
        return n

    def _append(self, sub: Subscriber, frame: bytes) -> int:
        if sub._state != _OPEN:
            return 0
        size = len(frame)
        if sub._pending_bytes + sub._transport_buffered + size > sub.limit and (
            sub._pending_bytes or sub._transport_buffered
        ):
            # Over the limit on the books: write what is pending now and ask the
            # transport what the kernel really refused before judging.
            self._write(sub)
            if sub._state != _OPEN:
                return 0
            if sub._transport_buffered and sub._transport_buffered + size > sub.limit:
                self._overflow(sub)
                return 0
        sub._pending.append(frame)
        sub._pending_bytes += size
        if not sub._dirty:
            sub._dirty = True
            self._dirty.append(sub)
        return 1

    def _overflow(self, sub: Subscriber) -> None:
        self.overflows += 1
        self.dropped_bytes += sub._pending_bytes + sub._transport_buffered
        sub._pending.clear()
        sub._pending_bytes = 0
        sub._state = _OVERFLOWED
        self._to_close.append(sub)

    def _write(self, sub: Subscriber) -> None:
        pending = sub._pending
        transport = sub.transport
        try:
            if pending:
                sub._pending = []
                sub._pending_bytes = 0
                transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
                self.writes += 1
            # what the kernel did not take (the transport writes at once)
            sub._transport_buffered = transport.get_write_buffer_size()
        except Exception:
            # The transport is gone; the connection's reader will notice too.
            # One broken transport must not abort the fan-out to the others.
            sub._state = _CLOSED
            self._to_close.append(sub)

    def flush(self, limit: Int = -1) -> int:
        """Hand dirty subscribers' pending frames to their transports, one
        write each, in the order they became dirty: all of them, or with
        ``limit`` >= 0 at most that many (the rest stay dirty, first in line
        for the next call; a subscriber written now that gets frames again
        queues behind them). Returns the number of subscribers written to."""
        limit = _ssize(limit)
        dirty = self._dirty
        if not dirty:
            return 0
        if 0 <= limit < len(dirty):
            self._dirty = dirty[limit:]
            dirty = dirty[:limit]
        else:
            self._dirty = []
        n = 0
        sub: Subscriber
        for sub in dirty:
            sub._dirty = False
            if sub._state == _OPEN and sub._pending:
                self._write(sub)
                n += 1
        return n

    def write(self, sub: Subscriber) -> bool:
        """Hand one subscriber's pending frames to its transport now, without
        waiting for the next :meth:`flush` (a reply to that client). Returns
        whether anything was written."""
        _check_sub(sub)
        if sub._state == _OPEN and sub._pending:
            self._write(sub)
            return True
        return False

    def take_to_close(self) -> list[Subscriber]:
        """Subscribers that overflowed or whose transport failed since the last call."""
        out = self._to_close
        self._to_close = []
        return out

    # -- heartbeat -------------------------------------------------------------

    @property
    def heartbeat_tick(self) -> float:
        """Seconds between calls of :meth:`heartbeat`: the wheel's resolution."""
        return self._tick

    def configure_heartbeat(self, interval: float, timeout: float, now: float) -> None:
        """Set the ping interval and the silence timeout (seconds) and rebuild
        the wheel; pings due later than ``now + interval`` are brought forward.

        The wheel has a bucket per tick (an eighth of the shorter of the two,
        between 5 ms and 1 s) for as many ticks as the longer one lasts, so a
        subscriber normally comes due exactly once per event; a timeout fires
        at most one tick late.
        """
        if not (interval > 0 and timeout > 0):
            raise ValueError("heartbeat interval and timeout must be > 0")
        self._hb_interval = interval
        self._hb_timeout = timeout
        self._tick = min(max(min(interval, timeout) / 8, MIN_TICK), MAX_TICK)
        # bounded before ceil, so an infinite setting means MAX_SLOTS both ways
        longest = min(max(interval, timeout) / self._tick, MAX_SLOTS)
        slots = min(int(math.ceil(longest)) + 1, MAX_SLOTS)  # noqa: RUF046 (see _schedule)
        self._wheel = [{} for _ in range(slots)]
        self._wheel_started = False
        latest = now + interval
        sub: Subscriber
        for sub in self._all:
            sub._wheel_slot = -1
            if sub._state == _OPEN:
                if sub._next_ping > latest:
                    sub._next_ping = latest
                self._schedule(sub)

    def heartbeat(self, now: float, ping: bytes) -> list[Subscriber]:
        """Advance the wheel to ``now``: queue ``ping`` to each subscriber
        whose ping is due (flush afterwards) and return, once each, the open
        subscribers silent for ``timeout`` (``last_seen`` that long ago); they
        leave the wheel, and the caller closes them."""
        _check_frame(ping, "ping")
        target = int(math.floor(now / self._tick))  # noqa: RUF046 (see _schedule)
        slots = len(self._wheel)
        if not self._wheel_started or target - self._wheel_pos >= slots:
            first = target - slots + 1
        else:
            first = self._wheel_pos + 1
        if not self._wheel_started or target > self._wheel_pos:
            self._wheel_pos = target
            self._wheel_started = True
        out: list[Subscriber] = []
        interval = self._hb_interval
        timeout = self._hb_timeout
        sub: Subscriber
        for t in range(first, target + 1):
            i = t % slots
            bucket = self._wheel[i]
            if not bucket:
                continue
            self._wheel[i] = {}
            for sub in bucket:
                sub._wheel_slot = -1
                if sub._state != _OPEN:
                    continue
                if now - sub.last_seen >= timeout:
                    out.append(sub)
                    continue
                if now >= sub._next_ping:
                    self.pings += self._append(sub, ping)
                    sub._next_ping = now + interval
                    if sub._state != _OPEN:
                        continue
                self._schedule(sub)
        return out

    def _schedule(self, sub: Subscriber) -> None:
        """Put an open subscriber in the bucket of its next event."""
        due = min(sub._next_ping, sub.last_seen + self._hb_timeout)
        # int(): compiled, ``math`` is libc's (the .pxd cimports it), whose
        # floor and ceil return a double
        t = int(math.floor(due / self._tick))  # noqa: RUF046
        if self._wheel_started and t <= self._wheel_pos:
            t = self._wheel_pos + 1
        i = t % len(self._wheel)
        bucket = self._wheel[i]
        bucket[sub] = None
        sub._wheel_slot = i

    def _unschedule(self, sub: Subscriber) -> None:
        if sub._wheel_slot >= 0:
            bucket = self._wheel[sub._wheel_slot]
            bucket.pop(sub, None)
            sub._wheel_slot = -1

    # -- introspection ---------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._all)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def subscribers(self) -> list[Subscriber]:
        return list(self._all)

    def subscription_count(self) -> int:
        n = 0
        sub: Subscriber
        for sub in self._all:
            n += sub._subscription_count()
        return n

    def type_counts(self) -> dict[Name, int]:
        """Subscribers per type (narrowed or not)."""
        out: dict[Name, int] = {t: len(s) for t, s in self._by_type.items()}
        for t, per_key in self._by_key.items():
            seen: set[Subscriber] = set()
            for subs in per_key.values():
                seen.update(subs)
            out[t] = out.get(t, 0) + len(seen)
        return out

    def pending_bytes_total(self) -> int:
        n = 0
        sub: Subscriber
        for sub in self._all:
            n += sub._pending_bytes
        return n

    def buffered_bytes_total(self) -> int:
        """Pending plus transport-buffered bytes, over every subscriber."""
        n = 0
        sub: Subscriber
        for sub in self._all:
            n += sub._pending_bytes + sub._transport_buffered
        return n


# -- reading client frames -----------------------------------------------------

#: What :meth:`FrameReader.feed` returns per complete message: its opcode
#: (text, binary, close, ping or pong), its unmasked payload (a data message's
#: fragments joined) and whether RSV1 marked it compressed (permessage-deflate).
Message = tuple[int, bytes, bool]


class FrameReader:
    """Parses what one client sends into whole messages (sans-I/O).

    :meth:`feed` takes bytes as they arrive and returns the messages they
    complete; a partial frame waits in the reader for the rest. Control frames
    (ping, pong, close) come out as they arrive, even between the fragments of
    a data message. Every rule of RFC 6455 section 5 a server must enforce is
    checked as soon as the frame header is in, so an oversized frame is refused
    before its payload is buffered: a violation stops the reader and is kept
    in :attr:`error` (a :class:`~aiosrv.errors.FrameError` with the close code:
    1002 for framing, 1009 for size), after the messages that came before it.

    ``max_size`` bounds a message (the sum of its fragments, as received);
    ``deflate`` says permessage-deflate was negotiated, which allows RSV1 on
    the first frame of a data message. Decompression is the caller's.

    The fragments of a data message are unmasked straight into one
    ``bytearray`` as they come, so what the reader holds for a message is its
    payload bytes (at most ``max_size``, plus the bytearray's growth margin of
    an eighth), never an object per fragment; a compressed (RSV1) message is
    kept and handed out the same way, whole, still compressed (the caller
    inflates it). A message may come in at most
    :data:`~aiosrv.errors.MAX_FRAGMENTS` data frames (its first and its
    continuations; control frames between them do not count): the frame
    header of one more fails with 1009. With that cap no per-fragment overhead
    is counted against ``max_size``: a fragment costs the reader nothing but
    its payload, and the cap bounds the parsing work of empty ones.

    A 64-bit extended payload length with its most significant bit set breaks
    RFC 6455 section 5.2 and fails with 1002 (checked here from the raw byte:
    :func:`~aiosrv._wire_py.read_header` reports it clamped like any length
    above ``MAX_LENGTH``); any other length over ``max_size`` fails with 1009.
    """

    __slots__ = (
        "_buf",
        "_frag",
        "_frag_count",
        "_frag_op",
        "_frag_rsv1",
        "deflate",
        "error",
        "max_size",
    )

    def __init__(self, max_size: Int, deflate: bool = False) -> None:
        self.max_size = _ssize(max_size)
        self.deflate = bool(deflate)
        self.error: FrameError | None = None
        self._buf = bytearray()
        # the fragmented data message so far: its payload, its data frames
        self._frag = bytearray()
        self._frag_count = 0
        self._frag_op = 0
        self._frag_rsv1 = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        out: list[Message] = []
        if self.error is not None:
            return out
        if type(data) is not bytes:
            data = bytes(data)
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            header = _wire.read_header(buf, pos)
            if header < 0:
                break  # the extended length is not all in yet
            b0 = header & 0xFF
            b1 = (header >> 8) & 0xFF
            length = header >> 16
            code = b1 & 0x7F
            head = 14 if code == 127 else 8 if code == 126 else 6
            fin = b0 & 0x80
            rsv1 = b0 & 0x40
            opcode = b0 & 0x0F
            problem: FrameError | None
            if code == 127 and buf[pos + 2] & 0x80:
                problem = FrameError(
                    1002, "64-bit payload length with its most significant bit set (RFC 6455 5.2)"
                )
            else:
                problem = self._check(fin, rsv1, b0 & 0x30, opcode, b1 & 0x80, length)
            if problem is not None:
                self.error = problem
                self._buf = bytearray()
                self._frag = bytearray()
                return out
            # length <= max_size here
            if end - pos < head + length:
                break
            start = pos + head
            pos = start + length
            if opcode >= 0x8:
                out.append((opcode, _wire.unmask_at(buf, start, length), False))
            elif opcode:
                if fin:
                    out.append((opcode, _wire.unmask_at(buf, start, length), rsv1 != 0))
                else:
                    # the first fragment: _frag is empty (the rules let no
                    # data frame in between)
                    self._frag_op = opcode
                    self._frag_rsv1 = rsv1 != 0
                    _wire.unmask_append(self._frag, buf, start, length)
                    self._frag_count = 1
            else:
                _wire.unmask_append(self._frag, buf, start, length)
                self._frag_count += 1
                if fin:
                    out.append((self._frag_op, bytes(self._frag), self._frag_rsv1))
                    self._frag = bytearray()
                    self._frag_count = 0
                    self._frag_op = 0
                    self._frag_rsv1 = False
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:])
        return out

    def _check(
        self, fin: Int, rsv1: Int, rsv23: Int, opcode: Int, masked: Int, length: Int
    ) -> FrameError | None:
        if rsv23:
            return FrameError(1002, "RSV2 or RSV3 set: no extension using them was negotiated")
        if not masked:
            return FrameError(1002, "client frames must be masked")
        if opcode >= 0x8:
            if opcode > 0xA:
                return FrameError(1002, f"unknown opcode {opcode:#x}")
            if not fin:
                return FrameError(1002, "a control frame must not be fragmented")
            if length > 125:
                return FrameError(1002, "a control frame's payload must be at most 125 bytes")
            if rsv1:
                return FrameError(1002, "RSV1 set on a control frame")
            return None
        if opcode == 0:
            if not self._frag_op:
                return FrameError(1002, "continuation frame with no fragmented message to continue")
            if rsv1:
                return FrameError(1002, "RSV1 set on a continuation frame")
            if self._frag_count >= _MAX_FRAGMENTS:
                return FrameError(
                    1009, f"message in more than {_MAX_FRAGMENTS} fragments (the limit)"
                )
            size = len(self._frag) + length
        elif opcode > 0x2:
            return FrameError(1002, f"unknown opcode {opcode:#x}")
        else:
            if self._frag_op:
                return FrameError(1002, "new data frame before the fragmented message ended")
            if rsv1 and not self.deflate:
                return FrameError(1002, "RSV1 set but permessage-deflate was not negotiated")
            size = length
        if size > self.max_size:
            return FrameError(1009, f"message of more than {self.max_size} bytes (the limit)")
        return None
