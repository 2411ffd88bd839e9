"""Drop-in conformance: the running system's own writers and readers, against the real daemon.

Each upstream shape below is what that service's code writes (docs/CONTRACT.md
names the service and the file); each result is checked against the schema
the system's readers apply (``check_result_schema``).

Tests by name: core/keys.py (every key and field on the wire).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from tests.harness import Daemon, check_result_schema, pending_count, results, wait_result

DaemonFactory = Callable[..., Daemon]
PLANNER_DEDUPE = "quantum:apply:dedupe:{plan_id}"  # the planner's key, never the daemon's


@pytest.fixture
def daemons(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[DaemonFactory]:
    made: list[Daemon] = []

    def make(name: str | None = None, **settings: Any) -> Daemon:
        daemon = Daemon(redis_server.url, tmp_path, name or f"d{len(made) + 1}", **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


# ---- the writers' shapes -------------------------------------------------------------


def _close_step(name: str, pct: float) -> str:
    return json.dumps([{"step": name, "type": "market_reduce_only", "side": "close", "pct": pct}])


async def planner_publish(redis: Redis, plan_id: str, *, action: str = "PARTIAL_75") -> None:
    """The exit-brain planner: its own dedupe key first (SETNX + EXPIRE), then XADD."""
    step = {"PARTIAL_75": ("CLOSE_PARTIAL_75", 75.0), "FULL_CLOSE_PROPOSED": ("CLOSE_FULL", 100.0)}
    name, pct = step[action]
    await redis.set(PLANNER_DEDUPE.format(plan_id=plan_id), int(time.time()), nx=True, ex=300)
    fields = {
        "plan_id": plan_id,
        "symbol": "BTCUSDT",
        "action": action,
        "kill_score": "0.71",
        "k_regime_flip": "0.2",
        "k_sigma_spike": "0.1",
        "k_ts_drop": "0.3",
        "k_age_penalty": "0.05",
        "new_sl_proposed": "",
        "R_net": "1.8",
        "decision": "EXECUTE",
        "reason_codes": "kill_score_high",
        "steps": _close_step(name, pct),
        "qty": "0.012",
        "side": "CLOSE",
        "source": "apply_layer",
        "price": "",
        "reduceOnly": "true",
        "timestamp": str(int(time.time())),
    }
    await redis.xadd(K.PLAN_STREAM, fields)  # type: ignore[arg-type]


async def governor_rotation_close(redis: Redis, plan_id: str, symbol: str = "ETHUSDT") -> None:
    """The governor's rotation close plan: no steps, ``qty`` "0", a float timestamp."""
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "action": "FULL_CLOSE_PROPOSED",
        "side": "CLOSE",
        "qty": "0",
        "reduceOnly": "true",
        "decision": "EXECUTE",
        "source": "governor",
        "kill_score": "0",
        "rotation_trigger": "true",
        "new_symbol": "BTCUSDT",
        "new_plan_id": "9f8e7d6c5b4a3f2e",
        "timestamp": str(time.time()),
    }
    await redis.xadd(K.PLAN_STREAM, fields)  # type: ignore[arg-type]


async def harvest_v2_publish(
    redis: Redis, plan_id: str, step: str, pct: float, action: str
) -> None:
    """harvest_v2's live payload: PARTIAL_NN steps with pct 25 for every stage."""
    fields = {
        "plan_id": plan_id,
        "symbol": "BTCUSDT",
        "side": "SELL",
        "action": action,
        "decision": "EXECUTE",
        "R_net": "2.1000",
        "reason_codes": "R_target_hit",
        "steps": _close_step(step, pct),
        "close_qty": "0.003",
        "qty": "0.012",
        "price": "",
        "reduceOnly": "true",
        "kill_score": "0.0",
        "source": "harvest_v2",
        "timestamp": str(int(time.time())),
    }
    await redis.xadd(K.PLAN_STREAM, fields)  # type: ignore[arg-type]


async def governor_permit(redis: Redis, plan_id: str, symbol: str = "BTCUSDT") -> None:
    permit = {
        "granted": True,
        "symbol": symbol,
        "decision": "EXECUTE",
        "computed_qty": 0.012,
        "computed_notional": 1200.5,
        "created_at": time.time(),
        "consumed": False,
        "eff_score": "0.8123",
        "eff_confidence": "0.900",
        "eff_stale": "0",
        "eff_factor": "1.0000",
    }
    await redis.set(K.ISSUERS["governor"].key(plan_id), json.dumps(permit), ex=60)


async def p33_permit(
    redis: Redis,
    plan_id: str,
    *,
    symbol: str = "BTCUSDT",
    safe_qty: float = 0.012,
    amt: float = 0.012,
    older: bool = False,
) -> None:
    """P3.3's allow: the current ``safe_qty`` form, or the older ``safe_close_qty`` one."""
    permit: dict[str, Any] = {
        "allow": True,
        "symbol": symbol,
        "safe_close_qty" if older else "safe_qty": safe_qty,
        "exchange_position_amt": amt,
        "ledger_amt": amt,
        "created_at": time.time(),
        "reason": "sanity_checks_passed",
    }
    await redis.set(K.ISSUERS["p33"].key(plan_id), json.dumps(permit), ex=60)


def permit_lines(daemon: Daemon, plan_id: str) -> list[str]:
    return [
        r["message"]
        for r in daemon.records()
        if r.get("message", "").startswith("[PERMIT_WAIT]") and f"plan={plan_id} " in r["message"]
    ]


def duplicate_lines(daemon: Daemon, plan_id: str) -> list[dict[str, Any]]:
    return [
        r for r in daemon.records() if r.get("message", "").startswith(f"duplicate plan={plan_id} ")
    ]


async def executed(redis: Redis, daemon: Daemon, plan_id: str) -> dict[str, str]:
    result = await wait_result(redis, plan_id)
    check_result_schema(result)
    assert (result["status"], result["executed"], result["decision"]) == (
        "EXECUTED",
        "True",
        "EXECUTE",
    ), result
    assert result["plan_decision"] == "EXECUTE"
    (line,) = permit_lines(daemon, plan_id)
    assert line.startswith(f"[PERMIT_WAIT] OK plan={plan_id} ")
    return result


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---- 1. the planner and its own dedupe key ----------------------------------------------


async def test_the_planners_dedupe_key_is_left_alone_and_its_plans_execute(
    redis: Redis, daemons: DaemonFactory
) -> None:
    daemon = await daemons().start().ready(redis)
    for plan_id, action in (
        ("a1b2c3d4e5f60718", "PARTIAL_75"),
        ("f1e2d3c4b5a69788", "FULL_CLOSE_PROPOSED"),
    ):
        await planner_publish(redis, plan_id, action=action)
        before = await redis.get(PLANNER_DEDUPE.format(plan_id=plan_id))
        await governor_permit(redis, plan_id)
        await p33_permit(redis, plan_id, safe_qty=0.012, amt=0.012)
        result = await executed(redis, daemon, plan_id)
        # The planner's key: same value, still expiring; the daemon's claim is its own.
        key = PLANNER_DEDUPE.format(plan_id=plan_id)
        assert await redis.get(key) == before and 0 < await redis.ttl(key) <= 300
        assert await redis.get(K.claim(plan_id)) is not None
        pct = "75" if action == "PARTIAL_75" else "100"
        assert (result["close_pct"], result["action"]) == (
            pct,
            "PARTIAL_CLOSE" if pct == "75" else "FULL_CLOSE",
        )
        await redis.delete(K.cooldown("BTCUSDT"))
    assert await pending_count(redis) == 0


# ---- 2. the governor's rotation close (no steps) ----------------------------------------


async def test_a_rotation_close_executes_and_confirms_what_the_governor_waits_for(
    redis: Redis, daemons: DaemonFactory
) -> None:
    daemon = await daemons().start().ready(redis)
    plan_id = "rot_1a2b3c4d_ETHUSDT"
    await governor_permit(redis, plan_id, symbol="ETHUSDT")
    await p33_permit(redis, plan_id, symbol="ETHUSDT", safe_qty=0.5, amt=0.5)
    await governor_rotation_close(redis, plan_id)
    result = await executed(redis, daemon, plan_id)
    # The governor confirms with executed.lower() == "true" and reduceOnly.lower() == "true".
    assert result["executed"].lower() == "true" and result["reduceOnly"].lower() == "true"
    assert (result["action"], result["close_pct"], result["filled_qty"]) == (
        "FULL_CLOSE",
        "100",
        "0.5",
    )
    (step,) = json.loads(result["steps_results"])
    assert (step["step"], step["side"], step["executed_qty"]) == ("CLOSE_FULL", "SELL", "0.5")


async def test_a_plan_without_steps_and_without_a_close_action_is_rejected_by_name(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await daemons().start().ready(redis)
    await redis.xadd(
        K.PLAN_STREAM,
        {
            "plan_id": "entry0001",
            "symbol": "BTCUSDT",
            "action": "ENTRY_PROPOSED",
            "decision": "EXECUTE",
            "side": "BUY",
            "qty": "0.01",
            "timestamp": str(int(time.time() * 1000)),  # milliseconds
        },
    )
    result = await wait_result(redis, "entry0001")
    check_result_schema(result)
    assert (result["status"], result["error"], result["decision"]) == (
        "REJECTED",
        "invalid_plan:missing_field:steps",
        "ERROR",
    )


# ---- 3. harvest_v2's step names -------------------------------------------------------


async def test_harvest_v2_partial_closes_the_smaller_share_and_says_so(
    redis: Redis, daemons: DaemonFactory
) -> None:
    daemon = await daemons().start().ready(redis)
    await governor_permit(redis, "hv2partial000001")
    await p33_permit(redis, "hv2partial000001", safe_qty=0.012, amt=0.012)
    await harvest_v2_publish(
        redis, "hv2partial000001", "PARTIAL_75", 25.0, "PARTIAL_CLOSE_PROPOSED"
    )
    result = await executed(redis, daemon, "hv2partial000001")
    (step,) = json.loads(result["steps_results"])
    assert step["step"] == "PARTIAL_75"
    assert step["warning"] == "pct_mismatch:name=75,pct=25,closing=25"
    # 25 % of 0.012 is 0.003: the pct, not the name's 75 % (0.009).
    assert (result["close_pct"], result["filled_qty"], step["executed_qty"]) == (
        "25",
        "0.003",
        "0.003",
    )
    warnings = [r for r in daemon.records() if r.get("message") == "step_pct_mismatch"]
    assert len(warnings) == 1 and warnings[0]["plan_id"] == "hv2partial000001"


async def test_harvest_v2_exit_closes_all(redis: Redis, daemons: DaemonFactory) -> None:
    daemon = await daemons().start().ready(redis)
    await governor_permit(redis, "hv2exit000000001")
    await p33_permit(redis, "hv2exit000000001", safe_qty=0.012, amt=-0.012)
    await harvest_v2_publish(redis, "hv2exit000000001", "CLOSE_FULL", 100.0, "FULL_CLOSE_PROPOSED")
    result = await executed(redis, daemon, "hv2exit000000001")
    assert (result["side"], result["filled_qty"], result["action"]) == (
        "BUY",
        "0.012",
        "FULL_CLOSE",
    )
    assert "warning" not in json.loads(result["steps_results"])[-1]


async def test_a_plan_of_only_non_close_steps_is_rejected_and_its_permits_left_alone(
    redis: Redis, daemons: DaemonFactory
) -> None:
    await daemons().start().ready(redis)
    await governor_permit(redis, "slonly0000000001")
    await p33_permit(redis, "slonly0000000001")
    steps = json.dumps([{"step": "UPDATE_SL", "type": "stop_loss_order", "price": 61000.0}])
    await redis.xadd(
        K.PLAN_STREAM,
        {
            "plan_id": "slonly0000000001",
            "symbol": "BTCUSDT",
            "action": "UPDATE_SL",
            "decision": "EXECUTE",
            "steps": steps,
            "timestamp": str(int(time.time())),
        },
    )
    result = await wait_result(redis, "slonly0000000001")
    check_result_schema(result)
    assert (result["status"], result["error"]) == ("REJECTED", "invalid_plan:no_close_step")
    assert (
        await redis.exists(
            K.ISSUERS["governor"].key("slonly0000000001"), K.ISSUERS["p33"].key("slonly0000000001")
        )
        == 2
    )


# ---- 4. P3.3's permit forms, the portfolio gate, the kill-switch writers ----------------


async def test_p33_current_and_older_permit_forms(redis: Redis, daemons: DaemonFactory) -> None:
    daemon = await daemons().start().ready(redis)
    for plan_id, older in (("p33current000001", False), ("p33older00000001", True)):
        await governor_permit(redis, plan_id)
        await p33_permit(redis, plan_id, safe_qty=0.004, amt=0.012, older=older)
        await planner_publish(redis, plan_id, action="FULL_CLOSE_PROPOSED")
        result = await executed(redis, daemon, plan_id)
        # Sized by P3.3's quantity (0.004), not the plan's qty or the position (0.012).
        assert (result["qty"], result["filled_qty"]) == ("0.004", "0.004")
        await redis.delete(K.cooldown("BTCUSDT"))


async def test_the_auto_bypass_hash_permit_with_safe_qty_0_blocks(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """harvest_brain / intent_bridge: HSET allow "true" safe_qty "0". Never guess a quantity."""
    daemon = await daemons(permit_wait_ms=600).start().ready(redis)
    plan_id = "hashp33000000001"
    await governor_permit(redis, plan_id)
    key = K.ISSUERS["p33"].key(plan_id)
    await redis.hset(
        key,
        mapping={
            "allow": "true",
            "safe_qty": "0",
            "reason": "harvest_brain_auto_permit",
            "timestamp": str(int(time.time())),
        },
    )
    await redis.expire(key, 86400)
    await planner_publish(redis, plan_id)
    result = await wait_result(redis, plan_id)
    check_result_schema(result)
    assert (result["status"], result["decision"], result["error"]) == (
        "BLOCKED",
        "BLOCKED",
        "p33_permit_denied:invalid_qty",
    )
    assert result["plan_decision"] == "EXECUTE"
    (line,) = permit_lines(daemon, plan_id)
    assert line.startswith(f"[PERMIT_WAIT] BLOCK plan={plan_id} symbol=BTCUSDT ")


async def test_the_portfolio_gates_bare_1_permit(redis: Redis, daemons: DaemonFactory) -> None:
    daemon = (
        await daemons(required_permits="governor,p33,p26", permit_wait_ms=500).start().ready(redis)
    )
    for plan_id, p26 in (("p26granted000001", True), ("p26missing000001", False)):
        await governor_permit(redis, plan_id)
        await p33_permit(redis, plan_id)
        if p26:
            await redis.set(K.ISSUERS["p26"].key(plan_id), "1", ex=60)
        await planner_publish(redis, plan_id)
    await executed(redis, daemon, "p26granted000001")
    missing = await wait_result(redis, "p26missing000001")
    check_result_schema(missing)
    assert (missing["status"], missing["error"]) == (
        "BLOCKED",
        "permit_timeout_or_missing:missing_p26",
    )


@pytest.mark.parametrize(
    ("key", "on", "off"),
    [("quantum:kill", "1", "0"), ("quantum:global:kill_switch", "true", "false")],
)
async def test_kill_switch_writers(
    redis: Redis, daemons: DaemonFactory, key: str, on: str, off: str
) -> None:
    daemon = await daemons().start().ready(redis)
    await redis.set(key, on)
    await governor_permit(redis, "killon0000000001")
    await p33_permit(redis, "killon0000000001")
    await planner_publish(redis, "killon0000000001")
    blocked = await wait_result(redis, "killon0000000001")
    check_result_schema(blocked)
    assert (blocked["status"], blocked["decision"], blocked["error"]) == (
        "BLOCKED",
        "BLOCKED",
        "kill_switch",
    )
    await redis.set(key, off)
    await governor_permit(redis, "killoff000000001")
    await p33_permit(redis, "killoff000000001")
    await planner_publish(redis, "killoff000000001")
    await executed(redis, daemon, "killoff000000001")


# ---- a plan never ends silently ------------------------------------------------------


async def test_real_duplicates_are_logged_once_with_the_first_decision(
    redis: Redis, daemons: DaemonFactory
) -> None:
    daemon = await daemons(dedupe_ttl_sec=1, log_level="INFO").start().ready(redis)
    await governor_permit(redis, "dupe000000000001")
    await p33_permit(redis, "dupe000000000001")
    await planner_publish(redis, "dupe000000000001")
    await executed(redis, daemon, "dupe000000000001")
    # Republished after the decision, once while the claim key lives and once after it
    # expired (the journal still knows the plan): each copy logged, none executed.
    await planner_publish(redis, "dupe000000000001")
    await wait_for(lambda: len(duplicate_lines(daemon, "dupe000000000001")) == 1)
    deadline = time.monotonic() + 5
    while await redis.exists(K.claim("dupe000000000001")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await planner_publish(redis, "dupe000000000001")
    await wait_for(lambda: len(duplicate_lines(daemon, "dupe000000000001")) == 2)
    for line in duplicate_lines(daemon, "dupe000000000001"):
        assert line["message"] == "duplicate plan=dupe000000000001 first_status=EXECUTED"
        assert line["level"] == "INFO" and line["first_status"] == "EXECUTED"
    assert [r["plan_id"] for r in await results(redis)].count("dupe000000000001") == 1
    assert await pending_count(redis) == 0


async def test_every_entry_ends_with_one_result_or_one_duplicate_line(
    redis: Redis, daemons: DaemonFactory
) -> None:
    """One entry down every path; then each stream entry is accounted for exactly once."""
    daemon = await daemons(permit_wait_ms=400).start().ready(redis)
    await redis.set(K.ISSUERS["p33"].key("pathdeny"), json.dumps({"allow": False, "reason": "x"}))
    await governor_permit(redis, "pathdeny")
    await redis.set(K.governor_block("pathgov"), json.dumps({"reason": "exposure"}))
    for plan_id in ("pathok", "pathgov", "pathtiny"):
        await governor_permit(redis, plan_id)
        await p33_permit(redis, plan_id, safe_qty=0.0001 if plan_id == "pathtiny" else 0.012)
    await planner_publish(redis, "pathok")  # EXECUTED
    await planner_publish(redis, "pathdeny")  # BLOCKED (deny)
    await planner_publish(redis, "pathgov")  # BLOCKED (governor block)
    await planner_publish(redis, "pathmissing")  # BLOCKED (missing)
    await planner_publish(redis, "pathtiny")  # REJECTED (qty below min)
    await governor_rotation_close(redis, "pathrot", symbol="SOLUSDT")  # SKIPPED (allowlist)
    await redis.xadd(
        K.PLAN_STREAM,
        {
            "plan_id": "pathskip",
            "symbol": "BTCUSDT",
            "decision": "SKIP",
            "timestamp": str(time.time()),
        },
    )
    await redis.xadd(
        K.PLAN_STREAM,
        {
            "plan_id": "pathold",
            "symbol": "BTCUSDT",
            "decision": "EXECUTE",
            "action": "FULL_CLOSE",
            "timestamp": str(time.time() - 600),
        },
    )  # SKIPPED stale
    await redis.xadd(K.PLAN_STREAM, {"plan_id": "pathbad", "symbol": "BTCUSDT"})  # REJECTED
    await redis.xadd(K.PLAN_STREAM, {"junk": "no plan id at all"})  # REJECTED, no id
    await wait_result(redis, "pathok")
    await planner_publish(redis, "pathok")  # a duplicate
    entries: list[tuple[str, dict[str, str]]] = await redis.xrange(K.PLAN_STREAM)  # type: ignore[assignment]
    deadline = time.monotonic() + 15
    while await pending_count(redis) or len(await results(redis)) < len(entries) - 1:
        assert time.monotonic() < deadline, daemon.log()
        await asyncio.sleep(0.05)
    out = await results(redis)
    for result in out:
        if result["plan_id"]:  # an entry with no plan id cannot name one
            check_result_schema(result)
    by_plan = [r["plan_id"] for r in out]
    ids = [fields.get("plan_id", "") for _, fields in entries]
    assert sorted(by_plan) == sorted(set(ids)), (by_plan, ids)
    assert len(duplicate_lines(daemon, "pathok")) == 1
    statuses = {r["plan_id"]: (r["status"], r["decision"]) for r in out}
    assert statuses == {
        "pathok": ("EXECUTED", "EXECUTE"),
        "pathdeny": ("BLOCKED", "BLOCKED"),
        "pathgov": ("BLOCKED", "BLOCKED"),
        "pathmissing": ("BLOCKED", "BLOCKED"),
        "pathtiny": ("REJECTED", "ERROR"),
        "pathrot": ("SKIPPED", "SKIP"),
        "pathskip": ("SKIPPED", "SKIP"),
        "pathold": ("SKIPPED", "SKIP"),
        "pathbad": ("REJECTED", "ERROR"),
        "": ("REJECTED", "ERROR"),
    }
    assert {r["plan_id"]: r["plan_decision"] for r in out}["pathskip"] == "SKIP"
