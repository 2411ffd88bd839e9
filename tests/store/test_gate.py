"""The atomic permit gate against a real redis-server."""

from __future__ import annotations

import asyncio
import io
import json
import time
from decimal import Decimal
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.keys import ISSUERS
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig, PermitGate, wait_and_consume_permits
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.proxy import DropReplyProxy

SYM = "BTCUSDT"
GOV_KEY = ISSUERS["governor"].key
P33_KEY = ISSUERS["p33"].key
FAST = GateConfig(wait_ms=600, step_ms=20)
GOV_OK = {"granted": True, "symbol": SYM, "decision": "EXECUTE", "created_at": 1769301008.9}
P33_OK = {"allow": True, "symbol": SYM, "safe_qty": 0.002, "exchange_position_amt": 0.002}


async def put(redis: Redis, key: str, value: Any, ttl: int = 60) -> None:
    await redis.set(key, value if isinstance(value, str) else json.dumps(value), ex=ttl)


async def later(delay: float, coro: Any) -> None:
    await asyncio.sleep(delay)
    await coro


async def test_happy_path_consumes_both_and_journals_them(redis: Redis) -> None:
    await put(redis, GOV_KEY("p1"), GOV_OK)
    await put(redis, P33_KEY("p1"), P33_OK)
    result = await wait_and_consume_permits(redis, "p1", SYM, FAST)
    assert result.allowed and result.owner
    assert result.safe_qty == Decimal("0.002")
    assert result.error == "" and result.wait_ms < FAST.wait_ms
    assert await redis.exists(GOV_KEY("p1"), P33_KEY("p1")) == 0
    journal = await redis.hgetall(K.journal("p1"))
    assert journal["state"] == "permitted" and journal["gate_status"] == "ALLOW"
    assert json.loads(journal["p.p33.raw"]) == P33_OK
    assert journal["p.governor.consumed"] == journal["p.p33.consumed"] == "1"
    assert 0 < await redis.ttl(K.journal("p1")) <= FAST.journal_ttl_sec


@pytest.mark.parametrize("first", ["governor", "p33"])
async def test_permits_arriving_late_in_either_order(redis: Redis, first: str) -> None:
    writes = {
        "governor": put(redis, GOV_KEY("p2"), GOV_OK),
        "p33": put(redis, P33_KEY("p2"), P33_OK),
    }
    second = "p33" if first == "governor" else "governor"
    tasks = [
        asyncio.create_task(later(0.10, writes[first])),
        asyncio.create_task(later(0.25, writes[second])),
    ]
    result = await wait_and_consume_permits(redis, "p2", SYM, FAST)
    await asyncio.gather(*tasks)
    assert result.allowed
    assert 250 <= result.wait_ms < FAST.wait_ms


@pytest.mark.parametrize(
    ("present", "reason"),
    [("governor", "missing_p33"), ("p33", "missing_governor"), (None, "missing_all")],
)
async def test_missing_until_the_deadline_blocks_and_consumes_nothing(
    redis: Redis, present: str | None, reason: str
) -> None:
    if present == "governor":
        await put(redis, GOV_KEY("p3"), GOV_OK)
    if present == "p33":
        await put(redis, P33_KEY("p3"), P33_OK)
    stream = io.StringIO()
    setup_logging("INFO", "console", stream)
    result = await wait_and_consume_permits(redis, "p3", SYM, FAST)
    assert result.status == "TIMEOUT" and not result.allowed
    assert result.reason == reason
    assert result.error == f"permit_timeout_or_missing:{reason}"
    assert result.wait_ms >= FAST.wait_ms
    if present:
        assert await redis.exists(ISSUERS[present].key("p3")) == 1  # not consumed
        assert 0 < result.ttls[present] <= 60
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"[PERMIT_WAIT] BLOCK plan=p3 symbol={SYM} wait_ms=")
    assert f"reason={reason} governor_ttl=" in lines[0]
    assert "p33_ttl=" in lines[0]


DENIALS = [
    (
        {"allow": False, "reason": "reconcile_required_qty_mismatch"},
        "p33_permit_denied:reconcile_required_qty_mismatch",
    ),
    ("{broken json", "p33_permit_denied:malformed"),
    ({"allow": True, "symbol": "ETHUSDT", "safe_qty": 1}, "p33_permit_denied:symbol_mismatch"),
    ('{"allow": true, "safe_qty": NaN}', "p33_permit_denied:invalid_qty"),
    ({"allow": True, "safe_qty": -0.002}, "p33_permit_denied:invalid_qty"),
    ({"allow": True, "safe_qty": 0}, "p33_permit_denied:invalid_qty"),
    ({"allow": True, "symbol": SYM}, "p33_permit_denied:invalid_qty"),
]


@pytest.mark.parametrize(("p33", "error"), DENIALS)
async def test_a_deny_blocks_at_once_and_consumes_what_is_present(
    redis: Redis, p33: Any, error: str
) -> None:
    slow = GateConfig(wait_ms=3000, step_ms=50)
    await put(redis, GOV_KEY("p4"), GOV_OK)
    await put(redis, P33_KEY("p4"), p33)
    result = await wait_and_consume_permits(redis, "p4", SYM, slow)
    assert result.status == "DENY" and result.error == error
    assert result.wait_ms < slow.wait_ms / 2  # did not wait out the deadline
    assert await redis.exists(GOV_KEY("p4"), P33_KEY("p4")) == 0
    journal = await redis.hgetall(K.journal("p4"))
    assert journal["state"] == "blocked"
    assert journal["p.p33.consumed"] == journal["p.governor.consumed"] == "1"
    assert journal["p.p33.raw"] == (p33 if isinstance(p33, str) else json.dumps(p33))


async def test_a_deny_does_not_wait_for_the_other_permit(redis: Redis) -> None:
    await put(redis, P33_KEY("p5"), {"allow": False, "reason": "no_position"})
    result = await wait_and_consume_permits(redis, "p5", SYM, GateConfig(wait_ms=3000))
    assert result.error == "p33_permit_denied:no_position"
    assert result.wait_ms < 1500
    journal = await redis.hgetall(K.journal("p5"))
    # The deny is consumed; the governor's permit was never there, so nothing of it is.
    assert (journal["p.p33.consumed"], journal["p.governor.consumed"]) == ("1", "0")


async def test_wrong_key_type_is_a_deny(redis: Redis) -> None:
    await put(redis, GOV_KEY("p6"), GOV_OK)
    await redis.rpush(P33_KEY("p6"), "allow")
    result = await wait_and_consume_permits(redis, "p6", SYM, GateConfig(wait_ms=3000))
    assert result.error == "p33_permit_denied:wrong_type"
    assert result.permits["p33"].kind == "list"


async def test_hash_permits_and_the_safe_close_qty_alias(redis: Redis) -> None:
    await redis.hset(GOV_KEY("p7"), mapping={"granted": "true", "symbol": SYM})
    await put(redis, P33_KEY("p7"), {"allow": True, "symbol": SYM, "safe_close_qty": "0.0030"})
    result = await wait_and_consume_permits(redis, "p7", SYM, FAST)
    assert result.allowed and result.safe_qty == Decimal("0.0030")
    journal = await redis.hgetall(K.journal("p7"))
    assert journal["p.governor.kind"] == "hash"
    assert json.loads(journal["p.governor.raw"]) == {"granted": "true", "symbol": SYM}


async def test_hash_p33_permit(redis: Redis) -> None:
    await put(redis, GOV_KEY("p8"), GOV_OK)
    await redis.hset(P33_KEY("p8"), mapping={"allow": "true", "symbol": SYM, "safe_qty": "0.002"})
    result = await wait_and_consume_permits(redis, "p8", SYM, FAST)
    assert result.allowed and result.safe_qty == Decimal("0.002")


async def test_governor_block_marker_blocks_at_once(redis: Redis) -> None:
    await put(redis, P33_KEY("p9"), P33_OK)
    await put(redis, K.governor_block("p9"), {"reason": "daily loss limit", "ts": 1})
    result = await wait_and_consume_permits(redis, "p9", SYM, GateConfig(wait_ms=3000))
    assert result.status == "GOV_BLOCK"
    assert result.error == "governor_blocked:daily_loss_limit"
    assert result.wait_ms < 1500
    assert await redis.exists(P33_KEY("p9")) == 0  # single-use: present permits consumed
    assert (await redis.hgetall(K.journal("p9")))["p.p33.consumed"] == "1"


async def test_a_deeply_nested_governor_marker_still_ends_in_a_decision(redis: Redis) -> None:
    # Found by the hostile-input run: RecursionError after the permits were consumed.
    await put(redis, P33_KEY("deep"), P33_OK)
    await put(redis, K.governor_block("deep"), "[" * 2000 + "]" * 2000)
    result = await wait_and_consume_permits(redis, "deep", SYM, FAST)
    assert result.status == "GOV_BLOCK" and result.error.startswith("governor_blocked:")
    again = await wait_and_consume_permits(redis, "deep", SYM, FAST)  # the replay, as recovery
    assert again.error == result.error and not again.owner


async def test_an_oversized_permit_is_denied_and_only_its_summary_kept(redis: Redis) -> None:
    huge = json.dumps({**P33_OK, "pad": "x" * (8 << 20)})
    await put(redis, GOV_KEY("big"), GOV_OK)
    await put(redis, P33_KEY("big"), huge)
    await put(redis, K.governor_block("big2"), "y" * (8 << 20))
    await redis.hset(GOV_KEY("big3"), mapping={"granted": "true", "pad": "z" * (1 << 20)})
    result = await wait_and_consume_permits(redis, "big", SYM, FAST)
    assert result.status == "DENY" and result.error == "p33_permit_denied:oversized"
    assert await redis.exists(GOV_KEY("big"), P33_KEY("big")) == 0  # consumed: single-use
    journal = await redis.hgetall(K.journal("big"))
    assert journal["p.p33.verdict"] == "deny" and journal["p.p33.category"] == "oversized"
    raw = str(journal["p.p33.raw"])
    assert raw.startswith(f"oversized:bytes={len(huge)}:head=__allow___true_") and len(raw) < 200
    assert (await redis.memory_usage(K.journal("big")) or 0) < 4096  # was 8.4 MB for 7 days
    marker = await wait_and_consume_permits(redis, "big2", SYM, FAST)
    assert marker.error == "governor_blocked:oversized_marker"
    assert len((await redis.hgetall(K.journal("big2")))["gate_marker"]) < 200
    hashed = await wait_and_consume_permits(redis, "big3", SYM, FAST)
    assert hashed.error == "governor_permit_denied:oversized"
    assert len((await redis.hgetall(K.journal("big3")))["p.governor.raw"]) < 200


@pytest.mark.parametrize("source", ["quantum:global:kill_switch", "quantum:kill", "env"])
async def test_kill_switch_blocks_and_consumes_nothing(redis: Redis, source: str) -> None:
    await put(redis, GOV_KEY("pk"), GOV_OK)
    await put(redis, P33_KEY("pk"), P33_OK)
    config = GateConfig(wait_ms=3000, kill_switch=source == "env")
    if source != "env":
        await redis.set(source, "TRUE")
    result = await wait_and_consume_permits(redis, "pk", SYM, config)
    assert result.status == "KILL" and result.error == "kill_switch"
    assert result.wait_ms < 1500
    assert await redis.exists(GOV_KEY("pk"), P33_KEY("pk")) == 2
    assert (await redis.hgetall(K.journal("pk")))["p.p33.consumed"] == "0"


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "off", "", "no", "2", " 1", "true "])
@pytest.mark.parametrize("key", ["quantum:global:kill_switch", "quantum:kill"])
async def test_kill_switch_values_that_do_not_stop_trading(
    redis: Redis, key: str, value: str
) -> None:
    from apply_layer.core.permits import kill_on

    await put(redis, GOV_KEY("pv"), GOV_OK)
    await put(redis, P33_KEY("pv"), P33_OK)
    await redis.set(key, value)
    result = await wait_and_consume_permits(redis, "pv", SYM, GateConfig(wait_ms=1000))
    assert result.status == "ALLOW", (key, value)
    assert not kill_on("string", value)  # the Python twin agrees with the Lua


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "on", "ON"])
async def test_kill_switch_values_that_stop_trading(redis: Redis, value: str) -> None:
    from apply_layer.core.permits import kill_on

    await put(redis, GOV_KEY("pw"), GOV_OK)
    await put(redis, P33_KEY("pw"), P33_OK)
    await redis.set("quantum:kill", value)
    result = await wait_and_consume_permits(redis, "pw", SYM, GateConfig(wait_ms=1000))
    assert result.status == "KILL" and kill_on("string", value)


async def test_kill_switch_flipped_during_the_wait_ends_it(redis: Redis) -> None:
    await put(redis, GOV_KEY("pf"), GOV_OK)
    task = asyncio.create_task(later(0.1, redis.set("quantum:kill", "on")))
    result = await wait_and_consume_permits(redis, "pf", SYM, GateConfig(wait_ms=3000, step_ms=20))
    await task
    assert result.status == "KILL" and result.wait_ms < 1500


async def test_fifty_racing_callers_exactly_one_wins(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    clients = [create_redis(redis_server.url, name=f"racer{i}") for i in range(50)]
    try:
        gates = [PermitGate(c, GateConfig(wait_ms=2000, step_ms=5)) for c in clients]
        writer = asyncio.create_task(
            later(
                0.05,
                asyncio.gather(
                    put(redis, GOV_KEY("race"), GOV_OK), put(redis, P33_KEY("race"), P33_OK)
                ),
            )
        )
        results = await asyncio.gather(*(g.wait_and_consume("race", SYM) for g in gates))
        await writer
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    assert sum(r.owner for r in results) == 1
    assert {r.status for r in results} == {"ALLOW"}
    assert len({r.decided_at_ms for r in results}) == 1
    winner = next(r for r in results if r.owner)
    assert (await redis.hgetall(K.journal("race")))["gate_token"]  # recorded once
    assert winner.safe_qty == Decimal("0.002")
    assert await redis.exists(GOV_KEY("race"), P33_KEY("race")) == 0


async def test_a_resent_script_after_a_lost_reply_gets_the_first_decision(
    redis_server: EmbeddedRedis, redis: Redis
) -> None:
    await put(redis, GOV_KEY("lost"), GOV_OK)
    await put(redis, P33_KEY("lost"), P33_OK)
    async with DropReplyProxy(redis_server.port) as proxy:
        client = create_redis(proxy.url, name="lossy")
        try:
            gate = PermitGate(client, FAST)
            await gate.load()
            proxy.armed = b"EVALSHA"
            result = await gate.wait_and_consume("lost", SYM)
        finally:
            await client.aclose()
    assert proxy.dropped == 1  # the server acted and its reply was lost
    assert result.allowed and result.owner, "the resend must replay the decision, not see 'missing'"
    assert result.safe_qty == Decimal("0.002")
    other = await PermitGate(redis, FAST).wait_and_consume("lost", SYM)
    assert other.allowed and not other.owner


async def test_a_decision_is_final_even_if_permits_arrive_later(redis: Redis) -> None:
    gate = PermitGate(redis, GateConfig(wait_ms=0))
    first = await gate.attempt("late", SYM, "tok", final=True)
    assert first[0] == "TIMEOUT"
    await put(redis, GOV_KEY("late"), GOV_OK)
    await put(redis, P33_KEY("late"), P33_OK)
    again = await gate.attempt("late", SYM, "tok", final=True)
    assert again[:2] == ["TIMEOUT", 1]
    result = await gate.wait_and_consume("late", SYM)
    assert result.status == "TIMEOUT" and not result.owner
    assert await redis.exists(GOV_KEY("late"), P33_KEY("late")) == 2  # untouched


async def test_a_verdict_disagreement_fails_closed(redis: Redis) -> None:
    # cjson reads 0x10 as 16; Python's JSON rejects it. Never execute on that.
    await put(redis, GOV_KEY("mm"), GOV_OK)
    await put(redis, P33_KEY("mm"), '{"allow": true, "safe_qty": 0x10}')
    result = await wait_and_consume_permits(redis, "mm", SYM, FAST)
    assert result.status == "MISMATCH" and not result.allowed
    assert result.error == "permit_verdict_mismatch:p33"
    assert (await redis.hgetall(K.journal("mm")))["state"] == "blocked"


async def test_optional_p26_issuer(redis: Redis) -> None:
    config = GateConfig(issuers=(ISSUERS["governor"], ISSUERS["p33"], ISSUERS["p26"]), wait_ms=300)
    await put(redis, GOV_KEY("p26"), GOV_OK)
    await put(redis, P33_KEY("p26"), P33_OK)
    blocked = await wait_and_consume_permits(redis, "p26", SYM, config)
    assert blocked.reason == "missing_p26"
    await put(redis, GOV_KEY("p26b"), GOV_OK)
    await put(redis, P33_KEY("p26b"), P33_OK)
    await put(redis, ISSUERS["p26"].key("p26b"), "1")
    assert (await wait_and_consume_permits(redis, "p26b", SYM, config)).allowed


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_one_marker_line_per_decision_in_both_formats(redis: Redis, fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("INFO", fmt, stream)
    await put(redis, GOV_KEY("log"), GOV_OK)
    await put(redis, P33_KEY("log"), {"allow": True, "safe_qty": "0.0080"})
    result = await wait_and_consume_permits(redis, "log", SYM, FAST)
    await wait_and_consume_permits(redis, "log", SYM, FAST)  # a replay: no second line
    lines = [line for line in stream.getvalue().splitlines() if "[PERMIT_WAIT]" in line]
    assert len(lines) == 1
    expected = f"[PERMIT_WAIT] OK plan=log symbol={SYM} wait_ms={result.wait_ms} safe_qty=0.008"
    if fmt == "console":
        assert lines[0] == expected
    else:
        record = json.loads(lines[0])
        assert record["message"] == expected
        assert lines[0].startswith('{"message": "[PERMIT_WAIT] OK')
        assert record["plan_id"] == "log" and record["level"] == "INFO"


# ---- waking on arrival -------------------------------------------------------------

TICK = GateConfig(wait_ms=3000, step_ms=1000)


async def _late_p33(redis: Redis, gate: PermitGate, plan: str) -> tuple[int, float]:
    await put(redis, GOV_KEY(plan), GOV_OK)
    task = asyncio.create_task(later(0.15, put(redis, P33_KEY(plan), P33_OK)))
    started = time.monotonic()
    result = await gate.wait_and_consume(plan, SYM)
    await task
    assert result.allowed
    return result.wait_ms, time.monotonic() - started


async def test_keyspace_notifications_wake_the_gate_before_the_poll_tick(redis: Redis) -> None:
    watcher = KeyspaceWatcher(redis, TICK.watch_patterns(), mode="enable")
    assert await watcher.start() == "on"
    try:
        wait_ms, _ = await _late_p33(redis, PermitGate(redis, TICK, watcher), "wake")
    finally:
        await watcher.stop()
    # The permit lands at ~150 ms; the next poll would be at 1000 ms.
    assert 150 <= wait_ms < 900


async def test_without_notifications_the_poll_is_the_fallback(redis: Redis) -> None:
    watcher = KeyspaceWatcher(redis, TICK.watch_patterns(), mode="detect")
    status = await watcher.start()
    assert status.startswith("off on the server") and not watcher.active
    wait_ms, _ = await _late_p33(redis, PermitGate(redis, TICK, watcher), "poll")
    assert wait_ms >= 950  # found at the 1000 ms tick


async def test_watcher_survives_a_redis_restart(own_redis_server: EmbeddedRedis) -> None:
    client = create_redis(own_redis_server.url)
    watcher = KeyspaceWatcher(client, TICK.watch_patterns(), mode="enable")
    try:
        assert await watcher.start() == "on"
        own_redis_server.restart(kill=True)
        await client.config_set("notify-keyspace-events", "K$h")
        for _ in range(100):
            if watcher.active:
                break
            await asyncio.sleep(0.05)
        assert watcher.active
        wait_ms, _ = await _late_p33(client, PermitGate(client, TICK, watcher), "again")
        assert wait_ms < 900
    finally:
        await watcher.stop()
        await client.aclose()


def test_watch_patterns_do_not_overlap() -> None:
    config = GateConfig(issuers=(ISSUERS["governor"], ISSUERS["p33"], ISSUERS["p26"]))
    assert config.watch_patterns() == [
        "quantum:global:kill_switch",
        "quantum:governor:block:*",
        "quantum:kill",
        "quantum:permit:*",  # covers the p33 and p26 keys: one event each, not two
    ]


@pytest.mark.parametrize("raw", ["2", "0.5", "0", "-1"])
async def test_a_bare_number_other_than_1_is_a_deny_in_the_script(redis: Redis, raw: str) -> None:
    """Python re-checks the script, but the script alone must already say deny."""
    config = GateConfig(issuers=(ISSUERS["governor"], ISSUERS["p33"], ISSUERS["p26"]), wait_ms=500)
    await put(redis, GOV_KEY("pn"), GOV_OK)
    await put(redis, P33_KEY("pn"), P33_OK)
    await redis.set(ISSUERS["p26"].key("pn"), raw, ex=60)
    result = await wait_and_consume_permits(redis, "pn", SYM, config)
    assert (result.status, result.error) == ("DENY", "p26_permit_denied:denied")


@pytest.mark.parametrize("qty", ["1e999", '"1e999"'])
async def test_an_infinite_safe_qty_is_a_deny_in_the_script(redis: Redis, qty: str) -> None:
    await put(redis, GOV_KEY("pi"), GOV_OK)
    await redis.set(P33_KEY("pi"), '{"allow": true, "safe_qty": ' + qty + "}", ex=60)
    result = await wait_and_consume_permits(redis, "pi", SYM, GateConfig(wait_ms=500))
    assert (result.status, result.error) == ("DENY", "p33_permit_denied:invalid_qty")
