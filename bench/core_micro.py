"""Micro-benchmark of the fan-out core alone (no sockets): publish + flush.

Measures, for the compiled core and its pure-Python twin, the time per
delivery (one frame queued to one subscriber, plus its share of the flush)
with N subscribers and a null transport. It isolates the core's own cost from
the kernel's; the end-to-end benchmark is a separate script.

    .venv/bin/python bench/core_micro.py [--subscribers 1000] [--messages 2000]
"""

from __future__ import annotations

import argparse
import platform
import time

from aiosrv import _fanout_py

try:
    from aiosrv import _fanout_c
except ImportError:  # pragma: no cover
    _fanout_c = None


class NullTransport:
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def get_write_buffer_size(self) -> int:
        return 0


def run(mod, subscribers: int, messages: int, size: int, per_flush: int) -> float:
    core = mod.FanOut()
    for i in range(subscribers):
        sub = mod.Subscriber(str(i), NullTransport(), 1 << 30)
        core.add(sub)
        core.subscribe(sub, "prices")
    frame = mod.encode_frame(b"x" * size)
    t0 = time.perf_counter()
    for i in range(messages):
        core.publish("prices", None, frame)
        if (i + 1) % per_flush == 0:
            core.flush()
    core.flush()
    elapsed = time.perf_counter() - t0
    return elapsed / (messages * subscribers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
    for per_flush in (1, 10, 100):
        row = []
        for name, mod in (("compiled", _fanout_c), ("pure", _fanout_py)):
            if mod is None:
                continue
            ns = run(mod, args.subscribers, args.messages, args.size, per_flush) * 1e9
            row.append(f"{name}: {ns:7.1f} ns/delivery ({1e9 / ns / 1e6:5.2f} M/s)")
        print(f"{args.subscribers} subs, {per_flush:3d} msg/flush  " + "  ".join(row))


if __name__ == "__main__":
    main()
