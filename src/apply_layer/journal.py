"""The plan journal: where a plan stands, written so that any instance can resume it.

``quantum:apply:journal:{plan_id}`` (HASH) moves through these states::

    received -> permitted -> submitting -> executed | rejected | failed
            \\-> blocked  (the gate's decision; final once its result is out)
            \\-> skipped | rejected   (never reached the gate)

``permitted`` and ``blocked`` are written by the gate's script together with
the permits it consumed. ``submitting`` is written before every send with the
send time. Final states are written by :data:`PUBLISH_SCRIPT` in the same
atomic step as the one result entry and the cooldown key, so "final" and
"result published" can never disagree, and a resend of that script (after a
lost reply) finds ``result_id`` and publishes nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from apply_layer import keys as K
from apply_layer.batching import ScriptHost, run_packed
from apply_layer.errors import NotReplicated, OrderMayBeOut, RetryLater
from apply_layer.lease import Lease
from apply_layer.logs import format_qty
from apply_layer.redis_identity import IdentityTracker
from apply_layer.republish import Published, RecentResults
from apply_layer.statuses import FINAL_STATES

# How long a send record may wait for APPLY_REDIS_WAIT_REPLICAS replicas before the send
# is given up (replicas on a LAN acknowledge in well under a millisecond).
WAIT_TIMEOUT_MS = 1000

# Claim a stream entry for its plan. The journal, once open, names the entry
# that drives the plan (it outlives the claim key); before that the claim key
# (quantum:apply:claim:{id}, the daemon's own) decides who opens it. One round
# trip, atomic. KEYS: claim, journal. ARGV: entry id, claim TTL, now ms,
# journal TTL, plan id, symbol. Reply: {holder, state, result_id, outcome,
# wrong}: ``wrong`` names a key that holds another type ("journal" or
# "claim"), which no command of ours could use (WRONGTYPE, every retry).
# Values are cut to 64 bytes (stream ids are at most 41): they are logged.
CLAIM_SCRIPT = """
local jt = redis.call('TYPE', KEYS[2])['ok']
if jt ~= 'none' and jt ~= 'hash' then return {'', '', '', '', 'journal'} end
local j = redis.call('HMGET', KEYS[2], 'state', 'result_id', 'stream_id', 'outcome_status')
if j[1] then
  return {string.sub(j[3] or '', 1, 64), string.sub(j[1], 1, 64), string.sub(j[2] or '', 1, 64),
          string.sub(j[4] or '', 1, 64), ''}
end
local ct = redis.call('TYPE', KEYS[1])['ok']
if ct ~= 'none' and ct ~= 'string' then return {'', '', '', '', 'claim'} end
local holder = ARGV[1]
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  holder = string.sub(redis.call('GET', KEYS[1]) or '', 1, 64)  -- logged: bounded
end
if holder ~= ARGV[1] then return {holder, '', '', '', ''} end
redis.call('HSET', KEYS[2], 'state', 'received', 'plan_id', ARGV[5], 'symbol', ARGV[6],
           'stream_id', ARGV[1], 'received_at_ms', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {holder, 'received', '', '', ''}
"""

# Publish a plan's one result: XADD + final journal state + cooldown, once; and
# in the same step acknowledge the stream entry and release the symbol lease,
# so "result out" and "entry done" can never be seen apart.
# KEYS: journal, result stream, cooldown, plan stream, lease.
# ARGV: state, now ms, journal TTL, cooldown (1/0), MAXLEN, status, error,
#       group, entry id ('' = no ack), lease token ('' = none), unless sent
#       (1 = publish nothing while an order may be out: state submitting),
#       then the fields. Reply: {result id, 1 new / 0 already out / -1 refused}.
PUBLISH_SCRIPT = """
local function finish()
  if ARGV[9] ~= '' then redis.call('XACK', KEYS[4], ARGV[8], ARGV[9]) end
  if ARGV[10] ~= '' and redis.call('GET', KEYS[5]) == ARGV[10] then redis.call('DEL', KEYS[5]) end
end
local existing = redis.call('HGET', KEYS[1], 'result_id')
if existing then
  finish()
  return {existing, 0}
end
if ARGV[11] == '1' and redis.call('HGET', KEYS[1], 'state') == 'submitting' then
  return {'', -1}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 12))
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'result_id', id, 'final_at_ms', ARGV[2],
           'outcome_status', ARGV[6], 'outcome_error', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[2], 'EX', 3600) end
finish()
return {id, 1}
"""

# A result for an entry that has no usable journal (no valid plan id, or a key
# of the wrong type in the way), with the entry's acknowledgement in the same
# step. Published only while the entry is still pending, so a resend after a
# lost reply publishes nothing twice. KEYS: result stream, plan stream.
# ARGV: MAXLEN, group, entry id, then the fields. Reply: {result id, 1/0}.
UNJOURNALLED_SCRIPT = """
if #redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[3], ARGV[3], 1) == 0 then return {'', 0} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
return {id, 1}
"""

# Record one send attempt before it leaves (state submitting, attempts appended),
# fenced: only while the plan is authorized and the caller holds the symbol lease.
ATTEMPT_SCRIPT = """
if redis.call('GET', KEYS[2]) ~= ARGV[5] then
  return redis.error_reply('FENCED symbol lease not held by this caller')
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'permitted' and state ~= 'submitting' then
  return redis.error_reply('journal state is ' .. tostring(state) .. ', not permitted')
end
local a = redis.call('HGET', KEYS[1], 'order.attempts')
a = a and (a .. ',' .. ARGV[1]) or ARGV[1]
redis.call('HSET', KEYS[1], 'state', 'submitting', 'order.attempts', a,
           'order.client_order_id', ARGV[2], 'order.quantity', ARGV[3], 'order.side', ARGV[4])
return a
"""


@dataclass(frozen=True)
class Claim:
    """Who owns a plan and where it stands, as the claim script saw it."""

    holder: str  # the stream entry id that drives the plan
    state: str  # journal state ("" if none)
    result_id: str  # set once the plan's result is published
    first_status: str = ""  # the published result's status (EXECUTED, BLOCKED, ...)
    wrong_type: str = ""  # "claim" or "journal": that key holds another Redis type

    def owned_by(self, entry_id: str) -> bool:
        return self.holder == entry_id


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
        self.recent = recent
        self.wait_replicas = wait_replicas
        self.group = group
        self.dedupe_ttl_sec = dedupe_ttl_sec
        self.journal_ttl_sec = journal_ttl_sec
        host = scripts or redis
        self._claim = host.register_script(CLAIM_SCRIPT)
        self._publish = host.register_script(PUBLISH_SCRIPT)
        self._attempt = host.register_script(ATTEMPT_SCRIPT)
        self._unjournalled = host.register_script(UNJOURNALLED_SCRIPT)

    async def claim(self, plan_id: str, symbol: str, entry_id: str) -> Claim:
        reply = await self._claim(
            keys=[K.claim(plan_id), K.journal(plan_id)],
            args=[
                entry_id,
                self.dedupe_ttl_sec,
                _now_ms(),
                self.journal_ttl_sec,
                plan_id,
                symbol,
            ],
        )
        return Claim(str(reply[0]), str(reply[1]), str(reply[2]), str(reply[3]), str(reply[4]))

    async def sent_client_order_id(self, plan_id: str) -> str:
        """The client order id journalled with the plan's last send ("" if none)."""
        value = await self.redis.hget(K.journal(plan_id), "order.client_order_id")
        return str(value) if value else ""

    async def read(self, plan_id: str) -> dict[str, str]:
        data = await self.redis.hgetall(K.journal(plan_id))
        return {str(k): str(v) for k, v in data.items()}

    async def publish(
        self,
        plan_id: str,
        symbol: str,
        state: str,
        fields: Mapping[str, str],
        *,
        cooldown: bool = False,
        entry_id: str = "",
        lease: Lease | None = None,
        unless_sent: bool = False,
        remember: bool = True,
    ) -> tuple[str, bool]:
        """Write the final state and the one result entry; returns (entry id, new?).

        With ``entry_id`` the stream entry is acknowledged, and with ``lease``
        the symbol lease released, in the same atomic step. With
        ``unless_sent`` nothing is written while an order may be out (state
        ``submitting``): :class:`OrderMayBeOut` is raised instead. The result is
        kept in ``recent`` (if set) to be written again should Redis lose it.
        """
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state}")
        flat = [item for pair in fields.items() for item in pair]
        reply = await self._publish(
            keys=[
                K.journal(plan_id),
                K.RESULT_STREAM,
                K.cooldown(symbol),
                K.PLAN_STREAM,
                lease.key if lease else K.symbol_lease(symbol),
            ],
            args=[
                state,
                _now_ms(),
                self.journal_ttl_sec,
                "1" if cooldown else "0",
                K.STREAM_MAXLEN,
                fields.get("status", ""),
                fields.get("error", ""),
                self.group,
                entry_id,
                lease.token if lease else "",
                "1" if unless_sent else "0",
                *flat,
            ],
        )
        if int(reply[1]) == -1:
            raise OrderMayBeOut(plan_id)
        if lease is not None:
            lease.released = True
        if self.recent is not None and remember:
            items = tuple(fields.items())
            self.recent.add(
                Published(plan_id, symbol, state, items, cooldown, entry_id, time.monotonic())
            )
        return str(reply[0]), int(reply[1]) == 1

    async def publish_unjournalled(self, fields: Mapping[str, str], entry_id: str) -> bool:
        """Publish a result and acknowledge its entry, for an entry with no usable journal.

        Returns False when the entry was no longer pending (its result is out).
        """
        flat = [item for pair in fields.items() for item in pair]
        reply = await self._unjournalled(
            keys=[K.RESULT_STREAM, K.PLAN_STREAM],
            args=[K.STREAM_MAXLEN, self.group, entry_id, *flat],
        )
        return int(reply[1]) == 1

    async def ack(self, entry_id: str) -> None:
        """Acknowledge an entry that ends without a result of its own (a duplicate,
        a result already out, an entry trimmed away); a result's publish script
        acknowledges its entry itself."""
        await self.redis.xack(K.PLAN_STREAM, self.group, entry_id)

    async def republish_recent(self) -> int:
        """Write every recent result again where Redis lost it; returns how many were."""
        if self.recent is None:
            return 0
        restored = 0
        for item in self.recent.current():
            _, new = await self.publish(
                item.plan_id,
                item.symbol,
                item.state,
                dict(item.fields),
                cooldown=item.cooldown,
                entry_id=item.entry_id,
                remember=False,
            )
            restored += new
        return restored

    def order_log(
        self, plan_id: str, client_order_id: str, *, symbol: str, lease_token: str
    ) -> JournalOrderLog:
        return JournalOrderLog(self, plan_id, client_order_id, symbol, lease_token)


class JournalOrderLog:
    """An executor's view of one plan's journal (see ``executors.base.OrderLog``)."""

    def __init__(
        self, journal: Journal, plan_id: str, client_order_id: str, symbol: str, lease_token: str
    ) -> None:
        self._journal = journal
        self._key = K.journal(plan_id)
        self._lease_key = K.symbol_lease(symbol)
        self._lease_token = lease_token
        self._client_order_id = client_order_id

    async def attempts(self) -> list[int]:
        raw = await self._journal.redis.hget(self._key, "order.attempts")
        return [int(x) for x in str(raw).split(",")] if raw else []

    def unrecorded_until_ms(self) -> int:
        """When the Redis behind the journal last changed (or this process first met it).

        Without an identity tracker (unit tests on one server) nothing can be lost: 0.
        """
        identity = self._journal.identity
        return identity.changed_at_ms if identity is not None else 0

    async def record_attempt(self, sent_at_ms: int, *, quantity: Decimal, side: str) -> None:
        keys = [self._key, self._lease_key]
        args: list[str | int] = [
            sent_at_ms,
            self._client_order_id,
            format_qty(quantity),
            side,
            self._lease_token,
        ]
        if self._journal.wait_replicas:
            await self._record_and_wait(keys, args)
            return
        try:
            await self._journal._attempt(keys=keys, args=args)
        except ResponseError as exc:
            # Refused by the fence or the state check: nothing may be sent now.
            raise RetryLater(str(exc)) from None

    async def _record_and_wait(self, keys: list[str], args: list[str | int]) -> None:
        """The attempt script, then ``WAIT`` on the same connection (WAIT covers only the
        writes of the connection it runs on), in one round trip."""
        wanted = self._journal.wait_replicas
        recorded, acked = await run_packed(
            self._journal.redis,
            [("EVAL", ATTEMPT_SCRIPT, len(keys), *keys, *args), ("WAIT", wanted, WAIT_TIMEOUT_MS)],
        )
        if isinstance(recorded, ResponseError):
            raise RetryLater(str(recorded))
        if isinstance(acked, ResponseError) or int(acked) < wanted:
            reached = "an error" if isinstance(acked, ResponseError) else f"{int(acked)}"
            raise NotReplicated(
                f"the send record reached {reached} of {wanted} replica(s) within "
                f"{WAIT_TIMEOUT_MS} ms (APPLY_REDIS_WAIT_REPLICAS): nothing was sent"
            )


def _now_ms() -> int:
    return int(time.time() * 1000)
