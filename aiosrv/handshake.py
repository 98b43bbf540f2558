"""The WebSocket opening handshake (RFC 6455 section 4.2, RFC 7692), sans-I/O.

:func:`check_upgrade` says what is wrong with an upgrade request (or nothing),
:func:`negotiate_deflate` picks the permessage-deflate parameters from the
client's offers, and :func:`response_head` builds the ``101`` the server writes
itself before the connection's socket passes to
:class:`aiosrv.connection.Connection`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The one protocol version this server speaks (RFC 6455).
VERSION = "13"

#: The window of the server's shared compressed frames (``zlib`` wbits 15):
#: clients that limit the server's window below it get plain frames.
SHARED_WINDOW_BITS = 15


class NotAnUpgrade(Exception):
    """A plain HTTP request on a WebSocket path (answered with 426)."""


class BadHandshake(Exception):
    """An upgrade request that breaks RFC 6455 (answered with 400, or 426 for
    an unsupported version); the message says what was wrong."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _count(headers: Mapping[str, str], name: str) -> int:
    getall = getattr(headers, "getall", None)
    if getall is None:
        return 1 if name in headers else 0
    return len(getall(name, ()))


def check_upgrade(
    method: str, headers: Mapping[str, str], http_version: tuple[int, int] = (1, 1)
) -> str:
    """Validate an upgrade request; return its ``Sec-WebSocket-Key``.

    Raises :class:`NotAnUpgrade` for a plain ``GET`` that does not ask for a
    WebSocket at all and :class:`BadHandshake` for any other method, and for
    an upgrade that asks wrongly (HTTP/1.0, a header given twice, a bad key).
    """
    if method != "GET":
        raise BadHandshake(f"a WebSocket upgrade must be a GET request, not {method}")
    upgrade = headers.get("Upgrade", "")
    if "websocket" not in _tokens(upgrade):
        raise NotAnUpgrade()
    if tuple(http_version) < (1, 1):
        major, minor = http_version
        raise BadHandshake(f"a WebSocket upgrade needs HTTP/1.1 or later, not HTTP/{major}.{minor}")
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Upgrade"):
        if _count(headers, name) > 1:
            raise BadHandshake(f"the {name} header is given more than once")
    if "upgrade" not in _tokens(headers.get("Connection", "")):
        raise BadHandshake("the Connection header must include 'upgrade'")
    version = headers.get("Sec-WebSocket-Version", "")
    if version.strip() != VERSION:
        raise BadHandshake(
            f"unsupported Sec-WebSocket-Version {version.strip() or '(missing)'}; "
            f"this server speaks {VERSION}",
            status=426,
        )
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise BadHandshake(
            "Sec-WebSocket-Key must be 16 random bytes in base64"
            + ("" if key else " (it is missing)")
        )
    return key


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


@dataclass(frozen=True, slots=True)
class Deflate:
    """permessage-deflate as agreed with one client."""

    #: The extension as the response states it.
    header: str
    #: The client accepts the server's full window: it takes the shared
    #: compressed frames (others get plain frames, which RFC 7692 allows).
    shared: bool
    #: The client resets its compressor per message, so the server needs no
    #: inflate context kept between messages.
    client_no_context_takeover: bool


def _parse_offer(offer: str) -> dict[str, str | None] | None:
    parts = [p.strip() for p in offer.split(";")]
    if parts[0].lower() != "permessage-deflate":
        return None
    params: dict[str, str | None] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if name in params:
            return None  # a parameter twice: decline this offer (RFC 7692 5)
        params[name] = value.strip().strip('"') if eq else None
    return params


def negotiate_deflate(header_values: Iterable[str]) -> Deflate | None:
    """Accept the first valid permessage-deflate offer, or none.

    The server always compresses without context takeover (one compressed
    frame shared by every receiver), so the response carries
    ``server_no_context_takeover``. Offers with unknown or malformed
    parameters are declined, as RFC 7692 requires.
    """
    for value in header_values:
        for offer in value.split(","):
            params = _parse_offer(offer)
            if params is None:
                continue
            reply = ["permessage-deflate", "server_no_context_takeover"]
            ok = True
            shared = True
            for name, val in params.items():
                if name == "server_no_context_takeover" and val is None:
                    continue
                if name == "client_no_context_takeover" and val is None:
                    reply.append("client_no_context_takeover")
                elif name == "server_max_window_bits" and val is not None and val.isdigit():
                    bits = int(val)
                    if not 8 <= bits <= 15:
                        ok = False
                        break
                    reply.append(f"server_max_window_bits={bits}")
                    shared = bits >= SHARED_WINDOW_BITS
                elif name == "client_max_window_bits":
                    # the client may limit its own window; inflating with the
                    # full window reads any smaller one, so nothing to answer
                    if val is not None and not (val.isdigit() and 8 <= int(val) <= 15):
                        ok = False
                        break
                else:
                    ok = False
                    break
            if ok:
                return Deflate("; ".join(reply), shared, "client_no_context_takeover" in params)
    return None


def response_head(key: str, deflate: Deflate | None, protocol: str | None = None) -> bytes:
    """The ``101 Switching Protocols`` response."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if deflate is not None:
        lines.append(f"Sec-WebSocket-Extensions: {deflate.header}")
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
