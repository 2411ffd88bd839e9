"""``apply-layer permits``: what the gate would see now for one plan (read-only)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from apply_layer import keys as K
from apply_layer.errors import CommandError
from apply_layer.gate import GateConfig, Judged, Situation, block_reason, decide
from apply_layer.permits import (
    MAX_PERMIT_BYTES,
    OVERSIZED_PREFIX,
    PermitVerdict,
    evaluate_permit,
    kill_on,
)
from apply_layer.plans import PLAN_ID_RE, not_a_plan_id
from apply_layer.redis_client import close_redis, redis_for
from apply_layer.settings import Settings
from apply_layer.statuses import GateStatus


@dataclass
class PermitView:
    issuer: str
    key: str
    ttl: int
    verdict: PermitVerdict


@dataclass
class PlanView:
    plan_id: str
    symbol: str
    permits: list[PermitView]
    governor_block: str | None
    kill_switch: dict[str, bool]
    journal: dict[str, str] = field(default_factory=dict)

    @property
    def situation(self) -> Situation:
        """What the gate would read now, as its decision takes it."""
        return Situation(
            kill=any(self.kill_switch.values()),
            governor_block=self.governor_block,
            permits=tuple(
                Judged(v.issuer, v.verdict.verdict, v.verdict.reason) for v in self.permits
            ),
        )

    @property
    def would_decide(self) -> str:
        """The gate's decision if it ran now (the deadline not yet passed): gate.decide's."""
        if self.journal.get("gate_status"):
            return f"already decided: {self.journal['gate_status']} ({self.journal.get('state')})"
        seen = self.situation
        status = decide(seen, final=False)
        if status == GateStatus.WAIT:
            return f"WAIT for {', '.join(seen.missing)} (BLOCK missing_* at the deadline)"
        if status == GateStatus.ALLOW:
            qty = next((v.verdict.safe_qty for v in self.permits if v.verdict.safe_qty), None)
            return f"OK safe_qty={qty}"
        return f"BLOCK {block_reason(status, seen)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "symbol": self.symbol,
            "would_decide": self.would_decide,
            "kill_switch": self.kill_switch,
            "governor_block": self.governor_block,
            "permits": [
                {
                    "issuer": v.issuer,
                    "key": v.key,
                    "type": v.verdict.kind,
                    "ttl": v.ttl,
                    "verdict": v.verdict.verdict,
                    "reason": v.verdict.reason,
                    "safe_qty": None if v.verdict.safe_qty is None else str(v.verdict.safe_qty),
                }
                for v in self.permits
            ],
            "journal": self.journal,
        }


def _gate_text(fields: dict[str, str]) -> tuple[str, int]:
    """A HASH permit's fields as JSON, and its size in bytes as the gate measures it.

    The gate measures Redis' cjson encoding of the fields: compact, UTF-8 as is,
    ``/`` and DEL (0x7f) escaped, which ``json.dumps`` does not escape. (Invalid
    UTF-8, read here as U+FFFD, counts 3 bytes where cjson counts 1: only
    garbage that large is told apart.)
    """
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return text, len(text.encode()) + text.count("/") + 5 * text.count("\x7f")


async def _read(redis: Redis, key: str) -> tuple[str, str | None, int]:
    """A key's type, text and TTL; a text past MAX_PERMIT_BYTES as the gate's summary."""
    kind = str(await redis.type(key))
    ttl = int(await redis.ttl(key))
    if kind == "string":
        length = int(await redis.strlen(key))
        if length > MAX_PERMIT_BYTES:  # as the gate sees it: a deny, never printed whole
            return kind, f"{OVERSIZED_PREFIX}bytes={length}", ttl
        value = await redis.get(key)
        return kind, None if value is None else str(value), ttl
    if kind == "hash":
        text, size = _gate_text({str(k): str(v) for k, v in (await redis.hgetall(key)).items()})
        return kind, text if size <= MAX_PERMIT_BYTES else f"{OVERSIZED_PREFIX}hash", ttl
    # Another type: no text, as the gate reads it (a permit of another type is a deny).
    return kind, None if kind == "none" else "", ttl


async def read_kill_switch(redis: Redis) -> dict[str, bool]:
    """Each kill-switch key, on or off, read as the gate's ``kill_on`` reads it: its
    type, then (a string only) its value. TYPE and GET are all it sends, which the
    daemon's ACL user may run too (``check --role daemon``)."""
    state = {}
    for key in K.KILL_SWITCH_KEYS:
        kind = str(await redis.type(key))
        raw = await redis.get(key) if kind == "string" else None
        state[key] = kill_on(kind, None if raw is None else str(raw))
    return state


async def peek_plan(redis: Redis, plan_id: str, symbol: str | None, config: GateConfig) -> PlanView:
    """Read every key the gate reads for ``plan_id``; changes nothing.

    ``symbol`` defaults to the one the plan's journal names.
    """
    journal = {str(k): str(v) for k, v in (await redis.hgetall(K.journal(plan_id))).items()}
    symbol = symbol or journal.get("symbol") or ""
    permits = []
    for issuer in config.issuers:
        key = issuer.key(plan_id)
        kind, raw, ttl = await _read(redis, key)
        permits.append(
            PermitView(issuer.name, key, ttl, evaluate_permit(issuer, kind, raw, symbol))
        )
    block_kind, block_raw, _ = await _read(redis, K.governor_block(plan_id))
    kill = {"APPLY_KILL_SWITCH": config.kill_switch, **await read_kill_switch(redis)}
    return PlanView(
        plan_id=plan_id,
        symbol=symbol,
        permits=permits,
        governor_block=block_raw if block_kind == "string" else None,
        kill_switch=kill,
        journal=journal,
    )


async def cmd_permits(settings: Settings, args: argparse.Namespace) -> int:
    if not PLAN_ID_RE.fullmatch(args.plan_id):
        raise CommandError(not_a_plan_id(args.plan_id))
    redis = redis_for(settings, name="apply_layer:cli")
    try:
        view = await peek_plan(redis, args.plan_id, args.symbol, GateConfig.from_settings(settings))
    finally:
        await close_redis(redis)
    if args.json:
        print(json.dumps(view.as_dict(), indent=2, sort_keys=True))
        return 0
    print(f"plan {view.plan_id}  symbol {view.symbol or '?'}")
    for p in view.permits:
        qty = f" safe_qty={p.verdict.safe_qty}" if p.verdict.safe_qty is not None else ""
        why = f" ({p.verdict.reason})" if p.verdict.verdict == "deny" else ""
        print(
            f"  {p.issuer:<9} {p.verdict.verdict:<8} type={p.verdict.kind:<7} ttl={p.ttl:<5}"
            f" key={p.key}{qty}{why}"
        )
    print(f"  governor block marker: {view.governor_block or 'none'}")
    on = [k for k, v in view.kill_switch.items() if v]
    print(f"  kill switch: {'ON via ' + ', '.join(on) if on else 'off'}")
    if view.journal:
        print(
            f"  journal: state={view.journal.get('state')} gate={view.journal.get('gate_status')}"
        )
    else:
        print("  journal: none")
    print(f"  the gate would decide: {view.would_decide}")
    return 0


def register(sub: Any) -> None:
    permits = sub.add_parser("permits", help="what the gate would see now for one plan")
    permits.add_argument("plan_id")
    permits.add_argument("--symbol", help="the plan's symbol (default: from its journal)")
    permits.add_argument("--json", action="store_true", help="machine-readable output")
    permits.set_defaults(func=cmd_permits)
