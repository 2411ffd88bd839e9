"""``apply-layer stats``: what the ``[PERMIT_WAIT]`` markers say (CONTRACT 2.3, 4).

The core is pure: :func:`parse_line` reads a log line, :class:`Summary`
tallies lines or result entries, :func:`build_report` makes the JSON-ready
report and :func:`render_text` the operator's text. The I/O is thin.

Lines may carry any prefix (journald's, a timestamp) before the marker, and
may be this service's console lines, its JSON lines (the console line in
``message``; ``plan_id``, ``symbol``, ``wait_ms``, ``reason`` fill any gap)
or the old service's lines (no symbol; a BLOCK may lack ``wait_ms``). Each
line read counts once: as a record (OK or BLOCK), as ``unparsed`` (it has the
marker but cannot be read) or as ``other`` (no marker: the service's other
log lines, blank lines; not an error, a journal holds mostly those).
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
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, Literal

from apply_layer import keys as K
from apply_layer.errors import CommandError
from apply_layer.logs import PERMIT_WAIT
from apply_layer.redis_client import create_redis
from apply_layer.settings import Settings

JOURNALCTL = "journalctl"
DEFAULT_UNIT = "quantum-apply-layer"
PERCENTILES = (50, 95, 99)
# Bucket bounds in ms around the 1200 ms permit deadline: bucket i holds
# EDGES[i-1] <= wait_ms < EDGES[i]; the first starts at 0, the last is open.
BUCKET_EDGES = (1, 5, 20, 50, 100, 250, 500, 1000, 1500)
REDIS_PAGE = 1000
BAR_WIDTH = 40
NO_REASON = "(no reason)"

Outcome = Literal["OK", "BLOCK"]
Other = Literal["other", "unparsed"]


@dataclass(frozen=True)
class PermitEvent:
    """One permit decision, from a marker line or a result-stream entry."""

    outcome: Outcome
    plan_id: str | None = None
    symbol: str | None = None
    wait_ms: int | None = None
    reason: str | None = None  # BLOCK only


# ----------------------------------------------------------------- parsing (pure)

_FIELD = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _fields(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first ``key=``, and each ``key=value`` (values may hold spaces)."""
    found = list(_FIELD.finditer(text))
    if not found:
        return text, {}
    ends = [m.start() for m in found[1:]] + [len(text)]
    pairs: dict[str, str] = {}
    for match, end in zip(found, ends, strict=True):
        pairs.setdefault(match.group(1), text[match.end() : end].strip())
    return text[: found[0].start()], pairs


def _wait_ms(value: object) -> int | None:
    """A non-negative wait in ms (rounded), or None when absent or malformed."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e12:
        return round(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return round(float(value))
    return None


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def parse_marker(text: str, extra: Mapping[str, Any] | None = None) -> PermitEvent | None:
    """The event in ``text`` (what follows ``[PERMIT_WAIT]``), or None if unreadable.

    ``extra`` holds a JSON line's other fields, read only where the text is silent.
    """
    words = text.split(None, 1)
    if not words or words[0] not in ("OK", "BLOCK"):
        return None
    head, fields = _fields(words[1] if len(words) > 1 else "")
    extra = extra or {}
    plan = fields.get("plan") or _text(extra.get("plan_id"))
    wait = _wait_ms(fields["wait_ms"] if "wait_ms" in fields else extra.get("wait_ms"))
    if head.strip() or not plan or ("wait_ms" in fields and wait is None):
        return None
    reason = None
    if words[0] == "BLOCK":
        reason = fields.get("reason") or _text(extra.get("reason")) or NO_REASON
    symbol = fields.get("symbol") or _text(extra.get("symbol"))
    return PermitEvent("OK" if words[0] == "OK" else "BLOCK", plan, symbol, wait, reason)


def parse_line(line: str) -> PermitEvent | Other:
    """One log line: its event, ``"unparsed"`` (marker, unreadable) or ``"other"``."""
    at = line.find(PERMIT_WAIT)
    if at < 0:
        return "other"
    brace = line.find("{")
    if brace < 0 or brace > at:  # a console line
        return parse_marker(line[at + len(PERMIT_WAIT) :]) or "unparsed"
    try:  # a JSON line, after whatever prefix
        obj, _ = json.JSONDecoder().raw_decode(line, brace)
    except ValueError:
        return "unparsed"  # truncated, say
    obj = obj if isinstance(obj, dict) else {}
    message = obj.get("message", obj.get("msg"))
    if not isinstance(message, str) or PERMIT_WAIT not in message:
        return "unparsed"
    at = message.find(PERMIT_WAIT)
    return parse_marker(message[at + len(PERMIT_WAIT) :], obj) or "unparsed"


def classify_result(fields: Mapping[str, str]) -> PermitEvent | Other:
    """One ``apply.result`` entry (CONTRACT 2.1) as a permit decision.

    ``BLOCKED`` is a BLOCK (``error`` is the reason); an entry that passed every
    gate (``would_execute`` ``True``, or ``EXECUTED``) is an OK whatever the
    exchange said next; anything else (``SKIPPED``, an invalid plan) never
    reached a permit decision: ``"other"``. No status at all: ``"unparsed"``.
    """
    status = fields.get("status", "").strip().upper()
    if not status:
        return "unparsed"
    plan, symbol = _text(fields.get("plan_id")), _text(fields.get("symbol"))
    wait = _wait_ms(fields.get("wait_ms"))
    if status == "BLOCKED":
        return PermitEvent("BLOCK", plan, symbol, wait, _text(fields.get("error")) or NO_REASON)
    if status == "EXECUTED" or fields.get("would_execute") == "True":
        return PermitEvent("OK", plan, symbol, wait)
    return "other"


# ----------------------------------------------------------------- tally (pure)


@dataclass
class Summary:
    """Counts over lines or result entries: ``read == ok + block + other + unparsed``."""

    read: int = 0
    other: int = 0
    unparsed: int = 0
    ok: int = 0
    block: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    waits: list[int] = field(default_factory=list)
    symbols: dict[str, Counter[str]] = field(default_factory=dict)
    without_symbol: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # result entries only

    def add(self, item: PermitEvent | Other) -> None:
        self.read += 1
        if item == "other":
            self.other += 1
        elif not isinstance(item, PermitEvent):
            self.unparsed += 1
        else:
            if item.outcome == "OK":
                self.ok += 1
            else:
                self.block += 1
                self.reasons[item.reason or NO_REASON] += 1
            if item.wait_ms is not None:
                self.waits.append(item.wait_ms)
            if item.symbol:
                self.symbols.setdefault(item.symbol, Counter())[item.outcome] += 1
            else:
                self.without_symbol += 1

    def add_line(self, line: str) -> None:
        self.add(parse_line(line))

    def add_result(self, fields: Mapping[str, str]) -> None:
        self.statuses[fields.get("status", "").strip().upper() or "(none)"] += 1
        self.add(classify_result(fields))


def summarize_lines(lines: Iterable[str]) -> Summary:
    summary = Summary()
    for line in lines:
        summary.add_line(line)
    return summary


def percentile(ordered: Sequence[int], p: int) -> int:
    """Nearest-rank percentile of ``ordered`` (sorted ascending, not empty), ``0 <= p <= 100``.

    The value at 1-based rank ``ceil(p/100 * n)`` (rank 1 for ``p`` 0): the
    smallest observed value with at least ``p`` % of the values at or below
    it. Always an observed value, never decreasing in ``p``; ``p`` 0 is the
    minimum, 100 the maximum. Integer arithmetic: no float rounding moves a rank.
    """
    if not ordered or not 0 <= p <= 100:
        raise ValueError(f"no percentile {p} of {len(ordered)} values")
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1]


def bucket_labels() -> list[str]:
    inner = [f"{lo}-{hi}" for lo, hi in pairwise(BUCKET_EDGES)]
    return [f"<{BUCKET_EDGES[0]}", *inner, f">={BUCKET_EDGES[-1]}"]


def histogram(waits: Iterable[int]) -> list[int]:
    """Counts per bucket of :data:`BUCKET_EDGES` (``len(BUCKET_EDGES) + 1`` buckets)."""
    counts = [0] * (len(BUCKET_EDGES) + 1)
    for wait in waits:
        counts[bisect_right(BUCKET_EDGES, wait)] += 1
    return counts


def build_report(
    summary: Summary, *, deadline_ms: int, source: Mapping[str, Any]
) -> dict[str, Any]:
    """The report as one JSON-ready object (``--json`` prints it; the text is drawn from it)."""
    ordered = sorted(summary.waits)
    marks = (("min", 0), *((f"p{p}", p) for p in PERCENTILES), ("max", 100))
    waits: dict[str, Any] = {"count": len(ordered), "method": "nearest-rank"}
    waits |= {name: percentile(ordered, p) if ordered else None for name, p in marks}
    waits["deadline_ms"] = deadline_ms
    waits["at_or_over_deadline"] = len(ordered) - bisect_left(ordered, deadline_ms)
    edges: list[int | None] = [0, *BUCKET_EDGES, None]
    counts = zip(bucket_labels(), histogram(ordered), strict=True)
    reasons = sorted(summary.reasons.items(), key=lambda item: (-item[1], item[0]))
    return {
        "source": dict(source),
        "read": summary.read,
        "records": summary.ok + summary.block,
        "other": summary.other,
        "unparsed": summary.unparsed,
        "ok": summary.ok,
        "block": summary.block,
        "block_reasons": [{"reason": r, "count": n} for r, n in reasons],
        "wait_ms": waits,
        "histogram": [
            {"bucket": label, "from_ms": edges[i], "to_ms": edges[i + 1], "count": n}
            for i, (label, n) in enumerate(counts)
        ],
        "symbols": {
            sym: {"ok": c["OK"], "block": c["BLOCK"]} for sym, c in sorted(summary.symbols.items())
        },
        "without_symbol": summary.without_symbol,
        "statuses": dict(sorted(summary.statuses.items())),
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal."""
    src, records, ok, block = report["source"], report["records"], report["ok"], report["block"]
    unit = "entries" if src.get("kind") == "redis" else "lines"
    out = [
        f"[PERMIT_WAIT] stats from {src.get('label', src.get('kind'))}",
        f"  {unit} read {report['read']}   records {records}   other {report['other']}"
        f"   unparsed {report['unparsed']}",
        f"  OK {ok} ({_pct(ok, records)})   BLOCK {block} ({_pct(block, records)})",
    ]
    if report["block_reasons"]:
        out.append("block reasons:")
        out += [f"  {r['count']:>7}  {r['reason']}" for r in report["block_reasons"]]
    w = report["wait_ms"]
    out.append(f"wait_ms ({w['count']} of {records} records carry it; nearest-rank):")
    if w["count"]:
        figures = "  ".join(f"{k} {w[k]}" for k in ("min", "p50", "p95", "p99", "max"))
        over = f"at/over the {w['deadline_ms']} ms deadline {w['at_or_over_deadline']}"
        out.append(f"  {figures}   {over}")
        top = max(b["count"] for b in report["histogram"])
        for b in report["histogram"]:
            bar = "#" * (max(1, b["count"] * BAR_WIDTH // top) if b["count"] else 0)
            out.append(f"  {b['bucket'] + ' ms':>12} |{bar:<{BAR_WIDTH}} {b['count']}")
    if report["symbols"]:
        out.append("per symbol:")
        for sym, c in report["symbols"].items():
            out.append(f"  {sym:<14} OK {c['ok']:>7}   BLOCK {c['block']:>7}")
        if report["without_symbol"]:
            out.append(f"  {'(no symbol)':<14} records {report['without_symbol']}")
    if report["statuses"]:
        out.append("result statuses:")
        out += [f"  {n:>7}  {s}" for s, n in report["statuses"].items()]
    return "\n".join(out)


_AGO = re.compile(r"-?\s*(\d+)\s*([a-z]+?)s?(?:\s+ago)?")
_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_SECONDS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800}


def parse_since(text: str, now: float | None = None) -> int:
    """``--since`` for the result stream, as epoch ms (stream ids are epoch ms).

    Accepts ``-1h``, ``90s``, ``30 min ago``, ``2 hours ago``, ``now``,
    ``today``, ``yesterday``, ``@EPOCH`` and ISO dates or times (``2026-01-25
    00:00``; without a zone they are local time, as for ``journalctl``).
    """
    now = time.time() if now is None else now
    word = text.strip().lower()
    if (ago := _AGO.fullmatch(word)) and ago.group(2) in _SECONDS:
        return int((now - int(ago.group(1)) * _SECONDS[ago.group(2)]) * 1000)
    if word.startswith("@") and _NUMBER.fullmatch(word[1:]):
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
        raise ValueError(
            f"cannot read {text!r}: use e.g. -1h, '30 min ago', today, '2026-01-25 00:00', @EPOCH"
        ) from None


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


async def read_results(url: str, since_ms: int | None, count: int | None) -> Summary:
    """Tally ``apply.result`` entries from ``since_ms`` (all, or only the last ``count``)."""
    low = f"{since_ms}-0" if since_ms is not None else "-"
    summary = Summary()
    redis = create_redis(url, name="apply_layer:stats")
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
        await redis.aclose()


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
        summary = await read_results(settings.redis_url, since_ms, args.count)
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
