"""``aiosrv health``: the local server's /health, found through the same
configuration as ``serve`` (the container image's HEALTHCHECK runs it)."""

from __future__ import annotations

import signal
from pathlib import Path

import websocket

from tests.certs import make_cert

from .conftest import StartServer, clean_env, free_ports, run_aiosrv


def health(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    r = run_aiosrv("health", *args, cwd=tmp_path, env=clean_env(**env))
    return r.returncode, r.stdout + r.stderr


def test_healthy_server_found_by_its_configured_api_port(
    serve: StartServer, tmp_path: Path
) -> None:
    srv = serve()
    url = f"http://127.0.0.1:{srv.api_port}/health"
    # the port from the environment, from a flag, from the file: as serve reads them
    assert health(tmp_path, API_PORT=str(srv.api_port)) == (0, f"healthy: {url}\n")
    assert health(tmp_path, "--set", f"api.port={srv.api_port}")[0] == 0
    (tmp_path / "c.yaml").write_text(f"api:\n  host: 0.0.0.0\n  port: {srv.api_port}\n")
    assert health(tmp_path, "--config", "c.yaml") == (0, f"healthy: {url}\n")
    assert health(tmp_path, "--url", f"http://127.0.0.1:{srv.api_port}")[0] == 0


def test_draining_or_stopped_server_is_unhealthy(serve: StartServer, tmp_path: Path) -> None:
    srv = serve("--set", "shutdown.grace_period=3600", "--set", "shutdown.drain_window=3600")
    # a client keeps the drain going
    ws = websocket.create_connection(srv.ws_url(), timeout=5)
    try:
        srv.send(signal.SIGTERM)
        srv.wait_for("draining 1 connections|SIGTERM received")
        code, out = health(tmp_path, API_PORT=str(srv.api_port))
        assert code == 1
        assert out.startswith("unhealthy: no answer from"), out  # its listeners are closed
    finally:
        ws.close()
    srv.send(signal.SIGTERM)
    assert srv.wait_exit() == 0


def test_degraded_server_says_why(serve: StartServer, tmp_path: Path) -> None:
    dead = free_ports(1)[0]  # Redis "down": nothing listens there
    srv = serve("--broker", "redis", "--redis-host", "127.0.0.1", "--redis-port", str(dead))
    code, out = health(tmp_path, API_PORT=str(srv.api_port))
    assert code == 1
    assert out.startswith(f"degraded: http://127.0.0.1:{srv.api_port}/health answered 503: "), out
    assert "broker" in out


def test_nothing_listening_and_bad_configuration(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    code, out = health(tmp_path, API_PORT=str(port))
    assert code == 1 and out.startswith(f"unhealthy: no answer from http://127.0.0.1:{port}/")
    code, out = health(tmp_path, API_PORT="eighty")
    assert code == 2 and "api.port = eighty" in out
    code, out = health(tmp_path, API_PORT="0")
    assert code == 2 and "api.port is 0 (chosen at start): give --url" in out


def test_not_health_json(serve: StartServer, tmp_path: Path) -> None:
    srv = serve()
    # the metrics listener answers /health with 404 text, not /health's JSON
    code, out = health(tmp_path, "--url", f"http://127.0.0.1:{srv.metrics_port}")
    assert code == 1 and "not /health's JSON" in out


def test_tls_server_is_asked_over_https(serve: StartServer, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    srv = serve("--set", f"security.ssl_certfile={cert}", "--set", f"security.ssl_keyfile={key}")
    code, out = health(
        tmp_path, API_PORT=str(srv.api_port), SSL_CERTFILE=str(cert), SSL_KEYFILE=str(key)
    )
    assert (code, out) == (0, f"healthy: https://127.0.0.1:{srv.api_port}/health\n")
    # plain http to a TLS listener gets no /health
    assert health(tmp_path, "--url", f"http://127.0.0.1:{srv.api_port}")[0] == 1
