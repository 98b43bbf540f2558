"""A client that never reads, among thousands that do.

Starts ``aiosrv serve`` (with ``SEND_BUFFER_LIMIT=64KiB``), 2,000 subscribers
in a separate process (compact asyncio clients measuring publish-to-receive
latency from a timestamp in the payload), and a publisher process at a fixed
rate (200 msgs/s of 100 B, one message per ``POST /api/publish``). Phase 1
runs without, phase 2 with ``--slow`` clients that subscribe and never read.
Reports the normal subscribers' p50/p99 latency in each phase, checks that
each never-reader is closed by the server with 1013 (slow consumer) and that
every normal subscriber got every message.

The server is pinned to CPU 0 and the load (subscribers, publisher) to CPU 1
when the machine has two CPUs or more (``--no-pin`` to leave them free).
The implementation is ``tests/slow_reader.py`` (the suite runs a short version:
``tests/server/test_slow_reader.py``).

    .venv/bin/python bench/slow_reader.py
    .venv/bin/python bench/slow_reader.py --subscribers 500 --slow 3 --phase-seconds 5 --json

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.slow_reader import SlowOptions, run_slow_reader  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=2000, help="normal subscribers (2000)")
    p.add_argument("--slow", type=int, default=1, help="never-reading clients in phase 2 (1)")
    p.add_argument("--rate", type=float, default=200.0, help="publishes per second (200)")
    p.add_argument("--size", type=int, default=100, help="payload bytes (100)")
    p.add_argument("--phase-seconds", type=float, default=10.0, help="length of each phase (10)")
    p.add_argument("--send-buffer-limit", default="64KiB", help="SEND_BUFFER_LIMIT (64KiB)")
    p.add_argument(
        "--socket-send-buffer", default="0",
        help="SOCKET_SEND_BUFFER, the server's SO_SNDBUF per connection (0: kernel autotuning)",
    )  # fmt: skip
    p.add_argument(
        "--close-timeout",
        type=float,
        default=300.0,
        help="how long phase 2 waits for the never-readers to be closed (300)",
    )
    p.add_argument("--rcvbuf", type=int, default=4096, help="never-readers' SO_RCVBUF (4096)")
    p.add_argument(
        "--sample-every",
        type=int,
        default=10,
        help="measure latency on every Nth subscriber, all its messages (10)",
    )
    p.add_argument(
        "--keepalive",
        type=float,
        default=20.0,
        help="never-readers write an unsolicited pong this often, so that the heartbeat "
        "timeout (60 s) does not close them first; 0: they send nothing (20)",
    )
    p.add_argument("--server-cpu", default=None, help="taskset CPU list for the server (0)")
    p.add_argument("--client-cpu", default=None, help="taskset CPU list for the load (1)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)  # fmt: skip
    pin = not a.no_pin and (os.cpu_count() or 1) >= 2
    options = SlowOptions(
        subscribers=a.subscribers,
        slow=a.slow,
        rate=a.rate,
        size=a.size,
        phase_seconds=a.phase_seconds,
        send_buffer_limit=a.send_buffer_limit,
        socket_send_buffer=a.socket_send_buffer,
        close_timeout=a.close_timeout,
        rcvbuf=a.rcvbuf,
        sample_every=a.sample_every,
        keepalive=a.keepalive,
        server_cpu=a.server_cpu or ("0" if pin else None),
        client_cpu=a.client_cpu or ("1" if pin else None),
        progress=None if a.quiet else (lambda t: print(t, file=sys.stderr, flush=True)),
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        report = asyncio.run(run_slow_reader(options))
    else:
        report = uvloop.run(run_slow_reader(options))
    if a.json:
        d = dataclasses.asdict(report)
        d["options"].pop("progress", None)
        print(json.dumps(d, indent=2, default=str))
    else:
        for line in report.lines():
            print(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
