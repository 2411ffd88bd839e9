"""A published result that turned out wrong is corrected, not left standing.

A plan's one result is written once (``lua/publish.lua`` writes nothing where
the journal holds a ``result_id``). That is right for a republished copy of
the *same* outcome, and wrong in one case: Redis lost the record of an order
(a failover, a restore), another instance decided the plan afresh and
published BLOCKED (or SKIPPED, REJECTED, FAILED), and then the instance that
placed the order publishes, or writes again, its EXECUTED result. Dropping
that would leave a filled close reported as "nothing happened" (issue 25).

So, when an executed result meets a final result that did not execute, the
truth is published: a **correcting result entry**, the executed result's
own fields plus ``corrects`` (the stream id of the result it replaces),
``corrected_status`` and ``corrected_error`` (what that one said), written
with the journal's new final state and the symbol's cooldown in one atomic
step (``lua/correct.lua``). The journal keeps ``corrected_result_id``,
``corrected_status`` and ``corrected_error``. What each reader does with it
is docs/CONTRACT.md section 2's.

Only an executed result corrects, and only one that did not execute: an
order found at the exchange is evidence, "no order" is not. So a correction
is never corrected back, and two instances holding the same executed result
write one correction (the script checks the result it replaces is still the
journal's).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from apply_layer.core import keys as K
from apply_layer.core.statuses import OutcomeStatus
from apply_layer.logs import get_logger
from apply_layer.store import lua

log = get_logger()

CORRECT_SCRIPT = f"local COOLDOWN_TTL_SEC = {K.COOLDOWN_TTL_SEC}\n" + lua.source("correct")


def may_correct(fields: Mapping[str, str], out_status: str) -> bool:
    """Does a result with these fields correct the one out, whose status is
    ``out_status``? Only an executed one, and only one that did not execute (the
    script checks again, atomically; this only saves it a call when it cannot)."""
    return fields.get("status") == OutcomeStatus.EXECUTED != out_status


async def correct(
    script: Any,
    *,
    plan_id: str,
    symbol: str,
    wrong_id: str,
    fields: Mapping[str, str],
    journal_ttl_sec: int,
) -> tuple[str, bool]:
    """Publish ``fields`` (an executed result) in place of result ``wrong_id``.

    ``script`` is :data:`CORRECT_SCRIPT` registered on the journal's script
    host. Returns (the journal's result id, whether a correction was written).
    """
    flat = [item for pair in fields.items() for item in pair]
    reply = await script(
        keys=[K.journal(plan_id), K.RESULT_STREAM, K.cooldown(symbol)],
        args=[wrong_id, int(time.time() * 1000), journal_ttl_sec, K.STREAM_MAXLEN, *flat],
    )
    result_id, written = str(reply[0]), int(reply[1]) == 1
    if written:
        log.warning(
            "result_corrected",
            plan_id=plan_id,
            symbol=symbol,
            result_id=result_id,
            corrects=wrong_id,
            why="the published result said no order, but the plan's order exists: "
            "Redis lost its record and the plan was decided again",
        )
    return result_id, written
