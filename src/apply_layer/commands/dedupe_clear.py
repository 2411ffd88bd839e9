"""``apply-layer dedupe-clear``: forget the daemon's claims on plan ids (docs/CONTRACT.md).

Deletes the daemon's own dedupe keys, ``quantum:apply:claim:{plan_id}``,
chosen by plan id (``--plan``, repeatable), by a glob over the plan-id part (``--pattern``) or
all of them (``--all``). Without ``--yes`` it only lists what it would
delete. Keys are found with SCAN (never KEYS, which blocks the server) and
removed with UNLINK in batches; a key outside the dedupe prefix is never
touched, whatever the pattern: every key is checked against the prefix
before it is deleted.

Clearing a claim lets a new stream entry claim the plan id again. The plan's
journal (``quantum:apply:journal:{plan_id}``) is left alone, so a plan that
was already decided stays decided: a republished copy is logged as
``duplicate plan=... first_status=...``. The planner's own
``quantum:apply:dedupe:{plan_id}`` keys are never touched: they are not ours.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.errors import CommandError
from apply_layer.core.log_format import escape_controls
from apply_layer.core.plans import PLAN_ID_CHARS, PLAN_ID_RE, not_a_plan_id
from apply_layer.settings import Settings
from apply_layer.store.connection import close_redis, redis_for

# A glob over plan ids: their characters plus Redis glob syntax (* ? [ ] ^ \).
PATTERN_RE = re.compile(rf"[*?\[\]^\\{PLAN_ID_CHARS}]{{1,128}}")
PREFIX = K.glob_of(K.CLAIM_TEMPLATE).removesuffix("*")
SCAN_COUNT = 1000
DELETE_BATCH = 500


def plan_id_arg(value: str) -> str:
    if not PLAN_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(not_a_plan_id(value))
    return value


def pattern_arg(value: str) -> str:
    if not PATTERN_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a plan-id glob (plan-id characters and * ? [ ] ^ \\ only)"
        )
    return value


def _scan_count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a count within 1..100000")
    return int(value)


@dataclass(frozen=True)
class Selection:
    """Which dedupe keys: these plan ids, or every plan id matching a glob."""

    plans: tuple[str, ...] = ()
    pattern: str | None = None

    def describe(self) -> str:
        if self.plans:
            return "plan " + ", ".join(self.plans)
        return "every plan" if self.pattern == "*" else f"plans matching {self.pattern!r}"


@dataclass(frozen=True)
class ClearReport:
    """What ``dedupe-clear`` found and did."""

    matched: list[str]  # the dedupe keys found (each once)
    deleted: int  # how many were deleted (0 in a dry run)
    missing: list[str]  # plan ids named with --plan that have no dedupe key


def is_dedupe_key(key: str) -> bool:
    """A key this command may delete: the dedupe prefix and a non-empty rest."""
    return key.startswith(PREFIX) and len(key) > len(PREFIX)


async def _candidates(redis: Redis, selection: Selection, scan_count: int) -> AsyncIterator[str]:
    if selection.plans:
        names = list(dict.fromkeys(K.claim(plan) for plan in selection.plans))
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(name)
            found = await pipe.execute()
        for name, exists in zip(names, found, strict=True):
            if exists:
                yield name
        return
    assert selection.pattern is not None
    async for key in redis.scan_iter(match=K.claim(selection.pattern), count=scan_count):
        yield str(key)


async def clear_dedupe(
    redis: Redis,
    selection: Selection,
    *,
    delete: bool,
    scan_count: int = SCAN_COUNT,
    batch: int = DELETE_BATCH,
    on_key: Callable[[str], None] | None = None,
) -> ClearReport:
    """Find the selected dedupe keys; with ``delete``, UNLINK them ``batch`` at a time.

    Deleting while SCAN walks the keyspace is safe: SCAN still returns every
    key that exists for the whole walk, and may return one twice (kept once).
    """
    seen: dict[str, None] = {}
    pending: list[str] = []
    deleted = 0
    async for key in _candidates(redis, selection, scan_count):
        if key in seen or not is_dedupe_key(key):
            continue
        seen[key] = None
        if on_key is not None:
            on_key(key)
        if delete:
            pending.append(key)
            if len(pending) >= batch:
                deleted += int(await redis.unlink(*pending))
                pending.clear()
    if pending:
        deleted += int(await redis.unlink(*pending))
    found = {key.removeprefix(PREFIX) for key in seen}
    missing = [plan for plan in dict.fromkeys(selection.plans) if plan not in found]
    return ClearReport(matched=list(seen), deleted=deleted, missing=missing)


def selection_from(plans: Sequence[str] | None, pattern: str | None, everything: bool) -> Selection:
    if plans:
        return Selection(plans=tuple(plans))
    if everything:
        return Selection(pattern="*")
    if pattern:
        return Selection(pattern=pattern)
    raise CommandError("dedupe-clear needs a selector: --plan ID, --pattern GLOB or --all")


def _print_escaped(key: str) -> None:
    print(escape_controls(key))


async def cmd_dedupe_clear(settings: Settings, args: argparse.Namespace) -> int:
    selection = selection_from(args.plan, args.pattern, args.all)
    redis = redis_for(settings, name="apply_layer:dedupe-clear")  # sentinels too
    try:
        outcome = await clear_dedupe(
            redis,
            selection,
            delete=args.yes,
            scan_count=args.scan_count,
            # A key name is anyone's text: escaped, it cannot draw on the terminal.
            on_key=None if args.yes or args.quiet else _print_escaped,
        )
    except BrokenPipeError:  # a dry run's list piped to `head`: the reader has enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        await close_redis(redis)
    for plan in outcome.missing:
        print(f"no dedupe key for plan {plan}")
    what = f"dedupe keys ({selection.describe()})"
    if args.yes:
        print(f"deleted {outcome.deleted} of {len(outcome.matched)} {what}")
    else:
        print(
            f"would delete {len(outcome.matched)} {what}; dry run, nothing deleted "
            "(add --yes to delete)"
        )
    return 0


def register(sub: Any) -> None:
    """Add ``dedupe-clear`` to the CLI's subparsers."""
    p = sub.add_parser(
        "dedupe-clear",
        help=f"delete {K.CLAIM_TEMPLATE} keys (SCAN, never KEYS); dry run without --yes",
        description="Delete the daemon's claim keys (quantum:apply:claim:*) so that a "
        "republished plan id can be claimed again; a plan already decided stays decided "
        "(its copies are logged as duplicates). The planner's quantum:apply:dedupe:* keys "
        "are never touched. Without --yes, only list what would be deleted.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--plan", action="append", type=plan_id_arg, metavar="ID", help="a plan id (repeatable)"
    )
    which.add_argument(
        "--pattern", type=pattern_arg, metavar="GLOB", help="a glob over plan ids, e.g. 'abc*'"
    )
    which.add_argument("--all", action="store_true", help="every dedupe key")
    p.add_argument("--yes", action="store_true", help="delete (default: list only)")
    p.add_argument("-q", "--quiet", action="store_true", help="dry run: print the count only")
    p.add_argument(
        "--scan-count",
        type=_scan_count,
        default=SCAN_COUNT,
        metavar="N",
        help=f"SCAN COUNT hint per call (default {SCAN_COUNT})",
    )
    p.set_defaults(func=cmd_dedupe_clear)
