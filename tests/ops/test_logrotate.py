"""deploy/logrotate/websocket-server: logrotate accepts it, and a real
rotation against a running aiosrv leaves the server writing to the new file.

The rule has no postrotate and no copytruncate: aiosrv's WatchedFileHandler
reopens the log path by itself when the file was renamed away. The rotation
test runs ``logrotate -f -s STATEFILE`` on a copy of the rule whose path is a
temporary log that a live server (``logging.file``) writes to, and makes the
server log by connecting WebSocket clients (each logs a "connected" line with
its id). logrotate is Debian's ``logrotate`` (``scripts/system-deps.sh``);
without it the tests fail, they never skip.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import websocket

from tests.serverproc import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "deploy" / "logrotate" / "websocket-server"
CONNECTED = re.compile(r"Client (\w+) connected from")


def logrotate() -> str:
    exe = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
    )
    if exe is None:
        pytest.fail(
            "logrotate is not installed: run `sh scripts/system-deps.sh` as root "
            "(it installs Debian's logrotate package)"
        )
    return exe


def rule_for(log: Path, tmp_path: Path) -> Path:
    """The deploy rule with its log path replaced by ``log``."""
    text = RULE.read_text()
    paths = re.findall(r"^(/\S+)\s*\{", text, re.M)
    assert paths == ["/opt/websocket-server/logs/websocket-server.log"], paths
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text.replace(paths[0], str(log)))
    conf.chmod(0o644)  # logrotate run as root refuses group/world-writable configs
    return conf


def directives(text: str) -> list[str]:
    body = text.split("{", 1)[1].rsplit("}", 1)[0]
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_rule_directives() -> None:
    text = RULE.read_text()
    assert directives(text) == [
        "daily", "rotate 14", "compress", "delaycompress", "missingok", "notifempty",
    ]  # fmt: skip
    # the server reopens its file by itself: no signal, no copytruncate
    assert "postrotate" not in directives(text)
    assert "copytruncate" not in directives(text)
    assert "WatchedFileHandler" in text and "15 characters" in text


def test_logrotate_debug_is_clean(tmp_path: Path) -> None:
    r = subprocess.run(
        [logrotate(), "-d", "-s", str(tmp_path / "state"), str(RULE)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "error" not in out.lower(), out
    assert "after 1 days (14 rotations)" in out, out
    # and the copy the rotation test uses, pointing at an existing log
    log = tmp_path / "logs" / "websocket-server.log"
    log.parent.mkdir()
    log.write_text("a line\n")
    r = subprocess.run(
        [logrotate(), "-d", "-s", str(tmp_path / "state2"), str(rule_for(log, tmp_path))],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "error" not in out.lower(), out
    assert f"considering log {log}" in out, out


def connect_once(srv: ServerProcess, log: Path, timeout: float = 10.0) -> str:
    """Open and close a WebSocket; return the client id the server logged to ``log``."""
    before = set(CONNECTED.findall(all_text(log)))
    ws = websocket.create_connection(srv.ws_url(), timeout=timeout)
    ws.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(CONNECTED.findall(all_text(log))) - before
        if new:
            return new.pop()
        time.sleep(0.05)
    raise AssertionError(f"no connect line in {log}; server stderr:\n{srv.log_text()[-2000:]}")


def all_text(log: Path) -> str:
    """The log and every rotated copy of it (plain or gzip)."""
    out = []
    for p in sorted(log.parent.glob(log.name + "*")):
        out.append(gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text())
    return "".join(out)


def test_rotation_against_running_server(tmp_path: Path) -> None:
    exe = logrotate()
    logdir = tmp_path / "logs"
    logdir.mkdir()
    log = logdir / "websocket-server.log"
    conf = rule_for(log, tmp_path)
    state = tmp_path / "logrotate.state"
    srv = start_server(settings={"logging.file": str(log)}, log_level="INFO")
    try:
        first = connect_once(srv, log)

        def rotate() -> None:
            r = subprocess.run(
                [exe, "-f", "-s", str(state), str(conf)],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr

        rotate()
        rotated = logdir / "websocket-server.log.1"
        assert rotated.exists(), sorted(p.name for p in logdir.iterdir())
        assert f"Client {first} connected" in rotated.read_text()
        # the server's next line goes to a new file at the same path
        second = connect_once(srv, log)
        assert log.exists()
        assert f"Client {second} connected" in log.read_text()
        assert f"Client {second} connected" not in rotated.read_text()
        assert f"Client {first} connected" not in log.read_text()

        # again: delaycompress compresses the older copy now
        rotate()
        names = sorted(p.name for p in logdir.iterdir())
        assert names == [
            "websocket-server.log.1", "websocket-server.log.2.gz",
        ] or names == [
            "websocket-server.log", "websocket-server.log.1", "websocket-server.log.2.gz",
        ], names  # fmt: skip
        old = gzip.decompress((logdir / "websocket-server.log.2.gz").read_bytes()).decode()
        assert f"Client {first} connected" in old
        assert f"Client {second} connected" in rotated.read_text()
        third = connect_once(srv, log)
        assert f"Client {third} connected" in log.read_text()
        assert srv.alive()
        assert srv.log_problems() == []
    finally:
        rc = srv.stop()
        srv.cleanup()
    assert rc == 0
