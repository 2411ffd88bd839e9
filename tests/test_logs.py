"""``write_marker_line`` writes the bytes structlog's chain would write.

The gate's ``[PERMIT_WAIT]`` line skips structlog for speed (logs.py); operators
and the conformance tests grep it, so each case below writes the same line
both ways and compares the output byte for byte (JSON's timestamp aside, the
two records being made microseconds apart).

Tests by name: core/log_format.py.
"""

from __future__ import annotations

import io
import json
import logging
import re
from decimal import Decimal
from typing import Any

import pytest
import structlog

from apply_layer.core.log_format import permit_block_line, permit_ok_line
from apply_layer.core.statuses import GateStatus
from apply_layer.logs import get_logger, setup_logging, write_marker_line

pytestmark = pytest.mark.unit  # scripts/test.sh --fast

FIELDS: dict[str, Any] = {
    "marker": "PERMIT_WAIT",
    "plan_id": "p-1",
    "symbol": "BTCUSDT",
    "wait_ms": 312,
    "status": GateStatus.ALLOW,
}
OK = (logging.INFO, permit_ok_line("p-1", "BTCUSDT", 312, Decimal("0.0010")), "safe_qty", "0.0010")
BLOCK = (
    logging.WARNING,
    permit_block_line("p\n-2", "ETHUSDT", 1201, "missing_p33", {"governor": 50, "p33": -2}),
    "reason",
    "missing_p33",
)


def _both_ways(fmt: str, level_name: str, case: tuple[int, str, str, str]) -> tuple[str, str]:
    """The output of structlog's chain, then of ``write_marker_line``, for one line."""
    level, line, first, value = case
    fields = {first: value, **FIELDS}
    outputs = []
    for fast in (False, True):
        stream = io.StringIO()
        setup_logging(level_name, fmt, stream)
        if fast:
            write_marker_line(level, line, fields)
        else:
            get_logger().log(level, line, **fields)
        outputs.append(re.sub(r'"timestamp": "[^"]*"', '"timestamp": "T"', stream.getvalue()))
    return outputs[0], outputs[1]


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("case", [OK, BLOCK], ids=["ok", "block"])
def test_same_bytes_as_structlog(fmt: str, case: tuple[int, str, str, str]) -> None:
    chain, fast = _both_ways(fmt, "INFO", case)
    assert fast == chain
    assert fast.count("\n") == 1  # one line, the plan id's newline escaped
    text = fast.rstrip("\n") if fmt == "console" else json.loads(fast)["message"]
    assert text == case[1].replace("\n", "\\n")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_bound_context_variables_as_structlog(fmt: str) -> None:
    """A bound variable is added after the call's fields; the call's own value wins."""
    with structlog.contextvars.bound_contextvars(request="r-9", plan_id="not-this"):
        chain, fast = _both_ways(fmt, "INFO", BLOCK)
    assert fast == chain
    if fmt == "json":
        record = json.loads(fast)
        assert record["request"] == "r-9"
        assert record["plan_id"] == "p-1"


def test_level_filter_as_structlog() -> None:
    chain, fast = _both_ways("console", "WARNING", OK)
    assert chain == fast == ""
    chain, fast = _both_ways("console", "WARNING", BLOCK)
    assert fast == chain != ""


def test_other_configurations_go_through_structlog() -> None:
    """Under ``capture_logs`` (a processor chain of its own) the line is captured, not written."""
    stream = io.StringIO()
    setup_logging("INFO", "console", stream)
    with structlog.testing.capture_logs() as captured:
        write_marker_line(logging.INFO, OK[1], {"safe_qty": "0.0010", **FIELDS})
    assert stream.getvalue() == ""
    assert [c["event"] for c in captured] == [OK[1]]
    assert captured[0]["log_level"] == "info"
