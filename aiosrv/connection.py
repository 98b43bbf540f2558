"""The asyncio protocol of a WebSocket client's socket, after the upgrade.

A thin adapter: what the transport reports goes to the client's
:class:`~aiosrv.session.Session`, which holds the rules. It exists so that the
session stays free of asyncio's protocol interface (and testable without a
socket), and so that the object the transport calls per read is as small as
it can be.
"""

from __future__ import annotations

import asyncio

from .session import Session


class Connection(asyncio.Protocol):
    """The transport's protocol: forwards to the session."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data)

    def eof_received(self) -> bool:
        return self.session.receive_eof()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.session.connection_lost(exc)
