"""Permit verdicts (pure): is a stored permit an allow, a deny, or missing?

The one statement in Python of the permit rules: the gate's re-check, the
signatures (``signing.py``) and the commands all use these functions.

The gate's Lua script decides atomically on the server with the same rules
(``gate.lua``); this module re-reads the raw values the script returns so the
service gets typed, exact values (``safe_qty`` as a Decimal from the permit's
own text, never through a float). A property test holds the two rule sets
together, and the gate fails closed if they ever disagree.

The rules (docs/CONTRACT.md 3), in order:

0. Size: a permit (or governor block marker) longer than
   :data:`MAX_PERMIT_BYTES` (4 KiB) is a deny (``oversized``); real permits
   are a few hundred bytes. The script then journals and returns only a summary of it
   (:data:`OVERSIZED_PREFIX`, its size and a sanitised head), so that an 8 MB
   permit costs neither the journal nor the daemon 8 MB; it sizes a value
   before reading it (STRLEN; HLEN and MEMORY USAGE for a HASH) and never
   reads one it refuses, so that a 400 MB one does not stall Redis either.
1. Type: a string holds JSON (or a bare ``1``); a HASH holds string fields.
   Any other type is a deny (``wrong_type``); unparseable JSON is a deny
   (``malformed``).
2. Grant: ``granted`` and/or ``allow`` must be present, and every one present
   must be true (JSON ``true``, the number 1, or the string ``true``/``1`` in
   any case). Absent: ``not_granted``; present but not true: ``denied`` (the
   permit's own ``reason`` is kept as detail).
3. Symbol: if the permit names a symbol (non-null), it must be the plan's.
4. Quantity (P3.3 only): ``safe_qty``, else the older ``safe_close_qty``, a
   JSON number or a plain decimal string, finite and > 0 (as a double, like
   the script sees it). Otherwise ``invalid_qty``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from apply_layer.core.keys import Issuer

Verdict = Literal["allow", "deny", "missing"]

DENY_CATEGORIES = (
    "oversized",
    "wrong_type",
    "malformed",
    "not_granted",
    "denied",
    "symbol_mismatch",
    "invalid_qty",
)

_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_REASON_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
MAX_REASON_LEN = 80
# Rule 0. gate.lua gets these constants from here (see gate.GATE_SCRIPT).
MAX_PERMIT_BYTES = 4096
OVERSIZED_PREFIX = "oversized:"
# A HASH is sized before it is read (issue 21: a 2-million-field HASH stalled
# Redis 4.6 s). Its JSON is at least 6 bytes a field (`"a":"",`, names unique),
# so past MAX_PERMIT_FIELDS fields it cannot fit in MAX_PERMIT_BYTES. Within
# that, Redis holds it in at most ~100 bytes a field plus its text (MEMORY
# USAGE), far below MAX_PERMIT_MEMORY: only a hash whose JSON could not fit is
# refused unread, so the rule stays the one on its JSON.
MAX_PERMIT_FIELDS = MAX_PERMIT_BYTES // 6
MAX_PERMIT_MEMORY = 32 * MAX_PERMIT_BYTES


@dataclass(frozen=True)
class PermitVerdict:
    """What one issuer's permit says about one plan."""

    issuer: str
    kind: str  # "string", "hash", "none", or the Redis type name of anything else
    verdict: Verdict
    category: str = ""  # one of DENY_CATEGORIES when verdict == "deny"
    detail: str = ""  # the permit's own reason for an explicit deny, sanitised
    safe_qty: Decimal | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # its top-level scalar values

    @property
    def reason(self) -> str:
        """Short deny reason for logs and results: the permit's own, else the category."""
        return self.detail or self.category


def sanitise_reason(text: str) -> str:
    """Make a free-text reason safe for a ``key=value`` log line and a result field."""
    cleaned = _REASON_UNSAFE.sub("_", text.strip())[:MAX_REASON_LEN]
    return cleaned or "unspecified"


def _from_float(value: Any) -> Any:
    """An issuer's Python float as the gate reads it: JSON writes a float as its
    ``repr``, which the gate decodes as that exact Decimal. Anything else as it is.

    The gate itself never holds a float (it decodes numbers as Decimal, and a
    HASH's fields are strings), so for the gate this is the identity; it makes
    the signer, which sees the issuer's dict, read what the gate will.
    """
    if isinstance(value, float):
        return Decimal(repr(value))  # repr() of any float (nan, inf too) is Decimal text
    return value


def is_true(value: Any) -> bool:
    """A grant flag's truth: ``true``, the number 1, or the string ``true``/``1`` in any case."""
    if value is True:
        return True
    if isinstance(value, Decimal | int) and not isinstance(value, bool):
        return bool(value == 1)
    return isinstance(value, str) and value.lower() in ("true", "1")


def grant_flags(fields: Mapping[str, Any]) -> list[Any]:
    """The grant flags a permit carries: ``granted`` and/or ``allow``, those present.

    Read as the gate reads them: an issuer's Python float as its JSON text.
    """
    return [_from_float(fields[k]) for k in ("granted", "allow") if k in fields]


def grants(fields: Mapping[str, Any]) -> bool:
    """Rule 2: the permit's own grant, ``granted``/``allow`` present and every one true."""
    flags = grant_flags(fields)
    return bool(flags) and all(is_true(flag) for flag in flags)


def permit_qty(fields: Mapping[str, Any]) -> Decimal | None:
    """Rule 4: the quantity a P3.3 permit grants (``safe_qty``, else ``safe_close_qty``).

    Read as the gate reads it: an issuer's Python float (``sign_permit`` gets
    the issuer's dict before it is written) as the JSON text it is written as.
    """
    candidate = fields.get("safe_qty")
    if candidate is None:
        candidate = fields.get("safe_close_qty")
    return parse_qty(_from_float(candidate))


def _as_double(value: Decimal) -> float:
    try:
        return float(value)
    except (OverflowError, ValueError):  # pragma: no cover - float() of Decimal saturates
        return math.nan


def parse_qty(value: Any) -> Decimal | None:
    """A finite, positive quantity from a JSON number or a plain decimal string."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):  # whole text: "1\n" is not a quantity
            return None
        try:
            value = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid text
            return None
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        return None
    as_double = _as_double(value)
    if not (math.isfinite(as_double) and as_double > 0):
        return None
    return value


def _json_constant(name: str) -> Decimal:
    # cjson (the script's decoder) accepts NaN and Infinity; so must we, or a
    # permit with NaN in an unrelated field would be an allow there and a
    # deny here. Decimal reads JSON's three names (NaN, Infinity, -Infinity) as they are.
    return Decimal(name)


# One decoder, built once: json.loads with these hooks builds a new one (and its
# scanner) for every permit, twice per plan on the gate's path.
_PERMIT_JSON = json.JSONDecoder(
    parse_float=Decimal, parse_int=Decimal, parse_constant=_json_constant
)


def is_oversized(raw: str) -> bool:
    """Rule 0: the script's summary of an oversized value, or a value past the limit.

    The script counts bytes, this counts characters (never more than the
    bytes they came from), so whatever the script passed in full passes here.
    """
    return raw.startswith(OVERSIZED_PREFIX) or len(raw) > MAX_PERMIT_BYTES


def decode_permit(kind: str, raw: str) -> dict[str, Any] | None:
    """The permit's fields, or None when the text is not a permit at all."""
    if kind == "hash":
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None
    try:
        data = _PERMIT_JSON.decode(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        return data
    if isinstance(data, list):
        return {}  # an array grants nothing (the script cannot tell [] from {})
    if isinstance(data, Decimal) and not isinstance(data, bool):
        return {"allow": True} if data == 1 else {"allow": False}
    return None


def evaluate_permit(issuer: Issuer, kind: str, raw: str | None, symbol: str) -> PermitVerdict:
    """Apply the docs/CONTRACT.md 3 rules to one stored permit."""
    name = issuer.name
    if kind == "none" or raw is None:
        return PermitVerdict(name, "none", "missing")
    if kind not in ("string", "hash"):
        return PermitVerdict(name, kind, "deny", "wrong_type")
    if is_oversized(raw):
        return PermitVerdict(name, kind, "deny", "oversized")
    data = decode_permit(kind, raw)
    if data is None:
        return PermitVerdict(name, kind, "deny", "malformed")

    # Only top-level values are kept (all anything reads): a plan in flight
    # holds its verdicts, so nested garbage must not stay with them.
    kept = {k: v for k, v in data.items() if not isinstance(v, dict | list)}

    def deny(category: str, detail: str = "") -> PermitVerdict:
        return PermitVerdict(name, kind, "deny", category, detail, fields=kept)

    if not grant_flags(data):
        return deny("not_granted")
    if not grants(data):
        own = data.get("reason")
        return deny("denied", sanitise_reason(own) if isinstance(own, str) else "")
    named = data.get("symbol")
    if named is not None and named != symbol:
        return deny("symbol_mismatch")
    qty: Decimal | None = None
    if issuer.carries_qty:
        qty = permit_qty(data)
        if qty is None:
            return deny("invalid_qty")
    return PermitVerdict(name, kind, "allow", safe_qty=qty, fields=kept)


def governor_block_reason(raw: str | None) -> str:
    """The reason a governor block marker gives, sanitised (``unspecified`` if none).

    Never raises: the marker is read after the gate has consumed the permits,
    so an exception here would leave a decided plan without its result.
    """
    if not raw:
        return "unspecified"
    if is_oversized(raw):
        return "oversized_marker"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # ~1,000 nested brackets: RecursionError
        return sanitise_reason(raw)
    if isinstance(data, dict) and isinstance(data.get("reason"), str):
        return sanitise_reason(data["reason"])
    return "unspecified"


def kill_on(kind: str, value: str | None) -> bool:
    """Whether a kill switch key is on: a string holding ``1``, ``true`` or ``on`` (any case).

    ``kind`` is the key's Redis type: a missing key, or one of another type,
    is off, as ``kill_switch.lua``'s ``kill_on`` (the rule the gate and the
    lease apply on the server) has it. The one Python statement of the rule,
    for the commands that report the switch (``permits``, ``check``).
    """
    return kind == "string" and value is not None and value.lower() in ("1", "true", "on")
