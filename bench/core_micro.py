"""Micro-benchmark of the fan-out core alone (no sockets): publish + flush.

Measures, for the compiled core and its pure-Python twin, the time per
delivery (one frame queued to one subscriber, plus its share of the flush)
with N subscribers and a null transport. It isolates the core's own cost from
the kernel's; the end-to-end benchmark is a separate script.

    .venv/bin/python bench/core_micro.py [--subscribers 1000] [--messages 2000]
        [--repeat 5] [--compare LABEL=PATH.so ...]

``--compare`` loads another build of the core from its extension file (say
the hand-written core of an older commit, built in a temporary folder) and
measures it in the same runs, interleaved; each figure is the best of
``--repeat`` runs, so that other work on the machine counts as little as it
can.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time
from types import ModuleType

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


def load(label: str, path: str) -> ModuleType:
    """An extension module from its file; its init function is named after
    the file (``_fanout_c.cpython-….so`` -> ``PyInit__fanout_c``)."""
    short = os.path.basename(path).split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(f"core_micro_{label}.{short}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1, help="best of N interleaved runs")
    ap.add_argument("--compare", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--no-pure", action="store_true", help="skip the pure-Python core")
    args = ap.parse_args()
    machine = f"{platform.machine()} {platform.processor() or ''}"
    print(f"machine: {machine} python {platform.python_version()}")
    cores: list[tuple[str, ModuleType]] = []
    for spec in args.compare:
        label, _, path = spec.partition("=")
        cores.append((label, load(label, path)))
    if _fanout_c is not None:
        cores.append(("compiled", _fanout_c))
    if not args.no_pure:
        cores.append(("pure", _fanout_py))
    for per_flush in (1, 10, 100):
        times: dict[str, list[float]] = {name: [] for name, _ in cores}
        for _ in range(args.repeat):
            for name, mod in cores:
                times[name].append(run(mod, args.subscribers, args.messages, args.size, per_flush))
        row = []
        for name, _ in cores:
            ns = min(times[name]) * 1e9
            spread = ""
            if args.repeat > 1:
                spread = f", median {statistics.median(times[name]) * 1e9:.1f}"
            row.append(f"{name}: {ns:7.1f} ns/delivery ({1e9 / ns / 1e6:5.2f} M/s{spread})")
        print(f"{args.subscribers} subs, {per_flush:3d} msg/flush  " + "  ".join(row))


if __name__ == "__main__":
    main()
