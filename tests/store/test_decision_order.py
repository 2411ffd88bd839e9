"""``apply-layer permits`` says what the gate then decides, situation by situation.

The gate's decision order is applied by ``gate.lua`` on the server; the
``permits`` command says what it would decide from ``decision.decide``, the same
order in Python. For each situation in the table the keys are written on a
real redis-server, the command's view is read (``peek_plan``), then the real
gate runs, and the two must agree: allow vs block, and the same reason.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.commands.permits import peek_plan
from apply_layer.core import keys as K
from apply_layer.core.decision import block_reason, decide
from apply_layer.core.keys import ISSUERS
from apply_layer.core.statuses import GateStatus
from apply_layer.store.gate import GateConfig, wait_and_consume_permits

SYM = "BTCUSDT"
PLAN = "order-1"
GOV = ISSUERS["governor"].key(PLAN)
P33 = ISSUERS["p33"].key(PLAN)
P26 = ISSUERS["p26"].key(PLAN)
BLOCK = K.governor_block(PLAN)
GOV_OK = {"granted": True, "symbol": SYM, "decision": "EXECUTE"}
P33_OK = {"allow": True, "symbol": SYM, "safe_qty": 0.002, "exchange_position_amt": 0.002}
THREE = (ISSUERS["governor"], ISSUERS["p33"], ISSUERS["p26"])

Write = Callable[[Redis], Awaitable[object]]


def put(key: str, value: Any) -> Write:
    text = value if isinstance(value, str) else json.dumps(value)
    return lambda redis: redis.set(key, text, ex=60)


def put_hash(key: str, fields: dict[str, str]) -> Write:
    return lambda redis: redis.hset(key, mapping={k: v for k, v in fields.items()})


def pad(text: str) -> dict[str, str]:
    return {"allow": "true", "safe_qty": "0.5", "pad": text}


def put_list(key: str) -> Write:
    return lambda redis: redis.rpush(key, "1")


@dataclass(frozen=True)
class Case:
    label: str
    writes: tuple[Write, ...]
    status: str  # what the gate decides at the deadline
    reason: str = ""
    kill_env: bool = False
    issuers: tuple[Any, ...] = field(default=(ISSUERS["governor"], ISSUERS["p33"]))

    def __str__(self) -> str:
        return self.label


BOTH = (put(GOV, GOV_OK), put(P33, P33_OK))
CASES = [
    Case("no permits", (), "TIMEOUT", "missing_all"),
    Case("governor allow + p33 allow", BOTH, "ALLOW"),
    Case("p33 missing", (put(GOV, GOV_OK),), "TIMEOUT", "missing_p33"),
    Case("governor missing", (put(P33, P33_OK),), "TIMEOUT", "missing_governor"),
    Case(
        "p33 deny",
        (put(GOV, GOV_OK), put(P33, {"allow": False, "reason": "no_position"})),
        "DENY",
        "p33_permit_denied:no_position",
    ),
    Case(
        "governor deny",
        (put(GOV, {"granted": False}), put(P33, P33_OK)),
        "DENY",
        "governor_permit_denied:denied",
    ),
    Case(
        "both deny: the first issuer's reason",
        (put(GOV, {"granted": False, "reason": "risk off"}), put(P33, {"allow": False})),
        "DENY",
        "governor_permit_denied:risk_off",
    ),
    Case(
        "a deny does not wait for the missing permit",
        (put(P33, {"allow": False, "reason": "stale"}),),
        "DENY",
        "p33_permit_denied:stale",
    ),
    Case(
        "governor block marker",
        (*BOTH, put(BLOCK, {"reason": "drawdown"})),
        "GOV_BLOCK",
        "governor_blocked:drawdown",
    ),
    Case(
        "block marker before a deny",
        (put(GOV, {"granted": False}), put(BLOCK, "{}")),
        "GOV_BLOCK",
        "governor_blocked:unspecified",
    ),
    Case(
        "empty block marker", (*BOTH, put(BLOCK, "")), "GOV_BLOCK", "governor_blocked:unspecified"
    ),
    Case(
        "oversized block marker",
        (*BOTH, put(BLOCK, "z" * 10_000)),
        "GOV_BLOCK",
        "governor_blocked:oversized_marker",
    ),
    Case(
        "a block marker of another type is no marker", (*BOTH, put_hash(BLOCK, {"a": "1"})), "ALLOW"
    ),
    Case("kill via quantum:kill", (*BOTH, put("quantum:kill", "on")), "KILL", "kill_switch"),
    Case(
        "kill via quantum:global:kill_switch",
        (*BOTH, put("quantum:global:kill_switch", "TRUE")),
        "KILL",
        "kill_switch",
    ),
    Case("kill via the environment", BOTH, "KILL", "kill_switch", kill_env=True),
    Case(
        "kill before a block marker and a deny",
        (put(GOV, {"granted": False}), put(BLOCK, "{}"), put("quantum:kill", "1")),
        "KILL",
        "kill_switch",
    ),
    Case("kill with no permits", (put("quantum:kill", "1"),), "KILL", "kill_switch"),
    Case("a kill key holding 0", (*BOTH, put("quantum:kill", "0")), "ALLOW"),
    Case("a kill key of another type", (*BOTH, put_hash("quantum:kill", {"on": "1"})), "ALLOW"),
    Case(
        "oversized permit",
        (put(GOV, GOV_OK), put(P33, {"allow": True, "safe_qty": 1, "pad": "x" * 10_000})),
        "DENY",
        "p33_permit_denied:oversized",
    ),
    Case(
        "missing p33 safe_qty",
        (put(GOV, GOV_OK), put(P33, {"allow": True, "symbol": SYM})),
        "DENY",
        "p33_permit_denied:invalid_qty",
    ),
    Case(
        "auto-bypass HASH with safe_qty 0",
        (
            put(GOV, GOV_OK),
            put_hash(P33, {"allow": "true", "safe_qty": "0", "reason": "auto_bypass_no_p33"}),
        ),
        "DENY",
        "p33_permit_denied:invalid_qty",
    ),
    Case(
        "HASH p33 with a quantity",
        (put(GOV, GOV_OK), put_hash(P33, {"allow": "TRUE", "safe_qty": "0.5", "symbol": SYM})),
        "ALLOW",
    ),
    # A HASH is measured as the gate encodes it (Redis' cjson: compact, UTF-8 as is,
    # "/" escaped): 42 bytes of fields and quotes around the pad.
    Case("HASH at the size limit", (put(GOV, GOV_OK), put_hash(P33, pad("x" * 4054))), "ALLOW"),
    Case(
        "HASH at the size limit in UTF-8",
        (put(GOV, GOV_OK), put_hash(P33, pad("é" * 2027))),
        "ALLOW",
    ),
    Case(
        "HASH past the size limit by its escaped slashes",
        (put(GOV, GOV_OK), put_hash(P33, pad("/" * 100 + "x" * 3855))),
        "DENY",
        "p33_permit_denied:oversized",
    ),
    Case(
        "older safe_close_qty",
        (put(GOV, GOV_OK), put(P33, {"allow": True, "safe_close_qty": "0.003"})),
        "ALLOW",
    ),
    Case("bare 1 and bare 0", (put(GOV, "1"), put(P33, "0")), "DENY", "p33_permit_denied:denied"),
    Case(
        "malformed permit",
        (put(GOV, "{granted"), put(P33, P33_OK)),
        "DENY",
        "governor_permit_denied:malformed",
    ),
    Case(
        "permit of another type",
        (put(GOV, GOV_OK), put_list(P33)),
        "DENY",
        "p33_permit_denied:wrong_type",
    ),
    Case(
        "symbol mismatch",
        (put(GOV, {"granted": True, "symbol": "ETHUSDT"}), put(P33, P33_OK)),
        "DENY",
        "governor_permit_denied:symbol_mismatch",
    ),
    Case(
        "not granted",
        (put(GOV, {"symbol": SYM}), put(P33, P33_OK)),
        "DENY",
        "governor_permit_denied:not_granted",
    ),
    Case(
        "three issuers, one present",
        (put(P33, P33_OK),),
        "TIMEOUT",
        "missing_governor_p26",
        issuers=THREE,
    ),
    Case("three issuers, none present", (), "TIMEOUT", "missing_all", issuers=THREE),
    Case(
        "three issuers, all allow",
        (*BOTH, put(P26, {"granted": True})),
        "ALLOW",
        issuers=THREE,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_permits_says_what_the_gate_then_decides(redis: Redis, case: Case) -> None:
    for write in case.writes:
        await write(redis)
    config = GateConfig(issuers=case.issuers, wait_ms=60, step_ms=20, kill_switch=case.kill_env)

    view = await peek_plan(redis, PLAN, SYM, config)
    said = view.would_decide
    result = await wait_and_consume_permits(redis, PLAN, SYM, config)

    assert (result.status, result.reason) == (case.status, case.reason)
    if result.status == "ALLOW":
        assert said == f"OK safe_qty={result.safe_qty}"
        assert isinstance(result.safe_qty, Decimal)
    elif result.status == "TIMEOUT":
        # Before the deadline the command says WAIT; at it, the same order blocks.
        assert (
            said
            == f"WAIT for {', '.join(view.situation.missing)} (BLOCK missing_* at the deadline)"
        )
        assert decide(view.situation, final=True) == "TIMEOUT"
        assert block_reason(GateStatus.TIMEOUT, view.situation) == result.reason
    else:
        assert said == f"BLOCK {result.reason}"
        assert decide(view.situation, final=True) == result.status
    # Once decided, the command reports the recorded decision.
    after = await peek_plan(redis, PLAN, SYM, config)
    assert after.would_decide.startswith(f"already decided: {result.status} (")
