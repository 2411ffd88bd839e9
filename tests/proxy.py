"""A loopback TCP proxy that can swallow the reply to one chosen command.

It forwards bytes both ways; once armed with a marker (say ``b"EVALSHA"``), it
lets the next request containing the marker reach the server, then drops the
connection instead of returning the server's reply: a lost reply, exactly as
a network fault would lose it after the server has acted.
"""

from __future__ import annotations

import asyncio
import contextlib


class DropReplyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.armed: bytes | None = None
        self.dropped = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> DropReplyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        drop_next = asyncio.Event()

        async def upstream() -> None:
            while data := await c_reader.read(65536):
                if self.armed is not None and self.armed in data:
                    self.armed = None
                    drop_next.set()
                s_writer.write(data)
                await s_writer.drain()

        async def downstream() -> None:
            while data := await s_reader.read(65536):
                if drop_next.is_set():
                    self.dropped += 1
                    return  # the server has acted; its reply never arrives
                c_writer.write(data)
                await c_writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (c_writer, s_writer):
            writer.close()
