"""``apply-layer check``: one line per check, exit 1 if any fails.

Tests by name: core/check_line.py and ops/topology.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from apply_layer.commands import main
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)


def test_all_green_against_a_real_redis(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", redis_server.url)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "[ OK ] redis" in out and "version " in out
    assert "[ OK ] functions" in out and "apply_layer_" in out
    assert "[ OK ] refusals (daemon)" in out
    assert "keyspace events" in out and "0 failed" in out


def test_unreachable_redis_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://:pw-secret@127.0.0.1:{free_port()}/0")
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert "[FAIL] redis" in captured.out and "unreachable" in captured.out
    assert "Traceback" not in captured.err and "pw-secret" not in captured.out + captured.err


def test_env_file_permissions_and_unknown_variables(
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = tmp_path / "apply-layer.env"
    env.write_text(f"APPLY_REDIS_URL={redis_server.url}\n")
    env.chmod(0o644)
    assert main(["--env-file", str(env), "check"]) == 1
    assert "world-readable" in capsys.readouterr().out
    env.chmod(0o600)
    assert main(["--env-file", str(env), "check"]) == 0
    assert "mode 0600" in capsys.readouterr().out
    monkeypatch.setenv("APPLY_PERMIT_WAITMS", "10")
    assert main(["--env-file", str(env), "check"]) == 1
    assert "APPLY_PERMIT_WAITMS" in capsys.readouterr().out


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", "--bogus"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_check_in_testnet_mode_against_the_exchange(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fake_binance import API_KEY, API_SECRET, FakeBinance

    with FakeBinance() as fake:
        fake.skew_ms = 2500
        for name, value in {
            "APPLY_REDIS_URL": redis_server.url,
            "APPLY_MODE": "testnet",
            "APPLY_ALLOWLIST": "BTCUSDT,ETHUSDT",
            "APPLY_BINANCE_BASE_URL": fake.url,
            "BINANCE_TESTNET_API_KEY": API_KEY,
            "BINANCE_TESTNET_API_SECRET": API_SECRET,
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["check"]) == 0
        out = capsys.readouterr().out
        assert "[ OK ] binance credentials" in out and "[ OK ] binance position mode" in out
        offset = re.search(r"binance clock offset[^\n]*?([+-]\d+) ms \(round trip", out)
        assert offset is not None, out
        assert 2400 <= int(offset.group(1)) <= 2600  # the fake's 2500 ms skew, measured
        assert "[ OK ] binance filters BTCUSDT" in out and "[ OK ] binance filters ETHUSDT" in out
        assert API_SECRET not in out and API_KEY not in out
        fake.dual_side = True
        assert main(["check"]) == 1
        assert "[FAIL] binance position mode" in capsys.readouterr().out
        monkeypatch.setenv("BINANCE_TESTNET_API_SECRET", "wrong-secret")
        assert main(["check"]) == 1
        assert "[FAIL] binance credentials" in capsys.readouterr().out


def test_run_without_testnet_credentials_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_MODE", "testnet")
    monkeypatch.setenv("APPLY_METRICS_PORT", "0")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "APPLY_BINANCE_API_KEY" in err
    assert "Traceback" not in err
