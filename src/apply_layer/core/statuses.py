"""Every status a plan, a step, a gate decision or the journal can take, in one place.

Each is a :class:`enum.StrEnum`: a member *is* its wire text (``str(member)``
and f-strings give the value, Redis, JSON, metrics labels and log fields get
the same bytes as the bare strings they replace), so nothing on the wire
changes. What the readers of the result stream see is fixed by
docs/CONTRACT.md; the journal states by ``journal.py``'s state diagram.
"""

from __future__ import annotations

from enum import StrEnum


class OutcomeStatus(StrEnum):
    """A plan's final status: the result's ``status`` field (docs/CONTRACT.md 2)."""

    #: The close was placed and the exchange reports it filled (or it was adopted).
    EXECUTED = "EXECUTED"
    #: The gate refused: a permit denied, missing, timed out, the governor or the
    #: kill switch, an unsigned permit where signing is required, a stale authorisation.
    BLOCKED = "BLOCKED"
    #: Nothing to do: not an EXECUTE plan, symbol not allowed, stale plan, dry run.
    SKIPPED = "SKIPPED"
    #: The plan (or the exchange) refused the order: invalid plan, key of the wrong
    #: type, a size below the minimum, an exchange rejection.
    REJECTED = "REJECTED"
    #: Something failed on our side: executor error, order not final, internal error.
    FAILED = "FAILED"


class ResultDecision(StrEnum):
    """The result's ``decision``: EXECUTE only when an order was placed, so that a
    reader counting by decision never counts a block as a trade."""

    #: An order was placed (status EXECUTED).
    EXECUTE = "EXECUTE"
    #: The gate refused it (status BLOCKED).
    BLOCKED = "BLOCKED"
    #: Nothing was done (status SKIPPED).
    SKIP = "SKIP"
    #: Rejected or failed (status REJECTED or FAILED).
    ERROR = "ERROR"


class JournalState(StrEnum):
    """Where a plan stands in ``quantum:apply:journal:{plan_id}`` (its ``state`` field)."""

    #: Claimed by a stream entry; not yet at the gate.
    RECEIVED = "received"
    #: The gate consumed every permit (written by the gate's script).
    PERMITTED = "permitted"
    #: A send was recorded before it left: an order may be out; its fate is looked up.
    SUBMITTING = "submitting"
    #: Final: the order filled; the result is out.
    EXECUTED = "executed"
    #: Final: the plan or the exchange refused it; the result is out.
    REJECTED = "rejected"
    #: Final: it failed on our side; the result is out.
    FAILED = "failed"
    #: The gate refused (written by the gate's script); final once its result is out.
    BLOCKED = "blocked"
    #: Final: nothing to do; the result is out.
    SKIPPED = "skipped"


#: The states written with the one result entry, in the publish script.
FINAL_STATES = frozenset(
    {
        JournalState.EXECUTED,
        JournalState.REJECTED,
        JournalState.FAILED,
        JournalState.BLOCKED,
        JournalState.SKIPPED,
    }
)


class StepStatus(StrEnum):
    """One plan step's status in the result's ``steps_results``."""

    #: The exchange filled the order (or an earlier run's order was found filled).
    EXECUTED = "EXECUTED"
    #: Dry-run mode: the order was sized but not sent (the plan ends SKIPPED dry_run).
    DRY_RUN = "DRY_RUN"
    #: Refused before or at the exchange: below the minimum, expired, rejected.
    REJECTED = "REJECTED"
    #: Not placed or not final, for a reason on our side.
    FAILED = "FAILED"
    #: A step this daemon does not place (only the plan's close step is).
    UNSUPPORTED = "UNSUPPORTED"


class GateStatus(StrEnum):
    """The gate script's decision on one plan (``gate.GateResult.status``)."""

    #: Every permit allowed and was consumed: the plan may execute.
    ALLOW = "ALLOW"
    #: A permit said no.
    DENY = "DENY"
    #: The governor's block marker is set for the symbol.
    GOV_BLOCK = "GOV_BLOCK"
    #: The kill switch is on.
    KILL = "KILL"
    #: A permit did not arrive in time.
    TIMEOUT = "TIMEOUT"
    #: The script and Python read a consumed permit differently: fail closed.
    MISMATCH = "MISMATCH"
    #: Not decided yet: a permit is missing and the deadline has not passed
    #: (the script's reply before the deadline; never a ``GateResult``'s status).
    WAIT = "WAIT"


class HandledKind(StrEnum):
    """How the processor ended one stream entry (the service's counters)."""

    #: This call published the entry's one result.
    PUBLISHED = "published"
    #: Another entry drives the same plan id; one ``duplicate`` log line said so.
    DUPLICATE = "duplicate"
    #: The entry's result was already out; at most the acknowledgement was missing.
    DONE = "done"


#: Result status -> journal state (the lower-cased status).
STATES: dict[OutcomeStatus, JournalState] = {
    OutcomeStatus.EXECUTED: JournalState.EXECUTED,
    OutcomeStatus.BLOCKED: JournalState.BLOCKED,
    OutcomeStatus.SKIPPED: JournalState.SKIPPED,
    OutcomeStatus.REJECTED: JournalState.REJECTED,
    OutcomeStatus.FAILED: JournalState.FAILED,
}

#: Result status -> the result's ``decision``.
RESULT_DECISIONS: dict[OutcomeStatus, ResultDecision] = {
    OutcomeStatus.EXECUTED: ResultDecision.EXECUTE,
    OutcomeStatus.BLOCKED: ResultDecision.BLOCKED,
    OutcomeStatus.SKIPPED: ResultDecision.SKIP,
    OutcomeStatus.REJECTED: ResultDecision.ERROR,
    OutcomeStatus.FAILED: ResultDecision.ERROR,
}
