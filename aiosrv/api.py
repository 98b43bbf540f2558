"""HTTP API and admin routes (JSON in, JSON out).

``/health``, ``/status``, ``/stats``, ``/config``, ``/ws/stats``, ``/ws/queue``,
``POST /api/publish``, ``POST /admin/reload-config``, ``POST /admin/gc``,
``GET /admin/gc-stats`` and ``/metrics``.

Access: when ``api.token`` is set, publish and the admin routes need
``Authorization: Bearer <api.token>``; without one they answer only loopback
callers (the client's address, as trusted proxies report it). With
authentication on, ``POST /api/publish`` also takes a user's JWT as the
bearer, limited to the types its ``publish`` claim allows. Nobody publishes
to the built-in types (``status``, ``stats``, ``health``). Admin calls and
refusals are audit lines (the access log is :mod:`aiosrv.access`).
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .auth import AuthFailed, Principal, is_loopback, same_secret
from .errors import (
    BUILTIN_TYPES,
    ClientError,
    Forbidden,
    InvalidJSON,
    InvalidMessage,
    Unauthorized,
)
from .keys import REGISTRY, SERVER
from .logs import audit
from .protocol import encode_payload, http_error_body, parse_publication
from .stats import (
    connections_snapshot,
    health_snapshot,
    stats_snapshot,
    status_snapshot,
)

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("aiosrv.api")

#: Most messages one ``POST /api/publish`` may carry.
MAX_PUBLISH_BATCH = 1000


def _server(request: web.Request) -> Server:
    return request.app[SERVER]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def error_response(error: ClientError) -> web.Response:
    return web.Response(
        body=http_error_body(error), status=error.http_status, content_type="application/json"
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    return given.strip() or None if scheme.lower() == "bearer" else None


def _check_token(request: web.Request, jwt_ok: bool = False) -> Principal | None:
    """Let the call through (None: with full rights; a principal: a JWT user,
    limited to its permissions) or raise the refusal.

    With ``api.token`` set the caller must send it as the bearer; without, only
    loopback callers get in. ``jwt_ok``: with auth on, a valid JWT also gets in.
    """
    server = _server(request)
    token = server.config.api.token
    given = _bearer(request)
    address = server.client_address(request.transport, request.headers)
    if token and given is not None and same_secret(given, token):
        return None
    if not token and given is None and is_loopback(address):
        return None
    authenticator = server.policy.authenticator
    if jwt_ok and authenticator.enabled and given is not None and given != token:
        try:
            return authenticator.authenticate(given)
        except AuthFailed as exc:
            _audit_refusal(request, address, f"authentication failed: {exc.reason}")
            raise Unauthorized(f"authentication failed: {exc.reason}") from None
    if token:
        _audit_refusal(request, address, "missing or wrong api token")
        raise Unauthorized(
            "this endpoint needs 'Authorization: Bearer <token>' with the configured api.token"
        )
    _audit_refusal(request, address, "not a loopback caller and no api.token is configured")
    raise Forbidden(
        f"{request.path} answers only loopback callers when api.token is unset; "
        "configure API_TOKEN on the server and send it as 'Authorization: Bearer <token>'"
    )


def _audit_refusal(request: web.Request, address: str, reason: str) -> None:
    audit(_server(request).config.logging.audit_log, logging.WARNING, "api access refused",
          addr=address, method=request.method, path=request.path, reason=reason)  # fmt: skip


def _encoded(payload: Any, where: str) -> bytes:
    try:
        return encode_payload(payload)
    except InvalidMessage as exc:
        raise InvalidMessage(f"{where}: {exc.message}") from None


def _check_publishable(types: list[str], principal: Principal | None) -> None:
    for type_ in types:
        if type_ in BUILTIN_TYPES:
            raise Forbidden(
                f"type {type_!r} is one of the server's built-in types; only the server "
                "publishes to it"
            )
        if principal is not None and not principal.publish.allows(type_):
            raise Forbidden(
                f"user {principal.user!r} may not publish to {type_!r} (not in its permissions)"
            )


async def health(request: web.Request) -> web.Response:
    snap = health_snapshot(_server(request))
    return json_response(snap, 200 if snap["status"] == "healthy" else 503)


async def status(request: web.Request) -> web.Response:
    return json_response(status_snapshot(_server(request)))


async def stats(request: web.Request) -> web.Response:
    server = _server(request)
    server.sampler.sample()
    snap = stats_snapshot(server)
    snap["cluster"] = await server.cluster()
    return json_response(snap)


async def config(request: web.Request) -> web.Response:
    server = _server(request)
    cfg = server.config
    body = cfg.to_dict(redact=True)
    body["heartbeat"] = {
        "interval": cfg.websocket.heartbeat_interval,
        "timeout": cfg.websocket.heartbeat_timeout,
    }
    body["source_path"] = cfg.source_path
    return json_response(body)


async def ws_stats(request: web.Request) -> web.Response:
    server = _server(request)
    server.sampler.sample()
    snap = connections_snapshot(server)
    snap["closing"] = len(server.closing_connections)
    snap["draining"] = server.draining
    cluster = await server.cluster()
    snap["cluster"] = {
        "instances": cluster["count"],
        "active_connections": cluster["totals"]["connections"],
        "subscriptions": cluster["totals"]["subscriptions"],
        **({"error": cluster["error"]} if "error" in cluster else {}),
    }
    return json_response(snap)


async def ws_queue(request: web.Request) -> web.Response:
    server = _server(request)
    snap = server.hub.queue_stats()
    snap["broker"] = server.broker.stats()
    return json_response(snap)


async def publish(request: web.Request) -> web.Response:
    server = _server(request)
    try:
        principal = _check_token(request, jwt_ok=True)
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
        if isinstance(body, list):
            if not body:
                raise InvalidMessage("body is an empty list; send at least one message")
            if len(body) > MAX_PUBLISH_BATCH:
                raise InvalidMessage(
                    f"body lists {len(body)} messages; at most {MAX_PUBLISH_BATCH} per request"
                )
            items = [parse_publication(item, f"body[{i}]") for i, item in enumerate(body)]
            _check_publishable([t for t, _, _ in items], principal)
            # encoded here, once: a payload that cannot be refuses the whole
            # batch before any of it is published
            items = [
                (t, _encoded(p, f"body[{i}].payload"), k) for i, (t, p, k) in enumerate(items)
            ]
            pubs = await server.hub.publish_many(items)
            server.stats.published_http += len(pubs)
            return json_response({"seq": [p.seq for p in pubs]}, 202)
        type_, payload, key = parse_publication(body)
        _check_publishable([type_], principal)
        pub = await server.hub.publish_checked(type_, payload, key)
        server.stats.published_http += 1
        return json_response({"seq": pub.seq}, 202)
    except ClientError as exc:
        server.stats.count_error(exc.code)
        return error_response(exc)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def token_required(handler: Handler) -> Handler:
    """Refuse the call with 401 unless it carries the configured api.token."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        server = _server(request)
        try:
            _check_token(request)
        except ClientError as exc:
            server.stats.count_error(exc.code)
            return error_response(exc)
        audit(server.config.logging.audit_log, logging.INFO, "admin call",
              addr=server.client_address(request.transport, request.headers), method=request.method,
              path=request.path)  # fmt: skip
        return await handler(request)

    return checked


@token_required
async def reload_config(request: web.Request) -> web.Response:
    server = _server(request)
    log.info("config reload requested over HTTP from %s", request.remote)
    result = server.reload()
    return json_response(result.as_dict(), 200 if result.ok else 400)


def _gc_stats() -> dict[str, Any]:
    return {
        "enabled": gc.isenabled(),
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "generations": gc.get_stats(),
        "objects": len(gc.get_objects()),
        "garbage": len(gc.garbage),
        "frozen": gc.get_freeze_count(),
    }


@token_required
async def gc_collect(request: web.Request) -> web.Response:
    server = _server(request)
    server.sampler.sample(force=True)
    rss_before = server.sampler.rss
    t0 = time.perf_counter()
    collected = [gc.collect(gen) for gen in (0, 1, 2)]
    elapsed = time.perf_counter() - t0
    server.sampler.sample(force=True)
    log.info("memory: gc collected %s objects in %.1f ms", collected, elapsed * 1000)
    return json_response(
        {
            "collected": sum(collected),
            "collected_by_generation": collected,
            "duration_ms": round(elapsed * 1000, 2),
            "rss_before_mb": round(rss_before / 1048576, 1),
            "rss_after_mb": round(server.sampler.rss / 1048576, 1),
            "gc": _gc_stats(),
        }
    )


@token_required
async def gc_stats(request: web.Request) -> web.Response:
    server = _server(request)
    body = _gc_stats()
    server.sampler.sample()
    body["rss_mb"] = round(server.sampler.rss / 1048576, 1)
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    from .metrics import CONTENT_TYPE_LATEST, render

    resp = web.Response(body=render(request.app[REGISTRY]))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


API_ROUTES = [
    web.get("/health", health),
    web.get("/status", status),
    web.get("/stats", stats),
    web.get("/config", config),
    web.get("/ws/stats", ws_stats),
    web.get("/ws/queue", ws_queue),
    web.post("/api/publish", publish),
    web.post("/admin/reload-config", reload_config),
    web.post("/admin/gc", gc_collect),
    web.get("/admin/gc-stats", gc_stats),
]

METRICS_ROUTES = [web.get("/metrics", metrics)]
