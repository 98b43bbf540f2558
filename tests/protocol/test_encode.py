"""The encode_* functions produce exactly the shapes of the wire contract."""

from __future__ import annotations

import time

import orjson
import pytest

from aiosrv.errors import (
    BrokerUnavailable,
    ClientError,
    InvalidJSON,
    InvalidMessage,
    PublishForbidden,
    QueueFull,
    ReservedType,
    TooManySubscriptions,
    Unauthorized,
    UnknownAction,
)
from aiosrv.protocol import (
    encode_data,
    encode_error,
    encode_history,
    encode_reply,
    http_error_body,
    now_ms,
)


class Clock:
    """Brackets a call with wall-clock milliseconds."""

    def __enter__(self):
        self.before = int(time.time() * 1000)
        return self

    def __exit__(self, *exc):
        self.after = int(time.time() * 1000) + 1

    def check(self, ts):
        assert isinstance(ts, int)
        assert self.before <= ts <= self.after


def test_now_ms():
    with Clock() as clock:
        ts = now_ms()
    clock.check(ts)


def test_encode_data_without_key():
    data = encode_data("status", 1042, 1767400000123, b'{"ok":true}', None)
    assert data == (
        b'{"id":"status:1042","type":"status","timestamp":1767400000123,'
        b'"seq":1042,"payload":{"ok":true}}'
    )
    msg = orjson.loads(data)
    assert msg == {
        "id": "status:1042",
        "type": "status",
        "timestamp": 1767400000123,
        "seq": 1042,
        "payload": {"ok": True},
    }
    assert "key" not in msg


def test_encode_data_with_key():
    data = encode_data("prices", 7, 5, b"[1,2]", "BTC")
    assert orjson.loads(data) == {
        "id": "prices:7",
        "type": "prices",
        "timestamp": 5,
        "seq": 7,
        "key": "BTC",
        "payload": [1, 2],
    }
    assert (
        data
        == b'{"id":"prices:7","type":"prices","timestamp":5,"seq":7,"key":"BTC","payload":[1,2]}'
    )


def test_encode_data_splices_payload_bytes_verbatim():
    payload = orjson.dumps({"nested": {"a": [1, "x", None]}, "unicode": "\u20ac"})
    data = encode_data("t", 1, 0, payload, None)
    assert data.endswith(b',"payload":' + payload + b"}")


@pytest.mark.parametrize("kind", ["ack", "pong", "history"])
@pytest.mark.parametrize("rid", ["r-1", None])
def test_encode_reply(kind, rid):
    with Clock() as clock:
        data = encode_reply(kind, rid, {"action": "subscribe", "types": ["a"]})
    msg = orjson.loads(data)
    clock.check(msg["timestamp"])
    assert msg == {
        "type": kind,
        "id": rid,
        "timestamp": msg["timestamp"],
        "payload": {"action": "subscribe", "types": ["a"]},
    }
    assert list(msg) == ["type", "id", "timestamp", "payload"]


def test_encode_pong_has_empty_payload():
    msg = orjson.loads(encode_reply("pong", "p", {}))
    assert (msg["type"], msg["id"], msg["payload"]) == ("pong", "p", {})


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidJSON("bad json", None), "invalid_json"),
        (InvalidMessage("bad message", "m1"), "invalid_message"),
        (UnknownAction("what?", "m2"), "unknown_action"),
        (ReservedType("reserved", "m3"), "reserved_type"),
        (TooManySubscriptions("too many", "m4"), "too_many_subscriptions"),
        (PublishForbidden("no", "m5"), "publish_forbidden"),
        (Unauthorized("who?"), "unauthorized"),
        (QueueFull("full"), "queue_full"),
        (BrokerUnavailable("down"), "broker_unavailable"),
    ],
)
def test_encode_error(error, code):
    with Clock() as clock:
        data = encode_error(error)
    msg = orjson.loads(data)
    clock.check(msg["timestamp"])
    assert msg == {
        "type": "error",
        "id": error.request_id,
        "timestamp": msg["timestamp"],
        "payload": {"code": code, "message": error.message},
    }
    assert list(msg) == ["type", "id", "timestamp", "payload"]
    assert orjson.loads(http_error_body(error)) == {
        "error": {"code": code, "message": error.message}
    }


def test_error_id_is_null_without_request_id():
    assert b'"id":null' in encode_error(InvalidJSON("x"))


def test_client_error_http_statuses():
    assert ClientError("x").http_status == 400
    assert InvalidMessage("x").http_status == 400
    assert TooManySubscriptions("x").http_status == 429
    assert PublishForbidden("x").http_status == 403
    assert Unauthorized("x").http_status == 401
    assert QueueFull("x").http_status == 503
    assert BrokerUnavailable("x").http_status == 503
    assert str(QueueFull("the reason")) == "the reason"


def test_encode_history():
    m1 = encode_data("t", 1, 10, b'{"a":1}', None)
    m2 = encode_data("t", 2, 11, b'{"a":2}', "k")
    with Clock() as clock:
        data = encode_history("h1", "t", [m1, m2])
    msg = orjson.loads(data)
    clock.check(msg["timestamp"])
    assert msg == {
        "type": "history",
        "id": "h1",
        "timestamp": msg["timestamp"],
        "payload": {"type": "t", "messages": [orjson.loads(m1), orjson.loads(m2)]},
    }
    # the stored data messages are spliced in byte for byte
    assert b'"messages":[' + m1 + b"," + m2 + b"]" in data


def test_encode_history_empty_and_extra_fields():
    msg = orjson.loads(encode_history(None, "t", [], {"oldest": 4, "latest": 9}))
    assert msg["id"] is None
    assert msg["payload"] == {"type": "t", "oldest": 4, "latest": 9, "messages": []}
    assert list(msg["payload"]) == ["type", "oldest", "latest", "messages"]


def test_encode_data_takes_a_decoded_payload_or_its_json():
    # a request's payload is encoded once, here; bytes of JSON are spliced in
    value = {"bid": 1.0842, "levels": [1, 2], "name": "é", "none": None}
    assert encode_data("t", 3, 9, value, "k") == encode_data("t", 3, 9, orjson.dumps(value), "k")
