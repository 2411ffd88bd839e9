"""Finding an order before sending it: the lookups of rules 3 and 4 (``executor``).

An order whose earlier send the journal shows, or whose send Redis may have
lost, is looked up by its client order id first. What is found is reported
(adopted, if the journal did not know of it), never sent again; "no such
order" counts only once the window of the last possible send has closed; a
lookup that cannot be completed sends nothing.
"""

from __future__ import annotations

from apply_layer import metrics
from apply_layer.core.outcomes import StepResult
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderRef, OrderRequest
from apply_layer.executors.binance.lookup import OrderLookup
from apply_layer.executors.binance.outcome import outcome, report
from apply_layer.executors.binance.readahead import ReadAhead
from apply_layer.logs import get_logger

_log = get_logger("apply_layer.binance")


async def resume(
    lookup: OrderLookup, order: OrderRequest, earlier: list[int], unseen_ms: int
) -> StepResult | None:
    """After a run that sent (or was about to send) this order, then stopped: the
    order as found, a FAILED ``order_unknown`` step, or None once it provably
    never executed (and may be sent)."""
    cid = order.client_order_id
    _log.warning("binance_resume", plan=order.plan_id, cid=cid, attempts=len(earlier))
    found = await lookup.resolve(order.symbol, cid, max(*earlier, unseen_ms))
    metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
    if found.order is not None:
        return report(order, found.order)
    if not found.gone:
        return outcome(order, StepStatus.FAILED, "order_unknown", found.detail)
    return None


async def adopt_existing(
    lookup: OrderLookup, order: OrderRequest, unseen_ms: int, ahead: ReadAhead | None = None
) -> StepResult | None:
    """Before a first send: an order with this client order id must not exist already.

    The journal shows no send, but Redis may have lost one (see
    ``OrderLog.unrecorded_until_ms``): Binance refuses a duplicate client
    order id only while the first order is open, so a filled one would be
    doubled. If the order exists, it is adopted: reported, never sent
    again. "No such order" counts only once a send stamped at ``unseen_ms``
    could no longer execute; a lookup that cannot be completed sends
    nothing. A lookup read ahead stands if the Redis has not changed since it
    began: the journal showed no attempt after it (the caller's read), and
    the attempt script refuses a record if one is made before the send.
    """
    cid = order.client_order_id
    found = await ahead.lookup(unseen_ms) if ahead is not None else None
    if found is None:
        found = await lookup.resolve(order.symbol, cid, unseen_ms)
    if found.order is not None:
        metrics.ORDERS_ADOPTED.inc()
        _log.warning(
            "binance_order_adopted",
            plan=order.plan_id,
            cid=cid,
            order_id=found.order.order_id,
            status=found.order.status,
            why="the order exists at the exchange but not in the journal (Redis lost writes)",
        )
        return report(order, found.order, adopted=True)
    if not found.gone:
        detail = f"could not check whether {cid} exists, so nothing was sent: {found.detail}"
        return outcome(order, StepStatus.FAILED, "exchange_unavailable", detail)
    return None


async def find_order(lookup: OrderLookup, ref: OrderRef, unseen_ms: int) -> StepResult | None:
    """Before a plan ends without an order: one the journal lost, found and adopted.

    The lookup of rule 4 for a plan that will send nothing
    (``exchange_truth.py``): the order is looked up by its client order
    id until found, or until "no such order" is proved by the window of a
    send made unseen until ``unseen_ms``. Lookups that keep failing are a
    FAILED ``order_unknown`` step: the plan's fate at the exchange is not
    guessed either way.
    """
    found = await lookup.resolve(ref.symbol, ref.client_order_id, unseen_ms)
    if found.order is not None:
        metrics.ORDERS_ADOPTED.inc()
        _log.warning(
            "binance_order_adopted",
            plan=ref.plan_id,
            cid=ref.client_order_id,
            order_id=found.order.order_id,
            status=found.order.status,
            why="the plan was ending without an order, but its order exists at the "
            "exchange (Redis lost the record of it)",
        )
        return report(ref, found.order, adopted=True)
    if not found.gone:
        # A person must look (ApplyLayerOrderFateUnknown): the order may exist.
        metrics.EXCHANGE_UNKNOWN_FATE.labels(found.name).inc()
        detail = f"could not check whether {ref.client_order_id} exists: {found.detail}"
        return outcome(ref, StepStatus.FAILED, "order_unknown", detail)
    return None
