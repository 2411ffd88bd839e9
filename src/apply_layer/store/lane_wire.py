"""The gate lane's sockets: taken over from redis-py, read by hiredis in the callback.

``LaneWire`` is the protocol a pooled redis-py connection's transport is
handed to (``transport.set_protocol``): each chunk the socket delivers is
parsed there and every reply goes to the lane's callback in order, with no
task, no stream and no timer in between. ``transport_of`` finds that
transport; it reads redis-py's one private attribute the lane relies on
(the connection's ``_writer`` stream) and answers None where a release
keeps it elsewhere, so the lane can stay off instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

from apply_layer.core.errors import GateLaneDown


class LaneWire(asyncio.Protocol):
    """A socket taken over from redis-py: each parsed reply goes to ``on_reply``, in order."""

    def __init__(
        self,
        on_reply: Callable[[Any], None],
        on_lost: Callable[[BaseException, LaneWire], None],
        on_chunk: Callable[[], None] | None = None,
    ) -> None:
        # As the client's own: decode_responses with encoding_errors="replace".
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.on_chunk = on_chunk
        self.transport: asyncio.Transport | None = None
        # redis-py's protocol, told when the socket closes, so that its stream's
        # wait_closed() (the pool's disconnect) returns instead of timing out.
        self.previous: asyncio.BaseProtocol | None = None

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                self.on_reply(reply)
            if self.on_chunk is not None:
                self.on_chunk()
        except Exception as exc:  # a protocol error, or a bug of ours: never the gate's
            self.on_lost(exc, self)

    def eof_received(self) -> bool:
        self.on_lost(GateLaneDown("the server closed the connection"), self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(exc or GateLaneDown("connection closed"), self)
        if self.previous is not None:
            self.previous.connection_lost(exc)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise GateLaneDown("connection closed")
        self.transport.write(data)


def transport_of(conn: AbstractConnection) -> asyncio.Transport | None:
    """The connected socket's transport; None if this redis-py keeps it elsewhere."""
    writer = getattr(conn, "_writer", None)
    if not isinstance(writer, asyncio.StreamWriter):
        return None
    transport = writer.transport
    return transport if isinstance(transport, asyncio.Transport) else None
