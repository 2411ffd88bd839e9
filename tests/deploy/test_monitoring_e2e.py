"""The alerts against real faults: a real Prometheus scraping the real daemon (issue 23).

Prometheus (Debian's package) loads the shipped rules with every ``for:`` and
window divided by ``FACTOR`` (tests/deploy/monitoring_e2e.py), scrapes the
daemon every second and evaluates every second. The daemon runs in testnet
mode against the fake exchange over real HTTP, on a Redis of its own, with
plans arriving all along (two a second, both permits granted, the governor's
signed under APPLY_PERMIT_SIGNING=governor=warn, so they execute). Faults are
caused one at a time, on the exchange, on Redis, on the daemon and on the
permits the traffic writes (``Traffic``: P3.3 denying or answering late);
after each, the test waits for the alert the runbook names and asserts that
the alerts firing are exactly the ones expected, then undoes the fault and
waits for silence. The times it measured are printed (``-s``) and recorded in
docs/OPERATIONS.md.

It takes about ten minutes, so it runs nightly (scripts/monitoring-e2e.sh
sets APPLY_MONITORING_E2E=1); the fast part, that the scaled rules still load,
runs with the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.order_ids import client_order_id
from apply_layer.core.signing import sign_permit
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from apply_layer.store.connection import create_redis
from tests.deploy.monitoring_e2e import PrometheusServer, scaled_rules
from tests.fake_binance import (
    ORDER,
    FakeBinance,
    Fault,
    rejected,
    slow,
    timeout_1007,
    unknown_503,
)
from tests.harness import FakeBinanceDaemons, publish_plan
from tests.harness import grant as grant_unsigned

FACTOR = 60  # 30 minutes are 30 s
QUIET_SEC = 30.0  # normal traffic with no alert (2 minutes unscaled would be 2 s)
# Longer than a step may wait (30 s): plans end FAILED exchange_unavailable meanwhile.
BAN_SEC = 40.0
E2E = os.environ.get("APPLY_MONITORING_E2E") == "1"


# The governor signs its permits (APPLY_PERMIT_SIGNING=governor=warn): a permit
# unsigned or signed with another key is a signature failure, and still runs.
GOVERNOR_KID, GOVERNOR_KEY = "gov-1", bytes.fromhex("33" * 32)


async def grant(
    redis: Redis,
    plan_id: str,
    *,
    symbol: str,
    governor: bool = True,
    key: bytes = GOVERNOR_KEY,
    **p33: Any,
) -> None:
    """Both permits, the governor's signed with ``key`` for the close ``publish_plan``
    asks for (CLOSE_PARTIAL_75); ``p33``: as tests/harness.py's ``grant``."""
    await grant_unsigned(redis, plan_id, symbol=symbol, governor=False, **p33)
    if governor:
        permit = {"granted": True, "symbol": symbol, "decision": "EXECUTE"}
        signed = sign_permit(
            permit,
            issuer="governor",
            plan_id=plan_id,
            kid=GOVERNOR_KID,
            key=key,
            step="CLOSE_PARTIAL_75",
        )
        await redis.set(K.ISSUERS["governor"].key(plan_id), json.dumps(signed), ex=60)


def test_the_scaled_rules_load(tmp_path: Path) -> None:
    """The CI part: scaling keeps every rule valid (promtool), and scales what it should."""
    rules = tmp_path / "scaled.yml"
    data = scaled_rules(FACTOR)
    rules.write_text(yaml.safe_dump(data, sort_keys=False))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    by_name = {r["alert"]: r for g in data["groups"] for r in g["rules"]}
    assert by_name["ApplyLayerKillSwitchOn"]["for"] == "30s"
    assert "[15s]" in by_name["ApplyLayerNoExecution"]["expr"]
    assert "time() - 15" in by_name["ApplyLayerNoExecution"]["expr"]
    assert "> 5" in by_name["ApplyLayerPendingStuck"]["expr"]


class Timeline:
    """Rows of (fault, alert, seconds until it fired, seconds until it cleared)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, fault: str, alerts: str, fired: float | None, cleared: float | None) -> None:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} s"

        self.rows.append((fault, alerts, fmt(fired), fmt(cleared)))
        print(f"| {fault} | {alerts} | {fmt(fired)} | {fmt(cleared)} |", flush=True)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, what
        await asyncio.sleep(0.5)
    return time.monotonic() - start


@dataclass
class Traffic:
    """What the traffic does, changed by a fault while it runs: how many plans it sent,
    which P3.3 denies (``deny``: 0 none, 1 every plan, 2 half of each symbol's), how
    long P3.3 takes to answer (``p33_delay``, seconds after the plan is published), and
    whether it sends at all (``paused``)."""

    sent: int = 0
    deny: int = 0
    p33_delay: float = 0.0
    paused: bool = False

    def denies(self, n: int) -> bool:
        return self.deny == 1 or (self.deny == 2 and (n // 2) % 2 == 1)


async def _result(redis: Redis, plan_id: str, timeout: float = 15.0) -> dict[str, str]:
    """The plan's result, among the newest: the stream holds the whole run's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries: list[tuple[str, dict[str, str]]] = await redis.xrevrange(  # type: ignore[assignment]
            K.RESULT_STREAM, count=200
        )
        for _, fields in entries:
            if fields.get("plan_id") == plan_id:
                return dict(fields)
        await asyncio.sleep(0.25)
    raise AssertionError(f"no result for {plan_id}")


@contextlib.asynccontextmanager
async def _traffic(redis_url: str) -> AsyncIterator[Traffic]:
    """Two plans a second, alternating symbols, with both permits: they execute (0.75 of a
    reported 1.0 position: above both symbols' lot minimum), unless ``Traffic`` says
    otherwise."""
    traffic = Traffic()
    late: set[asyncio.Task[None]] = set()

    async def grant_late(client: Redis, plan: str, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(Exception):
            await grant(client, plan, symbol=symbol, safe_qty=1.0, position=1.0, governor=False)

    async def loop() -> None:
        client = create_redis(redis_url, name="traffic")
        try:
            for n in itertools.count():
                symbol = ("BTCUSDT", "ETHUSDT")[n % 2]
                plan = f"e2e-{time.time_ns()}"
                if traffic.paused:
                    await asyncio.sleep(0.5)
                    continue
                with contextlib.suppress(Exception):  # Redis down: the publishers fail too
                    if traffic.denies(n):
                        await grant(client, plan, symbol=symbol, p33=False)
                        denied = {"allow": False, "symbol": symbol, "reason": "e2e_denied"}
                        await client.set(K.ISSUERS["p33"].key(plan), json.dumps(denied), ex=60)
                        await publish_plan(client, plan, symbol=symbol)
                    elif traffic.p33_delay:
                        delay = traffic.p33_delay
                        await grant(client, plan, symbol=symbol, p33=False)
                        await publish_plan(client, plan, symbol=symbol)
                        task = asyncio.create_task(grant_late(client, plan, symbol, delay))
                        late.add(task)
                        task.add_done_callback(late.discard)
                    else:
                        await grant(client, plan, symbol=symbol, safe_qty=1.0, position=1.0)
                        await publish_plan(client, plan, symbol=symbol)
                    traffic.sent += 1
                await asyncio.sleep(0.5)
        finally:
            for task in list(late):
                task.cancel()
            await client.aclose()

    task = asyncio.create_task(loop())
    try:
        yield traffic
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.slow
@pytest.mark.skipif(not E2E, reason="nightly: scripts/monitoring-e2e.sh (APPLY_MONITORING_E2E=1)")
async def test_each_fault_fires_its_alert_and_no_other(
    own_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    redis = create_redis(own_redis_server.url, name="tests")
    await redis.config_set("notify-keyspace-events", "K$h")
    port = free_port()
    keys = tmp_path / "permit-keys"
    keys.write_text(f"governor {GOVERNOR_KID} {GOVERNOR_KEY.hex()}\n")
    keys.chmod(0o600)
    with FakeBinance() as fake:
        fake.positions["BTCUSDT"] = Decimal("1000")
        fake.positions["ETHUSDT"] = Decimal("1000")
        daemons = FakeBinanceDaemons(own_redis_server.url, tmp_path, fake.url)
        daemon = daemons(
            "e2e",
            metrics_port=port,
            keyspace_events="detect",
            poll_sec=0.5,
            max_in_flight=4,  # a backlog shows as stream lag soon enough
            plan_max_age_sec=10,  # and plans go stale within the test
            lease_ms=1000,  # a plan waits 2 s for a busy symbol lease, then is deferred
            permit_signing="governor=warn",
            permit_keys_file=str(keys),
        )
        prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{port}", FACTOR).start()
        table = Timeline()
        try:
            daemon.start()
            await daemon.ready(redis)
            async with _traffic(own_redis_server.url) as traffic:
                await _phases(redis, own_redis_server, fake, daemon, prometheus, table, traffic)
        finally:
            daemons.stop()
            prometheus.stop()
            with contextlib.suppress(Exception):
                await redis.aclose()


async def _phases(
    redis: Redis,
    server: EmbeddedRedis,
    fake: FakeBinance,
    daemon: Any,
    prom: PrometheusServer,
    table: Timeline,
    traffic: Traffic,
) -> None:
    # Normal traffic: nothing fires, while plans execute.
    await _until(lambda: bool(prom.query('up{job="apply-layer"} == 1')), 30, "no scrape")
    await asyncio.sleep(QUIET_SEC)
    executed = prom.query('sum(apply_plans_total{job="apply-layer", status="EXECUTED"})')
    assert executed and float(executed[0]["value"][1]) > QUIET_SEC, executed
    assert prom.firing() == set(), prom.firing()
    table.add(f"none: {QUIET_SEC:.0f} s of traffic, 2 plans/s executing", "none", None, None)

    async def fault(
        name: str,
        cause: Callable[[], Any],
        undo: Callable[[], Any],
        expected: set[str],
        allowed: frozenset[str] = frozenset(),
        timeout: float = 60,
    ) -> None:
        """Cause, wait until every expected alert has fired (not necessarily at once),
        undo, wait for silence; no alert outside expected and allowed may fire meanwhile."""
        seen: dict[str, float] = {}
        started = time.monotonic()
        await cause()
        while not expected <= set(seen):
            assert time.monotonic() - started < timeout, f"{name}: only {sorted(seen)} fired"
            for alert in prom.firing():
                seen.setdefault(alert, time.monotonic() - started)
            await asyncio.sleep(0.5)
        await undo()
        undone = time.monotonic()
        while firing := prom.firing():
            assert time.monotonic() - undone < 90, f"{name}: still firing {firing}"
            for alert in firing:
                seen.setdefault(alert, time.monotonic() - started)
            await asyncio.sleep(0.5)
        extra = set(seen) - expected - allowed
        assert not extra, f"{name}: also fired {extra}"
        fired = ", ".join(f"{a} {seen[a]:.0f} s" for a in sorted(seen))
        table.add(name, fired, max(seen[a] for a in expected), time.monotonic() - undone)

    async def nothing() -> None:
        return None

    async def kill_on() -> None:
        await redis.set("quantum:kill", "1")

    async def kill_off() -> None:
        await redis.delete("quantum:kill")

    await fault(
        "kill switch on (SET quantum:kill 1)", kill_on, kill_off, {"ApplyLayerKillSwitchOn"}
    )

    async def conflict() -> None:
        plan = f"twice-{time.time_ns()}"
        await grant(redis, plan, symbol="BTCUSDT", safe_qty=1.0, position=1.0)
        await publish_plan(redis, plan, symbol="BTCUSDT")
        assert (await _result(redis, plan))["executed"] == "True"
        # The same plan id, another close: forged or a broken writer; not run.
        await publish_plan(redis, plan, symbol="BTCUSDT", step="CLOSE_FULL")

    await fault(
        "a second entry of a plan id asks for another close",
        conflict,
        nothing,
        {"ApplyLayerPlanConflict"},
    )

    def denying(which: int) -> Callable[[], Any]:
        async def deny() -> None:
            traffic.deny = which

        return deny

    async def stop_denying() -> None:
        traffic.deny = 0

    await fault(
        "P3.3 denies half of each symbol's plans",
        denying(2),
        stop_denying,
        {"ApplyLayerBlockShareHigh"},
    )

    # No close executes while plans arrive and the target is up. Every plan that
    # does not execute is blocked or failed for a reason, so NoExecution always has
    # the alert of that reason beside it: here BlockShareHigh (p33_permit_denied).
    await fault(
        "P3.3 denies every plan",
        denying(1),
        stop_denying,
        {"ApplyLayerNoExecution", "ApplyLayerBlockShareHigh"},
    )

    async def p33_slow() -> None:  # APPLY_PERMIT_WAIT_MS is 1200: 0.83 of it
        traffic.p33_delay = 1.0

    async def p33_fast() -> None:
        traffic.p33_delay = 0.0

    await fault(
        "P3.3 answers 1.0 s after the plan (deadline 1.2 s)",
        p33_slow,
        p33_fast,
        {"ApplyLayerPermitWaitNearDeadline"},
    )

    async def clock_ahead() -> None:  # past recvWindow (5 s): a -1021, then a resync
        fake.skew_ms = 8000

    async def clock_back() -> None:
        fake.skew_ms = 0

    await fault(
        "the exchange's clock 8 s ahead",
        clock_ahead,
        clock_back,
        {"ApplyLayerExchangeClockOffset"},
    )

    async def adopt() -> None:
        plan = f"adopt-{time.time_ns()}"
        # The plan's order is on the exchange already, but in no journal: a previous
        # run sent it and Redis lost the record (a restore). Found before the send.
        cid = client_order_id(plan, "CLOSE_PARTIAL_75")
        fake.add_order("BTCUSDT", "SELL", "0.75", cid)
        await grant(redis, plan, symbol="BTCUSDT", safe_qty=1.0, position=1.0)
        await publish_plan(redis, plan, symbol="BTCUSDT")
        assert (await _result(redis, plan))["executed"] == "True"
        assert fake.order_count(cid) == 1  # adopted, not sent again

    await fault(
        "an order placed before its plan's send", adopt, nothing, {"ApplyLayerOrderAdopted"}
    )

    def order_answers_lost(count: int) -> Callable[[], Any]:
        async def lose() -> None:  # placed, but the answer is -1007: looked up and found
            fake.inject("POST", ORDER, *[timeout_1007(place=True) for _ in range(count)])

        return lose

    await fault(
        "3 order sends answered -1007 (placed), found by lookup",
        order_answers_lost(3),
        nothing,
        {"ApplyLayerUnknownFateLookups"},
    )

    async def fate_lost() -> None:
        traffic.paused = True
        await asyncio.sleep(3)  # the plans in flight finish
        posts = len(fake.requests("POST", ORDER))
        fake.inject("POST", ORDER, slow(2.0, place=False))
        plan = f"lost-{time.time_ns()}"
        await grant(redis, plan, symbol="BTCUSDT", safe_qty=1.0, position=1.0)
        await publish_plan(redis, plan, symbol="BTCUSDT")
        await _until(lambda: len(fake.requests("POST", ORDER)) > posts, 10, "no send")
        # While its answer is held: every lookup fails, so its fate stays unknown.
        fake.inject("GET", ORDER, *[unknown_503(place=False) for _ in range(50)])
        result = await _result(redis, plan, timeout=40)
        assert result["executed"] == "False", result
        assert result["error"].startswith("order_unknown"), result

    async def fate_found() -> None:
        with fake.lock:
            fake.faults.clear()
        traffic.paused = False

    await fault(
        "a send times out (-1007) and every lookup fails (503)",
        fate_lost,
        fate_found,
        {"ApplyLayerOrderFateUnknown", "ApplyLayerUnknownFateLookups"},
        # The plan's 8 failing lookups (backoff to 2 s) keep its entry pending past
        # PendingStuck's scaled 5 s (300 s unscaled, which they do not reach).
        allowed=frozenset({"ApplyLayerPendingStuck"}),
    )

    async def forged() -> None:
        for n in range(2):  # signed with a key the daemon does not hold: a forgery
            plan = f"forged-{n}-{time.time_ns()}"
            await grant(redis, plan, symbol="BTCUSDT", safe_qty=1.0, position=1.0, key=b"x" * 32)
            await publish_plan(redis, plan, symbol="BTCUSDT")
            # warn: checked, counted, logged, and run all the same
            assert (await _result(redis, plan))["executed"] == "True"

    await fault(
        "2 governor permits signed with another key (APPLY_PERMIT_SIGNING=governor=warn)",
        forged,
        nothing,
        {"ApplyLayerPermitSignatureFailures"},
    )

    async def events_off() -> None:
        await redis.config_set("notify-keyspace-events", "")

    async def events_on() -> None:
        await redis.config_set("notify-keyspace-events", "K$h")

    await fault(
        'keyspace events off (CONFIG SET notify-keyspace-events "")',
        events_off,
        events_on,
        {"ApplyLayerKeyspaceNotificationsOff"},
    )

    async def hang() -> None:
        daemon.signal(signal.SIGSTOP)

    async def resume() -> None:
        daemon.signal(signal.SIGCONT)
        await asyncio.sleep(3)  # what the resumed daemon reports belongs to this fault

    # The hung daemon answers no scrape: Down, and not NoExecution (issue 23 item 3);
    # nor RedisDown once resumed: a read whose deadline passed while the process was
    # stopped is not an outage (read_deadline.ReadDeadline, tests/daemon/test_suspended.py).
    await fault("daemon hung (SIGSTOP), scrapes fail", hang, resume, {"ApplyLayerDown"})

    async def unscrape() -> None:
        prom.retarget([])

    async def rescrape() -> None:
        prom.retarget([prom.target])

    # The target removed from the scrape configuration: Absent, and again not
    # NoExecution (issue 23 item 3: the series go stale, nothing counts them).
    await fault("target removed from Prometheus", unscrape, rescrape, {"ApplyLayerAbsent"})

    def started_at() -> float | None:
        found = prom.query('process_start_time_seconds{job="apply-layer"}')
        return float(found[0]["value"][1]) if found else None

    async def restart_twice() -> None:
        # Restarting counts start times that change within its (scaled) window:
        # each new process is killed as soon as Prometheus has scraped it once,
        # not after a fixed sleep, so a slow start under load cannot stretch the
        # two restarts past the window.
        for _ in range(2):
            before = started_at()
            daemon.kill()
            daemon.start()
            await daemon.ready(redis)
            deadline = time.monotonic() + 20
            while started_at() in (before, None):
                assert time.monotonic() < deadline, "Prometheus never scraped the new process"
                await asyncio.sleep(0.2)

    # Two crashes (kill -9) and restarts within the scaled half hour.
    await fault(
        "daemon killed and restarted twice",
        restart_twice,
        nothing,
        {"ApplyLayerRestarting"},
        # A killed process's symbol leases hold their symbols until they expire
        # (APPLY_LEASE_MS): plans back up in the 4 slots and go stale, truly.
        allowed=frozenset(
            {
                "ApplyLayerDown",
                "ApplyLayerNoExecution",
                "ApplyLayerStreamLag",
                "ApplyLayerStalePlans",
                "ApplyLayerPendingStuck",
                "ApplyLayerPendingGrowing",
            }
        ),
        timeout=90,
    )

    banned_at: list[int] = []

    async def ban() -> None:
        banned_at.append(fake.now_ms())
        banned_at.append(fake.ban(BAN_SEC))

    async def unban() -> None:
        await asyncio.sleep(max(0.0, (banned_at[1] - fake.now_ms()) / 1000))

    await fault(
        f"Binance IP ban (418, {BAN_SEC:.0f} s)",
        ban,
        unban,
        {"ApplyLayerIpBanned", "ApplyLayerExchangeUnavailable"},
        # Plans end FAILED at once while over 30 s of the ban remain, then wait out
        # the rest in their slots: with 4 slots and 2 plans a second that is a real
        # backlog (unread entries, stale plans), which these alerts report truly.
        allowed=frozenset(
            {
                "ApplyLayerNoExecution",
                "ApplyLayerStreamLag",
                "ApplyLayerStalePlans",
                "ApplyLayerPendingStuck",
                "ApplyLayerPendingGrowing",
            }
        ),
        timeout=90,
    )
    during = fake.requests_between(banned_at[0], banned_at[1])
    print(
        f"requests that reached the exchange during the {BAN_SEC:.0f} s ban: {len(during)}",
        flush=True,
    )
    assert len(during) <= 4, during  # at most what was on its way when the 418 came back

    async def limit() -> None:
        fake.ban(2.0, status=429)

    await fault("Binance 429 (2 s back-off)", limit, nothing, {"ApplyLayerRateLimited"})

    async def reject() -> None:
        fake.inject("POST", ORDER, rejected(-2022, "ReduceOnly Order is rejected."))

    await fault(
        "Binance rejects a close (-2022)", reject, nothing, {"ApplyLayerExchangeRejections"}
    )

    async def unsizable() -> None:
        for n in range(3):  # 0.75 of 0.012 ETH rounds below the 0.01 lot minimum
            plan = f"dust-{n}-{time.time_ns()}"
            await grant(redis, plan, symbol="ETHUSDT", safe_qty=0.01, position=0.012)
            await publish_plan(redis, plan, symbol="ETHUSDT")

    await fault("3 closes below the lot minimum", unsizable, nothing, {"ApplyLayerSizingRefusals"})

    leases = [K.symbol_lease(symbol) for symbol in ("BTCUSDT", "ETHUSDT")]

    async def stuck_instance() -> None:
        # Another instance, stuck mid-plan, holds both symbols' leases and its renewer
        # keeps them (a long TTL here): each plan waits its 2 * APPLY_LEASE_MS for the
        # lease, is deferred (plan_deferred) and its entry stays pending, unacknowledged
        # and out of flight, until a claim retries it after APPLY_CLAIM_IDLE_SEC.
        for lease in leases:
            await redis.set(lease, "stuck-instance:e2e", px=600_000)

    async def stuck_instance_gone() -> None:
        await redis.delete(*leases)

    await fault(
        "another instance holds both symbols' leases (stuck)",
        stuck_instance,
        stuck_instance_gone,
        {"ApplyLayerPendingGrowing"},
        # What else is true: no close executes, the oldest entry waits, the stream
        # is read slower than written and plans wait past their age.
        allowed=frozenset(
            {
                "ApplyLayerNoExecution",
                "ApplyLayerPendingStuck",
                "ApplyLayerStreamLag",
                "ApplyLayerStalePlans",
            }
        ),
        timeout=90,
    )

    async def slow_fills() -> None:  # the issue's backlog: about 1.3 closes/s for 2 plans/s
        fake.inject("POST", ORDER, *[Fault(place=True, delay=1.5) for _ in range(200)])

    async def fast_fills() -> None:
        with fake.lock:
            fake.faults.clear()

    await fault(
        "slow fills (1.5 s an order): a backlog",
        slow_fills,
        fast_fills,
        {"ApplyLayerStreamLag", "ApplyLayerStalePlans"},
        allowed=frozenset({"ApplyLayerPendingStuck", "ApplyLayerPendingGrowing"}),
        timeout=90,
    )

    async def redis_down() -> None:
        server.stop()

    async def redis_up() -> None:
        server.start()
        client = create_redis(server.url, name="tests")
        await client.config_set("notify-keyspace-events", "K$h")
        await client.aclose()

    await fault(
        "Redis stopped",
        redis_down,
        redis_up,
        {"ApplyLayerRedisDown"},
        # Back empty, Redis may have lost sends: each plan's first send waits until a
        # lost one could no longer execute (the lookup window, recvWindow 5 s), which
        # holds the 4 slots for about 6 s at 2 plans/s: a true backlog of 10 or more.
        allowed=frozenset(
            {
                "ApplyLayerRedisIdentityChanged",
                "ApplyLayerStreamLag",
                "ApplyLayerPendingStuck",
            }
        ),
    )
