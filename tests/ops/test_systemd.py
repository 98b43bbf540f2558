"""deploy/systemd/websocket-server.service: systemd-analyze verify accepts it,
it has the keys the deployment needs, and its ExecStart works when run by hand.

``systemd-analyze verify`` (Debian's ``systemd`` package) needs ExecStart's
program to exist, so it runs on a copy whose ExecStart names this venv's
``aiosrv``; the unit as shipped must fail only for that missing program. The
by-hand run starts ExecStart's command line the way systemd would: in a
temporary WorkingDirectory, with Environment= (AIOSRV_CONFIG, here a copy of
config/production.yaml) and an EnvironmentFile holding the secrets and
loopback ports; then ExecReload's SIGHUP and KillSignal's SIGTERM, which must
end the server well within TimeoutStopSec.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aiosrv.config import load_config
from tests.cli.conftest import clean_env, free_ports

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "websocket-server.service"
SHIPPED_EXE = "/opt/websocket-server/.venv/bin/aiosrv"
PROD = REPO / "config" / "production.yaml"
LOCAL_EXE = str(Path(sys.executable).parent / "aiosrv")


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail(
            "systemd-analyze is not installed: run `sh scripts/system-deps.sh` as root "
            "(Debian's systemd package)"
        )
    return exe


def unit() -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(UNIT.read_text())
    return cp


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = analyze()
    assert Path(LOCAL_EXE).exists()
    copy = tmp_path / "websocket-server.service"
    copy.write_text(UNIT.read_text().replace(SHIPPED_EXE, LOCAL_EXE))
    r = subprocess.run([exe, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    # the shipped unit: the only complaint is the program missing on this machine
    r = subprocess.run([exe, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    assert (
        out == f"websocket-server.service: Command {SHIPPED_EXE} is not executable: "
        "No such file or directory"
    ), out


def test_unit_keys() -> None:
    cp = unit()
    s = dict(cp["Service"])
    assert s["ExecStart"] == f"{SHIPPED_EXE} serve"
    assert s["Environment"] == "AIOSRV_CONFIG=/etc/websocket-server/deployment.yaml"
    assert s["EnvironmentFile"] == "/etc/websocket-server/env"
    assert s["LimitNOFILE"] == "65536"
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["User"] == "websocket"
    assert s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"] == "/opt/websocket-server/logs"
    assert s["WorkingDirectory"] == "/opt/websocket-server"
    # the drain must fit: TimeoutStopSec above shutdown.grace_period, with room
    grace = load_config(env={}, use_default_path=False).shutdown.grace_period
    prod = load_config(PROD, env={}).shutdown.grace_period
    assert int(s["TimeoutStopSec"]) >= 2 * max(grace, prod), (s["TimeoutStopSec"], grace, prod)
    # the log the rule rotates is in the writable directory
    yaml_log = load_config(PROD, env={}).logging.file
    assert yaml_log == "logs/websocket-server.log"
    rule = (REPO / "deploy" / "logrotate" / "websocket-server").read_text()
    assert f"{s['WorkingDirectory']}/{yaml_log} {{" in rule
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def wait_for(path: Path, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in {path}:\n{text[-3000:]}")


def test_exec_start_by_hand(tmp_path: Path) -> None:
    s = dict(unit()["Service"])
    argv = shlex.split(s["ExecStart"])
    assert argv[0] == SHIPPED_EXE
    argv[0] = LOCAL_EXE
    workdir = tmp_path / "opt"
    workdir.mkdir()
    config = tmp_path / "deployment.yaml"
    shutil.copy(REPO / "config" / "production.yaml", config)
    ws, api, metrics = free_ports(3)
    envfile = tmp_path / "env"
    envfile.write_text(
        "API_TOKEN=verify-api-token\nAUTH_TOKEN=verify-auth-token\n"
        f"WEBSOCKET_HOST=127.0.0.1\nWEBSOCKET_PORT={ws}\n"
        f"API_HOST=127.0.0.1\nAPI_PORT={api}\nMETRICS_PORT={metrics}\n"
    )
    key, _, _value = s["Environment"].partition("=")
    assert key == "AIOSRV_CONFIG"
    env = clean_env(AIOSRV_CONFIG=str(config))
    for line in envfile.read_text().splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    log = workdir / "logs" / "websocket-server.log"
    proc = subprocess.Popen(
        argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(log, r"aiosrv ready: websocket ws://127\.0\.0\.1:\d+/")
        assert f"ws://127.0.0.1:{ws}/" in log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/health", timeout=10) as r:
            assert r.status == 200
            assert json.load(r)["status"] == "healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/status", timeout=10) as r:
            assert json.load(r)["environment"] == "production"
        # ExecReload
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(log, r"SIGHUP received: reloading configuration")
        assert proc.poll() is None
        # KillSignal, within TimeoutStopSec
        os.kill(proc.pid, getattr(signal, s["KillSignal"]))
        assert proc.wait(timeout=int(s["TimeoutStopSec"])) == 0
        wait_for(log, r"aiosrv stopped")
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
