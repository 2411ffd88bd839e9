"""Client order ids (pure): the one rule for a plan step's ``newClientOrderId``.

The id is how an order is found again at Binance after a crash or a lost
journal write, so it must never change for a plan in flight: every known close
step's code is derived from :data:`plans.CLOSE_STEPS` (the share it closes:
``F`` for a full close, else the percentage), so a step name added there gets
its code here without a second table. harvest_v2's ``PARTIAL_NN`` names share
the codes of ``CLOSE_PARTIAL_NN``: one plan has one close step, so sharing a
code is safe.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from apply_layer.core.plans import CLOSE_STEPS

CLIENT_ORDER_ID_MAX = 36  # Binance: ^[\.A-Z\:/a-z0-9_-]{1,36}$


def _code(pct: Decimal) -> str:
    return "F" if pct == 100 else f"{pct:f}"


STEP_CODES = {name: _code(pct) for name, pct in CLOSE_STEPS.items()}


def step_code(step: str) -> str:
    """A step's code in its order id: from ``CLOSE_STEPS``, else a 4-hex-digit digest."""
    return STEP_CODES.get(step) or hashlib.blake2b(step.encode(), digest_size=2).hexdigest()


def client_order_id(plan_id: str, step: str) -> str:
    """Deterministic ``newClientOrderId`` for one plan step (at most 36 characters).

    Readable when the plan id is short (``al75-67e6da21fa9fe506``); otherwise the
    plan id is replaced by a 24-hex-digit BLAKE2b digest of it, after a ``.``
    instead of the ``-`` (``al75.<digest>``). A plan id never holds a ``.``,
    so the two forms never meet: a plan whose id *is* another plan's digest
    cannot take that plan's order for its own. (Until 0.1.0 both forms used
    ``-``; an order sent under the old hashed form is still found, because a
    resumed plan uses the id its journal recorded, see
    ``executors.base.OrderRequest``.)
    """
    code = step_code(step)
    readable = f"al{code}-{plan_id}"
    if len(readable) <= CLIENT_ORDER_ID_MAX and "." not in plan_id:
        return readable
    digest = hashlib.blake2b(plan_id.encode(), digest_size=12).hexdigest()
    return f"al{code}.{digest}"
