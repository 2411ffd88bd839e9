"""``paper``: a simulated exchange inside the process.

Lot-step rounding, instant fills at a fixed simulated price, order ids, and a
position per symbol. A symbol's position starts as P3.3 reported it (the
simulation has no other source; an amount that sizing refuses is not kept)
and shrinks with every fill. Orders are kept
by client order id (the newest ``REMEMBERED_ORDERS``), so a repeated send of
the same plan step returns the first order instead of filling twice, as the
exchange's own duplicate check would.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import replace
from decimal import Decimal

from apply_layer.core.check_line import CheckLine
from apply_layer.core.errors import NotReplicated
from apply_layer.core.outcomes import StepResult
from apply_layer.core.sizing import LotFilter, size_close
from apply_layer.core.statuses import StepStatus
from apply_layer.executors.base import OrderLog, OrderRef, OrderRequest, Prepared
from apply_layer.executors.in_process import InProcessExecutor

DEFAULT_FILTER = LotFilter(
    step_size=Decimal("0.001"), min_qty=Decimal("0.001"), max_qty=Decimal(1000)
)
SIMULATED_FILTERS = {
    "BTCUSDT": LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal(120)),
    "ETHUSDT": LotFilter(Decimal("0.001"), Decimal("0.001"), Decimal(2000)),
    "SOLUSDT": LotFilter(Decimal("1"), Decimal("1"), Decimal(100000)),
}
SIMULATED_PRICES = {"BTCUSDT": Decimal(65000), "ETHUSDT": Decimal(3200), "SOLUSDT": Decimal(150)}


# Orders remembered for the duplicate check: a resend comes within seconds of
# the first send, so the newest few thousand are plenty, and memory stays flat.
REMEMBERED_ORDERS = 10_000


def lot_filter(symbol: str) -> LotFilter:
    return SIMULATED_FILTERS.get(symbol, DEFAULT_FILTER)


class PaperExecutor(InProcessExecutor):
    mode = "paper"

    def __init__(self) -> None:
        self.positions: dict[str, Decimal] = {}
        self.orders: OrderedDict[str, StepResult] = OrderedDict()
        self._ids = itertools.count(1_000_001)

    async def preflight(self) -> list[CheckLine]:
        return [CheckLine("exchange", True, "paper: simulated in-process exchange, nothing leaves")]

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        """The simulated book's order under this client order id, adopted, or None.

        The book lives in this process, so only an order this process placed
        can be found (docs/RELIABILITY.md, "Known limits").
        """
        found = self.orders.get(ref.client_order_id)
        if found is None:
            return None
        return replace(found, step=ref.step, adopted=True)

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        coid = order.client_order_id
        if coid in self.orders:
            return self.orders[coid]
        live = self.positions.get(order.symbol)
        if not live and order.reported_amt:
            # The simulation's only source; kept (below) only once it sized an order,
            # so an absurd amount cannot poison the book for every later plan.
            live = order.reported_amt
        sizing = size_close(
            safe_qty=order.safe_qty,
            pct=order.pct,
            reported_amt=order.reported_amt,
            live_amt=live,
            lot=lot_filter(order.symbol),
        )
        if not sizing.ok:
            return StepResult(
                order.step,
                StepStatus.REJECTED,
                sizing.error,
                client_order_id=coid,
                message=sizing.detail,
            )
        try:
            await log.record_attempt(int(time.time() * 1000), quantity=sizing.qty, side=sizing.side)
        except NotReplicated as exc:
            return StepResult(
                order.step,
                StepStatus.FAILED,
                "journal_not_replicated",
                client_order_id=coid,
                message=str(exc),
            )
        signed = sizing.qty if sizing.side == "BUY" else -sizing.qty
        self.positions[order.symbol] = (live or Decimal(0)) + signed
        result = StepResult(
            step=order.step,
            status=StepStatus.EXECUTED,
            order_id=str(next(self._ids)),
            client_order_id=coid,
            side=sizing.side,
            quantity=sizing.qty,
            executed_qty=sizing.qty,
            avg_price=SIMULATED_PRICES.get(order.symbol, Decimal(100)),
            order_status="FILLED",
        )
        self.orders[coid] = result
        while len(self.orders) > REMEMBERED_ORDERS:
            self.orders.popitem(last=False)
        return result
