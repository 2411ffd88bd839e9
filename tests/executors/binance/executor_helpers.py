"""What the executor tests share: the retry bounds, an order, counts of requests.

recvWindow is 400 ms here so the waits for a closed window stay short. The
fixtures built on these (``fake``, ``make``, ``ex``) are in this directory's
conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from apply_layer.executors.base import OrderRequest
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.executors.binance.lookup import RetryPolicy
from tests.fake_binance import ORDER, FakeBinance

RECV_WINDOW = 400
MARGIN = 100
POLICY = RetryPolicy(
    clock_margin_ms=MARGIN,
    lookup_backoff_sec=0.03,
    lookup_backoff_max_sec=0.1,
    max_lookup_errors=4,
    max_resend_cycles=2,
    max_retry_after_sec=5.0,
    final_status_polls=3,
)


def request(
    plan: str = "p1",
    *,
    symbol: str = "BTCUSDT",
    pct: str = "100",
    safe: str = "0.010",
    reported: str | None = "0.010",
    step: str = "CLOSE_FULL",
) -> OrderRequest:
    return OrderRequest(
        plan_id=plan,
        symbol=symbol,
        step=step,
        pct=Decimal(pct),
        safe_qty=Decimal(safe),
        reported_amt=Decimal(reported) if reported is not None else None,
    )


Make = Callable[..., BinanceExecutor]


def posts(fake: FakeBinance) -> int:
    return len(fake.requests("POST", ORDER))


def lookups_after_send(fake: FakeBinance) -> int:
    """Order lookups after the first send (the one before it is the adoption check)."""
    with fake.lock:
        seen = list(fake.seen)
    first = next((n for n, s in enumerate(seen) if s.method == "POST" and s.path == ORDER), None)
    if first is None:
        return 0
    return sum(1 for s in seen[first:] if s.method == "GET" and s.path == ORDER)
