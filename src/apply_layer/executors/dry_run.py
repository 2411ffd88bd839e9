"""``dry_run``: decide everything, place nothing.

It sizes the close exactly as ``paper`` would (P3.3's reported position, the
simulated lot filters) so the result shows what would have been sent, and
reports the step as ``DRY_RUN``; the plan ends SKIPPED ``dry_run`` with
``would_execute=True``.
"""

from __future__ import annotations

from apply_layer.core.check_line import CheckLine
from apply_layer.core.outcomes import StepResult
from apply_layer.core.sizing import size_close
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderLog, OrderRef, OrderRequest, Prepared
from apply_layer.executors.in_process import InProcessExecutor
from apply_layer.executors.paper import lot_filter


class DryRunExecutor(InProcessExecutor):
    mode = "dry_run"

    async def preflight(self) -> list[CheckLine]:
        return [CheckLine("exchange", True, "dry_run: no orders are placed")]

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        """None: a dry run never places an order, so none can exist."""
        return None

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        sizing = size_close(
            safe_qty=order.safe_qty,
            pct=order.pct,
            reported_amt=order.reported_amt,
            lot=lot_filter(order.symbol),
        )
        if not sizing.ok:
            return StepResult(order.step, StepStatus.REJECTED, sizing.error, message=sizing.detail)
        return StepResult(
            step=order.step,
            status=StepStatus.DRY_RUN,
            client_order_id=order.client_order_id,
            side=sizing.side,
            quantity=sizing.qty,
        )
