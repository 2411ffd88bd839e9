"""Property tests of every parser that reads what others write.

The plan parser (stream entries), permit verdicts (permit keys and block
markers), the stats line parser (logs) and settings loading (the
environment). Each runs ``FUZZ_EXAMPLES[profile]`` examples: 200 in CI,
10,000 nightly (``scripts/fuzz.py``; docs/TESTING.md records a run). The
properties are what the daemon relies on: no exception but the documented
one, and whatever is accepted satisfies the checks downstream code assumes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from apply_layer.core.errors import InvalidPlan, SettingsError
from apply_layer.core.keys import ISSUERS, Issuer
from apply_layer.core.marker_stats import (
    PermitEvent,
    build_report,
    parse_line,
    render_text,
    summarize_lines,
)
from apply_layer.core.permits import (
    DENY_CATEGORIES,
    PermitVerdict,
    evaluate_permit,
    governor_block_reason,
)
from apply_layer.core.plans import (
    DECISIONS,
    MAX_TIMESTAMP_MS,
    PLAN_ID_RE,
    SYMBOL_RE,
    Plan,
    parse_plan,
)
from apply_layer.settings import Settings, load_settings
from tests.conftest import FUZZ_EXAMPLES, PROFILE

fuzz = settings(max_examples=FUZZ_EXAMPLES[PROFILE], deadline=None)
LOG_SAFE = re.compile(r"[A-Za-z0-9_.:-]*")

# ---- shared strategies ---------------------------------------------------------------

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),  # past a double
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 25, 50, 75, 100, 100.0, 1e-300, -0.0, 2**63]),
)
words = st.sampled_from(
    [
        "CLOSE_FULL",
        "CLOSE_PARTIAL_75",
        "PARTIAL_25",
        "HOLD",
        "market_reduce_only",
        "close",
        "open",
        "BTCUSDT",
        "true",
        "1",
        "EXECUTE",
        "",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | words | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["step", "type", "side", "pct", "x"]) | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


def _json_text(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


# ---- the plan parser ------------------------------------------------------------------


def often(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """``valid`` seven times out of eight: most examples get past the first checks."""
    return st.integers(0, 7).flatmap(lambda roll: hostile if roll == 0 else valid)


close_names = st.sampled_from(["CLOSE_FULL", "CLOSE_PARTIAL_75", "PARTIAL_50", "PARTIAL_25"])
step_texts = often(
    st.builds(
        lambda name, pct, extra, others: _json_text(
            [*others, {"step": name, "type": "market_reduce_only", "side": "close", **extra, **pct}]
        ),
        close_names,
        often(
            st.builds(lambda p: {"pct": p}, st.sampled_from([25, 50.0, 75, 100])),
            numbers.map(lambda p: {"pct": p}),
        )
        | st.just({}),
        st.dictionaries(st.sampled_from(["type", "side", "x"]), json_values, max_size=1),
        often(
            st.lists(st.sampled_from([{"step": "HOLD"}, {"step": "MOVE_SL"}]), max_size=2),
            st.lists(st.builds(lambda w: {"step": w}, words), max_size=2),
        ),
    ),
    st.one_of(
        st.builds(_json_text, st.lists(json_values, max_size=4)),
        st.integers(1, 6000).map(lambda d: "[" * d + "]" * d),
        st.text(max_size=30),
    ),
)
timestamp_texts = often(
    st.floats(1.0e9, 4.0e9).map(lambda t: f"{t:.3f}") | st.integers(10**12, 4 * 10**12).map(str),
    st.one_of(
        numbers.map(str),
        st.sampled_from(["nan", "inf", "1e999", "-1", "0", " 1769301008"]),
        st.text(max_size=12),
    ),
)
plan_fields = st.fixed_dictionaries(
    {
        "plan_id": often(st.from_regex(PLAN_ID_RE, fullmatch=True), st.text(max_size=70)),
        "symbol": often(st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.text(max_size=8)),
        "decision": often(
            st.sampled_from(["EXECUTE", "EXECUTE", *DECISIONS]),
            st.sampled_from(["execute", "EXECUTE\n", ""]) | st.text(max_size=8),
        ),
        "timestamp": timestamp_texts,
        "steps": often(step_texts, st.just("")),  # "": none, as the governor's plans
        "action": often(
            st.sampled_from(["FULL_CLOSE_PROPOSED", "PARTIAL_50", "PARTIAL_75"]),
            st.sampled_from(["HOLD", ""]) | st.text(max_size=8),
        ),
    },
    optional={
        "qty": st.text(max_size=8),
        "big": often(st.integers(0, 8000), st.integers(8000, 70_000)).map(lambda n: "x" * n),
    },
).flatmap(
    lambda base: st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3).map(
        lambda noise: {**noise, **base}
    )
)


@fuzz
@given(plan_fields)
def test_the_plan_parser_accepts_only_actionable_plans(fields: dict[str, str]) -> None:
    try:
        plan = parse_plan(fields)
    except InvalidPlan as exc:
        rejected = exc
    else:
        event(f"accepted {plan.decision}")
        _check_plan(plan)
        return
    event(f"rejected {rejected.detail.split(':')[0]}")
    assert rejected.detail and len(rejected.detail) <= 80 and "\n" not in rejected.detail
    assert not rejected.plan_id or PLAN_ID_RE.fullmatch(rejected.plan_id)


def _check_plan(plan: Plan) -> None:
    assert isinstance(plan, Plan)
    assert PLAN_ID_RE.fullmatch(plan.plan_id) and SYMBOL_RE.fullmatch(plan.symbol)
    assert plan.decision in DECISIONS
    assert math.isfinite(plan.timestamp) and 0 < plan.timestamp <= MAX_TIMESTAMP_MS / 1000
    if plan.decision == "EXECUTE":
        closes = [s for s in plan.steps if s.is_close]
        assert len(closes) == 1 and plan.close_step is closes[0]
        pct = closes[0].pct
        assert pct is not None and pct.is_finite() and Decimal(0) < pct <= Decimal(100)


# ---- permit verdicts --------------------------------------------------------------------

grants = st.sampled_from([True, 1, "true", "TRUE", "1", 1.0])
permit_objects = st.fixed_dictionaries(
    {},
    optional={
        "granted": often(grants, json_values),
        "allow": often(grants, json_values),
        "symbol": often(st.sampled_from(["BTCUSDT", None]), json_values),
        "safe_qty": often(
            st.decimals(min_value=Decimal("1e-8"), max_value=Decimal(10**6), places=8).map(float)
            | st.sampled_from(["0.002", "1e-3", "5"]),
            json_values | numbers.map(str),
        ),
        "safe_close_qty": json_values,
        "reason": st.text(max_size=20),
        "exchange_position_amt": numbers | numbers.map(str),
    },
)
permit_texts = often(
    permit_objects.map(_json_text),
    st.one_of(
        json_values.map(_json_text),
        st.text(max_size=60),
        st.integers(1, 6000).map(lambda d: '{"allow": ' + "[" * d + "]" * d + "}"),
        st.sampled_from(["1", "0", "NaN", '{"allow": true, "safe_qty": "1\\n"}', "oversized:x"]),
    ),
)
issuers = st.sampled_from([*ISSUERS.values(), Issuer("odd", "", carries_qty=True)])
kinds = often(st.sampled_from(["string", "hash"]), st.sampled_from(["none", "list", "zset"]))


def _is_true(value: Any) -> bool:
    return value is True or value == 1 or str(value).lower() in ("true", "1")


@fuzz
@given(issuers, kinds, permit_texts, st.sampled_from(["BTCUSDT", "ETHUSDT"]))
def test_a_permit_verdict_never_raises_and_an_allow_is_always_usable(
    issuer: Issuer, kind: str, raw: str, symbol: str
) -> None:
    verdict = evaluate_permit(issuer, kind, None if kind == "none" else raw, symbol)
    event(f"{verdict.verdict} {verdict.category}")
    assert isinstance(verdict, PermitVerdict)
    assert verdict.verdict in ("allow", "deny", "missing")
    assert LOG_SAFE.fullmatch(verdict.reason) and len(verdict.reason) <= 80
    if verdict.verdict == "deny":
        assert verdict.category in DENY_CATEGORIES
    if verdict.verdict != "allow":
        return
    flags = [verdict.fields[k] for k in ("granted", "allow") if k in verdict.fields]
    assert flags and all(_is_true(f) for f in flags)
    assert verdict.fields.get("symbol") in (None, symbol)
    if issuer.carries_qty:
        qty = verdict.safe_qty
        assert qty is not None and qty.is_finite() and qty > 0 and math.isfinite(float(qty))


@fuzz
@given(permit_texts | st.text(max_size=200) | st.none())
def test_a_governor_block_reason_is_always_a_short_log_safe_word(raw: str | None) -> None:
    reason = governor_block_reason(raw)
    assert reason and LOG_SAFE.fullmatch(reason) and len(reason) <= 80


# ---- the stats line parser -------------------------------------------------------------

marker_values = {
    "plan": st.from_regex(PLAN_ID_RE, fullmatch=True),
    "symbol": st.sampled_from(["BTCUSDT", "ETHUSDT"]),
    "wait_ms": st.integers(0, 5000).map(str),
    "reason": st.sampled_from(["missing_p33", "p33_permit_denied:x", "a reason with spaces"]),
    "info": st.just("{'reason': 'missing_p33', 'gov_ttl': 50}"),
    "safe_qty": st.just("0.002"),
}
marker_fields = st.lists(
    st.sampled_from(sorted(marker_values)).flatmap(
        lambda k: st.tuples(
            st.just(k), often(marker_values[k], numbers.map(str) | st.text(max_size=12))
        )
    ),
    max_size=5,
).map(lambda pairs: " ".join(f"{k}={v}" for k, v in pairs))
console_lines = st.builds(
    lambda prefix, kind, category, fields: f"{prefix}[PERMIT_WAIT] {kind} {category}{fields}",
    often(st.just(""), st.text(max_size=10)),
    often(st.sampled_from(["OK", "BLOCK"]), st.sampled_from(["ok", "", "OKAY"])),
    often(st.just(""), st.sampled_from(["p33_denied ", "Bad ", "x" * 70 + " "])),
    marker_fields,
)
json_lines = st.builds(
    lambda message, extra: json.dumps({"message": message, **extra}, allow_nan=True),
    console_lines | st.text(max_size=20),
    st.dictionaries(
        st.sampled_from(["plan_id", "wait_ms", "reason", "symbol", "x"]), json_values, max_size=4
    ),
)
log_lines = st.one_of(
    console_lines,
    json_lines,
    json_lines.map(lambda line: line[: len(line) // 2]),  # truncated
    st.integers(1, 6000).map(lambda d: '{"message": "[PERMIT_WAIT] OK plan=p", "x": ' + "[" * d),
    st.text(max_size=80),
)


@fuzz
@given(st.lists(log_lines, max_size=8))
def test_the_stats_parser_reads_any_log_without_raising(lines: list[str]) -> None:
    for line in lines:
        item = parse_line(line)
        event(item.outcome if isinstance(item, PermitEvent) else item)
        assert isinstance(item, PermitEvent) or item in ("unparsed", "other")
        if isinstance(item, PermitEvent):
            assert item.plan_id and item.outcome in ("OK", "BLOCK")
            assert item.wait_ms is None or 0 <= item.wait_ms < 10**12
    report = build_report(summarize_lines(lines), deadline_ms=1200, source={"label": "fuzz"})
    assert report["read"] == len(lines) == report["records"] + report["other"] + report["unparsed"]
    assert render_text(report)


# ---- settings loading ----------------------------------------------------------------

env_text = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=["Cs"]),
    max_size=30,
)
hostile_env = st.one_of(env_text, numbers.map(str), st.sampled_from(["", " ", "-1", "1e400"]))
VALID_ENV = {
    "APPLY_REDIS_URL": ["redis://localhost:6379/0", "rediss://u:p@h:6380/1", "unix:///r.sock"],
    "APPLY_MODE": ["dry_run", "paper", "testnet", " PAPER "],
    "APPLY_ALLOWLIST": ["BTCUSDT", "BTCUSDT, ETHUSDT", "BTCUSDT,,"],
    "APPLY_POLL_SEC": ["0.5", "5"],
    "APPLY_PERMIT_WAIT_MS": ["1200", "0"],
    "APPLY_PERMIT_STEP_MS": ["100"],
    "APPLY_REQUIRED_PERMITS": ["governor,p33", "p33", "P33,p26"],
    "APPLY_PLAN_MAX_AGE_SEC": ["60"],
    "APPLY_DEDUPE_TTL_SEC": ["300"],
    "APPLY_JOURNAL_TTL_SEC": ["604800"],
    "APPLY_LOG_LEVEL": ["info", "DEBUG"],
    "APPLY_LOG_FORMAT": ["json", "console"],
    "APPLY_METRICS_PORT": ["0", "8043"],
    "APPLY_KILL_SWITCH": ["true", "0", "off"],
    "APPLY_KEYSPACE_EVENTS": ["detect", "off", "enable"],
    "APPLY_MAX_IN_FLIGHT": ["64", "1"],
    "APPLY_CLAIM_IDLE_SEC": ["30"],
    "APPLY_LEASE_MS": ["15000"],
    "APPLY_BINANCE_BASE_URL": ["https://testnet.binancefuture.com/", "http://127.0.0.1:9"],
    "APPLY_BINANCE_RECV_WINDOW_MS": ["5000"],
    "APPLY_BINANCE_HTTP_TIMEOUT_SEC": ["10"],
    "APPLY_CONSUMER_GROUP": ["apply_layer"],
    "APPLY_CONSUMER_NAME": ["host-1"],
}


def _env_value(name: str) -> st.SearchStrategy[str]:
    valid = VALID_ENV.get(name)
    return often(st.sampled_from(valid), hostile_env) if valid else hostile_env


env_names = st.sampled_from(
    [f"APPLY_{name.upper()}" for name in Settings.model_fields]
    + ["BINANCE_TESTNET_API_KEY", "BINANCE_TESTNET_API_SECRET", "APPLY_TYPO"]
)
environments = st.lists(env_names, unique=True, max_size=8).flatmap(
    lambda names: st.fixed_dictionaries({name: _env_value(name) for name in names})
)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(("APPLY_", "BINANCE_"))}
    for name in saved:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)
        os.environ.update(saved)


@fuzz
@given(environments)
def test_settings_load_or_fail_with_one_line_naming_the_variable(env: dict[str, str]) -> None:
    with _environment(env):
        try:
            loaded = load_settings()
        except SettingsError as exc:
            message = str(exc)
            event(f"refused {message.split(':')[0]}")
            assert "\n" not in message and re.match(r"(APPLY|BINANCE)_[A-Z_]+: |settings", message)
            for name in ("APPLY_BINANCE_API_SECRET", "BINANCE_TESTNET_API_SECRET"):
                secret = env.get(name, "")
                elsewhere = [v for k, v in env.items() if k != name and secret in v]
                assert len(secret) < 6 or elsewhere or secret not in message
            return
    event("loaded")
    assert isinstance(loaded, Settings)
    assert loaded.mode in ("dry_run", "paper", "testnet")
    assert "p33" in loaded.required_permits
    # Found by the nightly run: APPLY_ALLOWLIST=" " (or ",") used to load as an
    # empty allowlist, so every plan ended SKIPPED symbol_not_allowed, silently.
    assert loaded.allowlist and all(SYMBOL_RE.fullmatch(s) for s in loaded.allowlist)
