"""The plan journal: where a plan stands, written so that any instance can resume it.

``quantum:apply:journal:{plan_id}`` (HASH) moves through these states::

    received -> permitted -> submitting -> executed | rejected | failed
            \\-> blocked  (the gate's decision; final once its result is out)
            \\-> skipped | rejected   (never reached the gate)

``permitted`` and ``blocked`` are written by the gate's script together with
the permits it consumed. ``submitting`` is written before every send with the
send time (``lua/record_attempt.lua``), only while the caller holds the symbol
lease. Final states are written by ``lua/publish.lua`` in the same atomic step
as the one result entry and the cooldown key (and the entry's acknowledgement
and the lease's release): that is ``results.py``'s job, reached as
:attr:`Journal.results`. What "holds the lease" means is lease.py's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from apply_layer.core import keys as K
from apply_layer.core.errors import AttemptsChanged, NotReplicated, PositionMoved, RetryLater
from apply_layer.core.log_format import format_qty
from apply_layer.store import lua
from apply_layer.store.batching import BatchedScript, ScriptHost, run_packed
from apply_layer.store.identity import IdentityTracker
from apply_layer.store.lease import LEASE_LUA
from apply_layer.store.republish import RecentResults
from apply_layer.store.results import Results

# How long a send record may wait for APPLY_REDIS_WAIT_REPLICAS replicas before the send
# is given up (replicas on a LAN acknowledge in well under a millisecond).
WAIT_TIMEOUT_MS = 1000

# The scripts, one atomic step each; every file's header names its KEYS, ARGV
# and reply. The fence before a send is recorded is composed with the lease's
# own rules, which lease.py owns (lease.LEASE_LUA); the publish scripts are
# results.py's.
CLAIM_SCRIPT = lua.source("claim")
ATTEMPT_SCRIPT = LEASE_LUA + lua.source("record_attempt")


@dataclass(frozen=True)
class Claim:
    """Who owns a plan and where it stands, as the claim script saw it."""

    holder: str  # the stream entry id that drives the plan
    state: str  # journal state ("" if none)
    result_id: str  # set once the plan's result is published
    first_status: str = ""  # the published result's status (EXECUTED, BLOCKED, ...)
    wrong_type: str = ""  # "claim" or "journal": that key holds another Redis type
    content: str = ""  # what the driving entry asks for (Plan.content; "" if unknown)

    def owned_by(self, entry_id: str) -> bool:
        return self.holder == entry_id


@dataclass(frozen=True)
class JournalRecord:
    """A plan's journal as one read saw it: what a resumed plan needs, read once.

    A plan resumed in ``permitted`` needs when its permits were consumed; one
    resumed in ``submitting`` needs the client order id its last send went out
    under. Both come from this one read, passed along, rather than each part
    reading the hash again.
    """

    fields: Mapping[str, str]

    @property
    def gate_at_ms(self) -> int:
        """When the gate consumed the permits (0 if it never did: long ago)."""
        return int(self.fields.get("gate_at_ms", "0"))

    @property
    def sent_client_order_id(self) -> str:
        """The client order id journalled with the plan's last send ("" if none)."""
        return self.fields.get("order.client_order_id", "")


class Journal:
    """Journal operations bound to one Redis client and the TTL settings."""

    def __init__(
        self,
        redis: Redis,
        *,
        dedupe_ttl_sec: int,
        journal_ttl_sec: int,
        group: str = "apply_layer",
        scripts: ScriptHost | None = None,
        identity: IdentityTracker | None = None,
        recent: RecentResults | None = None,
        wait_replicas: int = 0,
    ) -> None:
        self.redis = redis
        self.identity = identity
        self.wait_replicas = wait_replicas
        self.group = group
        self.dedupe_ttl_sec = dedupe_ttl_sec
        self.journal_ttl_sec = journal_ttl_sec
        host = scripts or redis
        self._claim = host.register_script(CLAIM_SCRIPT)
        self._attempt = host.register_script(ATTEMPT_SCRIPT)
        # Publishing a result is its own job (results.py), on the same client and host.
        self.results = Results(
            redis, journal_ttl_sec=journal_ttl_sec, group=group, scripts=scripts, recent=recent
        )

    async def claim(self, plan_id: str, symbol: str, entry_id: str, content: str = "") -> Claim:
        """Claim the plan for ``entry_id``; ``content`` (what it asks for) is journalled
        with it when this entry opens the journal, and the driving entry's is returned."""
        reply = await self._claim(
            keys=[K.claim(plan_id), K.journal(plan_id)],
            args=[
                entry_id,
                self.dedupe_ttl_sec,
                _now_ms(),
                self.journal_ttl_sec,
                plan_id,
                symbol,
                content,
            ],
        )
        first = str(reply[5]) if len(reply) > 5 else ""
        return Claim(
            str(reply[0]), str(reply[1]), str(reply[2]), str(reply[3]), str(reply[4]), first
        )

    async def read(self, plan_id: str) -> JournalRecord:
        """The plan's journal in one read (HGETALL)."""
        data = await self.redis.hgetall(K.journal(plan_id))
        return JournalRecord({str(k): str(v) for k, v in data.items()})

    async def ack(self, entry_id: str) -> None:
        """Acknowledge an entry that ends without a result of its own (a duplicate,
        a result already out, an entry trimmed away); a result's publish script
        acknowledges its entry itself (``results.py``)."""
        await self.redis.xack(K.PLAN_STREAM, self.group, entry_id)

    def order_log(
        self, plan_id: str, client_order_id: str, *, symbol: str, lease_token: str
    ) -> JournalOrderLog:
        return JournalOrderLog(self, plan_id, client_order_id, symbol, lease_token)

    def symbol_watch(self, symbol: str) -> JournalSymbolWatch:
        return JournalSymbolWatch(self, symbol)

    def unrecorded_until_ms(self) -> int:
        """When the Redis behind the journal last changed (or this process first met it,
        or, with a kept identity, an earlier run did).

        Without an identity tracker (unit tests on one server) nothing can be lost: 0.
        """
        return self.identity.changed_at_ms if self.identity is not None else 0


class JournalSymbolWatch:
    """What an executor reading ahead of the lease needs (``executors.base.SendWatch``)."""

    def __init__(self, journal: Journal, symbol: str) -> None:
        self._journal = journal
        self._keys = (K.last_send(symbol), K.symbol_lease(symbol))

    async def symbol_mark(self) -> str | None:
        """The symbol's last recorded send ("" if none), or None while its lease is held.

        The mark first, then the lease, in one round trip: a send recorded after the
        mark moves it (the attempt script then refuses a record made on it); a send
        recorded before it is finished once its lease is free (the lease goes with the
        result), so a position read after this call includes it. A held lease means
        an order may be in flight, and no position read now can be trusted.
        """
        pipe = self._journal.redis.pipeline(transaction=False)
        pipe.get(self._keys[0])
        pipe.get(self._keys[1])
        mark, lease = await pipe.execute()
        return None if lease is not None else str(mark or "")

    def unrecorded_until_ms(self) -> int:
        return self._journal.unrecorded_until_ms()


class JournalOrderLog:
    """An executor's view of one plan's journal (see ``executors.base.OrderLog``).

    ``record_attempt`` is a compare-and-set on the attempts the last
    ``attempts()`` (or record) saw, and, given a ``position_mark``, on the
    symbol's last send: see ``lua/record_attempt.lua``.
    """

    def __init__(
        self, journal: Journal, plan_id: str, client_order_id: str, symbol: str, lease_token: str
    ) -> None:
        self._journal = journal
        self._key = K.journal(plan_id)
        self._lease_key = K.symbol_lease(symbol)
        self._last_send_key = K.last_send(symbol)
        self._lease_token = lease_token
        self._client_order_id = client_order_id
        self._seen: str | None = None  # the attempts as last read or written

    async def attempts(self) -> list[int]:
        raw = await self._journal.redis.hget(self._key, "order.attempts")
        self._seen = str(raw) if raw else ""
        return [int(x) for x in self._seen.split(",")] if self._seen else []

    def unrecorded_until_ms(self) -> int:
        return self._journal.unrecorded_until_ms()

    async def record_attempt(
        self, sent_at_ms: int, *, quantity: Decimal, side: str, position_mark: str | None = None
    ) -> None:
        keys = [self._key, self._lease_key, self._last_send_key]
        args: list[str | int] = [
            sent_at_ms,
            self._client_order_id,
            format_qty(quantity),
            side,
            self._lease_token,
            "*" if self._seen is None else self._seen,
            "*" if position_mark is None else position_mark,
            K.LAST_SEND_TTL_SEC,
        ]
        if self._journal.wait_replicas:
            reply = await self._record_and_wait(keys, args)
        else:
            try:
                reply = await self._journal._attempt(keys=keys, args=args)
            except ResponseError as exc:
                raise _refusal(exc) from None
        self._seen = str(reply)

    async def _record_and_wait(self, keys: list[str], args: list[str | int]) -> object:
        """The attempt script, then ``WAIT`` on the same connection (WAIT covers only the
        writes of the connection it runs on), in one round trip."""
        wanted = self._journal.wait_replicas
        attempt = self._journal._attempt
        # FCALL with the function library (the daemon's user may not EVAL), else EVAL.
        command = (
            attempt.command(keys, args)
            if isinstance(attempt, BatchedScript)
            else ("EVAL", ATTEMPT_SCRIPT, len(keys), *keys, *args)
        )
        recorded, acked = await run_packed(
            self._journal.redis, [command, ("WAIT", wanted, WAIT_TIMEOUT_MS)]
        )
        if isinstance(recorded, ResponseError):
            raise _refusal(recorded)
        if isinstance(acked, ResponseError) or int(acked) < wanted:
            reached = "an error" if isinstance(acked, ResponseError) else f"{int(acked)}"
            raise NotReplicated(
                f"the send record reached {reached} of {wanted} replica(s) within "
                f"{WAIT_TIMEOUT_MS} ms (APPLY_REDIS_WAIT_REPLICAS): nothing was sent"
            )
        return recorded


def _refusal(exc: ResponseError) -> RetryLater:
    """The attempt script's refusal as the exception the executor acts on; nothing may be
    sent now (fence, state) or not on what the caller read (attempts, position)."""
    text = str(exc)
    if text.startswith("ATTEMPTS_CHANGED"):
        return AttemptsChanged(text)
    if text.startswith("POSITION_MOVED"):
        return PositionMoved(text)
    return RetryLater(text)


def _now_ms() -> int:
    return int(time.time() * 1000)
