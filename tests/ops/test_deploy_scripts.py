"""deploy/health-check.sh and deploy/verify.sh against live aiosrv servers.

Healthy servers pass; a server whose broker is down (Redis on a closed port:
/health answers 503), a stopped server, a free port, a wrong version and a
publish that never reaches the subscriber (the API of one server, the
WebSocket of another: the memory broker does not share messages) fail with a
message. The scripts also pass ``sh -n`` and shellcheck (scripts/system-deps.sh
installs it; without it the test fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import aiosrv
from tests.cli.conftest import free_ports
from tests.serverproc import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "deploy" / "health-check.sh"
VERIFY = REPO / "deploy" / "verify.sh"
DEPLOY = REPO / "deploy" / "deploy.sh"  # run by tests/ops/test_deploy.py


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHON": sys.executable, "VERIFY_TIMEOUT": "3", **env}
    return subprocess.run(
        ["sh", str(script), *args], capture_output=True, text=True, timeout=60, env=full
    )


@pytest.fixture(scope="module")
def healthy() -> Iterator[ServerProcess]:
    srv = start_server()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="module")
def broker_down() -> Iterator[ServerProcess]:
    port = free_ports(1)[0]  # nothing listens there: Redis is "down"
    srv = start_server(env={"BROKER": "redis", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)})
    yield srv
    srv.cleanup()


def test_scripts_pass_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed: run `sh scripts/system-deps.sh` as root")
    for script in (HEALTH, VERIFY, DEPLOY):
        assert os.access(script, os.X_OK), script
        r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([exe, str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_usage() -> None:
    assert run(HEALTH).returncode == 2
    assert run(VERIFY, "http://127.0.0.1:1").returncode == 2


@pytest.mark.parametrize("path", ["", "/", "/health"])
def test_health_check_healthy(healthy: ServerProcess, path: str) -> None:
    r = run(HEALTH, healthy.api(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[:2] == [
        f"HEALTHY: {healthy.api('/health')} HTTP 200",
        "status: healthy",
    ]


def test_health_check_broker_down(broker_down: ServerProcess) -> None:
    r = run(HEALTH, broker_down.api(""))
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == f"UNHEALTHY: {broker_down.api('/health')} HTTP 503"
    assert lines[1] == "status: degraded"
    assert lines[2].startswith("reason: broker redis unavailable"), lines
    assert any(ln.startswith("check broker: ") for ln in lines), lines


def test_health_check_stopped_server_and_wrong_port() -> None:
    srv = start_server()
    url = srv.api("")
    assert run(HEALTH, url).returncode == 0
    assert srv.stop() == 0
    srv.cleanup()
    r = run(HEALTH, url)
    assert r.returncode == 1
    assert r.stdout.startswith(f"UNHEALTHY: no answer from {url}/health: curl: (7)"), r.stdout
    port = free_ports(1)[0]
    r = run(HEALTH, f"http://127.0.0.1:{port}")
    assert r.returncode == 1 and "no answer" in r.stdout, r.stdout


def test_health_check_not_health_json(healthy: ServerProcess) -> None:
    r = run(HEALTH, healthy.api("/status"))  # -> /status/health: 404
    assert r.returncode == 1
    assert "HTTP 404" in r.stdout and "not /health's JSON" in r.stdout, r.stdout


def test_verify_healthy(healthy: ServerProcess) -> None:
    for args in ([], [aiosrv.__version__]):
        r = run(VERIFY, healthy.api(""), healthy.ws_url(), *args)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"OK health: {healthy.api('/health')} is healthy"
        assert lines[1] == f"OK status: running, version {aiosrv.__version__}"
        assert lines[2].startswith("OK publish/subscribe: seq ")
        assert lines[2].endswith(f" received over {healthy.ws_url()}")
        assert lines[-1] == "verified"


def test_verify_wrong_version(healthy: ServerProcess) -> None:
    r = run(VERIFY, healthy.api(""), healthy.ws_url(), "0.0.0-not-this")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == (
        f"FAILED: version {aiosrv.__version__} is running, expected 0.0.0-not-this"
    )


def test_verify_message_not_received(healthy: ServerProcess) -> None:
    other = start_server()  # its own memory broker: nothing published on `healthy` reaches it
    try:
        r = run(VERIFY, healthy.api(""), other.ws_url())
    finally:
        other.cleanup()
    assert r.returncode == 1
    last = r.stdout.splitlines()[-1]
    assert last.startswith("FAILED: publish/subscribe: published seq "), r.stdout
    assert last.endswith("but it was not received within 3.0s"), last


def test_verify_bad_websocket_path(healthy: ServerProcess) -> None:
    r = run(VERIFY, healthy.api(""), healthy.ws_url("/nope"))
    assert r.returncode == 1
    assert "FAILED: publish/subscribe: WebSocket" in r.stdout
    assert "handshake refused: HTTP 404" in r.stdout, r.stdout


def test_verify_unhealthy_and_unreachable(broker_down: ServerProcess) -> None:
    r = run(VERIFY, broker_down.api(""), broker_down.ws_url())
    assert r.returncode == 1
    assert r.stdout.startswith("FAILED: health check: UNHEALTHY: "), r.stdout
    assert "HTTP 503" in r.stdout and "check broker: " in r.stdout
    port = free_ports(1)[0]
    r = run(VERIFY, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/realtime")
    assert r.returncode == 1
    assert r.stdout.startswith("FAILED: health check: UNHEALTHY: no answer"), r.stdout


def test_verify_with_auth() -> None:
    srv = start_server(
        env={"AUTH_TOKEN": "ws-secret", "API_TOKEN": "api-secret"},
        settings={"security.enable_auth": "true"},
    )
    try:
        r = run(VERIFY, srv.api(""), srv.ws_url(), WS_TOKEN="ws-secret", API_TOKEN="api-secret")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "verified"
        r = run(VERIFY, srv.api(""), srv.ws_url(), API_TOKEN="api-secret")
        assert r.returncode == 1
        assert "handshake refused: HTTP 401" in r.stdout, r.stdout
        r = run(VERIFY, srv.api(""), srv.ws_url(), WS_TOKEN="ws-secret", API_TOKEN="wrong")
        assert r.returncode == 1
        assert "POST " in r.stdout and "/api/publish: HTTP 401" in r.stdout, r.stdout
    finally:
        srv.cleanup()


@contextmanager
def stub_health(code: int, body: dict[str, Any]) -> Iterator[str]:
    """An HTTP server on a free loopback port answering /health with ``code`` and ``body``."""
    data = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_health_check_draining_and_connection_limit(healthy: ServerProcess) -> None:
    """A draining answer (its listeners close at once, so a live one is the
    "no answer" above) and one at the connection limit (still healthy), built
    from a live server's /health body the way aiosrv.stats.health_snapshot
    would change it."""
    with urllib.request.urlopen(healthy.api("/health"), timeout=10) as r:
        real = json.load(r)
    draining = json.loads(json.dumps(real))
    draining.update(status="unhealthy", reason="draining: the server is shutting down")
    draining["checks"]["draining"] = True
    with stub_health(503, draining) as url:
        r = run(HEALTH, url)
    assert r.returncode == 1
    assert r.stdout.splitlines()[1:] == [
        "status: unhealthy",
        "reason: draining: the server is shutting down",
        "check draining: the instance is shutting down",
    ], r.stdout
    full = json.loads(json.dumps(real))
    full["checks"]["connections"].update(ok=False, active=10000, limit=10000)
    with stub_health(200, full) as url:
        r = run(HEALTH, url)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[1:] == [
        "status: healthy",
        'check connections: not ok {"active":10000,"handshakes_in_progress":0,"limit":10000}',
    ], r.stdout
