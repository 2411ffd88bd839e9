"""Secrets and settings (issue 13): no password in any output, a bad URL stops the start.

Each test here failed on the code before the fix: ``?password=`` was printed
by ``permits`` and ``stats --from-redis``, a password with ``#`` or ``/``
passed validation and then crashed ``run``/``check`` with a traceback that
showed its start, the Binance settings were named without their ``APPLY_``
prefix, and the metrics endpoint listened on every address.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apply_layer.commands import main
from apply_layer.core.errors import SettingsError
from apply_layer.ops.embedded_redis import free_port
from apply_layer.settings import load_settings
from apply_layer.store.connection import redact_url

SECRET = "hunter2xyz"
HIDDEN = "redis://<hidden: not a valid Redis URL>"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "BINANCE_"))}
    return subprocess.run(
        [sys.executable, "-m", "apply_layer", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- redaction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://u:pw@h:6380/1", "rediss://u:***@h:6380/1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        (f"redis://h:6379/0?password={SECRET}", "redis://h:6379/0?password=***"),
        (f"redis://u:{SECRET}@h/2?password={SECRET}&db=2", "redis://u:***@h/2?password=***&db=2"),
        (f"rediss://h/0?ssl_password={SECRET}", "rediss://h/0?ssl_password=***"),
        (f"unix://:{SECRET}@/run/redis/redis.sock?db=1", "unix://:***@/run/redis/redis.sock?db=1"),
        # the password where the user name goes (no ':'): hidden too
        (f"redis://{SECRET}@h/0", HIDDEN),
        # URLs that do not parse: their "host" may be the start of the password
        (f"redis://:{SECRET[:4]}#{SECRET[4:]}@h:6379/0", HIDDEN),
        (f"redis://{SECRET[:4]}/{SECRET[4:]}@h", HIDDEN),
        (f"redis://h/0?password={SECRET[:4]}&{SECRET[4:]}", HIDDEN),
    ],
)
def test_redact_url_hides_every_secret(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert SECRET[4:] not in redact_url(url)


@pytest.mark.parametrize("command", [["permits", "p1"], ["stats", "--from-redis"], ["check"]])
def test_a_query_password_is_never_printed_when_redis_is_down(command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    proc = _run_cli(*command, APPLY_REDIS_URL=url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# --- the whole URL is validated at load -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:{SECRET[:3]}#{SECRET[3:]}@127.0.0.1:6379/0", "contains '#'"),
        (f"redis://:{SECRET[:3]}/{SECRET[3:]}@127.0.0.1:6379/0", "host or port does not parse"),
        (f"redis://{SECRET[:3]}/{SECRET[3:]}@127.0.0.1", "the path must be a database number"),
        (f"redis://:{SECRET[:3]}?{SECRET[3:]}@127.0.0.1/0", "host or port does not parse"),
        ("redis://127.0.0.1:99999/0", "host or port does not parse"),
        ("redis://127.0.0.1:0/0", "port 0"),
        ("redis://127.0.0.1:port/0", "host or port does not parse"),
        ("redis://[zzz]:6379/0", "host or port does not parse"),
        ("redis://[::1:6379/0", "host or port does not parse"),
        ("redis://::1:6379/0", "host or port does not parse"),
        ("redis://127.0.0.1:6379/x", "the path must be a database number"),
        ("redis://127.0.0.1:6379/0?db=x", "?db= must be a database number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=1", "'socket_timeout' is not supported"),
        ("redis://127.0.0.1:6379/0?health_check_interval=1", "is not supported"),
        (f"redis://h/0?password={SECRET[:3]}&{SECRET[3:]}", "an unknown query parameter"),
        ("redis://h/0?ssl_cert_reqs=none", "needs a rediss:// URL"),
        ("rediss://h/0?ssl_min_version=x", "not accepted by the Redis client"),
        ("redis://h/0?db=1&db=2", "given twice"),
        ("redis://user@h/0", "a user name without a password"),
        ("redis://bad_host!/0", "not a host name"),
        ("unix://host/run/redis.sock", "has no host"),
        ("unix://", "absolute socket path"),
        ("redis://h/0\n", "control character"),
        ("http://h/0", "must start with"),
    ],
)
def test_bad_redis_urls_are_refused_at_load_without_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("APPLY_REDIS_URL: ") and says in message, message
    assert SECRET[3:] not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://",
        "redis://[::1]:6379/15",
        "redis://apply:p%23ss%2Fw%40rd@10.0.0.5:6379/0",
        "redis://h:6379/0?password=p%26w&db=3",
        "rediss://u:pw@redis.example.com:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis/redis-server.sock?db=0",
        "unix://quantum-apply:pw@/run/redis/redis-server.sock",
    ],
)
def test_good_redis_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", url)
    assert load_settings().redis_url == url


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_exit_2_with_one_line_for_a_password_with_a_hash(command: str) -> None:
    url = f"redis://apply:{SECRET[:3]}#{SECRET[3:]}@127.0.0.1:{free_port()}/0"
    proc = _run_cli(command, APPLY_REDIS_URL=url, APPLY_METRICS_PORT="0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "APPLY_REDIS_URL" in lines[0], proc.stderr
    assert SECRET[:3] not in proc.stderr + proc.stdout  # not even the start of it


def test_the_settings_repr_never_shows_the_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://u:{SECRET}@h:6379/0")
    settings = load_settings()
    assert settings.redis_url.endswith("@h:6379/0")
    assert SECRET not in repr(settings) and SECRET not in str(settings)


# --- the variable the operator sets is the one named -------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APPLY_BINANCE_RECV_WINDOW_MS", "0"),
        ("APPLY_BINANCE_HTTP_TIMEOUT_SEC", "abc"),
        ("APPLY_BINANCE_BASE_URL", "ftp://x"),
    ],
)
def test_binance_settings_are_named_with_their_apply_prefix(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith(f"{name}: "), str(info.value)


# --- the metrics endpoint listens on loopback unless told otherwise -------------------------------


def test_metrics_bind_defaults_to_loopback_and_is_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().metrics_bind == "127.0.0.1"
    for good in ("0.0.0.0", "::", "::1", "10.1.2.3", "localhost"):
        monkeypatch.setenv("APPLY_METRICS_BIND", good)
        assert load_settings().metrics_bind == good
    monkeypatch.setenv("APPLY_METRICS_BIND", "every-interface")
    with pytest.raises(SettingsError, match=r"^APPLY_METRICS_BIND: must be an IP address"):
        load_settings()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on ``port`` (Linux /proc/net/tcp*)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, _, hexport = fields[1].partition(":")
            if int(hexport, 16) == port and fields[3] == "0A" and len(addr) == width:
                found.add(addr)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_the_daemon_serves_metrics_on_loopback_only_by_default(tmp_path: Path) -> None:
    from apply_layer.ops.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as server:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "BINANCE_"))}
        env.update(APPLY_REDIS_URL=server.url, APPLY_METRICS_PORT=str(port), APPLY_MODE="dry_run")
        log = tmp_path / "daemon.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "apply_layer", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 20
            while "apply_layer_started" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            assert _listening_addresses(port) == {"0100007F"}, log.read_text()  # 127.0.0.1
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
            assert "metrics_bind=127.0.0.1" in log.read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_permits_names_the_redacted_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://127.0.0.1:{port}/0?password={SECRET}")
    assert main(["permits", "p1"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0?password=***" in err
    assert SECRET not in err
