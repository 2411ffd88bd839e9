"""The exceptions that cross module boundaries, and a map of every one.

Sorted by what matters for money: could an order be out? The tree, with
where each class lives (``errors`` unless named)::

    An order may be out: never guess, find its fate
    ├── OrderMayBeOut            a guarded publish found the plan ``submitting``
    └── executors.binance.model.StatusUnknown (BinanceError)
                                 a request may or may not have executed: look it up

    Nothing was sent: safe to end the plan, or to try again later
    ├── RetryLater               leave the entry pending; recovery resumes it
    │   ├── LeaseBusy            another holder kept the symbol lease too long
    │   ├── AttemptsChanged      a send record refused: another attempt was
    │   │                        recorded for the plan since the caller looked
    │   └── PositionMoved        a send record refused: another order was
    │                            recorded on the symbol since the position read
    ├── NotReplicated            the send record missed its replicas: not sent
    ├── SendRefused              a resumed plan whose permits fail their signatures:
    │                            its order may be looked up, never sent
    ├── AlreadyFinal             the plan's result is out (another instance)
    ├── KillSwitchOn             no new order may be sent
    ├── LeaseKeyWrongType        the lease key holds another Redis type
    ├── InvalidPlan (ValueError) an entry that is not a plan we can act on
    └── executors.binance.model.BinanceError
        ├── ExchangeRejected     a definite refusal: the request did not execute
        │   ├── OrderNotFound    -2013
        │   └── TimestampRejected -1021
        ├── RateLimited          429 / 418: resending later is safe
        ├── NotProcessed         definitely not processed: safe to resend
        ├── ExchangeInfoInvalid  exchangeInfo is not a list of symbols
        └── executors.binance.market.HedgeMode   hedge-mode account: refused

    The process cannot run as configured (nothing is sent at all)
    ├── ConfigError              exits 2
    │   ├── ExecutorUnavailable  APPLY_MODE names no executor
    │   └── executors.binance.executor.BinanceConfigError   e.g. no API key
    ├── SettingsError            a setting is missing or invalid
    ├── KeyFileError (ValueError) a key file that cannot be used
    ├── redis_identity.ReplicaRefused (redis ConnectionError)
    │                            connected to a replica, not the primary
    ├── FunctionLibraryMissing (redis RedisError)
    │                            this version's Redis function library is not
    │                            loaded and the user may not load it (functions.py):
    │                            exits 2 at start; later, plans stay pending
    └── embedded_redis.RedisUnavailable (RuntimeError)
                                 no redis-server to start (tests, demo)

    Operators' commands
    ├── CommandError             a one-line failure the user can fix (exit 1)
    └── ProbeRefused             the ACL user may not even queue a transaction

Redis errors themselves (``redis.exceptions.RedisError``, ``OSError``) are
never caught to end a plan: the entry stays pending and is resumed.
"""

from __future__ import annotations

from redis.exceptions import RedisError


class CommandError(Exception):
    """A clear, one-line failure of a CLI command that the user can fix (exit status 1)."""


class RetryLater(Exception):
    """Not now: leave the stream entry pending; recovery picks it up again later."""


class AttemptsChanged(RetryLater):
    """The attempt script refused a record: the plan's attempts are no longer the ones
    the caller last saw (another instance recorded one). Nothing was written or sent."""


class PositionMoved(RetryLater):
    """The attempt script refused a record: another order was recorded on the symbol
    since the position the caller sized against was read. Nothing was written or sent."""


class ConfigError(Exception):
    """The service cannot run as configured; like a bad setting, it exits 2."""


class ExecutorUnavailable(ConfigError):
    """The configured mode cannot run."""


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one line naming it."""


class KeyFileError(ValueError):
    """A key file that cannot be used; the message never contains a secret."""


class ProbeRefused(Exception):
    """The user may not even queue a transaction: nothing can be probed."""


class InvalidPlan(ValueError):
    """A stream entry that is not a plan we can act on; ``detail`` is a short code."""

    def __init__(self, detail: str, plan_id: str = "", symbol: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.plan_id = plan_id
        self.symbol = symbol


# ---- the symbol lease (lease.py) ---------------------------------------------------


class LeaseBusy(RetryLater):
    """Another holder kept the symbol's lease for longer than we would wait."""


class AlreadyFinal(Exception):
    """The plan's result is out (another instance finished it while we waited)."""


class KillSwitchOn(Exception):
    """The kill switch is on: no new order may be sent."""


class LeaseKeyWrongType(Exception):
    """The symbol's lease key holds another Redis type: no lease can be taken on it."""


# ---- the journal (journal.py) ------------------------------------------------------


class OrderMayBeOut(Exception):
    """A guarded publish found the plan ``submitting``: its fate is for recovery to find."""


class SendRefused(Exception):
    """The order log refused to record a send, so nothing was sent: the plan was
    resumed in ``submitting`` and its permits fail their signatures (require).
    ``reason`` is the block reason (``bad_signature:<issuer>``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotReplicated(Exception):
    """The send record did not reach the replicas ``APPLY_REDIS_WAIT_REPLICAS`` asks for
    in time: nothing may be sent (the executor ends the step FAILED)."""


# ---- the Redis function library (functions.py, batching.py) ------------------------


class FunctionLibraryMissing(RedisError):
    """Redis lacks the function library of this version and the user may not load it.

    A Redis error, not a ``ResponseError``: like an outage, it leaves every plan
    pending (nothing is sent) until an admin loads the library.
    """
