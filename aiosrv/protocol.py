"""The client protocol of ``docs/protocol.md``, without any I/O.

Text goes in (:func:`parse_request`), typed requests come out; replies and data
messages come out of the ``encode_*`` functions as JSON bytes, ready to be
framed by the fan-out core. Nothing here imports asyncio, aiohttp or redis, so
the whole contract is testable without sockets.

A publication's payload is decoded once (with the request that carries it) and
encoded once, into its data message (:func:`encode_data`); those bytes are
reused for every subscriber, for history replies and for recovery:
``orjson.Fragment`` splices already-encoded JSON into a reply without decoding
it again.
"""

from __future__ import annotations

import reprlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import (
    MAX_KEY_LENGTH,
    MAX_TYPE_LENGTH,
    RESERVED_TYPES,
    ClientError,
    InvalidJSON,
    InvalidMessage,
    ReservedType,
    UnknownAction,
)

ACTIONS = ("subscribe", "unsubscribe", "ping", "history", "publish", "refresh")


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, the contract's ``timestamp``."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: str | None
    types: tuple[str, ...]
    keys: dict[str, tuple[str, ...]]
    since: dict[str, int]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: str | None
    types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | None


@dataclass(frozen=True, slots=True)
class History:
    id: str | None
    type: str
    limit: int | None
    since: int | None


@dataclass(frozen=True, slots=True)
class Publish:
    id: str | None
    type: str
    payload: Any  # the payload as decoded; encoded once, into its data message
    key: str | None


@dataclass(frozen=True, slots=True)
class Refresh:
    """A new token for the same user, before the connection's expires."""

    id: str | None
    token: str = field(repr=False)


Request = Subscribe | Unsubscribe | Ping | History | Publish | Refresh


# -- validation helpers -------------------------------------------------------


def check_type(value: Any, where: str, request_id: str | None = None) -> str:
    """Return ``value`` if it is a usable type name, else raise the error to send."""
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{where} must be a non-empty string, got {_show(value)}", request_id)
    if len(value) > MAX_TYPE_LENGTH:
        raise InvalidMessage(
            f"{where} is {len(value)} characters long; the limit is {MAX_TYPE_LENGTH}", request_id
        )
    if value in RESERVED_TYPES:
        raise ReservedType(f"type {value!r} is reserved for the server's error replies", request_id)
    return value


def check_key(value: Any, where: str, request_id: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{where} must be a non-empty string, got {_show(value)}", request_id)
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidMessage(
            f"{where} is {len(value)} characters long; the limit is {MAX_KEY_LENGTH}", request_id
        )
    return value


def _check_seq(value: Any, where: str, request_id: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessage(f"{where} must be an integer >= 0, got {_show(value)}", request_id)
    return value


def _bounded_repr(maxlevel: int, size: int) -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel = maxlevel  # a value nested a thousand deep is shown as [[[...]]]
    r.maxstring = r.maxother = r.maxlong = size
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 8
    return r


_SHOW = _bounded_repr(3, 200)  # then cut to 60, from the end
_DESCRIBE = _bounded_repr(4, 120)


def _show(value: Any) -> str:
    """A client's value in an error message: short, and safe at any depth."""
    text = _SHOW.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(req: Request) -> str:
    """A request for a DEBUG line: its kind and fields (a token never), bounded."""
    fields = {
        name: getattr(req, name) for name in req.__dataclass_fields__ if name != "token"
    }
    return f"{type(req).__name__} {_DESCRIBE.repr(fields)}"


def encode_payload(payload: Any) -> bytes:
    """A publication's payload as JSON, or :class:`InvalidMessage` saying why
    it cannot be (nested deeper than the encoder goes, 254 levels; an integer
    beyond 64 bits). Engines encode before they number a publication, so a
    refused payload never takes a ``seq``."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise InvalidMessage(f"payload cannot be encoded as JSON: {exc}") from None


def _types_list(payload: dict[str, Any], request_id: str | None) -> tuple[str, ...]:
    types = payload.get("types")
    if not isinstance(types, list) or not types:
        raise InvalidMessage(
            f"payload.types must be a non-empty list of type names, got {_show(types)}", request_id
        )
    out: dict[str, None] = {}
    for i, t in enumerate(types):
        out[check_type(t, f"payload.types[{i}]", request_id)] = None
    return tuple(out)


# -- parsing ---------------------------------------------------------------------


def parse_request(text: str | bytes) -> Request:
    """Parse one client frame into a request, or raise the :class:`ClientError` to reply.

    The error carries the request's ``id`` whenever the frame was JSON with a
    string ``id``, so the client can match the error to what it sent.
    """
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise InvalidMessage(f"message must be a JSON object, got {type(msg).__name__}")
    rid = msg.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidMessage(f"id must be a string when present, got {_show(rid)}")
    action = msg.get("action")
    if action is None:
        raise InvalidMessage("message has no 'action'; expected one of " + ", ".join(ACTIONS), rid)
    if not isinstance(action, str):
        raise InvalidMessage(f"action must be a string, got {_show(action)}", rid)
    payload = msg.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise InvalidMessage(f"payload must be a JSON object, got {_show(payload)}", rid)

    if action == "subscribe":
        return _parse_subscribe(rid, payload)
    if action == "unsubscribe":
        return Unsubscribe(rid, _types_list(payload, rid))
    if action == "ping":
        return Ping(rid)
    if action == "history":
        return _parse_history(rid, payload)
    if action == "publish":
        return _parse_publish(rid, payload)
    if action == "refresh":
        token = payload.get("token")
        if not isinstance(token, str) or not token:
            raise InvalidMessage("payload.token must be the new token, a non-empty string", rid)
        return Refresh(rid, token)
    raise UnknownAction(
        f"unknown action {_show(action)}; expected one of " + ", ".join(ACTIONS), rid
    )


def _parse_subscribe(rid: str | None, payload: dict[str, Any]) -> Subscribe:
    types = _types_list(payload, rid)
    keys: dict[str, tuple[str, ...]] = {}
    raw_keys = payload.get("keys")
    if raw_keys is not None:
        if not isinstance(raw_keys, dict):
            raise InvalidMessage(
                f"payload.keys must be an object {{type: [key, ...]}}, got {_show(raw_keys)}", rid
            )
        for t, ks in raw_keys.items():
            if t not in types:
                raise InvalidMessage(
                    f"payload.keys names type {t!r}, which is not in payload.types", rid
                )
            if not isinstance(ks, list) or not ks:
                raise InvalidMessage(
                    f"payload.keys[{t!r}] must be a non-empty list of keys, got {_show(ks)}", rid
                )
            keys[t] = tuple(
                dict.fromkeys(
                    check_key(k, f"payload.keys[{t!r}][{i}]", rid) for i, k in enumerate(ks)
                )
            )
    since: dict[str, int] = {}
    raw_since = payload.get("since")
    if raw_since is not None:
        if not isinstance(raw_since, dict):
            raise InvalidMessage(
                f"payload.since must be an object {{type: seq}}, got {_show(raw_since)}", rid
            )
        for t, seq in raw_since.items():
            if t not in types:
                raise InvalidMessage(
                    f"payload.since names type {t!r}, which is not in payload.types", rid
                )
            since[t] = _check_seq(seq, f"payload.since[{t!r}]", rid)
    return Subscribe(rid, types, keys, since)


def _parse_history(rid: str | None, payload: dict[str, Any]) -> History:
    type_ = check_type(payload.get("type"), "payload.type", rid)
    limit = payload.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidMessage(f"payload.limit must be an integer >= 1, got {_show(limit)}", rid)
    since = payload.get("since")
    if since is not None:
        since = _check_seq(since, "payload.since", rid)
    return History(rid, type_, limit, since)


def _parse_publish(rid: str | None, payload: dict[str, Any]) -> Publish:
    type_ = check_type(payload.get("type"), "payload.type", rid)
    if "payload" not in payload:
        raise InvalidMessage("payload.payload is missing: publish needs the data to send", rid)
    key = payload.get("key")
    if key is not None:
        key = check_key(key, "payload.key", rid)
    return Publish(rid, type_, payload["payload"], key)


def parse_publication(item: Any, where: str = "body") -> tuple[str, Any, str | None]:
    """Validate one ``{"type", "payload", "key"?}`` object of ``POST /api/publish``:
    ``(type, payload, key)``, the payload as decoded, type and key checked."""
    if not isinstance(item, dict):
        raise InvalidMessage(
            f"{where} must be an object {{type, payload, key?}}, got {_show(item)}"
        )
    unknown = set(item) - {"type", "payload", "key"}
    if unknown:
        raise InvalidMessage(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    type_ = check_type(item.get("type"), f"{where}.type")
    if "payload" not in item:
        raise InvalidMessage(f"{where}.payload is missing")
    key = item.get("key")
    if key is not None:
        key = check_key(key, f"{where}.key")
    return type_, item["payload"], key


# -- encoding -------------------------------------------------------------------


def encode_data(type_: str, seq: int, timestamp: int, payload: Any, key: str | None) -> bytes:
    """The data message for one publication, encoded once for every receiver.

    ``payload`` is a JSON value, or ``bytes`` already holding JSON (spliced in
    verbatim, not checked)."""
    msg: dict[str, Any] = {
        "id": f"{type_}:{seq}",
        "type": type_,
        "timestamp": timestamp,
        "seq": seq,
    }
    if key is not None:
        msg["key"] = key
    msg["payload"] = orjson.Fragment(payload) if isinstance(payload, bytes) else payload
    return orjson.dumps(msg)


def encode_reply(kind: str, request_id: str | None, payload: dict[str, Any]) -> bytes:
    """An ``ack``, ``pong`` or ``history`` reply."""
    return orjson.dumps({"type": kind, "id": request_id, "timestamp": now_ms(), "payload": payload})


def encode_error(error: ClientError) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "id": error.request_id,
            "timestamp": now_ms(),
            "payload": {"code": error.code, "message": error.message},
        }
    )


def encode_history(
    request_id: str | None, type_: str, messages: list[bytes], extra: dict[str, Any] | None = None
) -> bytes:
    """A ``history`` reply whose messages are spliced in as already-encoded JSON."""
    payload: dict[str, Any] = {"type": type_, **(extra or {})}
    payload["messages"] = [orjson.Fragment(m) for m in messages]
    return encode_reply("history", request_id, payload)


def http_error_body(error: ClientError) -> bytes:
    return orjson.dumps({"error": {"code": error.code, "message": error.message}})
