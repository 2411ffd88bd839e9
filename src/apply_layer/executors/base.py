"""The one small interface every executor implements, and what crosses it.

An executor gets an :class:`OrderRequest` only after the gate has consumed
every permit. It sizes the close (``sizing.size_close``) against what it
knows of the symbol, records each send in the plan's journal *before* the
request leaves (``OrderLog.record_attempt``), and returns one
:class:`StepResult`. An order whose fate is unknown is looked up, never
blindly resent: ``OrderLog.attempts`` tells an executor, even after a crash,
whether and when an earlier run already sent this order, and
``OrderLog.unrecorded_until_ms`` until when a send may have been made that the
journal lost (Redis lost writes).

An executor may read ahead of the lease: :meth:`Executor.prepare` is called
when a plan is claimed, before the permit wait, with a :class:`SendWatch` on
the symbol, and what it read is handed back to ``execute``. Whatever was read
then is checked under the lease before the send: ``record_attempt`` refuses
(``errors.AttemptsChanged``, ``errors.PositionMoved``) to record a send made
on reads that another attempt or another order on the symbol has overtaken.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from apply_layer.core.check_line import CheckLine
from apply_layer.core.order_ids import client_order_id
from apply_layer.core.outcomes import StepResult


@dataclass(frozen=True)
class OrderRequest:
    """A permitted close: everything an executor may use to size and send it."""

    plan_id: str
    symbol: str
    step: str  # e.g. "CLOSE_PARTIAL_75"
    pct: Decimal
    safe_qty: Decimal  # from P3.3's permit
    reported_amt: Decimal | None  # P3.3's signed exchange_position_amt, if it gave one
    # The id an earlier run journalled with its send: a resumed order is looked
    # up (and resent) under the id it was sent with, even if the form changed.
    sent_client_order_id: str = ""

    @property
    def client_order_id(self) -> str:
        return self.sent_client_order_id or client_order_id(self.plan_id, self.step)


@dataclass(frozen=True)
class OrderRef:
    """A plan's order as far as a lookup needs it: no quantity, nothing to send.

    What :meth:`Executor.find_order` is given when a plan is about to end
    without an order (BLOCKED, REJECTED, SKIPPED) while Redis may have lost the
    record of one (``exchange_truth.py``).
    """

    plan_id: str
    symbol: str
    step: str
    client_order_id: str


class OrderLog(Protocol):
    """The plan's journal as an executor sees it."""

    async def attempts(self) -> list[int]:
        """Epoch ms of every earlier send of this plan's order, oldest first."""
        ...

    async def record_attempt(
        self, sent_at_ms: int, *, quantity: Decimal, side: str, position_mark: str | None = None
    ) -> None:
        """Journal a send *before* it leaves; raises if the journal cannot be written
        (``errors.NotReplicated`` if it was written but not replicated as required).

        Refuses, writing nothing, if an attempt was recorded since ``attempts()``
        was read (``errors.AttemptsChanged``), or, with ``position_mark``, if
        another send was recorded on the symbol since ``SendWatch.symbol_mark``
        returned it (``errors.PositionMoved``)."""
        ...

    def unrecorded_until_ms(self) -> int:
        """Epoch ms until which a send of this order may have been made unseen.

        ``attempts`` shows every send the journal kept; Redis may have lost
        some (restarted from an older state, failed over to a lagging
        replica), and this process, once started, cannot tell what happened
        before. An executor treats this moment as a send it cannot see: a
        lookup answering "no such order" proves nothing until its window has
        closed. 0 when nothing can have been lost.
        """
        ...


class SendWatch(Protocol):
    """The journal's side of a read ahead of the lease (see the module docstring)."""

    async def symbol_mark(self) -> str | None:
        """The symbol's last recorded send, to be read *before* its position; None
        while another holder has the symbol's lease (an order may be in flight)."""
        ...

    def unrecorded_until_ms(self) -> int:
        """As ``OrderLog.unrecorded_until_ms``."""
        ...


class Prepared(Protocol):
    """What an executor read ahead for one plan; cancelled if the plan ends unsent."""

    def cancel(self) -> None: ...


class Executor(Protocol):
    """Places (or pretends to place) the reduce-only close of a permitted plan."""

    mode: str

    async def start(self) -> None:
        """Open connections and load what sizing needs (filters, clock offset)."""
        ...

    async def close(self) -> None: ...

    def prepare(
        self, plan_id: str, symbol: str, client_order_id: str, watch: SendWatch
    ) -> Prepared | None:
        """Start what can be read before the permits arrive (None: nothing to read);
        the result goes to ``execute`` as ``prepared``."""
        ...

    async def execute(
        self, order: OrderRequest, log: OrderLog, prepared: Prepared | None = None
    ) -> StepResult:
        """Size and place the close exactly once; never raises for an exchange answer.

        ``prepared``: what this executor's ``prepare`` returned for the plan (None
        if it read nothing ahead)."""
        ...

    async def preflight(self) -> list[CheckLine]:
        """Checks for ``apply-layer check`` (credentials, clock, filters, ...)."""
        ...

    async def find_order(self, ref: OrderRef, unseen_ms: int) -> StepResult | None:
        """The order placed under ``ref.client_order_id``, if one exists; sends nothing.

        None only when no such order exists and none can still appear: a send
        made unseen until ``unseen_ms`` (``OrderLog.unrecorded_until_ms``) can no
        longer execute. An order found is reported EXECUTED (or as it ended)
        with ``adopted``; a lookup that cannot be completed is a FAILED
        ``order_unknown`` step, never a guess.
        """
        ...
