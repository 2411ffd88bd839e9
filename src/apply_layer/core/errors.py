"""Every exception class of the apply layer, and a map of them.

Sorted by what matters for money: could an order be out? Every class lives
here; the tree, with each class's bases outside this tree in brackets::

    ApplyLayerError              the root of every class below
    │
    │ An order may be out: never guess, find its fate
    ├── OrderMayBeOut (StepInterrupted)
    │                            a guarded publish found the plan ``submitting``
    └── StatusUnknown (BinanceError)
                                 a request may or may not have executed: look it up

    Nothing was sent: safe to end the plan, or to try again later
    ├── StepInterrupted          a plan's step stops here, on purpose: the
    │   │                        control-flow exceptions, caught by processing
    │   ├── RetryLater           leave the entry pending; recovery resumes it
    │   │   ├── LeaseBusy        another holder kept the symbol lease too long
    │   │   └── SendRecordRefused  the attempt script refused a send record
    │   │       ├── AttemptsChanged  another attempt was recorded for the plan
    │   │       │                    since the caller looked
    │   │       └── PositionMoved    another order was recorded on the symbol
    │   │                            since the position read
    │   ├── NotReplicated        the send record missed its replicas: not sent
    │   ├── SendRefused          a resumed plan whose permits fail their signatures:
    │   │                        its order may be looked up, never sent
    │   ├── AlreadyFinal         the plan's result is out (another instance)
    │   ├── KillSwitchOn         no new order may be sent
    │   └── LeaseKeyWrongType    the lease key holds another Redis type
    ├── InvalidPlan (ValueError) an entry that is not a plan we can act on
    └── BinanceError             anything that went wrong talking to Binance
        ├── ExchangeRejected     a definite refusal: the request did not execute
        │   ├── OrderNotFound    -2013
        │   └── TimestampRejected -1021
        ├── RateLimited          429 / 418: resending later is safe
        │   └── BanActive        refused here, not sent: the back-off has not ended
        ├── NotProcessed         definitely not processed: safe to resend
        ├── ExchangeInfoInvalid  exchangeInfo is not a list of symbols
        └── HedgeMode            hedge-mode account: refused

    The process cannot run as configured (nothing is sent at all)
    ├── ConfigError              exits 2
    │   ├── ExecutorUnavailable  APPLY_MODE names no executor
    │   └── BinanceConfigError   e.g. no API key
    ├── SettingsError            a setting is missing or invalid
    ├── KeyFileError (ValueError) a key file that cannot be used
    ├── ReplicaRefused (redis ConnectionError)
    │                            connected to a replica, not the primary
    ├── FunctionLibraryMissing (redis RedisError)
    │                            this version's Redis function library is not
    │                            loaded and the user may not load it (store/functions.py):
    │                            exits 2 at start; later, plans stay pending
    └── RedisUnavailable (RuntimeError)
                                 no redis-server to start (tests, demo)

    A latency path off: the gate calls by its own path (nothing is lost)
    ├── GateLaneDown             the gate's lane lost a connection, a reply or
    │                            its step (store/gate_lane.py): it reconnects
    └── GateLaneUnsupported      this redis-py hands no socket over: it stays off

    Operators' commands
    ├── CommandError             a one-line failure the user can fix (exit 1)
    └── ProbeRefused             the ACL user may not even queue a transaction

Redis errors themselves (``redis.exceptions.RedisError``, ``OSError``) are
never caught to end a plan: the entry stays pending and is resumed.

This module imports nothing but the standard library and
``redis.exceptions`` (for the two bases above that callers rely on: a
replica refused is a connection error to the Redis client's retry logic, a
missing library a Redis error that leaves plans pending).
"""

from __future__ import annotations

from datetime import UTC, datetime

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError


class ApplyLayerError(Exception):
    """The root of every exception class of the apply layer (the module docstring's tree)."""


class StepInterrupted(ApplyLayerError):
    """A plan's step stops on purpose (the control-flow exceptions): nothing was sent
    by it, or (:class:`OrderMayBeOut`) its fate is for recovery to find."""


class CommandError(ApplyLayerError):
    """A clear, one-line failure of a CLI command that the user can fix (exit status 1)."""


class RetryLater(StepInterrupted):
    """Not now: leave the stream entry pending; recovery picks it up again later."""


class SendRecordRefused(RetryLater):
    """The attempt script refused a send record: what the caller read is overtaken.
    Nothing was written or sent; read again under the lease."""


class AttemptsChanged(SendRecordRefused):
    """The attempt script refused a record: the plan's attempts are no longer the ones
    the caller last saw (another instance recorded one). Nothing was written or sent."""


class PositionMoved(SendRecordRefused):
    """The attempt script refused a record: another order was recorded on the symbol
    since the position the caller sized against was read. Nothing was written or sent."""


class ConfigError(ApplyLayerError):
    """The service cannot run as configured; like a bad setting, it exits 2."""


class ExecutorUnavailable(ConfigError):
    """The configured mode cannot run."""


class SettingsError(ApplyLayerError):
    """A setting is missing or invalid; the message is one line naming it."""


class KeyFileError(ApplyLayerError, ValueError):
    """A key file that cannot be used; the message never contains a secret."""


class ProbeRefused(ApplyLayerError):
    """The user may not even queue a transaction: nothing can be probed."""


class InvalidPlan(ApplyLayerError, ValueError):
    """A stream entry that is not a plan we can act on; ``detail`` is a short code."""

    def __init__(self, detail: str, plan_id: str = "", symbol: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.plan_id = plan_id
        self.symbol = symbol


# ---- the symbol lease (lease.py) ---------------------------------------------------


class LeaseBusy(RetryLater):
    """Another holder kept the symbol's lease for longer than we would wait."""


class AlreadyFinal(StepInterrupted):
    """The plan's result is out (another instance finished it while we waited)."""


class KillSwitchOn(StepInterrupted):
    """The kill switch is on: no new order may be sent."""


class LeaseKeyWrongType(StepInterrupted):
    """The symbol's lease key holds another Redis type: no lease can be taken on it."""


# ---- the journal (journal.py) ------------------------------------------------------


class OrderMayBeOut(StepInterrupted):
    """A guarded publish found the plan ``submitting``: its fate is for recovery to find."""


class SendRefused(StepInterrupted):
    """The order log refused to record a send, so nothing was sent: the plan was
    resumed in ``submitting`` and its permits fail their signatures (require).
    ``reason`` is the block reason (``bad_signature:<issuer>``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotReplicated(StepInterrupted):
    """The send record did not reach the replicas ``APPLY_REDIS_WAIT_REPLICAS`` asks for
    in time: nothing may be sent (the executor ends the step FAILED)."""


# ---- the Redis function library (store/functions.py, batching.py) ------------------


class FunctionLibraryMissing(ApplyLayerError, RedisError):
    """Redis lacks the function library of this version and the user may not load it.

    A Redis error, not a ``ResponseError``: like an outage, it leaves every plan
    pending (nothing is sent) until an admin loads the library.
    """


class ReplicaRefused(ApplyLayerError, RedisConnectionError):
    """The connection reached a replica; the daemon only talks to a primary (store/identity.py)."""


# ---- embedded Redis (embedded_redis.py) --------------------------------------------


class RedisUnavailable(ApplyLayerError, RuntimeError):
    """No redis-server binary could be found or started."""


# ---- Binance (executors/binance) ---------------------------------------------------


class BinanceError(ApplyLayerError):
    """Anything that went wrong talking to Binance; messages carry no secrets."""


class ExchangeRejected(BinanceError):
    """A definite refusal: the request did not execute."""

    def __init__(self, code: int | None, msg: str, http_status: int) -> None:
        self.code, self.msg, self.http_status = code, msg, http_status
        super().__init__(f"HTTP {http_status} code {code}: {msg}")

    @property
    def tag(self) -> str:
        """What ``exchange_rejected:<tag>`` shows: the code, else the HTTP status."""
        return str(self.code) if self.code is not None else f"http_{self.http_status}"


class OrderNotFound(ExchangeRejected):
    """``-2013`` Order does not exist."""


class TimestampRejected(ExchangeRejected):
    """``-1021``: timestamp outside recvWindow (or 1000 ms ahead); not executed."""


class RateLimited(BinanceError):
    """429 (rate limit) or 418 (IP banned): rejected, resending later is safe."""

    def __init__(self, http_status: int, retry_after_sec: float | None, msg: str) -> None:
        self.http_status, self.retry_after_sec = http_status, retry_after_sec
        super().__init__(f"HTTP {http_status} (retry after {retry_after_sec} s): {msg}")


class BanActive(RateLimited):
    """Refused here, not sent: the exchange's back-off or ban has not ended yet."""

    def __init__(self, http_status: int, remaining_sec: float, until_epoch: float) -> None:
        until = datetime.fromtimestamp(until_epoch, UTC).isoformat(timespec="seconds")
        super().__init__(
            http_status, remaining_sec, f"not sent: paused until {until} (HTTP {http_status})"
        )


class ExchangeInfoInvalid(BinanceError):
    """``exchangeInfo`` answered with something that is not a list of symbols."""


class NotProcessed(BinanceError):
    """Definitely not processed (never sent, or Binance says it failed): safe to resend."""


class StatusUnknown(BinanceError):
    """The request may or may not have executed: look it up, never resend blindly."""


class HedgeMode(BinanceError):
    """The account holds positions by side (``positionSide`` other than ``BOTH``)."""


class BinanceConfigError(ConfigError):
    """The executor cannot start as configured (e.g. no API key in testnet mode)."""


class GateLaneDown(ApplyLayerError):
    """The gate's lane cannot be used now (why is the message); it reconnects."""


class GateLaneUnsupported(ApplyLayerError):
    """This redis-py keeps no asyncio stream on its connections: the lane stays off."""
