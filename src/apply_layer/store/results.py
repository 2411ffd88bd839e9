"""Publishing a plan's one result: the result stream entry and the journal's outcome,
in one atomic step (``lua/publish.lua``).

The publish script writes the result entry, the journal's final state and
the symbol's cooldown, and with them acknowledges the stream entry and
releases the symbol lease: "final" and "result published" can never
disagree, and a resend of the script (after a lost reply) finds
``result_id`` and publishes nothing twice. An entry with no usable journal
gets its result from ``lua/publish_unjournalled.lua``, acknowledged in the
same step too.

Around the script, this module keeps what else belongs to a result once it
is out: a result that said "no order" while the order exists is corrected
(``corrections.py``), and the recent results are remembered to be written
again should Redis lose them (``republish.py``). It reports the lease's
release as a fact (:attr:`PublishReply.lease_released`); the lease's owner
(``lease.SymbolLeases``) records it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import OrderMayBeOut
from apply_layer.core.statuses import FINAL_STATES
from apply_layer.store import corrections, lua
from apply_layer.store.batching import ScriptHost
from apply_layer.store.lease import LEASE_LUA, Lease
from apply_layer.store.republish import Published, RecentResults

# The publish script is composed with the lease's own rules (lease.py owns them), so
# that the release is one atomic step with the result.
PUBLISH_SCRIPT = (
    LEASE_LUA + f"local COOLDOWN_TTL_SEC = {K.COOLDOWN_TTL_SEC}\n" + lua.source("publish")
)
UNJOURNALLED_SCRIPT = lua.source("publish_unjournalled")


@dataclass(frozen=True)
class PublishReply:
    """What one publish did."""

    result_id: str  # the plan's result entry (this call's, or the one out already)
    new: bool  # this call wrote it (or corrected one that said "no order")
    lease_released: bool = False  # the lease given was released in the same step


class Results:
    """The result stream and the journal's outcome, bound to one Redis client."""

    def __init__(
        self,
        redis: Redis,
        *,
        journal_ttl_sec: int,
        group: str = "apply_layer",
        scripts: ScriptHost | None = None,
        recent: RecentResults | None = None,
    ) -> None:
        self.redis = redis
        self.recent = recent
        self.group = group
        self.journal_ttl_sec = journal_ttl_sec
        host = scripts or redis
        self._publish = host.register_script(PUBLISH_SCRIPT)
        self._unjournalled = host.register_script(UNJOURNALLED_SCRIPT)
        self._correct = host.register_script(corrections.CORRECT_SCRIPT)

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
    ) -> PublishReply:
        """Write the final state and the one result entry.

        ``new`` is also True when an executed result corrected a published one
        that said no order was placed (``corrections.py``).

        With ``entry_id`` the stream entry is acknowledged, and with ``lease``
        the symbol lease released, in the same atomic step
        (``lease_released``; its holder records it). With ``unless_sent``
        nothing is written while an order may be out (state ``submitting``):
        :class:`OrderMayBeOut` is raised instead. The result is kept in
        ``recent`` (if set) to be written again should Redis lose it.
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
        result_id, new = str(reply[0]), int(reply[1]) == 1
        out_status = str(reply[2]) if len(reply) > 2 else ""
        if not new and result_id and corrections.may_correct(fields, out_status):
            # A result is out already; if it says "no order" while this one has the
            # order, the truth is published as a correcting entry (corrections.py).
            result_id, new = await corrections.correct(
                self._correct,
                plan_id=plan_id,
                symbol=symbol,
                wrong_id=result_id,
                fields=fields,
                journal_ttl_sec=self.journal_ttl_sec,
            )
        if self.recent is not None and remember:
            items = tuple(fields.items())
            self.recent.add(
                Published(plan_id, symbol, state, items, cooldown, entry_id, time.monotonic())
            )
        return PublishReply(result_id, new, lease_released=lease is not None)

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

    async def republish_recent(self) -> int:
        """Write every recent result again where Redis lost it; returns how many were."""
        if self.recent is None:
            return 0
        restored = 0
        for item in self.recent.current():
            reply = await self.publish(
                item.plan_id,
                item.symbol,
                item.state,
                dict(item.fields),
                cooldown=item.cooldown,
                entry_id=item.entry_id,
                remember=False,
            )
            restored += reply.new
        return restored


def _now_ms() -> int:
    return int(time.time() * 1000)
