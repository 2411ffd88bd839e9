"""The metrics endpoint: a small HTTP/1.1 server on the daemon's own event loop.

prometheus_client's ``start_http_server`` spent a thread per connection and
never timed one out: 70 idle loopback connections stopped it under the unit's
``TasksMax=64``, and 3,000 took 78 MB (issue 21, finding 4). This server
spends no thread at all, and bounds what any client can hold:

* at most :data:`MAX_CONNECTIONS` connections at once. A new connection past
  the cap closes the oldest one that has sent nothing yet, else the oldest
  one still waiting for its request (a slow one), so idle connections cannot
  lock a scrape out: a scrape sends its request as soon as it connects, and
  a request counts as sent once it is in the socket, read or not (see
  :meth:`MetricsServer._make_room`). The daemon's file descriptors, which
  Redis and the exchange need, are never the metrics clients' to exhaust;
* the request line and headers must arrive whole within
  :data:`HEADER_TIMEOUT_SEC` and fit :data:`MAX_HEADER_BYTES` (a slowloris
  trickle is closed at the deadline; too large a head gets 431);
* the response must be taken within :data:`WRITE_TIMEOUT_SEC`;
* one request per connection (``Connection: close``), as the old server did.

It answers as prometheus_client's WSGI app did where that made sense:
``GET /metrics`` and ``GET /`` with the text or OpenMetrics format as the
``Accept`` header asks, gzip when ``Accept-Encoding`` allows it, ``name[]=``
to restrict the families, ``OPTIONS``; and now ``HEAD`` (the headers of the
``GET``), 404 for any other path and 405 for any other method.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gzip
import socket
import sys
import termios
from collections.abc import Callable, Iterable
from typing import SupportsIndex
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import (
    CONTENT_TYPE_LATEST,
    choose_encoder,
    generate_latest,
    gzip_accepted,
)
from prometheus_client.registry import Collector

from apply_layer.core.errors import ConfigError

MAX_CONNECTIONS = 32
HEADER_TIMEOUT_SEC = 5.0
MAX_HEADER_BYTES = 8192
WRITE_TIMEOUT_SEC = 10.0
METRICS_PATHS = frozenset({"/metrics", "/"})
ALLOW = "GET, HEAD, OPTIONS"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}


class MetricsServer:
    """Serves ``registry`` until :meth:`close`; see the module docstring for the bounds."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT_SEC,
        max_header_bytes: int = MAX_HEADER_BYTES,
        write_timeout: float = WRITE_TIMEOUT_SEC,
    ) -> None:
        self.registry = registry
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        # Open connections in arrival order, with their reader while one still waits
        # for its request (None once it is being answered).
        self._open: dict[asyncio.StreamWriter, asyncio.StreamReader | None] = {}
        self.evicted = 0  # connections closed to make room (tests, and a gauge if ever needed)

    async def start(self, port: int, addr: str = "127.0.0.1") -> None:
        """Listen on ``addr:port``; a port in use (or any bind error) is a
        :class:`ConfigError` that names it: the settings' exit status (2), so the
        operator looks at APPLY_METRICS_PORT/BIND, not at Redis."""
        try:
            sock = _listening_socket(addr, port)
        except OSError as exc:
            where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"the metrics port {where} (APPLY_METRICS_PORT) is already in use: "
                    "another apply-layer or another service holds it"
                ) from None
            why = exc.strerror or str(exc)
            raise ConfigError(
                f"cannot serve metrics on {where} (APPLY_METRICS_BIND, APPLY_METRICS_PORT): {why}"
            ) from None

        # asyncio.start_server's own factory, with a reader that notes the first byte.
        def protocol() -> asyncio.StreamReaderProtocol:
            reader = _Reader(limit=self.max_header_bytes)
            return asyncio.StreamReaderProtocol(reader, self._connection)

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=sock)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._open)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    def _make_room(self) -> bool:
        """Close one connection still waiting for its request; False if none is.

        The one closed is the oldest that has sent nothing yet, else the oldest
        waiting. A request counts as sent as soon as it is in the socket: the
        loop accepts up to 100 queued connections in one tick and starts their
        handlers before it reads any of them, so a scrape accepted just ahead of
        a burst of new connections still has its request unread in the kernel
        while the burst makes room. Taking the oldest waiting, as this did, closed
        that scrape when the cap's worth of connections came in behind it.
        """
        waiting = [(w, r) for w, r in self._open.items() if r is not None]
        if not waiting:
            return False
        oldest = next((w for w, r in waiting if _silent(w, r)), waiting[0][0])
        self._open.pop(oldest)
        oldest.transport.abort()
        self.evicted += 1
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self.max_connections and not self._make_room():
            writer.transport.abort()  # every slot is sending a response: try again
            return
        self._open[writer] = reader
        try:
            try:
                async with asyncio.timeout(self.header_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"request head too large\n", head_only=False)
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return  # slow, gone, or closed to make room: nothing to answer
            if writer not in self._open:
                return
            self._open[writer] = None  # a request: not to be closed for room any more
            status, headers, body, head_only = self._answer(head)
            await self._respond(writer, status, body, head_only=head_only, headers=headers)
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()  # after _respond's flush, or at once: never lingers

    def _answer(self, head: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        """Status, headers, body and whether to send the head only, for one request."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, [], b"bad request line\n", False
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return 505, [], b"HTTP/1.0 or HTTP/1.1 only\n", False
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if line and not sep:
                return 400, [], b"bad header line\n", False
            if sep:
                fields[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        if url.path not in METRICS_PATHS:
            return 404, [], b"not found: the metrics are at /metrics\n", method == "HEAD"
        if method == "OPTIONS":
            return 200, [("Allow", ALLOW)], b"", False
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", ALLOW)], f"use {ALLOW}\n".encode(), False
        content_type, body = self._render(fields.get("accept", ""), parse_qs(url.query))
        headers = [("Content-Type", content_type)]
        if gzip_accepted(fields.get("accept-encoding", "")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return 200, headers, body, method == "HEAD"

    def _render(self, accept: str, params: dict[str, list[str]]) -> tuple[str, bytes]:
        """The exposition the ``Accept`` header asks for (text when it cannot be read)."""
        encoder: Callable[[Collector], bytes]
        try:
            encoder, content_type = choose_encoder(accept)
        except (ValueError, TypeError, IndexError):  # an unreadable version: the plain text
            encoder, content_type = generate_latest, CONTENT_TYPE_LATEST
        registry: Collector = self.registry
        if "name[]" in params:
            registry = self.registry.restricted_registry(params["name[]"])
        return content_type, encoder(registry)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        head_only: bool,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send one response and close once it is flushed, within :attr:`write_timeout`
        (else the caller aborts the connection)."""
        if not headers or all(name != "Content-Type" for name, _ in headers):
            headers = [*(headers or []), ("Content-Type", "text/plain; charset=utf-8")]
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1") + (b"" if head_only else body))
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self.write_timeout):
                writer.close()  # after what is buffered has gone out
                await writer.wait_closed()


class _Reader(asyncio.StreamReader):
    """A StreamReader that knows whether its client has sent a byte yet."""

    heard = False

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.heard = self.heard or bool(data)
        super().feed_data(data)


def _silent(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bool:
    """Whether a connection has sent nothing: no byte read, and none waiting in the socket."""
    if not isinstance(reader, _Reader) or reader.heard:
        return False
    return _unread_bytes(writer) == 0


def _unread_bytes(writer: asyncio.StreamWriter) -> int:
    """The bytes the kernel holds for a connection that the loop has not read yet
    (FIONREAD); 0 once the socket is closed."""
    sock = writer.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return 0
    return int.from_bytes(raw, sys.byteorder)


def _listening_socket(addr: str, port: int) -> socket.socket:
    """A listening socket on ``addr``: ``::`` serves IPv4 too, as the old server's did."""
    family, kind, proto, _, address = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(port: int, addr: str = "127.0.0.1") -> MetricsServer | None:
    """Start the endpoint on ``addr`` (``APPLY_METRICS_BIND``) unless ``port`` is 0.

    Loopback by default: the endpoint has no authentication, and the plan
    counts, outcomes and timings it shows are nobody else's business unless
    the operator chooses to expose them. It runs on the caller's event loop,
    with bounded connections and timeouts (:class:`MetricsServer`). Returns the
    server (None when off); a port in use is a ConfigError naming it (exit 2).
    """
    if port == 0:
        return None
    server = MetricsServer()
    await server.start(port, addr)
    return server
