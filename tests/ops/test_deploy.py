"""deploy/deploy.sh against live aiosrv processes it starts itself.

A "release" is a directory with ``bin/aiosrv`` and ``bin/python``: here the
project's own venv, reached through small wrappers so that two releases can
be told apart (each wrapper exports ``ENVIRONMENT=<release name>``, which
the server reports on ``/status``), and a
broken release whose ``serve`` exits at once. Every port is a free one from
the OS; the script checks that ``/status`` names the pid it started.

Blue-green: the first deploy starts blue; the second starts green, writes the
nginx upstreams file naming green, runs the switch command, then drains blue
(its WebSocket client gets 1001). A broken release leaves the live colour
serving and switches nothing; a port already answering is refused before
anything starts. Rolling: two instances on a real redis-server (the test
starts its own) are replaced one at a time; a message published to one
reaches a client of the other afterwards; a broken release stops the roll at
the first instance, which goes back to the previous release, and leaves the
second untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.cli.conftest import free_ports
from tests.redis_support import RedisServer
from tests.serverproc import clean_env

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "deploy.sh"
SHIPPED_UPSTREAMS = REPO / "deploy" / "nginx" / "upstreams.conf"
VENV_BIN = Path(sys.executable).parent


def make_release(root: Path, name: str, *, broken: bool = False) -> Path:
    """A release directory whose ``aiosrv`` is the project's, tagged ``name``."""
    rel = root / name
    (rel / "bin").mkdir(parents=True)
    # a script, not a symlink: a symlinked venv python outside the venv is the
    # base interpreter, without the venv's packages
    py = rel / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    serve = 'echo "aiosrv: this release is broken" >&2; exit 3' if broken else ""
    script = f"""#!/bin/sh
export ENVIRONMENT={name}
if [ "${{1:-}}" = serve ]; then :; {serve}
fi
exec {VENV_BIN / "aiosrv"} "$@"
"""
    exe = rel / "bin" / "aiosrv"
    exe.write_text(script)
    exe.chmod(0o755)
    return rel


def deploy(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = clean_env(
        {
            "WEBSOCKET_HOST": "127.0.0.1",
            "API_HOST": "127.0.0.1",
            "VERIFY_TIMEOUT": "5",
            "SOURCES_ENABLED": "false",
            **env,
        }
    )
    return subprocess.run(
        ["sh", str(DEPLOY), *args], capture_output=True, text=True, timeout=120, env=full, cwd=cwd
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def status_of(api_port: int) -> dict[str, Any]:
    data: dict[str, Any] = get_json(f"http://127.0.0.1:{api_port}/status")
    return data


def running(api_port: int) -> tuple[int, str]:
    """(pid, release name) of the instance answering on ``api_port``."""
    st = status_of(api_port)
    return st["worker"]["pid"], st["environment"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[-1].split()[0] != "Z"


def upstream_shape(text: str) -> dict[str, list[str]]:
    """Each nginx upstream block's directives, with the server addresses taken
    out: what deploy.sh writes must match deploy/nginx/upstreams.conf."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("upstream ") and line.endswith("{"):
            current = blocks.setdefault(line.split()[1], [])
        elif line == "}":
            current = None
        elif line and current is not None:
            words = line.rstrip(";").split()
            if words[0] == "server":
                words[1] = "ADDRESS"
            if words not in [w.split() for w in current]:
                current.append(" ".join(words))
    return blocks


def slot(ports: list[int]) -> str:
    return ":".join(map(str, ports))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    st = tmp_path / "state"
    yield st
    # whatever the test left running
    if st.exists():
        deploy(tmp_path, "stop", "--state", str(st))


def test_usage(tmp_path: Path) -> None:
    r = deploy(tmp_path)
    assert r.returncode == 2 and "blue-green" in r.stderr
    r = deploy(tmp_path, "sideways")
    assert r.returncode == 2 and "unknown mode 'sideways'" in r.stderr
    r = deploy(tmp_path, "blue-green", "--state", str(tmp_path / "s"))
    assert r.returncode == 2 and "--release DIR is needed" in r.stderr
    r = deploy(tmp_path, "rolling", "--release", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "bin/aiosrv is not there" in r.stderr


def test_blue_green_switches_and_drains_the_old_colour(tmp_path: Path, state: Path) -> None:
    v1, v2 = make_release(tmp_path, "v1"), make_release(tmp_path, "v2")
    ports = free_ports(6)
    blue, green = ports[:3], ports[3:]
    upstreams = tmp_path / "upstreams.conf"
    switched = tmp_path / "switched"
    common = [
        "--state", str(state), "--blue", slot(blue), "--green", slot(green),
        "--upstreams", str(upstreams), "--switch-cmd", f"echo switched >> {switched}",
    ]  # fmt: skip

    r = deploy(tmp_path, "blue-green", "--release", str(v1), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (state / "active").read_text().strip() == "blue"
    blue_pid = int((state / "blue.pid").read_text())
    assert running(blue[1]) == (blue_pid, "v1")
    assert f"server 127.0.0.1:{blue[0]} " in upstreams.read_text()
    assert upstream_shape(upstreams.read_text()) == upstream_shape(SHIPPED_UPSTREAMS.read_text())
    assert switched.read_text() == "switched\n"

    # a client of blue, subscribed, when v2 goes out
    ws = websocket.create_connection(f"ws://127.0.0.1:{blue[0]}/ws/realtime", timeout=10)
    try:
        ws.send(json.dumps({"action": "subscribe", "payload": {"types": ["t"]}}))
        assert json.loads(ws.recv())["type"] == "ack"
        r = deploy(tmp_path, "blue-green", "--release", str(v2), *common)
        assert r.returncode == 0, r.stdout + r.stderr
        # blue was drained: its client was closed with 1001 (going away)
        while True:
            op, frame = ws.recv_data_frame(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                break
        assert int.from_bytes(frame.data[:2], "big") == 1001
    finally:
        ws.close()
        ws.shutdown()  # close() leaves the socket open when the server closed first
    assert (state / "active").read_text().strip() == "green"
    green_pid = int((state / "green.pid").read_text())
    assert running(green[1]) == (green_pid, "v2")
    assert not alive(blue_pid)
    text = upstreams.read_text()
    assert f"server 127.0.0.1:{green[0]} " in text and f"127.0.0.1:{blue[0]}" not in text
    assert f"server 127.0.0.1:{green[1]} " in text
    assert switched.read_text() == "switched\nswitched\n"
    assert "healthy and verified, version" in r.stdout
    assert f"draining blue (pid {blue_pid}): SIGTERM" in r.stdout

    # docs/operations.md: one instance's pid among several, by its port
    found = subprocess.run(
        ["pgrep", "-f", f"^websocket-server ws:{green[0]} "], capture_output=True, text=True
    )
    assert found.stdout.split() == [str(green_pid)]

    st = deploy(tmp_path, "status", "--state", str(state))
    assert f"green: pid {green_pid}, release {v2}" in st.stdout
    assert "active: green" in st.stdout


def test_blue_green_with_a_broken_release_keeps_the_live_colour(
    tmp_path: Path, state: Path
) -> None:
    v1, bad = make_release(tmp_path, "v1"), make_release(tmp_path, "bad", broken=True)
    ports = free_ports(6)
    blue, green = ports[:3], ports[3:]
    switched = tmp_path / "switched"
    common = [
        "--state", str(state), "--blue", slot(blue), "--green", slot(green),
        "--switch-cmd", f"echo switched >> {switched}", "--start-timeout", "10",
    ]  # fmt: skip
    assert deploy(tmp_path, "blue-green", "--release", str(v1), *common).returncode == 0
    blue_pid = int((state / "blue.pid").read_text())

    r = deploy(tmp_path, "blue-green", "--release", str(bad), *common)
    assert r.returncode == 1
    assert "green (pid" in r.stderr and "exited while starting" in r.stderr
    assert "this release is broken" in r.stderr
    assert "blue keeps serving, nothing switched" in r.stderr
    assert (state / "active").read_text().strip() == "blue"
    assert running(blue[1]) == (blue_pid, "v1")
    assert switched.read_text() == "switched\n"  # only the first deploy's


def test_blue_green_refuses_a_port_someone_else_answers_on(tmp_path: Path, state: Path) -> None:
    v1 = make_release(tmp_path, "v1")
    ports = free_ports(6)
    blue, green = ports[:3], ports[3:]
    # another server already on blue's API port
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(blue[1]), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline_ok = False
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{blue[1]}/", timeout=1).close()
                deadline_ok = True
                break
            except OSError:
                subprocess.run(["sleep", "0.05"])
        assert deadline_ok
        r = deploy(
            tmp_path, "blue-green", "--release", str(v1), "--state", str(state),
            "--blue", slot(blue), "--green", slot(green),
        )  # fmt: skip
    finally:
        other.terminate()
        other.wait(10)
    assert r.returncode == 1
    assert f"something already answers on http://127.0.0.1:{blue[1]}" in r.stderr
    assert not (state / "blue.pid").exists()


def test_rolling_replaces_instances_one_at_a_time_on_redis(tmp_path: Path, state: Path) -> None:
    v1, v2 = make_release(tmp_path, "v1"), make_release(tmp_path, "v2")
    bad = make_release(tmp_path, "bad", broken=True)
    ports = free_ports(6)
    one, two = ports[:3], ports[3:]
    with RedisServer() as redis:
        env = {"BROKER": "redis", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)}
        common = ["--state", str(state), "--instances", f"{slot(one)} {slot(two)}"]
        r = deploy(tmp_path, "rolling", "--release", str(v1), *common, **env)
        assert r.returncode == 0, r.stdout + r.stderr
        first = {n: int((state / f"instance-{n}.pid").read_text()) for n in (1, 2)}
        assert [running(p[1]) for p in (one, two)] == [(first[1], "v1"), (first[2], "v1")]

        r = deploy(tmp_path, "rolling", "--release", str(v2), *common, **env)
        assert r.returncode == 0, r.stdout + r.stderr
        second = {n: int((state / f"instance-{n}.pid").read_text()) for n in (1, 2)}
        assert [running(p[1]) for p in (one, two)] == [(second[1], "v2"), (second[2], "v2")]
        assert not any(alive(p) for p in first.values())
        # one at a time: instance 1 was healthy again before instance 2 was stopped
        out = r.stdout
        assert out.index("instance-1 (pid") < out.index("draining instance-2")
        assert "rolling done: 2 instances" in out
        # the two share the engine: a publish to one reaches a client of the other
        ws = websocket.create_connection(f"ws://127.0.0.1:{two[0]}/ws/realtime", timeout=10)
        try:
            ws.send(json.dumps({"action": "subscribe", "payload": {"types": ["roll"]}}))
            assert json.loads(ws.recv())["type"] == "ack"
            body = json.dumps({"type": "roll", "payload": "across"}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{one[1]}/api/publish", data=body, method="POST",
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            urllib.request.urlopen(req, timeout=5).close()
            msg = json.loads(ws.recv())
            while msg.get("type") != "roll":
                msg = json.loads(ws.recv())
            assert msg["payload"] == "across"
        finally:
            ws.close()

        # a broken release: the roll stops at instance 1, which goes back to v2
        r = deploy(
            tmp_path, "rolling", "--release", str(bad), "--start-timeout", "10", *common, **env
        )
        assert r.returncode == 1
        assert "rolling back instance-1 to" in r.stdout
        assert "the roll stopped there" in r.stderr
        back = int((state / "instance-1.pid").read_text())
        assert running(one[1]) == (back, "v2")
        assert int((state / "instance-2.pid").read_text()) == second[2]
        assert running(two[1]) == (second[2], "v2")
        deploy(tmp_path, "stop", "--state", str(state))
        assert not alive(back) and not alive(second[2])
