"""One execution per symbol across every instance: a Redis lease with fencing.

``quantum:apply:lease:{symbol}`` holds a random token with a PX expiry,
renewed while held. A crashed holder's lease expires, so the symbol is never
stuck. Expiry alone is not enough (a paused holder may wake up after losing
it), so the send itself is fenced: the journal's attempt script refuses to
record, and the executor therefore refuses to send, unless the lease still
holds the caller's token (``journal.ATTEMPT_SCRIPT``). The result's publish
script releases the lease in the same step (``journal.PUBLISH_SCRIPT``).

Taking the lease is one script that also refuses when the plan already has
its result (another instance finished it while we waited) or, for a new
order, when the kill switch is on: one round trip on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.batching import ScriptHost
from apply_layer.caller_tokens import new_token
from apply_layer.errors import AlreadyFinal, KillSwitchOn, LeaseBusy, LeaseKeyWrongType
from apply_layer.permits import KILL_SWITCH_LUA

# KEYS: lease, journal, kill switch keys (2). ARGV: token, lease ms, kill switch
# from the environment (1/0), check the kill switch (1/0).
ACQUIRE_SCRIPT = (
    KILL_SWITCH_LUA
    + """
if redis.call('HEXISTS', KEYS[2], 'result_id') == 1 then return 'FINAL' end
if ARGV[4] == '1' and (ARGV[3] == '1' or kill_on(KEYS[3]) or kill_on(KEYS[4])) then
  return 'KILL'
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then return 'WRONGTYPE' end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'OK' end
-- Ours already: this is a resend whose first reply was lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then return 'OK' end
return 'BUSY'
"""
)
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass
class Lease:
    key: str
    token: str
    released: bool = False  # set when the publish script released it


class SymbolLeases:
    def __init__(
        self,
        redis: Redis,
        *,
        lease_ms: int,
        owner: str,
        kill_switch: bool,
        scripts: ScriptHost | None = None,
    ) -> None:
        self.redis = redis
        self.lease_ms = lease_ms
        self.owner = owner
        self.kill_switch = kill_switch
        host = scripts or redis
        self._acquire = host.register_script(ACQUIRE_SCRIPT)
        self._release = host.register_script(RELEASE_SCRIPT)
        self._renew = host.register_script(RENEW_SCRIPT)

    @contextlib.asynccontextmanager
    async def hold(
        self, symbol: str, plan_id: str, *, wait_sec: float, new_order: bool
    ) -> AsyncIterator[Lease]:
        """Hold the symbol's lease for the block.

        Raises :class:`AlreadyFinal` if the plan's result is out, (when
        ``new_order``) :class:`KillSwitchOn` if the kill switch is on, and
        :class:`LeaseKeyWrongType` if the lease key is not a string.
        """
        lease = Lease(K.symbol_lease(symbol), f"{self.owner}:{new_token()}")
        keys = [lease.key, K.journal(plan_id), *K.KILL_SWITCH_KEYS]
        args: list[str | int] = [lease.token, self.lease_ms, int(self.kill_switch), int(new_order)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_sec
        pause = 0.005
        while (answer := await self._acquire(keys=keys, args=args)) == "BUSY":
            if loop.time() >= deadline:
                raise LeaseBusy(f"lease on {symbol} is held by another instance")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        if answer == "FINAL":
            raise AlreadyFinal(plan_id)
        if answer == "KILL":
            raise KillSwitchOn(symbol)
        if answer == "WRONGTYPE":
            raise LeaseKeyWrongType(lease.key)
        # Most holds last milliseconds: renew only if this one outlives a third of the lease.
        renewer: list[asyncio.Task[None]] = []
        timer = loop.call_later(
            self.lease_ms / 3000, lambda: renewer.append(loop.create_task(self._keep(lease)))
        )
        try:
            yield lease
        finally:
            timer.cancel()
            for task in renewer:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not lease.released:
                with contextlib.suppress(Exception):  # expiry frees it if Redis is down
                    await self._release(keys=[lease.key], args=[lease.token])

    async def _keep(self, lease: Lease) -> None:
        while True:
            with contextlib.suppress(Exception):
                if not await self._renew(keys=[lease.key], args=[lease.token, self.lease_ms]):
                    return  # lost: the fence stops any further send
            await asyncio.sleep(self.lease_ms / 3000)
