"""``apply-layer stats``: the I/O and the command line around ``core/marker_stats.py``.

Sources: journald (``journalctl -u UNIT -o cat``), a file, stdin, or the
result stream (``--from-redis``). Each feeds lines or entries into a
:class:`~apply_layer.core.marker_stats.Summary`; nothing here interprets a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import stat
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from apply_layer.core import keys as K
from apply_layer.core.errors import CommandError
from apply_layer.core.marker_stats import (
    NUMBER_RE,
    Summary,
    build_report,
    render_text,
    summarize_lines,
)
from apply_layer.settings import Settings
from apply_layer.store.connection import close_redis, redis_for

JOURNALCTL = "journalctl"
DEFAULT_UNIT = "quantum-apply-layer"
REDIS_PAGE = 1000


_AGO = re.compile(r"-?\s*(\d+)\s*([a-z]+?)s?(?:\s+ago)?")
_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_SECONDS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800}


# Stream ids are epoch ms; a --since outside 1970..9999 is a typo, not a time.
MAX_SINCE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def parse_since(text: str, now: float | None = None) -> int:
    """``--since`` for the result stream, as epoch ms (stream ids are epoch ms).

    Accepts ``-1h``, ``90s``, ``30 min ago``, ``2 hours ago``, ``now``,
    ``today``, ``yesterday``, ``@EPOCH`` and ISO dates or times (``2026-01-25
    00:00``; without a zone they are local time, as for ``journalctl``).
    Anything else, or a time before 1970 or after 9999, is a ValueError
    with a one-line message (an absurd number must not be a traceback).
    """
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        ms = _since_ms(text, time.time() if now is None else now)
    except (ValueError, OverflowError):  # int/float limits, datetime's range
        ms = None
    if ms is None:
        raise ValueError(
            f"cannot read {shown!r}: use e.g. -1h, '30 min ago', today, '2026-01-25 00:00', @EPOCH"
        )
    if not 0 <= ms <= MAX_SINCE_MS:
        raise ValueError(f"{shown!r} is out of range (before 1970 or after 9999)")
    return ms


def _since_ms(text: str, now: float) -> int | None:
    word = text.strip().lower()
    if (ago := _AGO.fullmatch(word)) and ago.group(2) in _SECONDS:
        return int((now - int(ago.group(1)) * _SECONDS[ago.group(2)]) * 1000)
    if word.startswith("@") and NUMBER_RE.fullmatch(word[1:]):
        return int(float(word[1:]) * 1000)
    midnight = datetime.fromtimestamp(now).astimezone().replace(hour=0, minute=0, second=0)
    midnight = midnight.replace(microsecond=0)
    named = {"now": now, "today": midnight.timestamp()}
    named["yesterday"] = (midnight - timedelta(days=1)).timestamp()
    if word in named:
        return int(named[word] * 1000)
    try:
        return int(datetime.fromisoformat(text.strip()).astimezone().timestamp() * 1000)
    except ValueError:
        return None


# ----------------------------------------------------------------- I/O (thin)


def read_file(path: str) -> Summary:
    """Tally a file, or stdin for ``-``; an unreadable file is a CommandError."""
    try:
        if path == "-":  # bytes that are not UTF-8 must not stop the tally
            raw = getattr(sys.stdin, "buffer", None)
            if raw is None:
                return summarize_lines(sys.stdin)
            return summarize_lines(line.decode("utf-8", "replace") for line in raw)
        with open(path, encoding="utf-8", errors="replace") as handle:
            return summarize_lines(handle)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None


async def read_journal(unit: str, since: str | None) -> Summary:
    """Tally ``journalctl -u UNIT -o cat --no-pager [--since SINCE]``, streamed."""
    argv = [JOURNALCTL, "-u", unit, "-o", "cat", "--no-pager"]
    argv += ["--since", since] if since else []
    pipe = asyncio.subprocess.PIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe, limit=1 << 24
        )
    except OSError as exc:
        raise CommandError(
            f"cannot run {JOURNALCTL}: {exc.strerror or exc} "
            "(read a saved log with --file PATH, or pipe it on stdin)"
        ) from None
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    summary = Summary()
    try:
        async for raw in proc.stdout:
            summary.add_line(raw.decode("utf-8", "replace"))
        stderr = (await errors).decode("utf-8", "replace").strip().splitlines()
        code = await proc.wait()
    finally:
        if proc.returncode is None:  # interrupted: leave no journalctl behind
            proc.kill()
            await proc.wait()
    if code != 0:
        why = stderr[-1] if stderr else "no message"
        raise CommandError(f"{' '.join(argv)} failed (exit {code}): {why}")
    if stderr and not summary.read:
        print(f"{JOURNALCTL}: {stderr[-1]}", file=sys.stderr)
    return summary


async def read_results(settings: Settings, since_ms: int | None, count: int | None) -> Summary:
    """Tally ``apply.result`` entries from ``since_ms`` (all, or only the last ``count``).

    Through the sentinels when ``APPLY_REDIS_SENTINELS`` is set, like the daemon.
    """
    low = f"{since_ms}-0" if since_ms is not None else "-"
    summary = Summary()
    redis = redis_for(settings, name="apply_layer:stats")
    try:
        if count is not None:
            rows: Any = await redis.xrevrange(K.RESULT_STREAM, max="+", min=low, count=count)
            for _, fields in reversed(rows or []):
                summary.add_result(fields)
            return summary
        while True:
            page: Any = await redis.xrange(K.RESULT_STREAM, min=low, max="+", count=REDIS_PAGE)
            for _, fields in page or []:
                summary.add_result(fields)
            if len(page or []) < REDIS_PAGE:
                return summary
            ms, _, seq = str(page[-1][0]).partition("-")
            low = f"{ms}-{int(seq or 0) + 1}"  # the next id ("(" needs Redis 6.2)
    finally:
        await close_redis(redis)


def stdin_is_piped() -> bool:
    """stdin is a pipe or a redirected file (not a terminal, not /dev/null)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _source(args: argparse.Namespace) -> tuple[str, int | None]:
    """``redis``, ``file``, ``stdin`` or ``journal``, and ``--since`` in epoch ms for Redis.

    A misplaced option is a usage error (exit status 2), as argparse's own are.
    """
    parser: argparse.ArgumentParser = args.stats_parser
    source = "redis" if args.from_redis else "file" if args.file else "journal"
    if source == "journal" and not args.journal and args.unit is None and stdin_is_piped():
        source = "stdin"
    if args.unit is not None and source != "journal":
        parser.error("--unit applies to journald only")
    if args.count is not None and source != "redis":
        parser.error("--count applies to --from-redis only")
    if args.since is not None and source in ("file", "stdin"):
        parser.error("--since applies to journald (--journal) and --from-redis only")
    since_ms = None
    if source == "redis" and args.since is not None:
        try:
            since_ms = parse_since(args.since)
        except ValueError as exc:
            parser.error(f"--since: {exc}")
    return source, since_ms


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    source, since_ms = _source(args)
    info: dict[str, Any] = {"kind": source}
    if source == "redis":
        info |= {"stream": K.RESULT_STREAM, "since": args.since, "count": args.count}
        info["label"] = f"redis stream {K.RESULT_STREAM}"
        summary = await read_results(settings, since_ms, args.count)
    elif source == "journal":
        unit = args.unit or DEFAULT_UNIT
        info |= {"unit": unit, "since": args.since, "label": f"journald unit {unit}"}
        summary = await read_journal(unit, args.since)
    else:
        path = args.file or "-"
        info |= {"path": path, "label": "stdin" if path == "-" else f"file {path}"}
        summary = read_file(path)
    info["label"] += (f" since {args.since}" if args.since else "") + (
        f" (last {args.count})" if args.count else ""
    )
    report = build_report(summary, deadline_ms=settings.permit_wait_ms, source=info)
    try:
        print(json.dumps(report, indent=2) if args.json else render_text(report), flush=True)
    except BrokenPipeError:  # `| head` stopped reading: not a failure
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def register(sub: Any) -> None:
    """Add ``stats`` to the CLI's subparsers."""
    p = sub.add_parser(
        "stats",
        help="OK/BLOCK counts, block reasons, wait_ms figures from the [PERMIT_WAIT] markers",
        description="Report what the [PERMIT_WAIT] lines say, read from journald (the "
        "default), a file or piped stdin; or the same figures from the result stream.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--journal", action="store_true", help="journald even if stdin is piped")
    where.add_argument("--file", metavar="PATH", help="a saved log ('-' for stdin)")
    where.add_argument("--from-redis", action="store_true", help=f"the {K.RESULT_STREAM} stream")
    p.add_argument("--unit", help=f"journald: the systemd unit (default {DEFAULT_UNIT})")
    p.add_argument(
        "--since",
        help="journald: passed to journalctl --since; --from-redis: -1h, '30 min ago', "
        "today, '2026-01-25 00:00', @EPOCH",
    )
    p.add_argument("--count", type=_positive_int, help="--from-redis: only the last N entries")
    p.add_argument("--json", action="store_true", help="one JSON object, for machines")
    p.set_defaults(func=cmd_stats, stats_parser=p)
