"""Property-based tests (hypothesis) of what parses client input: the request
parser, the publication and type/key validators, and the upgrade check.

Whatever a client sends, the parser answers with a request or with one of the
:class:`ClientError` kinds the contract knows (never another exception, which
would close the connection with 1011 instead of replying), and the error
carries the request's string ``id`` so the client can match it. Valid requests
come out as the right dataclass with the right fields.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from aiosrv.errors import (
    MAX_KEY_LENGTH,
    MAX_TYPE_LENGTH,
    ClientError,
    InvalidJSON,
    InvalidMessage,
    ReservedType,
    UnknownAction,
)
from aiosrv.handshake import BadHandshake, NotAnUpgrade, accept_key, check_upgrade
from aiosrv.protocol import (
    ACTIONS,
    History,
    Ping,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    check_key,
    check_type,
    encode_error,
    parse_publication,
    parse_request,
)

#: The error kinds parse_request may raise, and nothing else.
PARSE_ERRORS = (InvalidJSON, InvalidMessage, UnknownAction, ReservedType)
REQUEST_TYPES = (Subscribe, Unsubscribe, Ping, History, Publish, Refresh)

# -- strategies --------------------------------------------------------------------------

#: What orjson reads and writes: 64-bit integers (signed or unsigned), finite floats.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _run(n: int, ch: str) -> str:
    return ch * n


#: Strings around the length limits.
long_types = st.builds(
    _run, st.integers(MAX_TYPE_LENGTH - 1, MAX_TYPE_LENGTH + 1), st.sampled_from("ab")
)
long_keys = st.builds(
    _run, st.integers(MAX_KEY_LENGTH - 1, MAX_KEY_LENGTH + 1), st.sampled_from("kx")
)
#: Type-ish values: short names from a tiny alphabet (so that keys/since name
#: listed types often), the reserved name, long names, the empty string and
#: anything else JSON.
type_like = st.one_of(st.text("ab", max_size=2), st.just("error"), long_types, json_values)
key_like = st.one_of(st.text("kx", max_size=2), long_keys, json_values)
seq_like = st.one_of(st.integers(-2, 5), st.integers(-2, 2**64 - 1), st.booleans(), json_values)

short_types = st.text("ab", min_size=1, max_size=2)
short_keys = st.text("kx", min_size=1, max_size=2)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` four times in five, else ``other``."""
    return st.integers(0, 4).flatmap(lambda roll: usual if roll else other)


key_lists = st.lists(st.one_of(short_keys, short_keys, key_like), min_size=1, max_size=3)
payload_fields = {
    "types": mostly(
        st.lists(st.one_of(short_types, short_types, type_like), min_size=1, max_size=4),
        json_values,
    ),
    "keys": mostly(
        st.dictionaries(short_types, mostly(key_lists, json_values), max_size=3), json_values
    ),
    "since": mostly(st.dictionaries(short_types, seq_like, max_size=3), json_values),
    "type": mostly(short_types, type_like),
    "limit": mostly(st.integers(-1, 5), seq_like),
    "payload": json_values,
    "key": mostly(short_keys, key_like),
    "token": mostly(st.text(min_size=1, max_size=10), json_values),
}


@st.composite
def payload_like(draw: st.DrawFn) -> dict[str, Any]:
    """Payload objects mixing every action's fields, mostly well-typed."""
    payload: dict[str, Any] = {}
    for name, strategy in payload_fields.items():
        if draw(st.integers(0, 3 if name == "types" else 1)):
            payload[name] = draw(strategy)
    return payload


@st.composite
def subscribe_payload(draw: st.DrawFn) -> dict[str, Any]:
    """A subscribe payload whose keys and since mostly name its own types."""
    types = draw(st.lists(mostly(short_types, type_like), min_size=1, max_size=4))
    listed = [t for t in types if isinstance(t, str)] or ["a"]
    names = st.one_of(st.sampled_from(listed), st.sampled_from(listed), short_types)
    payload: dict[str, Any] = {"types": types}
    if draw(st.booleans()):
        payload["keys"] = draw(
            mostly(st.dictionaries(names, mostly(key_lists, json_values), max_size=3), json_values)
        )
    if draw(st.booleans()):
        payload["since"] = draw(mostly(st.dictionaries(names, seq_like, max_size=3), json_values))
    return payload


@st.composite
def history_payload(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": draw(mostly(short_types, type_like))}
    for name in ("limit", "since"):
        if draw(st.booleans()):
            payload[name] = draw(seq_like)
    return payload


@st.composite
def publish_payload(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": draw(mostly(short_types, type_like))}
    if draw(st.integers(0, 4)):
        payload["payload"] = draw(json_values)
    if draw(st.booleans()):
        payload["key"] = draw(mostly(short_keys, key_like))
    return payload


ACTION_PAYLOADS = {
    "subscribe": subscribe_payload,
    "history": history_payload,
    "publish": publish_payload,
}


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    """Objects shaped like requests, mostly with a string id and a known action
    (so that the checks of each action's payload are reached), sometimes not.
    (Weights by a drawn roll: st.one_of drops repeated branches.)"""
    msg: dict[str, Any] = {}
    roll = draw(st.integers(0, 9))
    if roll < 6:
        msg["id"] = draw(st.text(max_size=8))
    elif roll < 8:
        msg["id"] = draw(json_values)
    roll = draw(st.integers(0, 9))
    if roll < 7:
        msg["action"] = draw(st.sampled_from(ACTIONS))
    elif roll < 9:
        msg["action"] = draw(st.one_of(st.text(max_size=10), json_values))
    action = msg.get("action")
    shaped = ACTION_PAYLOADS.get(action) if isinstance(action, str) else None
    roll = draw(st.integers(0, 9))
    if roll < 5 and shaped is not None:
        msg["payload"] = draw(shaped())
    elif roll < 8:
        msg["payload"] = draw(payload_like())
    elif roll < 9:
        msg["payload"] = draw(json_values)
    if draw(st.booleans()):  # browsers send these envelope fields; ignored
        msg.update(
            draw(
                st.fixed_dictionaries({}, optional={"type": json_values, "timestamp": json_values})
            )
        )
    return msg


valid_types = st.text(min_size=1, max_size=MAX_TYPE_LENGTH).filter(lambda t: t != "error")
valid_keys = st.text(min_size=1, max_size=MAX_KEY_LENGTH)
ids = st.one_of(st.none(), st.text(max_size=12))
u63 = st.integers(min_value=0, max_value=2**63 - 1)


def _id_field(rid: str | None, draw_absent: bool) -> dict[str, Any]:
    if rid is None and draw_absent:
        return {}
    return {"id": rid}


# -- helpers -------------------------------------------------------------------------------


def outcome(data: str | bytes) -> Any:
    """The request parsed, or the error raised, checking that the error is one
    the contract knows and that it can be sent as an error frame."""
    try:
        return parse_request(data)
    except ClientError as exc:
        assert type(exc) in PARSE_ERRORS, f"unexpected error kind {type(exc).__name__}"
        assert isinstance(exc.message, str) and exc.message
        frame = orjson.loads(encode_error(exc))
        assert frame["type"] == "error" and frame["id"] == exc.request_id
        return exc


def expected_request_id(msg: Any) -> str | None:
    if isinstance(msg, dict) and isinstance(msg.get("id"), str):
        return msg["id"]
    return None


def same(a: Any, b: Any) -> bool:
    """Two outcomes are the same request, or errors of the same kind for the same id."""
    if isinstance(a, ClientError) or isinstance(b, ClientError):
        return type(a) is type(b) and a.request_id == b.request_id and a.message == b.message
    return bool(a == b)


# -- parse_request: never anything but a ClientError -----------------------------------


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_a_client_error(data: bytes) -> None:
    result = outcome(data)
    assert isinstance(result, REQUEST_TYPES + PARSE_ERRORS)


# lone surrogates included: a str frame that is not valid Unicode is InvalidJSON too
@settings(deadline=None)
@given(st.text(st.characters() | st.characters(categories=["Cs"]), max_size=100))
def test_arbitrary_text_parses_or_raises_a_client_error(text: str) -> None:
    result = outcome(text)
    assert isinstance(result, REQUEST_TYPES + PARSE_ERRORS)


@settings(deadline=None)
@given(json_values)
def test_any_json_value_is_never_invalid_json_and_keeps_its_id(value: Any) -> None:
    result = outcome(orjson.dumps(value))
    assert not isinstance(result, InvalidJSON)
    if isinstance(result, ClientError):
        assert result.request_id == expected_request_id(value)
    else:
        assert isinstance(value, dict) and result.id == value.get("id")


@settings(max_examples=300, deadline=None)
@given(request_like())
def test_request_shaped_objects_keep_their_id_in_every_error(msg: dict[str, Any]) -> None:
    result = outcome(orjson.dumps(msg))
    rid = expected_request_id(msg)
    if isinstance(result, ClientError):
        assert not isinstance(result, InvalidJSON)
        assert result.request_id == rid
        if "id" in msg and msg["id"] is not None and rid is None:
            assert isinstance(result, InvalidMessage)  # a non-string id is refused as such
        return
    # accepted: the id was a string or absent, the action a known one, and
    # everything that came out passed the validators
    assert result.id == rid
    assert msg["action"] in ACTIONS
    if isinstance(result, (Subscribe, Unsubscribe)):
        assert result.types and len(set(result.types)) == len(result.types)
        for t in result.types:
            assert check_type(t, "t") == t
            assert t in msg["payload"]["types"]
    if isinstance(result, Subscribe):
        assert set(result.keys) <= set(result.types)
        assert set(result.since) <= set(result.types)
        for ks in result.keys.values():
            assert ks and all(check_key(k, "k") == k for k in ks)
        for seq in result.since.values():
            assert type(seq) is int and seq >= 0
    if isinstance(result, History):
        assert check_type(result.type, "t") == result.type
        assert result.limit is None or (type(result.limit) is int and result.limit >= 1)
        assert result.since is None or (type(result.since) is int and result.since >= 0)
    if isinstance(result, Publish):
        assert check_type(result.type, "t") == result.type
        assert result.key is None or check_key(result.key, "k") == result.key
        assert result.payload == msg["payload"]["payload"]
    if isinstance(result, Refresh):
        assert isinstance(result.token, str) and result.token


@settings(max_examples=150, deadline=None)
@given(request_like())
def test_the_json_spelling_does_not_matter(msg: dict[str, Any]) -> None:
    """Compact orjson, indented ASCII-escaped json and str vs bytes all parse alike."""
    compact = orjson.dumps(msg)
    pretty = json.dumps(msg, indent=2, ensure_ascii=True)
    a = outcome(compact)
    assert same(a, outcome(pretty))
    assert same(a, outcome(compact.decode()))


@settings(deadline=None)
@given(st.one_of(st.text(max_size=12), json_values).filter(lambda a: a not in ACTIONS), ids)
def test_unknown_actions_are_unknown_action_errors_with_the_id(
    action: Any, rid: str | None
) -> None:
    result = outcome(orjson.dumps({"id": rid, "action": action, "payload": {}}))
    assert isinstance(result, ClientError) and result.request_id == rid
    # a missing (null) or non-string action is malformed; a string one is unknown
    assert type(result) is (UnknownAction if isinstance(action, str) else InvalidMessage)


# -- parse_request: valid requests round-trip -----------------------------------------------


@st.composite
def subscribe_requests(draw: st.DrawFn) -> tuple[dict[str, Any], Subscribe]:
    types = draw(st.lists(valid_types, min_size=1, max_size=5))
    # duplicates: the parser keeps the first of each, in order
    types = types + draw(st.lists(st.sampled_from(types), max_size=3))
    payload: dict[str, Any] = {"types": types}
    keys: dict[str, list[str]] = {}
    since: dict[str, int] = {}
    for t in dict.fromkeys(types):
        if draw(st.booleans()):
            ks = draw(st.lists(valid_keys, min_size=1, max_size=4))
            keys[t] = ks + draw(st.lists(st.sampled_from(ks), max_size=2))
        if draw(st.booleans()):
            since[t] = draw(u63)
    if keys or draw(st.booleans()):
        payload["keys"] = keys if keys or draw(st.booleans()) else None
    if since or draw(st.booleans()):
        payload["since"] = since if since or draw(st.booleans()) else None
    rid = draw(ids)
    msg = {**_id_field(rid, draw(st.booleans())), "action": "subscribe", "payload": payload}
    expected = Subscribe(
        rid,
        tuple(dict.fromkeys(types)),
        {t: tuple(dict.fromkeys(ks)) for t, ks in keys.items()},
        dict(since),
    )
    return msg, expected


@settings(deadline=None)
@given(subscribe_requests())
def test_valid_subscribes_round_trip(case: tuple[dict[str, Any], Subscribe]) -> None:
    msg, expected = case
    assert parse_request(orjson.dumps(msg)) == expected


ABSENT = object()
maybe_seq = st.one_of(st.just(ABSENT), st.none(), seq_like)


def _is_count(value: Any, least: int) -> bool:
    return type(value) is int and value >= least  # bool is not a count


@settings(deadline=None)
@given(valid_types, maybe_seq, maybe_seq, ids)
def test_history_limit_and_since_are_checked(
    type_: str, limit: Any, since: Any, rid: str | None
) -> None:
    payload: dict[str, Any] = {"type": type_}
    for name, value in (("limit", limit), ("since", since)):
        if value is not ABSENT:
            payload[name] = value
    limit = None if limit is ABSENT else limit
    since = None if since is ABSENT else since
    result = outcome(orjson.dumps({"id": rid, "action": "history", "payload": payload}))
    if (limit is None or _is_count(limit, 1)) and (since is None or _is_count(since, 0)):
        assert result == History(rid, type_, limit, since)
    else:
        assert type(result) is InvalidMessage and result.request_id == rid


@settings(deadline=None)
@given(st.lists(short_types, min_size=1, max_size=3, unique=True), st.data(), ids)
def test_subscribe_since_values_are_checked(
    types: list[str], data: st.DataObject, rid: str | None
) -> None:
    since = data.draw(st.dictionaries(st.sampled_from(types), seq_like, max_size=3))
    msg = {"id": rid, "action": "subscribe", "payload": {"types": types, "since": since}}
    result = outcome(orjson.dumps(msg))
    if all(_is_count(seq, 0) for seq in since.values()):
        assert result == Subscribe(rid, tuple(types), {}, since)
    else:
        assert type(result) is InvalidMessage and result.request_id == rid


@settings(deadline=None)
@given(st.lists(valid_types, min_size=1, max_size=6), ids)
def test_valid_unsubscribes_round_trip(types: list[str], rid: str | None) -> None:
    msg = {"id": rid, "action": "unsubscribe", "payload": {"types": types}}
    assert parse_request(orjson.dumps(msg)) == Unsubscribe(rid, tuple(dict.fromkeys(types)))


@settings(deadline=None)
@given(
    valid_types,
    st.one_of(st.none(), st.integers(1, 2**63 - 1)),
    st.one_of(st.none(), u63),
    ids,
    st.booleans(),
)
def test_valid_history_requests_round_trip(
    type_: str, limit: int | None, since: int | None, rid: str | None, explicit_null: bool
) -> None:
    payload: dict[str, Any] = {"type": type_}
    if limit is not None or explicit_null:
        payload["limit"] = limit
    if since is not None or explicit_null:
        payload["since"] = since
    msg = {"id": rid, "action": "history", "payload": payload}
    assert parse_request(orjson.dumps(msg)) == History(rid, type_, limit, since)


@settings(deadline=None)
@given(valid_types, json_values, st.one_of(st.none(), valid_keys), ids, st.booleans())
def test_valid_publishes_round_trip(
    type_: str, data: Any, key: str | None, rid: str | None, explicit_null: bool
) -> None:
    payload: dict[str, Any] = {"type": type_, "payload": data}
    if key is not None or explicit_null:
        payload["key"] = key
    req = parse_request(orjson.dumps({"id": rid, "action": "publish", "payload": payload}))
    assert req == Publish(rid, type_, data, key)


@settings(deadline=None)
@given(st.text(min_size=1, max_size=300), ids)
def test_valid_refreshes_round_trip(token: str, rid: str | None) -> None:
    req = parse_request(orjson.dumps({"id": rid, "action": "refresh", "payload": {"token": token}}))
    assert isinstance(req, Refresh) and req.token == token and req.id == rid
    assert repr(req) == f"Refresh(id={rid!r})"  # the token never shows in a log of it


@settings(deadline=None)
@given(ids, st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_values, max_size=3)))
def test_pings_round_trip_whatever_their_payload_object(rid: str | None, payload: Any) -> None:
    msg: dict[str, Any] = {"id": rid, "action": "ping"}
    if payload is not None:
        msg["payload"] = payload
    assert parse_request(orjson.dumps(msg)) == Ping(rid)


@settings(deadline=None)
@given(st.sampled_from(["subscribe", "unsubscribe", "history", "publish"]), ids, st.data())
def test_the_reserved_type_is_refused_wherever_a_type_goes(
    action: str, rid: str | None, data: st.DataObject
) -> None:
    if action in ("subscribe", "unsubscribe"):
        types = data.draw(st.lists(valid_types, max_size=3))
        types.insert(data.draw(st.integers(0, len(types))), "error")
        payload: dict[str, Any] = {"types": types}
    else:
        payload = {"type": "error", "payload": 1}
    with pytest.raises(ReservedType) as info:
        parse_request(orjson.dumps({"id": rid, "action": action, "payload": payload}))
    assert info.value.request_id == rid


# -- validators -----------------------------------------------------------------------------


@settings(deadline=None)
@given(st.one_of(st.text(max_size=MAX_TYPE_LENGTH + 2), long_types, json_values), ids)
def test_check_type_accepts_exactly_the_usable_type_names(value: Any, rid: str | None) -> None:
    usable = isinstance(value, str) and 0 < len(value) <= MAX_TYPE_LENGTH
    try:
        assert check_type(value, "where", rid) is value
    except ReservedType as exc:
        assert usable and value == "error" and exc.request_id == rid
    except InvalidMessage as exc:
        assert not usable and exc.request_id == rid
        assert "where" in exc.message
    else:
        assert usable and value != "error"


@settings(deadline=None)
@given(st.one_of(st.text(max_size=MAX_KEY_LENGTH + 2), long_keys, json_values), ids)
def test_check_key_accepts_exactly_non_empty_strings_within_the_limit(
    value: Any, rid: str | None
) -> None:
    usable = isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH
    try:
        assert check_key(value, "where", rid) is value
    except InvalidMessage as exc:
        assert not usable and exc.request_id == rid
    else:
        assert usable


publication_like = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "type": type_like,
            "payload": json_values,
            "key": key_like,
            "extra": json_values,
        },
    ),
)


@settings(deadline=None)
@given(publication_like)
def test_parse_publication_returns_a_checked_triple_or_refuses(item: Any) -> None:
    try:
        type_, payload, key = parse_publication(item, "body[3]")
    except (InvalidMessage, ReservedType) as exc:
        assert type(exc) in (InvalidMessage, ReservedType)
        assert exc.request_id is None
        assert "body[3]" in exc.message or isinstance(exc, ReservedType)
        return
    assert isinstance(item, dict) and set(item) <= {"type", "payload", "key"}
    assert check_type(type_, "t") == type_ == item["type"]
    assert payload == item["payload"]
    assert key == item.get("key")
    assert key is None or check_key(key, "k") == key


@settings(deadline=None)
@given(valid_types, json_values, st.one_of(st.none(), valid_keys))
def test_valid_publications_round_trip(type_: str, payload: Any, key: str | None) -> None:
    item: dict[str, Any] = {"type": type_, "payload": payload}
    if key is not None:
        item["key"] = key
    # through JSON, as POST /api/publish receives them
    assert parse_publication(orjson.loads(orjson.dumps(item))) == (type_, payload, key)


# -- check_upgrade ----------------------------------------------------------------------------

HEADER_NAMES = [
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Origin",
    "Host",
]
_KEY_OK = base64.b64encode(b"0123456789abcdef").decode()
header_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "websocket",
            "WebSocket, h2c",
            "Upgrade",
            "keep-alive, upgrade",
            "13",
            " 13 ",
            "8",
            _KEY_OK,
            f" {_KEY_OK} ",
            _KEY_OK[:-2],
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "",
        ]
    ),
)
header_pairs = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(HEADER_NAMES),
            st.sampled_from(HEADER_NAMES).map(str.lower),
            st.text(min_size=1, max_size=10),
        ),
        header_values,
    ),
    max_size=10,
)


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.sampled_from(["GET", "POST", "get", "HEAD"]), st.text(max_size=6)),
    header_pairs,
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.booleans(),
)
def test_check_upgrade_returns_a_key_or_raises_a_handshake_error(
    method: str, pairs: list[tuple[str, str]], version: tuple[int, int], plain_dict: bool
) -> None:
    headers: Any = dict(pairs) if plain_dict else CIMultiDict(pairs)
    try:
        key = check_upgrade(method, headers, version)
    except NotAnUpgrade:
        assert method == "GET"
        return
    except BadHandshake as exc:
        assert exc.status in (400, 426) and exc.message
        return
    # accepted: everything RFC 6455 section 4.2.1 asks for is there
    assert method == "GET" and version >= (1, 1)
    assert "websocket" in _tokens(headers["Upgrade"])
    assert "upgrade" in _tokens(headers["Connection"])
    assert headers["Sec-WebSocket-Version"].strip() == "13"
    assert key == headers["Sec-WebSocket-Key"].strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the assertion below reports it
        raw = b""
    assert len(raw) == 16
    if isinstance(headers, CIMultiDict):
        for name in ("Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version"):
            assert len(headers.getall(name)) == 1
    assert len(accept_key(key)) == 28


@settings(deadline=None)
@given(
    st.binary(min_size=16, max_size=16),
    st.sampled_from(["websocket", "WebSocket", "WEBSOCKET", "h2c, websocket", " websocket "]),
    st.sampled_from(["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, close"]),
    st.sampled_from([(1, 1), (1, 2), (2, 0), (3, 0)]),
    st.lists(
        st.tuples(st.sampled_from(["Origin", "Host", "X-Other"]), st.text(max_size=10)), max_size=3
    ),
)
def test_valid_upgrades_are_accepted(
    nonce: bytes, upgrade: str, connection: str, version: tuple[int, int],
    extra: list[tuple[str, str]],
) -> None:  # fmt: skip
    key = base64.b64encode(nonce).decode()
    headers = CIMultiDict(
        [("Upgrade", upgrade), ("Connection", connection), ("Sec-WebSocket-Version", "13"),
         ("Sec-WebSocket-Key", key), *extra]
    )  # fmt: skip
    assert check_upgrade("GET", headers, version) == key
