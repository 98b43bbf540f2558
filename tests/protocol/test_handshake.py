"""The opening handshake, sans-I/O (RFC 6455 section 4.2, RFC 7692 section 7)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from aiosrv import handshake
from aiosrv.handshake import BadHandshake, Deflate, NotAnUpgrade

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def headers(**extra: str) -> CIMultiDict[str]:
    h = CIMultiDict(
        {
            "Upgrade": "websocket",
            "Connection": "keep-alive, Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": KEY,
        }
    )
    for name, value in extra.items():
        name = name.replace("_", "-")
        if value is None:
            h.popall(name, None)
        else:
            h[name] = value
    return h


def test_accept_key_of_the_rfc_example() -> None:
    assert handshake.accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_valid_request_gives_its_key() -> None:
    assert handshake.check_upgrade("GET", headers()) == KEY
    assert handshake.check_upgrade("GET", headers(Upgrade="WebSocket")) == KEY


def test_no_upgrade_header_is_not_an_upgrade() -> None:
    with pytest.raises(NotAnUpgrade):
        handshake.check_upgrade("GET", headers(Upgrade=None))
    with pytest.raises(NotAnUpgrade):
        handshake.check_upgrade("GET", headers(Upgrade="h2c"))


@pytest.mark.parametrize(
    ("method", "extra", "status", "words"),
    [
        ("POST", {}, 400, "must be a GET"),
        ("GET", {"Connection": "keep-alive"}, 400, "'upgrade'"),
        ("GET", {"Sec-WebSocket-Version": "8"}, 426, "unsupported Sec-WebSocket-Version 8"),
        ("GET", {"Sec-WebSocket-Version": None}, 426, "(missing)"),
        ("GET", {"Sec-WebSocket-Key": None}, 400, "(it is missing)"),
        ("GET", {"Sec-WebSocket-Key": "c2hvcnQ="}, 400, "16 random bytes"),
        ("GET", {"Sec-WebSocket-Key": "not base64!!"}, 400, "16 random bytes"),
    ],
)
def test_bad_upgrades_say_what_is_wrong(
    method: str, extra: dict[str, str | None], status: int, words: str
) -> None:
    with pytest.raises(BadHandshake) as info:
        handshake.check_upgrade(method, headers(**extra))
    assert info.value.status == status
    assert words in info.value.message


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        ([], None),
        (["x-webkit-deflate-frame"], None),
        (
            ["permessage-deflate"],
            Deflate("permessage-deflate; server_no_context_takeover", True, False),
        ),
        # what browsers send
        (
            ["permessage-deflate; client_max_window_bits"],
            Deflate("permessage-deflate; server_no_context_takeover", True, False),
        ),
        (
            ["permessage-deflate; client_no_context_takeover; client_max_window_bits=10"],
            Deflate(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                True,
                True,
            ),
        ),
        # a smaller server window is agreed to, and such a client gets plain frames
        (
            ["permessage-deflate; server_max_window_bits=10"],
            Deflate(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
                False,
                False,
            ),
        ),
        # invalid offers are declined; the next acceptable one is taken
        (
            ["permessage-deflate; server_max_window_bits=7, permessage-deflate"],
            Deflate("permessage-deflate; server_no_context_takeover", True, False),
        ),
        (["permessage-deflate; unknown_param"], None),
        (["permessage-deflate; client_max_window_bits=16"], None),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        (["permessage-deflate; server_max_window_bits"], None),
        (
            ["foo", "permessage-deflate; server_no_context_takeover"],
            Deflate("permessage-deflate; server_no_context_takeover", True, False),
        ),
    ],
)
def test_negotiate_deflate(offers: list[str], expected: Deflate | None) -> None:
    assert handshake.negotiate_deflate(offers) == expected


def test_response_head() -> None:
    head = handshake.response_head(KEY, None)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
    assert head.endswith(b"\r\n\r\n")
    assert b"Extensions" not in head
    deflate = handshake.negotiate_deflate(["permessage-deflate"])
    head = handshake.response_head(KEY, deflate)
    ext = b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"
    assert b"\r\n" + ext + b"\r\n" in head
