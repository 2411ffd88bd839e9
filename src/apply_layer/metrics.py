"""Prometheus metrics (served by ``daemon/metrics_http.py`` on ``APPLY_METRICS_PORT``).

Labels are low-cardinality on purpose: a reason is its class
(``p33_permit_denied``, not the permit's free text), never a plan id; a
symbol label only ever carries an allowlisted symbol (the gate is reached by
no other). The alert rules (deploy/prometheus/) and the dashboard
(deploy/grafana/) name only the metrics defined here, and a test holds them
to it.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from apply_layer.core.keys import ISSUERS
from apply_layer.core.sizing import REFUSALS

PLANS = Counter(
    "apply_plans_total", "Plans by final outcome and reason class", ["status", "reason"]
)
DUPLICATES = Counter("apply_duplicates_total", "Republished plans acknowledged without a result")
PERMIT_WAIT = Histogram(
    "apply_permit_wait_seconds",
    "Time from the start of the permit wait to the gate's decision",
    ["decision"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.2, 1.5, 2.5, 5.0),
)
PERMIT_DEADLINE = Gauge(
    "apply_permit_wait_deadline_seconds", "The permit wait's deadline (APPLY_PERMIT_WAIT_MS)"
)
GATE_DECISIONS = Counter(
    "apply_gate_decisions_total",
    "The gate's decisions by symbol, status (ALLOW, DENY, GOV_BLOCK, KILL, TIMEOUT, MISMATCH) "
    "and reason class (missing_p33, p33_permit_denied, ...)",
    ["symbol", "status", "reason"],
)
ORDERS = Counter("apply_orders_total", "Order steps by status", ["status"])
REDIS_ERRORS = Counter("apply_redis_errors_total", "Redis commands that failed")
IN_FLIGHT = Gauge("apply_plans_in_flight", "Plans being processed now")
LAST_SUCCESS = Gauge(
    "apply_last_success_timestamp_seconds", "Time of the last executed order", ["symbol"]
)
REDIS_UP = Gauge("apply_redis_up", "1 while Redis answers, 0 during an outage")
PENDING = Gauge(
    "apply_pending_entries",
    "Plan entries read by the consumer group and not yet acknowledged (all consumers)",
)
PENDING_OLDEST = Gauge(
    "apply_pending_oldest_age_seconds",
    "Age of the oldest unacknowledged plan entry (from its stream id; 0 when none)",
)
STREAM_LAG = Gauge(
    "apply_stream_lag_entries",
    "Plan entries not yet delivered to the consumer group (XINFO GROUPS lag; "
    "NaN while Redis cannot be read)",
)
KILL_SWITCH_ON = Gauge(
    "apply_kill_switch_on",
    "1 while a kill switch is on (a key or APPLY_KILL_SWITCH), read every APPLY_POLL_SEC; "
    "NaN while Redis cannot be read",
)
KEYSPACE_ACTIVE = Gauge(
    "apply_keyspace_notifications_active",
    "1 while keyspace notifications wake the permit wait, 0 while it only polls",
    ["configured"],
)
GATE_LANE_ACTIVE = Gauge(
    "apply_gate_lane_active",
    "1 while the gate's lane answers permit events from the socket's callback "
    "(store/gate_lane.py), 0 while the watcher wakes the gate",
)
REDIS_IDENTITY_CHANGES = Counter(
    "apply_redis_identity_changes_total",
    "Times a new connection reached a different Redis (restart, restore or failover)",
)
ORDERS_ADOPTED = Counter(
    "apply_orders_adopted_total",
    "Orders found at the exchange before a first send (an earlier run's, lost from the journal)",
)
SCRIPT_CALLS = Counter(
    "apply_redis_script_calls_total", "Hot-path script calls (claim, gate, lease, attempt, publish)"
)
SCRIPT_BATCHES = Counter(
    "apply_redis_script_batches_total", "Round trips those calls shared (one batch each)"
)
EXCHANGE_UNKNOWN_FATE = Counter(
    "apply_exchange_unknown_fate_total",
    "Order sends whose fate was unknown, by how the lookups ended: found (it exists), "
    "absent (provably never executed), unresolved (still unknown: a person must look)",
    ["resolution"],
)
EXCHANGE_LOOKUP_ERRORS = Counter(
    "apply_exchange_lookup_errors_total", "Order lookups that got no usable answer"
)
EXCHANGE_RATE_LIMITED = Counter(
    "apply_exchange_rate_limited_total",
    "Exchange answers 429 (rate limit) and 418 (IP ban)",
    ["http_status"],
)
# Unlabelled on purpose: a labelled series appears only at its first
# increment, which ``increase()`` cannot see, and an alert must see the first
# rejection. The code is in the log line (``binance_order_outcome``).
EXCHANGE_REJECTIONS = Counter(
    "apply_exchange_rejections_total",
    "Orders the exchange refused (the Binance code is in the binance_order_outcome log line)",
)
EXCHANGE_BLOCKED_UNTIL = Gauge(
    "apply_exchange_blocked_until_timestamp_seconds",
    "End of the exchange's last 429 back-off or 418 IP ban (epoch s): no request is sent "
    "before it (0: none yet)",
    ["http_status"],
)
EXCHANGE_CLOCK_OFFSET = Gauge(
    "apply_exchange_clock_offset_seconds",
    "Exchange server time minus local time at the last time sync (compensated in requests)",
)
# The same reason: every series an alert counts from exists at 0 from the start.
for _resolution in ("found", "absent", "unresolved"):
    EXCHANGE_UNKNOWN_FATE.labels(_resolution)
for _status in ("429", "418"):
    EXCHANGE_RATE_LIMITED.labels(_status)
    EXCHANGE_BLOCKED_UNTIL.labels(_status)
PLANS.labels("SKIPPED", "stale_plan")
PLANS.labels("FAILED", "exchange_unavailable")
for _refusal in REFUSALS:
    PLANS.labels("REJECTED", _refusal)


_M = TypeVar("_M", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[object, tuple[str, ...]], object] = {}


def child(metric: _M, *labels: str) -> _M:
    """``metric.labels(*labels)``, looked up once per label set (issue 22).

    The hot path counts every plan in four or five labelled series; each
    ``labels()`` call converts and validates its values and takes the metric's
    lock to find a child that, once made, never changes. Keeping the children
    here returns the very objects ``labels()`` returns, so the series and their
    values are the same. The cache grows with the label sets, which are few on
    purpose (module docstring: classes and allowlisted symbols, never plan ids).
    The values are strings or StrEnum members, which are their text.
    """
    key = (metric, labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found  # type: ignore[return-value]  # stored by this function, for this metric


PERMIT_SIGNATURES = Counter(
    "apply_permit_signatures_total",
    "Signatures of consumed permits checked (APPLY_PERMIT_SIGNING warn/require), by result",
    ["issuer", "result"],  # result: ok, missing, malformed, unknown_kid, mismatch, expired
)

for _issuer in ISSUERS:
    for _result in ("missing", "malformed", "unknown_kid", "mismatch", "expired"):
        PERMIT_SIGNATURES.labels(_issuer, _result)  # the alert must see the first failure

PLAN_CONFLICTS = Counter(
    "apply_plan_conflicts_total",
    "Plan entries whose plan id another entry already drives with other content (symbol, "
    "decision, close step or share): a forged or broken plan writer; never executed",
)
