"""``apply-layer stats``: the pure parsing and tally, and the thin I/O around them."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis as sync_redis
from hypothesis import given
from hypothesis import strategies as st

from apply_layer.commands import main
from apply_layer.commands import stats as stats_command
from apply_layer.commands.stats import parse_since
from apply_layer.core import keys as K
from apply_layer.core.log_format import permit_block_line, permit_ok_line
from apply_layer.core.marker_stats import (
    BUCKET_EDGES,
    PermitEvent,
    Summary,
    bucket_labels,
    build_report,
    classify_result,
    histogram,
    parse_line,
    percentile,
    render_text,
    summarize_lines,
)
from apply_layer.logs import get_logger, setup_logging
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.harness import cli_database

OLD_OK = "[PERMIT_WAIT] OK plan=67e6da21fa9fe506 wait_ms=345 safe_qty=0.0080"
OLD_BLOCK = "[PERMIT_WAIT] BLOCK plan=abc123def456 reason=missing_p33 gov_ttl=50 p33_ttl=-10"
NEW_OK = permit_ok_line("p1", "BTCUSDT", 12, Decimal("0.002"))
NEW_BLOCK = permit_block_line("p2", "ETHUSDT", 1201, "missing_p33", {"governor": 50, "p33": -2})

MIXED_LOG = "\n".join(
    [
        "Jan 25 00:36:20 vps systemd[1]: Started quantum-apply-layer.service.",
        f"Jan 25 00:45:15 vps python[1140899]: {OLD_OK}",
        f"Jan 25 00:46:15 vps python[1140899]: {OLD_BLOCK}",
        NEW_OK,
        NEW_BLOCK,
        json.dumps(
            {
                "message": "[PERMIT_WAIT] BLOCK plan=p3 symbol=BTCUSDT wait_ms=3 "
                "reason=p33_permit_denied:no_position governor_ttl=50 p33_ttl=40",
                "level": "WARNING",
                "plan_id": "p3",
            }
        ),
        "",
        "info     plan_received plan_id=p4 symbol=BTCUSDT",
        "[PERMIT_WAIT] OK plan=",  # truncated
    ]
)


def _json_marker_lines() -> list[str]:
    """Marker lines as the service's own JSON logging writes them."""
    buffer = io.StringIO()
    setup_logging("INFO", "json", stream=buffer)
    log = get_logger()
    fields = {"marker": "PERMIT_WAIT", "plan_id": "j1", "symbol": "BTCUSDT", "wait_ms": 77}
    log.info(permit_ok_line("j1", "BTCUSDT", 77, Decimal("0.5")), safe_qty="0.5", **fields)
    fields |= {"plan_id": "j2", "wait_ms": 1200}
    line = permit_block_line("j2", "BTCUSDT", 1200, "missing_all", {"governor": -2, "p33": -2})
    log.warning(line, reason="missing_all", **fields)
    log.info("heartbeat", consumer="c1")
    return buffer.getvalue().splitlines()


# ---------------------------------------------------------------- parsing


def test_parses_this_services_console_lines() -> None:
    assert parse_line(NEW_OK) == PermitEvent("OK", "p1", "BTCUSDT", 12)
    assert parse_line(NEW_BLOCK) == PermitEvent("BLOCK", "p2", "ETHUSDT", 1201, "missing_p33")


def test_parses_the_old_services_lines_without_symbol_or_wait() -> None:
    assert parse_line(OLD_OK) == PermitEvent("OK", "67e6da21fa9fe506", None, 345)
    assert parse_line(OLD_BLOCK) == PermitEvent("BLOCK", "abc123def456", None, None, "missing_p33")
    prefixed = "Jan 25 00:46:15 vps python[1140899]: WARNING " + OLD_BLOCK
    assert parse_line(prefixed) == parse_line(OLD_BLOCK)


def test_parses_json_lines_as_the_service_writes_them() -> None:
    ok, block, other = _json_marker_lines()
    assert json.loads(ok)["message"].startswith("[PERMIT_WAIT] OK")
    assert parse_line(ok) == PermitEvent("OK", "j1", "BTCUSDT", 77)
    assert parse_line(block) == PermitEvent("BLOCK", "j2", "BTCUSDT", 1200, "missing_all")
    assert parse_line(other) == "other"
    # journald's prefix before the object, and fields filling what the message lacks
    line = 'vps app[1]: {"message": "[PERMIT_WAIT] BLOCK plan=x", "symbol": "SOLUSDT", ' + (
        '"wait_ms": 9, "reason": "kill_switch"}'
    )
    assert parse_line(line) == PermitEvent("BLOCK", "x", "SOLUSDT", 9, "kill_switch")


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (
            "[PERMIT_WAIT] BLOCK plan=abc123 symbol=BTCUSDT wait_ms=1201 "
            "info={'reason': 'missing_p33', 'gov_ttl': 50, 'p33_ttl': -2}",
            PermitEvent("BLOCK", "abc123", "BTCUSDT", 1201, "missing_p33"),
        ),
        (
            "[PERMIT_WAIT] BLOCK p33_denied plan=abc123 symbol=ETHUSDT "
            "reason=reconcile_hold_active",
            PermitEvent("BLOCK", "abc123", "ETHUSDT", None, "p33_denied:reconcile_hold_active"),
        ),
        (
            "[PERMIT_WAIT] BLOCK invalid_p33_format plan=abc123 symbol=BTCUSDT",
            PermitEvent("BLOCK", "abc123", "BTCUSDT", None, "invalid_p33_format"),
        ),
        (
            "[PERMIT_WAIT] BLOCK invalid_safe_qty plan=abc123 symbol=BTCUSDT safe_qty=0",
            PermitEvent("BLOCK", "abc123", "BTCUSDT", None, "invalid_safe_qty"),
        ),
        (
            "Jan 25 00:46:15 vps python[1140899]: WARNING [PERMIT_WAIT] BLOCK p33_denied "
            "plan=abc123 symbol=ETHUSDT reason=exposure cap",
            PermitEvent("BLOCK", "abc123", "ETHUSDT", None, "p33_denied:exposure cap"),
        ),
    ],
)
def test_parses_every_block_form_of_the_old_service(line: str, event: PermitEvent) -> None:
    assert parse_line(line) == event


def test_a_journal_of_old_block_forms_counts_every_block_with_its_reason() -> None:
    lines = [
        "[PERMIT_WAIT] OK plan=a1 symbol=BTCUSDT wait_ms=340 safe_qty=0.0100",
        "[PERMIT_WAIT] BLOCK plan=a2 symbol=BTCUSDT wait_ms=1201 "
        "info={'reason': 'missing_p33', 'gov_ttl': 50, 'p33_ttl': -2}",
        "[PERMIT_WAIT] BLOCK p33_denied plan=a3 symbol=BTCUSDT reason=reconcile_hold_active",
        "[PERMIT_WAIT] BLOCK invalid_p33_format plan=a4 symbol=BTCUSDT",
        "[PERMIT_WAIT] BLOCK invalid_safe_qty plan=a5 symbol=BTCUSDT safe_qty=0.0",
        "[PERMIT_WAIT] BLOCK plan=a6 symbol=BTCUSDT wait_ms=1200 "
        "info={'reason': 'missing_p33', 'gov_ttl': -2, 'p33_ttl': -2}",
    ]
    summary = summarize_lines(lines)
    assert (summary.ok, summary.block, summary.unparsed) == (1, 5, 0)
    assert summary.reasons == {
        "missing_p33": 2,
        "p33_denied:reconcile_hold_active": 1,
        "invalid_p33_format": 1,
        "invalid_safe_qty": 1,
    }


@pytest.mark.parametrize(
    "line",
    [
        "[PERMIT_WAIT] BLOCK Two Words plan=p1",
        "[PERMIT_WAIT] BLOCK UPPER plan=p1",
        "[PERMIT_WAIT] OK p33_denied plan=p1 wait_ms=3",  # a category belongs to BLOCK only
        "[PERMIT_WAIT] BLOCK p33_denied",  # no plan
    ],
)
def test_what_a_category_is_not(line: str) -> None:
    assert parse_line(line) == "unparsed"


def test_absurd_numbers_and_nesting_are_skipped_not_fatal() -> None:
    huge = "9" * 400
    assert parse_line(f"[PERMIT_WAIT] OK plan=p1 wait_ms={huge}") == "unparsed"
    nested = '{"message": "[PERMIT_WAIT] OK plan=p1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert parse_line(nested) == "unparsed"


def test_reason_with_spaces_and_missing_reason() -> None:
    line = (
        "[PERMIT_WAIT] BLOCK plan=p symbol=BTCUSDT wait_ms=5 "
        "reason=governor_blocked:risk cap hit governor_ttl=1"
    )
    event = parse_line(line)
    assert isinstance(event, PermitEvent) and event.reason == "governor_blocked:risk cap hit"
    event = parse_line("[PERMIT_WAIT] BLOCK plan=p wait_ms=5")
    assert isinstance(event, PermitEvent) and event.reason == "(no reason)"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("", "other"),
        ("garbage \x00\xff", "other"),
        ("info plan_received plan_id=p1", "other"),
        ('{"message": "heartbeat", "level": "INFO"}', "other"),
        ("[1, 2, 3]", "other"),
        ("[PERMIT_WAIT] OK plan=", "unparsed"),
        ("[PERMIT_WAIT] OK", "unparsed"),
        ("[PERMIT_WAIT]", "unparsed"),
        ("[PERMIT_WAIT] MAYBE plan=p1 wait_ms=3", "unparsed"),
        ("[PERMIT_WAIT] OK junk plan=p1 wait_ms=3", "unparsed"),
        ("[PERMIT_WAIT] OK plan=p1 wait_ms=fast", "unparsed"),
        ("[PERMIT_WAIT] OK plan=p1 wait_ms=-4", "unparsed"),
        ('{"message": "[PERMIT_WAIT] OK plan=p1 wait_ms=x"}', "unparsed"),
        ('{"level": "INFO", "note": "[PERMIT_WAIT] OK plan=p1"}', "unparsed"),
        ('{"message": "[PERMIT_WAIT] OK plan=p1 symbol=BTC', "unparsed"),  # truncated JSON
    ],
)
def test_lines_that_are_not_records(line: str, kind: str) -> None:
    assert parse_line(line) == kind


def test_result_entries_map_to_permit_decisions() -> None:
    blocked = {"plan_id": "a", "symbol": "BTCUSDT", "status": "BLOCKED", "wait_ms": "1201"}
    blocked["error"] = "permit_timeout_or_missing:missing_p33"
    assert classify_result(blocked) == PermitEvent(
        "BLOCK", "a", "BTCUSDT", 1201, "permit_timeout_or_missing:missing_p33"
    )
    failed = {"status": "FAILED", "would_execute": "True", "wait_ms": "40", "symbol": "X"}
    assert classify_result(failed) == PermitEvent("OK", None, "X", 40)
    assert classify_result({"status": "EXECUTED", "wait_ms": ""}) == PermitEvent("OK")
    assert classify_result({"status": "SKIPPED", "error": "stale_plan"}) == "other"
    assert classify_result({"plan_id": "a"}) == "unparsed"


# ---------------------------------------------------------------- tally and figures


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (0, 50, 95, 99, 100)] == [1, 50, 95, 99, 100]
    assert [percentile([7], p) for p in (0, 50, 100)] == [7, 7, 7]
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 51) == 3
    with pytest.raises(ValueError, match="no percentile"):
        percentile([], 50)
    with pytest.raises(ValueError, match="no percentile"):
        percentile([1], 101)


@given(st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=300))
def test_percentiles_are_ordered_observed_values(values: list[int]) -> None:
    ordered = sorted(values)
    figures = [percentile(ordered, p) for p in (0, 50, 95, 99, 100)]
    assert figures == sorted(figures)
    assert figures[0] == ordered[0] and figures[-1] == ordered[-1]
    for p, value in zip((50, 95, 99), figures[1:4], strict=True):
        assert value in values
        at_or_below = sum(v <= value for v in values)
        assert at_or_below * 100 >= p * len(values)  # at least p % at or below
        below = sum(v < value for v in values)
        assert below * 100 < p * len(values)  # and it is the smallest such value


@given(st.lists(st.integers(min_value=0, max_value=5000)))
def test_histogram_counts_every_wait_once_in_its_bucket(waits: list[int]) -> None:
    counts = histogram(waits)
    assert len(counts) == len(bucket_labels()) == len(BUCKET_EDGES) + 1
    assert sum(counts) == len(waits)
    assert counts[0] == sum(w < 1 for w in waits)
    assert counts[-1] == sum(w >= 1500 for w in waits)
    assert counts[bucket_labels().index("1000-1500")] == sum(1000 <= w < 1500 for w in waits)


_plans = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
_symbols = st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
_reasons = st.sampled_from(["missing_p33", "missing_all", "p33_permit_denied:no_position"])
_waits = st.integers(min_value=0, max_value=3000)


@st.composite
def _log_lines(draw: st.DrawFn) -> tuple[str, PermitEvent | str]:
    """A log line in one of the known formats (or noise) and what it should parse to."""
    plan, symbol, wait, reason = draw(_plans), draw(_symbols), draw(_waits), draw(_reasons)
    kind = draw(st.sampled_from(["ok", "block", "old_ok", "old_block", "json", "noise", "bad"]))
    if kind == "ok":
        return permit_ok_line(plan, symbol, wait, Decimal("0.1")), PermitEvent(
            "OK", plan, symbol, wait
        )
    if kind == "block":
        line = permit_block_line(plan, symbol, wait, reason, {"governor": 1, "p33": -2})
        return line, PermitEvent("BLOCK", plan, symbol, wait, reason)
    if kind == "old_ok":
        return f"[PERMIT_WAIT] OK plan={plan} wait_ms={wait} safe_qty=0.0080", PermitEvent(
            "OK", plan, None, wait
        )
    if kind == "old_block":
        line = f"host app[9]: [PERMIT_WAIT] BLOCK plan={plan} reason={reason} gov_ttl=5 p33_ttl=-2"
        return line, PermitEvent("BLOCK", plan, None, None, reason)
    if kind == "json":
        message = permit_ok_line(plan, symbol, wait, None)
        return json.dumps({"message": message, "level": "INFO"}), PermitEvent(
            "OK", plan, symbol, wait
        )
    if kind == "noise":
        return draw(st.text().filter(lambda t: "[PERMIT_WAIT]" not in t)), "other"
    return f"[PERMIT_WAIT] OK plan={plan} wait_ms=oops", "unparsed"


@given(st.lists(_log_lines(), max_size=60))
def test_any_mix_of_lines_adds_up(lines: list[tuple[str, PermitEvent | str]]) -> None:
    for text, expected in lines:
        if "\n" not in text and "\r" not in text:
            assert parse_line(text) == expected
    summary = Summary()
    for text, _ in lines:
        summary.add_line(text)
    report = build_report(summary, deadline_ms=1200, source={"kind": "file"})
    assert report["read"] == len(lines)
    assert report["read"] == report["ok"] + report["block"] + report["other"] + report["unparsed"]
    assert report["records"] == report["ok"] + report["block"]
    assert sum(r["count"] for r in report["block_reasons"]) == report["block"]
    assert sum(b["count"] for b in report["histogram"]) == report["wait_ms"]["count"]
    per_symbol = sum(c["ok"] + c["block"] for c in report["symbols"].values())
    assert per_symbol + report["without_symbol"] == report["records"]
    counts = [r["count"] for r in report["block_reasons"]]
    assert counts == sorted(counts, reverse=True)
    w = report["wait_ms"]
    if w["count"]:
        assert w["min"] <= w["p50"] <= w["p95"] <= w["p99"] <= w["max"]
    render_text(report)  # never fails


def test_report_and_text_of_a_mixed_log() -> None:
    report = build_report(
        summarize_lines(MIXED_LOG.splitlines()), deadline_ms=1200, source={"kind": "file"}
    )
    assert (report["read"], report["records"], report["other"], report["unparsed"]) == (9, 5, 3, 1)
    assert (report["ok"], report["block"]) == (2, 3)
    assert report["block_reasons"] == [
        {"reason": "missing_p33", "count": 2},
        {"reason": "p33_permit_denied:no_position", "count": 1},
    ]
    w = report["wait_ms"]
    assert (w["count"], w["min"], w["p50"], w["max"], w["at_or_over_deadline"]) == (
        4,
        3,
        12,
        1201,
        1,
    )
    assert report["symbols"] == {
        "BTCUSDT": {"ok": 1, "block": 1},
        "ETHUSDT": {"ok": 0, "block": 1},
    }
    assert report["without_symbol"] == 2
    text = render_text(report)
    assert "OK 2 (40.0%)   BLOCK 3 (60.0%)" in text
    assert "min 3  p50 12  p95 1201  p99 1201  max 1201" in text
    assert "1000-1500 ms |" in text and "(no symbol)" in text


def test_parse_since() -> None:
    now = datetime(2026, 1, 25, 12, 0, tzinfo=UTC).timestamp()
    ms = int(now * 1000)
    assert parse_since("-1h", now) == ms - 3_600_000
    assert parse_since("30 min ago", now) == ms - 1_800_000
    assert parse_since("2 hours ago", now) == parse_since("2h", now) == ms - 7_200_000
    assert parse_since("90s", now) == ms - 90_000
    assert parse_since("now", now) == ms
    assert parse_since("@1769301008", now) == 1_769_301_008_000
    assert parse_since("2026-01-25T00:00:00+00:00", now) == ms - 12 * 3_600_000
    today = parse_since("today", now)
    assert 0 <= ms - today <= 48 * 3_600_000 and parse_since("yesterday", now) < today
    with pytest.raises(ValueError, match="cannot read 'soon'"):
        parse_since("soon", now)


# ---------------------------------------------------------------- the command


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "apply-layer.log"
    path.write_text(MIXED_LOG, encoding="utf-8")
    return path


def test_stats_from_a_file(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--file", str(log_file)]) == 0
    out = capsys.readouterr().out
    assert f"stats from file {log_file}" in out
    assert "lines read 9   records 5   other 3   unparsed 1" in out
    assert "BLOCK 3 (60.0%)" in out and "2  missing_p33" in out
    assert "BTCUSDT        OK       1   BLOCK       1" in out


def test_stats_json_structure(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--file", str(log_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {
        "source", "read", "records", "other", "unparsed", "ok", "block", "block_reasons",
        "wait_ms", "histogram", "symbols", "without_symbol", "statuses",
    }  # fmt: skip
    assert report["source"] == {"kind": "file", "path": str(log_file), "label": f"file {log_file}"}
    assert set(report["wait_ms"]) == {
        "count", "method", "min", "p50", "p95", "p99", "max", "deadline_ms",
        "at_or_over_deadline",
    }  # fmt: skip
    assert report["histogram"][0] == {"bucket": "<1", "from_ms": 0, "to_ms": 1, "count": 0}
    assert report["histogram"][-1]["to_ms"] is None
    assert report["statuses"] == {}


def test_stats_from_stdin_dash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(OLD_OK + "\n" + OLD_BLOCK + "\n"))
    assert main(["stats", "--file", "-", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["source"]["kind"], report["ok"], report["block"]) == ("file", 1, 1)
    assert report["without_symbol"] == 2 and report["wait_ms"]["count"] == 1


@pytest.fixture
def piped_stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, (NEW_OK + "\n" + NEW_BLOCK + "\n").encode() + b"\xff\xfe not utf-8\n")
    os.close(write_fd)
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        assert stat.S_ISFIFO(os.fstat(pipe.fileno()).st_mode)
        monkeypatch.setattr(sys, "stdin", pipe)
        yield


@pytest.mark.usefixtures("piped_stdin")
def test_stats_reads_piped_stdin_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["source"]["kind"], report["ok"], report["block"]) == ("stdin", 1, 1)
    assert (report["read"], report["other"]) == (3, 1)


@pytest.mark.usefixtures("piped_stdin")
def test_since_with_piped_stdin_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--since", "today"])
    assert exc.value.code == 2
    assert "--since applies to journald" in capsys.readouterr().err


@pytest.mark.parametrize(
    "since",
    [
        "9" * 400 + " days ago",  # OverflowError: int too large to convert to float
        "@" + "9" * 400,  # OverflowError: float infinity to integer
        "9" * 5000 + "s",  # ValueError: past the int string-conversion limit
        "99999999999999 weeks ago",  # before 1970: Redis would refuse the stream id
        "@99999999999999999999",  # after 9999
        "1969-07-20",
    ],
)
def test_absurd_since_values_exit_2_with_one_line(
    since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """They crashed ``stats --from-redis`` with a traceback (exit 1)."""
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--from-redis", "--since", since])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--since:" in err and "Traceback" not in err and len(err) < 1000
    with pytest.raises(ValueError, match=r"cannot read|out of range"):
        parse_since(since, 1_769_302_800.0)


def test_absurd_log_lines_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 309-digit wait_ms and a deeply nested JSON line are skipped, not fatal."""
    path = tmp_path / "hostile.log"
    nested = '{"message": "[PERMIT_WAIT] OK plan=p1", "x": ' + "[" * 100_000 + "]" * 100_000
    lines = [
        "[PERMIT_WAIT] OK plan=p1 symbol=BTCUSDT wait_ms=" + "9" * 309 + " safe_qty=0.01",
        nested + "}",
        "[PERMIT_WAIT] OK plan=p2 symbol=BTCUSDT wait_ms=12 safe_qty=0.01",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["stats", "--file", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == 1 and report["unparsed"] == 2


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--file", str(tmp_path / "nope.log")]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "nope.log" in err and "Traceback" not in err
    assert main(["stats", "--file", str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["stats", "--count", "0", "--from-redis"],
        ["stats", "--count", "many", "--from-redis"],
        ["stats", "--file", "x.log", "--from-redis"],
        ["stats", "--journal", "--file", "x.log"],
        ["stats", "--count", "5", "--journal"],
        ["stats", "--unit", "foo", "--file", "x.log"],
        ["stats", "--unit", "foo", "--from-redis"],
        ["stats", "--since", "today", "--file", "x.log"],
        ["stats", "--from-redis", "--since", "whenever"],
        ["stats", "--bogus"],
        ["stats", "--file"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def _fake_journalctl(directory: Path, body: str) -> None:
    script = directory / "journalctl"
    script.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    script.chmod(0o755)


def test_journald_passes_unit_and_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "log").write_text(MIXED_LOG, encoding="utf-8")
    cat = shutil.which("cat")
    body = f'for a in "$@"; do echo "$a"; done > {tmp_path}/argv\n{cat} {tmp_path}/log\n'
    _fake_journalctl(tmp_path, body)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["stats", "--journal", "--since", "1 hour ago", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["-u", "quantum-apply-layer", "-o", "cat", "--no-pager", "--since", "1 hour ago"]
    assert report["source"]["unit"] == "quantum-apply-layer"
    assert (report["read"], report["ok"], report["block"]) == (9, 2, 3)
    assert main(["stats", "--unit", "other-unit"]) == 0
    assert "journald unit other-unit" in capsys.readouterr().out
    assert (tmp_path / "argv").read_text().splitlines()[:2] == ["-u", "other-unit"]


def test_journalctl_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_journalctl(tmp_path, 'echo "Failed to parse timestamp: soon" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["stats", "--journal", "--since", "soon"]) == 1
    err = capsys.readouterr().err
    assert "failed (exit 1): Failed to parse timestamp: soon" in err
    assert "Traceback" not in err


def test_journalctl_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    assert main(["stats", "--journal"]) == 1
    err = capsys.readouterr().err
    assert "cannot run journalctl" in err and "--file PATH" in err and "Traceback" not in err
    monkeypatch.setattr(stats_command, "JOURNALCTL", str(tmp_path / "no-such-journalctl"))
    assert main(["stats"]) == 1  # journald is the default when stdin is not piped
    assert "cannot run" in capsys.readouterr().err


# ---------------------------------------------------------------- --from-redis


@pytest.fixture
def db(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[sync_redis.Redis]:
    with cli_database(redis_server, monkeypatch, 6) as client:
        yield client


def _result(db: sync_redis.Redis, entry_id: str, status: str, wait_ms: str, **extra: str) -> None:
    fields = {"plan_id": entry_id, "symbol": "BTCUSDT", "status": status, "wait_ms": wait_ms}
    fields |= {"executed": str(status == "EXECUTED"), "error": "", **extra}
    db.xadd(K.RESULT_STREAM, fields, id=entry_id)  # type: ignore[arg-type]


def test_stats_from_redis(db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    _result(db, "1000-0", "EXECUTED", "120", would_execute="True")
    _result(db, "2000-0", "BLOCKED", "1201", error="permit_timeout_or_missing:missing_p33")
    _result(db, "3000-0", "SKIPPED", "0", error="stale_plan")
    _result(db, "4000-0", "BLOCKED", "2", error="p33_permit_denied:no_position", symbol="ETHUSDT")
    _result(db, "5000-0", "FAILED", "80", would_execute="True", error="exchange_rejected:-2019")
    assert main(["stats", "--from-redis", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"]["stream"] == K.RESULT_STREAM
    assert (report["read"], report["ok"], report["block"], report["other"]) == (5, 2, 2, 1)
    assert report["statuses"] == {"BLOCKED": 2, "EXECUTED": 1, "FAILED": 1, "SKIPPED": 1}
    assert {r["reason"] for r in report["block_reasons"]} == {
        "permit_timeout_or_missing:missing_p33",
        "p33_permit_denied:no_position",
    }
    assert (report["wait_ms"]["min"], report["wait_ms"]["max"]) == (2, 1201)
    assert report["symbols"]["ETHUSDT"] == {"ok": 0, "block": 1}

    assert main(["stats", "--from-redis", "--count", "2", "--json"]) == 0
    last_two = json.loads(capsys.readouterr().out)
    assert (last_two["read"], last_two["ok"], last_two["block"]) == (2, 1, 1)
    assert main(["stats", "--from-redis", "--since", "@3.5", "--json"]) == 0
    since = json.loads(capsys.readouterr().out)
    assert (since["read"], since["statuses"]) == (2, {"BLOCKED": 1, "FAILED": 1})
    assert main(["stats", "--from-redis", "--since", "@3", "--count", "1"]) == 0
    out = capsys.readouterr().out
    assert "entries read 1" in out and "since @3 (last 1)" in out and "1  FAILED" in out


def test_stats_from_redis_pages_through_a_long_stream(
    db: sync_redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stats_command, "REDIS_PAGE", 7)
    with db.pipeline(transaction=False) as pipe:
        for i in range(50):
            fields = {"status": "EXECUTED", "wait_ms": str(i), "would_execute": "True"}
            pipe.xadd(K.RESULT_STREAM, fields, id=f"1000-{i}")  # type: ignore[arg-type]
        pipe.execute()
    assert main(["stats", "--from-redis", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["read"], report["ok"], report["wait_ms"]["max"]) == (50, 50, 49)


def test_stats_from_redis_on_an_empty_stream(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", "--from-redis"]) == 0
    assert "entries read 0   records 0" in capsys.readouterr().out


def test_stats_from_unreachable_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["stats", "--from-redis"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://127.0.0.1" in err and "Traceback" not in err


def test_since_takes_a_dash_value_as_printed_in_the_runbook() -> None:
    from apply_layer.commands import build_parser, join_dash_values

    assert join_dash_values(["stats", "--since", "-30m"]) == ["stats", "--since=-30m"]
    assert join_dash_values(["stats", "--from-redis", "--since", "-1h", "--json"]) == [
        "stats",
        "--from-redis",
        "--since=-1h",
        "--json",
    ]
    # Another long option is not a value, and nothing after "--" is touched.
    assert join_dash_values(["stats", "--since", "--json"]) == ["stats", "--since", "--json"]
    assert join_dash_values(["--", "--since", "-1h"]) == ["--", "--since", "-1h"]
    args = build_parser().parse_args(join_dash_values(["stats", "--since", "-30m"]))
    assert args.since == "-30m"
