"""The gate's decision order and its reasons (pure): every branch and every boundary.

``gate.lua`` decides on the server; ``decision.decide`` is the same order in
Python (``apply-layer permits``), and tests/store/test_decision_order.py holds
the two together on a real redis-server. These tests pin the Python side
alone, without Redis, so that mutation testing can run them per mutant.
"""

from __future__ import annotations

import pytest

from apply_layer.core.decision import Judged, Situation, block_reason, decide
from apply_layer.core.statuses import GateStatus

GOV_ALLOW = Judged("governor", "allow")
P33_ALLOW = Judged("p33", "allow")


def situation(*permits: Judged, kill: bool = False, block: str | None = None) -> Situation:
    return Situation(kill=kill, governor_block=block, permits=permits)


def test_the_kill_switch_wins_over_everything() -> None:
    seen = situation(
        Judged("governor", "deny", "x"), Judged("p33", "missing"), kill=True, block="{}"
    )
    assert decide(seen, final=False) == GateStatus.KILL
    assert decide(seen, final=True) == GateStatus.KILL
    assert block_reason(GateStatus.KILL, seen) == "kill_switch"


def test_a_block_marker_wins_over_permits_even_when_it_is_empty() -> None:
    # The marker's presence decides, not its text: an empty marker still blocks.
    for marker in ("", "{}", '{"reason": "daily loss limit"}'):
        seen = situation(Judged("governor", "deny", "x"), Judged("p33", "missing"), block=marker)
        assert decide(seen, final=False) == GateStatus.GOV_BLOCK
        assert decide(situation(GOV_ALLOW, P33_ALLOW, block=marker), final=True) == (
            GateStatus.GOV_BLOCK
        )
    seen = situation(GOV_ALLOW, P33_ALLOW, block='{"reason": "daily loss limit"}')
    assert block_reason(GateStatus.GOV_BLOCK, seen) == "governor_blocked:daily_loss_limit"
    assert block_reason(GateStatus.GOV_BLOCK, situation(block="")) == "governor_blocked:unspecified"


def test_one_deny_is_enough_and_wins_over_missing_permits() -> None:
    one = situation(GOV_ALLOW, Judged("p33", "deny", "not_granted"))
    assert decide(one, final=False) == GateStatus.DENY
    assert block_reason(GateStatus.DENY, one) == "p33_permit_denied:not_granted"
    with_missing = situation(Judged("governor", "missing"), Judged("p33", "deny", "symbol"))
    assert decide(with_missing, final=False) == GateStatus.DENY
    assert decide(with_missing, final=True) == GateStatus.DENY


def test_the_first_denying_issuer_gives_the_reason() -> None:
    seen = situation(
        GOV_ALLOW,
        Judged("p33", "deny", "malformed"),
        Judged("p26", "deny", "not_granted"),
    )
    assert decide(seen, final=True) == GateStatus.DENY
    assert block_reason(GateStatus.DENY, seen) == "p33_permit_denied:malformed"
    # A deny without a reason of its own still names its issuer.
    assert block_reason(GateStatus.DENY, situation(Judged("governor", "deny"))) == (
        "governor_permit_denied:"
    )


def test_every_permit_allowing_is_an_allow_before_and_at_the_deadline() -> None:
    for seen in (situation(GOV_ALLOW, P33_ALLOW), situation(GOV_ALLOW), situation()):
        assert decide(seen, final=False) == GateStatus.ALLOW
        assert decide(seen, final=True) == GateStatus.ALLOW


def test_a_missing_permit_waits_then_times_out() -> None:
    seen = situation(GOV_ALLOW, Judged("p33", "missing"))
    assert seen.missing == ["p33"]
    assert decide(seen, final=False) == GateStatus.WAIT
    assert decide(seen, final=True) == GateStatus.TIMEOUT
    assert block_reason(GateStatus.TIMEOUT, seen) == "missing_p33"


def test_missing_lists_the_missing_issuers_in_their_order() -> None:
    seen = situation(Judged("governor", "missing"), P33_ALLOW, Judged("p26", "missing"))
    assert seen.missing == ["governor", "p26"]
    assert situation(GOV_ALLOW, Judged("p33", "deny")).missing == []
    assert block_reason(GateStatus.TIMEOUT, seen) == "missing_governor_p26"


def test_missing_all_only_when_more_than_one_permit_is_required_and_none_came() -> None:
    two = situation(Judged("governor", "missing"), Judged("p33", "missing"))
    assert block_reason(GateStatus.TIMEOUT, two) == "missing_all"
    three = situation(*(Judged(i, "missing") for i in ("governor", "p33", "p26")))
    assert block_reason(GateStatus.TIMEOUT, three) == "missing_all"
    # One required permit, missing: named, not "all".
    assert block_reason(GateStatus.TIMEOUT, situation(Judged("p33", "missing"))) == "missing_p33"
    two_of_three = situation(Judged("governor", "missing"), Judged("p33", "missing"), GOV_ALLOW)
    assert block_reason(GateStatus.TIMEOUT, two_of_three) == "missing_governor_p33"


def test_a_status_that_blocks_nothing_has_no_reason() -> None:
    seen = situation(GOV_ALLOW, P33_ALLOW)
    for status in (GateStatus.ALLOW, GateStatus.WAIT, GateStatus.MISMATCH):
        with pytest.raises(ValueError, match="not a blocking gate status") as caught:
            block_reason(status, seen)
        assert str(caught.value) == f"not a blocking gate status: {status!r}"
