"""Reads of the plan stream whose memory does not follow what the stream holds.

A stream entry can be as large as Redis allows (512 MB a field). Read with
redis-py, a batch of them is held whole three times over (the socket
buffer, hiredis's reply, Python's strings): 64 entries of 8 MiB took the
daemon to 575 MB, past the unit's ``MemoryMax=256M``, and an entry that is
read only to be OOM-killed is redelivered forever.

So the service's reads (``XREADGROUP``, and ``XRANGE`` for a claimed entry)
send their command over one of the client's pooled connections and parse
the reply here, from the socket, as it arrives: an entry's fields are kept
while they total at most :data:`MAX_ENTRY_BYTES` and
:data:`MAX_ENTRY_FIELDS` pairs; past that the rest is read in 64 KiB chunks
and dropped, and the entry comes back ``oversized`` with only its short
``plan_id``, ``symbol`` and ``decision`` (so its REJECTED result can name
them). Whatever the stream holds, a read of ``count`` entries holds at most
``count * ENTRY_COST_MAX`` bytes of them, and ``service`` sizes ``count``
from that (docs/RELIABILITY.md, "Staying bounded").

The reply may be RESP2 or RESP3 (redis-py 8 speaks 3 where the server
can); the connection is left clean after a complete reply, and closed after
anything else. A read is not retried here: a connection lost mid-reply may
have delivered entries we never saw, and the service's outage path re-reads
its own pending entries before anything new.

A read's deadline counts the time the event loop ran, not the time the
process was stopped (SIGSTOP, a frozen VM): :class:`_Deadline`. Otherwise a
daemon resumed past a read's deadline finds the read's timer and the reply
Redis sent long ago ready in the same turn of the loop, the timer cancels the
read first, and a stopped process reads as a Redis outage (issue 23).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer.core.plans import MAX_ENTRY_BYTES
from apply_layer.store.connection import COMMAND_TIMEOUT_SEC

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
# A deadline's timer run this late means the loop was not running (the process was
# stopped); the read then gets this long, from the resume, for a reply already sent.
STALL_SEC = 0.5
STALL_GRACE_SEC = 0.5


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
    return raw.decode("utf-8", "replace")  # as the client decodes (redis_client)


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


class _Deadline:
    """An ``asyncio.timeout`` that expires only after the loop itself has waited.

    Its timer checks how late the loop came to it: on time, the read expires
    (one turn of the loop later, so a reply that arrived in the same turn as
    the timer is read first, not thrown away), and a Redis that does not
    answer is reported as soon as before; more than :data:`STALL_SEC` late,
    the process was stopped (or its loop blocked) through the deadline and
    the socket was never looked at, so the read gets :data:`STALL_GRACE_SEC`
    from now: a reply waiting in the socket is read at once, a missing one
    still expires. ``asyncio.timeout`` alone cancels the read in the turn its
    timer is due, even when the reply is ready in that same turn.
    """

    def __init__(self, timeout: asyncio.Timeout, delay: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._when = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.reschedule(self._loop.time() + delay)

    def reschedule(self, when: float) -> None:
        """Expire at ``when`` (loop time) instead."""
        self.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._due)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        now = self._loop.time()
        if now - self._when > STALL_SEC:
            self.reschedule(now + STALL_GRACE_SEC)
        else:
            self._timeout.reschedule(now)  # expires: the read is cancelled


class _Reply:
    """Just enough of a RESP parser for stream replies, reading from the socket.

    It keeps its own buffer of what it has read; a bulk string it does not
    keep is read past in chunks, never held whole.
    """

    def __init__(self, reader: asyncio.StreamReader, timeout: _Deadline) -> None:
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
        self.timeout.reschedule(asyncio.get_running_loop().time() + COMMAND_TIMEOUT_SEC)

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
            self.timeout.reschedule(asyncio.get_running_loop().time() + COMMAND_TIMEOUT_SEC)

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


async def _read_reply(
    reader: asyncio.StreamReader, deadline: _Deadline, xreadgroup: bool
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
        deadline.reschedule(asyncio.get_running_loop().time() + COMMAND_TIMEOUT_SEC)
        if total > FAST_REPLY_MAX:
            del parser
            slow = _Reply(reader, deadline)
            slow.buf = b"".join(chunks)
            chunks.clear()
            return await (slow.xreadgroup() if xreadgroup else slow.entries())


async def _run(
    redis: Redis, command: Sequence[str | int], *, wait_sec: float, xreadgroup: bool
) -> list[StreamEntry]:
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    clean = False
    try:
        await conn.send_command(*command)
        reader = conn._reader  # the socket's StreamReader: the reply is parsed from it here
        if reader is None:
            raise RedisConnectionError("connection closed before the stream reply")
        async with asyncio.timeout(None) as timeout:
            deadline = _Deadline(timeout, wait_sec + COMMAND_TIMEOUT_SEC)
            try:
                entries = await _read_reply(reader, deadline, xreadgroup)
            finally:
                deadline.cancel()
        clean = True
        return entries
    except ResponseError:
        clean = True  # an error reply is a whole reply: the connection is still in step
        raise
    except TimeoutError:
        raise RedisTimeoutError("no complete stream reply in time") from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise RedisConnectionError(f"stream read failed: {exc!r}") from None
    finally:
        if not clean:
            await conn.disconnect(nowait=True)
        await pool.release(conn)


async def xreadgroup(
    redis: Redis,
    group: str,
    consumer: str,
    stream: str,
    last_id: str,
    *,
    count: int,
    block_ms: int | None = None,
) -> list[StreamEntry]:
    """``XREADGROUP`` of up to ``count`` entries, bounded as the module says."""
    command: list[str | int] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        command += ["BLOCK", block_ms]
    command += ["STREAMS", stream, last_id]
    wait = (block_ms or 0) / 1000
    return await _run(redis, command, wait_sec=wait, xreadgroup=True)


async def xrange_one(redis: Redis, stream: str, entry_id: str) -> StreamEntry:
    """One entry by id (``XRANGE id id``), bounded; empty fields if it is gone."""
    entries = await _run(
        redis, ["XRANGE", stream, entry_id, entry_id], wait_sec=0.0, xreadgroup=False
    )
    return entries[0] if entries else StreamEntry(entry_id, {}, 0)
