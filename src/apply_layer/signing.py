"""Signed permits (pure): canonical text, HMAC-SHA256 signatures, key files, modes.

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

A key file (a systemd credential, never the environment) has one key per
line, ``<issuer> <key id> <secret as hex, at least 32 bytes>``; ``#`` starts
a comment. An issuer may have several keys: during a rotation both the old
and the new key id verify.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from apply_layer.errors import KeyFileError
from apply_layer.keys import ISSUERS, Issuer
from apply_layer.permits import _is_true, parse_qty
from apply_layer.plans import CLOSE_STEPS, STEP_NAME_RE

Mode = Literal["off", "warn", "require"]
MODES: tuple[Mode, ...] = ("off", "warn", "require")
VERSION = "quantum-permit-v2"
SIGNATURE_FIELDS = ("sig", "kid", "sig_exp_ms")
CREDENTIAL_NAME = "permit-keys"  # LoadCredential=permit-keys:/etc/quantum/permit-keys
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 1 << 20  # a key file is a few lines; never read a huge one whole
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


def _looks_like_secret(word: str) -> bool:
    """A word that could be a key (hex, as long as the shortest key): never echoed."""
    return len(word) >= 2 * MIN_KEY_BYTES and all(c in string.hexdigits for c in word)


def parse_keys(text: str) -> KeyRing:
    """Read a key file's text; :class:`KeyFileError` names the line, never its contents.

    No word of the file is ever quoted in an error: with the columns out of
    order, any of them may be the secret.
    """
    keys: dict[str, dict[str, bytes]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 3:
            raise KeyFileError(f"line {number}: expected '<issuer> <key id> <hex secret>'")
        issuer, kid, secret = words
        if issuer not in ISSUERS:
            raise KeyFileError(
                f"line {number}: the first column is not an issuer (known: "
                f"{', '.join(ISSUERS)}); the columns are '<issuer> <key id> <hex secret>'"
            )
        if not KEY_ID_RE.fullmatch(kid) or _looks_like_secret(kid):
            raise KeyFileError(
                f"line {number}: the second column must be a key id, 1-64 of "
                "A-Z a-z 0-9 _ . - and not a hex secret; the columns are "
                "'<issuer> <key id> <hex secret>'"
            )
        try:
            key = bytes.fromhex(secret)
        except ValueError:
            raise KeyFileError(f"line {number}: the secret (third column) is not hex") from None
        if len(key) < MIN_KEY_BYTES:
            raise KeyFileError(
                f"line {number}: the secret is {len(key)} bytes; at least {MIN_KEY_BYTES} "
                "(openssl rand -hex 32)"
            )
        if kid in keys.setdefault(issuer, {}):
            raise KeyFileError(f"line {number}: key id {kid!r} is listed twice for {issuer}")
        keys[issuer][kid] = key
    return KeyRing(keys)


def file_problem(path: Path, st: os.stat_result) -> str | None:
    """Why a key file must not be trusted, or None.

    Whoever can write it can add a key and sign any permit; whoever can read
    it can do the same. So: a regular file, owned by this user or root, that
    neither the group nor others may write, and others may not read.
    """
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return (
            f"{path} is owned by uid {st.st_uid}, neither this user ({os.geteuid()}) nor root "
            f"(chown root {path})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "world" if st.st_mode & stat.S_IWOTH else "group"
        return f"{path} is {who}-writable (chmod 600 {path})"
    if st.st_mode & stat.S_IROTH:
        return f"{path} is world-readable (chmod 600 {path})"
    return None


def read_keys(path: Path) -> KeyRing:
    """Read and parse a key file; refuses one that is not safely owned and private.

    The file's status is taken from the open file, so what is checked is what is read.
    """
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            problem = file_problem(path, st)
            if problem:
                raise KeyFileError(problem)
            text = handle.read(MAX_KEY_FILE_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise KeyFileError(f"{path}: {reason}") from None
    if len(text) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    try:
        return parse_keys(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def keys_path(configured: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """``APPLY_PERMIT_KEYS_FILE``, else systemd's credential, else None."""
    if configured is not None:
        return configured
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / CREDENTIAL_NAME
        if candidate.exists():
            return candidate
    return None


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


def grants(fields: Mapping[str, Any]) -> bool:
    """The permit's own grant: ``granted``/``allow`` present and every one true."""
    flags = [fields[k] for k in ("granted", "allow") if k in fields]
    return bool(flags) and all(_is_true(flag) for flag in flags)


def permit_qty(fields: Mapping[str, Any]) -> Decimal | None:
    """The quantity the gate reads (``safe_qty``, else ``safe_close_qty``)."""
    candidate = fields.get("safe_qty")
    if candidate is None:
        candidate = fields.get("safe_close_qty")
    if isinstance(candidate, float):  # an issuer's float: JSON writes it as repr()
        candidate = Decimal(repr(candidate))
    return parse_qty(candidate)


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
