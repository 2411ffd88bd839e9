"""No Redis or Sentinel password in any output, Sentinel outages included (issue 20).

redis-py 6.4 to 7.3 print a connection pool's password in its repr, and a
Sentinel's "no master found" error carries that repr: with redis 7.0.0 the
daemon's ``redis_unavailable``, ``keyspace_watcher_failed`` and
``apply_layer_started`` lines showed ``password=...``. pyproject's floor
(``redis>=7.4.1``) keeps those releases out; this test runs the daemon and
the operator's commands on the locked version against a password-protected
primary and Sentinel, healthy and through both outages (the Sentinel gone,
the primary gone), and looks for either password anywhere they print.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from tests.harness import Daemon
from tests.sentinels import sentinel_supported

pytestmark = pytest.mark.skipif(not sentinel_supported(), reason="needs redis-server --sentinel")

REDIS_PASSWORD = "rpw-Zq81x#tail"
SENTINEL_PASSWORD = "spw-Kt55v/tail"
SERVICE = "leakcheck"


def _forms(secret: str) -> list[str]:
    """The password as it could be printed: raw, URL-quoted, or its distinctive core."""
    return [secret, urllib.parse.quote(secret, safe=""), secret[4:9]]


class AuthSentinel:
    """One ``redis-server --sentinel`` with a password, watching a password-protected primary."""

    def __init__(self, workdir: Path, primary_port: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
            f'requirepass "{SENTINEL_PASSWORD}"\n'
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n"
            f'sentinel auth-pass {SERVICE} "{REDIS_PASSWORD}"\n'
            f"sentinel down-after-milliseconds {SERVICE} 60000\n"
        )
        self.log = workdir / f"sentinel-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [find_redis_server(), str(self.conf), "--sentinel"], stdout=out, stderr=out
            )

    async def ready(self) -> None:
        client = Redis(port=self.port, password=SENTINEL_PASSWORD, socket_timeout=1)
        try:
            for _ in range(200):
                try:
                    # The raw command: its parser differs between redis-py releases,
                    # and this test also runs on the ones the floor keeps out.
                    ask = ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                    if await client.execute_command(*ask):  # type: ignore[no-untyped-call]
                        return
                except Exception:
                    pass
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise AssertionError(f"sentinel not ready: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "apply_layer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"$ apply-layer {' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"


async def _wait_for(daemon: Daemon, text: str, after: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log()[after:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {text} in the daemon's log:\n{daemon.log()[after:]}")


@pytest.mark.slow
async def test_no_password_in_logs_errors_check_or_stats_through_sentinel_outages(
    tmp_path: Path,
) -> None:
    primary = EmbeddedRedis(
        notify_keyspace_events="K$h",
        extra_args=("--requirepass", REDIS_PASSWORD),
    )
    primary.start()
    sentinel = AuthSentinel(tmp_path, primary.port)
    sentinel.start()
    daemon: Daemon | None = None
    outputs: list[str] = []
    try:
        await sentinel.ready()
        settings: dict[str, Any] = {
            "redis_sentinels": f"127.0.0.1:{sentinel.port}",
            "redis_sentinel_service": SERVICE,
            "redis_sentinel_password": SENTINEL_PASSWORD,
            "log_format": "console",
            "mode": "dry_run",
        }
        url = f"redis://:{urllib.parse.quote(REDIS_PASSWORD, safe='')}@127.0.0.1:1/0"
        daemon = Daemon(url, tmp_path, "leaky", **settings).start()
        admin = Redis(port=primary.port, password=REDIS_PASSWORD, decode_responses=True)
        try:
            await daemon.ready(admin)
        finally:
            await admin.aclose()
        env = {k: v for k, v in daemon.env.items() if k != "APPLY_CONSUMER_NAME"}
        outputs += [_cli(env, "check"), _cli(env, "stats", "--from-redis")]

        # Outage 1: the Sentinel answers, the primary it names does not.
        mark = len(daemon.log())
        primary.stop(kill=True)
        await _wait_for(daemon, "redis_unavailable", mark)
        outputs += [_cli(env, "check"), _cli(env, "stats", "--from-redis")]
        primary.start()
        await _wait_for(daemon, "redis_recovered", mark, timeout=30)

        # Outage 2: the primary and the only Sentinel are gone ("no master found").
        mark = len(daemon.log())
        sentinel.stop()
        primary.stop(kill=True)
        await _wait_for(daemon, "redis_unavailable", mark)
        outputs += [_cli(env, "check"), _cli(env, "stats", "--from-redis")]
        outputs += [_cli(env, "permits", "p-1"), _cli(env, "dedupe-clear")]
        primary.start()
        sentinel.start()
        await _wait_for(daemon, "redis_recovered", mark, timeout=30)
    finally:
        if daemon is not None:
            daemon.stop()
        sentinel.stop()
        primary.close()
    assert daemon is not None
    everything = daemon.log() + "\n".join(outputs)
    # The test saw what it was meant to see: the outages were reported, the commands ran.
    for seen in ("apply_layer_started", "redis_unavailable", "redis_recovered"):
        assert seen in everything
    assert "No master found" in everything or "no master" in everything.lower()
    assert "check" in outputs[0] and outputs[1].startswith("$ apply-layer stats")
    for secret in (REDIS_PASSWORD, SENTINEL_PASSWORD):
        for form in _forms(secret):
            assert form not in everything, f"{form!r} printed:\n{everything}"
    # Whatever redacts it: ours (***) or redis-py's repr (<REDACTED>), nothing else.
    for at in re.finditer("password=", everything):
        shown = everything[at.end() : at.end() + 10]
        assert shown.startswith(("***", "<REDACTED>")), everything[at.start() - 300 : at.end() + 60]


def test_the_forms_searched_for_include_the_quoted_password() -> None:
    assert urllib.parse.quote(REDIS_PASSWORD, safe="") in _forms(REDIS_PASSWORD)
    assert os.sep not in _forms(REDIS_PASSWORD)[2]
