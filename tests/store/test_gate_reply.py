"""The gate script's reply as Python reads it: anything but a decision is refused."""

from __future__ import annotations

import pytest

from apply_layer.core.statuses import GateStatus
from apply_layer.store.gate import GateConfig, build_result

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


@pytest.mark.parametrize("status", ["WAIT", "MISMATCH", "allow", "BOGUS", ""])
def test_a_reply_that_is_not_a_decision_is_refused(status: str) -> None:
    with pytest.raises(ValueError, match="unexpected gate status"):
        build_result([status, 1, 0, "", 0], "p1", "BTCUSDT", GateConfig(issuers=()), 3)


def test_a_decision_with_no_permits_to_read() -> None:
    result = build_result(["KILL", 1, 1700, "", 0], "p1", "BTCUSDT", GateConfig(issuers=()), 3)
    assert result.status is GateStatus.KILL
    assert (result.reason, result.owner, result.decided_at_ms) == ("kill_switch", True, 1700)
