"""What the two in-process executors (``paper``, ``dry_run``) share: nothing to open,
nothing to close, nothing to read ahead.

The simulation answers at once, so a read ahead of the permits would gain
nothing; one implementation keeps the two from drifting apart.
"""

from __future__ import annotations

from apply_layer.executors.base import Prepared, SendWatch


class InProcessExecutor:
    """The connection-less part of ``Executor``, for executors that never leave the process."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def prepare(
        self, plan_id: str, symbol: str, client_order_id: str, watch: SendWatch
    ) -> Prepared | None:
        return None  # nothing to read ahead: the simulation answers at once
