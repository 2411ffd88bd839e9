"""Executors behind one protocol (``base.Executor``), chosen by ``APPLY_MODE``."""

from __future__ import annotations

from apply_layer.executors.base import Executor
from apply_layer.settings import Settings


class ExecutorUnavailable(RuntimeError):
    """The configured mode cannot run (e.g. testnet without credentials)."""


def create_executor(settings: Settings) -> Executor:
    if settings.mode == "paper":
        from apply_layer.executors.paper import PaperExecutor

        return PaperExecutor()
    if settings.mode == "dry_run":
        from apply_layer.executors.dry_run import DryRunExecutor

        return DryRunExecutor()
    raise ExecutorUnavailable(
        "APPLY_MODE=testnet: the Binance testnet executor is not available in this build"
    )
