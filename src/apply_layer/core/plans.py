"""Plan model and parsing (pure): a stream entry becomes a Plan or an InvalidPlan.

Only the fields docs/CONTRACT.md gives are read; informational fields
(``qty``, ``close_qty``, ``price``, ...) are kept for the record and never
used for sizing. Anything odd is rejected with a short detail rather than
guessed at.

The writers differ (docs/CONTRACT.md, "Plans"): the exit-brain planner sends
``steps`` with ``CLOSE_FULL`` / ``CLOSE_PARTIAL_NN``; harvest_v2 names its
partial steps ``PARTIAL_NN``; the governor's rotation close plans carry no
``steps`` at all, only an ``action``. A step whose name and ``pct`` disagree
closes the smaller share and says so (:attr:`Step.warning`): closing less than
asked can be made up by the next plan, closing more cannot be undone.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property

from apply_layer.core.errors import InvalidPlan

# A plan id, the one definition: the commands' checks and messages derive from it.
PLAN_ID_CHARS = "A-Za-z0-9_-"  # the contents of a regex character class
PLAN_ID_RE = re.compile(f"[{PLAN_ID_CHARS}]{{1,64}}")
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,30}")
STEP_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,47}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
DECISIONS = ("EXECUTE", "SKIP", "BLOCKED", "ERROR")
CLOSE_STEPS = {
    "CLOSE_FULL": Decimal(100),
    "CLOSE_PARTIAL_75": Decimal(75),
    "CLOSE_PARTIAL_50": Decimal(50),
    "CLOSE_PARTIAL_25": Decimal(25),
    "PARTIAL_75": Decimal(75),  # harvest_v2
    "PARTIAL_50": Decimal(50),
    "PARTIAL_25": Decimal(25),
}
# A plan without ``steps`` (the governor's rotation close): its action names
# the close, as the step it stands for.
ACTION_CLOSES = {
    "FULL_CLOSE_PROPOSED": "CLOSE_FULL",
    "CLOSE_FULL": "CLOSE_FULL",
    "FULL_CLOSE": "CLOSE_FULL",
    "PARTIAL_75": "CLOSE_PARTIAL_75",
    "PARTIAL_50": "CLOSE_PARTIAL_50",
    "PARTIAL_25": "CLOSE_PARTIAL_25",
}
MAX_FIELD_BYTES = 8192
MAX_ENTRY_BYTES = 65536
MAX_STEPS = 16
# Timestamps above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
MS_THRESHOLD = 1e11
MAX_TIMESTAMP_MS = 1e14


@dataclass(frozen=True)
class Step:
    """One plan step; ``pct`` is set for close steps only (the share to close)."""

    name: str
    pct: Decimal | None = None
    warning: str = ""  # set when the step's name and pct disagreed

    @property
    def is_close(self) -> bool:
        return self.pct is not None


@dataclass(frozen=True)
class Plan:
    plan_id: str
    symbol: str
    decision: str
    timestamp: float
    action: str = ""
    steps: tuple[Step, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @cached_property
    def close_step(self) -> Step | None:
        """Found once per plan (issue 22: asked 7 times a plan); ``steps`` never changes."""
        return next((s for s in self.steps if s.is_close), None)

    @property
    def unsupported_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.is_close)

    @property
    def content(self) -> str:
        """What the plan asks for, as a short text: two entries of one plan id that
        differ in it are a conflict (a forgery, or a broken writer), not a duplicate.

        ``BTCUSDT EXECUTE CLOSE_PARTIAL_25 25``: the symbol, the decision, and the
        close step with the share that would be closed (nothing else decides an order).
        """
        step = self.close_step
        if step is None or step.pct is None:
            return f"{self.symbol} {self.decision}"
        return f"{self.symbol} {self.decision} {step.name} {step.pct:f}"


# The content of an entry that could not be parsed (its plan id and symbol could).
INVALID_CONTENT = "invalid"


def close_in_content(content: str) -> Step | None:
    """The close step a :attr:`Plan.content` text names, or None (no close, or not
    such a text): ``apply-layer permits`` reads it from the journal to check the
    permits' signatures against the close the daemon would execute."""
    parts = content.split(" ")
    if len(parts) != 4 or not STEP_NAME_RE.fullmatch(parts[2]):
        return None
    try:
        pct = Decimal(parts[3])
    except ArithmeticError:
        return None
    return Step(parts[2], pct) if pct.is_finite() and 0 < pct <= 100 else None


def _pct(value: object) -> Decimal | None:
    """A percentage in (0, 100] from a JSON number, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    pct = Decimal(value) if isinstance(value, int) else Decimal(str(value))
    return pct.normalize() if 0 < pct <= 100 else None


def _parse_step(raw: object) -> Step:
    if not isinstance(raw, dict):
        raise InvalidPlan("bad_step:not_an_object")
    name = raw.get("step")
    if not isinstance(name, str) or not STEP_NAME_RE.fullmatch(name):
        raise InvalidPlan("bad_step:name")
    if name not in CLOSE_STEPS:
        return Step(name)
    implied = CLOSE_STEPS[name]
    kind = raw.get("type", "market_reduce_only")
    side = raw.get("side", "close")
    if kind != "market_reduce_only":
        raise InvalidPlan(f"bad_step:{name}:type")
    if side != "close":
        raise InvalidPlan(f"bad_step:{name}:side")
    if "pct" not in raw:
        return Step(name, implied)
    given = _pct(raw["pct"])
    if given is None:
        raise InvalidPlan(f"bad_step:{name}:pct")
    if given == implied:
        return Step(name, implied)
    share = min(given, implied)
    return Step(name, share, f"pct_mismatch:name={implied:f},pct={given:f},closing={share:f}")


def _parse_steps(text: str) -> tuple[Step, ...]:
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidPlan("bad_steps_json") from None
    if not isinstance(raw, list) or not raw:
        raise InvalidPlan("steps_not_a_list" if not isinstance(raw, list) else "no_steps")
    if len(raw) > MAX_STEPS:
        raise InvalidPlan("too_many_steps")
    steps = tuple(_parse_step(item) for item in raw)
    closes = [s for s in steps if s.is_close]
    if not closes:
        raise InvalidPlan("no_close_step")
    if len(closes) > 1:
        raise InvalidPlan("multiple_close_steps")
    return steps


def _steps_from_action(action: str) -> tuple[Step, ...]:
    name = ACTION_CLOSES.get(action)
    if name is None:
        raise InvalidPlan("missing_field:steps")
    return (Step(name, CLOSE_STEPS[name]),)


def _parse_timestamp(text: str) -> float:
    """Epoch seconds from integer or float seconds, or milliseconds."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        raise InvalidPlan("bad_timestamp") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_TIMESTAMP_MS:
        raise InvalidPlan("bad_timestamp")
    return value / 1000 if value > MS_THRESHOLD else value


def parse_plan(fields: Mapping[str, str]) -> Plan:
    """Validate a stream entry's fields (all strings) into a :class:`Plan`."""
    size = 0
    for key, value in fields.items():
        length = len(key.encode()) + len(value.encode())
        if length > MAX_FIELD_BYTES:
            name = _UNSAFE.sub("_", key[:32])  # echoed in the result and the log
            raise InvalidPlan(f"oversized_field:{name}", _safe(fields, "plan_id", PLAN_ID_RE))
        size += length
    if size > MAX_ENTRY_BYTES:
        raise InvalidPlan("oversized_entry", _safe(fields, "plan_id", PLAN_ID_RE))

    plan_id = fields.get("plan_id", "")
    if not plan_id:
        raise InvalidPlan("missing_field:plan_id")
    if not PLAN_ID_RE.fullmatch(plan_id):
        raise InvalidPlan("bad_plan_id")
    symbol = fields.get("symbol", "")
    if not symbol:
        raise InvalidPlan("missing_field:symbol", plan_id)
    if not SYMBOL_RE.fullmatch(symbol):
        raise InvalidPlan("bad_symbol", plan_id)
    decision = fields.get("decision", "")
    if not decision:
        raise InvalidPlan("missing_field:decision", plan_id, symbol)
    if decision not in DECISIONS:
        raise InvalidPlan("bad_decision", plan_id, symbol)
    if "timestamp" not in fields:
        raise InvalidPlan("missing_field:timestamp", plan_id, symbol)
    try:
        timestamp = _parse_timestamp(fields["timestamp"])
        steps: tuple[Step, ...] = ()
        if decision == "EXECUTE":
            raw_steps = fields.get("steps")
            if raw_steps:
                steps = _parse_steps(raw_steps)
            else:
                steps = _steps_from_action(fields.get("action", ""))
    except InvalidPlan as exc:
        raise InvalidPlan(exc.detail, plan_id, symbol) from None
    known = {"plan_id", "symbol", "decision", "timestamp", "steps", "action"}
    return Plan(
        plan_id=plan_id,
        symbol=symbol,
        decision=decision,
        timestamp=timestamp,
        action=fields.get("action", ""),
        steps=steps,
        extra={k: v for k, v in fields.items() if k not in known},
    )


def not_a_plan_id(value: str) -> str:
    """The one-line message for a value that is not a plan id."""
    return f"{value!r} is not a plan id ({PLAN_ID_RE.pattern})"


def safe_plan_id(fields: Mapping[str, str]) -> str:
    """The entry's plan id when it is a valid one, else "" (to end a broken entry by)."""
    return _safe(fields, "plan_id", PLAN_ID_RE)


def _safe(fields: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = fields.get(name, "")
    return value if len(value) < 100 and pattern.fullmatch(value) else ""
