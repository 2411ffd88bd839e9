"""Rules 3 and 4 of docs/BINANCE.md: resuming after a crash, and adopting an order
the journal lost (Redis lost the record of a send).
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

from apply_layer.core.outcomes import Outcome, result_fields
from apply_layer.core.statuses import OutcomeStatus
from apply_layer.executors.binance.executor import BinanceExecutor
from tests.executors.binance.executor_helpers import MARGIN, RECV_WINDOW, posts, request
from tests.fake_binance import ORDER, FakeBinance, dropped, unknown_503
from tests.harness import MemoryLog

# -- resume after a crash ---------------------------------------------------


async def test_resume_reports_an_order_that_exists_without_sending(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    cid = request().client_order_id
    fake.add_order("BTCUSDT", "SELL", "0.010", cid)
    log = MemoryLog([int(time.time() * 1000) - 50])
    result = await ex.execute(request(), log)
    assert result.executed and result.client_order_id == cid
    assert posts(fake) == 0 and len(log.sends) == 1
    assert fake.order_count(cid) == 1


async def test_resume_waits_for_the_window_then_sends_once(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    crashed_at = int(time.time() * 1000)  # journalled, then the process died
    log = MemoryLog([crashed_at])
    result = await ex.execute(request(), log)
    assert result.executed and posts(fake) == 1 and len(log.sends) == 2
    assert fake.requests("POST", ORDER)[0].at_ms >= crashed_at + RECV_WINDOW + MARGIN
    assert fake.order_count(request().client_order_id) == 1


async def test_resume_with_an_old_attempt_sends_after_one_lookup(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    log = MemoryLog([int(time.time() * 1000) - 60_000])
    assert (await ex.execute(request(), log)).executed
    assert len(fake.requests("GET", ORDER)) == 1 and posts(fake) == 1


async def test_resume_without_a_definite_lookup_sends_nothing(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", ORDER, *[dropped(place=False) for _ in range(10)])
    result = await ex.execute(request(), MemoryLog([int(time.time() * 1000)]))
    assert (result.status, result.error) == ("FAILED", "order_unknown") and posts(fake) == 0


# -- Redis lost the record of a send -------------------------------------------


async def test_a_first_send_adopts_an_order_the_journal_lost(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """The journal shows no send, but the exchange has the (filled) order: adopt it."""
    cid = request().client_order_id
    placed = fake.add_order("BTCUSDT", "SELL", "0.010", cid)  # an earlier run's, now forgotten
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert result.executed and result.adopted and result.order_id == str(placed["orderId"])
    assert result.as_dict()["adopted"] is True and "adopted" in result.message
    fields = result_fields(
        plan_id="p1",
        symbol="BTCUSDT",
        plan_decision="EXECUTE",
        outcome=Outcome(OutcomeStatus.EXECUTED, steps=(result,)),
        mode="testnet",
    )
    assert fields["adopted"] == "True" and '"adopted": true' in fields["steps_results"]
    assert posts(fake) == 0 and log.sends == [] and fake.order_count(cid) == 1
    assert fake.positions["BTCUSDT"] == 0  # filled once, by the earlier run


async def test_an_order_sent_normally_is_not_adopted(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    result = await ex.execute(request(), MemoryLog())
    assert result.executed and not result.adopted and "adopted" not in result.as_dict()
    fields = result_fields(
        plan_id="p1",
        symbol="BTCUSDT",
        plan_decision="EXECUTE",
        outcome=Outcome(OutcomeStatus.EXECUTED, steps=(result,)),
        mode="testnet",
    )
    assert "adopted" not in fields
    assert len(fake.requests("GET", ORDER)) == 1  # the one check before the send


async def test_a_lost_send_still_in_flight_is_found_not_doubled(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """Redis changed just now: a send it lost may still reach the engine in its window."""
    cid = request().client_order_id
    changed_at = int(time.time() * 1000)
    timer = threading.Timer(0.25, fake.add_order, ("BTCUSDT", "SELL", "0.010", cid))
    timer.start()  # the lost send lands 250 ms later, inside its recvWindow (400 ms)
    result = await ex.execute(request(), MemoryLog(unseen_ms=changed_at))
    timer.join()
    assert result.executed and result.adopted
    assert posts(fake) == 0 and fake.order_count(cid) == 1
    assert len(fake.requests("GET", ORDER)) >= 2  # "no such order" first, then found


async def test_after_a_redis_change_a_first_send_waits_out_the_window(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    changed_at = int(time.time() * 1000)
    log = MemoryLog(unseen_ms=changed_at)
    result = await ex.execute(request(), log)
    assert result.executed and not result.adopted and posts(fake) == 1
    assert fake.requests("POST", ORDER)[0].at_ms >= changed_at + RECV_WINDOW + MARGIN


async def test_a_check_that_cannot_complete_sends_nothing(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    fake.inject("GET", ORDER, *[unknown_503(place=False) for _ in range(10)])
    log = MemoryLog()
    result = await ex.execute(request(), log)
    assert (result.status, result.error) == ("FAILED", "exchange_unavailable")
    assert "nothing was sent" in result.message
    assert posts(fake) == 0 and log.sends == []


async def test_a_redis_change_between_the_check_and_the_send_checks_again(
    ex: BinanceExecutor, fake: FakeBinance
) -> None:
    """The record went to a Redis that came back from an older state: look again."""
    cid = request().client_order_id

    class ChangesOnRecord(MemoryLog):
        async def record_attempt(
            self,
            sent_at_ms: int,
            *,
            quantity: Decimal,
            side: str,
            position_mark: str | None = None,
        ) -> None:
            await super().record_attempt(sent_at_ms, quantity=quantity, side=side)
            if len(self.sends) == 1:
                self.unseen_ms = int(time.time() * 1000)
                # ... and a send that Redis lost lands a moment later.
                threading.Timer(0.2, fake.add_order, ("BTCUSDT", "SELL", "0.010", cid)).start()

    log = ChangesOnRecord()
    result = await ex.execute(request(), log)
    assert result.executed and result.adopted
    assert posts(fake) == 0 and fake.order_count(cid) == 1
    assert len(log.sends) == 1  # recorded, then not sent
