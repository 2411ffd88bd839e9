"""The chaos run: plans flowing, daemons killed, Redis restarted, exchange faults.

Used by ``tests/daemon/test_chaos.py`` (small, in CI) and ``scripts/chaos.sh``
(``python -m tests.chaos``, :func:`main`: the full run whose figures are in
docs/RELIABILITY.md). Everything is real: a redis-server with AOF
(``appendfsync always``), daemons as subprocesses in testnet mode, and the
fake Binance over HTTP. The simulated upstreams record the ground truth
(which plans got both allow permits, every permit written), and
:func:`verify` checks every plan against it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import close_redis, create_redis
from tests import fake_binance as fb
from tests.harness import Daemon, publish_plan

SYMBOLS = {"BTCUSDT": 0.01, "ETHUSDT": 0.1}  # symbol -> safe_qty per plan
PERMIT_TTL = 3600  # longer than the run: a permit that is gone was consumed


@dataclass(frozen=True)
class ChaosConfig:
    plans: int = 300
    rate: float = 20.0
    instances: int = 2
    kills: int = 20
    redis_restarts: int = 1
    failovers: int = 0  # FailoverChaos: kill -9 of the Sentinel setup's primary
    rollbacks: int = 0  # RollbackChaos: Redis brought back from a recent snapshot
    fault_ratio: float = 0.15  # order requests that meet an exchange fault
    deny_ratio: float = 0.1
    late_ratio: float = 0.05
    never_ratio: float = 0.05
    block_ratio: float = 0.03
    settle_sec: float = 90.0
    seed: int = 1
    down_after_ms: int = 2000  # failover runs: when the sentinels call the primary down
    wait_replicas: int = 0  # APPLY_REDIS_WAIT_REPLICAS of the daemons (failover runs)
    split_brain: bool = False  # failover runs: pause the primary (SIGSTOP), not kill it
    state_dirs: bool = False  # each instance keeps the Redis identity (APPLY_STATE_DIR)


@dataclass
class Report:
    config: ChaosConfig
    published: int = 0
    kills: int = 0
    redis_restarts: int = 0
    faults: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "STATUS error" of non-executed plans
    orders: int = 0
    duplicates: int = 0  # result entries beyond the first, per plan (corrections apart)
    corrected: int = 0  # correcting result entries (corrections.py): the truth, published late
    agreeing: int = 0  # plans whose last result agrees with the exchange (and the journal)
    lost: int = 0  # plans without a result (Redis's own losses apart, below)
    lost_by_redis: int = 0  # no result, and Redis lost the plan's entry before a daemon saw it
    lost_with_killed_daemon: int = 0  # no result: Redis lost the entry, and the daemon that
    # had read it was killed -9 before finishing it (a double fault; counted apart)
    orders_for_lost: int = 0  # orders at the exchange for plans counted in lost_by_redis
    permits_lost: int = 0  # permits gone unrecorded where Redis loses writes (writes it lost)
    failovers: int = 0
    rollbacks: int = 0
    lost_ids: list[str] = field(default_factory=list)  # for diagnosis
    # For diagnosis: plan id, result status, orders placed, journal state and whether
    # the journal's result_id is the result's.
    mismatch_details: list[str] = field(default_factory=list)
    adopted: int = 0  # results whose order was found at the exchange, not sent
    republished: int = 0  # results the daemons wrote again after Redis lost them
    double_orders: int = 0  # orders beyond the first, per plan
    unauthorized_orders: int = 0  # orders for plans lacking an allow permit
    outcome_mismatches: int = 0  # result vs exchange vs journal disagree
    unrecorded_consumptions: int = 0  # permit gone but not in the plan's journal
    elapsed: float = 0.0

    @property
    def violations(self) -> int:
        return (
            self.duplicates
            + self.lost
            + self.double_orders
            + self.unauthorized_orders
            + self.outcome_mismatches
            + self.unrecorded_consumptions
        )

    def figures(self) -> dict[str, Any]:
        """The counts, for scripts/nightly.sh's summary."""
        keys = [
            "published",
            "failovers",
            "rollbacks",
            "kills",
            "redis_restarts",
            "faults",
            "orders",
            "adopted",
            "republished",
            "corrected",
            "agreeing",
            "duplicates",
            "lost",
            "lost_by_redis",
            "lost_with_killed_daemon",
            "double_orders",
            "unauthorized_orders",
            "outcome_mismatches",
            "unrecorded_consumptions",
            "permits_lost",
            "violations",
            "elapsed",
        ]
        return {
            "seed": self.config.seed,
            "outcomes": dict(self.outcomes),
            "mismatch_details": self.mismatch_details,
            **{k: getattr(self, k) for k in keys},
        }

    def lines(self) -> list[str]:
        c = self.config
        return [
            f"plans {self.published}   instances {c.instances}   kills {self.kills}   "
            f"redis restarts {self.redis_restarts}   failovers {self.failovers}   "
            f"rollbacks {self.rollbacks}   exchange faults {self.faults}   "
            f"elapsed {self.elapsed:.1f} s",
            "outcomes " + "  ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            "reasons  " + "  ".join(f"{k}: {v}" for k, v in self.reasons.most_common()),
            f"orders {self.orders}   adopted (found, not sent) {self.adopted}   "
            f"results written again after a loss {self.republished}   "
            f"corrected results {self.corrected}",
            f"last result agrees with the exchange: {self.agreeing} of "
            f"{sum(self.outcomes.values())} plans with a result",
            f"duplicates {self.duplicates} (must be 0)   lost {self.lost} (must be 0)   "
            f"lost by Redis before any daemon read them {self.lost_by_redis} "
            f"(orders for them {self.orders_for_lost})   lost by Redis and with the killed "
            f"daemon that had read them {self.lost_with_killed_daemon}",
            f"double orders {self.double_orders}   orders without every allow permit "
            f"{self.unauthorized_orders}   outcome mismatches {self.outcome_mismatches}   "
            f"unrecorded permit consumptions {self.unrecorded_consumptions}   "
            f"permit writes Redis lost {self.permits_lost}",
            *(f"mismatch {detail}" for detail in self.mismatch_details),
            "RESULT: " + ("PASS" if self.violations == 0 else f"FAIL ({self.violations})"),
        ]


@dataclass
class Truth:
    """What the simulated upstreams did."""

    plans: dict[str, str] = field(default_factory=dict)  # plan_id -> symbol
    allowed: set[str] = field(default_factory=set)  # both allow permits written, no block
    permits: dict[str, str] = field(default_factory=dict)  # key -> raw value written


class Chaos:
    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.c = config
        self.workdir = workdir
        self.rng = random.Random(config.seed)
        self.truth = Truth()
        self.report = Report(config)
        self.redis_server = self._new_redis_server()
        self.fake = fb.FakeBinance()
        self.daemons: list[Daemon] = []
        self.redis: Redis | None = None
        self.run_id = f"{int(time.time()) % 100000:05d}"

    # ---- where Redis lives (subclasses: Sentinel, snapshots) ---------------------------

    loses_writes = False  # True where Redis may lose acknowledged writes (see verify)

    def _new_redis_server(self) -> EmbeddedRedis:
        return EmbeddedRedis(appendonly=True, notify_keyspace_events="K$h")

    async def _start_redis(self) -> Redis:
        self.redis_server.start()
        return create_redis(self.redis_server.url, name="chaos")

    def _stop_redis(self) -> None:
        self.redis_server.close()

    def _redis_settings(self) -> dict[str, Any]:
        return {}

    def _redis_url(self) -> str:
        return self.redis_server.url

    async def _redis_event(self, what: str) -> None:
        """A scheduled Redis event of the monkey (here: a kill -9 and restart)."""
        self.redis_server.stop(kill=True)
        self.report.redis_restarts += 1
        await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        self.redis_server.start()

    def _redis_events(self) -> int:
        return self.c.redis_restarts

    def _daemon(self, slot: int) -> Daemon:
        kept: dict[str, Any] = {}
        if self.c.state_dirs:  # the same directory for every restart of this instance
            kept["state_dir"] = self.workdir / f"state-{slot}"
            kept["state_dir"].mkdir(exist_ok=True)
        return Daemon(
            self._redis_url(),
            self.workdir,
            f"chaos-{slot}",
            **self._redis_settings(),
            mode="testnet",
            binance_base_url=self.fake.url,
            binance_api_key=fb.API_KEY,
            binance_api_secret=fb.API_SECRET,
            binance_recv_window_ms=1000,
            binance_http_timeout_sec=1.5,
            lease_ms=2000,
            claim_idle_sec=2,
            keyspace_events="detect",
            **kept,
        )

    async def _retry(self, make_call: Any) -> Any:
        """Upstream writes go on through a Redis restart, as real services' would."""
        while True:
            try:
                return await make_call()
            except (RedisError, OSError):
                await asyncio.sleep(0.1)

    async def run(self) -> Report:
        started = time.monotonic()
        self.fake.__enter__()
        for symbol in SYMBOLS:
            self.fake.positions[symbol] = Decimal(1000)
        try:
            self.redis = await self._start_redis()
            for slot in range(self.c.instances):
                daemon = self._daemon(slot)
                self.daemons.append(daemon)
                await daemon.start().ready(self.redis, timeout=30)
            publishing = asyncio.create_task(self._publish_all())
            monkey = asyncio.create_task(self._monkey(publishing))
            await publishing
            await monkey
            await self._settle()
            await self.verify()
        finally:
            for daemon in self.daemons:
                daemon.stop()
            if self.redis is not None:
                await close_redis(self.redis)
            self.fake.__exit__()
            self._stop_redis()
        self.report.elapsed = time.monotonic() - started
        return self.report

    # ---- the upstream services --------------------------------------------------

    async def _publish_all(self) -> None:
        interval = 1.0 / self.c.rate
        tasks = []
        for n in range(self.c.plans):
            plan_id = f"x{self.run_id}-{n:05d}"
            symbol = self.rng.choice(list(SYMBOLS))
            self.truth.plans[plan_id] = symbol
            assert self.redis is not None
            await self._retry(
                lambda r=self.redis, p=plan_id, s=symbol: publish_plan(r, p, symbol=s)
            )
            self.report.published += 1
            tasks.append(asyncio.create_task(self._permits(plan_id, symbol)))
            # A fault waits for the next order request; one at a time, so that when orders
            # lag behind plans they do not all meet a fault queued long before.
            if self.rng.random() < self.c.fault_ratio and not self.fake.faults.get(
                ("POST", fb.ORDER)
            ):
                self.fake.inject("POST", fb.ORDER, self._fault())
                self.report.faults += 1
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)

    def _fault(self) -> fb.Fault:
        place = self.rng.random() < 0.5
        return self.rng.choice(
            [
                fb.slow(2.0, place=place),
                fb.dropped(place=place),
                fb.unknown_503(place=place),
                fb.timeout_1007(place=place),
                fb.rate_limited(1),
            ]
        )

    async def _set(self, key: str, value: dict[str, Any]) -> None:
        raw = json.dumps(value)
        self.truth.permits[key] = raw
        assert self.redis is not None
        redis = self.redis
        await self._retry(lambda: redis.set(key, raw, ex=PERMIT_TTL))

    async def _permits(self, plan_id: str, symbol: str) -> None:
        rng = self.rng
        blocked = rng.random() < self.c.block_ratio
        roll, edge = rng.random(), 0.0
        p33 = "allow"
        for kind, ratio in (
            ("never", self.c.never_ratio),
            ("late", self.c.late_ratio),
            ("deny", self.c.deny_ratio),
        ):
            edge += ratio
            if roll < edge:
                p33 = kind
                break
        await asyncio.sleep(rng.uniform(0, 0.05))
        if blocked:
            assert self.redis is not None
            redis = self.redis
            marker = json.dumps({"reason": "chaos_block"})
            await self._retry(lambda: redis.set(K.governor_block(plan_id), marker, ex=PERMIT_TTL))
        else:
            await self._set(K.ISSUERS["governor"].key(plan_id), {"granted": True, "symbol": symbol})
        if p33 == "never":
            return
        await asyncio.sleep(rng.uniform(1.3, 1.8) if p33 == "late" else rng.uniform(0.02, 0.4))
        key = K.ISSUERS["p33"].key(plan_id)
        if p33 == "deny":
            await self._set(key, {"allow": False, "symbol": symbol, "reason": "chaos_deny"})
            return
        qty = SYMBOLS[symbol]
        await self._set(
            key,
            {"allow": True, "symbol": symbol, "safe_qty": qty, "exchange_position_amt": 1000},
        )
        if not blocked:
            self.truth.allowed.add(plan_id)

    # ---- the monkey ------------------------------------------------------------------

    async def _monkey(self, publishing: asyncio.Task[None]) -> None:
        duration = self.c.plans / self.c.rate
        kill_at = sorted(self.rng.uniform(0.05, 0.95) * duration for _ in range(self.c.kills))
        restart_at = sorted(
            self.rng.uniform(0.3, 0.7) * duration for _ in range(self._redis_events())
        )
        events = sorted([(t, "kill") for t in kill_at] + [(t, "redis") for t in restart_at])
        start = time.monotonic()
        for at, what in events:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            if what == "kill":
                slot = self.rng.randrange(len(self.daemons))
                self.daemons[slot].kill()
                self.report.kills += 1
                await asyncio.sleep(self.rng.uniform(0.0, 0.5))
                self.daemons[slot] = self._daemon(slot)
                self.daemons[slot].start()
            else:
                await self._redis_event(what)

    async def _settle(self) -> None:
        """With every instance up and no more faults, wait for every plan's result."""
        assert self.redis is not None
        deadline = time.monotonic() + self.c.settle_sec
        quiet_since, last_done = time.monotonic(), -1
        while time.monotonic() < deadline:
            done = {f["plan_id"] for f in await self._results()}
            if set(self.truth.plans) <= done:
                await asyncio.sleep(1.0)  # let acks and stray duplicates land
                return
            if len(done) != last_done:
                quiet_since, last_done = time.monotonic(), len(done)
            elif self.loses_writes and time.monotonic() - quiet_since > 5 and await self._idle():
                return  # the rest were lost by Redis: no daemon has anything left to do
            await asyncio.sleep(0.25)

    async def _idle(self) -> bool:
        """Nothing pending in the group and nothing unread in the plan stream."""
        assert self.redis is not None
        try:
            groups: Any = await self.redis.xinfo_groups(K.PLAN_STREAM)
        except RedisError:
            return False
        return all(int(g.get("pending", 1)) == 0 and not g.get("lag") for g in groups)

    async def _results(self) -> list[dict[str, str]]:
        assert self.redis is not None
        entries: Any = await self.redis.xrange(K.RESULT_STREAM)
        return [dict(fields, _id=entry_id) for entry_id, fields in entries]

    # ---- the verdict --------------------------------------------------------------------

    async def verify(self) -> None:
        assert self.redis is not None
        r = self.report
        by_plan: dict[str, list[dict[str, str]]] = {}
        for result in await self._results():
            by_plan.setdefault(result["plan_id"], []).append(result)
        orders = Counter(str(o["clientOrderId"]) for o in self.fake.orders)
        r.orders = sum(orders.values())
        r.republished = self._republished()
        in_stream = await self._plans_in_stream() if self.loses_writes else set()
        traced = self._traced_plans() if self.loses_writes else {}
        for plan_id in self.truth.plans:
            results = by_plan.get(plan_id, [])
            placed = orders.get(f"al75-{plan_id}", 0)
            r.double_orders += max(0, placed - 1)
            if placed and plan_id not in self.truth.allowed:
                r.unauthorized_orders += 1
            if not results:
                if self.loses_writes and plan_id not in in_stream and plan_id not in traced:
                    r.lost_by_redis += 1  # acknowledged by a Redis that then lost it, unread
                    r.orders_for_lost += placed
                elif self.loses_writes and plan_id not in in_stream and traced[plan_id]:
                    r.lost_with_killed_daemon += 1
                    r.orders_for_lost += placed
                else:
                    r.lost += 1
                    r.lost_ids.append(plan_id)
                continue
            raw: Any = await self.redis.hgetall(K.journal(plan_id))
            journal = {str(k): str(v) for k, v in raw.items()}
            verdict = judge(plan_id, results, placed, journal)
            r.duplicates += verdict.duplicates
            r.corrected += verdict.corrected
            result = results[-1]
            r.adopted += result.get("adopted") == "True"
            r.outcomes[result["status"]] += 1
            if result["status"] != "EXECUTED":
                r.reasons[f"{result['status']} {result['error'].split(':')[0]}"] += 1
            if verdict.agrees:
                r.agreeing += 1
            else:
                r.outcome_mismatches += 1
                r.mismatch_details.append(verdict.detail)
            for issuer in ("governor", "p33"):
                key = K.ISSUERS[issuer].key(plan_id)
                written = self.truth.permits.get(key)
                if written is None or await self.redis.exists(key):
                    continue  # never written, or still there (not consumed)
                recorded = journal.get(f"p.{issuer}.consumed") == "1"
                if not recorded and self.loses_writes:
                    # Consumption and its record are one atomic write: gone without a
                    # record means the permit's own write was lost.
                    r.permits_lost += 1
                elif not recorded or journal.get(f"p.{issuer}.raw") != written:
                    r.unrecorded_consumptions += 1

    async def _plans_in_stream(self) -> set[str]:
        assert self.redis is not None
        entries: Any = await self.redis.xrange(K.PLAN_STREAM)
        return {str(fields.get("plan_id")) for _, fields in entries}

    def _republished(self) -> int:
        total = 0
        for path in self.workdir.glob("chaos-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"results_republished"' in line:
                    total += int(json.loads(line).get("restored", 0))
        return total

    def _traced_plans(self) -> dict[str, bool]:
        """Plans some daemon logged anything about (so one of them read it), each with
        whether that daemon was killed (restarted) after its last line about the plan."""
        seen: dict[str, bool] = {}
        for path in self.workdir.glob("chaos-*.log"):
            last: dict[str, int] = {}
            starts: list[int] = []
            for n, line in enumerate(path.read_text(errors="replace").splitlines()):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("message") == "apply_layer_started":
                    starts.append(n)
                for key in ("plan_id", "plan"):
                    if key in record:
                        last[str(record[key])] = n
            for plan_id, n in last.items():
                killed = any(start > n for start in starts)
                seen[plan_id] = seen.get(plan_id, True) and killed
        return seen


@dataclass(frozen=True)
class Verdict:
    """One plan's results against the exchange and the journal."""

    duplicates: int  # result entries beyond the first, corrections apart
    corrected: int  # correcting entries
    agrees: bool  # the last result agrees with the exchange and the journal
    detail: str = ""  # why not, for the report


def judge(
    plan_id: str, results: list[dict[str, str]], placed: int, journal: dict[str, str]
) -> Verdict:
    """The invariant of every chaos mode, for one plan with at least one result: its
    **last** result agrees with the exchange (EXECUTED if and only if an order exists)
    and is the journal's (``result_id``, final state). A first result that said
    otherwise may stand before it only if the last one corrects it (corrections.py)."""
    last = results[-1]
    executed = last["status"] == "EXECUTED"
    agrees = (
        executed == bool(placed)
        and journal.get("result_id") == last["_id"]
        and journal.get("state") == last["status"].lower()
    )
    detail = (
        ""
        if agrees
        else f"{plan_id}: last result {last['status']} {last.get('error', '')}, "
        f"orders {placed}, journal {journal.get('state')!s}, result_id "
        f"{'same' if journal.get('result_id') == last['_id'] else 'differs'}, "
        f"results {len(results)} ({', '.join(x['status'] for x in results)})"
    )
    corrected = sum(1 for x in results if x.get("corrects"))
    return Verdict(duplicate_results(results), corrected, agrees, detail)


def duplicate_results(results: list[dict[str, str]]) -> int:
    """Result entries of one plan beyond its first, a correcting entry apart when it
    names the entry just before it and says EXECUTED (corrections.py)."""
    extra = 0
    for before, after in itertools.pairwise(results):
        correction = after.get("corrects") == before["_id"] and after["status"] == "EXECUTED"
        extra += not correction
    return extra


async def run_chaos(config: ChaosConfig, workdir: Path) -> Report:
    return await Chaos(config, workdir).run()


def main(argv: list[str] | None = None) -> int:
    """The full run from the command line (scripts/chaos.sh): prints plans, kills,
    outcomes, duplicates, lost; exit status 1 if any invariant broke.

    Everything runs on this machine: a redis-server with AOF (or, with
    ``--failovers``, a primary, a replica and three sentinels whose primary is
    killed; with ``--rollbacks``, a redis-server brought back from a recent
    snapshot), the daemons in testnet mode against the fake Binance.
    """
    from tests.chaos_redis import run_failover_chaos, run_rollback_chaos  # it imports this

    parser = argparse.ArgumentParser(
        prog="scripts/chaos.sh", description="The chaos suite's full run (docs/RELIABILITY.md)."
    )
    defaults = ChaosConfig()
    parser.add_argument("--plans", type=int, default=defaults.plans)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="plans per second")
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--kills", type=int, default=defaults.kills, help="kill -9 of a daemon")
    parser.add_argument("--redis-restarts", type=int, default=defaults.redis_restarts)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--failovers", type=int, default=0, help="Sentinel setup; kill -9 of its primary"
    )
    kind.add_argument(
        "--rollbacks", type=int, default=0, help="Redis brought back from a recent snapshot"
    )
    parser.add_argument("--fault-ratio", type=float, default=defaults.fault_ratio)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--down-after-ms",
        type=int,
        default=defaults.down_after_ms,
        help="failover runs: the sentinels' down-after-milliseconds",
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=defaults.wait_replicas,
        help="failover runs: the daemons' APPLY_REDIS_WAIT_REPLICAS",
    )
    parser.add_argument(
        "--split-brain",
        action="store_true",
        help="failover runs: the primary is paused (SIGSTOP) and comes back still a primary",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        plans=args.plans,
        rate=args.rate,
        instances=args.instances,
        kills=args.kills,
        redis_restarts=args.redis_restarts,
        failovers=args.failovers,
        rollbacks=args.rollbacks,
        fault_ratio=args.fault_ratio,
        seed=args.seed,
        down_after_ms=args.down_after_ms,
        wait_replicas=args.wait_replicas,
        split_brain=args.split_brain,
    )
    run = run_failover_chaos if args.failovers else run_chaos
    run = run_rollback_chaos if args.rollbacks else run
    with tempfile.TemporaryDirectory(prefix="apply-layer-chaos-") as workdir:
        report = asyncio.run(run(config, Path(workdir)))
    print("\n".join(report.lines()))
    if args.json is not None:
        args.json.write_text(json.dumps(report.figures(), indent=1) + "\n")
    return 0 if report.violations == 0 else 1


if __name__ == "__main__":
    # Run as ``python -m tests.chaos``, this file is ``__main__``; tests.chaos_redis imports
    # it again as ``tests.chaos``. Go through that one module so every run shares its classes.
    import tests.chaos

    sys.exit(tests.chaos.main())
