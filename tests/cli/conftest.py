"""The real ``aiosrv`` command as a subprocess, driven by independent clients.

``serve(...)`` starts ``python -m aiosrv serve`` (this venv's interpreter) in
the test's ``tmp_path``, so it never reads the repository's
``config/deployment.yaml`` unless a test puts one there, with an environment
stripped of ``AIOSRV_CONFIG`` and every variable the configuration reads. It
binds to 127.0.0.1 on free ports and returns once the ready line is on
standard error. Teardown kills whatever is still running.

Clients are ``websocket-client`` (``import websocket``, synchronous) for the
WebSocket side and ``urllib`` for HTTP: nothing from aiosrv or aiohttp.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from aiosrv.config import CONFIG_PATH_ENV, ENV_VARS

REPO = Path(__file__).resolve().parents[2]
READY = "aiosrv ready:"
#: How long start-up, a log line or a reply may take before a test fails.
TIMEOUT = 10.0

READY_RE = re.compile(
    r"aiosrv ready: websocket wss?://(?P<ws_host>[\d.]+):(?P<ws>\d+)(?P<path>/\S*), "
    r"api https?://(?P<api_host>[\d.]+):(?P<api>\d+)"
    r"(?:, metrics https?://(?P<metrics_host>[\d.]+):(?P<metrics>\d+)/metrics)? "
    r"\(core=(?P<core>[\w-]+), broker=(?P<broker>\w+), max_connections=(?P<max>\d+)\)"
)


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free loopback ports (sockets bound to port 0, held together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without AIOSRV_CONFIG or any configuration variable."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != CONFIG_PATH_ENV}
    env.update(extra)
    return env


def aiosrv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "aiosrv", *args]


def run_aiosrv(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself (help, check-config, a refused serve)."""
    return subprocess.run(
        aiosrv_cmd(*args),
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.02)


def wait_for_file_line(path: Path, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
    """The first line of ``path`` matching the regex ``pattern``, once it is there."""
    rx = re.compile(pattern)

    def find() -> re.Match[str] | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return rx.search(text)

    return wait_until(find, timeout, f"{pattern!r} in {path}")  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the process


class ServerProcess:
    """A running ``aiosrv serve``; standard error is read by a thread into ``lines``."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.args = args
        self.cwd = cwd
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            aiosrv_cmd(*args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready: re.Match[str] | None = None

    def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, text: str) -> int:
        with self._cond:
            return sum(text in line for line in self.lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> re.Match[str]:
        """The first standard-error line (from index ``start``) matching the regex."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "the process ended" if self._eof else f"{timeout}s passed"
                    raise AssertionError(
                        f"no line matching {pattern!r} on standard error ({why}); "
                        f"exit status {self.proc.poll()}; got:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(left)

    def mark(self) -> int:
        """An index for ``wait_for(start=...)``: only lines logged from now on."""
        with self._cond:
            return len(self.lines)

    def wait_ready(self, timeout: float = TIMEOUT) -> re.Match[str]:
        line = self.wait_for(re.escape(READY), timeout)
        m = READY_RE.search(line.string)
        assert m, f"ready line not in the expected form: {line.string}"
        self.ready = m
        return m

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(TIMEOUT)
        finally:
            self._reader.join(TIMEOUT)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class Served(ServerProcess):
    """A server that logged its ready line, with the ports it reported."""

    @property
    def ws_port(self) -> int:
        assert self.ready is not None
        return int(self.ready["ws"])

    @property
    def api_port(self) -> int:
        assert self.ready is not None
        return int(self.ready["api"])

    @property
    def metrics_port(self) -> int:
        assert self.ready is not None and self.ready["metrics"] is not None
        return int(self.ready["metrics"])

    def ws_url(self, path: str = "/ws/realtime") -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def config(self) -> dict[str, Any]:
        status, body = http("GET", self.api("/config"))
        assert status == 200, body
        return body  # type: ignore[no-any-return]


StartServer = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``aiosrv serve``; kill every started process at teardown.

    ``serve(*args, env=None, ports=True, wait=True, cwd=tmp_path, preexec_fn=None)``:
    with ``ports`` the flags bind the WebSocket, API and metrics listeners to
    three free ports on 127.0.0.1; ``env`` adds variables to the cleaned
    environment; ``preexec_fn`` runs in the child before it starts (e.g. a
    lower RLIMIT_NOFILE).
    """
    started: list[Served] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        ports: bool = True,
        wait: bool = True,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> Served:
        argv = ["serve"]
        if ports:
            ws, api, metrics = free_ports(3)
            argv += ["--host", "127.0.0.1", "--port", str(ws)]
            argv += ["--api-host", "127.0.0.1", "--api-port", str(api)]
            argv += ["--metrics-port", str(metrics)]
        argv += list(args)
        proc = Served(argv, cwd or tmp_path, clean_env(**(env or {})), preexec_fn)
        started.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.kill()


# --------------------------------------------------------------------------- clients

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, Any]:
    """(status, JSON body or text) of one HTTP request; never raises on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _opener.open(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        exc.close()
    text = raw.decode("utf-8", "replace")
    if "json" in ctype:
        return status, json.loads(text)
    return status, text


class ClientWebSocket(websocket.WebSocket):
    """A ``websocket-client`` WebSocket whose ``close()`` always closes its socket.

    After the server's close frame, ``recv_data_frame`` answers it and marks
    the connection closed, and ``WebSocket.close()`` then returns at once,
    leaving the socket open (a ResourceWarning when it is collected).
    """

    def close(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().close(*args, **kwargs)
        finally:
            self.shutdown()


def ws_connect(url: str, timeout: float = 5) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=timeout, class_=ClientWebSocket)


def local_peer(ws: websocket.WebSocket) -> str:
    """The client's own address as the server sees it: ``127.0.0.1:PORT``."""
    host, port = ws.sock.getsockname()[:2]
    return f"{host}:{port}"


def recv_json(ws: websocket.WebSocket) -> dict[str, Any]:
    """The next text message (answering pings on the way); fails on a close."""
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got {opcode} {data!r}"
    return json.loads(data)  # type: ignore[no-any-return]


def recv_until(
    ws: websocket.WebSocket, pred: Callable[[dict[str, Any]], bool], limit: int = 100
) -> dict[str, Any]:
    """The first message satisfying ``pred`` (others, like built-in data, are skipped)."""
    for _ in range(limit):
        msg = recv_json(ws)
        if pred(msg):
            return msg
    raise AssertionError(f"no matching message in {limit}")


def request(ws: websocket.WebSocket, action: str, rid: str, **payload: Any) -> dict[str, Any]:
    """Send one action and return the reply carrying its id."""
    ws.send(json.dumps({"id": rid, "action": action, "payload": payload}))
    return recv_until(ws, lambda m: m.get("id") == rid)


def subscribe(ws: websocket.WebSocket, *types: str, rid: str = "sub-1") -> dict[str, Any]:
    reply = request(ws, "subscribe", rid, types=list(types))
    assert reply["type"] == "ack", reply
    return reply


def recv_close(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read until the server's close frame; its (code, reason)."""
    for _ in range(1000):
        opcode, frame = ws.recv_data_frame(False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            return code, data[2:].decode("utf-8")
    raise AssertionError("no close frame")


def assert_alive(ws: websocket.WebSocket, rid: str = "alive") -> None:
    """The connection still works: a protocol ``ping`` gets its ``pong``."""
    reply = request(ws, "ping", rid)
    assert reply["type"] == "pong", reply
    assert reply["id"] == rid


def ping_frame(ws: websocket.WebSocket, data: bytes = b"still-there") -> None:
    """Send a WebSocket ping frame and read until its pong frame."""
    ws.ping(data)
    for _ in range(100):
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_PONG:
            assert frame.data == data
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
            raise AssertionError(f"the server closed the connection: {code} {frame.data[2:]!r}")
    raise AssertionError("no pong frame")


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
