"""Authentication, permissions, origins, limits and the API's access rules,
each refusal from a real client over a real socket (docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import Running, StartServer
from tests.server.conftest import RECV_TIMEOUT, Client, RawClient, WsConnect

SECRET = "test-jwt-secret-that-is-long-enough-for-hs256!"
STATIC = "static-token-0123456789"


def make_jwt(
    sub: str = "alice", ttl: float = 60.0, key: Any = SECRET, alg: str = "HS256", **claims: Any
) -> str:
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl) if ttl else None, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg)


class AuditLines(logging.Handler):
    """The audit and access lines the server writes, as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")

    def having(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(w in line for w in words)]


@pytest.fixture
def logs() -> Iterator[AuditLines]:
    handler = AuditLines()
    root = logging.getLogger("aiosrv")  # aiosrv.audit and aiosrv.access propagate to it
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


async def upgrade_status(
    running: Running, path: str = "/ws/realtime", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Send an upgrade request with aiohttp's plain HTTP client; the status and
    JSON error body of a refusal (or 101 and {})."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{running.port}"]
        lines += [f"{k}: {v}" for k, v in head.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        status = int(response.split(b" ", 2)[1])
        if status == 101:
            return 101, {}
        length = 0
        for line in response.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), RECV_TIMEOUT)
        return status, orjson.loads(body)
    finally:
        writer.close()
        await writer.wait_closed()


async def open_ws(running: Running, path: str = "/ws/realtime", **kw: Any) -> Client:
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", RECV_TIMEOUT)
    kw.setdefault("close_timeout", 1)
    return Client(await connect(f"ws://127.0.0.1:{running.port}{path}", **kw))


# -- authentication -------------------------------------------------------------------


async def test_auth_is_off_by_default(running_server: StartServer, ws_client: WsConnect) -> None:
    running = await running_server()
    client = await ws_client(running)
    await client.ping()


async def test_static_token_from_header_query_or_subprotocol(
    running_server: StartServer, logs: AuditLines
) -> None:
    running = await running_server(security__enable_auth=True, security__auth_token=STATIC)

    status, body = await upgrade_status(running)
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    assert "no token" in body["error"]["message"]
    status, body = await upgrade_status(running, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "invalid token" in body["error"]["message"], body
    # the refusal is logged with the address and the reason, never the token
    failed = logs.having("aiosrv.audit", "authentication failed", "addr=127.0.0.1")
    assert len(failed) == 2 and "no token" in failed[0], logs.lines
    assert not any("wrong" in line.split("reason=")[0] for line in failed)
    assert not logs.having(STATIC)

    by_header = await open_ws(running, additional_headers={"Authorization": f"Bearer {STATIC}"})
    by_query = await open_ws(running, path=f"/ws/realtime?token={STATIC}")
    by_protocol = await open_ws(running, subprotocols=["bearer", STATIC])  # type: ignore[list-item]
    assert by_protocol.ws.subprotocol == "bearer"
    for client in (by_header, by_query, by_protocol):
        await client.ping()
        await client.close()
    users = {line.split("user=")[1] for line in logs.having(" connected from", "user=")}
    assert users == {"token"}
    assert not logs.having(STATIC)


async def test_jwt_hs256_claims_are_checked(running_server: StartServer) -> None:
    running = await running_server(
        security__enable_auth=True,
        security__jwt_secret=SECRET,
        security__jwt_audience="ws",
        security__jwt_issuer="https://id.example",
    )
    good = {"aud": "ws", "iss": "https://id.example"}
    client = await open_ws(running, path=f"/ws?token={make_jwt(**good)}")
    await client.ping()
    await client.close()
    cases = {
        "expired": make_jwt(ttl=-30, **good),
        "not valid yet": make_jwt(nbf=int(time.time()) + 60, **good),
        "audience": make_jwt(aud="other", iss="https://id.example"),
        "issuer": make_jwt(aud="ws", iss="https://evil.example"),
        "signature": make_jwt(key="another-secret-of-sufficient-length-xxxxx", **good),
        "'exp' claim": make_jwt(ttl=0, **good),
        "algorithm 'none'": jwt.encode(
            {"sub": "a", "exp": time.time() + 60}, None, algorithm="none"
        ),
    }
    for words, token in cases.items():
        status, body = await upgrade_status(running, headers={"Authorization": f"Bearer {token}"})
        assert status == 401, (words, body)
        assert words in body["error"]["message"], (words, body)


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_jwt_with_a_public_key(
    running_server: StartServer, tmp_path: Path, kind: str
) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "jwt.pem").write_bytes(pem)
    running = await running_server(
        security__enable_auth=True, security__jwt_public_key_file=str(tmp_path / "jwt.pem")
    )
    client = await open_ws(running, path=f"/ws?token={make_jwt(key=private, alg=kind)}")
    await client.ping()
    await client.close()
    # an HS256 token made with the public key as its secret: algorithm confusion
    forged = _hs256_with_raw_key({"sub": "mallory", "exp": int(time.time() + 60)}, pem)
    status, body = await upgrade_status(running, headers={"Authorization": f"Bearer {forged}"})
    assert status == 401 and "algorithm 'HS256' is not accepted" in body["error"]["message"]


def _hs256_with_raw_key(claims: dict[str, Any], key: bytes) -> str:
    """An HS256 JWT keyed with arbitrary bytes (PyJWT refuses PEM keys as HMAC
    secrets, which is the point; an attacker does it by hand)."""
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(orjson.dumps(claims))
    return (signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode()


async def test_auth_on_without_a_credential_does_not_start(running_server: StartServer) -> None:
    from aiosrv.config import ConfigError

    with pytest.raises(ConfigError, match="no credential is configured"):
        await running_server(security__enable_auth=True)


async def test_expiring_jwt_closes_with_1008_unless_refreshed(
    running_server: StartServer, logs: AuditLines
) -> None:
    running = await running_server(security__enable_auth=True, security__jwt_secret=SECRET)
    expires = int(time.time()) + 2
    short = await open_ws(running, path=f"/ws?token={make_jwt(ttl=0, exp=expires)}")
    refreshed = await open_ws(running, path=f"/ws?token={make_jwt(ttl=0, exp=expires)}")
    reply = await refreshed.request("refresh", {"token": make_jwt(ttl=30)})
    assert reply["type"] == "ack" and reply["payload"]["action"] == "refresh", reply
    assert reply["payload"]["user"] == "alice" and reply["payload"]["expires_at"] > time.time()
    # a bad token or another user's is refused, and the connection keeps its own
    reply = await refreshed.request("refresh", {"token": "x.y.z"})
    assert reply["type"] == "error" and reply["payload"]["code"] == "unauthorized", reply
    reply = await refreshed.request("refresh", {"token": make_jwt(sub="bob")})
    assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden", reply
    assert "'bob'" in reply["payload"]["message"]

    assert await short.close_code(timeout=5) == 1008
    assert expires - 0.05 <= time.time() < expires + 1.5
    await asyncio.sleep(0.5)
    await refreshed.ping()  # still open past the first token's expiry
    assert running.server.stats.token_expired_closes == 1
    assert logs.having("aiosrv.audit", "token expired", "user=alice")
    await refreshed.close()


async def test_refresh_with_auth_off_is_an_error(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    client = await ws_client(await running_server())
    reply = await client.request("refresh", {"token": "anything"})
    assert reply["type"] == "error" and "authentication is off" in reply["payload"]["message"]


# -- permissions ----------------------------------------------------------------------------


async def test_claims_limit_subscribe_history_and_publish(
    running_server: StartServer, logs: AuditLines
) -> None:
    running = await running_server(
        security__enable_auth=True,
        security__jwt_secret=SECRET,
        websocket__allow_client_publish=True,
    )
    token = make_jwt(subscribe=["market.*", "news"], publish=["chat.*"])
    client = await open_ws(running, path=f"/ws?token={token}")
    ack = await client.subscribe(["market.eu", "news"])
    assert ack["payload"]["types"] == ["market.eu", "news"]
    for action, payload in (
        ("subscribe", {"types": ["market.eu", "secret"]}),
        ("subscribe", {"types": ["marketplace"]}),
        ("history", {"type": "secret"}),
        ("publish", {"type": "market.eu", "payload": {}}),
        ("publish", {"type": "status", "payload": {}}),
    ):
        reply = await client.request(action, payload)
        assert reply["type"] == "error" and reply["payload"]["code"] == "forbidden", reply
    reply = await client.request("publish", {"type": "chat.room1", "payload": {"t": 1}})
    assert reply["type"] == "ack" and reply["payload"]["seq"] == 1, reply
    # nothing was subscribed by the refused request
    assert (await client.subscribe(["news"]))["payload"]["types"] == ["market.eu", "news"]
    refused = logs.having("aiosrv.audit", "permission refused", "user=alice")
    assert len(refused) == 5, logs.lines
    # a narrower token drops what it no longer allows
    reply = await client.request("refresh", {"token": make_jwt(subscribe=["news"])})
    assert reply["payload"]["dropped"] == ["market.eu"] and reply["payload"]["types"] == ["news"]
    await client.close()


async def test_builtin_types_cannot_be_published_from_outside(
    running_server: StartServer, ws_client: WsConnect, http: aiohttp.ClientSession
) -> None:
    running = await running_server(websocket__allow_client_publish=True)
    client = await ws_client(running)
    for type_ in ("status", "stats", "health"):
        reply = await client.request("publish", {"type": type_, "payload": {"fake": True}})
        assert reply["payload"]["code"] == "forbidden", reply
        async with http.post(
            running.http("/api/publish"), data=orjson.dumps({"type": type_, "payload": {}})
        ) as resp:
            body = orjson.loads(await resp.read())
            assert resp.status == 403 and body["error"]["code"] == "forbidden", body
        async with http.post(
            running.http("/api/publish"),
            data=orjson.dumps([{"type": "fine", "payload": {}}, {"type": type_, "payload": {}}]),
        ) as resp:
            assert resp.status == 403
    assert running.server.hub.fanned_out == 0  # not even the fine one of the batch


# -- the HTTP API's access rules -----------------------------------------------------------


async def test_api_token_guards_publish_and_admin(
    running_server: StartServer, http: aiohttp.ClientSession, logs: AuditLines
) -> None:
    running = await running_server(api__token="api-secret")
    item = orjson.dumps({"type": "t", "payload": {}})
    for method, path in (("POST", "/api/publish"), ("POST", "/admin/gc"),
                         ("GET", "/admin/gc-stats"), ("POST", "/admin/reload-config")):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer nope"}):
            async with http.request(method, running.http(path), data=item,
                                    headers=headers) as resp:  # fmt: skip
                assert resp.status == 401, (path, headers)
        async with http.request(
            method, running.http(path), data=item, headers={"Authorization": "Bearer api-secret"}
        ) as resp:
            assert resp.status in (200, 202), (path, await resp.text())
    assert len(logs.having("aiosrv.audit", "api access refused")) == 8
    assert len(logs.having("aiosrv.audit", "admin call")) == 3
    assert len([ln for ln in logs.lines if ln.endswith("path=/admin/gc")]) == 1
    assert not logs.having("api-secret")


async def test_without_api_token_only_loopback_callers_publish(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    # the proxy (this test, on loopback) is trusted: its X-Forwarded-For is believed
    running = await running_server(security__trusted_proxies=("127.0.0.1",))
    item = orjson.dumps({"type": "t", "payload": {}})
    remote = {"X-Forwarded-For": "203.0.113.7"}
    async with http.post(running.http("/api/publish"), data=item, headers=remote) as resp:
        body = orjson.loads(await resp.read())
        assert resp.status == 403 and "only loopback callers" in body["error"]["message"]
    async with http.post(running.http("/admin/gc"), headers={"X-Real-IP": "198.51.100.1"}) as r:
        assert r.status == 403
    async with http.post(running.http("/api/publish"), data=item) as resp:
        assert resp.status == 202
    async with http.post(
        running.http("/api/publish"), data=item, headers={"X-Forwarded-For": "127.0.0.1"}
    ) as resp:
        assert resp.status == 202
    # read-only routes stay open
    async with http.get(running.http("/health"), headers=remote) as resp:
        assert resp.status == 200


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server()  # no trusted proxies
    async with http.post(
        running.http("/api/publish"),
        data=orjson.dumps({"type": "t", "payload": {}}),
        headers={"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8"},
    ) as resp:
        assert resp.status == 202  # the socket's peer is loopback, whatever it claims


async def test_jwt_bearer_publishes_over_http_within_its_claims(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server(
        api__token="api-secret", security__enable_auth=True, security__jwt_secret=SECRET
    )
    headers = {"Authorization": f"Bearer {make_jwt(publish=['chat.*'])}"}
    for type_, status in (("chat.1", 202), ("orders", 403)):
        async with http.post(
            running.http("/api/publish"),
            data=orjson.dumps({"type": type_, "payload": {}}),
            headers=headers,
        ) as resp:
            assert resp.status == status, await resp.text()
    async with http.post(
        running.http("/admin/gc"), headers=headers
    ) as resp:  # a user's JWT is no admin credential
        assert resp.status == 401


async def test_config_redacts_the_secrets(
    running_server: StartServer, http: aiohttp.ClientSession
) -> None:
    running = await running_server(
        security__enable_auth=True, security__auth_token=STATIC, security__jwt_secret=SECRET
    )
    async with http.get(running.http("/config")) as resp:
        text = await resp.text()
    assert STATIC not in text and SECRET not in text
    body = orjson.loads(text)
    assert body["security"]["auth_token"] == "***" and body["security"]["jwt_secret"] == "***"


# -- origins ----------------------------------------------------------------------------------


async def test_origin_allow_list_refuses_before_the_upgrade(
    running_server: StartServer, logs: AuditLines
) -> None:
    running = await running_server(
        security__allowed_origins=("https://app.example", "https://*.example.com")
    )
    for origin, expected in (
        ("https://evil.example", 403),
        ("https://app.example.evil.test", 403),
        ("http://app.example", 403),  # another scheme
        ("https://example.com", 403),  # the bare domain of a wildcard
        ("https://notexample.com", 403),
        ("null", 403),
        ("https://app.example", 101),
        ("https://app.example:443", 101),
        ("https://eu.shop.example.com", 101),
    ):
        status, body = await upgrade_status(running, headers={"Origin": origin})
        assert status == expected, (origin, body)
        if status == 403:
            assert body["error"]["code"] == "origin_refused"
            assert origin in body["error"]["message"]
    assert (await upgrade_status(running))[0] == 101  # no Origin: not a browser
    assert len(logs.having("aiosrv.audit", "origin refused")) == 6


async def test_cross_site_hijacking_with_a_valid_token_is_refused(
    running_server: StartServer,
) -> None:
    """A page on another site that got hold of (or rides on) a user's
    credentials still cannot open the user's stream: the origin decides first."""
    running = await running_server(
        security__enable_auth=True,
        security__auth_token=STATIC,
        security__allowed_origins=("https://app.example",),
    )
    status, body = await upgrade_status(
        running, path=f"/ws?token={STATIC}", headers={"Origin": "https://evil.example"}
    )
    assert status == 403, body
    status, _ = await upgrade_status(
        running, path=f"/ws?token={STATIC}", headers={"Origin": "https://app.example"}
    )
    assert status == 101


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["refuse", "close_oldest"])
async def test_per_user_connection_limit(running_server: StartServer, policy: str) -> None:
    running = await running_server(
        security__enable_auth=True,
        security__jwt_secret=SECRET,
        security__auth_token=STATIC,
        security__max_connections_per_user=2,
        security__user_limit_policy=policy,
    )
    first = await open_ws(running, path=f"/ws?token={make_jwt('carol')}")
    await first.ping()
    second = await open_ws(running, path=f"/ws?token={make_jwt('carol')}")
    await second.ping()
    other = await open_ws(running, path=f"/ws?token={make_jwt('dave')}")  # another user
    if policy == "refuse":
        status, body = await upgrade_status(
            running, headers={"Authorization": f"Bearer {make_jwt('carol')}"}
        )
        assert status == 429 and body["error"]["code"] == "too_many_connections", body
        await first.ping()
    else:
        third = await open_ws(running, path=f"/ws?token={make_jwt('carol')}")
        assert await first.close_code() == 1008
        await third.ping()
        await second.ping()
        assert running.server.stats.user_limit_closes == 1
        await third.close()
    # the static token is a service credential: not limited per user
    services = [await open_ws(running, path=f"/ws?token={STATIC}") for _ in range(3)]
    for client in (second, other, *services):
        await client.ping()
        await client.close()


async def test_connection_attempts_per_address_are_rate_limited(
    running_server: StartServer,
) -> None:
    running = await running_server(
        security__rate_limit_enabled=True,
        security__connect_rate=0.5,
        security__connect_burst=3,
        security__trusted_proxies=("127.0.0.1",),
    )
    statuses = [(await upgrade_status(running))[0] for _ in range(4)]
    assert statuses == [101, 101, 101, 429]
    status, body = await upgrade_status(running)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert "127.0.0.1" in body["error"]["message"]
    # another client behind the trusted proxy has its own allowance
    status, _ = await upgrade_status(running, headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 101
    assert running.server.stats.rejected["rate_limited"] == 2


async def test_message_flood_gets_rate_limited_then_closed(
    running_server: StartServer, raw_client: Any, ws_client: WsConnect, logs: AuditLines
) -> None:
    running = await running_server(
        security__rate_limit_enabled=True,
        security__message_rate=1,
        security__message_burst=5,
        security__flood_limit=3,
    )
    bystander = await ws_client(running)
    await bystander.subscribe(["news"])
    raw: RawClient = await raw_client(running)
    for i in range(6):
        raw.send_json({"id": f"p{i}", "action": "ping"})
    replies = [await raw.read_json() for _ in range(6)]
    assert [r["type"] for r in replies] == ["pong"] * 5 + ["error"], replies
    assert replies[5]["payload"]["code"] == "rate_limited"
    assert "1 messages per second" in replies[5]["payload"]["message"]
    for i in range(10):
        raw.send_json({"id": f"f{i}", "action": "ping"})
    code, reason = await raw.read_close()
    assert code == 1008 and "flooding" in reason
    assert running.server.stats.flood_closes == 1
    assert logs.having("aiosrv.audit", "connection closed, flooding")
    # the others are served as before
    await running.server.publish("news", {"n": 1})
    assert (await bystander.recv_type("news"))["payload"] == {"n": 1}


async def test_rate_limits_change_on_reload(running_server: StartServer, raw_client: Any) -> None:
    running = await running_server(security__message_rate=1, security__message_burst=2)
    raw: RawClient = await raw_client(running)
    for i in range(4):  # limits off: all answered
        raw.send_json({"id": f"a{i}", "action": "ping"})
    assert [(await raw.read_json())["type"] for _ in range(4)] == ["pong"] * 4
    server = running.server
    server.apply(server.config.replace(**{"security.rate_limit_enabled": True}))
    for i in range(3):
        raw.send_json({"id": f"b{i}", "action": "ping"})
    assert [(await raw.read_json())["type"] for _ in range(3)] == ["pong", "pong", "error"]


# -- handshakes RFC 6455 refuses ---------------------------------------------------------------


async def _raw_request(running: Running, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
        body = await asyncio.wait_for(reader.read(65536), RECV_TIMEOUT)
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()
        await writer.wait_closed()


def _upgrade(version: str = "1.1", extra: str = "", method: str = "GET") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"{method} /ws/realtime HTTP/{version}\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


async def test_bad_upgrade_requests_get_400_saying_why(running_server: StartServer) -> None:
    running = await running_server()
    other_key = base64.b64encode(os.urandom(16)).decode()
    for request, words in (
        (_upgrade("1.0"), b"HTTP/1.1 or later"),
        (_upgrade(extra=f"Sec-WebSocket-Key: {other_key}\r\n"), b"more than once"),
        (_upgrade(method="POST"), b"must be a GET request, not POST"),
        (b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"not POST"),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"not PUT"),
    ):
        status, body = await _raw_request(running, request)
        assert status == 400, (request, body)
        assert b"bad_handshake" in body and words in body, body


async def test_debug_logging_shows_handshakes_and_actions(
    running_server: StartServer, ws_client: WsConnect, logs: AuditLines
) -> None:
    running = await running_server(logging__level="DEBUG")
    client = await ws_client(running, user_agent_header="probe/1.0")
    await client.subscribe(["news"])
    assert logs.having("DEBUG", "handshake", "probe/1.0")
    assert logs.having("DEBUG", "Subscribe {", "'types': ('news',)")


async def test_refused_upgrade_with_websockets_client_sees_status(
    running_server: StartServer,
) -> None:
    running = await running_server(security__enable_auth=True, security__auth_token=STATIC)
    with pytest.raises(InvalidStatus) as info:
        await open_ws(running)
    assert info.value.response.status_code == 401


def test_the_shipped_production_config_turns_security_on() -> None:
    from aiosrv.config import ConfigError, load_config
    from aiosrv.server import Server

    path = Path(__file__).parents[2] / "config" / "production.yaml"
    cfg = load_config(str(path), {}, use_default_path=False)
    sec = cfg.security
    assert sec.enable_auth and sec.rate_limit_enabled and sec.max_connections_per_user == 3
    assert cfg.logging.access_log and cfg.logging.audit_log
    with pytest.raises(ConfigError, match="no credential is configured"):
        Server(cfg)
    cfg = load_config(str(path), {"AUTH_TOKEN": STATIC}, use_default_path=False)
    assert Server(cfg).policy.authenticator.enabled


@pytest.mark.parametrize("policy", ["refuse", "close_oldest"])
async def test_per_user_limit_counts_every_instance_sharing_redis(
    running_server: StartServer, redis_server: Any, policy: str
) -> None:
    settings = dict(
        broker__engine="redis",
        redis__port=redis_server.port,
        security__enable_auth=True,
        security__jwt_secret=SECRET,
        security__max_connections_per_user=2,
        security__user_limit_policy=policy,
    )
    a, b = await running_server(**settings), await running_server(**settings)
    on_a = [await open_ws(a, path=f"/ws?token={make_jwt('erin')}") for _ in range(2)]
    for client in on_a:
        await client.ping()
    # the count reaches Redis at once (not with the 2 s instance record)
    deadline = time.monotonic() + 2
    while await b.server.broker.user_connections_elsewhere("erin") < 2:
        assert time.monotonic() < deadline, "instance a's count never reached Redis"
        await asyncio.sleep(0.02)
    # on b the user has none of its own: refused either way (nothing here to close)
    status, body = await upgrade_status(b, headers={"Authorization": f"Bearer {make_jwt('erin')}"})
    assert status == 429 and "2 on other instances" in body["error"]["message"], body
    # one closes on a: b admits the next one
    await on_a[0].close()
    deadline = time.monotonic() + 2
    while await b.server.broker.user_connections_elsewhere("erin") > 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    on_b = await open_ws(b, path=f"/ws?token={make_jwt('erin')}")
    await on_b.ping()
    for client in (on_a[1], on_b):
        await client.close()


async def test_user_counts_are_written_again_after_redis_loses_them(
    running_server: StartServer, redis_server: Any
) -> None:
    settings = dict(
        broker__engine="redis",
        redis__port=redis_server.port,
        security__enable_auth=True,
        security__jwt_secret=SECRET,
        security__max_connections_per_user=1,
    )
    a, b = await running_server(**settings), await running_server(**settings)
    client = await open_ws(a, path=f"/ws?token={make_jwt('frank')}")
    await client.ping()
    redis_server.restart()  # empty: every key is gone
    deadline = time.monotonic() + 10
    while True:
        try:
            if await b.server.broker.user_connections_elsewhere("frank") == 1:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "the count was not written again"
        await asyncio.sleep(0.1)
    status, _ = await upgrade_status(b, headers={"Authorization": f"Bearer {make_jwt('frank')}"})
    assert status == 429
    await client.close()


async def test_a_token_with_bytes_that_are_not_text_is_a_401(
    running_server: StartServer, logs: AuditLines
) -> None:
    running = await running_server(security__enable_auth=True, security__auth_token=STATIC)
    key = base64.b64encode(os.urandom(16))
    status, body = await _raw_request(
        running,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer \xff\xfe" + STATIC.encode() + b"\r\n\r\n",
    )
    assert status == 401 and b"printable ASCII" in body, body
    assert logs.having("aiosrv.audit", "authentication failed")


async def test_access_log_lines_for_requests_and_upgrades(
    running_server: StartServer, http: aiohttp.ClientSession, logs: AuditLines
) -> None:
    running = await running_server(
        security__enable_auth=True, security__auth_token=STATIC, logging__access_log=True
    )
    async with http.get(running.http("/health?verbose=1")) as resp:
        assert resp.status == 200
    client = await open_ws(running, path=f"/ws/realtime?token={STATIC}")
    await client.ping()
    await upgrade_status(running)  # refused: 401
    access = [line for line in logs.lines if line.startswith("aiosrv.access ")]
    assert len(access) == 3, logs.lines
    assert '"GET /health?verbose=1 HTTP/1.1" 200 ' in access[0]
    assert access[0].split()[2] == "127.0.0.1"
    assert "127.0.0.1 - token [" in access[1]
    assert '"GET /ws/realtime?token=*** HTTP/1.1" 101 0 ' in access[1]
    assert '"GET /ws/realtime HTTP/1.1" 401 ' in access[2]
    assert not logs.having(STATIC)
    await client.close()
    # off (the default), and live on reload
    running.server.apply(running.server.config.replace(**{"logging.access_log": False}))
    async with http.get(running.http("/health")) as resp:
        assert resp.status == 200
    assert len([line for line in logs.lines if line.startswith("aiosrv.access ")]) == 3


def test_start_up_warnings_for_an_exposed_server_without_credentials() -> None:
    from aiosrv.auth import exposure_warnings

    assert exposure_warnings(False, False, "127.0.0.1", "::1") == []
    assert exposure_warnings(True, True, "0.0.0.0", "0.0.0.0") == []
    notes = exposure_warnings(False, False, "0.0.0.0", "10.1.2.3")
    assert len(notes) == 2
    assert "authentication is off" in notes[0] and "0.0.0.0" in notes[0]
    assert "api.token is unset" in notes[1] and "only loopback callers" in notes[1]
    assert exposure_warnings(True, False, "0.0.0.0", "localhost") == []


async def test_socket_send_buffer_caps_the_kernel_queue_of_each_connection(
    running_server: StartServer, ws_client: WsConnect
) -> None:
    import socket

    running = await running_server(websocket__socket_send_buffer=65536)
    await ws_client(running)
    (conn,) = running.server.connections.values()
    sock = conn.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536  # Linux doubles
    running.server.apply(running.server.config.replace(**{"websocket.socket_send_buffer": 0}))
    await ws_client(running)
    newer = next(c for c in running.server.connections.values() if c is not conn)
    autotuned = newer.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    assert autotuned.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) != 2 * 65536


def test_audit_lines_of_one_event_are_bounded_per_second(logs: AuditLines) -> None:
    from aiosrv import logs as logs_module
    from aiosrv.logs import AUDIT_LINES_PER_SECOND, audit

    logs_module._audit_window.clear()  # other tests' lines in this second count too
    while time.monotonic() % 1 > 0.5:  # begin early in a second: the burst fits in it
        time.sleep(0.01)
    for i in range(AUDIT_LINES_PER_SECOND + 30):
        audit(True, logging.WARNING, "authentication failed", addr="203.0.113.1", n=i)
    audit(True, logging.WARNING, "origin refused", addr="203.0.113.1")  # its own budget
    assert len(logs.having("authentication failed: addr=")) == AUDIT_LINES_PER_SECOND
    assert len(logs.having("origin refused: addr=")) == 1
    time.sleep(1.05)
    audit(True, logging.WARNING, "authentication failed", addr="203.0.113.1", n="late")
    assert logs.having("authentication failed: 30 more lines held back")
    assert logs.having("authentication failed: addr=203.0.113.1 n=late")
