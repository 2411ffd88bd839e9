"""The ``apply-layer`` command line (docs/CONTRACT.md section 6)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from redis.exceptions import RedisError

from apply_layer import __version__
from apply_layer.errors import CommandError, ConfigError
from apply_layer.gate import GateConfig
from apply_layer.logs import setup_logging
from apply_layer.peek import peek_plan
from apply_layer.plans import PLAN_ID_RE
from apply_layer.redis_client import close_redis, redact_url, redis_for
from apply_layer.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


async def cmd_permits(settings: Settings, args: argparse.Namespace) -> int:
    if not PLAN_ID_RE.fullmatch(args.plan_id):
        raise CommandError(f"{args.plan_id!r} is not a plan id ([A-Za-z0-9_-]{{1,64}})")
    redis = redis_for(settings, name="apply_layer:cli")
    try:
        view = await peek_plan(redis, args.plan_id, args.symbol, GateConfig.from_settings(settings))
    finally:
        await close_redis(redis)
    if args.json:
        print(json.dumps(view.as_dict(), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"plan {view.plan_id}  symbol {view.symbol or '?'}")
    for p in view.permits:
        qty = f" safe_qty={p.verdict.safe_qty}" if p.verdict.safe_qty is not None else ""
        why = f" ({p.verdict.reason})" if p.verdict.verdict == "deny" else ""
        print(
            f"  {p.issuer:<9} {p.verdict.verdict:<8} type={p.verdict.kind:<7} ttl={p.ttl:<5}"
            f" key={p.key}{qty}{why}"
        )
    print(f"  governor block marker: {view.governor_block or 'none'}")
    on = [k for k, v in view.kill_switch.items() if v]
    print(f"  kill switch: {'ON via ' + ', '.join(on) if on else 'off'}")
    if view.journal:
        print(
            f"  journal: state={view.journal.get('state')} gate={view.journal.get('gate_status')}"
        )
    else:
        print("  journal: none")
    print(f"  the gate would decide: {view.would_decide}")
    return EXIT_OK


Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _register_permits(sub: Any) -> None:
    permits = sub.add_parser("permits", help="what the gate would see now for one plan")
    permits.add_argument("plan_id")
    permits.add_argument("--symbol", help="the plan's symbol (default: from its journal)")
    permits.add_argument("--json", action="store_true", help="machine-readable output")
    permits.set_defaults(func=cmd_permits)


def _registrations() -> list[Callable[[Any], None]]:
    """Each command module's ``register(subparsers)``; one line per command module."""
    from apply_layer import dedupe_clear, demo, preflight, sign_permit, smoke, stats_cli
    from apply_layer.commands import register_run

    return [
        register_run,
        preflight.register,
        demo.register,
        _register_permits,
        stats_cli.register,
        dedupe_clear.register,
        smoke.register,
        sign_permit.register,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apply-layer", description="The apply layer: atomic permit gate and executor."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="read APPLY_* settings from this file too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrations():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except SettingsError as exc:
        print(f"apply-layer: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.log_format)
    func: Command = args.func
    try:
        return asyncio.run(func(settings, args))
    except ConfigError as exc:
        print(f"apply-layer: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"apply-layer: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # `apply-layer stats | head`: the reader left, nothing failed
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_OK
    except (RedisError, OSError) as exc:
        where = (
            f"service {settings.redis_sentinel_service!r} via sentinels "
            + ",".join(settings.redis_sentinels)
            if settings.redis_sentinels
            else redact_url(settings.redis_url)
        )
        print(f"apply-layer: cannot reach Redis at {where}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
