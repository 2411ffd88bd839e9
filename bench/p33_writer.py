"""The governor and P3.3 writing permits from a process of their own, as in the deployment.

    python -m bench.p33_writer REDIS_URL      # driven through stdin by bench.gates

Scenario 1's in-process writer is a task in the gate's own process; the
deployment's P3.3 is another process, with a synchronous redis-py client,
and its ``_grant_permit`` (quantum_trader,
``microservices/position_state_brain/main.py``) reads the symbol's P3.4
hold (``GET quantum:reconcile:hold:<symbol>``) immediately before the
``SETEX`` of an allowing permit. This program does exactly that, so the
benchmark can time a reaction with the writer the gate meets in the
deployment: the gate's process sits idle until the permit's keyspace event,
and Redis has just answered the writer's read.

Each stdin line is ``plan_id<TAB>governor_at<TAB>p33_at``: absolute
``time.perf_counter()`` readings (``CLOCK_MONOTONIC`` on Linux, so they
compare across processes) at which to write the governor's permit and
P3.3's allowing one. For each plan it prints ``plan_id<TAB>written``:
``written`` is read just before the ``SETEX`` is sent, as scenario 1 times
its own writer. An empty line or ``end`` stops it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

import redis

from apply_layer.core.keys import ISSUERS
from bench.gates import governor_permit, p33_permit
from tests.harness import SYM as SYMBOL

PERMIT_TTL_SEC = 60  # P3.3's PERMIT_TTL
HOLD_KEY = f"quantum:reconcile:hold:{SYMBOL}"  # P3.4's hold, read by _grant_permit first


def clock_is_shared() -> bool:
    """Whether ``perf_counter`` readings of two processes compare (Linux: CLOCK_MONOTONIC)."""
    return "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation


def _sleep_until(at: float) -> None:
    delay = at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def serve(client: redis.Redis, lines: Iterable[str]) -> None:
    """Write each plan's permits at the times its line gives; print when P3.3's was sent."""
    governor_text, p33_text = governor_permit(), p33_permit(allow=True)
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if fields == [""] or fields == ["end"]:
            return
        plan_id, governor_at, p33_at = fields[0], float(fields[1]), float(fields[2])
        _sleep_until(governor_at)
        client.set(ISSUERS["governor"].key(plan_id), governor_text, ex=PERMIT_TTL_SEC)
        _sleep_until(p33_at)
        client.get(HOLD_KEY)  # P3.3 checks P3.4's hold first
        written = time.perf_counter()
        client.setex(ISSUERS["p33"].key(plan_id), PERMIT_TTL_SEC, p33_text)
        print(f"{plan_id}\t{written!r}", flush=True)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.p33_writer REDIS_URL")
    if not clock_is_shared():
        sys.exit("perf_counter is not CLOCK_MONOTONIC here: times would not compare")
    client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
    client.ping()
    print("ready", flush=True)
    serve(client, sys.stdin)


if __name__ == "__main__":
    main()
