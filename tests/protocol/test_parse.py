"""parse_request and parse_publication: every action and every refusal."""

from __future__ import annotations

import orjson
import pytest

from aiosrv.errors import (
    ClientError,
    ErrorCode,
    InvalidJSON,
    InvalidMessage,
    ReservedType,
    UnknownAction,
)
from aiosrv.protocol import (
    ACTIONS,
    History,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    check_key,
    check_type,
    encode_data,
    parse_publication,
    parse_request,
)

EXPECTED_ACTIONS = "subscribe, unsubscribe, ping, history, publish, refresh"


def parse(msg):
    return parse_request(orjson.dumps(msg))


def refused(msg, kind=InvalidMessage) -> ClientError:
    text = msg if isinstance(msg, str | bytes) else orjson.dumps(msg)
    with pytest.raises(kind) as info:
        parse_request(text)
    assert type(info.value) is kind
    return info.value


# -- accepted requests -----------------------------------------------------------------


def test_actions():
    assert ACTIONS == ("subscribe", "unsubscribe", "ping", "history", "publish", "refresh")


def test_subscribe_minimal():
    req = parse({"action": "subscribe", "payload": {"types": ["status", "stats"]}})
    assert req == Subscribe(None, ("status", "stats"), {}, {})


def test_subscribe_browser_envelope_with_type_and_timestamp():
    # browsers in the field send a top-level "type" and "timestamp": both ignored
    req = parse(
        {
            "id": "3f0c",
            "type": "config",
            "timestamp": 1767400000000,
            "action": "subscribe",
            "payload": {"types": ["status", "stats", "health"]},
        }
    )
    assert req == Subscribe("3f0c", ("status", "stats", "health"), {}, {})


def test_subscribe_full():
    req = parse(
        {
            "id": "r1",
            "action": "subscribe",
            "payload": {
                "types": ["prices", "news", "prices"],
                "keys": {"prices": ["BTC", "ETH", "BTC"]},
                "since": {"prices": 10, "news": 0},
            },
        }
    )
    assert req == Subscribe(
        "r1", ("prices", "news"), {"prices": ("BTC", "ETH")}, {"prices": 10, "news": 0}
    )


def test_subscribe_null_keys_and_since_are_absent():
    req = parse({"action": "subscribe", "payload": {"types": ["a"], "keys": None, "since": None}})
    assert req == Subscribe(None, ("a",), {}, {})


def test_parse_accepts_str_and_bytes():
    text = '{"action":"ping","id":"x"}'
    assert parse_request(text) == parse_request(text.encode()) == Ping("x")


def test_unsubscribe():
    req = parse({"id": "u", "action": "unsubscribe", "payload": {"types": ["a", "b", "a"]}})
    assert req == Unsubscribe("u", ("a", "b"))


@pytest.mark.parametrize(
    "msg",
    [
        {"action": "ping"},
        {"action": "ping", "payload": None},
        {"action": "ping", "payload": {}},
        {"action": "ping", "payload": {"anything": 1}},
    ],
)
def test_ping(msg):
    assert parse(msg) == Ping(None)


def test_ping_with_id():
    assert parse({"action": "ping", "id": ""}) == Ping("")
    assert parse({"action": "ping", "id": "p-1", "type": "config"}) == Ping("p-1")


def test_history():
    assert parse({"action": "history", "payload": {"type": "t"}}) == History(None, "t", None, None)
    req = parse({"id": "h", "action": "history", "payload": {"type": "t", "limit": 5, "since": 0}})
    assert req == History("h", "t", 5, 0)
    req = parse({"action": "history", "payload": {"type": "t", "limit": None, "since": None}})
    assert req == History(None, "t", None, None)


def test_publish():
    req = parse(
        {
            "id": "p",
            "action": "publish",
            "payload": {"type": "prices", "payload": {"BTC": 1.5, "n": [1, 2]}, "key": "BTC"},
        }
    )
    # the payload as decoded: it is encoded once, into the data message
    assert req == Publish("p", "prices", {"BTC": 1.5, "n": [1, 2]}, "BTC")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, b"null"),
        (0, b"0"),
        ("s", b'"s"'),
        ([], b"[]"),
        ({"a": {"b": True}}, b'{"a":{"b":true}}'),
    ],
)
def test_publish_any_json_payload(value, encoded):
    req = parse({"action": "publish", "payload": {"type": "t", "payload": value}})
    assert req == Publish(None, "t", value, None)
    data = orjson.loads(encode_data("t", 1, 0, req.payload, None))
    assert orjson.dumps(data["payload"]) == encoded


# -- refusals: the envelope -----------------------------------------------------------


def orjson_error(text) -> str:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return str(exc)
    raise AssertionError(f"{text!r} is valid JSON")


@pytest.mark.parametrize("text", ["{", "", '{"action":"ping",}', "ping", '{"action":"ping"} x'])
def test_invalid_json(text):
    err = refused(text, InvalidJSON)
    assert err.code == ErrorCode.INVALID_JSON == "invalid_json"
    # the parser's own explanation, with the position
    assert err.message == f"message is not valid JSON: {orjson_error(text)}"
    assert "line 1 column" in err.message
    assert err.request_id is None
    assert err.http_status == 400


def test_invalid_utf8_is_invalid_json():
    err = refused(b'{"action":"\xff"}', InvalidJSON)
    assert err.message.startswith("message is not valid JSON: ")
    assert "UTF-8" in err.message


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[]", "list"), ('"ping"', "str"), ("1", "int"), ("null", "NoneType"), ("true", "bool")],
)
def test_message_must_be_an_object(text, kind):
    err = refused(text)
    assert err.code == "invalid_message"
    assert err.message == f"message must be a JSON object, got {kind}"
    assert err.request_id is None


@pytest.mark.parametrize(("rid", "shown"), [(1, "1"), (["a"], "['a']"), ({}, "{}"), (True, "True")])
def test_id_must_be_a_string(rid, shown):
    err = refused({"id": rid, "action": "ping"})
    assert err.message == f"id must be a string when present, got {shown}"
    assert err.request_id is None


def test_missing_action():
    err = refused({"id": "a1", "payload": {}})
    assert err.message == "message has no 'action'; expected one of " + EXPECTED_ACTIONS
    assert err.request_id == "a1"
    err = refused({"action": None})
    assert err.request_id is None


def test_action_must_be_a_string():
    err = refused({"id": "a2", "action": 5})
    assert err.message == "action must be a string, got 5"
    assert err.request_id == "a2"


@pytest.mark.parametrize("action", ["subscribe ", "SUBSCRIBE", "sub", "", "error"])
def test_unknown_action_lists_valid_ones(action):
    err = refused({"id": "a3", "action": action}, UnknownAction)
    assert err.code == ErrorCode.UNKNOWN_ACTION == "unknown_action"
    assert err.message == f"unknown action {action!r}; expected one of " + EXPECTED_ACTIONS
    assert err.request_id == "a3"


def test_long_values_are_shortened_in_messages():
    err = refused({"action": "x" * 100}, UnknownAction)
    assert err.message == (
        "unknown action '" + "x" * 56 + "...; expected one of " + EXPECTED_ACTIONS
    )


@pytest.mark.parametrize(
    ("payload", "shown"), [([], "[]"), ("x", "'x'"), (1, "1"), (False, "False")]
)
def test_payload_must_be_an_object(payload, shown):
    err = refused({"id": "a4", "action": "ping", "payload": payload})
    assert err.message == f"payload must be a JSON object, got {shown}"
    assert err.request_id == "a4"


# -- refusals: subscribe and unsubscribe ------------------------------------------------


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize(
    ("types", "shown"),
    [(None, "None"), ([], "[]"), ("a", "'a'"), ({"a": 1}, "{'a': 1}"), (1, "1")],
)
def test_types_must_be_a_non_empty_list(action, types, shown):
    payload = {} if types is None else {"types": types}
    err = refused({"id": "s1", "action": action, "payload": payload})
    assert err.message == f"payload.types must be a non-empty list of type names, got {shown}"
    assert err.request_id == "s1"


def test_subscribe_without_payload():
    err = refused({"id": "s0", "action": "subscribe"})
    assert err.message == "payload.types must be a non-empty list of type names, got None"


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe"])
@pytest.mark.parametrize(("bad", "shown"), [("", "''"), (1, "1"), (None, "None"), (["a"], "['a']")])
def test_type_names_must_be_non_empty_strings(action, bad, shown):
    err = refused({"id": "s2", "action": action, "payload": {"types": ["ok", bad]}})
    assert err.message == f"payload.types[1] must be a non-empty string, got {shown}"
    assert err.request_id == "s2"


def test_type_name_length_limit():
    assert parse({"action": "subscribe", "payload": {"types": ["t" * 128]}}).types == ("t" * 128,)
    err = refused({"id": "s3", "action": "subscribe", "payload": {"types": ["t" * 129]}})
    assert err.message == "payload.types[0] is 129 characters long; the limit is 128"
    assert err.request_id == "s3"


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe"])
def test_reserved_type(action):
    err = refused(
        {"id": "s4", "action": action, "payload": {"types": ["a", "error"]}}, ReservedType
    )
    assert err.code == ErrorCode.RESERVED_TYPE == "reserved_type"
    assert err.message == "type 'error' is reserved for the server's error replies"
    assert err.request_id == "s4"


def test_keys_must_be_an_object():
    err = refused({"id": "k", "action": "subscribe", "payload": {"types": ["a"], "keys": ["x"]}})
    assert err.message == "payload.keys must be an object {type: [key, ...]}, got ['x']"
    assert err.request_id == "k"


def test_keys_for_a_type_not_subscribed():
    err = refused(
        {"id": "k", "action": "subscribe", "payload": {"types": ["a"], "keys": {"b": ["x"]}}}
    )
    assert err.message == "payload.keys names type 'b', which is not in payload.types"
    assert err.request_id == "k"


@pytest.mark.parametrize(("keys", "shown"), [([], "[]"), ("x", "'x'"), (None, "None"), ({}, "{}")])
def test_keys_of_a_type_must_be_a_non_empty_list(keys, shown):
    err = refused({"action": "subscribe", "payload": {"types": ["a"], "keys": {"a": keys}}})
    assert err.message == f"payload.keys['a'] must be a non-empty list of keys, got {shown}"


@pytest.mark.parametrize(("bad", "shown"), [("", "''"), (7, "7"), (None, "None")])
def test_keys_must_be_non_empty_strings(bad, shown):
    err = refused(
        {"id": "k", "action": "subscribe", "payload": {"types": ["a"], "keys": {"a": ["x", bad]}}}
    )
    assert err.message == f"payload.keys['a'][1] must be a non-empty string, got {shown}"
    assert err.request_id == "k"


def test_key_length_limit():
    ok = parse({"action": "subscribe", "payload": {"types": ["a"], "keys": {"a": ["k" * 256]}}})
    assert ok.keys == {"a": ("k" * 256,)}
    err = refused({"action": "subscribe", "payload": {"types": ["a"], "keys": {"a": ["k" * 257]}}})
    assert err.message == "payload.keys['a'][0] is 257 characters long; the limit is 256"


def test_since_must_be_an_object():
    err = refused({"id": "n", "action": "subscribe", "payload": {"types": ["a"], "since": 3}})
    assert err.message == "payload.since must be an object {type: seq}, got 3"
    assert err.request_id == "n"


def test_since_for_a_type_not_subscribed():
    err = refused({"action": "subscribe", "payload": {"types": ["a"], "since": {"b": 1}}})
    assert err.message == "payload.since names type 'b', which is not in payload.types"


@pytest.mark.parametrize(
    ("seq", "shown"),
    [(-1, "-1"), (True, "True"), (False, "False"), (1.0, "1.0"), ("3", "'3'"), (None, "None")],
)
def test_since_must_be_a_non_negative_integer(seq, shown):
    err = refused(
        {"id": "n", "action": "subscribe", "payload": {"types": ["a"], "since": {"a": seq}}}
    )
    assert err.message == f"payload.since['a'] must be an integer >= 0, got {shown}"
    assert err.request_id == "n"


# -- refusals: history and publish -----------------------------------------------------------


@pytest.mark.parametrize("action", ["history", "publish"])
@pytest.mark.parametrize(("bad", "shown"), [(None, "None"), ("", "''"), (3, "3"), (["t"], "['t']")])
def test_history_and_publish_need_a_type(action, bad, shown):
    payload = {"payload": 1} if bad is None else {"type": bad, "payload": 1}
    err = refused({"id": "h", "action": action, "payload": payload})
    assert err.message == f"payload.type must be a non-empty string, got {shown}"
    assert err.request_id == "h"


@pytest.mark.parametrize("action", ["history", "publish"])
def test_history_and_publish_refuse_the_reserved_type(action):
    err = refused({"action": action, "payload": {"type": "error", "payload": 1}}, ReservedType)
    assert err.message == "type 'error' is reserved for the server's error replies"


@pytest.mark.parametrize(
    ("limit", "shown"), [(0, "0"), (-5, "-5"), (True, "True"), (2.5, "2.5"), ("5", "'5'")]
)
def test_history_limit(limit, shown):
    err = refused({"id": "h", "action": "history", "payload": {"type": "t", "limit": limit}})
    assert err.message == f"payload.limit must be an integer >= 1, got {shown}"
    assert err.request_id == "h"


@pytest.mark.parametrize(("since", "shown"), [(-1, "-1"), (True, "True"), ("0", "'0'")])
def test_history_since(since, shown):
    err = refused({"id": "h", "action": "history", "payload": {"type": "t", "since": since}})
    assert err.message == f"payload.since must be an integer >= 0, got {shown}"
    assert err.request_id == "h"


def test_publish_needs_a_payload():
    err = refused({"id": "p", "action": "publish", "payload": {"type": "t"}})
    assert err.message == "payload.payload is missing: publish needs the data to send"
    assert err.request_id == "p"


@pytest.mark.parametrize(("key", "shown"), [("", "''"), (5, "5"), (["k"], "['k']")])
def test_publish_key(key, shown):
    err = refused(
        {"id": "p", "action": "publish", "payload": {"type": "t", "payload": 1, "key": key}}
    )
    assert err.message == f"payload.key must be a non-empty string, got {shown}"
    assert err.request_id == "p"
    err = refused({"action": "publish", "payload": {"type": "t", "payload": 1, "key": "k" * 257}})
    assert err.message == "payload.key is 257 characters long; the limit is 256"


def test_publish_null_key_is_no_key():
    req = parse({"action": "publish", "payload": {"type": "t", "payload": 1, "key": None}})
    assert req == Publish(None, "t", 1, None)


# -- helpers used by the HTTP API and the hub -----------------------------------------------


def test_check_type_and_key():
    assert check_type("t", "where") == "t"
    assert check_key("k", "where") == "k"
    with pytest.raises(InvalidMessage) as info:
        check_type(None, "type", "rid")
    assert (info.value.message, info.value.request_id) == (
        "type must be a non-empty string, got None",
        "rid",
    )
    with pytest.raises(ReservedType):
        check_type("error", "type")
    with pytest.raises(InvalidMessage) as info:
        check_key("", "key")
    assert info.value.message == "key must be a non-empty string, got ''"


# -- parse_publication (POST /api/publish bodies) -------------------------------------------


def test_parse_publication():
    assert parse_publication({"type": "t", "payload": {"a": 1}}) == ("t", {"a": 1}, None)
    assert parse_publication({"type": "t", "payload": [1], "key": "k"}) == ("t", [1], "k")
    assert parse_publication({"type": "t", "payload": None, "key": None}) == ("t", None, None)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([1], "body must be an object {type, payload, key?}, got [1]"),
        ("x", "body must be an object {type, payload, key?}, got 'x'"),
        ({"type": "t", "payload": 1, "zz": 1, "aa": 2}, "body has unknown field(s): aa, zz"),
        ({"payload": 1}, "body.type must be a non-empty string, got None"),
        ({"type": "", "payload": 1}, "body.type must be a non-empty string, got ''"),
        ({"type": "t" * 129, "payload": 1}, "body.type is 129 characters long; the limit is 128"),
        ({"type": "t"}, "body.payload is missing"),
        ({"type": "t", "payload": 1, "key": 3}, "body.key must be a non-empty string, got 3"),
    ],
)
def test_parse_publication_refusals(item, message):
    with pytest.raises(InvalidMessage) as info:
        parse_publication(item)
    assert type(info.value) is InvalidMessage
    assert info.value.message == message
    assert info.value.http_status == 400


def test_parse_publication_reserved_type_and_where():
    with pytest.raises(ReservedType):
        parse_publication({"type": "error", "payload": 1})
    with pytest.raises(InvalidMessage) as info:
        parse_publication({"type": "t"}, "body[2]")
    assert info.value.message == "body[2].payload is missing"
