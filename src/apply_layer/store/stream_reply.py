"""A stream reply parsed as it arrives, keeping at most one bounded entry at a time.

Why a module of its own: a stream entry can be as large as Redis allows
(512 MB a field). Read with redis-py, a batch of them is held whole three
times over (the socket buffer, hiredis's reply, Python's strings): 64 entries
of 8 MiB took the daemon to 575 MB, past the unit's ``MemoryMax=256M``, and an
entry that is read only to be OOM-killed is redelivered forever. This module
is the parse, and only it: ``stream_reader`` sends the command and owns the
connection, ``read_deadline`` the timeout.

A reply up to :data:`FAST_REPLY_MAX` is parsed by hiredis (fast); a longer one
is parsed again from its first byte by :class:`_Reply`, from the socket: an
entry's fields are kept while they total at most :data:`MAX_ENTRY_BYTES` and
:data:`MAX_ENTRY_FIELDS` pairs; past that the rest is read in 64 KiB chunks
and dropped, and the entry comes back ``oversized`` with only its short
``plan_id``, ``symbol`` and ``decision`` (so its REJECTED result can name
them). Whatever the stream holds, ``count`` entries held cost at most
``count * ENTRY_COST_MAX`` bytes (:attr:`StreamEntry.cost`). The reply may be
RESP2 or RESP3 (redis-py 8 speaks 3 where the server can).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from apply_layer.core.plans import MAX_ENTRY_BYTES
from apply_layer.store.read_deadline import ReadDeadline

MAX_ENTRY_FIELDS = 256  # field/value pairs; real plans have about 20
# Kept from an oversized entry, when short, to name it in its result.
ECHO_FIELDS = frozenset({"plan_id", "symbol", "decision"})
MAX_ECHO_BYTES = 128
# What one kept entry can cost in memory at most: UTF-8 decoding can double
# the bytes (an invalid byte becomes U+FFFD, two bytes in a str), and each
# string and dict slot has its overhead (about 100 bytes).
ENTRY_COST_MAX = 2 * MAX_ENTRY_BYTES + 2 * MAX_ENTRY_FIELDS * 100
CHUNK = 65536
# A reply up to this size is parsed by hiredis (fast); a longer one streamed.
FAST_REPLY_MAX = 4 << 20


@dataclass(frozen=True)
class StreamEntry:
    """One entry as read: its fields, or only its short echo fields if ``oversized``."""

    entry_id: str
    fields: dict[str, str]
    size: int  # bytes of its field names and values, all of them, as Redis holds them
    oversized: bool = False

    @property
    def cost(self) -> int:
        """Memory this entry holds, an upper bound (see :data:`ENTRY_COST_MAX`)."""
        kept = sum(len(k) + len(v) for k, v in self.fields.items())
        return 2 * kept + 200 * len(self.fields) + 200


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")  # as the client decodes (connection.py)


_ECHO = frozenset(name.encode() for name in ECHO_FIELDS)
_NEED_MORE, _OVERSIZED = -1, -2
_DOLLAR, _NULL = ord("$"), ord("_")


def _echo(name: bytes, length: int) -> bool:
    """A short echo field, kept from an oversized entry."""
    return name in _ECHO and 0 <= length <= MAX_ECHO_BYTES


def _entry_from_buffer(buf: bytes, pos: int) -> tuple[StreamEntry, int] | int:
    """The entry at ``buf[pos:]`` and the position after it, if it is all there.

    The fast path (the hot path's entries are small): no awaiting per field.
    Returns ``_NEED_MORE`` when the buffer ends first (the caller reads more
    and tries again: what it holds of the entry is then at most
    MAX_ENTRY_BYTES plus headers), or ``_OVERSIZED`` as soon as the headers
    say the entry is past the limits, before its bytes are read.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _NEED_MORE
    if buf[pos:end] != b"*2":
        raise RedisConnectionError("a stream entry is not an (id, fields) pair")
    pos = end + 2
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _NEED_MORE
    if buf[pos] != _DOLLAR:
        raise RedisConnectionError("a stream entry id is not a string")
    start = end + 2
    pos = start + int(buf[pos + 1 : end]) + 2
    if len(buf) < pos:
        return _NEED_MORE
    entry_id = buf[start : pos - 2].decode("ascii", "replace")
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _NEED_MORE
    if buf[pos] == _NULL or buf[pos:end] == b"*-1":  # deleted while pending
        return StreamEntry(entry_id, {}, 0), end + 2
    count = int(buf[pos + 1 : end])
    if count > 2 * MAX_ENTRY_FIELDS:
        return _OVERSIZED
    pos, size, items = end + 2, 0, []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return _NEED_MORE
        if buf[pos] != _DOLLAR:
            raise RedisConnectionError("a stream field is not a string")
        length = int(buf[pos + 1 : end])
        size += length
        if size > MAX_ENTRY_BYTES:
            return _OVERSIZED
        start = end + 2
        pos = start + length + 2
        if len(buf) < pos or length < 0:
            if length < 0:
                raise RedisConnectionError("a stream field is null")
            return _NEED_MORE
        items.append(buf[start : start + length])
    fields = dict(zip(map(_text, items[::2]), map(_text, items[1::2]), strict=True))
    return StreamEntry(entry_id, fields, size), pos


class _Reply:
    """Just enough of a RESP parser for stream replies, reading from the socket.

    It keeps its own buffer of what it has read; a bulk string it does not
    keep is read past in chunks, never held whole.
    """

    def __init__(self, reader: asyncio.StreamReader, timeout: ReadDeadline) -> None:
        self.reader = reader
        self.timeout = timeout
        self.buf = b""
        self.pos = 0

    async def _fill(self) -> None:
        chunk = await self.reader.read(CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", None)
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        # Bytes keep coming: a huge entry may take longer than one timeout to read past.
        self.timeout.extend()

    async def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            if len(self.buf) - self.pos > 1024:
                raise RedisConnectionError("a reply header line longer than 1 KiB")
            await self._fill()
        line, self.pos = self.buf[self.pos : end], end + 2
        return line

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            await self._fill()
        data, self.pos = self.buf[self.pos : self.pos + n], self.pos + n
        return data

    async def skip(self, n: int) -> None:
        """Read past ``n`` bytes without keeping them."""
        held = len(self.buf) - self.pos
        if held >= n:
            self.pos += n
            return
        n -= held
        self.buf, self.pos = b"", 0
        while n > 0:
            chunk = await self.reader.read(min(CHUNK, n))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(chunk)
            self.timeout.extend()

    async def header(self) -> tuple[bytes, bytes]:
        line = await self.line()
        kind, rest = line[:1], line[1:]
        if kind in (b"-", b"!"):  # an error reply (RESP3 sends a long one as "!")
            message = rest if kind == b"-" else await self.exactly(int(rest) + 2)
            raise ResponseError(_text(message).strip())
        return kind, rest

    async def length(self, *want: bytes) -> int:
        """The length in a header of one of the ``want`` types; -1 for a null (either protocol)."""
        kind, rest = await self.header()
        if kind == b"_":
            return -1
        if kind not in want:
            raise RedisConnectionError(f"expected {want!r} in a stream reply, got {kind!r}")
        return int(rest)

    async def bulk(self) -> bytes | None:
        n = await self.length(b"$")
        return None if n < 0 else (await self.exactly(n + 2))[:-2]

    async def entries(self) -> list[StreamEntry]:
        """An array of entries (``XRANGE``; the entries of one ``XREADGROUP`` stream)."""
        count = await self.length(b"*")
        out = []
        for _ in range(max(count, 0)):
            while (parsed := _entry_from_buffer(self.buf, self.pos)) == _NEED_MORE:
                await self._fill()
            if isinstance(parsed, tuple):
                entry, self.pos = parsed
            else:
                entry = await self.oversized_entry()
            out.append(entry)
        return out

    async def oversized_entry(self) -> StreamEntry:
        """Read past an entry past the limits, keeping only its short echo fields."""
        await self.length(b"*")
        entry_id = _text(await self.bulk() or b"")
        count = await self.length(b"*")
        kept: dict[bytes, bytes] = {}
        size, name = 0, b""
        for i in range(max(count, 0)):
            length = await self.length(b"$")
            size += max(length, 0)
            wanted = 0 <= length <= MAX_ECHO_BYTES and (i % 2 == 0 or _echo(name, length))
            if not wanted:
                await self.skip(max(length, 0) + 2 if length >= 0 else 0)
                name = b""
            elif i % 2 == 0:
                name = (await self.exactly(length + 2))[:-2]
            else:
                kept[name] = (await self.exactly(length + 2))[:-2]
        fields = {_text(k): _text(v) for k, v in kept.items()}
        return StreamEntry(entry_id, fields, size, oversized=True)

    async def xreadgroup(self) -> list[StreamEntry]:
        """RESP2: an array of (key, entries) pairs; RESP3: a map of key -> entries."""
        kind, rest = await self.header()
        if kind not in (b"*", b"%", b"_"):
            raise RedisConnectionError(f"unexpected XREADGROUP reply type {kind!r}")
        out: list[StreamEntry] = []
        for _ in range(-1 if kind == b"_" else int(rest)):  # -1: nothing within BLOCK
            if kind == b"*" and await self.length(b"*") != 2:
                raise RedisConnectionError("an XREADGROUP stream is not a (key, entries) pair")
            await self.bulk()
            out.extend(await self.entries())
        return out


def _entry(entry_id: bytes, flat: list[bytes] | None) -> StreamEntry:
    """An entry parsed whole by hiredis (the fast path): checked against the same limits."""
    if flat is None:  # deleted while pending: nothing left of it
        return StreamEntry(_text(entry_id), {}, 0)
    size = sum(map(len, flat))
    if size <= MAX_ENTRY_BYTES and len(flat) <= 2 * MAX_ENTRY_FIELDS:
        fields = dict(zip(map(_text, flat[::2]), map(_text, flat[1::2]), strict=True))
        return StreamEntry(_text(entry_id), fields, size)
    pairs = zip(flat[::2], flat[1::2], strict=True)
    echo = {_text(k): _text(v) for k, v in pairs if _echo(k, len(v))}
    return StreamEntry(_text(entry_id), echo, size, oversized=True)


def _from_parsed(reply: Any, xreadgroup: bool) -> list[StreamEntry]:
    if reply is None:  # XREADGROUP: nothing arrived within BLOCK
        return []
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    if xreadgroup:  # RESP2: [[key, entries], ...]; RESP3: {key: entries}
        streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
        return [_entry(eid, flat) for entries in streams for eid, flat in entries]
    return [_entry(eid, flat) for eid, flat in reply]


async def read_reply(
    reader: asyncio.StreamReader, deadline: ReadDeadline, xreadgroup: bool
) -> list[StreamEntry]:
    """The fast path: hiredis parses a reply of at most FAST_REPLY_MAX bytes.

    A longer one (only huge entries make one: 256 plans are about 200 KB) is
    parsed again from its first byte by :class:`_Reply`, which holds at most
    one entry's kept fields and a chunk at a time.
    """
    parser = hiredis.Reader()
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", None)
        parser.feed(chunk)
        reply = parser.gets()
        if reply is not False:
            if parser.has_data():
                raise RedisConnectionError("bytes after the stream reply")
            return _from_parsed(reply, xreadgroup)
        chunks.append(chunk)
        total += len(chunk)
        deadline.extend()
        if total > FAST_REPLY_MAX:
            del parser
            slow = _Reply(reader, deadline)
            slow.buf = b"".join(chunks)
            chunks.clear()
            return await (slow.xreadgroup() if xreadgroup else slow.entries())
