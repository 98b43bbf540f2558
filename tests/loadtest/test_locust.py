"""A short headless Locust run (loadtest/run.sh) against a real ``aiosrv serve``.

Locust monkey-patches the standard library with gevent when imported, which
would break the asyncio tests sharing this process: it only ever runs as a
subprocess here (run.sh), and this module never imports it. The server has
its three listeners on separate free loopback ports (tests/serverproc.py), so
the run exercises ``--api-url`` and ``--metrics-url`` too.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import READY_RE, ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "loadtest" / "run.sh"



def require_loadtest_extra() -> None:
    """Fail (never skip) without Locust and matplotlib: `make test` installs them."""
    missing = [m for m in ("locust", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: pip install -e '.[loadtest]' (make setup)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    require_loadtest_extra()
    srv = start_server(
        workdir=tmp_path / "server", settings={"websocket.allow_client_publish": "true"}
    )
    try:
        yield srv
    finally:
        srv.cleanup()


def read_stats(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


@pytest.mark.timeout(120)
def test_headless_run_reports_receives_without_failures(
    server: ServerProcess, tmp_path: Path
) -> None:
    ready = READY_RE.search(server.log_text())
    assert ready and ready["metrics"], server.log_text()
    out = tmp_path / "report"
    users = 25  # an HTTP publisher, a WebSocket publisher and 23 subscribers
    env = {**os.environ, "PYTHON": sys.executable}
    argv = [
        "bash", str(RUN_SH), "--scenario", "steady", "--quiet",
        "-H", f"http://127.0.0.1:{server.ws_port}",
        "--api-url", f"http://127.0.0.1:{server.api_port}",
        "--metrics-url", f"http://127.0.0.1:{ready['metrics']}/metrics",
        "-u", str(users), "-r", str(users), "-t", "10s", "--out", str(out),
        "--", "--types", "prices,news", "--keys", "eu,us",
        "--publish-rate", "25", "--ping-interval", "2", "--ws-publishers", "1",
    ]  # fmt: skip
    proc = subprocess.run(
        argv,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    stats = read_stats(out / "locust_stats.csv")
    failures = {k: int(r["Failure Count"]) for k, r in stats.items() if int(r["Failure Count"])}
    assert not failures, (failures, (out / "locust_failures.csv").read_text())
    connect = stats[("WS", "connect")]
    assert int(connect["Request Count"]) == users - 2  # every subscriber, once
    receives = {name: r for (kind, name), r in stats.items() if name.startswith("receive ")}
    assert set(receives) <= {"receive prices", "receive news"} and receives
    assert sum(int(r["Request Count"]) for r in receives.values()) > 500
    assert int(stats[("WS", "subscribe")]["Request Count"]) == users - 2
    assert int(stats[("WS", "publisher connect")]["Request Count"]) == 1
    assert int(stats[("WS", "publish")]["Request Count"]) > 100
    assert int(stats[("WS", "ping")]["Request Count"]) > 0
    assert int(stats[("POST", "/api/publish")]["Request Count"]) > 100
    # latencies are publish-to-receive on one machine: milliseconds, not seconds
    for r in receives.values():
        assert float(r["Median Response Time"]) < 500, r

    for name in (
        "report.html", "report.md", "latency.png", "connections.png", "deliveries.png",
        "server.png", "locust_stats_history.csv", "server_metrics.csv",
    ):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with (out / "server_metrics.csv").open(newline="") as f:
        samples = list(csv.DictReader(f))
    assert len(samples) >= 8
    assert max(float(s["connections"] or 0) for s in samples) == users - 1  # + publisher
    assert max(float(s["delivered"] or 0) for s in samples) > 500
    report = (out / "report.md").read_text()
    assert "| WS | connect |" in report and "![" in report and "None." in report

    assert server.alive()
    assert server.log_problems() == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(90)
def test_the_web_ui_starts_a_swarm_and_shows_ws_events(server: ServerProcess) -> None:
    import json
    import time
    import urllib.parse
    import urllib.request

    locust = Path(sys.executable).with_name("locust")
    port = _free_port()
    ui = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    proc = subprocess.Popen(
        [str(locust), "-f", str(REPO / "loadtest" / "locustfile.py"),
         "--web-host", "127.0.0.1", "--web-port", str(port),
         "-H", f"http://127.0.0.1:{server.ws_port}",
         "--api-url", f"http://127.0.0.1:{server.api_port}", "--publish-rate", "20"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with opener.open(ui + "/", timeout=2) as resp:
                    assert resp.status == 200 and b"<title>Locust" in resp.read()
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no web UI"
                time.sleep(0.2)
        form = urllib.parse.urlencode({"user_count": 6, "spawn_rate": 6}).encode()
        with opener.open(ui + "/swarm", data=form, timeout=5) as resp:
            assert json.loads(resp.read())["success"], "swarm refused"
        deadline = time.monotonic() + 20
        while True:
            with opener.open(ui + "/stats/requests", timeout=5) as resp:
                stats = json.loads(resp.read())
            names = {(r["method"], r["name"]): r for r in stats["stats"]}
            got = names.get(("WS", "receive prices"), {}).get("num_requests", 0) + names.get(
                ("WS", "receive news"), {}
            ).get("num_requests", 0)
            if names.get(("WS", "connect"), {}).get("num_requests") == 5 and got > 20:
                break
            assert time.monotonic() < deadline, names
            time.sleep(0.5)
        assert not stats["errors"], stats["errors"]
        with opener.open(ui + "/stop", data=b"", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
