"""docs/SECURITY.md's standalone signing code makes signatures the daemon accepts.

Issuers that do not install this package copy that block; if it ever
disagreed with ``signing.py`` their permits would be refused in ``require``.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apply_layer.core.keys import ISSUERS
from apply_layer.core.permits import decode_permit
from apply_layer.core.signing import KeyRing, verify_permit

DOC = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"
KEY = bytes(range(7, 39))
RING = KeyRing({"p33": {"p33-doc": KEY}, "governor": {"gov-doc": KEY}})


def _standalone() -> Any:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    block = next(b for b in blocks if "import hashlib" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, str(DOC), "exec"), namespace)  # our own documentation
    return namespace["sign_permit"]


@pytest.mark.parametrize(
    ("issuer", "permit"),
    [
        ("p33", {"allow": True, "symbol": "BTCUSDT", "safe_qty": 0.002, "reason": "ok"}),
        ("p33", {"allow": True, "symbol": "BTCUSDT", "safe_qty": 1e-05}),
        ("p33", {"allow": "true", "symbol": "BTCUSDT", "safe_close_qty": "0.0100"}),
        ("p33", {"allow": False, "symbol": "BTCUSDT", "safe_qty": 3}),
        ("governor", {"granted": True, "symbol": "BTCUSDT", "decision": "EXECUTE"}),
    ],
)
def test_the_documented_standalone_signer_matches_the_daemon(
    issuer: str, permit: dict[str, Any]
) -> None:
    kid = "p33-doc" if issuer == "p33" else "gov-doc"
    sign = _standalone()
    close: dict[str, Any] = {
        "step": "CLOSE_PARTIAL_75",
        "pct": Decimal(50),
    }  # a step whose pct is not its name's
    signed = sign(permit, issuer=issuer, plan_id="doc-plan", kid=kid, key=KEY, **close)
    fields = decode_permit("string", json.dumps(signed))
    assert fields is not None
    now_ms = int(Decimal(fields["sig_exp_ms"])) - 1
    check = verify_permit(ISSUERS[issuer], "doc-plan", "BTCUSDT", fields, RING, now_ms, **close)
    assert check.ok, check
    # ... and a one-character change in what it covers breaks it, as for sign_permit's.
    moved = verify_permit(ISSUERS[issuer], "doc-plan2", "BTCUSDT", fields, RING, now_ms, **close)
    assert moved.reason == "mismatch"
    others: list[dict[str, Any]] = [
        {"pct": Decimal(75)},
        {"step": "CLOSE_PARTIAL_50"},
        {"step": "PARTIAL_75"},
    ]
    for other in others:
        wider = verify_permit(
            ISSUERS[issuer], "doc-plan", "BTCUSDT", fields, RING, now_ms, **(close | other)
        )
        assert wider.reason == "mismatch", other
    # a float share signs as its decimal text, as the daemon reads a plan's JSON pct
    floaty = sign(
        permit,
        issuer=issuer,
        plan_id="doc-plan",
        kid=kid,
        key=KEY,
        step="CLOSE_PARTIAL_25",
        pct=25.0,
    )
    fields = decode_permit("string", json.dumps(floaty))
    assert fields is not None
    assert verify_permit(
        ISSUERS[issuer],
        "doc-plan",
        "BTCUSDT",
        fields,
        RING,
        now_ms,
        step="CLOSE_PARTIAL_25",
        pct=Decimal(25),
    ).ok
