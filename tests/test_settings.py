"""Settings: contract defaults, env files, and one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apply_layer.core.errors import SettingsError
from apply_layer.settings import load_settings, unknown_env_vars

pytestmark = pytest.mark.unit  # scripts/test.sh --fast


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)


def test_contract_defaults() -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.mode == "dry_run"
    assert s.allowlist == ["BTCUSDT"]
    assert (s.poll_sec, s.permit_wait_ms, s.permit_step_ms) == (5.0, 1200, 100)
    assert s.required_permits == ["governor", "p33"]
    assert (s.plan_max_age_sec, s.dedupe_ttl_sec) == (60.0, 300)
    assert (s.log_level, s.log_format, s.metrics_port) == ("INFO", "console", 8043)
    assert s.kill_switch is False
    assert s.journal_ttl_sec == 7 * 24 * 3600
    assert s.consumer_group == "apply_layer"
    assert s.binance_api_key is None


def test_environment_and_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "apply-layer.env"
    env.write_text(
        "# as systemd's EnvironmentFile= reads it\n"
        "APPLY_MODE=paper\n"
        'APPLY_ALLOWLIST="BTCUSDT, ETHUSDT"\n'
        "APPLY_REQUIRED_PERMITS=governor,p33,p26\n"
        "APPLY_KILL_SWITCH=true\n"
        "BINANCE_TESTNET_API_KEY=key-from-old-name\n"
        "APPLY_BINANCE_API_SECRET=s3cret\n"
    )
    monkeypatch.setenv("APPLY_PERMIT_WAIT_MS", "900")
    s = load_settings(env)
    assert s.mode == "paper"
    assert s.allowlist == ["BTCUSDT", "ETHUSDT"]
    assert s.required_permits == ["governor", "p33", "p26"]
    assert s.kill_switch is True
    assert s.permit_wait_ms == 900
    assert s.binance_api_key is not None
    assert s.binance_api_key.get_secret_value() == "key-from-old-name"
    assert "s3cret" not in repr(s) and "key-from-old-name" not in repr(s)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("APPLY_MODE", "live", "APPLY_MODE: "),
        ("APPLY_PERMIT_WAIT_MS", "abc", "APPLY_PERMIT_WAIT_MS: "),
        ("APPLY_PERMIT_STEP_MS", "0", "APPLY_PERMIT_STEP_MS: "),
        ("APPLY_ALLOWLIST", "btc-usdt", "APPLY_ALLOWLIST: 'btc-usdt' is not a symbol"),
        ("APPLY_ALLOWLIST", " ", "APPLY_ALLOWLIST: names no symbol"),
        ("APPLY_ALLOWLIST", ",", "APPLY_ALLOWLIST: names no symbol"),
        ("APPLY_REQUIRED_PERMITS", "governor", "APPLY_REQUIRED_PERMITS: must include p33"),
        ("APPLY_REQUIRED_PERMITS", "p33,p99", "APPLY_REQUIRED_PERMITS: unknown issuer 'p99'"),
        ("APPLY_REDIS_URL", "localhost:6379", "APPLY_REDIS_URL: must start with"),
        ("APPLY_LOG_FORMAT", "xml", "APPLY_LOG_FORMAT: "),
        ("APPLY_METRICS_PORT", "70000", "APPLY_METRICS_PORT: "),
        ("APPLY_KILL_SWITCH", "maybe", "APPLY_KILL_SWITCH: "),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.env")


def test_unknown_apply_variables_are_reported() -> None:
    env = {"APPLY_MODE": "paper", "APPLY_PERMIT_WAITMS": "5", "OTHER": "x"}
    assert unknown_env_vars(env) == ["APPLY_PERMIT_WAITMS"]


def test_the_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    env = tmp_path / "bad.env"
    env.write_text("APPLY_MODE=live\n")
    proc = subprocess.run(
        [sys.executable, "-m", "apply_layer", "--env-file", str(env), "permits", "p1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "APPLY_MODE" in lines[0]
    assert "Traceback" not in proc.stderr


def test_empty_values_mean_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "apply-layer.env"
    env.write_text("APPLY_BINANCE_API_KEY=\nAPPLY_CONSUMER_NAME=\nAPPLY_MODE=\n")
    monkeypatch.setenv("BINANCE_TESTNET_API_KEY", "from-the-old-name")
    s = load_settings(env)
    assert s.binance_api_key is not None
    assert s.binance_api_key.get_secret_value() == "from-the-old-name"
    assert s.mode == "dry_run" and s.consumer_name
