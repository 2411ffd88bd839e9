"""One execution per symbol across every instance: a Redis lease with fencing.

``quantum:apply:lease:{symbol}`` holds a random token with a PX expiry and is
renewed while held. A crashed holder's lease expires, so the symbol is never
stuck. Expiry alone is not enough (a paused holder may wake up after losing
it), so the send itself is fenced: the journal's attempt script refuses to
record, and the executor therefore refuses to send, unless the lease still
holds the caller's token (``journal.ATTEMPT_SCRIPT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.errors import RetryLater

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LeaseBusy(RetryLater):
    """Another holder kept the symbol's lease for longer than we would wait."""


class LeaseLost(RetryLater):
    """The lease expired or was taken while we held it: the send was refused."""


class SymbolLeases:
    def __init__(self, redis: Redis, *, lease_ms: int, owner: str) -> None:
        self.redis = redis
        self.lease_ms = lease_ms
        self.owner = owner
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)

    @contextlib.asynccontextmanager
    async def hold(self, symbol: str, wait_sec: float) -> AsyncIterator[str]:
        """Hold the symbol's lease for the block; yields the fencing token."""
        key = K.symbol_lease(symbol)
        token = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        deadline = asyncio.get_running_loop().time() + wait_sec
        pause = 0.005
        while not await self.redis.set(key, token, nx=True, px=self.lease_ms):
            if asyncio.get_running_loop().time() >= deadline:
                raise LeaseBusy(f"lease on {symbol} is held by another instance")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        renewer = asyncio.create_task(self._keep(key, token))
        try:
            yield token
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(Exception):  # expiry frees it if Redis is down
                await self._release(keys=[key], args=[token])

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            with contextlib.suppress(Exception):
                if not await self._renew(keys=[key], args=[token, self.lease_ms]):
                    return  # lost: the fence stops any further send
