"""Hot reload (``POST /admin/reload-config``) of a server started from a YAML file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from aiosrv import SERVER, create_app, load_config
from tests.conftest import Running

from .conftest import RawConnect, WsConnect, get_json, publish

BASE = {
    "environment": "test",
    "websocket": {
        "port": 8765,
        "max_subscriptions_per_client": 2,
        "heartbeat_interval": 30,
        "heartbeat_timeout": 60,
    },
    "sources": {"enabled": False},
}


def write_yaml(path: Path, doc: dict[str, Any]) -> None:
    lines: list[str] = []
    for name, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"{name}:")
            lines.extend(f"  {k}: {_scalar(v)}" for k, v in body.items())
        else:
            lines.append(f"{name}: {_scalar(body)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def with_changes(**sections: dict[str, Any]) -> dict[str, Any]:
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for name, changes in sections.items():
        doc.setdefault(name, {}).update(changes)
    return doc


StartFromFile = Callable[[Path], Awaitable[Running]]


@pytest.fixture
async def start_from_file() -> AsyncIterator[StartFromFile]:
    """Start ``create_app(load_config(path))`` on a free loopback port.

    Request it before ``ws_client``/``http`` so clients close before the server.
    """
    started: list[TestServer] = []

    async def start(path: Path) -> Running:
        app = create_app(load_config(str(path), env={}))
        ts = TestServer(app, host="127.0.0.1", port=0)
        await ts.start_server()
        started.append(ts)
        return Running(ts, app[SERVER])

    yield start
    for ts in reversed(started):
        await ts.close()


async def reload(
    http: aiohttp.ClientSession, running: Running, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with http.post(running.http("/admin/reload-config"), headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "aiosrv.yaml"
    write_yaml(path, BASE)
    return path


async def test_live_change_applies_to_existing_connection(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    server = running.server
    assert server.config.source_path == str(config_path)
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    reply = await c.request("subscribe", {"types": ["c"]})
    assert reply["payload"]["code"] == "too_many_subscriptions"

    write_yaml(
        config_path,
        with_changes(websocket={"max_subscriptions_per_client": 4, "heartbeat_interval": 10}),
    )
    status, body = await reload(http, running)
    assert status == 200
    assert body["ok"] is True
    assert body["source"] == str(config_path)
    assert body["applied"] == [
        {"key": "websocket.max_subscriptions_per_client", "old": 2, "new": 4},
        {"key": "websocket.heartbeat_interval", "old": 30.0, "new": 10.0},
    ]
    assert body["needs_restart"] == []
    assert body["errors"] == []
    assert server.stats.reloads_ok == 1

    # the same connection, still open, now gets the higher limit
    ack = await c.subscribe(["c", "d"])
    assert ack["payload"]["types"] == ["a", "b", "c", "d"]
    reply = await c.request("subscribe", {"types": ["e"]})
    assert reply["payload"]["code"] == "too_many_subscriptions"
    await c.ping()
    assert len(server.connections) == 1

    status, cfg = await get_json(http, running, "/config")
    assert cfg["heartbeat"] == {"interval": 10.0, "timeout": 60.0}
    assert cfg["websocket"]["max_subscriptions_per_client"] == 4

    # reloading an unchanged file changes nothing
    status, body = await reload(http, running)
    assert (status, body["applied"], body["needs_restart"]) == (200, [], [])


async def test_lowering_the_limit_keeps_held_subscriptions(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    c = await ws_client(running)
    await c.subscribe(["a", "b"])
    write_yaml(config_path, with_changes(websocket={"max_subscriptions_per_client": 1}))
    status, body = await reload(http, running)
    assert status == 200 and body["applied"][0]["new"] == 1
    reply = await c.request("subscribe", {"types": ["c"]})
    assert reply["payload"]["code"] == "too_many_subscriptions"
    # what it held is still delivered
    await publish(http, running, {"type": "b", "payload": "still here"})
    assert (await c.recv())["payload"] == "still here"


async def test_restart_only_change_is_reported_not_applied(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    c = await ws_client(running)
    await c.ping()
    write_yaml(
        config_path,
        with_changes(websocket={"port": 9999, "max_connections": 500}, broker={"engine": "redis"}),
    )
    status, body = await reload(http, running)
    assert status == 200
    assert body["ok"] is True
    assert body["applied"] == [{"key": "websocket.max_connections", "old": 10000, "new": 500}]
    assert body["needs_restart"] == [
        {"key": "websocket.port", "old": 8765, "new": 9999},
        {"key": "broker.engine", "old": "memory", "new": "redis"},
    ]
    cfg = running.server.config
    assert cfg.websocket.port == 8765
    assert cfg.broker.engine == "memory"
    assert cfg.websocket.max_connections == 500
    await c.ping()
    c2 = await ws_client(running)
    await c2.ping()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "websocket:\n  max_subscriptions_per_client: -1\n  heartbeat_timeout: 60\n",
            "websocket.max_subscriptions_per_client",
        ),
        ("websocket:\n  max_subscriptons_per_client: 5\n", "websocket.max_subscriptons_per_client"),
        ("websocket:\n  heartbeat_interval: 90\n", "websocket.heartbeat_timeout"),
        ("websocket: [1, 2\n", "invalid YAML at line"),
    ],
)
async def test_invalid_file_keeps_old_config_and_connections(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
    text: str,
    expected: str,
) -> None:
    running = await start_from_file(config_path)
    server = running.server
    before = server.config
    c = await ws_client(running)
    await c.subscribe(["a"])
    config_path.write_text(text, encoding="utf-8")
    status, body = await reload(http, running)
    assert status == 400
    assert body["ok"] is False
    assert body["applied"] == [] and body["needs_restart"] == []
    assert body["errors"], body
    assert any(expected in e for e in body["errors"]), body["errors"]
    assert server.config is before
    assert server.stats.reloads_failed == 1
    # the connection is intact and the old limit (2) still holds
    await c.ping()
    ack = await c.subscribe(["b"])
    assert ack["payload"]["types"] == ["a", "b"]
    reply = await c.request("subscribe", {"types": ["x"]})
    assert reply["payload"]["code"] == "too_many_subscriptions"


async def test_invalid_value_error_names_key_path_and_value(
    start_from_file: StartFromFile, config_path: Path, http: aiohttp.ClientSession
) -> None:
    running = await start_from_file(config_path)
    write_yaml(config_path, with_changes(websocket={"max_connections": 0}))
    status, body = await reload(http, running)
    assert status == 400
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert error.startswith("websocket.max_connections = 0")
    assert str(config_path) in error
    assert "at least 1" in error


async def test_missing_file_on_reload(
    start_from_file: StartFromFile, config_path: Path, http: aiohttp.ClientSession
) -> None:
    running = await start_from_file(config_path)
    config_path.unlink()
    status, body = await reload(http, running)
    assert status == 400
    assert any("file not found" in e for e in body["errors"])


async def test_heartbeat_interval_reload_takes_effect(
    start_from_file: StartFromFile,
    config_path: Path,
    raw_client: RawConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    raw = await raw_client(running)
    raw.send_json({"action": "ping", "id": "1"})
    assert (await raw.read_json())["type"] == "pong"
    write_yaml(
        config_path,
        with_changes(websocket={"heartbeat_interval": 0.2, "heartbeat_timeout": 5}),
    )
    status, _ = await reload(http, running)
    assert status == 200
    # at the interval before the reload no ping would come within these waits
    assert running.server.config.websocket.heartbeat_interval == 0.2
    opcode, payload = await raw.read_frame(timeout=2)
    assert (opcode, payload) == (0x9, b"")
    raw.send_frame(b"", 0xA)
    opcode, _ = await raw.read_frame(timeout=2)
    assert opcode == 0x9


async def test_token_and_history_size_reload(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    await publish(http, running, [{"type": "h", "payload": i} for i in range(10)])
    write_yaml(config_path, with_changes(api={"token": "tok"}, history={"size": 3}))
    status, body = await reload(http, running)
    assert status == 200
    assert {"key": "api.token", "old": None, "new": "***"} in body["applied"]
    assert {"key": "history.size", "old": 50, "new": 3} in body["applied"]

    status, _ = await publish(http, running, {"type": "h", "payload": 10})
    assert status == 401
    auth = {"Authorization": "Bearer tok"}
    assert await publish(http, running, {"type": "h", "payload": 10}, headers=auth) == (
        202,
        {"seq": 11},
    )
    c = await ws_client(running)
    reply = await c.request("history", {"type": "h", "limit": 50})
    assert [m["seq"] for m in reply["payload"]["messages"]] == [9, 10, 11]
    assert reply["payload"]["limit"] == 3

    # now the reload route itself needs the token
    status, body = await reload(http, running)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await reload(http, running, headers=auth)
    assert status == 200 and body["applied"] == []
    assert running.server.stats.reloads_ok == 2


async def test_max_message_size_reload_applies_to_new_connections(
    start_from_file: StartFromFile,
    config_path: Path,
    ws_client: WsConnect,
    http: aiohttp.ClientSession,
) -> None:
    running = await start_from_file(config_path)
    old = await ws_client(running)
    await old.ping()
    write_yaml(config_path, with_changes(websocket={"max_message_size": 1000}))
    status, body = await reload(http, running)
    assert status == 200
    assert body["applied"] == [{"key": "websocket.max_message_size", "old": 1048576, "new": 1000}]
    big = orjson.dumps({"action": "ping", "id": "x" * 2000}).decode()
    # the connection made before keeps its limit
    await old.send(big)
    assert (await old.recv())["type"] == "pong"
    # a new one gets the new limit
    new = await ws_client(running)
    await new.send(big)
    assert await new.close_code() == 1009
    await old.ping()


async def test_server_started_without_a_file_does_not_pick_one_up(
    running_server,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload re-reads the file the server started with; with none, none: not
    the default config/deployment.yaml of whatever directory it runs in."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    write_yaml(
        tmp_path / "config" / "deployment.yaml",
        {"websocket": {"max_connections": 3}, "history": {"size": 7}},
    )
    running = await running_server()
    assert running.server.config.source_path is None
    status, body = await reload(http, running)
    assert status == 200
    assert body["source"] is None
    assert all(c["key"] not in {"websocket.max_connections", "history.size"}
               for c in body["applied"])  # fmt: skip
    assert running.server.config.websocket.max_connections == 10000
    assert running.server.config.history.size == 50
