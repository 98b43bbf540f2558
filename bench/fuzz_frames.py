"""Socket-level fuzzing of aiosrv's WebSocket endpoint (hostile input).

Starts ``aiosrv serve`` as a child process on free loopback ports, connects
one normal subscriber and publishes to it over HTTP at a steady rate, while
raw TCP clients send random and mutated frames, protocol junk and broken
handshakes; then checks the invariants (server alive and healthy, every
published message received in order, only contract close codes and never
1011, bounded RSS, no traceback in the server's log, clean SIGTERM) and
replays each input that broke one to a minimal reproducer.

The implementation is ``tests/fuzzing.py`` (the suite runs a short version:
``tests/server/test_fuzz.py``).

    .venv/bin/python bench/fuzz_frames.py                      # 100,000 inputs
    .venv/bin/python bench/fuzz_frames.py --inputs 3000 --seed 7 --json
    .venv/bin/python bench/fuzz_frames.py --client-publish     # publish allowed over WS
    AIOSRV_NO_EXTENSIONS=1 .venv/bin/python bench/fuzz_frames.py   # the pure-Python core

Exit status 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzzing import FuzzOptions, iter_lines, run_fuzz  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=100_000, help="inputs to send (default 100000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--conns", type=int, default=8, help="concurrent raw clients (default 8)")
    p.add_argument(
        "--rate", type=float, default=50.0, help="publishes/s to the normal subscriber (50)"
    )
    p.add_argument("--max-batch", type=int, default=64, help="inputs per connection at most")
    p.add_argument(
        "--stall-timeout", type=float, default=10.0, help="seconds an input may go unanswered"
    )
    p.add_argument(
        "--client-publish",
        action="store_true",
        help="run the server with websocket.allow_client_publish (publish over WS allowed)",
    )
    p.add_argument(
        "--max-message-size", type=int, default=1 << 20, help="websocket.max_message_size"
    )
    p.add_argument("--rss-limit-mib", type=float, default=256.0, help="peak RSS growth allowed")
    p.add_argument(
        "--rss-after-limit-mib", type=float, default=128.0, help="RSS growth allowed at the end"
    )
    p.add_argument("--server-cpu", default=None, help="pin the server with taskset -c CPU")
    p.add_argument("--log-level", default="WARNING", help="the server's log level (WARNING)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="server config (repeat)"
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="server env (repeat)"
    )
    p.add_argument("--no-minimize", action="store_true", help="do not replay findings")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--out", default=None, help="also write the JSON summary to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    settings = dict(item.partition("=")[::2] for item in a.set)
    env = dict(item.partition("=")[::2] for item in a.env)

    def progress(text: str) -> None:
        if not a.quiet:
            print(text, file=sys.stderr, flush=True)

    options = FuzzOptions(
        inputs=a.inputs,
        seed=a.seed,
        conns=a.conns,
        rate=a.rate,
        max_batch=a.max_batch,
        stall_timeout=a.stall_timeout,
        client_publish=a.client_publish,
        max_size=a.max_message_size,
        rss_limit_mib=a.rss_limit_mib,
        rss_after_limit_mib=a.rss_after_limit_mib,
        server_cpu=a.server_cpu,
        log_level=a.log_level,
        minimize=not a.no_minimize,
        progress=progress,
        settings=settings,
        env=env,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        report = asyncio.run(run_fuzz(options))
    else:
        report = uvloop.run(run_fuzz(options)) if hasattr(uvloop, "run") else None
        if report is None:  # pragma: no cover - old uvloop
            uvloop.install()
            report = asyncio.run(run_fuzz(options))
    if a.out:
        Path(a.out).write_text(json.dumps(report.summary(), indent=2, default=str) + "\n")
    if a.json:
        print(json.dumps(report.summary(), indent=2, default=str))
    else:
        for line in iter_lines(report):
            print(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
