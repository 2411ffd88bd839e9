"""The exchange shell: executors behind one protocol (``base.Executor``), chosen by ``APPLY_MODE``.

``paper`` and ``dry_run`` run in process; ``binance/`` places the real
reduce-only close. Executors never touch Redis: what they need from it (the
send record, the position's last-send mark) the daemon passes in (import-linter
contract ``executors-no-redis``). ``exchange_truth`` asks the exchange before a
plan ends without an order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apply_layer.core.errors import ExecutorUnavailable
from apply_layer.executors.base import Executor

if TYPE_CHECKING:  # the settings (pydantic) are the caller's: importing an executor's
    # pure parts (executors.base, executors.binance.model) must not load them
    from apply_layer.settings import Settings


def create_executor(settings: Settings) -> Executor:
    if settings.mode == "paper":
        from apply_layer.executors.paper import PaperExecutor

        return PaperExecutor()
    if settings.mode == "dry_run":
        from apply_layer.executors.dry_run import DryRunExecutor

        return DryRunExecutor()
    if settings.mode == "testnet":
        from apply_layer.executors.binance.executor import BinanceExecutor

        return BinanceExecutor.from_settings(settings)
    raise ExecutorUnavailable(f"APPLY_MODE={settings.mode}: no such executor")
