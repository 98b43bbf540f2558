"""The memory report SIGUSR1 writes to the log (operations guide, "memory leak").

It lists the largest allocation sites (tracemalloc), the most numerous object
types (gc) and the per-connection buffer totals of the fan-out core. Taking
allocation sites needs tracemalloc running: with ``diagnostics.tracemalloc``
it runs from start-up and every report lists the sites. Otherwise the report
says tracemalloc is off and never starts it: tracing slows every allocation
and grows memory, and a report must not leave it on for good.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server

TOP = 15


def memory_report(server: Server) -> list[str]:
    server.sampler.sample(force=True)
    lines = []
    core = server.core
    conns = len(server.connections)
    rss = server.sampler.rss
    lines.append(
        f"memory report: rss={rss / 1048576:.1f} MiB connections={conns} "
        f"rss_per_connection={(rss // conns) if conns else 0} B "
        f"pending_send_bytes={core.pending_bytes_total()} "
        f"buffered_send_bytes={core.buffered_bytes_total()} "
        f"queue_depth={len(server.hub.queue)}"
    )
    biggest = sorted(
        server.connections.values(),
        key=lambda c: c.sub.pending_bytes + c.sub.transport_buffered,
        reverse=True,
    )[:5]
    for c in biggest:
        lines.append(
            f"memory report: connection {c.id} peer={c.peer} pending={c.sub.pending_bytes} "
            f"transport_buffered={c.sub.transport_buffered} "
            f"subscriptions={c.sub.subscription_count}"
        )
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    lines.append(f"memory report: gc objects={sum(counts.values())} counts={gc.get_count()}")
    for name, n in counts.most_common(TOP):
        lines.append(f"memory report: objects {name}: {n}")
    tracing = tracemalloc.is_tracing()
    lines.append(
        "memory report: tracemalloc="
        + ("on" if tracing else "off (set diagnostics.tracemalloc to list allocation sites)")
    )
    if tracing:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        for stat in snap.statistics("lineno")[:TOP]:
            frame = stat.traceback[0]
            lines.append(
                f"memory report: allocation site {frame.filename}:{frame.lineno} "
                f"size={stat.size / 1024:.1f} KiB count={stat.count}"
            )
    return lines
