"""The deployment report's browser console snippet, run by a real headless Chromium.

The page (``console_snippet.html``, opened as a file) connects to the server,
subscribes to ``status``, ``stats`` and ``health`` exactly as the report's
snippet does, and publishes what it received back to the test over HTTP.
Chromium comes from Debian's package (``scripts/system-deps.sh`` installs
it); a missing binary fails the test with that message.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.server.conftest import WsConnect

PAGE = Path(__file__).with_name("console_snippet.html")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: run `make system-deps` (scripts/system-deps.sh)")


@pytest.mark.timeout(60)
async def test_browser_console_snippet_gets_ack_then_live_messages(
    running_server: StartServer, ws_client: WsConnect, tmp_path: Path
) -> None:
    running = await running_server(sources__enabled=True, sources__interval=0.2)
    watcher = await ws_client(running)
    await watcher.subscribe(["browser-report"])

    proc = await asyncio.create_subprocess_exec(
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"{PAGE.as_uri()}?port={running.port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        report = await watcher.recv_type("browser-report", timeout=40)
    finally:
        proc.kill()
        await proc.wait()

    seen = report["payload"]
    ack = seen["ack"]
    assert ack["type"] == "ack"
    assert UUID.match(seen["sentId"]), seen["sentId"]
    assert ack["id"] == seen["sentId"]
    assert ack["payload"]["types"] == ["status", "stats", "health"]
    types = {m["type"] for m in seen["messages"]}
    assert types == {"status", "stats", "health"}
    for m in seen["messages"]:
        assert m["id"] == f"{m['type']}:{m['seq']}"
    stats = next(m for m in seen["messages"] if m["type"] == "stats")["payload"]
    # the watcher and the browser were both connected when stats was sampled
    assert stats["connections"]["active_connections"] == 2
    status = next(m for m in seen["messages"] if m["type"] == "status")["payload"]
    assert status["status"] == "running"
    assert status["connections"] == 2
