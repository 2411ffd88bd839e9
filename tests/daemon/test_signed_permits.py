"""Signed permits against the real daemon and a real Redis, in every mode.

Issuers sign with ``apply_layer.core.signing.sign_permit`` (the library call
docs/SECURITY.md shows) or with ``apply-layer sign-permit`` (the operators'
command); the daemon checks the signatures of the permits its gate consumed.

Tests by name: daemon/signature_policy.py, and permits signed by
commands/sign_permit.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.core.signing import sign_permit
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.harness import Daemon, publish_plan, wait_result

SYM = "BTCUSDT"
KEYS = {
    ("p33", "p33-2025a"): bytes.fromhex("11" * 32),
    ("p33", "p33-2025b"): bytes.fromhex("22" * 32),
    ("governor", "gov-1"): bytes.fromhex("33" * 32),
}


def _key_file(directory: Path, name: str = "permit-keys") -> Path:
    path = directory / name
    path.write_text(
        "# issuer key-id secret (hex)\n"
        + "".join(f"{issuer} {kid} {key.hex()}\n" for (issuer, kid), key in KEYS.items())
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return _key_file(tmp_path)


@pytest.fixture
def daemons(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Any]:
    made: list[Daemon] = []

    def make(name: str, **settings: Any) -> Daemon:
        daemon = Daemon(redis_server.url, tmp_path, name, **settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


def _p33(safe_qty: float = 0.01) -> dict[str, Any]:
    return {
        "allow": True,
        "symbol": SYM,
        "safe_qty": safe_qty,
        "exchange_position_amt": 0.012,
        "reason": "sanity_checks_passed",
    }


GOVERNOR = {"granted": True, "symbol": SYM, "decision": "EXECUTE"}


async def _put(redis: Redis, issuer: str, plan_id: str, permit: dict[str, Any]) -> None:
    await redis.set(K.ISSUERS[issuer].key(plan_id), json.dumps(permit), ex=60)


def _signed(issuer: str, kid: str, plan_id: str, permit: dict[str, Any], **kw: Any) -> Any:
    """Signed for the close ``publish_plan`` asks for by default (CLOSE_PARTIAL_75)."""
    kw.setdefault("step", "CLOSE_PARTIAL_75")
    return sign_permit(permit, issuer=issuer, plan_id=plan_id, kid=kid, key=KEYS[issuer, kid], **kw)


async def _run_plan(
    redis: Redis, plan_id: str, p33: dict[str, Any], governor: dict[str, Any] = GOVERNOR
) -> dict[str, str]:
    await _put(redis, "governor", plan_id, governor)
    await _put(redis, "p33", plan_id, p33)
    await publish_plan(redis, plan_id)
    return await wait_result(redis, plan_id)


def _records(daemon: Daemon, message: str) -> list[dict[str, Any]]:
    return [r for r in daemon.records() if r.get("message") == message]


async def test_off_by_default_unsigned_permits_execute(redis: Redis, daemons: Any) -> None:
    daemon = await daemons("off").start().ready(redis)
    result = await _run_plan(redis, "unsigned-off", _p33())
    assert result["executed"] == "True", result
    assert _records(daemon, "apply_layer_started")[0]["permit_signing"] == "off"


async def test_require_executes_signed_permits_and_blocks_a_forgery(
    redis: Redis, daemons: Any, keys_file: Path
) -> None:
    daemon = daemons("req", permit_signing="p33=require", permit_keys_file=str(keys_file))
    await daemon.start().ready(redis)
    started = _records(daemon, "apply_layer_started")[0]["permit_signing"]
    assert started == "p33=require (keys p33-2025a, p33-2025b)"
    assert "22" * 16 not in daemon.log()  # key ids are logged, never a secret

    good = await _run_plan(redis, "signed-ok", _signed("p33", "p33-2025b", "signed-ok", _p33()))
    assert good["executed"] == "True", good  # the governor is off: its permit needs no sig

    # A forgery: someone who can write to Redis but holds no key.
    forged = {**_p33(safe_qty=0.012), "kid": "p33-2025b", "sig": "ab" * 32, "sig_exp_ms": 9e15}
    blocked = await _run_plan(redis, "forged", forged)
    assert (blocked["executed"], blocked["decision"]) == ("False", "BLOCKED"), blocked
    assert blocked["error"] == "bad_signature:p33"
    # Consumed by the atomic step: the forgery blocked its own plan, and is gone.
    assert not await redis.exists(
        K.ISSUERS["p33"].key("forged"), K.ISSUERS["governor"].key("forged")
    )
    assert (await redis.hgetall(K.journal("forged")))["state"] == "blocked"

    # A genuine signature on a changed quantity, a missing one, a plan id moved.
    raised = {**_signed("p33", "p33-2025a", "raised", _p33(0.005)), "safe_qty": 0.012}
    assert (await _run_plan(redis, "raised", raised))["error"] == "bad_signature:p33"
    assert (await _run_plan(redis, "nosig", _p33()))["error"] == "bad_signature:p33"
    moved = _signed("p33", "p33-2025a", "other-plan", _p33())
    assert (await _run_plan(redis, "moved", moved))["error"] == "bad_signature:p33"

    reasons = {r["plan_id"]: r["reason"] for r in _records(daemon, "permit_signature_rejected")}
    assert reasons == {
        "forged": "mismatch",
        "raised": "mismatch",
        "nosig": "missing",
        "moved": "mismatch",
    }
    orders = [r for r in _records(daemon, "plan_outcome") if r["status"] == "EXECUTED"]
    assert [r["plan_id"] for r in orders] == ["signed-ok"]


async def test_require_blocks_an_expired_signature(
    redis: Redis, daemons: Any, keys_file: Path
) -> None:
    daemon = daemons("exp", permit_signing="require", permit_keys_file=str(keys_file))
    await daemon.start().ready(redis)
    now = time.time()
    stale = _signed("p33", "p33-2025a", "stale", _p33(), ttl_sec=30, now=now - 60)
    governor = _signed("governor", "gov-1", "stale", GOVERNOR)
    result = await _run_plan(redis, "stale", stale, governor)
    assert result["error"] == "bad_signature:p33", result
    (rejected,) = _records(daemon, "permit_signature_rejected")
    assert (rejected["issuer"], rejected["reason"], rejected["kid"]) == (
        "p33",
        "expired",
        "p33-2025a",
    )

    # Both issuers required to sign: an unsigned governor permit blocks too.
    fresh = _signed("p33", "p33-2025a", "gov-unsigned", _p33())
    result = await _run_plan(redis, "gov-unsigned", fresh)
    assert result["error"] == "bad_signature:governor", result


async def test_rotation_old_and_new_key_ids_both_execute(
    redis: Redis, daemons: Any, tmp_path: Path
) -> None:
    """Keys come from systemd's credential directory here (no APPLY_PERMIT_KEYS_FILE)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    _key_file(credentials)
    daemon = daemons("rot", permit_signing="p33=require,governor=require")
    daemon.env["CREDENTIALS_DIRECTORY"] = str(credentials)
    await daemon.start().ready(redis)

    old = _signed("p33", "p33-2025a", "rot-old", _p33())
    result = await _run_plan(
        redis, "rot-old", old, _signed("governor", "gov-1", "rot-old", GOVERNOR)
    )
    assert result["executed"] == "True", result

    # The operators' command, signing with the newest key (the last in the file).
    signed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "apply_layer",
            "sign-permit",
            "--issuer",
            "p33",
            "--plan-id",
            "rot-new",
            "--step",
            "CLOSE_PARTIAL_75",
            "--keys-file",
            str(credentials / "permit-keys"),
        ],
        input=json.dumps(_p33()),
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("APPLY_")},
    )
    assert signed.returncode == 0, signed.stderr
    new = json.loads(signed.stdout)
    assert new["kid"] == "p33-2025b"
    result = await _run_plan(
        redis, "rot-new", new, _signed("governor", "gov-1", "rot-new", GOVERNOR)
    )
    assert result["executed"] == "True", result
    assert not _records(daemon, "permit_signature_rejected")


async def test_warn_logs_and_counts_but_executes(
    redis: Redis, daemons: Any, keys_file: Path
) -> None:
    port = free_port()
    daemon = daemons(
        "warn", permit_signing="warn", permit_keys_file=str(keys_file), metrics_port=port
    )
    await daemon.start().ready(redis)
    unsigned = await _run_plan(redis, "warn-unsigned", _p33())
    assert unsigned["executed"] == "True", unsigned
    signed = _signed("p33", "p33-2025a", "warn-signed", _p33())
    governor = _signed("governor", "gov-1", "warn-signed", GOVERNOR)
    assert (await _run_plan(redis, "warn-signed", signed, governor))["executed"] == "True"

    warned = [
        (r["plan_id"], r["issuer"], r["reason"])
        for r in _records(daemon, "permit_signature_invalid")
    ]
    assert sorted(warned) == [
        ("warn-unsigned", "governor", "missing"),
        ("warn-unsigned", "p33", "missing"),
    ]
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for issuer, result, count in [
        ("p33", "missing", 1),
        ("governor", "missing", 1),
        ("p33", "ok", 1),
        ("governor", "ok", 1),
    ]:
        line = f'apply_permit_signatures_total{{issuer="{issuer}",result="{result}"}} {count}.0'
        assert line in text, text


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"permit_signing": "require"}, "needs the issuers' keys"),
        ({"permit_signing": "p33=require", "permit_keys_file": "/nonexistent"}, "No such file"),
    ],
)
def test_require_without_usable_keys_exits_2(
    redis_server: EmbeddedRedis, tmp_path: Path, settings: dict[str, Any], says: str
) -> None:
    daemon = Daemon(redis_server.url, tmp_path, "nokeys", **settings).start()
    assert daemon.wait(30) == 2
    lines = daemon.log().strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "invalid configuration" in lines[0], lines


def test_a_world_readable_key_file_stops_the_start(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    keys = _key_file(tmp_path)
    keys.chmod(0o644)
    daemon = Daemon(
        redis_server.url, tmp_path, "open", permit_signing="warn", permit_keys_file=str(keys)
    ).start()
    assert daemon.wait(30) == 2
    assert "world-readable" in daemon.log() and "11" * 32 not in daemon.log()


def test_check_reports_the_signing_modes_and_missing_keys(
    redis_server: EmbeddedRedis,
    keys_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apply_layer.commands import main

    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("APPLY_REDIS_URL", redis_server.url)
    monkeypatch.setenv("APPLY_PERMIT_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("APPLY_PERMIT_SIGNING", "p33=require,governor=warn")
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "[ OK ] permit signing" in out
    assert "governor=warn (keys gov-1), p33=require (keys p33-2025a, p33-2025b)" in out
    monkeypatch.setenv("APPLY_REQUIRED_PERMITS", "governor,p33,p26")
    monkeypatch.setenv("APPLY_PERMIT_SIGNING", "require")
    assert main(["check"]) == 1
    assert "[FAIL] permit signing" in capsys.readouterr().out
