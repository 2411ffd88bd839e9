"""``apply-layer permits``: what the gate would see now for one plan (read-only).

Its verdict is the daemon's: the gate's decision order (``decision.decide``), then,
for an allowed plan, the signature policy of ``APPLY_PERMIT_SIGNING``
(:class:`~apply_layer.daemon.signature_policy.SignaturePolicy`, the daemon's own
check) on the permits as they are now. Where the keys cannot be read here it
says so, and never OK. Everything it prints from Redis is anybody's text
(issue 21, finding 8: terminal escapes in a permit drew a fake "the gate would
decide: OK"), so the text output escapes every control character
(:func:`~apply_layer.core.log_format.escape_controls`); ``--json`` is JSON's own escaping.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.decision import Judged, Situation, block_reason, decide
from apply_layer.core.errors import CommandError, ConfigError
from apply_layer.core.log_format import escape_controls
from apply_layer.core.permits import (
    MAX_PERMIT_BYTES,
    OVERSIZED_PREFIX,
    PermitVerdict,
    evaluate_permit,
    kill_on,
)
from apply_layer.core.plans import PLAN_ID_RE, close_in_content, not_a_plan_id
from apply_layer.core.statuses import GateStatus
from apply_layer.daemon.signature_policy import SignaturePolicy
from apply_layer.settings import Settings
from apply_layer.store.connection import close_redis, redis_for
from apply_layer.store.gate import GateConfig, GateResult


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
    # The signature policy's say on an allowed plan: "bad_signature:<issuer>", or "".
    signature_block: str = ""
    # Why the signatures could not be checked here ("": checked, or none required).
    signature_unknown: str = ""

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
        """The gate's decision if it ran now (the deadline not yet passed): decision.decide's."""
        if self.journal.get("gate_status"):
            return f"already decided: {self.journal['gate_status']} ({self.journal.get('state')})"
        seen = self.situation
        status = decide(seen, final=False)
        if status == GateStatus.WAIT:
            return f"WAIT for {', '.join(seen.missing)} (BLOCK missing_* at the deadline)"
        if status == GateStatus.ALLOW:
            if self.signature_block:
                return f"BLOCK {self.signature_block}"
            qty = next((v.verdict.safe_qty for v in self.permits if v.verdict.safe_qty), None)
            if self.signature_unknown:
                return (
                    f"UNKNOWN: the permits allow (safe_qty={qty}), but their signatures "
                    f"cannot be checked here ({self.signature_unknown})"
                )
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
            "signature_block": self.signature_block or None,
            "signature_unknown": self.signature_unknown or None,
        }

    def check_signatures(self, policy: SignaturePolicy | str) -> None:
        """Apply the daemon's signature policy (or note why it cannot be: ``policy``
        as text) where the daemon would: on a plan its gate allows."""
        if self.journal.get("gate_status"):
            return  # decided already: the daemon checks nothing more
        if decide(self.situation, final=False) != GateStatus.ALLOW:
            return
        if isinstance(policy, str):
            self.signature_unknown = policy
            return
        if not policy.modes:
            return  # signing off: nothing to check, and no close needed to check it
        close = close_in_content(self.journal.get("content", ""))
        if close is None:  # signatures bind the close: without it, nothing to check against
            self.signature_unknown = (
                "the plan's close step is not journalled yet (the daemon has not claimed it)"
            )
            return
        allowed = GateResult(
            plan_id=self.plan_id,
            symbol=self.symbol,
            status=GateStatus.ALLOW,
            reason="",
            wait_ms=0,
            owner=False,
            decided_at_ms=int(time.time() * 1000),
            permits={v.issuer: v.verdict for v in self.permits},
        )
        self.signature_block = policy.check(allowed, close)


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


def signature_policy(settings: Settings) -> SignaturePolicy | str:
    """The daemon's policy, or why it cannot be loaded here (the keys unreadable, say:
    systemd hands them to the service alone)."""
    try:
        return SignaturePolicy.from_settings(settings)
    except ConfigError as exc:
        return str(exc)


def render_text(view: PlanView, signing: str) -> str:
    """The view for a terminal: every text from Redis escaped (control characters)."""
    out = [f"plan {view.plan_id}  symbol {view.symbol or '?'}"]
    for p in view.permits:
        qty = f" safe_qty={p.verdict.safe_qty}" if p.verdict.safe_qty is not None else ""
        why = f" ({p.verdict.reason})" if p.verdict.verdict == "deny" else ""
        out.append(
            f"  {p.issuer:<9} {p.verdict.verdict:<8} type={p.verdict.kind:<7} ttl={p.ttl:<5}"
            f" key={p.key}{qty}{why}"
        )
    out.append(f"  governor block marker: {view.governor_block or 'none'}")
    on = [k for k, v in view.kill_switch.items() if v]
    out.append(f"  kill switch: {'ON via ' + ', '.join(on) if on else 'off'}")
    if view.journal:
        state, gate = view.journal.get("state"), view.journal.get("gate_status")
        out.append(f"  journal: state={state} gate={gate}")
    else:
        out.append("  journal: none")
    out.append(f"  permit signing: {signing}")
    out.append(f"  the gate would decide: {view.would_decide}")
    return "\n".join(escape_controls(line) for line in out)


async def cmd_permits(settings: Settings, args: argparse.Namespace) -> int:
    if not PLAN_ID_RE.fullmatch(args.plan_id):
        raise CommandError(not_a_plan_id(args.plan_id))
    policy = signature_policy(settings)
    redis = redis_for(settings, name="apply_layer:cli")
    try:
        view = await peek_plan(redis, args.plan_id, args.symbol, GateConfig.from_settings(settings))
    finally:
        await close_redis(redis)
    view.check_signatures(policy)
    if args.json:
        print(json.dumps(view.as_dict(), indent=2, sort_keys=True))
        return 0
    signing = f"cannot check here: {policy}" if isinstance(policy, str) else policy.describe()
    print(render_text(view, signing))
    return 0


def register(sub: Any) -> None:
    permits = sub.add_parser("permits", help="what the gate would see now for one plan")
    permits.add_argument("plan_id")
    permits.add_argument("--symbol", help="the plan's symbol (default: from its journal)")
    permits.add_argument("--json", action="store_true", help="machine-readable output")
    permits.set_defaults(func=cmd_permits)
