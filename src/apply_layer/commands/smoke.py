"""``apply-layer smoke``: one plan through the whole real pipeline, on the testnet.

The first thing to run after install, with the testnet keys in the env file.
It reads the account's position in one symbol (or, with ``--open QTY``, first
opens a small one with a client order id tagged ``apply-smoke-open-``),
publishes a plan and both permits on a Redis of its own (or an empty one
given with ``--redis-url``; never the configured, live one), lets the real
gate and the real testnet executor close part of the position, and prints
each step: the permits consumed, the order id, the executed quantity, the
position before and after.

It refuses to run against anything but Binance's testnet and demo hosts (or
a local fake exchange): it can open positions, and a mistyped base URL must
not make it trade for real.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from apply_layer.commands.demo import governor_permit, guard_shared_redis, p33_permit, plan_fields
from apply_layer.core import keys as K
from apply_layer.core.errors import BinanceError, CommandError
from apply_layer.core.log_format import format_qty
from apply_layer.core.plans import SYMBOL_RE
from apply_layer.daemon.service import ApplyService
from apply_layer.executors.binance.executor import BinanceExecutor
from apply_layer.logs import setup_logging
from apply_layer.ops.embedded_redis import private_redis
from apply_layer.settings import Settings, not_testnet
from apply_layer.store.connection import create_redis, redact_url

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
OPEN_TAG = "apply-smoke-open-"
STEPS = {25: "CLOSE_PARTIAL_25", 50: "CLOSE_PARTIAL_50", 75: "CLOSE_PARTIAL_75", 100: "CLOSE_FULL"}
RESULT_TIMEOUT_SEC = 120.0  # lookups of an order of unknown fate may take a while
POSITION_SETTLE_SEC = 5.0


def say(text: str) -> None:
    print(text, flush=True)


def _side(amount: Decimal) -> str:
    return "long" if amount > 0 else "short" if amount < 0 else "flat"


def refusal(settings: Settings) -> str | None:
    """Why the smoke must not run with these settings, or None."""
    key, secret = settings.binance_api_key, settings.binance_api_secret
    if not (key and key.get_secret_value() and secret and secret.get_secret_value()):
        return (
            "no testnet API key: put APPLY_BINANCE_API_KEY and APPLY_BINANCE_API_SECRET "
            "(or BINANCE_TESTNET_API_KEY / BINANCE_TESTNET_API_SECRET) in the env file and "
            "give it with --env-file (keys: https://testnet.binancefuture.com)"
        )
    return not_testnet(settings.binance_base_url)


class Smoke:
    """One run: the executor, the Redis, the service, and what each step showed."""

    def __init__(self, settings: Settings, symbol: str, pct: int, log_file: Path) -> None:
        self.settings = settings
        self.symbol = symbol
        self.pct = pct
        self.log_file = log_file
        self.run_id = f"{int(time.time() * 1000)}"  # plan ids are single-use
        self.plan_id = f"smoke-{self.run_id}"
        self.executor = BinanceExecutor.from_settings(settings)

    async def run(self, open_qty: Decimal | None) -> int:
        try:
            try:
                await self.executor.start()
            except BinanceError as exc:
                raise CommandError(f"the exchange did not answer: {exc}") from None
            rules = self.executor.rules(self.symbol)
            if rules is None:
                raise CommandError(f"{self.symbol} is not listed on the exchange")
            offset = self.executor.client.offset_ms
            say(f"  exchange: clock offset {offset:+d} ms; {self.symbol} lot {rules.describe()}")
            before = await self.executor.position(self.symbol)
            say(f"  position before: {format_qty(before)} {self.symbol} ({_side(before)})")
            if open_qty is not None:
                before = await self._open(before, open_qty)
            if before == 0:
                raise CommandError(
                    f"the account holds no {self.symbol} position: nothing to close "
                    "(--open QTY opens a small one first)"
                )
            return await self._close(before)
        finally:
            await self.executor.close()

    async def _open(self, before: Decimal, qty: Decimal) -> Decimal:
        side = "SELL" if before < 0 else "BUY"
        cid = f"{OPEN_TAG}{self.run_id}"
        try:
            info = await self.executor.client.place_market_open(
                symbol=self.symbol, side=side, quantity=qty, client_order_id=cid
            )
        except BinanceError as exc:
            raise CommandError(f"opening {format_qty(qty)} {self.symbol} failed: {exc}") from None
        say(
            f"  opened: order {info.order_id} client order id {info.client_order_id} {side} "
            f"{format_qty(qty)}, status {info.status}, executed {format_qty(info.executed_qty)}"
        )
        signed = info.executed_qty if side == "BUY" else -info.executed_qty
        now = await self._settled_position(before + signed)
        say(f"  position now: {format_qty(now)} {self.symbol} ({_side(now)})")
        return now

    async def _close(self, before: Decimal) -> int:
        redis = create_redis(self.settings.redis_url, name="apply_layer:smoke")
        service = ApplyService(self.settings, executor=self.executor)
        runner = asyncio.create_task(service.run())
        try:
            while not await redis.exists(K.PLAN_STREAM):  # the service made its group
                if runner.done():
                    return runner.result()
                await asyncio.sleep(0.02)
            step = STEPS[self.pct]
            await self._publish(redis, before, step)
            result = await self._result(redis, runner)
            await self._report_permits(redis)
            executed = self._report_order(result)
            expected = before - executed if before > 0 else before + executed
            after = await self._settled_position(expected)
        finally:
            service.request_stop()
            await asyncio.wait({runner}, timeout=60)
            await redis.aclose()
        say(f"  position after: {format_qty(after)} {self.symbol} ({_side(after)})")
        ok = result.get("executed") == "True" and executed > 0
        if ok and after != expected:
            say(
                f"  the position moved to {format_qty(after)}, not {format_qty(expected)}: "
                "is another client trading this account?"
            )
            ok = False
        say(f"smoke {'passed' if ok else 'FAILED'}; the daemon's log: {self.log_file.resolve()}")
        return EXIT_OK if ok else EXIT_FAIL

    async def _publish(self, redis: Redis, position: Decimal, step: str) -> None:
        safe = abs(position)  # P3.3 would find the whole position safe to close
        await redis.set(K.ISSUERS["governor"].key(self.plan_id), governor_permit(self.symbol))
        await redis.set(K.ISSUERS["p33"].key(self.plan_id), p33_permit(self.symbol, safe, position))
        spec = {"step": step, "type": "market_reduce_only", "side": "close", "pct": self.pct}
        fields = plan_fields(
            self.plan_id, self.symbol, spec, action=step, source="apply_layer_smoke"
        )
        await redis.xadd(K.PLAN_STREAM, fields)  # type: ignore[arg-type]
        say(
            f"  plan {self.plan_id}: {step} published with the governor's and P3.3's permits "
            f"(safe_qty {format_qty(safe)})"
        )

    async def _result(self, redis: Redis, runner: asyncio.Task[int]) -> dict[str, str]:
        deadline = time.monotonic() + RESULT_TIMEOUT_SEC
        while time.monotonic() < deadline:
            entries: Any = await redis.xrange(K.RESULT_STREAM)
            for _, fields in entries:
                if fields.get("plan_id") == self.plan_id:
                    return dict(fields)
            if runner.done():
                raise CommandError(f"the service stopped (exit {runner.result()}) before a result")
            await asyncio.sleep(0.05)
        raise CommandError(f"no result for {self.plan_id} in {RESULT_TIMEOUT_SEC:.0f} s")

    async def _report_permits(self, redis: Redis) -> None:
        journal: Any = await redis.hgetall(K.journal(self.plan_id))
        gate = journal.get("gate_status", "none")
        for name in ("governor", "p33"):
            key = K.ISSUERS[name].key(self.plan_id)
            gone = not await redis.exists(key)
            consumed = journal.get(f"p.{name}.consumed") == "1" and gone
            verdict = journal.get(f"p.{name}.verdict", "?")
            say(
                f"  gate {gate}: {name} permit {'consumed' if consumed else 'NOT consumed'} "
                f"(verdict {verdict}, {key} {'gone' if gone else 'still there'})"
            )

    def _report_order(self, result: dict[str, str]) -> Decimal:
        """Print the result and its order; returns the executed quantity (0 if none)."""
        status = result.get("status", "?")
        error = result.get("error") or "none"
        say(f"  result: {status} (error {error}, waited {result.get('wait_ms', '?')} ms)")
        try:
            steps = json.loads(result.get("steps_results") or "[]")
        except ValueError:
            steps = []
        executed = Decimal(0)
        for step in steps:
            say(
                f"  order: id {step.get('order_id') or 'none'} client order id "
                f"{step.get('client_order_id') or 'none'} {step.get('side', '')} "
                f"{step.get('quantity', '')} reduce-only, {step.get('status')}: executed "
                f"{step.get('executed_qty', '0')} at {step.get('avg_price', 'none')}"
                + (f" ({step['message']})" if step.get("message") else "")
            )
            if step.get("status") == "EXECUTED":
                with contextlib.suppress(InvalidOperation):
                    executed += Decimal(str(step.get("executed_qty")))
        return executed

    async def _settled_position(self, expected: Decimal) -> Decimal:
        """The position, read again for a few seconds until it shows the fill."""
        deadline = time.monotonic() + POSITION_SETTLE_SEC
        while True:
            try:
                now = await self.executor.position(self.symbol)
            except BinanceError as exc:
                raise CommandError(f"reading the position failed: {exc}") from None
            if now == expected or time.monotonic() >= deadline:
                return now
            await asyncio.sleep(0.25)


def _smoke_settings(settings: Settings, url: str, symbol: str, embedded: bool) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": url,
            "mode": "testnet",
            "allowlist": [symbol],
            "required_permits": ["governor", "p33"],
            "metrics_port": 0,
            "poll_sec": 0.5,
            "consumer_name": "smoke",
            "keyspace_events": "enable" if embedded else "detect",
        }
    )


async def cmd_smoke(settings: Settings, args: argparse.Namespace) -> int:
    why = refusal(settings)
    if why:
        print(f"apply-layer smoke: {why}", file=sys.stderr)
        return EXIT_USAGE
    if settings.kill_switch:
        raise CommandError("APPLY_KILL_SWITCH=true: the smoke would only be blocked")
    symbol = args.symbol or settings.allowlist[0]
    log_file = Path(args.log_file)
    say(f"apply-layer smoke: {symbol} on {settings.binance_base_url}, closing {args.pct}%")
    # One local file opened once at start: blocking is harmless here.
    with open(log_file, "a", encoding="utf-8") as log_stream:  # noqa: ASYNC230
        setup_logging("INFO", "console", log_stream)
        if args.redis_url:
            redis = create_redis(args.redis_url, name="apply_layer:smoke")
            try:
                await guard_shared_redis(redis, args.redis_url, "the smoke")
            finally:
                await redis.aclose()
            say(f"  Redis: {redact_url(args.redis_url)} (given, empty)")
            smoke_settings = _smoke_settings(settings, args.redis_url, symbol, False)
            return await Smoke(smoke_settings, symbol, args.pct, log_file).run(args.open)
        with private_redis() as server:
            say(f"  Redis: embedded on 127.0.0.1:{server.port} (removed after)")
            smoke_settings = _smoke_settings(settings, server.url, symbol, True)
            return await Smoke(smoke_settings, symbol, args.pct, log_file).run(args.open)


def _symbol(text: str) -> str:
    if not SYMBOL_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a symbol like BTCUSDT")
    return text


def _quantity(text: str) -> Decimal:
    try:
        qty = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a quantity") from None
    if not qty.is_finite() or qty <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return qty


def register(sub: Any) -> None:
    smoke = sub.add_parser(
        "smoke",
        help="one plan through the real gate and executor on the Binance testnet",
        description="Close part of a testnet position through the real pipeline, on a Redis "
        "of its own, and print each step. Needs the testnet keys in the env file.",
    )
    smoke.add_argument("--symbol", type=_symbol, help="default: the first of APPLY_ALLOWLIST")
    smoke.add_argument(
        "--open",
        type=_quantity,
        metavar="QTY",
        help="first open QTY (in the position's direction, long when flat), tagged "
        f"{OPEN_TAG}<time>",
    )
    smoke.add_argument(
        "--pct", type=int, choices=sorted(STEPS), default=50, help="share to close (50)"
    )
    smoke.add_argument(
        "--redis-url", help="an empty Redis to use instead of a private one (never the live one)"
    )
    smoke.add_argument("--log-file", default="apply-layer-smoke.log", help="the daemon's log")
    smoke.set_defaults(func=cmd_smoke)
