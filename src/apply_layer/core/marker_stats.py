"""``apply-layer stats``: what the ``[PERMIT_WAIT]`` markers say (docs/CONTRACT.md 5, 6).

This module is the pure core: :func:`parse_line` reads a log line,
:class:`Summary` tallies lines or result entries, :func:`build_report` makes
the JSON-ready report and :func:`render_text` the operator's text. The thin
I/O (journald, files, stdin, the result stream) and the command line are in
``commands/stats.py``.

Lines may carry a prefix (journald's, a timestamp, a level word: no ``=``, quote
or backslash, which only a field has) before the marker, and
may be this service's console lines, its JSON lines (the console line in
``message``; ``plan_id``, ``symbol``, ``wait_ms``, ``reason`` fill any gap)
or the old service's lines (no symbol; a BLOCK may lack ``wait_ms``; its
reason may sit in ``info={'reason': ...}``, a Python dict's repr, or a bare
category word may follow ``BLOCK``: ``BLOCK p33_denied plan=... reason=...``
counts as ``p33_denied:<reason>``). Each
line read counts once: as a record (OK or BLOCK), as ``unparsed`` (it has the
marker but cannot be read) or as ``other`` (no marker: the service's other
log lines, blank lines; not an error, a journal holds mostly those).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from apply_layer.core.log_format import PERMIT_WAIT

PERCENTILES = (50, 95, 99)
# Bucket bounds in ms around the 1200 ms permit deadline: bucket i holds
# EDGES[i-1] <= wait_ms < EDGES[i]; the first starts at 0, the last is open.
BUCKET_EDGES = (1, 5, 20, 50, 100, 250, 500, 1000, 1500)
BAR_WIDTH = 40
NO_REASON = "(no reason)"

WaitOutcome = Literal["OK", "BLOCK"]  # a [PERMIT_WAIT] line's verdict
Other = Literal["other", "unparsed"]


@dataclass(frozen=True)
class PermitEvent:
    """One permit decision, from a marker line or a result-stream entry."""

    outcome: WaitOutcome
    plan_id: str | None = None
    symbol: str | None = None
    wait_ms: int | None = None
    reason: str | None = None  # BLOCK only


# ----------------------------------------------------------------- parsing (pure)

_FIELD = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=")
NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# The old service's ``info={'reason': 'missing_p33', 'gov_ttl': 50, ...}`` (a dict's repr).
_INFO_REASON = re.compile(r"""['"]reason['"]\s*:\s*['"]([^'"]{1,200})['"]""")
MAX_WAIT_MS = 1e12
# What a key=value field or a quoted value has, and no log prefix has.
_NOT_A_PREFIX = re.compile(r"""[='"\\]""")


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
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < MAX_WAIT_MS:
        return round(value)
    if isinstance(value, str) and NUMBER_RE.fullmatch(value.strip()):
        number = float(value)  # a 400-digit text is inf: out of range, not an error
        return round(number) if number < MAX_WAIT_MS else None
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
    category = head.strip()
    if category and not (words[0] == "BLOCK" and CATEGORY_RE.fullmatch(category)):
        return None
    if not plan or ("wait_ms" in fields and wait is None):
        return None
    reason = None
    if words[0] == "BLOCK":
        reason = fields.get("reason") or _info_reason(fields.get("info"))
        reason = reason or _text(extra.get("reason"))
        if category:
            reason = f"{category}:{reason}" if reason else category
        reason = reason or NO_REASON
    symbol = fields.get("symbol") or _text(extra.get("symbol"))
    return PermitEvent("OK" if words[0] == "OK" else "BLOCK", plan, symbol, wait, reason)


def _info_reason(info: str | None) -> str | None:
    match = _INFO_REASON.search(info) if info else None
    return (match.group(1).strip() or None) if match else None


def _a_prefix(text: str) -> bool:
    """Whether ``text`` may stand before a line's message: journald's ``host app[1]: ``,
    a timestamp, the old service's level word. Never a field: a ``key=`` or a quote
    before the marker means it sits in another event's value (an injected
    ``consumer='x [PERMIT_WAIT] OK ...'``), which is not a decision."""
    return not _NOT_A_PREFIX.search(text)


def parse_line(line: str) -> PermitEvent | Other:
    """One log line: its event, ``"unparsed"`` (marker, unreadable) or ``"other"``.

    The marker counts only where it starts the line's message (:func:`_a_prefix`):
    a marker inside another event's value is ``"unparsed"``, never a decision.
    """
    at = line.find(PERMIT_WAIT)
    if at < 0:
        return "other"
    brace = line.find("{")
    if brace < 0 or brace > at:  # a console line
        if not _a_prefix(line[:at]):
            return "unparsed"
        return parse_marker(line[at + len(PERMIT_WAIT) :]) or "unparsed"
    if not _a_prefix(line[:brace]):  # an object inside another line's value
        return "unparsed"
    try:  # a JSON line, after whatever prefix
        obj, _ = json.JSONDecoder().raw_decode(line, brace)
    except (ValueError, RecursionError):
        return "unparsed"  # truncated, say
    obj = obj if isinstance(obj, dict) else {}
    message = obj.get("message", obj.get("msg"))
    if not isinstance(message, str) or PERMIT_WAIT not in message:
        return "unparsed"
    at = message.find(PERMIT_WAIT)
    if not _a_prefix(message[:at]):
        return "unparsed"
    return parse_marker(message[at + len(PERMIT_WAIT) :], obj) or "unparsed"


def classify_result(fields: Mapping[str, str]) -> PermitEvent | Other:
    """One ``apply.result`` entry (docs/CONTRACT.md 2) as a permit decision.

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
