"""``wait_and_consume_permits``: the atomic gate between a plan and the exchange.

Within a deadline the gate either consumes every required permit in one
atomic step (``gate.lua``) or blocks the plan. It wakes on a permit's arrival
(keyspace notifications, see ``keyspace.py``) and polls every step as a
fallback; a deny, a governor block marker or the kill switch ends the wait at
once. The script records the decision and the permits it saw in the plan's
journal in the same step, and replays that record to any later call, so a
resend after a lost reply gets the first answer, and of many racing callers
exactly one is the owner of the decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from apply_layer import metrics
from apply_layer.core import keys as K
from apply_layer.core.decision import (
    DECISIONS,
    DEFAULT_JOURNAL_TTL_SEC,
    DEFAULT_PERMIT_STEP_MS,
    DEFAULT_PERMIT_WAIT_MS,
    DEFAULT_REQUIRED_PERMITS,
    Judged,
    Situation,
    block_reason,
)
from apply_layer.core.keys import ISSUERS, Issuer
from apply_layer.core.log_format import permit_block_line, permit_ok_line
from apply_layer.core.permits import (
    MAX_PERMIT_BYTES,
    MAX_PERMIT_FIELDS,
    MAX_PERMIT_MEMORY,
    OVERSIZED_PREFIX,
    PermitVerdict,
    evaluate_permit,
)
from apply_layer.core.statuses import GateStatus, JournalState
from apply_layer.logs import get_logger, write_marker_line
from apply_layer.settings import Settings
from apply_layer.store import lua
from apply_layer.store.batching import BatchedScript, KeyOrArg, ScriptHost
from apply_layer.store.caller_tokens import new_token
from apply_layer.store.gate_lane import GateLane, LaneWaiter
from apply_layer.store.keyspace import KeyspaceWatcher

log = get_logger()

# The kill switch rule for Lua scripts (``kill_on``), prepended to gate.lua.
KILL_SWITCH_LUA = lua.source("kill_switch")

GATE_SCRIPT = (
    KILL_SWITCH_LUA
    + f"local MAX_PERMIT_BYTES, OVERSIZED_PREFIX = {MAX_PERMIT_BYTES}, '{OVERSIZED_PREFIX}'\n"
    + f"local MAX_PERMIT_FIELDS, MAX_PERMIT_MEMORY = {MAX_PERMIT_FIELDS}, {MAX_PERMIT_MEMORY}\n"
    + lua.source("gate")
)
_PER_ISSUER = 6  # name, kind, raw, ttl, verdict, category


@dataclass(frozen=True)
class GateConfig:
    """What the gate needs from the settings."""

    issuers: tuple[Issuer, ...] = tuple(ISSUERS[name] for name in DEFAULT_REQUIRED_PERMITS)
    wait_ms: int = DEFAULT_PERMIT_WAIT_MS
    step_ms: int = DEFAULT_PERMIT_STEP_MS
    journal_ttl_sec: int = DEFAULT_JOURNAL_TTL_SEC
    kill_switch: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig:
        return cls(
            issuers=tuple(ISSUERS[name] for name in settings.required_permits),
            wait_ms=settings.permit_wait_ms,
            step_ms=settings.permit_step_ms,
            journal_ttl_sec=settings.journal_ttl_sec,
            kill_switch=settings.kill_switch,
        )

    def keys(self, plan_id: str) -> list[str]:
        """KEYS for the script, in the order ``gate.lua`` documents."""
        return [
            K.journal(plan_id),
            K.governor_block(plan_id),
            *K.KILL_SWITCH_KEYS,
            *(issuer.key(plan_id) for issuer in self.issuers),
        ]

    def watch_patterns(self) -> list[str]:
        """Key patterns whose writes should wake a waiter, none covered by another.

        ``quantum:permit:*`` already matches ``quantum:permit:p33:*``; subscribing
        to both would deliver every P3.3 event twice.
        """
        templates = [issuer.key_template for issuer in self.issuers]
        patterns = {K.glob_of(t) for t in [*templates, K.GOVERNOR_BLOCK_TEMPLATE]}
        patterns |= set(K.KILL_SWITCH_KEYS)
        wild = [p[:-1] for p in patterns if p.endswith("*")]
        return sorted(
            p for p in patterns if not any(p != w + "*" and p.startswith(w) for w in wild)
        )


@dataclass(frozen=True)
class GateResult:
    """The gate's decision on one plan."""

    plan_id: str
    symbol: str
    status: GateStatus
    reason: str  # short: "", "missing_p33", "p33_permit_denied:...", "kill_switch", ...
    wait_ms: int
    owner: bool  # this call made the decision (False: another caller already had)
    decided_at_ms: int
    permits: dict[str, PermitVerdict] = field(default_factory=dict)
    ttls: dict[str, int] = field(default_factory=dict)
    safe_qty: Decimal | None = None

    @property
    def allowed(self) -> bool:
        return self.status == GateStatus.ALLOW

    @property
    def error(self) -> str:
        """The result stream's ``error`` field (docs/CONTRACT.md 2)."""
        if self.status == GateStatus.TIMEOUT:
            return f"permit_timeout_or_missing:{self.reason}"
        return self.reason

    @property
    def reason_class(self) -> str:
        """The reason without its free text, for metric labels: ``missing_p33``, ``kill_switch``."""
        return self.reason.split(":", 1)[0] or "none"

    def log_line(self) -> str:
        if self.allowed:
            return permit_ok_line(self.plan_id, self.symbol, self.wait_ms, self.safe_qty)
        return permit_block_line(self.plan_id, self.symbol, self.wait_ms, self.reason, self.ttls)


def build_result(
    reply: Sequence[Any], plan_id: str, symbol: str, config: GateConfig, wait_ms: int
) -> GateResult:
    """Turn the script's reply into a typed result, re-checking every verdict in Python."""
    status, owner, decided_at, marker, count = reply[:5]
    by_name = {issuer.name: issuer for issuer in config.issuers}
    permits: dict[str, PermitVerdict] = {}
    judged: list[Judged] = []
    ttls: dict[str, int] = {}
    for i in range(int(count)):
        name, kind, raw, ttl, verdict, category = reply[
            5 + i * _PER_ISSUER : 5 + (i + 1) * _PER_ISSUER
        ]
        issuer = by_name.get(name, Issuer(name, "", carries_qty=name == "p33"))
        ours = evaluate_permit(issuer, kind, raw if kind != "none" else None, symbol)
        permits[name] = ours
        # The script's verdict; the detail is ours when we agree it is a deny.
        judged.append(Judged(name, verdict, ours.reason if ours.verdict == "deny" else category))
        ttls[name] = int(ttl)

    if str(status) not in DECISIONS:  # a StrEnum member equals its text
        raise ValueError(f"unexpected gate status {status!r}")
    status = GateStatus(str(status))
    seen = Situation(
        kill=status == GateStatus.KILL,
        governor_block=str(marker) if status == GateStatus.GOV_BLOCK else None,
        permits=tuple(judged),
    )
    reason = ""
    safe_qty: Decimal | None = None
    if status == GateStatus.ALLOW:
        disagree = [n for n, p in permits.items() if p.verdict != "allow"]
        if disagree:
            status, reason = GateStatus.MISMATCH, f"permit_verdict_mismatch:{disagree[0]}"
        else:
            safe_qty = next((p.safe_qty for p in permits.values() if p.safe_qty is not None), None)
    else:
        reason = block_reason(status, seen)
    return GateResult(
        plan_id=plan_id,
        symbol=symbol,
        status=status,
        reason=reason,
        wait_ms=wait_ms,
        owner=int(owner) == 1,
        decided_at_ms=int(decided_at),
        permits=permits,
        ttls=ttls,
        safe_qty=safe_qty,
    )


class PermitGate:
    """The gate bound to one Redis client (the script is loaded once per server)."""

    def __init__(
        self,
        redis: Redis,
        config: GateConfig,
        watcher: KeyspaceWatcher | None = None,
        scripts: ScriptHost | None = None,
        lane: GateLane | None = None,
    ) -> None:
        self.redis = redis
        self.config = config
        self.watcher = watcher
        self._script = (scripts or redis).register_script(GATE_SCRIPT)
        # The lane writes the batcher's own packed call (FCALL or EVALSHA); without
        # a batcher there is nothing to pack it with.
        self.lane = lane if isinstance(self._script, BatchedScript) else None
        self._specs = [f"{i.name}:{'q' if i.carries_qty else ''}" for i in config.issuers]

    async def load(self) -> str:
        """Load the script now (start-up check); returns its SHA1."""
        sha: str = await self.redis.script_load(GATE_SCRIPT)
        return sha

    def script_args(self, plan_id: str, symbol: str, token: str, *, final: bool) -> list[KeyOrArg]:
        """ARGV for ``gate.lua``, in the order it documents; "now" is read here."""
        return [
            plan_id,
            symbol,
            token,
            int(time.time() * 1000),
            1 if final else 0,
            1 if self.config.kill_switch else 0,
            self.config.journal_ttl_sec,
            *self._specs,
        ]

    async def attempt(
        self, plan_id: str, symbol: str, token: str, *, final: bool, keys: list[str] | None = None
    ) -> list[Any]:
        """One atomic evaluation: ``["WAIT"]`` or a decision (see ``gate.lua``)."""
        args = self.script_args(plan_id, symbol, token, final=final)
        reply: list[Any] = await self._script(keys=keys or self.config.keys(plan_id), args=args)
        return reply

    async def wait_and_consume(
        self, plan_id: str, symbol: str, *, token: str | None = None
    ) -> GateResult:
        """Consume every required permit within the deadline, or block the plan."""
        token = token or new_token()
        keys = self.config.keys(plan_id)
        started = time.monotonic()
        deadline = started + self.config.wait_ms / 1000
        step = self.config.step_ms / 1000
        with contextlib.ExitStack() as stack, contextlib.ExitStack() as on_lane:
            waiter = self._lane_watch(on_lane, plan_id, symbol, token, keys)
            wake = waiter.event if waiter else self._watch(stack, keys)
            while True:
                if waiter is not None and waiter.decision is not None:
                    reply = waiter.decision  # the lane's call decided (same token)
                    break
                if wake is not None:
                    wake.clear()
                final = time.monotonic() >= deadline
                reply = await self.attempt(plan_id, symbol, token, final=final, keys=keys)
                if reply[0] != "WAIT":
                    break
                pause = max(0.0, min(step, deadline - time.monotonic()))
                if waiter is not None and waiter.decision is None and not self._lane_on():
                    on_lane.close()  # the lane went down: the watcher wakes this wait now
                    waiter, wake = None, self._watch(stack, keys)
                if wake is None:
                    await asyncio.sleep(pause)
                    continue
                if waiter is not None and waiter.decision is not None:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await wake.wait()
        wait_ms = int((time.monotonic() - started) * 1000)
        result = build_result(reply, plan_id, symbol, self.config, wait_ms)
        if result.status == GateStatus.MISMATCH:
            # The script consumed permits that Python cannot accept: fail closed,
            # and say so in the journal so that recovery never executes it.
            await self.redis.hset(
                K.journal(plan_id),
                mapping={"state": JournalState.BLOCKED, "gate_override": result.reason},
            )
        if result.owner:  # a replayed decision was counted by its owner
            metrics.child(metrics.GATE_DECISIONS, symbol, result.status, result.reason_class).inc()
        self._log(result)
        return result

    def _lane_on(self) -> bool:
        """The lane answers events only while events flow (the watcher's verdict)."""
        lane = self.lane
        return lane is not None and lane.active and (self.watcher is None or self.watcher.active)

    def _lane_watch(
        self, stack: contextlib.ExitStack, plan_id: str, symbol: str, token: str, keys: list[str]
    ) -> LaneWaiter | None:
        script = self._script
        if self.lane is None or not isinstance(script, BatchedScript) or not self._lane_on():
            return None

        def command() -> bytes:  # packed at the event: "now" is read then
            args = self.script_args(plan_id, symbol, token, final=False)
            packed: bytes = script.packed(keys, args)
            return packed

        return stack.enter_context(self.lane.watch(keys, command))

    def _watch(self, stack: contextlib.ExitStack, keys: list[str]) -> asyncio.Event | None:
        return stack.enter_context(self.watcher.watch(keys)) if self.watcher else None

    def _log(self, result: GateResult) -> None:
        if not result.owner:
            log.debug("gate_already_decided", plan_id=result.plan_id, status=result.status)
            return
        fields = {
            "marker": "PERMIT_WAIT",
            "plan_id": result.plan_id,
            "symbol": result.symbol,
            "wait_ms": result.wait_ms,
            "status": result.status,
        }
        # The line is written before the decision returns; write_marker_line
        # writes the bytes get_logger() would, without structlog's chain.
        if result.allowed:
            write_marker_line(
                logging.INFO, result.log_line(), {"safe_qty": str(result.safe_qty), **fields}
            )
        else:
            write_marker_line(
                logging.WARNING, result.log_line(), {"reason": result.reason, **fields}
            )


async def wait_and_consume_permits(
    redis: Redis,
    plan_id: str,
    symbol: str,
    config: GateConfig,
    watcher: KeyspaceWatcher | None = None,
) -> GateResult:
    """One-shot form of :meth:`PermitGate.wait_and_consume`."""
    return await PermitGate(redis, config, watcher).wait_and_consume(plan_id, symbol)
