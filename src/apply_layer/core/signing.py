"""Signed permits (pure): canonical text, HMAC-SHA256 signatures, modes.

Anyone who can write to Redis can write a permit, and anyone who can XADD can
publish a plan. A signed permit carries an HMAC-SHA256, made with a key only
its issuer and the apply layer hold, over a canonical text of what it
authorises: this plan id, this symbol, *this close* (step and share), this
grant and quantity; the daemon checks it after the gate's atomic step
(``APPLY_PERMIT_SIGNING``, per issuer: ``off``, ``warn`` or ``require``), so a
forged permit that was consumed only blocks its own plan, and a plan entry
injected under a real plan id with another close (a CLOSE_FULL where the
issuer authorised 25 %) cannot use the genuine permits. docs/SECURITY.md has
the threat model and the lines an issuer adds.

The canonical text (version 2) is ten lines joined by ``\\n``::

    quantum-permit-v2
    issuer=p33
    plan_id=<the plan id of the permit's key>
    symbol=<the plan's symbol>
    step=<the plan's close step: CLOSE_PARTIAL_25; an action-only plan's step, CLOSE_FULL>
    pct=<the share it closes, plain decimal: 25>
    allow=true              (every grant flag present is true; else false)
    safe_qty=0.002          (p33's quantity as plain decimal text; empty for others)
    exp_ms=<the signature's expiry, epoch milliseconds>
    kid=<the key id>

and the permit carries ``sig`` (64 lowercase hex digits), ``kid`` and
``sig_exp_ms`` beside its usual fields. The plan id, symbol, step and share
come from the plan entry the daemon is executing, not from the permit, so a
signed permit cannot be moved to another plan, nor to another close of the
same plan. (Version 1, without step and pct, is no longer accepted.)

Pure: no file, no environment. The key ring (:class:`KeyRing`) is a value
here; reading it from a key file is ``signing_keys``' (``read_keys``,
``keys_path``), the one module of the two that does I/O. The grant and
quantity rules a signature binds are ``permits``' (:func:`~apply_layer.core.permits.grants`,
:func:`~apply_layer.core.permits.permit_qty`), the very ones the gate applies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from apply_layer.core.keys import ISSUERS, Issuer
from apply_layer.core.permits import grants, permit_qty
from apply_layer.core.plans import CLOSE_STEPS, STEP_NAME_RE

Mode = Literal["off", "warn", "require"]
MODES: tuple[Mode, ...] = ("off", "warn", "require")
VERSION = "quantum-permit-v2"
SIGNATURE_FIELDS = ("sig", "kid", "sig_exp_ms")
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX_SIG = re.compile(r"[0-9a-f]{64}")
_INT_TEXT = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True)
class KeyRing:
    """Secrets by issuer and key id. Its repr names the key ids only."""

    keys: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict, repr=False)

    def key(self, issuer: str, kid: str) -> bytes | None:
        return self.keys.get(issuer, {}).get(kid)

    def kids(self, issuer: str) -> list[str]:
        """The issuer's key ids in file order (the last is the newest)."""
        return list(self.keys.get(issuer, {}))

    def __repr__(self) -> str:
        return f"KeyRing({ {i: list(k) for i, k in self.keys.items()} })"


def parse_modes(text: str) -> dict[str, Mode]:
    """``off``/``warn``/``require`` for every issuer, or ``p33=require,governor=warn``.

    Issuers not named are ``off``. Returns every known issuer's mode.
    """
    value = text.strip().lower()
    if value in MODES:
        return dict.fromkeys(ISSUERS, value)
    modes: dict[str, Mode] = dict.fromkeys(ISSUERS, "off")
    seen: set[str] = set()
    for part in value.split(","):
        issuer, eq, mode = (p.strip() for p in part.partition("="))
        if not eq or mode not in MODES:
            raise ValueError(
                "must be off, warn, require, or per issuer like p33=require,governor=warn"
            )
        if issuer not in ISSUERS:
            raise ValueError(f"unknown issuer {issuer!r} (known: {', '.join(ISSUERS)})")
        if issuer in seen:
            raise ValueError(f"{issuer} is given twice")
        seen.add(issuer)
        modes[issuer] = mode
    return modes


def canonical_qty(value: Decimal) -> str:
    """Plain decimal text: no exponent, no trailing zeros, no trailing point."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def close_share(step: str, pct: Decimal | int | float | str | None = None) -> Decimal:
    """The share (percent) a signature binds for ``step``: ``pct``, else the step's own.

    ``pct`` is the share the apply layer closes: the plan step's ``pct``, or
    the one its name implies (CLOSE_PARTIAL_25: 25, CLOSE_FULL: 100), the
    smaller of the two when they disagree. :class:`ValueError` for anything else.
    """
    if not STEP_NAME_RE.fullmatch(step):
        raise ValueError(f"{step!r} is not a step name like CLOSE_PARTIAL_25")
    if pct is None:
        if step not in CLOSE_STEPS:
            raise ValueError(f"{step} is not a close step: give its pct")
        return CLOSE_STEPS[step]
    try:
        share = Decimal(repr(pct) if isinstance(pct, float) else str(pct))
    except ArithmeticError:
        share = Decimal("NaN")
    if isinstance(pct, bool) or not (share.is_finite() and 0 < share <= 100):
        raise ValueError(f"pct {pct!r} is not a share in (0, 100]")
    return share


def canonical_text(
    *,
    issuer: str,
    plan_id: str,
    symbol: str,
    step: str,
    pct: Decimal,
    allow: bool,
    safe_qty: Decimal | None,
    exp_ms: int,
    kid: str,
) -> str:
    """The text a signature covers (see the module docstring)."""
    return "\n".join(
        [
            VERSION,
            f"issuer={issuer}",
            f"plan_id={plan_id}",
            f"symbol={symbol}",
            f"step={step}",
            f"pct={canonical_qty(pct)}",
            f"allow={'true' if allow else 'false'}",
            f"safe_qty={'' if safe_qty is None else canonical_qty(safe_qty)}",
            f"exp_ms={exp_ms}",
            f"kid={kid}",
        ]
    )


def compute_signature(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _issuer(name: str) -> Issuer:
    if name not in ISSUERS:
        raise ValueError(f"unknown issuer {name!r} (known: {', '.join(ISSUERS)})")
    return ISSUERS[name]


def sign_permit(
    permit: Mapping[str, Any],
    *,
    issuer: str,
    plan_id: str,
    kid: str,
    key: bytes,
    step: str,
    pct: Decimal | int | float | str | None = None,
    ttl_sec: float = 60.0,
    symbol: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """``permit`` plus ``kid``, ``sig_exp_ms`` and ``sig``: what an issuer stores.

    The signature binds ``plan_id``, ``symbol`` (default: the permit's own),
    the plan's close ``step`` and the share it closes (``pct``, default the
    step's own, see :func:`close_share`). Store the result as JSON (or as a
    HASH) under the issuer's key for that plan, with the usual TTL.
    """
    spec = _issuer(issuer)
    share = close_share(step, pct)
    if not KEY_ID_RE.fullmatch(kid):
        raise ValueError("the key id must be 1-64 of A-Z a-z 0-9 _ . -")
    signed = {k: v for k, v in permit.items() if k not in SIGNATURE_FIELDS}
    bound = symbol if symbol is not None else signed.get("symbol")
    if not isinstance(bound, str) or not bound:
        raise ValueError("the permit names no symbol: pass symbol=")
    qty = permit_qty(signed) if spec.carries_qty else None
    if spec.carries_qty and qty is None:
        raise ValueError(f"a {issuer} permit needs a finite safe_qty > 0")
    exp_ms = int(((time.time() if now is None else now) + ttl_sec) * 1000)
    text = canonical_text(
        issuer=issuer,
        plan_id=plan_id,
        symbol=bound,
        step=step,
        pct=share,
        allow=grants(signed),
        safe_qty=qty,
        exp_ms=exp_ms,
        kid=kid,
    )
    signed.update(kid=kid, sig_exp_ms=exp_ms, sig=compute_signature(key, text))
    return signed


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of checking one permit's signature."""

    ok: bool
    reason: str  # ok, missing, malformed, unknown_kid, mismatch, expired
    kid: str = ""


def _exp_ms(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value) if abs(value) < 10**16 else None
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value)
    return None


def verify_permit(
    issuer: Issuer,
    plan_id: str,
    symbol: str,
    fields: Mapping[str, Any],
    keys: KeyRing,
    now_ms: int,
    *,
    step: str,
    pct: Decimal,
) -> SignatureCheck:
    """Check a consumed permit's signature for this plan and close, as of ``now_ms``.

    ``step`` and ``pct`` are the close the daemon would execute (the plan's
    close step and the share it closes). ``now_ms`` is the gate's decision
    time, so a plan resumed after a crash is judged as it was when its
    permits were consumed.
    """
    sig, kid, exp = (fields.get(name) for name in SIGNATURE_FIELDS)
    if sig is None and kid is None:
        return SignatureCheck(False, "missing")
    if not isinstance(kid, str) or not KEY_ID_RE.fullmatch(kid):
        return SignatureCheck(False, "malformed")
    exp_ms = _exp_ms(exp)
    if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig) or exp_ms is None:
        return SignatureCheck(False, "malformed", kid)
    key = keys.key(issuer.name, kid)
    if key is None:
        return SignatureCheck(False, "unknown_kid", kid)
    qty = permit_qty(fields) if issuer.carries_qty else None
    text = canonical_text(
        issuer=issuer.name,
        plan_id=plan_id,
        symbol=symbol,
        step=step,
        pct=pct,
        allow=grants(fields),
        safe_qty=qty,
        exp_ms=exp_ms,
        kid=kid,
    )
    if not hmac.compare_digest(compute_signature(key, text), sig):
        return SignatureCheck(False, "mismatch", kid)
    if now_ms > exp_ms:
        return SignatureCheck(False, "expired", kid)
    return SignatureCheck(True, "ok", kid)
