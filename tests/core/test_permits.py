"""Permit verdicts: examples, properties, and agreement with the Lua script."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
import redis as sync_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apply_layer.core.keys import ISSUERS
from apply_layer.core.permits import (
    DENY_CATEGORIES,
    MAX_PERMIT_BYTES,
    OVERSIZED_PREFIX,
    PermitVerdict,
    evaluate_permit,
    governor_block_reason,
    grants,
    is_oversized,
    is_true,
    kill_on,
    parse_qty,
    permit_qty,
    sanitise_reason,
)
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.gate import GATE_SCRIPT, GateConfig

# Its module-scoped fixture builds once per worker: keep its tests on one (pytest-xdist).
pytestmark = pytest.mark.xdist_group("permits-redis")

GOV, P33, P26 = ISSUERS["governor"], ISSUERS["p33"], ISSUERS["p26"]


def judge(issuer: Any, value: Any, kind: str = "string", symbol: str = "BTCUSDT") -> Any:
    raw = value if isinstance(value, str) else json.dumps(value)
    return evaluate_permit(issuer, kind, raw, symbol)


def test_contract_examples() -> None:
    gov = judge(GOV, {"granted": True, "symbol": "BTCUSDT", "decision": "EXECUTE"})
    assert gov.verdict == "allow"
    p33 = judge(P33, {"allow": True, "symbol": "BTCUSDT", "safe_qty": 0.002, "reason": "ok"})
    assert (p33.verdict, p33.safe_qty) == ("allow", Decimal("0.002"))
    deny = judge(P33, {"allow": False, "reason": "reconcile_required_qty_mismatch"})
    assert (deny.verdict, deny.category, deny.reason) == (
        "deny",
        "denied",
        "reconcile_required_qty_mismatch",
    )
    assert judge(P26, "1").verdict == "allow"
    assert judge(P26, "0").category == "denied"


def test_safe_qty_is_exact_decimal_from_the_permit_text() -> None:
    verdict = evaluate_permit(
        P33, "string", '{"allow": true, "safe_qty": 0.1000000000000000055}', "X1"
    )
    assert verdict.safe_qty == Decimal("0.1000000000000000055")


@pytest.mark.parametrize(
    ("value", "category"),
    [
        ("{not json", "malformed"),
        ('"just a string"', "malformed"),
        ("true", "malformed"),
        ("null", "malformed"),
        ("", "malformed"),
        ({"symbol": "BTCUSDT"}, "not_granted"),
        ([1, 2], "not_granted"),
        ({"allow": "yes", "safe_qty": 1}, "denied"),
        ({"allow": True, "granted": False, "safe_qty": 1}, "denied"),
        ({"allow": None, "safe_qty": 1}, "denied"),
        ({"allow": True, "symbol": "ETHUSDT", "safe_qty": 1}, "symbol_mismatch"),
        ({"allow": True, "symbol": 5, "safe_qty": 1}, "symbol_mismatch"),
        ({"allow": True}, "invalid_qty"),
        ({"allow": True, "safe_qty": 0}, "invalid_qty"),
        ({"allow": True, "safe_qty": -0.5}, "invalid_qty"),
        ({"allow": True, "safe_qty": "NaN"}, "invalid_qty"),
        ('{"allow": true, "safe_qty": NaN}', "invalid_qty"),
        ('{"allow": true, "safe_qty": Infinity}', "invalid_qty"),
        ({"allow": True, "safe_qty": "1e400"}, "invalid_qty"),
        ({"allow": True, "safe_qty": "1e-400"}, "invalid_qty"),
        ({"allow": True, "safe_qty": " 1"}, "invalid_qty"),
        ({"allow": True, "safe_qty": True}, "invalid_qty"),
        ({"allow": True, "safe_qty": None, "safe_close_qty": None}, "invalid_qty"),
    ],
)
def test_denials(value: Any, category: str) -> None:
    verdict = judge(P33, value)
    assert (verdict.verdict, verdict.category) == ("deny", category)
    assert verdict.safe_qty is None


def test_safe_close_qty_alias_and_null_symbol() -> None:
    verdict = judge(P33, {"allow": True, "symbol": None, "safe_close_qty": "0.003"})
    assert (verdict.verdict, verdict.safe_qty) == ("allow", Decimal("0.003"))


def test_hash_permits_have_string_values() -> None:
    fields = {"allow": "TRUE", "symbol": "BTCUSDT", "safe_qty": "1e-05"}
    verdict = evaluate_permit(P33, "hash", json.dumps(fields), "BTCUSDT")
    assert (verdict.verdict, verdict.safe_qty) == ("allow", Decimal("0.00001"))
    denied = evaluate_permit(P33, "hash", json.dumps({"allow": "false"}), "BTCUSDT")
    assert denied.category == "denied"


def test_missing_and_wrong_type() -> None:
    assert evaluate_permit(GOV, "none", None, "BTCUSDT").verdict == "missing"
    assert evaluate_permit(GOV, "list", "", "BTCUSDT").category == "wrong_type"


def test_reasons_are_log_safe() -> None:
    assert sanitise_reason("qty mismatch: 0.1 != 0.2\n") == "qty_mismatch:_0.1____0.2"
    assert sanitise_reason("   ") == "unspecified"
    assert len(sanitise_reason("x" * 500)) == 80
    assert governor_block_reason('{"reason": "daily loss limit"}') == "daily_loss_limit"
    assert governor_block_reason("{}") == "unspecified"
    assert governor_block_reason("not json") == "not_json"


def test_a_deeply_nested_marker_or_permit_is_read_not_raised() -> None:
    # ~1,000 nested brackets made json.loads raise RecursionError after the gate
    # had consumed the permits: the plan never got its result.
    nested = "[" * 2000 + "]" * 2000
    assert governor_block_reason(nested) == sanitise_reason(nested)
    assert governor_block_reason('{"reason": ' + nested + "}") != ""
    for kind in ("string", "hash"):
        assert judge(P33, nested, kind).category == "malformed"


def test_quantity_text_is_matched_whole() -> None:
    assert parse_qty("0.002") == Decimal("0.002")
    assert parse_qty("0.002\n") is None  # "$" with .match accepted a trailing newline
    assert judge(P33, {"allow": True, "safe_qty": "0.002\n"}).category == "invalid_qty"


def test_oversized_permits_and_markers_are_denied_by_their_size() -> None:
    big = json.dumps({"allow": True, "safe_qty": 1, "pad": "x" * MAX_PERMIT_BYTES})
    assert judge(P33, big).category == "oversized"
    assert judge(P33, big, "hash").category == "oversized"
    summary = OVERSIZED_PREFIX + "bytes=8388608:head=_allow__true"
    assert (judge(GOV, summary).verdict, judge(GOV, summary).category) == ("deny", "oversized")
    assert governor_block_reason(summary) == "oversized_marker"
    assert governor_block_reason("x" * (MAX_PERMIT_BYTES + 1)) == "oversized_marker"
    ok = json.dumps({"allow": True, "safe_qty": 1, "pad": "x" * (MAX_PERMIT_BYTES - 100)})
    assert judge(P33, ok).verdict == "allow"  # up to the limit, a permit is read whole


def test_kill_values() -> None:
    # tests/store/test_kill_switch.py runs the same table against the Lua rule.
    assert all(kill_on("string", v) for v in ("1", "true", "TRUE", "True", "on", "ON"))
    assert not any(kill_on("string", v) for v in (None, "0", "false", "off", "yes", " 1"))
    assert not any(kill_on(kind, "1") for kind in ("none", "hash", "list", "set", "zset"))


# ---- properties -----------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["true", "TRUE", "1", "0", "false", "BTCUSDT", "ETHUSDT", "0.002", "1e-3", ""]),
    st.text(max_size=8),
)
permit_fields = st.dictionaries(
    st.sampled_from(["granted", "allow", "symbol", "safe_qty", "safe_close_qty", "reason", "x"]),
    json_scalars,
    max_size=6,
)


@given(st.text(max_size=200), st.sampled_from(["string", "hash"]))
def test_never_raises_on_any_text(raw: str, kind: str) -> None:
    verdict = evaluate_permit(P33, kind, raw, "BTCUSDT")
    assert verdict.verdict in ("allow", "deny")
    assert verdict.verdict == "allow" or verdict.category in DENY_CATEGORIES


@given(permit_fields)
def test_an_allow_always_carries_a_positive_finite_qty_and_the_right_symbol(
    fields: dict[str, Any],
) -> None:
    verdict = judge(P33, fields)
    if verdict.verdict == "allow":
        assert verdict.safe_qty is not None
        assert verdict.safe_qty > 0 and math.isfinite(float(verdict.safe_qty))
        assert fields.get("symbol") in (None, "BTCUSDT")
        assert any(k in fields for k in ("granted", "allow"))


@given(
    st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("1e-12"), max_value=10**9)
)
def test_positive_decimal_text_round_trips(value: Decimal) -> None:
    assert parse_qty(format(value, "f")) == Decimal(format(value, "f"))


# ---- the Lua script and permits.py agree -----------------------------------------


@pytest.fixture(scope="module")
def sync_client(redis_server: EmbeddedRedis) -> Any:
    client = sync_redis.Redis.from_url(redis_server.url, decode_responses=True, db=3)
    yield client
    client.close()


def lua_verdict(client: Any, issuer: Any, kind: str, value: Any) -> tuple[str, str]:
    config = GateConfig(issuers=(issuer,), wait_ms=0)
    keys = config.keys("prop")
    client.delete(*keys)
    if kind == "hash":
        client.hset(keys[-1], mapping={k: str(v) for k, v in value.items()} or {"x": "1"})
    else:
        client.set(keys[-1], value)
    spec = f"{issuer.name}:{'q' if issuer.carries_qty else ''}"
    reply = client.eval(GATE_SCRIPT, len(keys), *keys, "prop", "BTCUSDT", "t", 1, 1, 0, 60, spec)
    return reply[5 + 4], reply[5 + 5]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(permit_fields, st.sampled_from([GOV, P33, P26]))
def test_lua_and_python_agree_on_json_permits(
    sync_client: Any, fields: dict[str, Any], issuer: Any
) -> None:
    raw = json.dumps(fields)
    ours = evaluate_permit(issuer, "string", raw, "BTCUSDT")
    assert lua_verdict(sync_client, issuer, "string", raw) == (ours.verdict, ours.category)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(["granted", "allow", "symbol", "safe_qty", "safe_close_qty"]),
        st.sampled_from(
            ["true", "True", "1", "0", "false", "BTCUSDT", "ETH", "0.5", "-1", "1e-5", "x"]
        ),
        min_size=1,
        max_size=5,
    )
)
def test_lua_and_python_agree_on_hash_permits(sync_client: Any, fields: dict[str, str]) -> None:
    ours = evaluate_permit(P33, "hash", json.dumps(fields), "BTCUSDT")
    assert lua_verdict(sync_client, P33, "hash", fields) == (ours.verdict, ours.category)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.text(max_size=40), st.text(max_size=20).map(lambda t: OVERSIZED_PREFIX + t)))
def test_lua_and_python_agree_on_arbitrary_text(sync_client: Any, raw: str) -> None:
    ours = evaluate_permit(P26, "string", raw, "BTCUSDT")
    lua = lua_verdict(sync_client, P26, "string", raw)
    # cjson is laxer than JSON (hex numbers, leading zeros, bare nan), so on
    # text that is not JSON the deny categories may differ. The verdicts agree,
    # except that the script may allow text that Python rejects: the gate then
    # fails closed (MISMATCH), which test_gate covers.
    assert lua[0] == ours.verdict or (lua[0] == "allow" and ours.verdict == "deny")


# ---- whole verdicts: every field, so that nothing is lost on the way to sizing ------------

D = Decimal


@pytest.mark.parametrize(
    ("issuer", "kind", "raw", "expected"),
    [
        (P33, "none", None, PermitVerdict("p33", "none", "missing")),
        (P33, "string", None, PermitVerdict("p33", "none", "missing")),
        (GOV, "none", "ignored", PermitVerdict("governor", "none", "missing")),
        (GOV, "list", "", PermitVerdict("governor", "list", "deny", "wrong_type")),
        (GOV, "zset", "x", PermitVerdict("governor", "zset", "deny", "wrong_type")),
        (P33, "string", "{oops", PermitVerdict("p33", "string", "deny", "malformed")),
        (P33, "hash", "{oops", PermitVerdict("p33", "hash", "deny", "malformed")),
        (P33, "hash", "[1]", PermitVerdict("p33", "hash", "deny", "malformed")),
        (
            P33,
            "hash",
            '{"allow": "true", "safe_qty": "0.5", "symbol": "BTCUSDT"}',
            PermitVerdict(
                "p33",
                "hash",
                "allow",
                safe_qty=D("0.5"),
                fields={"allow": "true", "safe_qty": "0.5", "symbol": "BTCUSDT"},
            ),
        ),
        (
            P33,
            "string",
            '{"allow": true, "safe_qty": 0.004, "exchange_position_amt": -0.012}',
            PermitVerdict(
                "p33",
                "string",
                "allow",
                safe_qty=D("0.004"),
                fields={
                    "allow": True,
                    "safe_qty": D("0.004"),
                    "exchange_position_amt": D("-0.012"),
                },
            ),
        ),
        (
            P33,
            "string",
            '{"allow": false, "context": {"a": 1}}',
            # Only top-level values are kept (a nested object could be of any size).
            PermitVerdict("p33", "string", "deny", "denied", "", fields={"allow": False}),
        ),
        (
            P33,
            "string",
            '{"allow": false, "reason": 42}',
            PermitVerdict(
                "p33", "string", "deny", "denied", "", fields={"allow": False, "reason": D(42)}
            ),
        ),
        (
            GOV,
            "string",
            '{"granted": true, "symbol": "ETHUSDT"}',
            PermitVerdict(
                "governor",
                "string",
                "deny",
                "symbol_mismatch",
                fields={"granted": True, "symbol": "ETHUSDT"},
            ),
        ),
        (P26, "string", "1", PermitVerdict("p26", "string", "allow", fields={"allow": True})),
        (
            P26,
            "string",
            "2",
            PermitVerdict("p26", "string", "deny", "denied", "", fields={"allow": False}),
        ),
        (P26, "string", '"1"', PermitVerdict("p26", "string", "deny", "malformed")),
    ],
)
def test_whole_verdicts(issuer: Any, kind: str, raw: str | None, expected: PermitVerdict) -> None:
    got = evaluate_permit(issuer, kind, raw, "BTCUSDT")
    assert got == expected
    assert got.reason == (expected.detail or expected.category)


def test_an_allow_keeps_p33s_position_for_sizing() -> None:
    raw = json.dumps({"allow": True, "safe_qty": "0.01", "exchange_position_amt": -0.02})
    verdict = evaluate_permit(P33, "string", raw, "BTCUSDT")
    assert verdict.fields["exchange_position_amt"] == D("-0.02")


@pytest.mark.parametrize(
    ("raw", "qty"),
    [
        ('{"allow": true, "safe_qty": 1, "x": NaN}', D(1)),  # cjson reads NaN; so must we
        ('{"allow": true, "safe_qty": 1, "x": Infinity}', D(1)),
        ('{"allow": true, "safe_qty": 1, "x": -Infinity}', D(1)),
    ],
)
def test_json_constants_elsewhere_do_not_deny(raw: str, qty: Decimal) -> None:
    verdict = evaluate_permit(P33, "string", raw, "BTCUSDT")
    assert (verdict.verdict, verdict.safe_qty) == ("allow", qty)
    assert str(verdict.fields["x"]).lstrip("-") in ("NaN", "Infinity")


@pytest.mark.parametrize(
    ("value", "qty"),
    [
        ("0.5", D("0.5")),
        ("12", D(12)),
        ("1e-3", D("0.001")),
        (D("0.25"), D("0.25")),
        (3, D(3)),
        (True, None),
        (None, None),
        ("-1", None),
        ("0", None),
        ("abc", None),
        ("", None),
        (D("NaN"), None),
        (D("Infinity"), None),
        (2.5, None),  # a float never reaches here: JSON numbers are read as Decimal
        ([], None),
    ],
)
def test_parse_qty(value: Any, qty: Decimal | None) -> None:
    assert parse_qty(value) == qty


@pytest.mark.parametrize(
    ("value", "true"),
    [
        (True, True),
        (1, True),
        (Decimal(1), True),  # JSON's 1, as the gate decodes it
        (Decimal("1.0"), True),
        ("TRUE", True),
        ("1", True),
        (False, False),
        (0, False),
        (Decimal(2), False),
        ("yes", False),
        (None, False),
    ],
)
def test_a_grant_flag_is_true_only_as_the_gate_reads_it(value: Any, true: bool) -> None:
    assert is_true(value) is true


def test_an_issuers_floats_read_as_the_json_text_the_gate_decodes() -> None:
    """What ``sign_permit`` sees (the issuer's dict) reads as what the gate will."""
    assert grants({"allow": 1.0}) and grants({"granted": True, "allow": 1.0})
    assert not grants({"allow": 0.0}) and not grants({"allow": 1.5}) and not grants({})
    assert permit_qty({"safe_qty": 0.1}) == Decimal("0.1")  # repr, not the binary value
    assert permit_qty({"safe_qty": 0.1 + 0.2}) == Decimal("0.30000000000000004")
    assert permit_qty({"safe_qty": float("nan")}) is None


def test_governor_block_reasons() -> None:
    assert governor_block_reason(None) == "unspecified"
    assert governor_block_reason("") == "unspecified"
    assert governor_block_reason('{"reason": "exposure cap"}') == "exposure_cap"
    assert governor_block_reason('{"why": "x"}') == "unspecified"
    assert governor_block_reason("[1, 2]") == "unspecified"
    assert governor_block_reason("plain words") == "plain_words"


def test_an_oversized_permit_is_a_deny_of_its_own_issuer_and_kind() -> None:
    raw = json.dumps({"allow": True, "pad": "x" * MAX_PERMIT_BYTES})
    assert evaluate_permit(P33, "string", raw, "BTCUSDT") == PermitVerdict(
        "p33", "string", "deny", "oversized"
    )


def test_the_size_limit_is_inclusive() -> None:
    assert not is_oversized("x" * MAX_PERMIT_BYTES)
    assert is_oversized("x" * (MAX_PERMIT_BYTES + 1))
    assert is_oversized(OVERSIZED_PREFIX + "{}")
