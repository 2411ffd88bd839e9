"""Prometheus metrics (served on ``APPLY_METRICS_PORT``; 0 turns the endpoint off).

Labels are low-cardinality on purpose: a reason is its class
(``p33_permit_denied``, not the permit's free text), never a plan id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
ORDERS = Counter("apply_orders_total", "Order steps by status", ["status"])
REDIS_ERRORS = Counter("apply_redis_errors_total", "Redis commands that failed")
IN_FLIGHT = Gauge("apply_plans_in_flight", "Plans being processed now")
LAST_SUCCESS = Gauge(
    "apply_last_success_timestamp_seconds", "Time of the last executed order", ["symbol"]
)
REDIS_UP = Gauge("apply_redis_up", "1 while Redis answers, 0 during an outage")
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


def serve(port: int, addr: str = "0.0.0.0") -> bool:  # noqa: S104 - scraped from outside
    """Start the endpoint unless ``port`` is 0; returns whether it was started."""
    if port == 0:
        return False
    start_http_server(port, addr=addr)
    return True
