"""``aiosrv serve`` as operators run it: ports, environment, logs, signals.

Every test starts the real command (``python -m aiosrv serve``) in its own
temporary directory and talks to it over sockets with ``websocket-client``
and ``urllib``, as the operations guide's commands do.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websocket

from aiosrv.fanout import IMPLEMENTATION

from .conftest import (
    REPO,
    SIGNALS,
    Served,
    StartServer,
    assert_alive,
    clean_env,
    free_ports,
    http,
    local_peer,
    ping_frame,
    recv_close,
    recv_json,
    recv_until,
    request,
    run_aiosrv,
    subscribe,
    wait_for_file_line,
    wait_until,
    ws_connect,
)

#: Not a time limit: how long a server told to stop (with an hour of grace)
#: may take to exit before the test calls it stuck.
WATCHDOG = 10.0

LOG = "logs/websocket-server.log"

# --------------------------------------------------------------------------- ports and routes


def test_ready_line_names_the_three_urls_the_core_and_the_broker(serve: StartServer) -> None:
    ws, api, metrics = free_ports(3)
    srv = serve(
        "--host", "127.0.0.1", "--port", str(ws),
        "--api-host", "127.0.0.1", "--api-port", str(api),
        "--metrics-port", str(metrics),
        ports=False,
    )  # fmt: skip
    line = srv.ready.string if srv.ready else ""
    assert f"websocket ws://127.0.0.1:{ws}/ws/realtime" in line
    assert f"api http://127.0.0.1:{api}" in line
    assert f"metrics http://127.0.0.1:{metrics}/metrics" in line
    assert f"core={IMPLEMENTATION}" in line
    assert "broker=memory" in line
    assert "max_connections=10000" in line
    # a round trip later, still exactly one ready line
    assert http("GET", f"http://127.0.0.1:{api}/health")[0] == 200
    assert srv.count("aiosrv ready:") == 1
    status, body = http("GET", f"http://127.0.0.1:{api}/status")
    assert status == 200
    assert body["core"] == IMPLEMENTATION
    assert body["broker"] == "memory"


def test_pure_python_core_is_named_when_extensions_are_off(serve: StartServer) -> None:
    srv = serve(env={"AIOSRV_NO_EXTENSIONS": "1"})
    assert srv.ready is not None
    assert srv.ready["core"] == "pure-python"
    assert http("GET", srv.api("/status"))[1]["core"] == "pure-python"


@pytest.mark.parametrize("path", ["/ws/realtime", "/ws", "/"])
def test_each_websocket_path_subscribes_and_receives_an_http_publish(
    serve: StartServer, path: str
) -> None:
    srv = serve()
    ws = ws_connect(srv.ws_url(path))
    try:
        ack = subscribe(ws, "prices", rid="s1")
        assert ack["id"] == "s1"
        assert ack["payload"]["action"] == "subscribe"
        assert ack["payload"]["types"] == ["prices"]
        status, body = http(
            "POST",
            srv.api("/api/publish"),
            {"type": "prices", "payload": {"BTC": 42}, "key": "BTC"},
        )
        assert status == 202, body
        seq = body["seq"]
        assert isinstance(seq, int)
        msg = recv_until(ws, lambda m: m.get("type") == "prices")
        assert msg["seq"] == seq
        assert msg["payload"] == {"BTC": 42}
        assert msg["key"] == "BTC"
    finally:
        ws.close()


def test_metrics_port_serves_prometheus_text(serve: StartServer) -> None:
    srv = serve()
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "prices")
        status, text = http("GET", f"http://127.0.0.1:{srv.metrics_port}/metrics")
        assert status == 200
        assert isinstance(text, str)
        assert "# TYPE active_connections gauge" in text
        assert re.search(r"^active_connections 1(\.0)?$", text, re.M), text[:2000]
    finally:
        ws.close()


def test_api_and_metrics_are_not_served_on_the_websocket_port(serve: StartServer) -> None:
    srv = serve()
    on_ws = f"http://127.0.0.1:{srv.ws_port}"
    assert http("GET", on_ws + "/config")[0] == 404
    assert http("GET", on_ws + "/stats")[0] == 404
    assert http("GET", on_ws + "/metrics")[0] == 404
    assert http("POST", on_ws + "/api/publish", {"type": "t", "payload": {}})[0] in (404, 405)
    # nor the WebSocket endpoint or metrics on the API port, nor the API on metrics
    on_metrics = f"http://127.0.0.1:{srv.metrics_port}"
    assert http("GET", on_metrics + "/config")[0] == 404
    assert http("GET", srv.api("/metrics"))[0] == 404
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        ws_connect(f"ws://127.0.0.1:{srv.api_port}/ws/realtime")
    assert err.value.status_code == 404
    # while each is served where it belongs
    assert http("GET", srv.api("/config"))[0] == 200


def test_api_port_equal_to_websocket_port_serves_everything_on_one_port(
    serve: StartServer,
) -> None:
    (port,) = free_ports(1)
    srv = serve(
        "--host", "127.0.0.1", "--port", str(port),
        "--api-host", "127.0.0.1", "--api-port", str(port), "--metrics-port", str(port),
        ports=False,
    )  # fmt: skip
    assert srv.ws_port == srv.api_port == srv.metrics_port == port
    base = f"http://127.0.0.1:{port}"
    assert http("GET", base + "/config")[1]["api"]["port"] == port
    assert http("GET", base + "/metrics")[0] == 200
    ws = ws_connect(f"ws://127.0.0.1:{port}/ws")
    try:
        subscribe(ws, "news")
        status, body = http("POST", base + "/api/publish", {"type": "news", "payload": {"n": 1}})
        assert status == 202
        assert recv_until(ws, lambda m: m.get("type") == "news")["seq"] == body["seq"]
    finally:
        ws.close()


def test_api_port_equal_to_websocket_port_with_separate_metrics(serve: StartServer) -> None:
    port, metrics = free_ports(2)
    srv = serve(
        "--host", "127.0.0.1", "--port", str(port),
        "--api-host", "127.0.0.1", "--api-port", str(port), "--metrics-port", str(metrics),
        ports=False,
    )  # fmt: skip
    assert (srv.ws_port, srv.api_port, srv.metrics_port) == (port, port, metrics)
    assert http("GET", f"http://127.0.0.1:{port}/health")[0] == 200
    assert http("GET", f"http://127.0.0.1:{port}/metrics")[0] == 404
    assert http("GET", f"http://127.0.0.1:{metrics}/metrics")[0] == 200


def test_port_zero_gives_each_listener_its_own_free_port(serve: StartServer) -> None:
    srv = serve(
        "--host", "127.0.0.1", "--port", "0",
        "--api-host", "127.0.0.1", "--api-port", "0", "--metrics-port", "0",
        ports=False,
    )  # fmt: skip
    ports = {srv.ws_port, srv.api_port, srv.metrics_port}
    assert len(ports) == 3 and 0 not in ports
    assert http("GET", srv.api("/health"))[0] == 200
    assert http("GET", f"http://127.0.0.1:{srv.ws_port}/health")[0] == 404
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "x")
    finally:
        ws.close()


@pytest.mark.parametrize("part", ["ws", "api", "metrics"])
def test_port_in_use_exits_non_zero_naming_host_and_port(tmp_path: Path, part: str) -> None:
    ws, api, metrics = free_ports(3)
    busy = {"ws": ws, "api": api, "metrics": metrics}[part]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        result = run_aiosrv(
            "serve", "--host", "127.0.0.1", "--port", str(ws),
            "--api-host", "127.0.0.1", "--api-port", str(api), "--metrics-port", str(metrics),
            cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{busy} for {part}" in result.stderr
    assert "aiosrv ready:" not in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- configuration layers


def test_environment_variables_take_effect(serve: StartServer) -> None:
    ws, api, metrics = free_ports(3)
    srv = serve(
        ports=False,
        env={
            "WEBSOCKET_HOST": "127.0.0.1",
            "WEBSOCKET_PORT": str(ws),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(api),
            "METRICS_PORT": str(metrics),
            "MAX_CONNECTIONS": "77",
            "MAX_SUBSCRIPTIONS_PER_CLIENT": "3",
            "HEARTBEAT_INTERVAL": "5s",
            "LOG_LEVEL": "debug",
        },
    )
    assert (srv.ws_port, srv.api_port, srv.metrics_port) == (ws, api, metrics)
    assert srv.ready is not None and srv.ready["max"] == "77"
    cfg = srv.config()
    assert cfg["websocket"]["port"] == ws
    assert cfg["api"]["port"] == api
    assert cfg["monitoring"]["metrics_port"] == metrics
    assert cfg["websocket"]["max_connections"] == 77
    assert cfg["websocket"]["max_subscriptions_per_client"] == 3
    assert cfg["logging"]["level"] == "DEBUG"
    # the guide's `curl .../config | jq '.heartbeat'`
    assert cfg["heartbeat"] == {"interval": 5.0, "timeout": 60.0}
    assert cfg["source_path"] is None


def test_max_connections_from_the_environment_is_enforced(serve: StartServer) -> None:
    srv = serve(env={"MAX_CONNECTIONS": "1"})
    first = ws_connect(srv.ws_url())
    try:
        subscribe(first, "a")
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            ws_connect(srv.ws_url())
        assert err.value.status_code == 503
        stats = http("GET", srv.api("/stats"))[1]
        assert stats["connections"]["active_connections"] == 1
        assert stats["connections"]["max_connections"] == 1
        assert stats["connections"]["rejected"] == {"max_connections": 1}
        assert_alive(first)
    finally:
        first.close()


def test_log_level_warning_hides_info_lines_but_not_the_ready_line(serve: StartServer) -> None:
    srv = serve(env={"LOG_LEVEL": "warning", "MAX_CONNECTIONS": "1"})
    assert srv.count("aiosrv ready:") == 1
    first = ws_connect(srv.ws_url())
    try:
        subscribe(first, "a")
        with pytest.raises(websocket.WebSocketBadStatusException):
            ws_connect(srv.ws_url())
        # the refusal is a WARNING logged after the first client's INFO line would be
        srv.wait_for(r"WARNING aiosrv\.server: performance: connection refused")
        assert " connected from " not in srv.stderr
        assert "INFO" not in srv.stderr.replace(srv.ready.string if srv.ready else "", "")
    finally:
        first.close()


def test_flags_override_environment_variables(serve: StartServer) -> None:
    env_ws, flag_ws, api, metrics = free_ports(4)
    srv = serve(
        "--host", "127.0.0.1", "--port", str(flag_ws),
        "--api-host", "127.0.0.1", "--api-port", str(api), "--metrics-port", str(metrics),
        "--max-connections", "9", "--log-level", "error",
        ports=False,
        env={
            "WEBSOCKET_HOST": "0.0.0.0",
            "WEBSOCKET_PORT": str(env_ws),
            "MAX_CONNECTIONS": "7",
            "LOG_LEVEL": "DEBUG",
        },
    )  # fmt: skip
    assert srv.ws_port == flag_ws
    assert srv.ready is not None and srv.ready["ws_host"] == "127.0.0.1"
    cfg = srv.config()
    assert cfg["websocket"]["host"] == "127.0.0.1"
    assert cfg["websocket"]["port"] == flag_ws
    assert cfg["websocket"]["max_connections"] == 9
    assert cfg["logging"]["level"] == "ERROR"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", env_ws), timeout=1):
        pass


def test_environment_overrides_the_yaml_file_and_flags_override_both(
    serve: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "site.yaml").write_text(
        "environment: staging\n"
        "websocket:\n"
        "  max_connections: 50\n"
        "  max_subscriptions_per_client: 11\n"
        "history:\n"
        "  size: 5\n"
    )
    srv = serve(
        "--config", "site.yaml", "--max-subscriptions", "33",
        env={"MAX_CONNECTIONS": "60", "MAX_SUBSCRIPTIONS_PER_CLIENT": "22", "HISTORY_SIZE": ""},
    )  # fmt: skip
    cfg = srv.config()
    assert cfg["environment"] == "staging"  # file only
    assert cfg["history"]["size"] == 5  # an empty variable counts as unset
    assert cfg["websocket"]["max_connections"] == 60  # env over file
    assert cfg["websocket"]["max_subscriptions_per_client"] == 33  # flag over env and file
    assert cfg["source_path"] == "site.yaml"
    srv.wait_for(r"starting aiosrv on \w+, config site\.yaml")


def test_config_file_from_aiosrv_config_and_from_the_working_directory(
    serve: StartServer, tmp_path: Path
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deployment.yaml").write_text("websocket:\n  max_connections: 42\n")
    (tmp_path / "other.yaml").write_text("websocket:\n  max_connections: 43\n")
    by_cwd = serve()
    assert by_cwd.config()["websocket"]["max_connections"] == 42
    assert by_cwd.config()["source_path"] == "config/deployment.yaml"
    by_env = serve(env={"AIOSRV_CONFIG": str(tmp_path / "other.yaml")})
    assert by_env.config()["websocket"]["max_connections"] == 43
    by_flag = serve("--config", "other.yaml", env={"AIOSRV_CONFIG": "missing.yaml"})
    assert by_flag.config()["websocket"]["max_connections"] == 43


def test_the_shipped_deployment_yaml_runs_as_is(serve: StartServer, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "deployment.yaml", tmp_path / "config" / "deployment.yaml")
    srv = serve()
    srv.wait_for(r"config config/deployment\.yaml")
    cfg = srv.config()
    assert cfg["logging"]["file"] == "logs/websocket-server.log"
    assert cfg["websocket"]["max_connections"] == 10000
    ws = ws_connect(srv.ws_url())
    try:
        peer = local_peer(ws)
        wait_for_file_line(tmp_path / LOG, rf"Client \w+ connected from {re.escape(peer)}")
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WEBSOCKET_PORT": "eighty"}, ["websocket.port", "env WEBSOCKET_PORT", "integer"]),
        ({"MAX_CONNECTIONS": "0"}, ["websocket.max_connections", "env MAX_CONNECTIONS"]),
        ({"LOG_LEVEL": "LOUD"}, ["logging.level", "env LOG_LEVEL", "DEBUG, INFO"]),
        (
            {"API_PORT": "70000", "HEARTBEAT_TIMEOUT": "1s"},
            ["api.port", "env API_PORT", "websocket.heartbeat_timeout", "env HEARTBEAT_TIMEOUT"],
        ),
    ],
)
def test_a_bad_environment_value_exits_2_naming_key_and_variable(
    tmp_path: Path, env: dict[str, str], expected: list[str]
) -> None:
    ws, api, metrics = free_ports(3)
    result = run_aiosrv(
        "serve", "--host", "127.0.0.1", "--port", str(ws), "--api-host", "127.0.0.1",
        "--api-port", str(api), "--metrics-port", str(metrics),
        cwd=tmp_path, env=clean_env(**env),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    for text in expected:
        assert text in result.stderr
    assert "aiosrv ready:" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_a_log_file_that_cannot_be_opened_exits_2_saying_why(tmp_path: Path, where: str) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "plain").write_text("not a directory\n")
    path = "logs" if where == "a directory" else "plain/websocket-server.log"
    result = run_aiosrv(
        "serve", "--port", "0", "--api-port", "0", "--metrics-port", "0",
        cwd=tmp_path, env=clean_env(LOG_FILE=path),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    reason = "Is a directory" if where == "a directory" else "Not a directory (plain)"
    assert f"aiosrv: cannot open the log file {path} (logging.file / LOG_FILE): {reason}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "aiosrv ready:" not in result.stderr


def test_a_bad_flag_value_exits_2(tmp_path: Path) -> None:
    result = run_aiosrv("serve", "--port", "http", "--set", "websocket.prot=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "websocket.port = http (from override): must be an integer" in result.stderr
    assert "did you mean 'websocket.port'" in result.stderr
    missing = run_aiosrv("serve", "--config", "nowhere.yaml", cwd=tmp_path)
    assert missing.returncode == 2
    assert "file nowhere.yaml: file not found" in missing.stderr
    malformed = run_aiosrv("serve", "--set", "history.size", cwd=tmp_path)
    assert malformed.returncode == 2
    assert "--set needs KEY=VALUE" in malformed.stderr


def test_metrics_listener_can_be_disabled(serve: StartServer) -> None:
    _, _, metrics = free_ports(3)
    srv = serve("--metrics-port", str(metrics), "--set", "monitoring.enabled=false")
    assert srv.ready is not None
    assert srv.ready["metrics"] is None
    assert "metrics" not in srv.ready.string
    assert srv.config()["monitoring"]["enabled"] is False
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", metrics), timeout=1):
        pass


# --------------------------------------------------------------------------- logs


def test_log_file_records_connects_and_disconnects_for_the_guides_greps(
    serve: StartServer, tmp_path: Path
) -> None:
    srv = serve("--log-file", LOG)
    log = tmp_path / LOG
    ws = ws_connect(srv.ws_url("/ws"))
    peer = local_peer(ws)
    m = wait_for_file_line(log, rf"Client (\w+) connected from {re.escape(peer)} \(/ws\)")
    client_id = m[1]
    ws.close(status=1000, reason=b"bye")
    wait_for_file_line(
        log,
        rf"Client {client_id} disconnected from {re.escape(peer)}: code 1000, client closed: bye",
    )
    # the same lines go to standard error
    srv.wait_for(rf"Client {client_id} connected from {re.escape(peer)}")
    # the operations guide's commands, verbatim
    grep_conn = subprocess.run(
        ["grep", "Client.*connected", LOG], cwd=tmp_path, capture_output=True, text=True
    )
    grep_disc = subprocess.run(
        ["grep", "Client.*disconnected", LOG], cwd=tmp_path, capture_output=True, text=True
    )
    assert grep_conn.returncode == 0 and grep_disc.returncode == 0
    assert f"Client {client_id} connected from {peer}" in grep_conn.stdout
    disc_lines = grep_disc.stdout.splitlines()
    assert len(disc_lines) == 1
    assert f"Client {client_id} disconnected from {peer}: code 1000" in disc_lines[0]
    assert all(" INFO aiosrv.connection: " in line for line in grep_conn.stdout.splitlines())


def test_log_file_from_the_environment(serve: StartServer, tmp_path: Path) -> None:
    srv = serve(env={"LOG_FILE": "var/aiosrv.log"})
    assert srv.config()["logging"]["file"] == "var/aiosrv.log"
    wait_for_file_line(tmp_path / "var" / "aiosrv.log", r"aiosrv ready: ")
    ws = ws_connect(srv.ws_url())
    try:
        peer = local_peer(ws)
        wait_for_file_line(tmp_path / "var" / "aiosrv.log", rf"connected from {re.escape(peer)}")
    finally:
        ws.close()


def test_server_side_close_code_and_reason_are_logged(serve: StartServer, tmp_path: Path) -> None:
    srv = serve("--log-file", LOG, "--set", "websocket.max_message_size=125")
    ws = ws_connect(srv.ws_url())
    peer = local_peer(ws)
    try:
        ws.send("x" * 200)
        code, _ = recv_close(ws)
        assert code == 1009
    finally:
        ws.close()
    m = wait_for_file_line(
        tmp_path / LOG, rf"Client \w+ disconnected from {re.escape(peer)}: code 1009, (.+), after"
    )
    assert m[1]  # a reason is given


def _rotate_and_connect(srv: Served, log: Path, *, usr1: bool) -> None:
    first = ws_connect(srv.ws_url())
    first_peer = local_peer(first)
    wait_for_file_line(log, rf"Client \w+ connected from {re.escape(first_peer)}")
    rotated = log.with_name(log.name + ".1")
    os.rename(log, rotated)  # what logrotate does before postrotate
    if usr1:
        srv.send(signal.SIGUSR1)
        wait_for_file_line(log, r"memory report: rss=")
    second = ws_connect(srv.ws_url())
    second_peer = local_peer(second)
    try:
        wait_for_file_line(log, rf"Client \w+ connected from {re.escape(second_peer)}")
        old = rotated.read_text()
        assert first_peer in old
        assert second_peer not in old
        assert f"connected from {first_peer}" not in log.read_text()
        assert_alive(first)
    finally:
        first.close()
        second.close()
    # the first client's disconnect, after the rotation, goes to the new file too
    wait_for_file_line(log, rf"Client \w+ disconnected from {re.escape(first_peer)}")


def test_log_rotation_without_a_signal_writes_a_new_file(
    serve: StartServer, tmp_path: Path
) -> None:
    srv = serve("--log-file", LOG)
    _rotate_and_connect(srv, tmp_path / LOG, usr1=False)
    assert "memory report" not in (tmp_path / LOG).read_text()


def test_log_rotation_with_sigusr1_postrotate(serve: StartServer, tmp_path: Path) -> None:
    srv = serve("--log-file", LOG)
    _rotate_and_connect(srv, tmp_path / LOG, usr1=True)
    assert "memory report" not in (tmp_path / (LOG + ".1")).read_text()


# --------------------------------------------------------------------------- SIGHUP / reload


def _reload_config(srv: Served) -> tuple[int, Any]:
    return http("POST", srv.api("/admin/reload-config"))


def test_sighup_reloads_the_file_and_keeps_clients_connected(
    serve: StartServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "app.yaml"
    cfg.write_text("websocket:\n  max_subscriptions_per_client: 5\n")
    srv = serve("--config", "app.yaml")
    assert srv.config()["websocket"]["max_subscriptions_per_client"] == 5
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "a", "b")
        cfg.write_text("websocket:\n  max_subscriptions_per_client: 2\n")
        srv.send(signal.SIGHUP)
        wait_until(
            lambda: srv.config()["websocket"]["max_subscriptions_per_client"] == 2,
            what="the reloaded value in /config",
        )
        srv.wait_for(r"config reload: websocket\.max_subscriptions_per_client changed from 5 to 2")
        assert_alive(ws)
        # the new limit applies to the connected client
        reply = request(ws, "subscribe", "s3", types=["c"])
        assert reply["type"] == "error"
        assert reply["payload"]["code"] == "too_many_subscriptions"
        assert "limit is 2" in reply["payload"]["message"]
        # and it still receives what is published
        status, body = http("POST", srv.api("/api/publish"), {"type": "a", "payload": [1]})
        assert status == 202
        assert recv_until(ws, lambda m: m.get("type") == "a")["seq"] == body["seq"]
    finally:
        ws.close()


def test_sighup_with_an_invalid_file_keeps_the_running_config(
    serve: StartServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "app.yaml"
    cfg.write_text("websocket:\n  max_subscriptions_per_client: 5\n")
    srv = serve("--config", "app.yaml")
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "a")
        cfg.write_text("websocket:\n  max_subscriptions_per_client: 0\n  prot: 1\n")
        mark = srv.mark()
        srv.send(signal.SIGHUP)
        line = srv.wait_for(r"ERROR .*config reload failed, keeping the running config", start=mark)
        assert "websocket.max_subscriptions_per_client = 0 (from file app.yaml)" in line.string
        assert "unknown key 'websocket.prot' (did you mean 'websocket.port'?)" in line.string
        assert srv.config()["websocket"]["max_subscriptions_per_client"] == 5
        assert_alive(ws)
        # a YAML syntax error: the line is named
        cfg.write_text("websocket:\n  max_subscriptions_per_client: 7\n  - oops\n")
        mark = srv.mark()
        srv.send(signal.SIGHUP)
        line = srv.wait_for(r"config reload failed", start=mark)
        assert "invalid YAML at line 3" in line.string
        # a fixed file is applied by the next SIGHUP
        cfg.write_text("websocket:\n  max_subscriptions_per_client: 7\n")
        srv.send(signal.SIGHUP)
        wait_until(lambda: srv.config()["websocket"]["max_subscriptions_per_client"] == 7)
        assert_alive(ws, "alive-2")
        stats = http("GET", srv.api("/stats"))[1]
        assert stats["connections"]["active_connections"] == 1
    finally:
        ws.close()


def test_admin_reload_config_endpoint_behaves_like_sighup(
    serve: StartServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "app.yaml"
    cfg.write_text("websocket:\n  max_subscriptions_per_client: 5\n")
    srv = serve("--config", "app.yaml")
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "a")
        cfg.write_text("websocket:\n  max_subscriptions_per_client: 9\n  paths: ['/feed']\n")
        status, body = _reload_config(srv)
        assert status == 200, body
        assert body["ok"] is True
        assert body["source"] == "app.yaml"
        assert body["applied"] == [
            {"key": "websocket.max_subscriptions_per_client", "old": 5, "new": 9}
        ]
        assert body["needs_restart"] == [
            {"key": "websocket.paths", "old": ["/ws/realtime", "/ws", "/"], "new": ["/feed"]}
        ]
        assert srv.config()["websocket"]["max_subscriptions_per_client"] == 9
        assert srv.config()["websocket"]["paths"] == ["/ws/realtime", "/ws", "/"]
        srv.wait_for(r"config reload requested over HTTP from 127\.0\.0\.1")
        # invalid: 400, the problems with their key paths, nothing applied
        cfg.write_text("websocket:\n  max_subscriptions_per_client: -1\n")
        status, body = _reload_config(srv)
        assert status == 400
        assert body["ok"] is False
        assert body["applied"] == []
        assert any(
            e.startswith("websocket.max_subscriptions_per_client = -1") for e in body["errors"]
        ), body
        assert srv.config()["websocket"]["max_subscriptions_per_client"] == 9
        assert_alive(ws)
    finally:
        ws.close()


def test_reload_keeps_flags_and_environment_above_the_file(
    serve: StartServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "app.yaml"
    cfg.write_text("websocket:\n  max_connections: 50\nhistory:\n  size: 10\n")
    srv = serve("--config", "app.yaml", "--max-connections", "9", env={"HISTORY_SIZE": "20"})
    cfg.write_text("websocket:\n  max_connections: 60\nhistory:\n  size: 11\nenvironment: x\n")
    status, body = _reload_config(srv)
    assert status == 200
    assert body["applied"] == [{"key": "environment", "old": "development", "new": "x"}]
    after = srv.config()
    assert after["websocket"]["max_connections"] == 9
    assert after["history"]["size"] == 20


def test_sighup_applies_a_new_log_level(serve: StartServer, tmp_path: Path) -> None:
    cfg = tmp_path / "app.yaml"
    cfg.write_text("logging:\n  level: INFO\n")
    srv = serve("--config", "app.yaml")
    first = ws_connect(srv.ws_url())
    second = None
    try:
        srv.wait_for(rf"INFO aiosrv\.connection: Client \w+ connected from {local_peer(first)}")
        cfg.write_text("logging:\n  level: warning\n")
        srv.send(signal.SIGHUP)
        wait_until(lambda: srv.config()["logging"]["level"] == "WARNING")
        second = ws_connect(srv.ws_url())
        peer = local_peer(second)
        subscribe(second, "a")
        # a restart-only change is reported at WARNING, after the connect would be
        cfg.write_text("logging:\n  level: warning\nbroker:\n  engine: redis\n")
        srv.send(signal.SIGHUP)
        srv.wait_for(r"WARNING .*config reload: broker\.engine changed .* needs a restart")
        assert f"connected from {peer}" not in srv.stderr
        assert srv.config()["broker"]["engine"] == "memory"
    finally:
        first.close()
        if second is not None:
            second.close()


# --------------------------------------------------------------------------- SIGUSR1


def test_sigusr1_logs_a_memory_report_without_disconnecting(
    serve: StartServer, tmp_path: Path
) -> None:
    srv = serve("--log-file", LOG)
    ws = ws_connect(srv.ws_url())
    peer = local_peer(ws)
    try:
        subscribe(ws, "a", "b", "c")
        client_id = srv.wait_for(rf"Client (\w+) connected from {re.escape(peer)}")[1]
        mark = srv.mark()
        srv.send(signal.SIGUSR1)
        head = srv.wait_for(r"memory report: rss=[\d.]+ MiB connections=(\d+) ", start=mark)
        assert head[1] == "1"
        assert "pending_send_bytes=" in head.string and "queue_depth=" in head.string
        conn = srv.wait_for(rf"memory report: connection {client_id} peer=(\S+) ", start=mark)
        assert conn[1] == peer
        assert "subscriptions=3" in conn.string
        srv.wait_for(r"memory report: gc objects=\d+", start=mark)
        srv.wait_for(r"memory report: tracemalloc=off ", start=mark)
        # the log file has the report too, every line prefixed
        text = (tmp_path / LOG).read_text()
        assert f"memory report: connection {client_id} peer={peer}" in text
        assert_alive(ws)
        # a report never starts tracemalloc: the second one finds it off too
        mark = srv.mark()
        srv.send(signal.SIGUSR1)
        srv.wait_for(r"memory report: tracemalloc=off ", start=mark)
        assert "memory report: allocation site" not in srv.stderr
        assert_alive(ws, "alive-2")
        stats = http("GET", srv.api("/stats"))[1]
        assert stats["connections"]["active_connections"] == 1
        assert "disconnected" not in srv.stderr
    finally:
        ws.close()


# --------------------------------------------------------------------------- SIGTERM / SIGINT


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_stop_signal_closes_clients_with_1001_and_exits_0(
    serve: StartServer, tmp_path: Path, name: str
) -> None:
    # an hour of grace: a client that answers the close must not hold it
    srv = serve("--set", "shutdown.grace_period=3600", "--log-file", LOG)
    ws = ws_connect(srv.ws_url())
    peer = local_peer(ws)
    try:
        subscribe(ws, "a")
        srv.send(SIGNALS[name])
        code, reason = recv_close(ws)
        assert code == 1001
        assert reason == "server shutting down"
        rc = srv.wait_exit(timeout=WATCHDOG)
    finally:
        ws.close()
    assert rc == 0
    assert f"{name} received: draining and shutting down" in srv.stderr
    assert srv.stderr.rstrip().endswith("aiosrv stopped")
    assert "Traceback" not in srv.stderr
    text = (tmp_path / LOG).read_text()
    assert re.search(rf"Client \w+ disconnected from {re.escape(peer)}: code 1001", text)


def test_shutdown_with_an_unresponsive_client_exits_0_without_waiting_for_it(
    serve: StartServer,
) -> None:
    # an hour of grace: the close frame is written, its answer is not awaited
    srv = serve("--set", "shutdown.grace_period=3600")
    # a client that completes the upgrade and then never answers anything
    raw = socket.create_connection(("127.0.0.1", srv.ws_port), timeout=5)
    try:
        raw.sendall(
            b"GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 101")
        wait_until(lambda: http("GET", srv.api("/stats"))[1]["connections"]["active_connections"])
        srv.send(signal.SIGTERM)
        rc = srv.wait_exit(timeout=WATCHDOG)
    finally:
        raw.close()
    assert rc == 0
    assert re.search(r"Client \w+ disconnected from 127\.0\.0\.1:\d+: code 1001", srv.stderr)


def test_sigterm_with_no_clients_exits_promptly(serve: StartServer) -> None:
    srv = serve("--set", "shutdown.grace_period=3600")
    srv.send(signal.SIGTERM)
    assert srv.wait_exit(timeout=WATCHDOG) == 0
    # the listeners are gone
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", srv.api_port), timeout=1):
        pass


def test_drain_window_spreads_closes_and_a_second_sigterm_ends_it(serve: StartServer) -> None:
    # an hour's window: the first SIGTERM starts spreading the closes over it,
    # the second closes everyone still connected at once
    srv = serve("--set", "shutdown.grace_period=3600", "--set", "shutdown.drain_window=3600")
    clients = [ws_connect(srv.ws_url()) for _ in range(3)]
    try:
        for ws in clients:
            subscribe(ws, "a")
        srv.send(signal.SIGTERM)
        wait_until(lambda: "draining 3 connections over 3.6e+03 s" in srv.stderr)
        assert srv.proc.poll() is None  # still draining
        srv.send(signal.SIGTERM)
        codes = [recv_close(ws)[0] for ws in clients]
        rc = srv.wait_exit(timeout=WATCHDOG)
    finally:
        for ws in clients:
            ws.close()
    assert codes == [1001, 1001, 1001]
    assert rc == 0
    assert "SIGTERM received again: not waiting for the drain window" in srv.stderr
    # (each close is due at a random moment of its 20-minute slice: one may
    # have come due already, with odds of about 1 in 1,000)
    assert re.search(r"closing the [123] connections still open at once", srv.stderr)


# --------------------------------------------------------------------------- process title


def test_process_title_starts_with_websocket_server(serve: StartServer) -> None:
    srv = serve()
    cmdline = Path(f"/proc/{srv.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert cmdline.startswith("websocket-server ")
    assert f"ws:{srv.ws_port} api:{srv.api_port}" in cmdline
    assert f"--port {srv.ws_port}" in cmdline
    if shutil.which("pgrep"):
        found = subprocess.run(
            ["pgrep", "-f", "websocket-server"], capture_output=True, text=True, check=False
        )
        assert str(srv.pid) in found.stdout.split()
        # anchored at the start of the title: only aiosrv servers, not `tail -f ...log`
        anchored = subprocess.run(
            ["pgrep", "-f", "^websocket-server "], capture_output=True, text=True, check=False
        )
        assert str(srv.pid) in anchored.stdout.split()


def test_process_title_on_port_zero_shows_the_bound_ports(serve: StartServer) -> None:
    srv = serve(
        "--host", "127.0.0.1", "--port", "0",
        "--api-host", "127.0.0.1", "--api-port", "0", "--metrics-port", "0",
        ports=False,
    )  # fmt: skip

    def title() -> str:
        return Path(f"/proc/{srv.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    wait_until(lambda: f"ws:{srv.ws_port} api:{srv.api_port}" in title(), what=title)


def test_builtin_sources_publish_status_to_subscribers(serve: StartServer) -> None:
    """The built-in sources publish ``status`` every second to subscribers."""
    srv = serve("--set", "sources.interval=0.1")
    ws = ws_connect(srv.ws_url())
    try:
        subscribe(ws, "status")
        msg = recv_json(ws)
        assert msg["type"] == "status"
        assert msg["payload"]["core"] == IMPLEMENTATION
        assert msg["payload"]["connections"] == 1
    finally:
        ws.close()


@pytest.mark.parametrize(
    "core",
    [
        "default",
        "pure-python",
    ],
)
def test_a_client_ping_frame_gets_its_pong(serve: StartServer, core: str) -> None:
    """RFC 6455 ping frames (sent by many client libraries as keepalive) get a pong.

    Regression: aiohttp hands the ping payload over as a ``bytearray``, which
    the compiled ``encode_frame`` once refused, closing the client with 1011.
    """
    env = {"AIOSRV_NO_EXTENSIONS": "1"} if core == "pure-python" else {}
    srv = serve(env=env)
    ws = ws_connect(srv.ws_url())
    try:
        ping_frame(ws, b"abc")
        assert_alive(ws)
    finally:
        ws.close()
