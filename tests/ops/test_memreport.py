"""SIGUSR1's memory report never leaves tracemalloc on.

A real ``aiosrv serve`` subprocess gets SIGUSR1 twice. Every report logs
``memory report: tracemalloc=on|off`` from ``tracemalloc.is_tracing()`` at the
time of the report, so the second report's line shows whether the first one
left tracing running. Without ``diagnostics.tracemalloc`` both say off and
list no allocation sites; with it (``TRACEMALLOC=1``) both say on and list
them.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from tests.serverproc import ServerProcess, start_server

HEAD = "memory report: rss="
TRACE = re.compile(r"memory report: tracemalloc=(on|off)")
SITE = re.compile(r"memory report: allocation site \S+:\d+ size=[\d.]+ KiB count=\d+")


def reports(log: Path) -> list[str]:
    """The log's memory reports, each its lines joined (a report starts at its rss line)."""
    out: list[str] = []
    for line in log.read_text().splitlines():
        if HEAD in line:
            out.append(line)
        elif "memory report:" in line and out:
            out[-1] += "\n" + line
    return out


def report(srv: ServerProcess, log: Path, n: int, timeout: float = 10.0) -> str:
    """Send SIGUSR1; return the ``n``-th report (1-based) once its tracemalloc line is logged."""
    srv.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = reports(log)
        if len(got) >= n and TRACE.search(got[n - 1]):
            time.sleep(0.1)  # the allocation sites come after the tracemalloc line
            return reports(log)[n - 1]
        time.sleep(0.05)
    raise AssertionError(f"report {n} not logged; log:\n{log.read_text()[-3000:]}")


def run_reports(tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    log = tmp_path / "websocket-server.log"
    srv = start_server(settings={"logging.file": str(log)}, log_level="INFO", env=env)
    try:
        got = [report(srv, log, 1), report(srv, log, 2)]
        assert srv.alive()
        assert srv.log_problems() == []
    finally:
        rc = srv.stop()
        srv.cleanup()
    assert rc == 0
    return got


def test_reports_leave_tracemalloc_off(tmp_path: Path) -> None:
    first, second = run_reports(tmp_path)
    for r in (first, second):
        assert "memory report: gc objects=" in r
        assert TRACE.findall(r) == ["off"], r
        assert not SITE.search(r), r
    assert "set diagnostics.tracemalloc" in first


def test_with_diagnostics_tracemalloc_every_report_lists_sites(tmp_path: Path) -> None:
    first, second = run_reports(tmp_path, env={"TRACEMALLOC": "1"})
    for r in (first, second):
        assert TRACE.findall(r) == ["on"], r
        assert SITE.search(r), r
