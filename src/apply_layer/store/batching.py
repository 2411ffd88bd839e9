"""Automatic pipelining of the hot path's scripts.

Every plan costs five scripts (claim, gate, lease, attempt, publish). Sent one
command per round trip, redis-py spends about 70 us of CPU on each (a pool
checkout, a read timer, its retry and observability layers, packing in
Python), which made the daemon's CPU the bound on throughput.
:class:`ScriptBatcher` queues the calls made during one turn of the event
loop and sends them in one write, packed by hiredis, on one pooled connection,
read under one timer (no ``MULTI``: each script is atomic by itself, the batch
is not a transaction). ``bench/script_calls.py`` measures about 5.5 us of CPU
per call this way under load; a lone call still leaves within the same loop
turn, so latency is one round trip as before.

What stays true, call by call:

* A script's own error (the attempt script's ``FENCED``, say), or an argument
  that cannot be encoded, fails that call only; the others in the batch get
  their replies.
* A connection error fails every call of the batch, as it would have failed
  each call alone; redis-py's retry first resends the whole batch, calls
  whose replies were already read included. That is safe because every
  script we run may run twice (see ``connection``).
* A caller cancelled before its batch leaves has nothing sent.
* ``NOSCRIPT`` (a restarted or flushed server) reloads the script and resends
  that call once; a script that was not found did not run.

With a function library (``functions.py``; the daemon always has one), a
script the library holds is called with ``FCALL`` instead of ``EVALSHA``, so
the daemon's Redis user needs no ``EVAL`` at all. ``Function not found`` (the
library of this version is not loaded) is answered like ``NOSCRIPT``: the
library is loaded, if this user may (an admin's or the default user; never
the shipped least-privilege one), and the call resent once; otherwise the
call fails with :class:`FunctionLibraryMissing`, a Redis error that leaves
the plan pending. A server without Functions (Redis < 7, the embedded demo
server) answers ``unknown command``: from then on this batcher uses
``EVALSHA``, and resends the call that way.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apply_layer import metrics
from apply_layer.core.errors import FunctionLibraryMissing
from apply_layer.logs import get_logger
from apply_layer.store.connection import COMMAND_TIMEOUT_SEC

if TYPE_CHECKING:
    from apply_layer.store.functions import Library

log = get_logger()

KeyOrArg = str | int | float | bytes

# Calls per pipeline: enough to amortise a round trip, small enough that one
# batch never holds a connection (or Redis's single thread) for long.
MAX_BATCH = 256
# Batches at Redis at once: while they are out, new calls gather into the next
# one. In the benchmark's scenario 3, 1 was slower (2,118 against 2,479
# plans/s); 4 was as fast as no limit and holds 4 connections, not up to 10.
MAX_SENDING = 4


class ScriptHost(Protocol):
    """A ``Redis`` client or a :class:`ScriptBatcher`: where scripts are registered."""

    def register_script(self, script: str) -> Any: ...


@dataclass(frozen=True)
class BatchedScript:
    """A script registered with a :class:`ScriptBatcher`; call it like redis-py's."""

    batcher: ScriptBatcher
    source: str
    sha: str
    function: str | None = None  # its function in the batcher's library, if there

    async def __call__(
        self, keys: Sequence[KeyOrArg] | None = None, args: Sequence[KeyOrArg] | None = None
    ) -> Any:
        return await self.batcher.call(self, keys or (), args or ())

    def packed(self, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg]) -> bytes:
        """This call packed as the batcher would send it now (``FCALL`` or ``EVALSHA``)."""
        fcall = bool(self.function) and self.batcher.functions is not False
        return _packed(self, keys, args, fcall=fcall)

    def command(self, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg]) -> tuple[KeyOrArg, ...]:
        """This call as one command for a pipeline of one's own (``FCALL``, else ``EVAL``
        with the whole text, which needs no loaded script)."""
        if self.function and self.batcher.functions is not False:
            return ("FCALL", self.function, len(keys), *keys, *args)
        return ("EVAL", self.source, len(keys), *keys, *args)


@dataclass
class _Call:
    script: BatchedScript
    keys: Sequence[KeyOrArg]
    args: Sequence[KeyOrArg]
    packed: bytes  # the FCALL or EVALSHA command, packed in the caller's task
    future: asyncio.Future[Any]
    fcall: bool  # packed as FCALL (else EVALSHA)
    reloaded: bool = False


@dataclass
class BatchStats:
    """This batcher's counters (the process-wide ones are in ``metrics``)."""

    batches: int = 0
    calls: int = 0
    largest: int = 0
    reloads: int = 0


class ScriptBatcher:
    """Pipelines script calls made in the same event-loop turn over one client."""

    def __init__(
        self,
        redis: Redis,
        *,
        library: Library | None = None,
        max_batch: int = MAX_BATCH,
        max_sending: int = MAX_SENDING,
    ) -> None:
        self.redis = redis
        self.library = library
        # Whether the server has Functions: None until it has answered.
        self.functions: bool | None = None if library else False
        self.max_batch = max_batch
        self.max_sending = max_sending
        self.stats = BatchStats()
        self._queue: list[_Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def register_script(self, script: str) -> BatchedScript:
        # Redis names a script by its SHA1 (EVALSHA); not a security use.
        sha = hashlib.sha1(script.encode("utf-8"), usedforsecurity=False).hexdigest()
        function = self.library.function_for(script) if self.library else None
        return BatchedScript(self, script, sha, function)

    async def call(
        self, script: BatchedScript, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg]
    ) -> Any:
        # Packed here, so that an argument hiredis cannot encode fails this call only.
        fcall = bool(script.function) and self.functions is not False
        packed = _packed(script, keys, args, fcall=fcall)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Call(script, keys, args, packed, future, fcall))
        return await future

    async def prepare(self) -> str:
        """Find out how scripts run on this server, before the first plan; says how.

        Raises :class:`FunctionLibraryMissing` when the library of this version
        is not loaded and this user may not load it (the daemon then does not
        start), and a Redis error if Redis does not answer.
        """
        if self.library is None:
            self.functions = False
            return "scripts by EVALSHA"
        library = self.library
        try:
            await self.redis.execute_command("FCALL", library.version_function, 0)  # type: ignore[no-untyped-call]
        except NoPermissionError as exc:  # an ACL from before the library (no +fcall)
            raise FunctionLibraryMissing(
                f"this Redis user may not call {library.name} ({exc}): apply this release's "
                "deploy/redis/apply-layer.acl (docs/DEPLOY.md)"
            ) from None
        except ResponseError as exc:
            if _unknown_command(exc):
                self.functions = False
                return "this Redis has no Functions (< 7): scripts by EVALSHA"
            if not _function_missing(exc):
                raise
            await self._load_library()
            self.functions = True
            return f"function library {library.name} (loaded now by this user)"
        self.functions = True
        return f"function library {library.name}"

    async def _load_library(self) -> None:
        """Load this version's library; :class:`FunctionLibraryMissing` if this user may not."""
        assert self.library is not None
        try:
            await self.redis.execute_command("FUNCTION", "LOAD", self.library.code)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if "already exists" in str(exc):  # loaded meanwhile by another instance
                return
            raise FunctionLibraryMissing(self.library.missing_message(str(exc))) from None
        log.warning(
            "function_library_loaded",
            library=self.library.name,
            hint="this Redis user may load functions: it is not the least-privilege user "
            "of deploy/redis/apply-layer.acl",
        )

    def _enqueue(self, call: _Call) -> None:
        self._queue.append(call)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue and len(self._sending) < self.max_sending:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._queue and not self._scheduled:
            self._flush()

    async def _send(self, batch: list[_Call]) -> None:
        # A caller cancelled while its call waited here wants nothing sent.
        batch = [call for call in batch if not call.future.done()]
        if not batch:
            return
        self.stats.batches += 1
        self.stats.calls += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        metrics.SCRIPT_BATCHES.inc()
        metrics.SCRIPT_CALLS.inc(len(batch))
        try:
            replies = await exchange_packed(
                self.redis, b"".join(call.packed for call in batch), len(batch)
            )
        except BaseException as exc:
            for call in batch:
                _fail(call.future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        missing: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            if call.fcall and _unknown_command(reply) and self.functions is not False:
                self.functions = False  # Redis < 7: EVALSHA from now on
                log.warning("redis_without_functions", hint="scripts go by EVALSHA")
            if _missing(reply) and not call.reloaded:
                missing.append(call)
            elif isinstance(reply, BaseException):
                _fail(call.future, reply)
            elif not call.future.done():
                call.future.set_result(reply)
        if missing:
            try:
                await self._reload(missing)
            except BaseException as exc:  # cancelled while reloading: no caller is left waiting
                for call in missing:
                    _fail(call.future, exc)
                raise

    async def _reload(self, calls: list[_Call]) -> None:
        """Load what the server did not know (a script; the library), then send those
        calls again, once; after ``unknown command`` to FCALL, by EVALSHA."""
        self.stats.reloads += 1
        try:
            for call in calls:
                if call.fcall and self.functions is False:
                    call.fcall = False
                    call.packed = _packed(call.script, call.keys, call.args, fcall=False)
            if any(call.fcall for call in calls):
                await self._load_library()
            for source in {call.script.source for call in calls if not call.fcall}:
                await self.redis.script_load(source)
        except Exception as exc:
            for call in calls:
                _fail(call.future, exc)
            return
        for call in calls:
            call.reloaded = True
            self._enqueue(call)

    async def aclose(self) -> None:
        """Wait for the batches already sent (their callers are waiting for them)."""
        while self._sending or self._queue:
            if self._sending:
                await asyncio.wait(list(self._sending))
            else:
                await asyncio.sleep(0)


async def run_packed(redis: Redis, commands: Sequence[Sequence[KeyOrArg]]) -> list[Any]:
    """Send ``commands`` in one write over one pooled connection; their replies in order.

    Packed by hiredis (C) instead of redis-py (Python), read under one timer,
    resent whole on a connection error by the client's retry policy, and
    returned raw: no response callbacks, and an error reply is returned as
    its ``ResponseError``, not raised. Only for commands that are safe to
    resend (see ``connection``).
    """
    packed = b"".join(_pack(tuple(command)) for command in commands)
    return await exchange_packed(redis, packed, len(commands))


async def exchange_packed(redis: Redis, packed: bytes, count: int) -> list[Any]:
    """:func:`run_packed` for commands already packed: ``count`` of them in ``packed``."""
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        replies: list[Any] = await conn.retry.call_with_retry(
            lambda: _exchange(conn, packed, count),
            lambda _error: conn.disconnect(),
        )
        return replies
    finally:
        await pool.release(conn)


async def _exchange(conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
    """Send one packed batch and read its ``count`` replies (a script error is a reply).

    One timer for the whole batch instead of one per reply; any failure
    leaves the connection closed (redis-py closes it on an error inside a
    read or a write), so a half-read batch never reaches the next user.
    """
    replies: list[Any] = []
    # One deadline, two timers: on Python 3.11 the write's own wait_for inside
    # redis-py can swallow a cancellation that lands as the write completes,
    # and the reads must not then run without a deadline.
    deadline = asyncio.get_running_loop().time() + (conn.socket_timeout or COMMAND_TIMEOUT_SEC)
    try:
        async with asyncio.timeout_at(deadline):
            await conn.send_packed_command(packed, check_health=False)
        async with asyncio.timeout_at(deadline):
            for _ in range(count):
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"no reply to a batch of {count} scripts in time") from None
    return replies


def _packed(
    script: BatchedScript, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg], *, fcall: bool
) -> bytes:
    if fcall and script.function:
        return _pack(("FCALL", script.function, len(keys), *keys, *args))
    return _pack(("EVALSHA", script.sha, len(keys), *keys, *args))


# Redis' own answers, matched at the start: a script's error reply (or a permit's text
# in a reply) could hold these words, and must not switch how scripts are called.
def _unknown_command(reply: Any) -> bool:
    """``ERR unknown command 'FCALL'``: a server without Functions (Redis < 7)."""
    return isinstance(reply, ResponseError) and str(reply).lower().startswith("unknown command")


def _function_missing(reply: Any) -> bool:
    """``ERR Function not found``: the library of this version is not loaded."""
    return isinstance(reply, ResponseError) and str(reply).lower().startswith("function not found")


def _missing(reply: Any) -> bool:
    """A reply that says the server lacks what was called: a script, a function, FCALL."""
    return isinstance(reply, NoScriptError) or _function_missing(reply) or _unknown_command(reply)


def _pack(command: tuple[KeyOrArg, ...]) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; any length is accepted.
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
