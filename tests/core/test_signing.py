"""Signed permits, the pure part: canonical text, sign and verify, keys, modes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apply_layer.core.errors import KeyFileError, SettingsError
from apply_layer.core.keys import ISSUERS
from apply_layer.core.permits import decode_permit, evaluate_permit, grants, permit_qty
from apply_layer.core.signing import (
    KeyRing,
    canonical_text,
    parse_modes,
    sign_permit,
    verify_permit,
)
from apply_layer.daemon.signing_keys import keys_path, parse_keys, read_keys
from apply_layer.settings import load_settings

KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(100, 132))
RING = KeyRing({"p33": {"p33-old": KEY_OLD, "p33-new": KEY_NEW}, "governor": {"gov-1": KEY_OLD}})
NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
P33 = {"allow": True, "symbol": "BTCUSDT", "safe_qty": 0.002, "exchange_position_amt": 0.002}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_", "CREDENTIALS_DIRECTORY")):
            monkeypatch.delenv(name)


def _stored(permit: dict[str, Any]) -> dict[str, Any]:
    """The fields the daemon sees: the permit through JSON, numbers as Decimal (permits.py)."""
    fields = decode_permit("string", json.dumps(permit))
    assert fields is not None
    return fields


STEP, PCT = "CLOSE_PARTIAL_25", Decimal(25)  # the close every permit here authorises
CLOSE: dict[str, Any] = {"step": STEP, "pct": PCT}


def _verify(
    fields: dict[str, Any],
    *,
    plan: str = "plan-1",
    now_ms: int = NOW_MS,
    step: str = STEP,
    pct: Decimal = PCT,
) -> str:
    return verify_permit(
        ISSUERS["p33"], plan, "BTCUSDT", fields, RING, now_ms, step=step, pct=pct
    ).reason


def _sign(permit: dict[str, Any] = P33, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "issuer": "p33",
        "plan_id": "plan-1",
        "kid": "p33-new",
        "key": KEY_NEW,
        "now": NOW,
        "step": STEP,
    }
    return sign_permit(permit, **{**args, **kw})


def test_the_canonical_text_is_the_documented_one() -> None:
    text = canonical_text(
        issuer="p33",
        plan_id="plan-1",
        symbol="BTCUSDT",
        step="CLOSE_PARTIAL_25",
        pct=Decimal("25.0"),
        allow=True,
        safe_qty=Decimal("0.0020"),
        exp_ms=1_700_000_060_000,
        kid="p33-new",
    )
    assert text == (
        "quantum-permit-v2\nissuer=p33\nplan_id=plan-1\nsymbol=BTCUSDT\n"
        "step=CLOSE_PARTIAL_25\npct=25\nallow=true\n"
        "safe_qty=0.002\nexp_ms=1700000060000\nkid=p33-new"
    )


def test_a_signature_is_hmac_sha256_of_that_text_so_any_language_can_make_one() -> None:
    signed = _sign()
    text = (
        "quantum-permit-v2\nissuer=p33\nplan_id=plan-1\nsymbol=BTCUSDT\n"
        "step=CLOSE_PARTIAL_25\npct=25\nallow=true\n"
        f"safe_qty=0.002\nexp_ms={NOW_MS + 60_000}\nkid=p33-new"
    )
    assert signed["sig"] == hmac.new(KEY_NEW, text.encode(), hashlib.sha256).hexdigest()
    assert (signed["kid"], signed["sig_exp_ms"]) == ("p33-new", NOW_MS + 60_000)
    assert {k: signed[k] for k in P33} == P33  # the permit's own fields are unchanged


def test_a_signed_permit_verifies_and_is_still_an_allow() -> None:
    fields = _stored(_sign())
    assert _verify(fields) == "ok"
    verdict = evaluate_permit(ISSUERS["p33"], "string", json.dumps(_sign()), "BTCUSDT")
    assert verdict.verdict == "allow" and verdict.safe_qty == Decimal("0.002")


def test_a_hash_permit_with_string_fields_verifies() -> None:
    signed = _sign({"allow": "true", "symbol": "BTCUSDT", "safe_qty": "0.0020"})
    as_hash = {k: str(v) for k, v in signed.items()}  # HSET stores strings
    assert _verify(as_hash) == "ok"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"safe_qty": 0.5}, "mismatch"),
        ({"safe_close_qty": 0.5, "safe_qty": None}, "mismatch"),
        ({"allow": False}, "mismatch"),
        ({"sig_exp_ms": NOW_MS + 3_600_000}, "mismatch"),  # a longer life is a new text
        ({"kid": "p33-old"}, "mismatch"),  # the other key: a different signature
        ({"kid": "p33-unknown"}, "unknown_kid"),
        ({"sig": "0" * 64}, "mismatch"),
        ({"sig": "not-hex"}, "malformed"),
        ({"sig_exp_ms": "soon"}, "malformed"),
        ({"sig_exp_ms": True}, "malformed"),
        ({"kid": "bad kid\nissuer=governor"}, "malformed"),
    ],
)
def test_a_changed_field_breaks_the_signature(change: dict[str, Any], reason: str) -> None:
    forged = {**_sign(), **change}
    forged = {k: v for k, v in forged.items() if v is not None}
    assert _verify(_stored(forged)) == reason


def test_the_signature_is_bound_to_the_plan_and_the_symbol() -> None:
    fields = _stored(_sign())
    assert _verify(fields, plan="plan-2") == "mismatch"
    wrong_symbol = verify_permit(ISSUERS["p33"], "plan-1", "ETHUSDT", fields, RING, NOW_MS, **CLOSE)
    assert wrong_symbol.reason == "mismatch"


@pytest.mark.parametrize(
    ("step", "pct"),
    [
        ("CLOSE_FULL", Decimal(100)),  # the injected close of issue 21
        ("CLOSE_PARTIAL_25", Decimal(100)),
        ("CLOSE_PARTIAL_50", Decimal(25)),
        ("PARTIAL_25", Decimal(25)),  # harvest's name for the same share: another step
        ("CLOSE_PARTIAL_25", Decimal("25.000001")),
    ],
)
def test_the_signature_is_bound_to_the_close_step_and_its_share(step: str, pct: Decimal) -> None:
    fields = _stored(_sign())
    assert _verify(fields) == "ok"
    assert _verify(fields, step=step, pct=pct) == "mismatch"


def test_the_share_defaults_to_the_steps_own_and_is_checked() -> None:
    assert _sign(step="CLOSE_FULL")["sig"] == _sign(step="CLOSE_FULL", pct=100)["sig"]
    assert (
        _sign(step="CLOSE_PARTIAL_75", pct="50.0")["sig"]
        == _sign(step="CLOSE_PARTIAL_75", pct=50)["sig"]
    )
    assert (
        _verify(
            _stored(_sign(step="CLOSE_PARTIAL_75", pct=50)),
            step="CLOSE_PARTIAL_75",
            pct=Decimal(50),
        )
        == "ok"
    )
    for step, pct, says in [
        ("SOMETHING_ELSE", None, "not a close step: give its pct"),
        ("bad step", None, "not a step name"),
        ("CLOSE_FULL", 0, "not a share"),
        ("CLOSE_FULL", 100.5, "not a share"),
        ("CLOSE_FULL", "NaN", "not a share"),
        ("CLOSE_FULL", "x", "not a share"),
        ("CLOSE_FULL", True, "not a share"),
    ]:
        with pytest.raises(ValueError, match=says):
            _sign(step=step, pct=pct)


def test_missing_and_expired() -> None:
    assert _verify(_stored(P33)) == "missing"
    fields = _stored(_sign(ttl_sec=60))
    assert _verify(fields, now_ms=NOW_MS + 60_000) == "ok"  # the last valid millisecond
    assert _verify(fields, now_ms=NOW_MS + 60_001) == "expired"


def test_rotation_two_key_ids_both_verify() -> None:
    assert _verify(_stored(_sign(kid="p33-old", key=KEY_OLD))) == "ok"
    assert _verify(_stored(_sign(kid="p33-new", key=KEY_NEW))) == "ok"
    assert _verify(_stored(_sign(kid="p33-new", key=KEY_OLD))) == "mismatch"


def test_a_governor_permit_signs_without_a_quantity() -> None:
    signed = sign_permit(
        {"granted": True, "symbol": "BTCUSDT", "decision": "EXECUTE"},
        issuer="governor",
        plan_id="plan-1",
        kid="gov-1",
        key=KEY_OLD,
        now=NOW,
        step=STEP,
    )
    check = verify_permit(
        ISSUERS["governor"], "plan-1", "BTCUSDT", _stored(signed), RING, NOW_MS, **CLOSE
    )
    assert check.ok


def test_sign_permit_refuses_what_it_cannot_bind() -> None:
    with pytest.raises(ValueError, match="names no symbol"):
        _sign({"allow": True, "safe_qty": 1})
    assert _sign({"allow": True, "safe_qty": 1}, symbol="BTCUSDT")["sig"]
    with pytest.raises(ValueError, match="needs a finite safe_qty"):
        _sign({"allow": True, "symbol": "BTCUSDT"})
    with pytest.raises(ValueError, match="unknown issuer"):
        _sign(issuer="p99")


@settings(max_examples=300, deadline=None)
@given(
    qty=st.one_of(
        st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False),
        st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e12"), places=12).map(str),
    ),
    hash_form=st.booleans(),
)
def test_any_quantity_survives_json_or_a_hash(qty: float | str, hash_form: bool) -> None:
    """What an issuer signs (a float, a decimal string) is what the daemon re-reads."""
    permit = {"allow": True, "symbol": "BTCUSDT", "safe_qty": qty}
    if Decimal(str(qty)) <= 0:
        return
    signed = _sign(permit)
    fields = {k: str(v) for k, v in signed.items()} if hash_form else _stored(signed)
    assert _verify(fields) == "ok"


# --- key files ---------------------------------------------------------------------------


SECRET_HEX = KEY_OLD.hex()


def test_a_key_file_with_comments_and_two_keys_per_issuer(tmp_path: Path) -> None:
    path = tmp_path / "permit-keys"
    path.write_text(
        "# issuer key-id secret\n"
        f"p33 p33-old {SECRET_HEX}\n"
        f"p33 p33-new {KEY_NEW.hex()}   # rotated in\n\n"
        f"governor gov-1 {SECRET_HEX}\n"
    )
    path.chmod(0o600)
    ring = read_keys(path)
    assert ring.kids("p33") == ["p33-old", "p33-new"] and ring.key("p33", "p33-new") == KEY_NEW
    assert SECRET_HEX not in repr(ring) and "p33-new" in repr(ring)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"p33 k1 {SECRET_HEX} extra", "line 1: expected"),
        (f"p99 k1 {SECRET_HEX}", "line 1: the first column is not an issuer"),
        (f"p33 k/1 {SECRET_HEX}", "the second column must be a key id"),
        (f"p33 k1 {SECRET_HEX[:-1]}z", "not hex"),
        (f"p33 k1 {SECRET_HEX[:40]}", "is 20 bytes; at least 32"),
        (f"p33 k1 {SECRET_HEX}\np33 k1 {SECRET_HEX}", "line 2: key id 'k1' is listed twice"),
    ],
)
def test_key_file_errors_name_the_line_never_the_secret(text: str, says: str) -> None:
    with pytest.raises(KeyFileError) as info:
        parse_keys(text)
    assert says in str(info.value)
    assert SECRET_HEX[:16] not in str(info.value)


def test_a_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "permit-keys"
    path.write_text(f"p33 k1 {SECRET_HEX}\n")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="world-readable"):
        read_keys(path)


def test_the_key_file_comes_from_the_setting_else_systemds_credential(tmp_path: Path) -> None:
    (tmp_path / "permit-keys").write_text("")
    assert keys_path(Path("/etc/x"), {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == Path("/etc/x")
    assert keys_path(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == tmp_path / "permit-keys"
    assert keys_path(None, {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    assert keys_path(None, {}) is None


# --- modes ---------------------------------------------------------------------------------


def test_modes_for_all_issuers_or_per_issuer() -> None:
    assert parse_modes("off") == {"governor": "off", "p33": "off", "p26": "off"}
    assert parse_modes("REQUIRE") == {"governor": "require", "p33": "require", "p26": "require"}
    assert parse_modes("p33=require, governor=warn") == {
        "governor": "warn",
        "p33": "require",
        "p26": "off",
    }


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("strict", "must be off, warn, require"),
        ("p33=maybe", "must be off, warn, require"),
        ("p99=require", "unknown issuer 'p99'"),
        ("p33=warn,p33=require", "p33 is given twice"),
    ],
)
def test_bad_signing_settings_stop_the_start(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("APPLY_PERMIT_SIGNING", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith("APPLY_PERMIT_SIGNING: ") and says in str(info.value)


def test_the_settings_give_each_required_issuer_its_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().signing_modes == {"governor": "off", "p33": "off"}
    monkeypatch.setenv("APPLY_PERMIT_SIGNING", "p33=require,p26=warn")
    settings = load_settings()
    assert settings.permit_signing == "p33=require,p26=warn"
    assert settings.signing_modes == {"governor": "off", "p33": "require"}  # p26 not required


def test_the_unit_offers_the_key_credential_but_starts_without_it() -> None:
    """LoadCredential= of a missing file fails the unit: it is a drop-in, shown commented."""
    from apply_layer.daemon.signing_keys import CREDENTIAL_NAME

    unit = Path(__file__).resolve().parents[2] / "deploy/systemd/quantum-apply-layer.service"
    lines = unit.read_text().splitlines()
    assert f"#LoadCredential={CREDENTIAL_NAME}:/etc/quantum/permit-keys" in lines
    assert not [line for line in lines if line.startswith("LoadCredential")]


def test_sign_permit_command_signs_and_explains_its_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apply_layer.commands import main

    keys = tmp_path / "permit-keys"
    keys.write_text(f"p33 p33-old {SECRET_HEX}\np33 p33-new {KEY_NEW.hex()}\n")
    keys.chmod(0o600)
    base = [
        "sign-permit",
        "--issuer",
        "p33",
        "--plan-id",
        "plan-1",
        "--step",
        STEP,
        "--keys-file",
        str(keys),
    ]
    assert main([*base, "--kid", "p33-old", json.dumps(P33)]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["kid"] == "p33-old"
    assert verify_permit(
        ISSUERS["p33"], "plan-1", "BTCUSDT", _stored(signed), RING, signed["sig_exp_ms"], **CLOSE
    ).ok
    for args, says in [
        (["--kid", "p33-gone", json.dumps(P33)], "has no key p33-gone for p33"),
        (["not json"], "the permit is not JSON"),
        (["[1, 2]"], "must be a JSON object"),
        ([json.dumps({"allow": True, "symbol": "BTCUSDT"})], "needs a finite safe_qty"),
        (["--pct", "150", json.dumps(P33)], "not a share in (0, 100]"),
    ]:
        assert main([*base, *args]) == 1
        assert says in capsys.readouterr().err
    no_file = ["sign-permit", "--issuer", "p33", "--plan-id", "p", "--step", STEP]
    assert main([*no_file, json.dumps(P33)]) == 1
    assert "no key file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_plan:
        main(["sign-permit", "--issuer", "p33", "--plan-id", "bad id!", "--step", STEP, "{}"])
    assert bad_plan.value.code == 2
    assert SECRET_HEX not in capsys.readouterr().err


# What issuers write from Python (P3.3 is Python: json.dumps, floats as repr) and
# what a hand-written or other-language issuer may write: each grant flag and
# quantity, as the issuer's dict holds it.
GRANT_VALUES: list[Any] = [True, False, 1, 0, 2, 1.0, 0.0, 1.5, "true", "TRUE", "1", "1.0", "yes"]
GRANT_VALUES += [None, "", float("nan")]
QTY_VALUES: list[Any] = [0.002, 0.1 + 0.2, 1e-07, 1e20, 2, 0, -0.5, "0.002", "1e-3", " 1"]
QTY_VALUES += ["-1", "abc", None, True, float("inf"), float("nan"), 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("flag", ["allow", "granted"])
@pytest.mark.parametrize("value", GRANT_VALUES, ids=repr)
def test_the_gate_and_the_signer_read_every_grant_flag_alike(flag: str, value: Any) -> None:
    """One grant rule (``permits.grants``): the signer's dict and the gate's JSON agree."""
    permit = {flag: value, "symbol": "BTCUSDT", "safe_qty": "0.002"}
    gate = evaluate_permit(ISSUERS["p33"], "string", json.dumps(permit), "BTCUSDT")
    assert grants(permit) == grants(_stored(permit)) == (gate.verdict == "allow")
    signed = _sign(permit)
    assert _verify(_stored(signed)) == "ok"  # the signed grant is the one the gate read


@pytest.mark.parametrize("field", ["safe_qty", "safe_close_qty"])
@pytest.mark.parametrize("value", QTY_VALUES, ids=repr)
def test_the_gate_and_the_signer_read_every_quantity_alike(field: str, value: Any) -> None:
    """One quantity rule (``permits.permit_qty``): a float counts as the JSON text it
    is written as, so the signed quantity is exactly the one the gate grants."""
    permit = {"allow": True, "symbol": "BTCUSDT", field: value}
    gate = evaluate_permit(ISSUERS["p33"], "string", json.dumps(permit), "BTCUSDT")
    ours = permit_qty(permit)
    assert ours == permit_qty(_stored(permit)) == gate.safe_qty
    assert (ours is not None) == (gate.verdict == "allow")
    if ours is None:
        with pytest.raises(ValueError, match="needs a finite safe_qty > 0"):
            _sign(permit)
        return
    assert _verify(_stored(_sign(permit))) == "ok"
