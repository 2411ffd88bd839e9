"""The gate's decision (pure): from what it reads for a plan, what it decides, and why.

``gate.lua`` decides on the server, atomically; ``gate.py`` (the Redis
layer) runs the script and its wait loop, and re-checks the reply with these
rules; the ``permits`` command says what the gate would decide without
running it. tests/store/test_decision_order.py holds this order and the
script's together. The gate's default settings are here too, the one place
both ``GateConfig`` and ``Settings`` take them from.
"""

from __future__ import annotations

from dataclasses import dataclass

from apply_layer.core.permits import governor_block_reason
from apply_layer.core.statuses import GateStatus

# The gate's defaults (APPLY_PERMIT_WAIT_MS, APPLY_PERMIT_STEP_MS,
# APPLY_JOURNAL_TTL_SEC, APPLY_REQUIRED_PERMITS; docs/CONFIG.md).
DEFAULT_PERMIT_WAIT_MS = 1200
DEFAULT_PERMIT_STEP_MS = 100
DEFAULT_JOURNAL_TTL_SEC = 7 * 24 * 3600
DEFAULT_REQUIRED_PERMITS: tuple[str, ...] = ("governor", "p33")


#: What the gate script may decide (MISMATCH is Python's own verdict; WAIT is no decision).
DECISIONS = frozenset(GateStatus) - {GateStatus.MISMATCH, GateStatus.WAIT}


@dataclass(frozen=True)
class Judged:
    """One required permit as the decision sees it: its issuer, verdict and deny reason."""

    issuer: str
    verdict: str  # allow, deny, missing
    reason: str = ""  # the permit's own reason, else its deny category


@dataclass(frozen=True)
class Situation:
    """What the gate reads for one plan, judged: everything its decision depends on."""

    kill: bool  # APPLY_KILL_SWITCH or a kill switch key is on
    governor_block: str | None  # the block marker's text; None when there is no marker
    permits: tuple[Judged, ...]  # in the order of the required issuers

    @property
    def missing(self) -> list[str]:
        return [p.issuer for p in self.permits if p.verdict == "missing"]


def decide(seen: Situation, *, final: bool) -> GateStatus:
    """The gate's decision order: ``KILL``, ``GOV_BLOCK``, ``DENY``, ``ALLOW``, then
    ``TIMEOUT`` at the deadline (``final``) or ``WAIT`` before it.

    ``gate.lua`` applies this order on the server, atomically, and is the one
    that decides; this is the same order in Python, for whoever must say what
    the gate would decide without running it (``apply-layer permits``).
    tests/store/test_decision_order.py holds the two together.
    """
    if seen.kill:
        return GateStatus.KILL
    if seen.governor_block is not None:
        return GateStatus.GOV_BLOCK
    if any(p.verdict == "deny" for p in seen.permits):
        return GateStatus.DENY
    if not seen.missing:
        return GateStatus.ALLOW
    return GateStatus.TIMEOUT if final else GateStatus.WAIT


def block_reason(status: GateStatus, seen: Situation) -> str:
    """The short reason a blocking decision gives (docs/GATE.md "Reasons")."""
    if status == GateStatus.KILL:
        return "kill_switch"
    if status == GateStatus.GOV_BLOCK:
        return f"governor_blocked:{governor_block_reason(seen.governor_block)}"
    if status == GateStatus.DENY:
        first = next(p for p in seen.permits if p.verdict == "deny")
        return f"{first.issuer}_permit_denied:{first.reason}"
    if status == GateStatus.TIMEOUT:
        missing = seen.missing
        if len(missing) == len(seen.permits) and len(missing) > 1:
            return "missing_all"
        return "missing_" + "_".join(missing)
    raise ValueError(f"not a blocking gate status: {status!r}")
