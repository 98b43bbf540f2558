"""Every error, error code and close code of aiosrv, in one place.

Exception tree::

    AiosrvError
    ├── ConfigError (aiosrv.config; a ValueError carrying every Problem found)
    ├── ClientError                 an error reply to one client; never closes it
    │   ├── InvalidJSON             code invalid_json
    │   ├── InvalidMessage          code invalid_message
    │   ├── UnknownAction           code unknown_action
    │   ├── ReservedType            code reserved_type
    │   ├── TooManySubscriptions    code too_many_subscriptions
    │   ├── PublishForbidden        code publish_forbidden
    │   ├── Forbidden               code forbidden (HTTP 403): the principal's
    │   │                           permissions, or a built-in type
    │   ├── RateLimited             code rate_limited (HTTP 429)
    │   ├── Unauthorized            code unauthorized (HTTP 401)
    │   ├── QueueFull               code queue_full (HTTP 503)
    │   └── BrokerUnavailable       code broker_unavailable (HTTP 503); what a
    │                               broker engine raises when it is down
    └── FrameError                  a client broke RFC 6455 framing; closes it with
                                    its ``code`` (1002, 1007 or 1009)

A :class:`ClientError` becomes the contract's error frame on a WebSocket
(``{"type": "error", "payload": {"code", "message"}}``) and the body
``{"error": {"code", "message"}}`` with :attr:`ClientError.http_status` on the
HTTP API. The message always says what was wrong with the input.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class CloseCode(IntEnum):
    """WebSocket close codes the server sends, with their meaning for clients.

    A client should reconnect after 1001, 1011, 1013 and 4000 (with backoff, and
    with ``since`` to recover what it missed); it should not reconnect unchanged
    after 1002, 1007, 1008 or 1009, since the same input would be refused again.
    """

    NORMAL = 1000
    GOING_AWAY = 1001  # shutting down or draining
    PROTOCOL_ERROR = 1002  # RFC 6455 framing error by the client
    INVALID_DATA = 1007  # text frame that is not valid UTF-8
    POLICY_VIOLATION = 1008  # auth lost/expired, origin refused, repeated abuse
    MESSAGE_TOO_BIG = 1009  # client frame or message over max_message_size
    INTERNAL_ERROR = 1011  # unexpected server error
    TRY_AGAIN_LATER = 1013  # overloaded, or slow consumer over its send buffer limit
    HEARTBEAT_TIMEOUT = 4000  # no traffic from the client within heartbeat_timeout


class ErrorCode:
    """The ``payload.code`` values of error frames and HTTP error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_ACTION = "unknown_action"
    RESERVED_TYPE = "reserved_type"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    PUBLISH_FORBIDDEN = "publish_forbidden"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    ORIGIN_REFUSED = "origin_refused"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    QUEUE_FULL = "queue_full"
    BROKER_UNAVAILABLE = "broker_unavailable"
    NOT_FOUND = "not_found"
    BAD_HANDSHAKE = "bad_handshake"
    UPGRADE_REQUIRED = "upgrade_required"
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # 408: request head not complete in time
    HEADER_TOO_LARGE = "header_too_large"  # 431: request head over max_header_size
    INTERNAL_ERROR = "internal_error"


class AiosrvError(Exception):
    """Base of every error raised by aiosrv."""


class ClientError(AiosrvError):
    """Something a client sent (or asked for) cannot be done; the reply says why."""

    code: ClassVar[str] = ErrorCode.INVALID_MESSAGE
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class InvalidJSON(ClientError):
    code = ErrorCode.INVALID_JSON


class InvalidMessage(ClientError):
    code = ErrorCode.INVALID_MESSAGE


class UnknownAction(ClientError):
    code = ErrorCode.UNKNOWN_ACTION


class ReservedType(ClientError):
    code = ErrorCode.RESERVED_TYPE


class TooManySubscriptions(ClientError):
    code = ErrorCode.TOO_MANY_SUBSCRIPTIONS
    http_status = 429


class PublishForbidden(ClientError):
    code = ErrorCode.PUBLISH_FORBIDDEN
    http_status = 403


class Forbidden(ClientError):
    code = ErrorCode.FORBIDDEN
    http_status = 403


class RateLimited(ClientError):
    code = ErrorCode.RATE_LIMITED
    http_status = 429


class Unauthorized(ClientError):
    code = ErrorCode.UNAUTHORIZED
    http_status = 401


class QueueFull(ClientError):
    code = ErrorCode.QUEUE_FULL
    http_status = 503


class BrokerUnavailable(ClientError):
    code = ErrorCode.BROKER_UNAVAILABLE
    http_status = 503


class FrameError(AiosrvError):
    """A client's frames broke RFC 6455 (or the size limit): the connection is
    closed with :attr:`code` and :attr:`reason` in the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameError) and (self.code, self.reason) == (
            other.code,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.reason))


#: Type names no one may publish or subscribe to: ``error`` frames are the
#: server's own replies, so a data message of that type would be ambiguous.
RESERVED_TYPES: frozenset[str] = frozenset({"error"})

#: Types only the server publishes (its built-in sources): a publish to one
#: of them from outside (HTTP or WebSocket) is refused with ``forbidden``.
BUILTIN_TYPES: frozenset[str] = frozenset({"status", "stats", "health"})

#: Connection attempts remembered per client address for the connect rate
#: limit (a bucket per address; full buckets are dropped first).
MAX_TRACKED_ADDRESSES = 100_000

#: Window in which ``security.flood_limit`` refused messages close a connection.
FLOOD_WINDOW = 10.0

#: Longest accepted type name and key, in characters.
MAX_TYPE_LENGTH = 128
MAX_KEY_LENGTH = 256

#: Most data frames (the first and its continuations) one client message may
#: come in; one more fails the connection with 1009 (``FrameReader``).
MAX_FRAGMENTS = 1024
