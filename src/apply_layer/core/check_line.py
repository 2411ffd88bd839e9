"""One line of ``apply-layer check``: what each preflight reports.

Its own module because three layers produce these lines (the executors'
``preflight``, ``topology`` for Redis, the ``check`` command itself) and the
executors must not import ``commands/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckLine:
    """One line of ``apply-layer check``."""

    name: str
    ok: bool
    detail: str
