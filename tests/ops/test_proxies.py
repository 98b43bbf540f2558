"""deploy/Caddyfile and deploy/nginx/*.conf, end to end through real Caddy and
real nginx (Debian's packages: ``make system-deps``) in front of a real
``aiosrv serve``.

The shipped files are used as they are, except for what must change on a test
machine, each substitution asserted to apply exactly once (a renamed
directive fails the test instead of silently testing something else):

* Caddy: a global options block is put in front (``admin off``,
  ``default_bind 127.0.0.1``); the site address and the upstreams come through
  the file's own environment placeholders. The WebSocket upstream list names
  two instances, a dead one (a port bound but not listening: refused) and the
  server, so the space-separated list and the failover are exercised.
* nginx: a generated top-level nginx.conf shaped like Debian's (its
  permissive ``ssl_protocols``/``ssl_prefer_server_ciphers on`` at http level
  included) includes both shipped files from its own conf.d; the listen
  ports, the certificate paths (a certificate made by tests/certs.py) and the
  two upstream addresses are replaced.

Through each proxy: the answer is the server started here (its instance id
and pid on /status); a WebSocket upgrade on /ws/realtime and /ws (over TLS
for nginx), a subscription and a publish through the proxied API arriving on
it; the server sees the client's address (each proxy's clients connect from
their own 127.0.0.x source address; a forged X-Forwarded-For is not
believed), in its connection and access log lines; /admin (also spelled in
ways that normalise to it) and /metrics are refused without reaching the
server; /ws/stats reaches the API; deploy/verify.sh passes. nginx: plain HTTP redirects to https but
answers /health; TLS 1.2 with the shipped suites; the rate limit answers 429
to a burst beyond 20.

The idle test: the server runs with heartbeat_interval 90 s (timeout 180 s),
so no ping crosses a connection for 90 s after it opens. Clients that send
nothing after their subscription stay connected past nginx's default
proxy_read_timeout (60 s) through Caddy and the shipped nginx and get a
message published after the window; a second nginx, the shipped file with its
proxy_read_timeout/proxy_send_timeout lines removed, cuts its client in the
same window (and logs "upstream timed out"): the test can fail. All three
share one ~63 s window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.certs import client_context, make_cert
from tests.cli.conftest import free_ports
from tests.ops.tools import system_program
from tests.serverproc import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[2]
CADDYFILE = REPO / "deploy" / "Caddyfile"
NGINX_SITE = REPO / "deploy" / "nginx" / "websocket.conf"
NGINX_UPSTREAMS = REPO / "deploy" / "nginx" / "upstreams.conf"

API_TOKEN = "proxy-test-api-token"
HEARTBEAT_INTERVAL = 90.0  # above nginx's default proxy_read_timeout (60 s)
NGINX_DEFAULT_READ_TIMEOUT = 60.0
TIMEOUT = 15.0  # start-up, a reply, a log line

# Each client's own source address: what the server must name in its logs.
CADDY_SRC = "127.0.0.2"
NGINX_SRC = "127.0.0.3"
CONTROL_SRC = "127.0.0.4"
BURST_SRC = "127.0.0.5"
FORGED = "203.0.113.9"

# nginx's timeout lines in the WebSocket location: removed for the control.
TIMEOUT_LINES = ("        proxy_read_timeout 3600s;\n", "        proxy_send_timeout 3600s;\n")


def caddy() -> str:
    return system_program("caddy")


def nginx() -> str:
    return system_program("nginx")


def replace_once(text: str, old: str, new: str, where: str) -> str:
    n = text.count(old)
    assert n == 1, f"{old!r} occurs {n} times in {where}, not once: the shipped file changed"
    return text.replace(old, new)


def remove_once(text: str, line: str, where: str) -> str:
    return replace_once(text, line, "", where)


def wait_until(what: str, check: Any, timeout: float = TIMEOUT, proc: Any = None,
               log: Path | None = None) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as exc:  # retried until the deadline
            value, last = None, exc
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s {state} (last error: {last!r})\n{tail}")


def http_json(url: str, ctx: ssl.SSLContext | None = None, **headers: str) -> Any:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        return json.load(r)


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A proxy process started here: killed at the end."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int  # where clients connect (TLS for nginx)
    tls: ssl.SSLContext | None = None
    http_port: int = 0  # nginx's plain HTTP server
    error_log: Path | None = None
    files: list[Any] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def ws_url(self, path: str = "/ws/realtime") -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{path}"

    def text(self) -> str:
        out = self.log.read_text(errors="replace") if self.log.exists() else ""
        if self.error_log is not None and self.error_log.exists():
            out += self.error_log.read_text(errors="replace")
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown, workers too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in self.files:
            f.close()


def start_caddy(work: Path, server: ServerProcess, dead_port: int) -> Proc:
    work.mkdir()
    text = CADDYFILE.read_text()
    first = next(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
    assert first == "{$AIOSRV_SITE::80} {", first  # no global block of its own: ours goes first
    conf = work / "Caddyfile"
    conf.write_text("{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}\n\n" + text)
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "HOME": str(work), "XDG_DATA_HOME": str(work / "data"),
        "XDG_CONFIG_HOME": str(work / "config"),
        "AIOSRV_SITE": f"http://127.0.0.1:{port}",
        # two instances, space-separated: a dead one first, then the server
        "AIOSRV_WS_UPSTREAMS": f"127.0.0.1:{dead_port} 127.0.0.1:{server.ws_port}",
        "AIOSRV_API_UPSTREAMS": f"127.0.0.1:{server.api_port}",
    }  # fmt: skip
    log = work / "caddy.log"
    out = open(log, "wb")  # noqa: SIM115 - closed by Proc.stop
    proc = subprocess.Popen(
        [caddy(), "run", "--config", str(conf), "--adapter", "caddyfile"],
        cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Proc("caddy", proc, log, port, files=[out])


NGINX_MAIN = """\
{user}worker_processes 1;
events {{ worker_connections 768; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    # as in Debian's nginx.conf: the shipped server block must override these
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/conf.d/*.conf;
}}
"""


def nginx_prefix(
    prefix: Path, site: str, upstreams: str, cert: tuple[Path, Path] | None = None
) -> Path:
    """A self-contained nginx prefix: conf.d with the two files, its nginx.conf."""
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "logs").mkdir()
    (prefix / "tmp").mkdir()
    if cert is not None:
        site = replace_once(site, "/etc/ssl/certs/websocket.crt", str(cert[0]), "websocket.conf")
        site = replace_once(site, "/etc/ssl/private/websocket.key", str(cert[1]), "websocket.conf")
    (prefix / "conf.d" / "websocket.conf").write_text(site)
    (prefix / "conf.d" / "websocket-upstreams.conf").write_text(upstreams)
    # as root the workers would switch to nobody, who cannot enter tmp_path
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(user=user, prefix=prefix))
    return conf


def nginx_argv(prefix: Path, conf: Path, *extra: str) -> list[str]:
    return [
        nginx(), "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "logs" / "error.log"),
        *extra,
        "-g", f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log info;",
    ]  # fmt: skip


def start_nginx(
    name: str, work: Path, server: ServerProcess, cert: tuple[Path, Path], *, timeouts: bool
) -> Proc:
    tls_port, http_port = free_ports(2)
    site = NGINX_SITE.read_text()
    site = replace_once(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;",
                        "websocket.conf")  # fmt: skip
    site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{http_port};", "websocket.conf")
    if not timeouts:
        for line in TIMEOUT_LINES:
            site = remove_once(site, line, "websocket.conf")
        assert not re.search(r"(?m)^\s*proxy_(read|send)_timeout", site)  # nor elsewhere
    ups = NGINX_UPSTREAMS.read_text()
    ups = replace_once(ups, "server 127.0.0.1:8765 ", f"server 127.0.0.1:{server.ws_port} ",
                       "upstreams.conf")  # fmt: skip
    ups = replace_once(ups, "server 127.0.0.1:8080 ", f"server 127.0.0.1:{server.api_port} ",
                       "upstreams.conf")  # fmt: skip
    prefix = work / name
    conf = nginx_prefix(prefix, site, ups, cert)
    log = prefix / "logs" / "stderr.log"
    out = open(log, "wb")  # noqa: SIM115 - closed by Proc.stop
    proc = subprocess.Popen(
        nginx_argv(prefix, conf), cwd=prefix, stdin=subprocess.DEVNULL, stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Proc(name, proc, log, tls_port, client_context(cert[0]), http_port,
                prefix / "logs" / "error.log", [out])  # fmt: skip


@dataclass
class Stack:
    server: ServerProcess
    status: dict[str, Any]
    caddy: Proc
    nginx: Proc
    control: Proc  # nginx without the shipped timeouts
    cert: tuple[Path, Path]
    work: Path

    def proxy(self, name: str) -> Proc:
        return {"caddy": self.caddy, "nginx": self.nginx, "control": self.control}[name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("proxies")
    caddy(), nginx()
    # a dead instance for Caddy's upstream list: bound, never listening (refused)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    procs: list[Proc] = []
    server = start_server(
        workdir=work / "server",
        env={"API_TOKEN": API_TOKEN},
        settings={
            "security.trusted_proxies": "127.0.0.1",
            "logging.access_log": "true",
            "websocket.heartbeat_interval": f"{HEARTBEAT_INTERVAL:g}s",
            "websocket.heartbeat_timeout": f"{2 * HEARTBEAT_INTERVAL:g}s",
        },
        log_level="INFO",
    )
    try:
        if os.environ.get("AIOSRV_NO_EXTENSIONS") == "1":
            assert server.core == "pure-python", server.core
        elif os.environ.get("AIOSRV_EXPECT_COMPILED") == "1":
            assert server.core == "compiled", server.core
        status = http_json(f"http://127.0.0.1:{server.api_port}/status")
        assert status["worker"]["pid"] == server.pid
        cert = make_cert(work)
        procs.append(start_caddy(work / "caddy", server, dead.getsockname()[1]))
        procs.append(start_nginx("nginx", work, server, cert, timeouts=True))
        procs.append(start_nginx("control", work, server, cert, timeouts=False))
        for p in procs:
            # ready, and what answers is this server
            got = wait_until(
                f"{p.name} proxying /status",
                lambda p=p: http_json(p.base + "/status", p.tls),
                proc=p.proc, log=p.log if p.error_log is None else p.error_log,
            )  # fmt: skip
            assert (got["instance"], got["worker"]["pid"]) == (status["instance"], server.pid)
        yield Stack(server, status, *procs, cert=cert, work=work)  # type: ignore[misc]
    finally:
        for p in procs:
            p.stop()
        dead.close()
        rc = server.stop()
        problems = server.log_problems()
        server.cleanup()
        assert rc == 0 and not problems, (rc, problems)


# ------------------------------------------------------------------ clients


def session(src: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(src, 0)))


async def connect(s: aiohttp.ClientSession, p: Proc, path: str = "/ws/realtime",
                  **headers: str) -> aiohttp.ClientWebSocketResponse:  # fmt: skip
    # heartbeat=None: the client never pings (autoping only answers the server's)
    return await s.ws_connect(
        p.ws_url(path), ssl=p.tls or True, heartbeat=None, headers=headers,
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
    )  # fmt: skip


async def subscribe(ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
    nonce = uuid.uuid4().hex
    await ws.send_json({"id": nonce, "action": "subscribe", "payload": {"types": [kind]}})
    async with asyncio.timeout(TIMEOUT):
        while True:
            m = await ws.receive_json()
            assert m.get("type") != "error", m
            if m.get("type") == "ack" and m.get("id") == nonce:
                return


async def publish(s: aiohttp.ClientSession, base: str, kind: str, payload: Any,
                  tls: ssl.SSLContext | None) -> int:  # fmt: skip
    async with s.post(
        base + "/api/publish", json={"type": kind, "payload": payload}, ssl=tls or True,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as r:  # fmt: skip
        body = await r.json()
        assert r.status == 202, (r.status, body)
        return int(body["seq"])


async def receive_payload(ws: aiohttp.ClientWebSocketResponse, kind: str) -> Any:
    async with asyncio.timeout(TIMEOUT):
        while True:
            m = await ws.receive_json()
            if m.get("type") == kind:
                return m["payload"]


async def raw(p: Proc, request_line: str, *headers: str, src: str = "127.0.0.1",
              port: int | None = None, tls: bool = True) -> tuple[int, str]:  # fmt: skip
    """One request exactly as written (no client normalises the path):
    the status and the whole answer."""
    ctx = p.tls if tls else None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port or p.port, ssl=ctx, local_addr=(src, 0),
        server_hostname="localhost" if ctx else None,
    )  # fmt: skip
    try:
        head = [request_line, "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
        writer.write("\r\n".join(head).encode())
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    text = data.decode(errors="replace")
    m = re.match(r"HTTP/1\.[01] (\d{3})", text)
    assert m, text[:500]
    return int(m[1]), text


def server_log(stack: Stack) -> str:
    return stack.server.log_text()


def wait_log(stack: Stack, pattern: str) -> re.Match[str]:
    return wait_until(  # type: ignore[no-any-return]
        f"server log line {pattern!r}",
        lambda: re.search(pattern, server_log(stack)),
        log=stack.server.log_path,
    )


# -------------------------------------------------------------- the files


def test_caddyfile_validates_and_is_formatted(tmp_path: Path) -> None:
    exe = caddy()
    home = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d"),
            "XDG_CONFIG_HOME": str(tmp_path / "c")}  # fmt: skip
    with socket.socket() as dead:  # validate starts the health checkers: aim them here
        dead.bind(("127.0.0.1", 0))
        up = f"127.0.0.1:{dead.getsockname()[1]}"
        env = {**os.environ, **home, "AIOSRV_WS_UPSTREAMS": up, "AIOSRV_API_UPSTREAMS": up}
        r = subprocess.run(
            [exe, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Valid configuration" in out, out
    assert "not formatted" not in out, out
    r = subprocess.run([exe, "fmt", str(CADDYFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == CADDYFILE.read_text(), "caddy fmt would change deploy/Caddyfile"


def adapt(tmp_path: Path, **env: str) -> dict[str, Any]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AIOSRV_")}
    full.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "d"),
                XDG_CONFIG_HOME=str(tmp_path / "c"), **env)  # fmt: skip
    r = subprocess.run(
        [caddy(), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=60, env=full,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def proxies_in(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reverse_proxy handler of an adapted configuration."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy":
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found


def test_caddyfile_environment_contract(tmp_path: Path) -> None:
    # defaults: :80, localhost:8765 for WebSockets, localhost:8080 for the API
    cfg = adapt(tmp_path)
    (srv,) = cfg["apps"]["http"]["servers"].values()
    assert srv["listen"] == [":80"]
    ws, api = proxies_in(cfg)
    assert [u["dial"] for u in ws["upstreams"]] == ["localhost:8765"]
    assert [u["dial"] for u in api["upstreams"]] == ["localhost:8080"]
    assert ws["load_balancing"]["selection_policy"]["policy"] == "least_conn"
    assert ws["health_checks"]["active"]["uri"] == "/ws/realtime"
    assert ws["health_checks"]["active"]["expect_status"] == 426
    assert api["health_checks"]["active"]["uri"] == "/status"
    assert ws["flush_interval"] == -1 and api["flush_interval"] == -1
    # space-separated lists are several upstreams; the site address is taken whole
    cfg = adapt(
        tmp_path,
        AIOSRV_SITE="push.example.com:8443",
        AIOSRV_WS_UPSTREAMS="10.0.0.11:8765 10.0.0.12:8765  10.0.0.13:8765",
        AIOSRV_API_UPSTREAMS="10.0.0.11:8080 10.0.0.12:8080",
    )
    (srv,) = cfg["apps"]["http"]["servers"].values()
    assert srv["listen"] == [":8443"]
    assert srv["routes"][0]["match"] == [{"host": ["push.example.com"]}]
    ws, api = proxies_in(cfg)
    assert [u["dial"] for u in ws["upstreams"]] == [f"10.0.0.1{i}:8765" for i in (1, 2, 3)]
    assert [u["dial"] for u in api["upstreams"]] == ["10.0.0.11:8080", "10.0.0.12:8080"]


def test_nginx_t(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    # the shipped files as they are, only the certificate paths (nginx -t
    # reads the certificates; it does not bind the ports)
    conf = nginx_prefix(tmp_path / "ok", NGINX_SITE.read_text(), NGINX_UPSTREAMS.read_text(), cert)
    r = subprocess.run(nginx_argv(tmp_path / "ok", conf, "-t"), capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "syntax is ok" in r.stderr and "test is successful" in r.stderr, r.stderr
    assert "warn" not in r.stderr, r.stderr
    # the operations guide's cipher list matches no cipher: nginx -t refuses it
    site = NGINX_SITE.read_text()
    line = next(ln for ln in site.splitlines() if ln.strip().startswith("ssl_ciphers "))
    guide = "    ssl_ciphers ECDHE-RSA-AES256-GCM-SHA512:DHE-RSA-AES256-GCM-SHA512;"
    conf = nginx_prefix(tmp_path / "guide", replace_once(site, line, guide, "websocket.conf"),
                        NGINX_UPSTREAMS.read_text(), cert)  # fmt: skip
    r = subprocess.run(nginx_argv(tmp_path / "guide", conf, "-t"), capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "no cipher match" in r.stderr, r.stderr


# ------------------------------------------------------------- live traffic


@pytest.mark.parametrize("name,src", [("caddy", CADDY_SRC), ("nginx", NGINX_SRC)])
async def test_subscribe_and_publish_through(stack: Stack, name: str, src: str) -> None:
    p = stack.proxy(name)
    kind = f"proxy-{name}"
    async with session(src) as s:
        # a forged X-Forwarded-For / X-Real-IP from the client is not believed
        ws = await connect(s, p, **{"X-Forwarded-For": FORGED, "X-Real-IP": FORGED})
        ws2 = await connect(s, p, "/ws")
        try:
            await subscribe(ws, kind)
            await subscribe(ws2, kind)
            nonce = uuid.uuid4().hex
            seq = await publish(s, p.base, kind, {"nonce": nonce}, p.tls)
            assert seq >= 1
            assert await receive_payload(ws, kind) == {"nonce": nonce}
            assert await receive_payload(ws2, kind) == {"nonce": nonce}
            async with s.get(p.base + "/ws/stats", ssl=p.tls or True) as r:
                assert r.status == 200
                body = await r.json()
                assert body["active_connections"] >= 2, body
        finally:
            await ws.close()
            await ws2.close()
    src_re = re.escape(src)
    # the connection lines: the client's address, via the proxy's (trusted) one
    wait_log(stack, rf"connected from {src_re} via 127\.0\.0\.1:\d+ \(/ws/realtime\)")
    wait_log(stack, rf"connected from {src_re} via 127\.0\.0\.1:\d+ \(/ws\)")
    # the access log: the upgrade and the publish under the client's address
    wait_log(stack, rf'aiosrv\.access: {src_re} - \S+ \[[^]]+\] "GET /ws/realtime HTTP/1\.1" 101 ')
    wait_log(stack, rf'aiosrv\.access: {src_re} - \S+ \[[^]]+\] "POST /api/publish HTTP/1\.1" 202 ')
    assert FORGED not in server_log(stack)


@pytest.mark.parametrize("name", ["caddy", "nginx"])
def test_verify_script_through(stack: Stack, name: str) -> None:
    """docs/proxies.md's check after a deploy: deploy/verify.sh against the
    proxy's URLs (the test certificate trusted through the environment)."""
    p = stack.proxy(name)
    env = {
        **os.environ, "PYTHON": sys.executable, "API_TOKEN": API_TOKEN,
        "SSL_CERT_FILE": str(stack.cert[0]), "CURL_CA_BUNDLE": str(stack.cert[0]),
    }  # fmt: skip
    r = subprocess.run(
        ["sh", str(REPO / "deploy" / "verify.sh"), p.base, p.ws_url(), stack.status["version"]],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0 and "verified" in r.stdout, r.stdout + r.stderr


ADMIN_PATHS = (
    "/admin/gc-stats",
    "/admin",
    "/admin/",
    "//admin/gc-stats",
    "/%61dmin/gc-stats",
    "/admin%2Fgc-stats",
    "/x/../admin/gc-stats",
    "/./admin/gc-stats",
    "/ADMIN/gc-stats",
)


@pytest.mark.parametrize("name,src", [("caddy", CADDY_SRC), ("nginx", NGINX_SRC)])
async def test_admin_and_metrics_refused(stack: Stack, name: str, src: str) -> None:
    p = stack.proxy(name)
    auth = f"Authorization: Bearer {API_TOKEN}"  # the server would answer these
    before = len(server_log(stack))
    for path in ADMIN_PATHS:
        status, text = await raw(p, f"GET {path} HTTP/1.1", auth, src=src)
        assert status in (403, 404), (path, text[:300])
        assert "rss_mb" not in text, (path, text[:300])
    for path in ("/admin/reload-config", "/admin/gc"):
        status, text = await raw(p, f"POST {path} HTTP/1.1", auth, "Content-Length: 0", src=src)
        assert status == 403, (path, text[:300])
    status, text = await raw(p, "GET /metrics HTTP/1.1", src=src)
    assert status == 404, text[:300]
    # and /health still answers through it (from the server)
    status, text = await raw(p, "GET /health HTTP/1.1", src=src)
    assert status == 200 and '"healthy"' in text, text[:300]
    wait_log(stack, rf'{re.escape(src)} - - \[[^]]+\] "GET /health HTTP/1\.1" 200 ')
    new = server_log(stack)[before:]
    # no /admin request reached the server, however it was spelled
    assert not re.search(r'"(GET|POST) /+admin', new), new
    assert " /metrics " not in new, new


async def test_nginx_plain_http(stack: Stack) -> None:
    p = stack.nginx
    status, text = await raw(p, "GET /ws/realtime?since=1 HTTP/1.1", port=p.http_port, tls=False)
    assert status == 301, text[:300]
    assert re.search(r"(?mi)^Location: https://127\.0\.0\.1/ws/realtime\?since=1\r$", text), text
    status, text = await raw(p, "HEAD /health HTTP/1.1", port=p.http_port, tls=False)
    assert status == 200, text[:300]


async def test_nginx_tls_versions(stack: Stack) -> None:
    p = stack.nginx
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(stack.cert[0])
        ctx.minimum_version = ctx.maximum_version = version
        _, writer = await asyncio.open_connection("127.0.0.1", p.port, ssl=ctx,
                                                  server_hostname="localhost")  # fmt: skip
        try:
            obj = writer.get_extra_info("ssl_object")
            assert obj.version() == version.name.replace("v1_", "v1."), obj.version()
            if version is ssl.TLSVersion.TLSv1_2:
                assert obj.cipher()[0].startswith("ECDHE-ECDSA-"), obj.cipher()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def test_nginx_rate_limit(stack: Stack) -> None:
    """40 upgrade requests at once from one address: the guide's burst of 20
    (plus the one the rate allows) pass, the rest get 429."""
    p = stack.nginx
    n = 40
    conns = []
    try:
        for _ in range(n):  # TLS handshakes first, so that the requests go out together
            conns.append(await asyncio.open_connection(
                "127.0.0.1", p.port, ssl=p.tls, local_addr=(BURST_SRC, 0),
                server_hostname="localhost"))  # fmt: skip
        request = (
            b"GET /ws/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        start = time.monotonic()
        for _, w in conns:
            w.write(request)

        async def status(r: asyncio.StreamReader) -> int:
            line = await r.readline()
            return int(line.split()[1])

        async with asyncio.timeout(TIMEOUT):
            codes = await asyncio.gather(*(status(r) for r, _ in conns))
        elapsed = time.monotonic() - start
    finally:
        for _, w in conns:
            w.close()
        for _, w in conns:
            with contextlib.suppress(OSError, ssl.SSLError):
                await w.wait_closed()
    ok, limited = codes.count(101), codes.count(429)
    assert ok + limited == n, codes
    allowed = 21 + int(elapsed * 10) + 1  # burst 20 + 1, and 10/s meanwhile
    assert 21 <= ok <= allowed, (ok, limited, elapsed)
    assert limited >= n - allowed, (ok, limited, elapsed)
    assert re.search(r'limiting requests, excess: [\d.]+ by zone "websocket"', p.text()), p.text()


@pytest.mark.timeout(180)
async def test_idle_connections_outlive_the_default_timeout(stack: Stack) -> None:
    """One window for every proxy: Caddy and the shipped nginx keep a silent
    client past 60 s; the nginx without the shipped timeouts cuts its own."""
    config = http_json(f"http://127.0.0.1:{stack.server.api_port}/config")
    assert config["heartbeat"] == {
        "interval": HEARTBEAT_INTERVAL,
        "timeout": 2 * HEARTBEAT_INTERVAL,
    }
    kind = "proxy-idle"
    clients = {"caddy": CADDY_SRC, "nginx": NGINX_SRC, "control": CONTROL_SRC}
    sessions = {name: session(src) for name, src in clients.items()}
    sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
    closed: dict[str, float] = {}
    got: dict[str, list[Any]] = {name: [] for name in clients}

    async def read(name: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                m = json.loads(msg.data)
                if m.get("type") == kind:
                    got[name].append(m["payload"])
        closed[name] = time.monotonic()

    readers = []
    try:
        for name in clients:
            ws = sockets[name] = await connect(sessions[name], stack.proxy(name))
            await subscribe(ws, kind)
        quiet_since = time.monotonic()  # the last frame on any of the three
        readers = [asyncio.create_task(read(n, ws)) for n, ws in sockets.items()]
        # the control is cut at nginx's default 60 s...
        deadline = quiet_since + NGINX_DEFAULT_READ_TIMEOUT + 15
        while "control" not in closed and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "control" in closed, "nginx without proxy_read_timeout kept a silent client"
        cut_after = closed["control"] - quiet_since
        assert cut_after >= NGINX_DEFAULT_READ_TIMEOUT - 1, cut_after
        # ...and the others are past that too when the message goes out
        await asyncio.sleep(
            max(0.0, quiet_since + NGINX_DEFAULT_READ_TIMEOUT + 3 - time.monotonic())
        )
        assert "caddy" not in closed and "nginx" not in closed, (closed, quiet_since)
        nonce = uuid.uuid4().hex
        async with session("127.0.0.1") as s:
            await publish(s, f"http://127.0.0.1:{stack.server.api_port}", kind, nonce, None)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not (got["caddy"] and got["nginx"]):
            await asyncio.sleep(0.05)
        assert got == {"caddy": [nonce], "nginx": [nonce], "control": []}, got
    finally:
        for ws in sockets.values():
            await ws.close()
        for t in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, 5)
        for s in sessions.values():
            await s.close()
    assert "upstream timed out" in stack.control.text(), stack.control.text()[-2000:]
    assert "upstream timed out" not in stack.nginx.text()
    wait_log(stack, rf"disconnected from {re.escape(CONTROL_SRC)} via 127\.0\.0\.1:\d+")
