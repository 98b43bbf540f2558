"""``aiosrv serve`` facing the internet: request-head limits, TLS and running
out of file descriptors, through its own listeners (aiosrv/listen.py).

Each test runs on both event loops: ``uvloop`` (what ``serve`` picks) and
``asyncio`` (a ``uvloop`` module that fails to import is put first on the
child's PYTHONPATH, so ``install_uvloop`` falls back; the log says which).
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from tests.certs import client_context, make_cert

from .conftest import (
    ClientWebSocket,
    Served,
    StartServer,
    assert_alive,
    free_ports,
    http,
    recv_until,
    run_aiosrv,
    subscribe,
    ws_connect,
)

LOOPS = ["uvloop", "asyncio"]


def loop_env(loop: str, tmp_path: Path) -> dict[str, str]:
    if loop == "uvloop":
        return {}
    shim = tmp_path / "no-uvloop"
    shim.mkdir(exist_ok=True)
    (shim / "uvloop.py").write_text("raise ImportError('uvloop disabled by the test')\n")
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{shim}{os.pathsep}{path}" if path else str(shim)}


def start(serve: StartServer, loop: str, tmp_path: Path, *args: str, **kw: object) -> Served:
    srv = serve(*args, env=loop_env(loop, tmp_path), **kw)
    srv.wait_for(f"starting aiosrv on {loop}")
    return srv


def read_all(sock: socket.socket, timeout: float = 3.0) -> bytes:
    """Everything until the server closes (EOF)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# --------------------------------------------------------------------------- head limits


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_and_oversized_heads(serve: StartServer, tmp_path: Path, loop: str) -> None:
    srv = start(
        serve, loop, tmp_path,
        "--set", "security.handshake_timeout=0.5", "--set", "security.max_header_size=4096",
    )  # fmt: skip
    # a byte every 50 ms: 408 and closed at the timeout
    head = b"GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    with socket.create_connection(("127.0.0.1", srv.ws_port)) as sock:
        started = time.monotonic()
        data = b""
        for i in range(len(head)):
            sock.send(head[i : i + 1])
            if select.select([sock], [], [], 0.05)[0]:
                data = read_all(sock)
                break
        took = time.monotonic() - started
    assert status_of(data) == 408, data
    assert b'"code": "handshake_timeout"' in data
    assert 0.45 <= took < 1.2, took
    # a head over the limit: 431
    with socket.create_connection(("127.0.0.1", srv.api_port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        data = read_all(sock)
    assert status_of(data) == 431, data
    assert b"4096 bytes" in data
    srv.wait_for(r"INFO aiosrv.guard: request head refused \(408 handshake_timeout\) from "
                 r"127\.0\.0\.1:\d+: not complete within 0\.5 s")  # fmt: skip
    srv.wait_for(r"request head refused \(431 header_too_large\) from 127\.0\.0\.1:\d+")
    status, text = http("GET", f"http://127.0.0.1:{srv.metrics_port}/metrics")
    assert status == 200
    assert 'aiosrv_handshake_refused_total{reason="handshake_timeout"} 1.0' in text
    assert 'aiosrv_handshake_refused_total{reason="header_too_large"} 1.0' in text
    # and the ordinary paths work
    ws = ws_connect(srv.ws_url())
    try:
        assert_alive(ws)
    finally:
        ws.close()
    assert http("GET", srv.api("/health"))[0] == 200


# --------------------------------------------------------------------------- descriptors


LOW_NOFILE = 64


def low_nofile() -> None:
    # hard too: serve raises its soft limit to the hard one at start
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


@pytest.mark.parametrize("loop", LOOPS)
def test_running_out_of_descriptors_is_noticed_and_accepting_resumes(
    serve: StartServer, tmp_path: Path, loop: str
) -> None:
    srv = start(serve, loop, tmp_path, preexec_fn=low_nofile)
    n = LOW_NOFILE + 16  # more than the server can hold
    socks = [socket.create_connection(("127.0.0.1", srv.api_port), timeout=5) for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        line = srv.wait_for(
            r"ERROR aiosrv.listen: cannot accept connections on 127\.0\.0\.1:\d+: EMFILE "
            r"\(Too many open files\); all of 64 descriptors open"
        ).string
        assert "waiting clients stay in the backlog" in line
        # the first ones were accepted and answered (kept alive); the others wait
        time.sleep(0.3)
        answered = select.select(socks, [], [], 0)[0]
        waiting = [s for s in socks if s not in answered]
        assert answered and waiting, (len(answered), len(waiting))
        for sock in answered:
            assert status_of(sock.recv(65536)) == 200
            sock.close()
        # descriptors are free again: every waiting client is accepted and
        # answered (none was reset), within the retry delay
        for sock in waiting:
            sock.settimeout(5)
            assert status_of(sock.recv(65536)) == 200
    finally:
        for sock in socks:
            sock.close()
    # /health says so for a while, with the descriptors against the limit
    status, body = http("GET", srv.api("/health"))
    assert status == 503, body
    assert body["status"] == "degraded"
    assert "out of file descriptors" in body["reason"]
    check = body["checks"]["descriptors"]
    assert check["ok"] is False
    assert check["limit"] == LOW_NOFILE
    assert check["accept_errors"] >= 1
    assert check["last_accept_error"] == "EMFILE: Too many open files"
    assert 0 < check["open"] < LOW_NOFILE
    status, text = http("GET", f"http://127.0.0.1:{srv.metrics_port}/metrics")
    m = re.search(r'^aiosrv_accept_errors_total\{errno="EMFILE"\} (\d+)', text, re.M)
    assert m and int(m.group(1)) >= 1, text
    assert re.search(r"^aiosrv_healthy 0\.0$", text, re.M)
    # new connections are accepted again
    ws = ws_connect(srv.ws_url())
    try:
        assert_alive(ws)
    finally:
        ws.close()
    assert srv.count("cannot accept connections") == 1  # once per 10 s at most


# --------------------------------------------------------------------------- TLS


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_on_every_listener(serve: StartServer, tmp_path: Path, loop: str) -> None:
    cert, key = make_cert(tmp_path)
    srv = start(
        serve, loop, tmp_path,
        "--set", f"security.ssl_certfile={cert}", "--set", f"security.ssl_keyfile={key}",
        "--set", "security.handshake_timeout=0.5",
    )  # fmt: skip
    assert srv.ready is not None
    line = srv.ready.string
    assert f"websocket wss://127.0.0.1:{srv.ws_port}/ws/realtime" in line
    assert f"api https://127.0.0.1:{srv.api_port}" in line
    assert f"metrics https://127.0.0.1:{srv.metrics_port}/metrics" in line
    ctx = client_context(cert)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    ws = websocket.create_connection(
        f"wss://localhost:{srv.ws_port}/ws/realtime",
        timeout=5,
        class_=ClientWebSocket,
        sslopt={"ca_certs": str(cert)},
    )
    try:
        subscribe(ws, "prices")
        req = urllib.request.Request(
            f"https://localhost:{srv.api_port}/api/publish",
            data=json.dumps({"type": "prices", "payload": {"BTC": 1}}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with opener.open(req, timeout=5) as resp:
            assert resp.status == 202
        msg = recv_until(ws, lambda m: m.get("type") == "prices")
        assert msg["payload"] == {"BTC": 1}
    finally:
        ws.close()
    with opener.open(f"https://localhost:{srv.metrics_port}/metrics", timeout=5) as resp:
        assert resp.status == 200
    # plain HTTP on a TLS port is not answered as HTTP
    with socket.create_connection(("127.0.0.1", srv.api_port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert not read_all(sock).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            pass
    # a client that never starts its TLS handshake is closed at handshake_timeout
    with socket.create_connection(("127.0.0.1", srv.ws_port)) as sock:
        started = time.monotonic()
        try:
            assert read_all(sock) == b""
        except ConnectionResetError:
            pass
        took = time.monotonic() - started
    assert 0.45 <= took < 1.5, took
    srv.wait_for(r"TLS handshake refused \(handshake_timeout\) from 127\.0\.0\.1:\d+ after 0\.5 s")
    # a TLS client slow to send its request head: 408 (TLS handshake and head share the time)
    raw = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", srv.ws_port)), server_hostname="localhost"
    )
    with raw:
        raw.sendall(b"GET /ws/realtime HTTP/1.1\r\n")
        try:
            data = read_all(raw)
        except (ssl.SSLError, ConnectionResetError) as exc:
            raise AssertionError(f"no answer before the close: {exc!r}") from None
    assert status_of(data) == 408


@pytest.mark.parametrize(
    "setting, shown",
    [
        ("security.ssl_certfile={missing}", "cannot read {missing}"),
        ("security.ssl_certfile={cert}", "no PEM private key in {cert}"),
    ],
)
def test_a_bad_tls_file_stops_start_up_naming_it(tmp_path: Path, setting: str, shown: str) -> None:
    cert, _ = make_cert(tmp_path)
    names = {"missing": tmp_path / "missing.pem", "cert": cert}
    ws, api, metrics = free_ports(3)
    done = run_aiosrv(
        "serve", "--host", "127.0.0.1", "--port", str(ws), "--api-port", str(api),
        "--metrics-port", str(metrics), "--set", setting.format(**names),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "aiosrv: invalid configuration:" in done.stderr
    assert shown.format(**names) in done.stderr
    assert "security.ssl_certfile" in done.stderr
    assert "Traceback" not in done.stderr
