"""The signing policy around the gate: which issuers must sign, and what a bad signature does.

The pure rules live in ``signing.py``; this is the thin shell that loads the
keys once at start (a missing or unusable key file stops the start, exit 2),
checks the permits a gate decision consumed, counts every result in
``apply_permit_signatures_total`` and logs each failure. In ``warn`` a bad
signature is only logged and counted; in ``require`` it blocks the plan with
``bad_signature:<issuer>``. The permits were already consumed by then, so a
forged permit blocks its own plan and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from apply_layer import metrics
from apply_layer.core.errors import ConfigError, KeyFileError, SendRefused
from apply_layer.core.keys import ISSUERS
from apply_layer.core.plans import Step
from apply_layer.core.signing import KeyRing, Mode, verify_permit
from apply_layer.daemon.signing_keys import keys_path, read_keys
from apply_layer.executors.base import OrderLog
from apply_layer.logs import get_logger
from apply_layer.settings import Settings
from apply_layer.store.gate import GateResult

log = get_logger()


@dataclass(frozen=True)
class SignaturePolicy:
    """The issuers whose signatures are checked (mode warn or require) and their keys."""

    modes: Mapping[str, Mode] = field(default_factory=dict)
    keys: KeyRing = field(default_factory=KeyRing)

    @classmethod
    def from_settings(cls, settings: Settings) -> SignaturePolicy:
        """Load the keys the settings call for; :class:`ConfigError` if they cannot be used."""
        active = {name: mode for name, mode in settings.signing_modes.items() if mode != "off"}
        if not active:
            return cls()
        path = keys_path(settings.permit_keys_file)
        if path is None:
            raise ConfigError(
                f"APPLY_PERMIT_SIGNING={settings.permit_signing} needs the issuers' keys: "
                "pass the credential permit-keys (LoadCredential=) or set APPLY_PERMIT_KEYS_FILE"
            )
        try:
            keys = read_keys(path)
        except KeyFileError as exc:
            raise ConfigError(f"permit keys: {exc}") from None
        for name in active:
            if not keys.kids(name):
                raise ConfigError(f"permit keys: {path} has no key for {name}")
        return cls(active, keys)

    def describe(self) -> str:
        """One line for the start log and ``check``: modes and key ids, never a secret."""
        if not self.modes:
            return "off"
        return ", ".join(
            f"{name}={mode} (keys {', '.join(self.keys.kids(name))})"
            for name, mode in self.modes.items()
        )

    def check(self, decision: GateResult, close: Step) -> str:
        """The block reason for an allowed decision (``bad_signature:<issuer>``), or "".

        ``close`` is the plan's close step, as it would be executed: the
        signatures must bind it (its name and the share it closes), so genuine
        permits cannot authorise another entry's close under the same plan id.
        """
        assert close.pct is not None  # a close step always has its share
        for name, mode in self.modes.items():
            verdict = decision.permits.get(name)
            if verdict is None:
                continue
            result = verify_permit(
                ISSUERS[name],
                decision.plan_id,
                decision.symbol,
                verdict.fields,
                self.keys,
                decision.decided_at_ms,
                step=close.name,
                pct=close.pct,
            )
            metrics.PERMIT_SIGNATURES.labels(name, result.reason).inc()
            if result.ok:
                continue
            fields = {
                "plan_id": decision.plan_id,
                "issuer": name,
                "reason": result.reason,
                "kid": result.kid,
                "mode": mode,
            }
            if mode == "warn":
                log.warning("permit_signature_invalid", **fields)
                continue
            log.warning("permit_signature_rejected", **fields)
            return f"bad_signature:{name}"
        return ""


class LookupOnly:
    """An order log through which an order may be found, never sent.

    For a plan resumed in ``submitting`` whose permits fail their signatures
    (``require``): an earlier run may have sent its order, so the executor
    still looks it up and reports what it finds (the exchange's truth, never a
    guess), but a send is refused at its record, which every executor makes
    before a request leaves: :class:`SendRefused`, and nothing leaves.
    """

    def __init__(self, inner: OrderLog, reason: str) -> None:
        self._inner = inner
        self.reason = reason

    async def attempts(self) -> list[int]:
        return await self._inner.attempts()

    def unrecorded_until_ms(self) -> int:
        return self._inner.unrecorded_until_ms()

    async def record_attempt(
        self, sent_at_ms: int, *, quantity: Decimal, side: str, position_mark: str | None = None
    ) -> None:
        raise SendRefused(self.reason)
