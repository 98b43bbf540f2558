"""Cross-site WebSocket hijacking, with a real headless Chromium.

Two web pages on two origins (two free loopback ports) run the same script:
open the server's WebSocket with a valid token and subscribe. The server's
allow-list names one origin. The browser, not the test, writes the ``Origin``
header, so this is what a victim's browser visiting an attacker's page sends:
the page on the listed origin is served, the other one is refused with 403
before the upgrade (the browser sees the connection fail) and the refusal is
an audit line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.browser.test_console_snippet import chromium
from tests.conftest import StartServer

TOKEN = "browser-test-token-42"

PAGE = """<!doctype html><meta charset="utf-8"><title>probe</title>
<script>
const report = (what) => fetch("/report", {method: "POST", body: JSON.stringify(what)});
const ws = new WebSocket("ws://127.0.0.1:%(port)d/ws/realtime?token=%(token)s");
ws.onopen = () => ws.send(JSON.stringify({id: "s1", action: "subscribe",
                                          payload: {types: ["secret-feed"]}}));
ws.onmessage = (e) => { const m = JSON.parse(e.data);
  if (m.type === "ack") report({result: "open", types: m.payload.types}); };
ws.onclose = (e) => report({result: "closed", code: e.code});
</script>"""


class PageSite:
    """A web page on its own origin (a free port) and the reports it POSTs back."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_post("/report", self._report)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.html, content_type="text/html")

    async def _report(self, request: web.Request) -> web.Response:
        await self.reports.put(orjson.loads(await request.read()))
        return web.Response(text="ok")

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def pages() -> AsyncIterator[list[PageSite]]:
    made: list[PageSite] = []
    yield made
    for page in made:
        await page.close()


async def visit(page: PageSite, profile: Path) -> dict[str, Any]:
    """Open the page in a headless Chromium; its first report."""
    proc = await asyncio.create_subprocess_exec(
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        page.origin + "/",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(page.reports.get(), 40)
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.timeout(120)
async def test_a_page_on_another_origin_cannot_open_the_stream(
    running_server: StartServer,
    pages: list[PageSite],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trusted, attacker = PageSite(""), PageSite("")
    pages.extend((trusted, attacker))
    for page in pages:
        await page.start()
    running = await running_server(
        security__enable_auth=True,
        security__auth_token=TOKEN,
        security__allowed_origins=(trusted.origin,),
    )
    for page in pages:
        page.html = PAGE % {"port": running.port, "token": TOKEN}

    caplog.set_level(logging.WARNING, logger="aiosrv.audit")
    assert await visit(trusted, tmp_path / "p1") == {"result": "open", "types": ["secret-feed"]}
    report = await visit(attacker, tmp_path / "p2")
    assert report["result"] == "closed" and report["code"] == 1006, report  # never opened
    refused = [r.getMessage() for r in caplog.records if "origin refused" in r.getMessage()]
    assert len(refused) == 1 and attacker.origin in refused[0], refused
    assert running.server.stats.rejected["origin"] == 1
