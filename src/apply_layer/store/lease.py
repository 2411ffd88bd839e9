"""One execution per symbol across every instance: a Redis lease with fencing.

``quantum:apply:lease:{symbol}`` holds a random token with a PX expiry,
renewed while held. A crashed holder's lease expires, so the symbol is never
stuck. Expiry alone is not enough (a paused holder may wake up after losing
it), so the send itself is fenced: the journal's attempt script refuses to
record, and the executor therefore refuses to send, unless the lease still
holds the caller's token. The result's publish script releases the lease in
the same step.

This module owns the lease: its token rules are written once, in
``lua/lease.lua`` (``lease_held``, ``lease_release``), which it exposes as
:data:`LEASE_LUA` for the journal's scripts to be composed with (the fence
stays inside ``record_attempt.lua``, the release inside ``publish.lua``:
each one atomic step with what it guards). Its own scripts:
``lease_acquire.lua``, ``lease_renew.lua`` and ``lease_release.lua``.

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

from apply_layer.core import keys as K
from apply_layer.core.errors import AlreadyFinal, KillSwitchOn, LeaseBusy, LeaseKeyWrongType
from apply_layer.store import lua
from apply_layer.store.batching import ScriptHost
from apply_layer.store.caller_tokens import new_token

# lease_held(key, token) and lease_release(key, token): prepended to every script
# that fences on the lease or releases it, here and in journal.py.
LEASE_LUA = lua.source("lease")
ACQUIRE_SCRIPT = lua.source("lease_acquire", prelude=("kill_switch", "lease"))
RELEASE_SCRIPT = lua.source("lease_release", prelude=("lease",))
RENEW_SCRIPT = lua.source("lease_renew", prelude=("lease",))


@dataclass
class Lease:
    key: str
    token: str
    released: bool = False  # the publish script released it (see SymbolLeases.released_with)


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

    def released_with(self, lease: Lease) -> None:
        """Record that the result's publish script released ``lease`` in its step
        (``results.PublishReply.lease_released``): ``hold`` then leaves the key alone."""
        lease.released = True

    async def _keep(self, lease: Lease) -> None:
        while True:
            with contextlib.suppress(Exception):
                if not await self._renew(keys=[lease.key], args=[lease.token, self.lease_ms]):
                    return  # lost: the fence stops any further send
            await asyncio.sleep(self.lease_ms / 3000)
