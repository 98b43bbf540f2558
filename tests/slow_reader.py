"""A client that never reads, among thousands that do (hostile input).

One implementation for ``bench/slow_reader.py`` (2,000 subscribers, latency
with and without the never-readers) and ``tests/server/test_slow_reader.py``
(200 subscribers, one never-reader, no latency assertion).

Processes (so the load is not the server's CPU, and can be pinned elsewhere):

* the server: ``aiosrv serve`` (:mod:`tests.serverproc`) with a small send
  buffer limit (``SEND_BUFFER_LIMIT=64KiB``), so a never-reader passes it
  within seconds;
* the subscribers: ``python -m tests.slow_reader subscribers`` — N raw
  WebSocket clients in one asyncio process (an ``asyncio.Protocol`` each, the
  upgrade by hand), subscribed to one type, reading everything and answering
  pings; per client the count of data messages and any gap in ``seq``, and a
  histogram of publish-to-receive latency (receive time minus the ``t`` the
  publisher put in the payload) per phase;
* the publisher: ``python -m tests.slow_reader publisher`` — one message per
  ``POST /api/publish`` at a fixed rate on an absolute schedule; the payload
  ``{"t": time.time(), "ph": phase, "pad": ...}`` of the given size;
* this process: starts them, then, for phase 2, opens the never-readers
  (a small ``SO_RCVBUF``; subscribe, read the ack, then stop reading: the
  transport's reading is paused), and watches ``/ws/stats`` until the server
  has closed them as slow consumers; then reads each never-reader's socket to
  find the close frame (1013) behind the data it was sent.

The two processes talk with this one over their standard input and output,
one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The data message's seq, then the publisher's payload fields, as the server
#: encodes them (protocol.encode_data: ..."seq":N,"payload":{...}).
DATA_RX = re.compile(rb'"seq":(\d+),"payload":\{"t":([0-9.]+),"ph":(\d)')

#: Latency histogram: buckets of 0.1 ms; keys are phase * PHASE_KEY + bucket.
BUCKET = 1e-4
PHASE_KEY = 100_000_000


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentiles(
    hist: Counter[int], qs: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
) -> dict[str, Any]:
    """Latency percentiles in ms from a histogram of 0.1 ms buckets."""
    total = sum(hist.values())
    out: dict[str, Any] = {"count": total}
    if not total:
        return out
    keys = sorted(hist)
    for q in qs:
        rank = q * total
        seen = 0
        for k in keys:
            seen += hist[k]
            if seen >= rank:
                out[f"p{q * 100:g}"] = round((k + 0.5) * BUCKET * 1000, 2)
                break
    out["max"] = round((keys[-1] + 1) * BUCKET * 1000, 2)
    return out


def mask_frame(payload: bytes, opcode: int) -> bytes:
    """A client frame, masked with a zero key (masking is not the point here)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def upgrade_request(port: int) -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        f"GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def subscribe_frame(type_: str) -> bytes:
    msg = {"id": "s", "action": "subscribe", "payload": {"types": [type_]}}
    return mask_frame(json.dumps(msg).encode(), 0x1)


# --------------------------------------------------------------------------- subscribers


class Subscribers:
    """Many subscribers in this process; what they received."""

    def __init__(self, port: int, count: int, type_: str, sample_every: int = 1) -> None:
        self.port = port
        self.count = count
        self.type = type_
        self.sample_every = max(1, sample_every)
        self.clients: list[SubProtocol] = []
        self.hist: Counter[int] = Counter()
        self.acked = 0
        self.acked_event = asyncio.Event()

    async def connect_all(self, parallel: int = 64) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with sem:
                _, proto = await loop.create_connection(
                    lambda: SubProtocol(self, i), "127.0.0.1", self.port
                )
                await asyncio.wait_for(proto.subscribed.wait(), 60)

        await asyncio.gather(*(one(i) for i in range(self.count)))

    def summary(self, last_seq: int) -> dict[str, Any]:
        counts = Counter(c.received for c in self.clients)
        gaps = [c.index for c in self.clients if c.gaps]
        short = [
            c.index for c in self.clients if c.received != last_seq or c.next_seq != last_seq + 1
        ]
        closed = Counter(str(c.close_code) for c in self.clients if c.close_code is not None)
        by_phase: dict[str, Counter[int]] = {}
        for key, n in self.hist.items():
            by_phase.setdefault(str(key // PHASE_KEY), Counter())[key % PHASE_KEY] += n
        return {
            "subscribers": len(self.clients),
            "received_counts": {str(k): v for k, v in counts.most_common(5)},
            "all_received": not short and not gaps,
            "missing": short[:20],
            "missing_count": len(short),
            "gaps": gaps[:20],
            "gap_examples": [c.gaps[:3] for c in self.clients if c.gaps][:3],
            "closed": dict(closed),
            "latency_ms": {ph: percentiles(h) for ph, h in sorted(by_phase.items())},
            "latency_sampled_subscribers": sum(c.sampled for c in self.clients),
            "cpu_seconds": round(sum(os.times()[:2]), 2),
        }


class SubProtocol(asyncio.Protocol):
    """One subscriber: upgrade, subscribe, then count data messages."""

    def __init__(self, hub: Subscribers, index: int) -> None:
        self.hub = hub
        self.index = index
        self.buf = bytearray()
        self.upgraded = False
        self.subscribed = asyncio.Event()
        self.received = 0
        self.next_seq = 1
        self.gaps: list[tuple[int, int]] = []
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        # latency is measured on every sample_every-th subscriber (every message)
        self.sampled = index % hub.sample_every == 0
        self.fast = False  # subscribed: data messages only, read by the fast path

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.hub.clients.append(self)
        transport.write(upgrade_request(self.hub.port))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.fast or 0x88 in data or 0x89 in data:
            self._slow()  # the upgrade, the ack, or maybe a ping or close frame
            return
        # The fast path, O(1) Python per read: after the ack only data messages
        # come (and the rare ping, caught above: a 0x88 or 0x89 byte), each
        # ending with the publisher's last field ("pad":"...") and two braces,
        # so the last complete one ends at the last '"}}', on a frame boundary.
        end = buf.rfind(b'"}}') + 3
        if end < 3:
            return
        n = buf.count(b'"seq":', 0, end)
        j = buf.rfind(b'"seq":', 0, end) + 6
        last = int(buf[j : buf.index(b",", j)])
        if last - self.next_seq + 1 != n or self.sampled:
            self._data(buf, end, time.time())
        else:
            self.next_seq = last + 1
            self.received += n
        del buf[:end]

    def _slow(self) -> None:
        buf = self.buf
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[: buf.find(b"\r\n")]:
                raise RuntimeError(f"upgrade refused: {bytes(buf[:200])!r}")
            del buf[: end + 4]
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(subscribe_frame(self.hub.type))
        self._walk(time.time())
        self.fast = self.subscribed.is_set()

    def _data(self, buf: bytearray, end: int, now: float) -> None:
        """Count the data messages in ``buf[:end]``, check their seqs follow
        on, and (on sampled subscribers) record their latency."""
        found = DATA_RX.findall(buf, 0, end)
        if not found:
            return
        first = int(found[0][0])
        last = int(found[-1][0])
        if first != self.next_seq or last - first + 1 != len(found):
            self._check_gaps([int(f[0]) for f in found])
        self.next_seq = last + 1
        self.received += len(found)
        if self.sampled:
            self.hub.hist.update(
                [int(ph) * PHASE_KEY + min(int((now - float(t)) / BUCKET), PHASE_KEY - 1)
                 for _, t, ph in found]
            )  # fmt: skip

    def _walk(self, now: float) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1]
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                h = 10
            end = pos + h + ln
            if end > n:
                break
            if b0 != 0x81:
                self._control(b0 & 0x0F, bytes(buf[pos + h : end]))
            elif not self.subscribed.is_set() and b'"type":"ack"' in buf[pos:end]:
                self.subscribed.set()
            pos = end
        if pos:
            self._data(buf, pos, now)
            del buf[:pos]

    def _check_gaps(self, seqs: list[int]) -> None:
        expect = self.next_seq
        for s in seqs:
            if s != expect:
                self.gaps.append((expect, s))
            expect = s + 1

    def _control(self, op: int, payload: bytes) -> None:
        assert self.transport is not None
        if op == 0x9:
            self.transport.write(mask_frame(payload, 0xA))
        elif op == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.transport.write(mask_frame(payload[:2], 0x8))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def subscribers_main(port: int, count: int, type_: str, sample_every: int) -> None:
    """The subscribers process: READY when all are subscribed; on ``stop``
    (with the last seq published), wait for it and report."""
    raise_fd_limit()
    hub = Subscribers(port, count, type_, sample_every)
    start = time.monotonic()
    await hub.connect_all()
    _emit({"event": "ready", "subscribers": count, "seconds": round(time.monotonic() - start, 2)})
    stdin = await _stdin_lines()
    while True:
        line = await stdin.readline()
        if not line:
            return
        cmd = json.loads(line)
        if cmd.get("cmd") == "stop":
            last = int(cmd["last_seq"])
            deadline = time.monotonic() + float(cmd.get("timeout", 15))
            while time.monotonic() < deadline and any(
                c.next_seq <= last and c.close_code is None for c in hub.clients
            ):
                await asyncio.sleep(0.05)
            _emit({"event": "summary", **hub.summary(last)})
            for c in hub.clients:
                if c.transport is not None:
                    c.transport.abort()
            return


# --------------------------------------------------------------------------- publisher


async def publisher_main(api_port: int, rate: float, size: int, type_: str) -> None:
    """The publisher process: publishes until ``stop``; ``phase`` switches the
    phase tag in the payload (and reports the first seq of the new phase)."""
    import aiohttp

    stdin = await _stdin_lines()
    phase = 1
    first_of_phase: dict[str, int] = {}
    seqs: list[int] = []
    failures: Counter[str] = Counter()
    late: list[float] = []
    url = f"http://127.0.0.1:{api_port}/api/publish"

    def compact(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"))

    # the payload as the server encodes it is ``size`` bytes
    pad = max(0, size - len(compact({"t": time.time(), "ph": 1, "pad": ""})))
    stop = asyncio.Event()
    phase_box = [phase]

    async def control() -> None:
        while True:
            line = await stdin.readline()
            if not line:
                stop.set()
                return
            cmd = json.loads(line)
            if cmd.get("cmd") == "phase":
                phase_box[0] = int(cmd["phase"])
            elif cmd.get("cmd") == "stop":
                stop.set()
                return

    ctl = asyncio.create_task(control())
    interval = 1.0 / rate
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=4), trust_env=False
    ) as session:
        _emit({"event": "started"})
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            due = start + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            else:
                late.append(-delay)
            n += 1
            ph = phase_box[0]
            body = {"type": type_, "payload": {"t": time.time(), "ph": ph, "pad": "x" * pad}}
            try:
                async with session.post(url, json=body) as resp:
                    if resp.status == 202:
                        seq = (await resp.json())["seq"]
                        seqs.append(seq)
                        first_of_phase.setdefault(str(ph), seq)
                    else:
                        failures[f"http {resp.status}"] += 1
            except aiohttp.ClientError as exc:
                failures[type(exc).__name__] += 1
        elapsed = time.monotonic() - start
    ctl.cancel()
    late.sort()
    _emit(
        {
            "event": "summary",
            "published": len(seqs),
            "last_seq": seqs[-1] if seqs else 0,
            "contiguous": seqs == list(range(1, len(seqs) + 1)),
            "first_seq_of_phase": first_of_phase,
            "rate": round(len(seqs) / elapsed, 1) if elapsed else None,
            "failures": dict(failures),
            "late_p99_ms": round(late[int(0.99 * (len(late) - 1))] * 1000, 2) if late else 0.0,
            "payload_bytes": len(compact(body["payload"])) if seqs else None,
            "cpu_seconds": round(sum(os.times()[:2]), 2),
        }
    )


# --------------------------------------------------------------------------- never-readers


class NeverReader:
    """Subscribes, reads its ack, then reads nothing until told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None
        self.close_reason = ""
        self.bytes_after = 0
        self.data_after = 0
        sockname = writer.get_extra_info("sockname")
        self.local_port = int(sockname[1]) if sockname else 0
        self._keepalive: asyncio.Task[None] | None = None

    def keep_alive(self, interval: float) -> None:
        """Write an unsolicited pong every ``interval`` seconds (traffic for the
        server's heartbeat) while reading nothing."""

        async def run() -> None:
            while True:
                await asyncio.sleep(interval)
                self.writer.write(mask_frame(b"", 0xA))

        if interval > 0:
            self._keepalive = asyncio.create_task(run())

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    @classmethod
    async def open(cls, port: int, type_: str, rcvbuf: int = 4096) -> NeverReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        self = cls(reader, writer)
        writer.write(upgrade_request(port) + subscribe_frame(type_))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"never-reader refused: {head!r}")
        while True:
            op, payload = await asyncio.wait_for(self.read_frame(), 10)
            if op == 0x1 and b'"type":"ack"' in payload:
                break
        transport = writer.transport
        transport.pause_reading()  # from here on nothing is read from the socket
        return self

    async def read_frame(self) -> tuple[int, bytes]:
        r = self.reader
        head = await r.readexactly(2)
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await r.readexactly(8), "big")
        return head[0] & 0x0F, await r.readexactly(n)

    async def read_to_close(self, timeout: float) -> None:
        """Read again: the data the server had sent, then its close frame."""
        self._stop_keepalive()
        self.writer.transport.resume_reading()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    op, payload = await self.read_frame()
                    self.bytes_after += len(payload)
                    if op == 0x1:
                        self.data_after += 1
                    elif op == 0x8:
                        self.close_code = (
                            int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                        )
                        self.close_reason = payload[2:].decode("utf-8", "replace")
                        return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close_code = -1  # the socket ended without a close frame
        except TimeoutError:
            self.close_code = -2

    async def close(self) -> None:
        self._stop_keepalive()
        w = self.writer
        if not w.is_closing():
            w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await w.wait_closed()


# --------------------------------------------------------------------------- the run


@dataclass
class SlowOptions:
    subscribers: int = 2000
    slow: int = 1
    rate: float = 200.0
    size: int = 100
    phase_seconds: float = 10.0  # phases 1 and 3; phase 2 lasts until the close
    send_buffer_limit: str = "64KiB"
    socket_send_buffer: str = "0"  # SOCKET_SEND_BUFFER: 0 = the kernel's autotuning
    close_timeout: float = 300.0  # how long phase 2 waits for the never-readers' close
    rcvbuf: int = 4096
    server_cpu: str | None = None
    client_cpu: str | None = None
    type: str = "lat"
    #: latency measured on every Nth subscriber (all its messages); all count
    #: their messages and check their seqs
    sample_every: int = 10
    #: never-readers send an unsolicited pong now and then: they write but never
    #: read (without it the heartbeat timeout closes them first, with 4000)
    keepalive: float = 20.0
    progress: Callable[[str], None] | None = None


@dataclass
class SlowReport:
    options: SlowOptions
    publisher: dict[str, Any] = field(default_factory=dict)
    subscribers: dict[str, Any] = field(default_factory=dict)
    subscribe_seconds: float | None = None
    slow_close_codes: list[int | None] = field(default_factory=list)
    slow_close_reasons: list[str] = field(default_factory=list)
    slow_data_after: list[int] = field(default_factory=list)
    slow_bytes_after: list[int] = field(default_factory=list)
    kernel_send_queue_max: int = 0
    #: data messages per socket write to a subscriber in phase 3 (coalescing)
    phase3_messages_per_write: float | None = None
    seconds_to_close: float | None = None
    slow_consumer_closes: int = 0
    server_alive: bool = False
    log_problems: list[str] = field(default_factory=list)
    slow_consumer_log_lines: int = 0
    server_cpu_seconds: float | None = None
    server_rss_mib: float | None = None
    failures: list[str] = field(default_factory=list)

    def check(self) -> list[str]:
        out: list[str] = []
        p, s = self.publisher, self.subscribers
        if not self.server_alive:
            out.append("the server died")
        if not p.get("contiguous") or p.get("failures"):
            out.append(f"publisher: seqs not contiguous or refused: {p.get('failures')}")
        if not s.get("all_received"):
            out.append(
                f"{s.get('missing_count')} of {s.get('subscribers')} subscribers missed messages "
                f"(gaps at {s.get('gaps')}, e.g. {s.get('gap_examples')}; counts "
                f"{s.get('received_counts')} of {p.get('last_seq')})"
            )
        if s.get("closed"):
            out.append(f"normal subscribers were closed: {s.get('closed')}")
        if any(c != 1013 for c in self.slow_close_codes) or not self.slow_close_codes:
            out.append(
                f"never-readers' close codes {self.slow_close_codes} (expected 1013 each; "
                "-1: the socket ended without a close frame, -2: nothing within the wait)"
            )
        if self.slow_consumer_closes < self.options.slow:
            out.append(f"/ws/stats counts {self.slow_consumer_closes} slow-consumer closes")
        if self.log_problems:
            out.append(f"{len(self.log_problems)} traceback(s)/unexpected error(s) in the log")
        return out

    def lines(self) -> Iterator[str]:
        o, p, s = self.options, self.publisher, self.subscribers
        yield (
            f"{s.get('subscribers')} subscribers (subscribed in {self.subscribe_seconds}s), "
            f"{o.slow} never-reader(s), {p.get('rate')} msgs/s of {p.get('payload_bytes')} B "
            f"payload, send_buffer_limit {o.send_buffer_limit}, "
        f"socket_send_buffer {o.socket_send_buffer}"
        )
        lat = s.get("latency_ms", {})
        yield (
            f"publish-to-receive latency, every message of {s.get('latency_sampled_subscribers')} "
            f"subscribers (every {o.sample_every}th):"
        )
        for ph, name in (
            ("1", f"phase 1, {o.phase_seconds:g}s, no never-reader"),
            ("2", f"phase 2, {self.seconds_to_close}s, never-reader(s) connected"),
            ("3", f"phase 3, {o.phase_seconds:g}s, after the server closed them"),
        ):
            d = lat.get(ph, {})
            yield (
                f"  {name}: p50 {d.get('p50')} ms, p90 {d.get('p90')} ms, p99 {d.get('p99')} ms, "
                f"p99.9 {d.get('p99.9')} ms, max {d.get('max')} ms ({d.get('count')} deliveries)"
            )
        yield (
            f"never-readers: close codes {self.slow_close_codes} "
            f"({', '.join(sorted(set(self.slow_close_reasons)))}), "
            f"{self.seconds_to_close}s after they subscribed; the server's kernel send queue to "
            f"one reached {self.kernel_send_queue_max} bytes; reading afterwards it found "
            f"{self.slow_data_after} data messages ({self.slow_bytes_after} bytes), then the close"
        )
        yield (
            f"published {p.get('published')} (seq 1..{p.get('last_seq')}, contiguous "
            f"{p.get('contiguous')}, publisher p99 lateness {p.get('late_p99_ms')} ms); "
            f"every subscriber got all: {s.get('all_received')} (counts {s.get('received_counts')})"
        )
        yield (
            f"CPU seconds: server {self.server_cpu_seconds}, subscribers "
            f"{s.get('cpu_seconds')}, publisher {p.get('cpu_seconds')}; server RSS "
            f"{self.server_rss_mib} MiB; slow-consumer log lines {self.slow_consumer_log_lines}; "
            f"messages per socket write in phase 3: {self.phase3_messages_per_write}"
        )
        if self.failures:
            yield "INVARIANTS BROKEN:"
            for f in self.failures:
                yield "  - " + f
        else:
            yield "all checks hold"


class _Child:
    """A helper process speaking JSON lines on its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, args: list[str], cpu: str | None) -> _Child:
        from tests.serverproc import taskset_prefix

        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        proc = await asyncio.create_subprocess_exec(
            *taskset_prefix(cpu), sys.executable, "-m", "tests.slow_reader", role, *args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env,
        )  # fmt: skip
        return cls(proc)

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"helper process ended (status {await self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def finish(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        # the pipes' transports close with the process; nothing left to read


async def _stats(session: Any, api: str) -> dict[str, Any]:
    """The server's message counters (``GET /stats``)."""
    async with session.get(api + "/stats") as resp:
        messages = (await resp.json())["messages"]
    return {k: int(messages.get(k) or 0) for k in ("delivered_total", "writes_total")}


async def _ws_stats(session: Any, api: str) -> dict[str, Any]:
    async with session.get(api + "/ws/stats") as resp:
        return await resp.json()  # type: ignore[no-any-return]


def kernel_send_queue(server_port: int, peer_ports: set[int]) -> dict[int, int]:
    """The server side's kernel send queue (bytes) of the connections to
    ``peer_ports``, from ``ss`` (empty if it is not installed)."""
    try:
        out = subprocess.run(
            ["ss", "-tnH", "state", "established", f"( sport = :{server_port} )"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    queues: dict[int, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            send_q = int(parts[1])
            peer = int(parts[3].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if peer in peer_ports:
            queues[peer] = send_q
    return queues


async def run_slow_reader(options: SlowOptions) -> SlowReport:
    """Phase 1: the subscribers alone. Phase 2: with the never-readers, until
    the server has closed them all (or ``close_timeout``). Phase 3: after."""
    import aiohttp

    from tests.serverproc import cpu_seconds, start_server

    o = options
    say = o.progress or (lambda _t: None)
    rep = SlowReport(o)
    raise_fd_limit()
    server = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: start_server(
            env={
                "SEND_BUFFER_LIMIT": o.send_buffer_limit,
                "SOCKET_SEND_BUFFER": o.socket_send_buffer,
            },
            cpu=o.server_cpu,
        ),
    )
    subs = pub = None
    readers: list[NeverReader] = []
    try:
        api = f"http://127.0.0.1:{server.api_port}"
        cpu0 = cpu_seconds(server.pid)
        subs = await _Child.start(
            "subscribers",
            [
                "--port",
                str(server.ws_port),
                "--count",
                str(o.subscribers),
                "--type",
                o.type,
                "--sample-every",
                str(o.sample_every),
            ],
            o.client_cpu,
        )
        ready = await subs.read(120)
        rep.subscribe_seconds = ready.get("seconds")
        say(f"{o.subscribers} subscribers ready in {rep.subscribe_seconds}s")
        pub = await _Child.start(
            "publisher",
            ["--api-port", str(server.api_port), "--rate", str(o.rate), "--size", str(o.size),
             "--type", o.type],
            o.client_cpu,
        )  # fmt: skip
        await pub.read(30)
        say(f"phase 1: {o.phase_seconds}s at {o.rate}/s, no never-reader")
        await asyncio.sleep(o.phase_seconds)
        for _ in range(o.slow):
            reader = await NeverReader.open(server.ws_port, o.type, o.rcvbuf)
            reader.keep_alive(o.keepalive)
            readers.append(reader)
        ports = {r.local_port for r in readers}
        pub.send({"cmd": "phase", "phase": 2})
        phase2 = time.monotonic()
        say(f"phase 2: {o.slow} never-reader(s) subscribed; waiting for the server to close them")
        async with aiohttp.ClientSession(trust_env=False) as session:
            deadline = phase2 + o.close_timeout
            next_ss = phase2
            while time.monotonic() < deadline:
                stats = await _ws_stats(session, api)
                rep.slow_consumer_closes = int(stats.get("slow_consumer_closes", 0))
                if rep.slow_consumer_closes >= o.slow:
                    rep.seconds_to_close = round(time.monotonic() - phase2, 2)
                    break
                if time.monotonic() >= next_ss:
                    next_ss += 1.0
                    queues = kernel_send_queue(server.ws_port, ports)
                    if queues:
                        rep.kernel_send_queue_max = max(rep.kernel_send_queue_max, *queues.values())
                await asyncio.sleep(0.1)
            say(
                f"slow-consumer closes: {rep.slow_consumer_closes} after {rep.seconds_to_close}s "
                f"(server's kernel send queue to a never-reader reached "
                f"{rep.kernel_send_queue_max} bytes)"
            )
            # within the server's 5 s close handshake: read what it sent, then its close
            await asyncio.gather(*(r.read_to_close(4.0) for r in readers))
            rep.slow_close_codes = [r.close_code for r in readers]
            rep.slow_close_reasons = [r.close_reason for r in readers]
            rep.slow_data_after = [r.data_after for r in readers]
            rep.slow_bytes_after = [r.bytes_after for r in readers]
            stats0 = await _stats(session, api)
        pub.send({"cmd": "phase", "phase": 3})
        say(f"phase 3: {o.phase_seconds}s after the close")
        await asyncio.sleep(o.phase_seconds)
        async with aiohttp.ClientSession(trust_env=False) as session:
            stats1 = await _stats(session, api)
        delivered = stats1["delivered_total"] - stats0["delivered_total"]
        writes = stats1["writes_total"] - stats0["writes_total"]
        rep.phase3_messages_per_write = round(delivered / writes, 2) if writes else None
        pub.send({"cmd": "stop"})
        rep.publisher = await pub.read(30)
        subs.send({"cmd": "stop", "last_seq": rep.publisher.get("last_seq", 0), "timeout": 20})
        rep.subscribers = await subs.read(60)
        cpu1 = cpu_seconds(server.pid)
        if cpu0 is not None and cpu1 is not None:
            rep.server_cpu_seconds = round(cpu1 - cpu0, 2)
        rss = server.rss_kib()
        rep.server_rss_mib = round(rss / 1024, 1) if rss else None
        rep.server_alive = server.alive()
    finally:
        for r in readers:
            await r.close()
        for child in (pub, subs):
            if child is not None:
                await child.finish()
        await asyncio.get_running_loop().run_in_executor(None, server.stop)
        rep.log_problems = server.log_problems()
        rep.slow_consumer_log_lines = server.log_text().count("is a slow consumer")
        server.cleanup()
    rep.failures = rep.check()
    return rep


# --------------------------------------------------------------------------- helper processes


def _helper_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.slow_reader")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("subscribers")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--type", required=True)
    s.add_argument("--sample-every", type=int, default=1)
    q = sub.add_parser("publisher")
    q.add_argument("--api-port", type=int, required=True)
    q.add_argument("--rate", type=float, required=True)
    q.add_argument("--size", type=int, required=True)
    q.add_argument("--type", required=True)
    a = p.parse_args(argv)
    if a.role == "subscribers":
        coro = subscribers_main(a.port, a.count, a.type, a.sample_every)
    else:
        coro = publisher_main(a.api_port, a.rate, a.size, a.type)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    _helper_main()
