"""A socket-level fuzzer for aiosrv's WebSocket endpoint (hostile input).

One implementation, two users: ``bench/fuzz_frames.py`` (100,000 inputs, the
command line) and ``tests/server/test_fuzz.py`` (a few thousand, fixed seed).

What a run does (:func:`run_fuzz`):

* starts ``aiosrv serve`` as a child process (:mod:`tests.serverproc`), so the
  fuzzer's own CPU is not the server's;
* connects one normal subscriber (aiohttp's client, answering pings) to the
  type :data:`CHECK_TYPE`, and publishes to it one message per
  ``POST /api/publish`` at a steady rate, in a task, for the whole run;
* meanwhile ``conns`` raw TCP clients (asyncio streams, the upgrade written
  by hand) send the inputs: random and mutated frames, protocol-level junk,
  broken handshakes (:class:`Generator`). A connection carries a batch of
  inputs and a new one is opened when the server closes it or the batch ends;
* every input but a deliberately truncated one is followed by a *fence*: a
  ping frame with a unique payload. Control frames may come between
  fragments, and the server answers pings in order with everything it queued
  for the inputs before (replies to actions that wait on the broker are
  awaited by their ``id`` too), so the frames that arrive before the fence's
  pong are the input's outcome, and a close that arrives instead of it was
  caused by that input. A truncated input is the last of its connection: the
  client half-closes and reads the server's answer to the end;
* each input's outcome is classified (:func:`label`): ``pong``, ``ack``,
  ``error:invalid_json``, ``close:1002``, ``close:echo`` (the server echoed
  the client's close), ``none`` (nothing but the fence), ``eof``, ``reset``,
  ``stall`` (no answer within ``stall_timeout``), ``http:400`` (a refused
  handshake) ...; per input kind the outcomes that are *expected* are known
  and others are reported as surprises (not failures: the contract leaves
  some choices to the server, and the frame reader is being changed);
* at the end the invariants are checked (:meth:`FuzzReport.check`): the
  server process is alive and ``/health`` answers 200; the normal subscriber
  got every published message, in order, without a gap in ``seq``; every
  close code the server chose is in the contract (:data:`CONTRACT_CLOSE_CODES`)
  and 1011 never appears; no input stalled and no handshake got a 500; the
  connections all went (``/ws/stats``); the server's RSS stayed under a bound
  (before, peak from ``VmHWM``, after); its log holds no traceback and no
  "unexpected error"; SIGTERM stops it with status 0.

Every input that broke an invariant is replayed on a fresh connection after
the run and shrunk to the fewest inputs of its connection that still do it
(:func:`minimize`): the report gives the bytes to send (hex) after a normal
upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.serverproc import ServerProcess, cpu_seconds, start_server

#: The type the normal subscriber watches; no fuzz input ever names it.
CHECK_TYPE = "fuzz-check"

#: The close codes the server may choose (docs/protocol.md, "Close codes"):
#: 1000 answers a client that closed its side of the TCP connection.
CONTRACT_CLOSE_CODES = frozenset({1000, 1001, 1002, 1007, 1008, 1009, 1011, 1013, 4000})

#: A server bug by definition: "unexpected server error".
INTERNAL_ERROR = 1011

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

REPLY_TYPES = frozenset({"ack", "pong", "history", "error"})

#: Outcomes that break an invariant whatever the input.
BAD_LABELS = frozenset({f"close:{INTERNAL_ERROR}", "stall", "http:500", "server-framing"})

FENCE_PREFIX = b"\xf0fence:"

#: How long a client whose upgrade request the server is still waiting on
#: waits for the server to close the connection (handshake timeout 10 s, + 2).
HANDSHAKE_WAIT = 12.0

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - the venv is 3.11

    @contextlib.asynccontextmanager
    async def _timeout(delay: float) -> Any:
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(delay, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            raise TimeoutError from None
        finally:
            handle.cancel()


# --------------------------------------------------------------------------- frames


def xor_mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 section 5.3)."""
    n = len(data)
    if not n:
        return b""
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(full, "little")).to_bytes(n, "little")


def frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    key: bytes | None,
    fin: bool = True,
    rsv: int = 0,
    length: int | None = None,
    form: int | None = None,
    masked_with: bytes | None = None,
) -> bytes:
    """One client frame, exactly as told: ``key=None`` sends it unmasked;
    ``length`` announces another length than the payload's; ``form`` (7, 16,
    64) forces the length encoding; ``masked_with`` masks the payload with
    another key than the one in the header."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mbit = 0 if key is None else 0x80
    if form is None:
        form = 7 if n < 126 else 16 if n < 65536 else 64
    if form == 7:
        head = bytes((b0, mbit | (n & 0x7F)))
    elif form == 16:
        head = bytes((b0, mbit | 126)) + (n & 0xFFFF).to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + (n & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
    if key is None:
        return head + payload
    return head + key + xor_mask(payload, masked_with or key)


def _preview(data: bytes, limit: int = 160) -> str:
    """Bytes for people: text when it decodes, runs of one character shortened."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(data)[2:-1]
    out: list[str] = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        out.append(text[i] * (j - i) if j - i < 8 else f"{text[i]!r}*{j - i}")
        i = j
    shown = "".join(out)
    if len(shown) > limit:
        shown = shown[: limit - 40] + " ... " + shown[-30:]
    return shown


def describe(data: bytes) -> str:
    """The client frames in ``data``, decoded (unmasked): one line each, and
    what is left when the last one is cut short."""
    lines: list[str] = []
    pos = 0
    end = len(data)
    while pos < end:
        if len(lines) >= 12:
            lines.append(f"... {end - pos} more bytes")
            break
        if end - pos < 2:
            lines.append(f"cut: {data[pos:].hex()}")
            break
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        head = 2
        if n == 126:
            head = 4
        elif n == 127:
            head = 10
        if end - pos < head:
            lines.append(f"cut header: {data[pos:].hex()}")
            break
        if n == 126:
            n = int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif n == 127:
            n = int.from_bytes(data[pos + 2 : pos + 10], "big")
        masked = bool(b1 & 0x80)
        key = data[pos + head : pos + head + 4] if masked else b""
        start = pos + head + (4 if masked else 0)
        payload = data[start : start + n]
        if masked:
            payload = xor_mask(payload, key)
        bits = ((0x80, "FIN "), (0x40, "RSV1 "), (0x20, "RSV2 "), (0x10, "RSV3 "))
        flags = "".join(name for bit, name in bits if b0 & bit)
        lines.append(
            f"{flags}op={b0 & 0x0F:#x} {'masked' if masked else 'UNMASKED'} len={n}"
            + (f" (only {len(payload)} sent)" if len(payload) < n else "")
            + f": {_preview(payload)}"
        )
        pos = start + n
    return "; ".join(lines)


def upgrade_request(port: int, key: str, path: str = "/ws/realtime", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


# --------------------------------------------------------------------------- inputs


@dataclass(slots=True)
class Input:
    """One fuzz input: bytes to write on an open WebSocket (or, for a
    ``handshake`` input, instead of the upgrade request)."""

    kind: str
    data: bytes
    #: the outcomes (see :func:`label`) that are expected; None: anything
    #: that breaks no invariant
    expect: frozenset[str] | None = None
    #: wait for a reply with this id too (actions that may wait on the broker)
    rid: str | None = None
    #: leaves the stream out of step (a cut frame): the client half-closes after it
    terminal: bool = False
    #: may leave a fragmented message open, or the framing unknown: outcomes
    #: of later inputs on the connection are not compared with expectations
    dirty: bool = False
    #: the close frame payload this input sent, if it is a close the server should echo
    close_payload: bytes | None = None
    #: a handshake input: the whole request (or junk) to send instead of the upgrade
    handshake: bool = False


def _e(*labels: str) -> frozenset[str]:
    return frozenset(labels)


ANY_ERROR = "error:*"  # any single error reply
NO_CLOSE = "noclose"  # any outcome that leaves the connection open


def matches(outcome: str, expect: frozenset[str] | None) -> bool:
    if expect is None:
        return True
    if outcome in expect:
        return True
    if ANY_ERROR in expect and outcome.startswith("error:") and "+" not in outcome:
        return True
    return NO_CLOSE in expect and not outcome.startswith(("close:", "eof", "reset", "stall"))


#: Type names that are valid (1-128 characters, not "error"); never CHECK_TYPE.
VALID_TYPES = (
    "prices", "news", "status", "stats", "health", "a", "t" * 128, "é" * 128,
    "fuzz", "fuzz-other", "☃", "with space", "nul\u0000in", "x.y:z", "🙂",
)  # fmt: skip
BAD_TYPES: tuple[Any, ...] = (
    "", "t" * 129, "é" * 129, 1, 0, -1, 1.5, True, False, None, [], ["a"], {}, {"a": 1},
)  # fmt: skip
#: The types the server publishes itself (docs/protocol.md, "Built-in types").
SERVER_TYPES = frozenset({"status", "stats", "health"})
#: Values of payload.types that are not a non-empty list of type names.
BAD_TYPE_LISTS: tuple[Any, ...] = ("a", "", 1, None, True, [], {}, {"a": 1}, [[]], [None])
VALID_KEYS = ("k1", "k2", "EURUSD", "κ", "k" * 256)
BAD_KEYS: tuple[Any, ...] = ("", "k" * 257, 1, None, [], {}, True)
BAD_SEQS: tuple[Any, ...] = (-1, -(2**63), 1.5, True, "3", None, [], {}, 2**64, 1e300)
BAD_LIMITS: tuple[Any, ...] = (0, -1, -(2**63), 1.5, True, False, "10", [], {}, 2**64, 1e300)
ACTIONS = ("subscribe", "unsubscribe", "ping", "history", "publish")


class Generator:
    """Inputs from a seeded ``random.Random``: the same seed, the same inputs.

    ``max_size`` is the server's ``websocket.max_message_size``;
    ``client_publish`` whether it accepts ``publish`` from WebSocket clients.
    """

    def __init__(self, seed: int, *, max_size: int, client_publish: bool, tag: str = "") -> None:
        self.r = random.Random(seed)
        self.max_size = max_size
        self.client_publish = client_publish
        self.tag = tag
        self.n = 0
        table: list[tuple[float, Callable[[], Input]]] = [
            (14, self.valid_action),
            (9, self.wrong_types),
            (3, self.unknown_action),
            (5, self.random_json),
            (4, self.non_json_text),
            (0.25, self.huge_json),
            (3, self.nested_json),
            (4, self.invalid_utf8),
            (2, self.binary),
            (6, self.control),
            (3, self.reserved_opcode),
            (3, self.rsv_bits),
            (3, self.unmasked),
            (2, self.bad_mask),
            (3, self.length_forms),
            (2, self.over_limit),
            (1, self.top_bit_length),
            (3, self.truncated),
            (6, self.fragmented),
            (0.4, self.many_fragments),
            (3, self.fragment_errors),
            (2, self.random_bytes),
            (6, self.mutated),
            (2, self.several_frames),
        ]
        self._weights = [w for w, _ in table]
        self._makers = [m for _, m in table]

    # -- helpers -------------------------------------------------------------------

    def next(self) -> Input:
        (maker,) = self.r.choices(self._makers, self._weights)
        return maker()

    def rid(self) -> str:
        self.n += 1
        return f"{self.tag}{self.n}"

    def key(self) -> bytes:
        return self.r.randbytes(4)

    def text_frame(self, text: str | bytes, **kw: Any) -> bytes:
        data = text.encode() if isinstance(text, str) else text
        return frame(data, OP_TEXT, key=self.key(), **kw)

    def dumps(self, obj: Any) -> str:
        return json.dumps(obj, ensure_ascii=self.r.random() < 0.5, separators=(",", ":"))

    def rand_str(self, maxlen: int = 20) -> str:
        r = self.r
        n = r.randint(0, maxlen)
        pools = (
            "abcdefghijklmnopqrstuvwxyz0123456789",
            '"\\/\b\f\n\r\t{}[]:,',
            "éüß☃🙂\u0000\u001f\u2028\ufeff\uffff",
        )
        pool = "".join(r.sample(pools, r.randint(1, 3)))
        return "".join(r.choice(pool) for _ in range(n))

    def rand_json(self, depth: int = 3) -> Any:
        r = self.r
        k = r.randint(0, 9 if depth > 0 else 5)
        if k == 0:
            return None
        if k == 1:
            return r.random() < 0.5
        if k == 2:
            return r.choice((0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64))
        if k == 3:
            return r.choice((0.0, -0.0, 1.5, 1e308, -1e-308, 3.141592653589793))
        if k in (4, 5):
            return self.rand_str()
        if k in (6, 7):
            return [self.rand_json(depth - 1) for _ in range(r.randint(0, 4))]
        obj: dict[str, Any] = {}
        for _ in range(r.randint(0, 4)):
            name = r.choice(("id", "action", "type", "payload", "types", "timestamp", "keys"))
            obj[name if r.random() < 0.6 else self.rand_str(8)] = self.rand_json(depth - 1)
        return obj

    def valid_type(self) -> str:
        return self.r.choice(VALID_TYPES)

    def action_json(self, action: str, payload: Any = None, *, rid: str | None = None) -> str:
        msg: dict[str, Any] = {}
        if rid is not None:
            msg["id"] = rid
        r = self.r
        if r.random() < 0.2:
            msg["type"] = r.choice(("config", "x", ""))
        if r.random() < 0.2:
            msg["timestamp"] = r.choice((0, 1767400000000, -5, "now"))
        msg["action"] = action
        if payload is not None or r.random() < 0.1:
            msg["payload"] = payload
        return self.dumps(msg)

    # -- valid protocol use --------------------------------------------------------

    def valid_action(self) -> Input:
        r = self.r
        rid = self.rid()
        k = r.randint(0, 9)
        if k <= 2:
            text = self.action_json("ping", r.choice(({}, None, {"x": 1})), rid=rid)
            return Input("valid:ping", self.text_frame(text), _e("pong"), rid)
        if k <= 5:
            types = list({self.valid_type(): None for _ in range(r.randint(1, 4))})
            payload: dict[str, Any] = {"types": types}
            if r.random() < 0.3:
                payload["keys"] = {types[0]: r.sample(VALID_KEYS, r.randint(1, 3))}
            if r.random() < 0.3:
                payload["since"] = {types[-1]: r.choice((0, 1, 5, 10**9, 2**64 - 1))}
            return Input(
                "valid:subscribe", self.text_frame(self.action_json("subscribe", payload, rid=rid)),
                _e("ack"), rid,
            )  # fmt: skip
        if k == 6:
            text = self.action_json("unsubscribe", {"types": [self.valid_type()]}, rid=rid)
            return Input("valid:unsubscribe", self.text_frame(text), _e("ack"), rid)
        if k <= 8:
            payload = {"type": self.valid_type()}
            if r.random() < 0.5:
                payload["limit"] = r.choice((1, 10, 50, 51, 10**9, 2**63 - 1))
            if r.random() < 0.3:
                payload["since"] = r.choice((0, 3, 10**12))
            text = self.action_json("history", payload, rid=rid)
            return Input("valid:history", self.text_frame(text), _e("history"), rid)
        payload = {"type": self.valid_type(), "payload": self.rand_json()}
        if r.random() < 0.3:
            payload["key"] = r.choice(VALID_KEYS)
        expect = _e("ack") if self.client_publish else _e("error:publish_forbidden")
        if payload["type"] in SERVER_TYPES:
            # only the server publishes its built-in types (refused with forbidden)
            expect = expect | _e("error:forbidden")
        text = self.action_json("publish", payload, rid=rid)
        return Input("valid:publish", self.text_frame(text), expect, rid)

    def wrong_types(self) -> Input:
        """Well-formed JSON objects with a field of the wrong type or out of range."""
        r = self.r
        rid = self.rid()
        t = self.valid_type()
        cases: list[tuple[dict[str, Any], str]] = [
            ({"action": r.choice((5, 1.5, True, [], {}, ["ping"]))}, "invalid_message"),
            ({"action": None}, "invalid_message"),
            ({}, "invalid_message"),
            ({"action": "ping", "payload": r.choice(("x", 1, [], True))}, "invalid_message"),
            ({"action": "subscribe"}, "invalid_message"),
            ({"action": "subscribe", "payload": {"types": r.choice(BAD_TYPE_LISTS)}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t, r.choice(BAD_TYPES)]}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t, "error"]}}, "reserved_type"),
            ({"action": "subscribe",
              "payload": {"types": [t], "keys": r.choice(("k", 1, [], [t]))}}, "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t], "keys": {"not-listed": ["k"]}}},
             "invalid_message"),
            ({"action": "subscribe",
              "payload": {"types": [t], "keys": {t: r.choice(([], "k", 1, {}))}}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t], "keys": {t: [r.choice(BAD_KEYS)]}}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t], "since": r.choice((1, [], "x"))}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [t], "since": {t: r.choice(BAD_SEQS)}}},
             "invalid_message"),
            ({"action": "subscribe", "payload": {"types": [f"t{i}" for i in range(101)]}},
             "too_many_subscriptions"),
            ({"action": "subscribe",
              "payload": {"types": [t], "keys": {t: [f"k{i}" for i in range(101)]}}},
             "too_many_subscriptions"),
            ({"action": "unsubscribe", "payload": r.choice(({}, {"types": []}, {"types": "a"}))},
             "invalid_message"),
            ({"action": "history", "payload": {"type": r.choice(BAD_TYPES)}}, "invalid_message"),
            ({"action": "history", "payload": {"type": "error"}}, "reserved_type"),
            ({"action": "history", "payload": {"type": t, "limit": r.choice(BAD_LIMITS)}},
             "invalid_message"),
            ({"action": "history", "payload": {"type": t, "since": r.choice(BAD_SEQS[:5])}},
             "invalid_message"),
            ({"action": "publish", "payload": {"type": t}}, "invalid_message"),
            ({"action": "publish", "payload": {"type": r.choice(BAD_TYPES), "payload": 1}},
             "invalid_message"),
            ({"action": "publish", "payload": {"type": "error", "payload": 1}}, "reserved_type"),
            ({"action": "publish",
              "payload": {"type": t, "payload": 1, "key": r.choice(BAD_KEYS[:3])}},
             "invalid_message"),
        ]  # fmt: skip
        msg, code = r.choice(cases)
        if r.random() < 0.15:
            # an id of the wrong type: the error comes without an id
            bad_id = r.choice((1, [], {}, True, 1.5))
            text = self.dumps({"id": bad_id, **msg})
            return Input("wrong-type:id", self.text_frame(text), _e("error:invalid_message"))
        text = self.dumps({"id": rid, **msg})
        expect = _e(f"error:{code}")
        return Input(f"wrong-type:{msg.get('action')}", self.text_frame(text), expect, rid)

    def unknown_action(self) -> Input:
        r = self.r
        rid = self.rid()
        action = r.choice(
            ("SUBSCRIBE", "subscribe ", "delete", "", "pingg", "publish\u0000", self.rand_str(30))
        )
        if action in ACTIONS:
            action += "?"
        text = self.action_json(action, {"types": ["a"]}, rid=rid)
        return Input("unknown-action", self.text_frame(text), _e("error:unknown_action"), rid)

    def random_json(self) -> Input:
        value = self.rand_json(4)
        text = self.dumps(value)
        # anything but a close: an error, or a reply if it happens to be valid
        return Input("random-json", self.text_frame(text), _e(NO_CLOSE))

    def non_json_text(self) -> Input:
        r = self.r
        choices = (
            self.rand_str(60),
            "{",
            "}",
            '{"action":"ping"',
            '{"action":"ping"}}',
            '{"action":"ping",}',
            "[1,2,]",
            "NaN",
            "Infinity",
            "'single'",
            '{"a":"\\ud800"}',
            '{"a":"\\x41"}',
            '{"a":01}',
            "\ufeff{}",
            "",
            " ",
            "null null",
            '{"action":"ping"} {"action":"ping"}',
        )
        text = r.choice(choices)
        try:
            orjson.loads(text)
            expect: frozenset[str] | None = _e(NO_CLOSE)
        except orjson.JSONDecodeError:
            expect = _e("error:invalid_json")
        return Input("non-json", self.text_frame(text), expect)

    def huge_json(self) -> Input:
        r = self.r
        rid = self.rid()
        limit = self.max_size
        size = r.choice((limit, limit - 1, limit + 1, 2 * limit, r.randint(60_000, limit)))
        shape = r.randint(0, 3)
        head = f'{{"id":"{rid}","action":"ping","pad":'
        if shape == 0:  # one long string
            body = head + '"' + "x" * max(0, size - len(head) - 3) + '"}'
        elif shape == 1:  # a long list of small numbers
            count = max(1, (size - len(head) - 3) // 2)
            body = head + "[" + ",".join(["1"] * count) + "]}"
        elif shape == 2:  # many keys
            count = max(1, (size - len(head)) // 12)
            body = head + "{" + ",".join(f'"k{i:07d}":1' for i in range(count)) + "}}"
        else:  # subscribe to very many types: refused as too many
            count = max(1, (size - 60) // 12)
            types = ",".join(f'"t{i:08d}"' for i in range(count))
            body = f'{{"id":"{rid}","action":"subscribe","payload":{{"types":[{types}]}}}}'
        data = body.encode()
        if len(data) < size:
            data = data[:-1] + b" " * (size - len(data)) + data[-1:]
        if len(data) > limit:
            return Input("huge:over-limit", self.text_frame(data), _e("close:1009"))
        expect = _e("error:too_many_subscriptions") if shape == 3 else _e("pong")
        return Input("huge:within-limit", self.text_frame(data), expect, rid)

    def nested_json(self) -> Input:
        """Deep nesting in every field the server reads (orjson parses 1,024 levels)."""
        r = self.r
        depth = r.choice(
            (r.randint(2, 60), 100, 253, 254, 255, 256, 500, r.randint(960, 1030), 2000)
        )
        if r.random() < 0.7:
            nest = "[" * depth + "]" * depth
        else:
            nest = '{"a":' * depth + "1" + "}" * depth
        rid = self.rid()
        where = r.randint(0, 10)
        head = f'{{"id":"{rid}",'
        if where == 0:
            text, kind = nest, "top"
        elif where == 1:
            text, kind = head + '"action":"subscribe","payload":{"types":' + nest + "}}", "types"
        elif where == 2:
            text, kind = head + '"action":"subscribe","payload":{"types":[' + nest + "]}}", "type"
        elif where == 3:
            text, kind = head + '"action":"ping","payload":' + nest + "}", "payload"
        elif where == 4:
            text, kind = '{"id":' + nest + ',"action":"ping"}', "id"
        elif where == 5:
            text, kind = '{"action":' + nest + "}", "action"
        elif where == 6:
            text = head + '"action":"subscribe","payload":{"types":["a"],"keys":{"a":' + nest
            text, kind = text + "}}}", "keys"
        elif where == 7:
            text = head + '"action":"subscribe","payload":{"types":["a"],"since":{"a":' + nest
            text, kind = text + "}}}", "since"
        elif where == 8:
            text = head + '"action":"history","payload":{"type":"a","limit":' + nest + "}}"
            kind = "limit"
        elif where == 9:
            text = head + '"action":"publish","payload":{"type":"fuzz","payload":' + nest + "}}"
            kind = "publish"
        else:
            text, kind = head + '"action":"ping","extra":' + nest + "}", "ignored-field"
        expect = {ANY_ERROR}
        # a publish waits on the broker: its reply (with the id) may follow the
        # fence; wait for it when the document parses (orjson: 1,024 levels at most)
        waits = kind == "publish" and depth + 2 <= 1024
        if kind in ("publish", "ignored-field", "payload"):  # a payload object is a ping's
            expect.add("ack" if self.client_publish and kind == "publish" else "pong")
        return Input(
            f"nested:{kind}", self.text_frame(text), frozenset(expect), rid if waits else None
        )

    def invalid_utf8(self) -> Input:
        r = self.r
        bad = r.choice(
            (b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80", b"\xc3")
        )  # fmt: skip
        k = r.randint(0, 4)
        if k == 0:
            data = b'{"action":"ping","x":"' + bad + b'"}'
            return Input("utf8:in-text", self.text_frame(data), _e("close:1007"))
        if k == 1:
            data = b'{"action":"ping"}' + bad
            return Input("utf8:at-end", self.text_frame(data), _e("close:1007"))
        if k == 2:  # split across fragments: valid only when joined
            rid = self.rid()
            text = f'{{"id":"{rid}","action":"ping","x":"€☃🙂"}}'.encode()
            cut = text.index(b"\xe2") + 1
            data = frame(text[:cut], OP_TEXT, key=self.key(), fin=False) + frame(
                text[cut:], OP_CONT, key=self.key()
            )
            return Input("utf8:split-valid", data, _e("pong"), rid)
        if k == 3:  # invalid in the second fragment
            data = frame(b'{"action":"ping","x":"', OP_TEXT, key=self.key(), fin=False) + frame(
                bad + b'"}', OP_CONT, key=self.key()
            )
            return Input("utf8:in-fragment", data, _e("close:1007"))
        # a close reason that is not UTF-8
        data = frame(struct.pack("!H", 1000) + bad, OP_CLOSE, key=self.key())
        return Input("utf8:close-reason", data, _e("close:1007"))

    def binary(self) -> Input:
        r = self.r
        payload = r.choice((b"", b'{"action":"ping"}', r.randbytes(r.randint(1, 300))))
        if r.random() < 0.3:
            data = frame(payload[:1], OP_BINARY, key=self.key(), fin=False) + frame(
                payload[1:], OP_CONT, key=self.key()
            )
            return Input("binary:fragmented", data, _e("error:invalid_message"))
        return Input(
            "binary", frame(payload, OP_BINARY, key=self.key()), _e("error:invalid_message")
        )

    def control(self) -> Input:
        r = self.r
        k = r.randint(0, 11)
        if k <= 2:
            data = r.randbytes(r.choice((0, 1, 2, 64, 125)))
            return Input("control:ping", frame(data, OP_PING, key=self.key()), _e("pongframe"))
        if k == 3:
            data = r.randbytes(r.choice((0, 5, 125)))
            return Input("control:pong", frame(data, OP_PONG, key=self.key()), _e("none"))
        if k == 4:
            op = r.choice((OP_PING, OP_PONG, OP_CLOSE))
            data = r.randbytes(r.choice((126, 200, 1000, 70000)))
            return Input("control:over-125", frame(data, op, key=self.key()), _e("close:1002"))
        if k == 5:
            op = r.choice((OP_PING, OP_PONG, OP_CLOSE))
            data = frame(b"p", op, key=self.key(), fin=False) + frame(b"q", OP_CONT, key=self.key())
            return Input("control:fragmented", data, _e("close:1002"))
        if k <= 7:
            code = r.choice((1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4000, 4999))
            reason = r.choice((b"", b"bye", "é☃".encode(), b"r" * 123))
            payload = struct.pack("!H", code) + reason
            return Input(
                "control:close", frame(payload, OP_CLOSE, key=self.key()), _e("close:echo"),
                close_payload=payload,
            )  # fmt: skip
        if k == 8:
            return Input(
                "control:close-empty", frame(b"", OP_CLOSE, key=self.key()), _e("close:echo"),
                close_payload=b"",
            )  # fmt: skip
        if k == 9:
            code = r.choice((0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535))
            data = frame(struct.pack("!H", code), OP_CLOSE, key=self.key())
            return Input("control:close-bad-code", data, _e("close:1002"))
        if k == 10:
            data = frame(b"\x03", OP_CLOSE, key=self.key())
            return Input("control:close-1-byte", data, _e("close:1002"))
        # a ping with the RSV1 bit (control frames take none)
        data = frame(b"x", OP_PING, key=self.key(), rsv=4)
        return Input("control:rsv1", data, _e("close:1002"))

    def reserved_opcode(self) -> Input:
        op = self.r.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF))
        payload = self.r.randbytes(self.r.randint(0, 40))
        return Input(f"opcode:{op:#x}", frame(payload, op, key=self.key()), _e("close:1002"))

    def rsv_bits(self) -> Input:
        r = self.r
        rsv = r.choice((1, 2, 3, 4, 5, 6, 7))
        op = r.choice((OP_TEXT, OP_BINARY))
        data = frame(b'{"action":"ping"}', op, key=self.key(), rsv=rsv)
        return Input(f"rsv:{rsv}", data, _e("close:1002"))

    def unmasked(self) -> Input:
        r = self.r
        op = r.choice((OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE, OP_PONG))
        payload = b'{"action":"ping"}' if op != OP_CLOSE else struct.pack("!H", 1000)
        return Input("unmasked", frame(payload, op, key=None), _e("close:1002"))

    def bad_mask(self) -> Input:
        """The mask key in the header is not the one the payload was masked with."""
        text = self.action_json("ping", {}).encode()
        data = frame(text, OP_TEXT, key=self.key(), masked_with=self.key())
        return Input("bad-mask", data, None)

    def length_forms(self) -> Input:
        """A payload length in a longer form than needed (RFC 6455 says the
        minimal one MUST be used; accepting or refusing with 1002 are both fine)."""
        r = self.r
        rid = self.rid()
        form = r.choice((16, 64))
        text = self.action_json("ping", {}, rid=rid)
        if r.random() < 0.5:
            data = self.text_frame(text, form=form)
            return Input(f"length:{form}-bit-small", data, _e("pong", "close:1002"), rid)
        op = r.choice((OP_PING, OP_PONG))
        data = frame(b"abc", op, key=self.key(), form=form)
        return Input(f"length:{form}-bit-control", data, _e("pongframe", "none", "close:1002"))

    def over_limit(self) -> Input:
        """A header announcing more than the size limit, and a few bytes of it."""
        r = self.r
        n = r.choice((self.max_size + 1, 2 * self.max_size, 2**32, 2**47, 2**62, 2**63 - 1))
        head = frame(b"", r.choice((OP_TEXT, OP_BINARY)), key=self.key(), length=n, form=64)
        data = head + r.randbytes(r.choice((0, 10, 1000)))
        return Input("length:over-limit", data, _e("close:1009"), dirty=True)

    def top_bit_length(self) -> Input:
        """A 64-bit length with its top bit set (RFC 6455: MUST be 0)."""
        r = self.r
        n = (1 << 63) | r.choice((0, 5, 2**32, 2**62))
        op = r.choice((OP_TEXT, OP_BINARY, OP_CONT))
        data = frame(b"", op, key=self.key(), length=n, form=64)
        # refused either way; which code is the frame reader's (being changed)
        return Input("length:top-bit", data, _e("close:1002", "close:1009"), dirty=True)

    def truncated(self) -> Input:
        """A frame cut short, then the client's FIN: the server must close (1000)."""
        r = self.r
        full = self.text_frame(self.action_json("ping", {"pad": "x" * r.choice((1, 200, 70000))}))
        head = 2 + (2 if full[1] & 0x7F == 126 else 8 if full[1] & 0x7F == 127 else 0)
        cut = r.choice((1, 2, head - 1 if head > 2 else 1, head + 2, head + 4, len(full) - 1))
        cut = max(1, min(cut, len(full) - 1))
        return Input("truncated", full[:cut], _e("close:1000"), terminal=True, dirty=True)

    def fragmented(self) -> Input:
        """A valid message in fragments, with pings (and pongs) in between."""
        r = self.r
        rid = self.rid()
        text = self.action_json(
            r.choice(("ping", "history")),
            {"type": self.valid_type(), "pad": self.rand_str(40)},
            rid=rid,
        ).encode()
        k = r.randint(2, 8)
        cuts = sorted(r.sample(range(len(text) + 1), k - 1))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out = []
        pings = 0
        for i, part in enumerate(parts):
            op = OP_TEXT if i == 0 else OP_CONT
            out.append(frame(part, op, key=self.key(), fin=i == len(parts) - 1))
            if i < len(parts) - 1 and r.random() < 0.5:
                if r.random() < 0.7:
                    out.append(frame(r.randbytes(r.randint(0, 20)), OP_PING, key=self.key()))
                    pings += 1
                else:
                    out.append(frame(b"", OP_PONG, key=self.key()))
        reply = "history" if b'"history"' in text else "pong"
        expect = _e(f"{reply}+pongframe" if pings else reply)
        if r.random() < 0.2:  # the start alone: the message stays open
            return Input("fragment:start-only", out[0], _e("none"), dirty=True)
        return Input("fragment:valid", b"".join(out), expect, rid)

    def many_fragments(self) -> Input:
        """Very many (often empty) fragments: the server may cap the count (1009)."""
        r = self.r
        rid = self.rid()
        text = f'{{"id":"{rid}","action":"ping"}}'.encode()
        count = r.choice((100, 1023, 1024, 1025, 3000, 20000))
        empty = r.random() < 0.7
        out = [frame(text[:1], OP_TEXT, key=self.key(), fin=False)]
        filler = frame(b"", OP_CONT, key=self.key(), fin=False)
        if empty:
            out.append(filler * (count - 2))
        else:  # a space each: JSON whitespace after the "{"
            out.extend(frame(b" ", OP_CONT, key=self.key(), fin=False) for _ in range(count - 2))
        out.append(frame(text[1:], OP_CONT, key=self.key()))
        return Input(
            f"fragment:many-{count}", b"".join(out), _e("pong", "close:1009", "close:1002"), rid
        )

    def fragment_errors(self) -> Input:
        r = self.r
        k = r.randint(0, 3)
        if k == 0:
            data = frame(b'{"action":"ping"}', OP_CONT, key=self.key(), fin=r.random() < 0.5)
            return Input("fragment:continuation-first", data, _e("close:1002"))
        if k == 1:
            data = frame(b'{"action":', OP_TEXT, key=self.key(), fin=False) + frame(
                b'{"action":"ping"}', r.choice((OP_TEXT, OP_BINARY)), key=self.key()
            )
            return Input("fragment:new-data-inside", data, _e("close:1002"))
        if k == 2:
            data = frame(b'{"action":', OP_TEXT, key=self.key(), fin=False) + frame(
                b'"ping"}', OP_CONT, key=self.key(), rsv=4
            )
            return Input("fragment:rsv1-on-continuation", data, _e("close:1002"))
        # fragments that together pass the size limit
        half = self.max_size // 2 + 1
        data = frame(b"[" + b"1" * (half - 1), OP_TEXT, key=self.key(), fin=False) + frame(
            b"1" * half, OP_CONT, key=self.key()
        )
        return Input("fragment:over-limit", data, _e("close:1009"))

    def random_bytes(self) -> Input:
        r = self.r
        data = r.randbytes(r.choice((1, 2, 3, 8, 14, 50, 300, 3000)))
        return Input("random-bytes", data, None, terminal=True, dirty=True)

    def mutated(self) -> Input:
        """A valid frame with bits flipped: in its first byte (FIN, RSV, opcode),
        its mask or payload (the frame stays whole), or its length (cut short)."""
        r = self.r
        base = self.valid_action()
        data = bytearray(base.data)
        b1 = data[1] & 0x7F
        head = 2 + (2 if b1 == 126 else 8 if b1 == 127 else 0)
        where = r.randint(0, 3)
        if where == 0:
            data[0] ^= 1 << r.randint(0, 7)
            kind = "mutated:byte0"
        elif where == 1:
            i = r.randint(head, len(data) - 1)
            data[i] ^= 1 << r.randint(0, 7)
            kind = "mutated:mask-or-payload"
        elif where == 2:
            for _ in range(r.randint(1, 8)):
                i = r.randint(head + 4, len(data) - 1)
                data[i] = r.randint(0, 255)
            kind = "mutated:payload-bytes"
        else:
            i = r.randint(1, head - 1)
            data[i] ^= 1 << r.randint(0, 6 if i == 1 else 7)
            return Input("mutated:length", bytes(data), None, terminal=True, dirty=True)
        return Input(kind, bytes(data), None, dirty=True)

    def several_frames(self) -> Input:
        """Several whole inputs in one write (the server reads them as one chunk)."""
        parts = [self.valid_action() for _ in range(self.r.randint(2, 6))]
        # replies come in request order: the last one's id ends the input
        data = b"".join(p.data for p in parts)
        return Input("several-frames", data, _e(NO_CLOSE), parts[-1].rid)

    # -- handshakes ------------------------------------------------------------------

    def handshake(self, port: int) -> Input:
        """A broken (or odd but valid) upgrade request, sent instead of the normal one."""
        r = self.r
        key = base64.b64encode(r.randbytes(16)).decode()
        good = upgrade_request(port, key)
        k = r.randint(0, 13)
        if k == 0:
            data, kind = r.randbytes(r.randint(1, 64)) + good, "junk-before"
        elif k == 1:
            cut = r.randint(1, len(good) - 1)
            data, kind = good[:cut] + r.randbytes(r.randint(1, 16)) + good[cut:], "junk-within"
        elif k == 2:
            data, kind = r.randbytes(r.randint(1, 2000)), "junk-only"
        elif k == 3:
            data, kind = (
                good.replace(b"GET", r.choice((b"POST", b"PUT", b"get", b"G\x00T"))),
                "method",
            )
        elif k == 4:
            data, kind = (
                good.replace(b"Version: 13", r.choice((b"Version: 8", b"Version: x"))),
                "version",
            )
        elif k == 5:
            bad_key = r.choice(("", "abc", base64.b64encode(r.randbytes(15)).decode(), "!" * 24))
            data, kind = good.replace(key.encode(), bad_key.encode()), "key"
        elif k == 6:
            data, kind = good.replace(b"Upgrade: websocket\r\n", b""), "no-upgrade"
        elif k == 7:
            data, kind = (
                good.replace(b"Connection: Upgrade\r\n", b"Connection: close\r\n"),
                "no-connection",
            )
        elif k == 8:
            big = "X-Big: " + "b" * r.choice((8_000, 40_000, 100_000)) + "\r\n"
            data, kind = upgrade_request(port, key, extra=big), "huge-header"
        elif k == 9:
            data, kind = good[: r.randint(1, len(good) - 1)], "truncated"
        elif k == 10:
            hdr = b"X-" + r.randbytes(r.randint(1, 20)) + b": " + r.randbytes(r.randint(0, 20))
            data, kind = good.replace(b"\r\n\r\n", b"\r\n" + hdr + b"\r\n\r\n"), "junk-header"
        elif k == 11:
            path = r.choice(("/nope", "/ws/realtime/../x", "/" + "a" * 5000, "/ws?x=\x01"))
            data, kind = upgrade_request(port, key, path=path), "path"
        elif k == 12:
            data = upgrade_request(
                port,
                key,
                extra="Sec-WebSocket-Extensions: permessage-deflate; x=" + "y" * 50 + "\r\n",
            )
            kind = "extensions"
        else:
            data = good.replace(b"Upgrade: websocket", b"uPgRaDe: WebSocket").replace(
                b"Connection: Upgrade", b"connection: keep-alive, UPGRADE"
            )
            kind = "odd-case"
        return Input(f"handshake:{kind}", data, None, handshake=True, terminal=k in (2, 9))


# --------------------------------------------------------------------------- outcomes


@dataclass
class Finding:
    """An input that broke an invariant, with what its connection sent before it."""

    kind: str
    outcome: str
    history: list[Input]  # the inputs of the connection, the bad one last
    handshake: bytes | None  # a replaced upgrade request, if any
    conn_id: str = ""
    minimal: list[Input] | None = None
    reproduced: bool | None = None
    note: str = ""

    def to_dict(self, hex_limit: int = 65536) -> dict[str, Any]:
        """The finding, with its reproducer: the minimal inputs when it was
        shrunk, else the last ones of its connection; each decoded, and as hex
        (what to write after a normal upgrade) when at most ``hex_limit`` bytes."""
        items = self.minimal if self.minimal is not None else self.history[-3:]
        return {
            "kind": self.kind,
            "outcome": self.outcome,
            "conn": self.conn_id,
            "inputs_on_connection": len(self.history),
            "reproduced": self.reproduced,
            "minimal": self.minimal is not None,
            "note": self.note,
            "handshake": None
            if self.handshake is None
            else {"text": _preview(self.handshake, 400), "hex": self.handshake.hex()},
            "reproducer": [
                {
                    "kind": i.kind,
                    "bytes": len(i.data),
                    "terminal": i.terminal,
                    "decoded": describe(i.data),
                    "hex": i.data.hex() if len(i.data) <= hex_limit else None,
                }
                for i in items
            ],
        }


class ServerFramingError(Exception):
    """The server sent something no RFC 6455 server may send."""


class RawConn:
    """A hand-made WebSocket client: the upgrade by hand, then raw bytes.

    :meth:`step` writes one input (and its fence) and reads the server's
    answer to it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.fences = 0
        self.data_messages = 0
        self.open = True
        self.eof_sent = False
        self.close_code: int | None = None  # the code of the server's close frame

    @classmethod
    async def connect(cls, port: int) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def handshake(self, request: bytes) -> tuple[str, str | None]:
        """Send an upgrade request; the outcome (``101``, ``http:400``,
        ``eof``...) and the accept header."""
        if request:
            self.writer.write(request)
        return await self.read_head()

    async def read_head(self) -> tuple[str, str | None]:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return "eof", None
        except asyncio.LimitOverrunError:
            return "http:huge-head", None
        except ConnectionError:
            return "reset", None
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        status = parts[1].decode("latin-1") if len(parts) >= 2 else "?"
        accept = None
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip().decode("latin-1")
        if status == "101":
            return "101", accept
        self.open = False
        return f"http:{status}", accept

    async def read_frame(self) -> tuple[int, bytes]:
        r = self.reader
        head = await r.readexactly(2)
        b0, b1 = head[0], head[1]
        if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80:
            raise ServerFramingError(f"server frame header {head.hex()}: masked, RSV or FIN clear")
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await r.readexactly(8), "big")
        payload = await r.readexactly(n) if n else b""
        return b0 & 0x0F, payload

    async def step(self, inp: Input, stall: float, upgrade: bytes = b"") -> str:
        """Write ``inp`` and read until its fence (or the close); its outcome.

        With ``upgrade``, the upgrade request goes first in the same write
        (frames pipelined behind it) and the outcome may be the handshake's.
        """
        w = self.writer
        fence = b""
        if inp.terminal:
            w.write(upgrade + inp.data)
            self.eof_sent = True
            if w.can_write_eof():
                w.write_eof()
        else:
            self.fences += 1
            fence = FENCE_PREFIX + str(self.fences).encode()
            w.write(upgrade + inp.data + frame(fence, OP_PING, key=b"\x00\x00\x00\x00"))
        replies: set[str] = set()
        need_fence = bool(fence)
        rid = inp.rid
        try:
            async with _timeout(stall):
                await w.drain()
                if upgrade:
                    status, _ = await self.read_head()
                    if status != "101":
                        self.open = False
                        return "handshake:" + status
                # a terminal input is answered by the server's close (or its FIN)
                while need_fence or rid is not None or inp.terminal:
                    op, payload = await self.read_frame()
                    if op == OP_PONG:
                        if payload == fence:
                            need_fence = False
                        else:
                            replies.add("pongframe")
                    elif op == OP_TEXT:
                        msg = orjson.loads(payload)
                        if not isinstance(msg, dict):
                            raise ServerFramingError(
                                f"server sent non-object JSON {payload[:80]!r}"
                            )
                        t = msg.get("type")
                        if t in REPLY_TYPES:
                            if t == "error":
                                body = msg.get("payload")
                                code = body.get("code") if isinstance(body, dict) else None
                                replies.add(f"error:{code}")
                            else:
                                replies.add(t)
                            if rid is not None and msg.get("id") == rid:
                                rid = None
                        else:
                            self.data_messages += 1
                    elif op == OP_CLOSE:
                        self.open = False
                        return self._closed(payload, inp)
                    elif op == OP_PING:
                        w.write(frame(payload, OP_PONG, key=b"\x00\x00\x00\x00"))
                    else:
                        raise ServerFramingError(f"server sent opcode {op:#x}")
        except TimeoutError:
            self.open = False
            return "stall"
        except asyncio.IncompleteReadError:
            self.open = False
            return "eof"
        except (ServerFramingError, orjson.JSONDecodeError, UnicodeDecodeError):
            self.open = False
            return "server-framing"
        except ConnectionError:
            self.open = False
            return "reset"
        if not replies:
            return "none"
        return "+".join(sorted(replies))

    def _closed(self, payload: bytes, inp: Input) -> str:
        if inp.close_payload is not None and payload[:2] == inp.close_payload[:2]:
            return "close:echo"
        if len(payload) < 2:
            self.close_code = None
            return "close:empty"
        self.close_code = int.from_bytes(payload[:2], "big")
        return f"close:{self.close_code}"

    async def finish(self, stall: float) -> str:
        """End the connection: after the server's close, read to its FIN; if
        it is still open, send a normal close and read to the echo. How it ended."""
        how = "server-closed"
        try:
            async with _timeout(stall):
                if self.open and not self.eof_sent:
                    self.writer.write(frame(struct.pack("!H", 1000), OP_CLOSE, key=self.key4()))
                    how = "client-closed"
                    while True:
                        op, payload = await self.read_frame()
                        if op == OP_CLOSE:
                            if payload[:2] == b"\x03\xe8":
                                how += ":echo"
                            else:  # the server closed for a reason of its own meanwhile
                                self.close_code = int.from_bytes(payload[:2], "big")
                                how += f":{self.close_code}"
                            break
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            how += ":stall"
        except (asyncio.IncompleteReadError, ConnectionError, ServerFramingError):
            how += ":eof"
        await self.abort()
        return how

    @staticmethod
    def key4() -> bytes:
        return os.urandom(4)

    async def abort(self) -> None:
        self.open = False
        w = self.writer
        if not w.is_closing():
            w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await w.wait_closed()


# --------------------------------------------------------------------------- the run


@dataclass
class FuzzOptions:
    inputs: int = 100_000
    seed: int = 1
    conns: int = 8
    rate: float = 50.0  # publishes per second to CHECK_TYPE
    max_batch: int = 64  # inputs per connection at most
    handshake_share: float = 0.05  # connections that start with a broken handshake
    pipelined_share: float = 0.05  # connections whose first input rides with the upgrade
    stall_timeout: float = 10.0
    client_publish: bool = False
    max_size: int = 1 << 20
    rss_limit_mib: float = 256.0  # peak RSS over the start
    rss_after_limit_mib: float = 128.0  # RSS after the run over the start
    server_cpu: str | None = None
    log_level: str = "WARNING"
    minimize: bool = True
    progress: Callable[[str], None] | None = None
    settings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    #: bugs already reported, not counted as failures: a finding
    #: (``"kind -> outcome"``) or a logged problem matched by a pattern
    known_bugs: tuple[KnownBug, ...] = ()

    def known_bug_for(self, text: str, what: str) -> str | None:
        for bug in self.known_bugs:
            pattern = bug.finding if what == "finding" else bug.log
            if pattern is not None and re.search(pattern, text):
                return bug.name
        return None


@dataclass(frozen=True)
class KnownBug:
    """A server bug already reported: what it looks like in a fuzz run."""

    name: str
    finding: str | None = None  # regex on "kind -> outcome"
    log: str | None = None  # regex on a logged problem (announcing line to exception)


@dataclass
class FuzzReport:
    options: FuzzOptions
    inputs_sent: int = 0
    seconds: float = 0.0
    connections: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    conn_ends: Counter[str] = field(default_factory=Counter)
    server_close_codes: Counter[int] = field(default_factory=Counter)
    surprises: Counter[str] = field(default_factory=Counter)
    surprise_examples: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    handshake_outcomes: Counter[str] = field(default_factory=Counter)
    published: list[int] = field(default_factory=list)
    publish_failures: Counter[str] = field(default_factory=Counter)
    publish_seconds: float = 0.0
    received: list[int] = field(default_factory=list)
    received_payloads_ok: bool = True
    subscriber_closed: str | None = None
    rss_before_kib: int | None = None
    rss_peak_kib: int | None = None
    rss_after_kib: int | None = None
    server_alive: bool = False
    health_status: int | None = None
    leftover_connections: dict[str, Any] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    log_problem_kinds: Counter[str] = field(default_factory=Counter)
    #: known bugs (FuzzOptions.known_bugs) seen, by name; set by check()
    known_seen: Counter[str] = field(default_factory=Counter)
    exit_status: int | None = None
    server_core: str = ""
    server_cpu_seconds: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def inputs_per_second(self) -> float:
        return self.inputs_sent / self.seconds if self.seconds else 0.0

    def check(self) -> list[str]:
        """The invariants; each broken one as a sentence."""
        o = self.options
        out: list[str] = []
        if not self.server_alive:
            out.append("the server process died during the run")
        if self.health_status != 200:
            out.append(f"GET /health answered {self.health_status} after the run")
        expected = list(range(1, len(self.published) + 1))
        if self.published != expected:
            out.append(
                f"publisher: seqs not 1..{len(self.published)} in order "
                f"(first differences: {_first_diff(self.published, expected)})"
            )
        if self.received != self.published:
            out.append(
                f"normal subscriber got {len(self.received)} of {len(self.published)} messages "
                f"(first differences: {_first_diff(self.received, self.published)})"
            )
        if not self.received_payloads_ok:
            out.append("normal subscriber: a payload did not match its publish order")
        if self.subscriber_closed:
            out.append(f"normal subscriber was closed: {self.subscriber_closed}")
        if self.publish_failures:
            out.append(f"publishes refused: {dict(self.publish_failures)}")
        bad_codes = {c: n for c, n in self.server_close_codes.items()
                     if c not in CONTRACT_CLOSE_CODES}  # fmt: skip
        if bad_codes:
            out.append(f"server close codes outside the contract: {bad_codes}")
        # every 1011, stall, 500, framing error or foreign close code is a finding
        self.known_seen = Counter()
        unknown: Counter[str] = Counter()
        for f in self.findings:
            name = o.known_bug_for(f"{f.kind} -> {f.outcome}", "finding")
            if name:
                self.known_seen[name] += 1
            else:
                unknown[f"{f.kind} -> {f.outcome}"] += 1
        if unknown:
            out.append(f"inputs that broke an invariant (1011, stall, ...): {dict(unknown)}")
        if self.leftover_connections:
            out.append(f"connections left after the run: {self.leftover_connections}")
        if self.rss_before_kib and self.rss_peak_kib:
            grow = (self.rss_peak_kib - self.rss_before_kib) / 1024
            if grow > o.rss_limit_mib:
                out.append(f"server peak RSS grew by {grow:.0f} MiB (> {o.rss_limit_mib:.0f})")
        if self.rss_before_kib and self.rss_after_kib:
            grow = (self.rss_after_kib - self.rss_before_kib) / 1024
            if grow > o.rss_after_limit_mib:
                out.append(
                    f"server RSS after the run is {grow:.0f} MiB over the start "
                    f"(> {o.rss_after_limit_mib:.0f})"
                )
        new_problems = 0
        for block in self.log_problems:
            name = o.known_bug_for(block, "log")
            if name:
                self.known_seen[name + " (log)"] += 1
            else:
                new_problems += 1
        if new_problems:
            out.append(f"{new_problems} traceback(s)/unexpected error(s) in the log")
        if self.exit_status != 0:
            out.append(f"SIGTERM: the server exited with {self.exit_status}")
        return out

    def summary(self) -> dict[str, Any]:
        mib = lambda k: None if k is None else round(k / 1024, 1)  # noqa: E731
        return {
            "inputs": self.inputs_sent,
            "seed": self.options.seed,
            "conns": self.options.conns,
            "client_publish": self.options.client_publish,
            "server_core": self.server_core,
            "seconds": round(self.seconds, 2),
            "inputs_per_second": round(self.inputs_per_second, 1),
            "server_cpu_seconds": self.server_cpu_seconds,
            "connections": self.connections,
            "outcomes": dict(self.outcomes.most_common()),
            "handshake_outcomes": dict(self.handshake_outcomes.most_common()),
            "connection_ends": dict(self.conn_ends.most_common()),
            "server_close_codes": {str(k): v for k, v in sorted(self.server_close_codes.items())},
            "by_kind": {k: dict(v.most_common()) for k, v in sorted(self.by_kind.items())},
            "surprises": dict(self.surprises.most_common()),
            "surprise_examples": self.surprise_examples,
            "published": len(self.published),
            "publish_rate": round(len(self.published) / self.publish_seconds, 1)
            if self.publish_seconds
            else None,
            "received": len(self.received),
            "rss_mib": {
                "before": mib(self.rss_before_kib),
                "peak": mib(self.rss_peak_kib),
                "after": mib(self.rss_after_kib),
            },
            "server_alive": self.server_alive,
            "health_status": self.health_status,
            "exit_status": self.exit_status,
            "log_problem_kinds": dict(self.log_problem_kinds.most_common()),
            "log_problems": self.log_problems[:5],
            "known_bugs_seen": dict(self.known_seen),
            "findings": [f.to_dict() for f in self.findings],
            "failures": self.failures,
        }


def _first_diff(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"at index {i}: {x} != {y}"
    if len(a) != len(b):
        return f"lengths {len(a)} != {len(b)}"
    return "none"


class Fuzzer:
    def __init__(self, server: ServerProcess, options: FuzzOptions, report: FuzzReport) -> None:
        self.server = server
        self.o = options
        self.report = report
        self.sent = 0
        self.done = asyncio.Event()

    def _say(self, text: str) -> None:
        if self.o.progress is not None:
            self.o.progress(text)

    def record(self, inp: Input, outcome: str, clean: bool, conn: RawConn) -> None:
        rep = self.report
        rep.outcomes[outcome] += 1
        rep.by_kind.setdefault(inp.kind, Counter())[outcome] += 1
        if outcome.startswith("close:") and conn.close_code is not None and outcome != "close:echo":
            rep.server_close_codes[conn.close_code] += 1
        if clean and not matches(outcome, inp.expect) and outcome not in BAD_LABELS:
            key = f"{inp.kind} -> {outcome}"
            rep.surprises[key] += 1
            rep.surprise_examples.setdefault(key, inp.data[:200].hex())

    async def worker(self, index: int, share: int) -> None:
        """Send ``share`` inputs, a batch per connection, from this worker's own
        generator (seeded by the run's seed and ``index``: the inputs do not
        depend on how the workers interleave)."""
        o = self.o
        gen = Generator(
            o.seed * 1_000_003 + index,
            max_size=o.max_size,
            client_publish=o.client_publish,
            tag=f"w{index}-",
        )
        port = self.server.ws_port
        left = share
        conn_no = 0
        while left > 0:
            conn_no += 1
            conn_id = f"w{index}c{conn_no}"
            self.report.connections += 1
            r = gen.r
            batch = r.randint(1, o.max_batch)
            history: list[Input] = []
            hs_data: bytes | None = None
            conn = await RawConn.connect(port)
            try:
                clean = True
                if r.random() < o.handshake_share:
                    # a broken (or odd) upgrade request: one input
                    hs = gen.handshake(port)
                    hs_data = hs.data
                    left -= 1
                    self.sent += 1
                    outcome = await self._handshake(conn, hs)
                    self.report.handshake_outcomes[outcome] += 1
                    self.report.by_kind.setdefault(hs.kind, Counter())[outcome] += 1
                    if outcome in BAD_LABELS:
                        self.report.findings.append(Finding(hs.kind, outcome, [], hs.data, conn_id))
                        self._say(f"FINDING {hs.kind} -> {outcome} on {conn_id}")
                    if outcome != "101":
                        self.report.conn_ends[f"handshake {outcome}"] += 1
                        continue
                else:
                    key = base64.b64encode(r.randbytes(16)).decode()
                    request = upgrade_request(port, key)
                    if r.random() < o.pipelined_share:
                        # the first input rides in the same write as the upgrade
                        first = gen.next()
                        first.kind = "pipelined:" + first.kind
                        history.append(first)
                        out = await conn.step(first, o.stall_timeout, upgrade=request)
                        left -= 1
                        batch -= 1
                        self.sent += 1
                        if out.startswith("handshake:"):
                            if first.terminal:
                                # request, a cut frame and FIN at once: the server
                                # may drop the request without an answer
                                status = out.removeprefix("handshake:")
                                self.report.handshake_outcomes[f"{status} (FIN at once)"] += 1
                                self.report.conn_ends[f"handshake {status}"] += 1
                            else:
                                self._refused(out, conn_id)
                            continue
                        clean = self._after(first, out, clean, conn, conn_id, history, None)
                        if first.terminal:
                            batch = 0
                    else:
                        try:
                            async with _timeout(o.stall_timeout):
                                status, accept = await conn.handshake(request)
                        except TimeoutError:
                            status, accept = "stall", None
                        if status != "101":
                            self._refused(status, conn_id)
                            continue
                        if accept != accept_for(key):
                            self.report.findings.append(
                                Finding("handshake:normal", "bad-accept", [], None, conn_id,
                                        note=f"Sec-WebSocket-Accept {accept!r} for key {key}")
                            )  # fmt: skip
                while batch > 0 and left > 0 and conn.open:
                    inp = gen.next()
                    history.append(inp)
                    out = await conn.step(inp, o.stall_timeout)
                    left -= 1
                    batch -= 1
                    self.sent += 1
                    clean = self._after(inp, out, clean, conn, conn_id, history, hs_data)
                    if inp.terminal:
                        break
                code_before = conn.close_code
                how = await conn.finish(o.stall_timeout)
                self.report.conn_ends[how] += 1
                code = conn.close_code
                if code is not None and code != code_before:
                    # the server closed while the client was ending the batch
                    self.report.server_close_codes[code] += 1
                    if code == INTERNAL_ERROR or code not in CONTRACT_CLOSE_CODES:
                        self.report.findings.append(
                            Finding("(batch end)", f"close:{code}", list(history), hs_data, conn_id)
                        )
            finally:
                await conn.abort()

    def _refused(self, status: str, conn_id: str) -> None:
        """A normal upgrade request was not accepted: a finding."""
        status = status.removeprefix("handshake:")
        self.report.handshake_outcomes[status] += 1
        self.report.conn_ends[f"handshake {status}"] += 1
        self.report.findings.append(
            Finding("handshake:normal", status, [], None, conn_id,
                    note="a normal upgrade request was not accepted")
        )  # fmt: skip

    def _after(
        self,
        inp: Input,
        outcome: str,
        clean: bool,
        conn: RawConn,
        conn_id: str,
        history: list[Input],
        hs: bytes | None,
    ) -> bool:
        """Record one input's outcome; whether the connection is still in a
        known state (its later outcomes are compared with expectations)."""
        self.record(inp, outcome, clean, conn)
        bad = outcome in BAD_LABELS or (
            outcome.startswith("close:")
            and conn.close_code is not None
            and outcome != "close:echo"
            and conn.close_code not in CONTRACT_CLOSE_CODES
        )
        if bad:
            self.report.findings.append(Finding(inp.kind, outcome, list(history), hs, conn_id))
            self._say(f"FINDING {inp.kind} -> {outcome} on {conn_id}")
        return clean and not inp.dirty and matches(outcome, inp.expect)

    async def _handshake(self, conn: RawConn, hs: Input) -> str:
        """Send a handshake input; its outcome. A server still waiting for the
        rest of a request after a while is ``wait`` (then the client gives up)."""
        w = conn.writer
        w.write(hs.data)
        if hs.terminal and w.can_write_eof():
            w.write_eof()
        try:
            async with _timeout(min(self.o.stall_timeout, 3.0)):
                status, _ = await conn.read_head()
        except TimeoutError:
            pass
        else:
            return status
        # the server waits for the rest of the request: it should give up by
        # itself (security.handshake_timeout, 10 s by default)
        try:
            async with _timeout(HANDSHAKE_WAIT):
                while await conn.reader.read(65536):
                    pass
        except TimeoutError:
            return "wait:still-open"
        except ConnectionError:
            pass
        return "wait:server-closed"

    async def run(self) -> None:
        o = self.o
        shares = [o.inputs // o.conns + (1 if i < o.inputs % o.conns else 0)
                  for i in range(o.conns)]  # fmt: skip
        tasks = [asyncio.create_task(self.worker(i, s)) for i, s in enumerate(shares) if s]
        progress = asyncio.create_task(self._progress())
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress

    async def _progress(self) -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(5)
            el = time.monotonic() - start
            rss = self.server.rss_kib()
            self._say(
                f"{self.sent} inputs in {el:.0f}s ({self.sent / el:.0f}/s), "
                f"server RSS {rss and rss // 1024} MiB"
            )


# --------------------------------------------------------------------------- subscriber, publisher


class Subscriber:
    """The normal client: subscribed to CHECK_TYPE, reads everything, answers pings."""

    def __init__(self, session: aiohttp.ClientSession, server: ServerProcess) -> None:
        self.session = session
        self.server = server
        self.seqs: list[int] = []
        self.payload_ok = True
        self.closed: str | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        ws = await self.session.ws_connect(self.server.ws_url(), autoping=True, max_msg_size=0)
        self.ws = ws
        await ws.send_str(orjson.dumps(
            {"id": "sub", "action": "subscribe", "payload": {"types": [CHECK_TYPE]}}
        ).decode())  # fmt: skip
        while True:
            msg = await asyncio.wait_for(ws.receive(), 10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = orjson.loads(msg.data)
                if data.get("id") == "sub":
                    if data.get("type") != "ack":
                        raise RuntimeError(f"subscribe refused: {data}")
                    break
            else:
                raise RuntimeError(f"subscriber: {msg.type} before the ack")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(msg.data)
            if data.get("type") != CHECK_TYPE:
                continue
            seq = data.get("seq")
            self.seqs.append(seq)
            if data.get("payload", {}).get("n") != seq:
                self.payload_ok = False
        if not self._stopping:
            self.closed = f"close code {ws.close_code}"

    async def stop(self) -> None:
        self._stopping = True
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def publisher(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    rate: float,
    stop: asyncio.Event,
    report: FuzzReport,
) -> None:
    """One message per POST /api/publish, on a fixed schedule, until ``stop``."""
    url = server.api("/api/publish")
    interval = 1.0 / rate
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        n += 1
        body = {"type": CHECK_TYPE, "payload": {"n": n, "t": time.time()}}
        try:
            async with session.post(url, json=body) as resp:
                if resp.status == 202:
                    report.published.append((await resp.json())["seq"])
                else:
                    report.publish_failures[f"http {resp.status}"] += 1
                    n -= 1
        except aiohttp.ClientError as exc:
            report.publish_failures[type(exc).__name__] += 1
            n -= 1
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with _timeout(delay):
                    await stop.wait()
    report.publish_seconds = time.monotonic() - start


# --------------------------------------------------------------------------- replay


async def replay(port: int, inputs: list[Input], handshake: bytes | None, stall: float) -> str:
    """Send ``inputs`` on a fresh connection (after ``handshake`` or a normal
    upgrade), each followed by a fence; the outcome of the last one."""
    conn = await RawConn.connect(port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        try:
            async with _timeout(stall):
                status, _ = await conn.handshake(handshake or upgrade_request(port, key))
        except TimeoutError:
            return "stall"
        if not inputs or status != "101":
            return status
        out = "none"
        for i, inp in enumerate(inputs):
            if not conn.open:
                return "closed-early"
            last = i == len(inputs) - 1
            out = await conn.step(inp, stall)
            if not last and out.startswith(("close:", "eof", "reset", "stall")):
                return "closed-early:" + out
        return out
    finally:
        await conn.abort()


async def minimize(port: int, finding: Finding, stall: float, budget: int = 40) -> None:
    """Shrink ``finding.history`` to the fewest inputs that give the same outcome."""
    target = finding.outcome
    runs = 0

    async def same(items: list[Input]) -> bool:
        nonlocal runs
        runs += 1
        got = await replay(port, items, finding.handshake, stall)
        return got == target

    items = list(finding.history)
    if not items and finding.handshake is not None:
        finding.reproduced = await same([])
        finding.minimal = []
        return
    if await same(items[-1:]):
        finding.minimal, finding.reproduced = items[-1:], True
        return
    if not await same(items):
        finding.reproduced = False
        finding.note = "did not reproduce on a fresh connection (timing or state elsewhere)"
        return
    finding.reproduced = True
    # the shortest suffix that still does it, then drop single inputs
    lo, hi = 1, len(items)
    while lo < hi and runs < budget:
        mid = (lo + hi) // 2
        if await same(items[-mid:]):
            hi = mid
        else:
            lo = mid + 1
    items = items[-hi:]
    i = 0
    while i < len(items) - 1 and runs < budget:
        trial = items[:i] + items[i + 1 :]
        if await same(trial):
            items = trial
        else:
            i += 1
    finding.minimal = items


# --------------------------------------------------------------------------- the whole run


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def fuzz_server(server: ServerProcess, options: FuzzOptions) -> FuzzReport:
    """Fuzz a running server; the report, invariants not yet checked (but the
    server still running: :func:`run_fuzz` stops it)."""
    o = options
    rep = FuzzReport(o, server_core=server.core)
    say = o.progress or (lambda _text: None)
    connector = aiohttp.TCPConnector(limit=8, force_close=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        sub = Subscriber(session, server)
        await sub.start()
        rep.rss_before_kib = server.rss_kib()
        cpu0 = _cpu(server)
        stop = asyncio.Event()
        pub = asyncio.create_task(publisher(session, server, o.rate, stop, rep))
        fuzzer = Fuzzer(server, o, rep)
        start = time.monotonic()
        try:
            await fuzzer.run()
        finally:
            rep.seconds = time.monotonic() - start
            rep.inputs_sent = fuzzer.sent
            stop.set()
            await pub
        cpu1 = _cpu(server)
        if cpu0 is not None and cpu1 is not None:
            rep.server_cpu_seconds = round(cpu1 - cpu0, 2)
        say(f"fuzzing done: {rep.inputs_sent} inputs in {rep.seconds:.1f}s; checking")
        # every published message reaches the subscriber
        deadline = time.monotonic() + 15
        while len(sub.seqs) < len(rep.published) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # and nothing more comes
        rep.received = list(sub.seqs)
        rep.received_payloads_ok = sub.payload_ok
        rep.subscriber_closed = sub.closed
        rep.server_alive = server.alive()
        if rep.server_alive:
            try:
                rep.health_status, _ = await _get(session, server.api("/health"))
            except aiohttp.ClientError:
                rep.health_status = None
            # the fuzz connections all go (the close handshake lasts at most 5 s)
            deadline = time.monotonic() + 12
            while True:
                _, ws_stats = await _get(session, server.api("/ws/stats"))
                left = {"active_connections": ws_stats.get("active_connections"),
                        "closing": ws_stats.get("closing")}  # fmt: skip
                if left == {"active_connections": 1, "closing": 0}:
                    break
                if time.monotonic() > deadline:
                    rep.leftover_connections = left
                    break
                await asyncio.sleep(0.2)
            rep.rss_after_kib = server.rss_kib()
            rep.rss_peak_kib = server.hwm_kib()
            if o.minimize:
                seen: set[str] = set()
                for f in rep.findings:
                    if f.kind + f.outcome in seen or len(seen) >= 8:
                        continue
                    seen.add(f.kind + f.outcome)
                    say(f"replaying {f.kind} -> {f.outcome} ({len(f.history)} inputs)")
                    await minimize(server.ws_port, f, o.stall_timeout)
        await sub.stop()
    return rep


def _problem_kind(block: str) -> str:
    """What a logged problem is: who logged it and the exception's line,
    without addresses and connection ids."""
    lines = block.splitlines()
    head = lines[0].split(" ", 3)[-1] if lines[0][:2].isdigit() else lines[0]
    last = lines[-1].strip() if len(lines) > 1 else ""
    text = f"{head[:70]} / {last[:110]}"
    return re.sub(r"\b[0-9a-f]{12}\b|\d+\.\d+\.\d+\.\d+(:\d+)?", "*", text)


def _cpu(server: ServerProcess) -> float | None:
    return cpu_seconds(server.pid)


async def run_fuzz(options: FuzzOptions) -> FuzzReport:
    """Start a server, fuzz it, stop it, check the invariants."""
    o = options
    settings = dict(o.settings)
    settings.setdefault("websocket.max_message_size", str(o.max_size))
    if o.client_publish:
        settings["websocket.allow_client_publish"] = "true"
    server = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: start_server(settings=settings, env=o.env, log_level=o.log_level, cpu=o.server_cpu),
    )
    try:
        rep = await fuzz_server(server, o)
        alive = server.alive()
        rep.exit_status = await asyncio.get_running_loop().run_in_executor(None, server.stop)
        if not alive:
            rep.exit_status = server.proc.returncode
        rep.log_problems = server.log_problems(limit=10_000)
        rep.log_problem_kinds = Counter(_problem_kind(block) for block in rep.log_problems)
    finally:
        server.cleanup()
    rep.failures = rep.check()
    return rep


def iter_lines(rep: FuzzReport) -> Iterator[str]:
    """The report for people."""
    s = rep.summary()
    yield (
        f"{s['inputs']} inputs (seed {s['seed']}, {s['conns']} connections at a time, "
        f"core {s['server_core']}) in {s['seconds']}s: {s['inputs_per_second']} inputs/s; "
        f"{s['connections']} connections opened; server CPU {s['server_cpu_seconds']}s"
    )
    yield "outcomes:"
    for k, v in s["outcomes"].items():
        yield f"  {v:8d}  {k}"
    if s["handshake_outcomes"]:
        yield "handshake outcomes: " + ", ".join(
            f"{k} {v}" for k, v in s["handshake_outcomes"].items()
        )
    yield "connection ends: " + ", ".join(f"{k} {v}" for k, v in s["connection_ends"].items())
    yield "close codes the server chose: " + ", ".join(
        f"{k} x{v}" for k, v in s["server_close_codes"].items()
    )
    yield "by kind:"
    for kind, outs in s["by_kind"].items():
        yield f"  {kind:34s} " + ", ".join(f"{k} {v}" for k, v in outs.items())
    if s["surprises"]:
        yield "surprises (outcome not the expected one; not failures):"
        for k, v in s["surprises"].items():
            yield f"  {v:6d}  {k}   e.g. {s['surprise_examples'][k][:120]}"
    yield (
        f"normal subscriber: {s['received']} received of {s['published']} published "
        f"(publish rate {s['publish_rate']}/s)"
    )
    r = s["rss_mib"]
    yield f"server RSS MiB: before {r['before']}, peak {r['peak']}, after {r['after']}"
    yield (
        f"server alive: {s['server_alive']}, /health {s['health_status']}, "
        f"exit status after SIGTERM {s['exit_status']}"
    )
    if s["log_problem_kinds"]:
        yield "log problems (count by last line):"
        for k, v in s["log_problem_kinds"].items():
            yield f"  {v:6d}  {k}"
    for p in s["log_problems"][:3]:
        yield "log problem, e.g.:\n" + p
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in s["findings"]:
        groups.setdefault((f["kind"], f["outcome"]), []).append(f)
    for (kind, outcome), fs in groups.items():
        f = next((x for x in fs if x["reproduced"] is not None), fs[0])
        yield (
            f"FINDING x{len(fs)}: {kind} -> {outcome}; replayed alone: {f['reproduced']}; "
            f"{'minimal' if f['minimal'] else 'last inputs of its connection'} "
            f"({f['inputs_on_connection']} on it){'; ' + f['note'] if f['note'] else ''}"
        )
        if f["handshake"]:
            yield f"    handshake: {f['handshake']['text']}"
        for item in f["reproducer"]:
            yield f"    [{item['kind']}] {item['decoded']}"
            if item["hex"] is not None:
                hx = item["hex"]
                yield f"      hex ({item['bytes']} bytes): " + (
                    hx if len(hx) <= 240 else hx[:200] + "..." + hx[-30:]
                )
    if s["known_bugs_seen"]:
        yield "known bugs seen (reported, not failures here): " + ", ".join(
            f"{k} x{v}" for k, v in s["known_bugs_seen"].items()
        )
    if s["failures"]:
        yield "INVARIANTS BROKEN:"
        for line in s["failures"]:
            yield "  - " + line
    else:
        yield "all invariants hold"
