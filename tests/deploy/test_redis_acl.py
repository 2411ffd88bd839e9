"""The shipped Redis ACL (deploy/redis/apply-layer.acl) against a real redis-server.

The file is applied exactly as docs/DEPLOY.md says (``redis-cli < file``),
then the real daemon runs as ``quantum-apply`` through executed, denied,
killed and invalid plans with the server's ACL LOG left empty, and the
operators' ``quantum-apply-cli`` reads everything but cannot forge a permit.

Tests by name: ops/acl_probes.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from apply_layer.core import keys as K
from apply_layer.core.keys import ISSUERS
from apply_layer.ops.acl_probes import cli_probes, daemon_probes, daemon_refusals
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.functions import LIBRARY
from apply_layer.store.gate import GATE_SCRIPT, GateConfig
from tests.acl import (
    CLI,
    DAEMON,
    acl_lines,
    acl_url,
    refusals,
    run_cli,
    setuser,
)
from tests.harness import Daemon, grant, publish_plan, until, wait_result

# --- the file itself (no server) -----------------------------------------------------------


def test_the_file_is_plain_acl_setuser_lines_without_passwords() -> None:
    users = acl_lines()
    assert set(users) == {DAEMON, CLI}
    for rules in users.values():
        # Re-applying the file (an upgrade) keeps the password the operator set,
        # and a fresh user cannot log in until one is set: no reset, no nopass.
        assert not [r for r in rules if r.startswith((">", "<", "#", "!"))]
        assert "reset" not in rules and "nopass" not in rules
        assert rules[:5] == ["on", "resetkeys", "resetchannels", "clearselectors", "-@all"]
        assert "+@all" not in rules and "allkeys" not in rules and "allchannels" not in rules


def test_the_daemon_user_has_no_script_of_its_own_and_writes_no_one_elses_key() -> None:
    """Issue 21: no EVAL, SCRIPT or FUNCTION; FCALL alone in its selector; the permits,
    the block markers and the kill switch read-only but for UNLINK of a permit."""
    rules = acl_lines()[DAEMON]
    words = [w for rule in rules for w in rule.strip("()").split()]
    assert not {"+eval", "+evalsha", "+select", "+exec"} & set(words)
    assert not [w for w in words if w.startswith(("+script", "+function", "+@"))]
    fcall = [r for r in rules if "+fcall" in r]
    assert len(fcall) == 1, fcall
    assert [w for w in fcall[0].strip("()").split() if w[0] == "+"] == ["+fcall"]
    others = ("quantum:permit:", "quantum:governor:", "quantum:global:", "quantum:kill")
    for rule in rules:
        if rule in fcall:
            continue
        inner = rule.strip("()").split()
        written = [
            w
            for w in inner
            if w.startswith(("~", "%W~", "%RW~")) and w.split("~")[1].startswith(others)
        ]
        if written:  # only a permit, only removed
            assert written == ["%W~quantum:permit:*"], rule
            assert [w for w in inner if w[0] == "+"] == ["+unlink"], rule


def test_the_cli_user_grants_what_its_commands_send_and_no_write_but_claims() -> None:
    rules = acl_lines()[CLI]
    for probe in cli_probes(GateConfig(issuers=tuple(ISSUERS.values()))):
        assert probe.grant in rules, probe
    writers = [r for r in rules if "~" in r and not r.startswith("%R~")]
    assert writers == ["~" + K.glob_of(K.CLAIM_TEMPLATE)]
    assert not {"+set", "+del", "+xadd", "+evalsha", "+eval", "+hset"} & set(rules)


# --- against a real server ---------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


async def _acl_log(admin: Redis) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await admin.acl_log()
    return entries


@pytest.mark.parametrize(
    "required",
    [list(c) for n in (1, 2, 3) for c in combinations(ISSUERS, n) if "p33" in c],
    ids=lambda names: ",".join(names),
)
async def test_the_daemon_user_grants_what_every_configuration_sends(
    admin: Redis, required: list[str]
) -> None:
    """Each command, key and keyspace channel the daemon may send, as Redis itself
    judges it for the user (``ACL DRYRUN``), selectors included; and nothing of
    what it must never do (``daemon_refusals``).

    Keyspace channels are matched literally (the ACL compares a PSUBSCRIBE
    pattern as text), so each pattern the watcher can use is listed.
    """
    config = GateConfig(issuers=tuple(ISSUERS[name] for name in required))
    for probe in daemon_probes(config, "apply_layer", "host-1"):
        answer = await admin.execute_command("ACL", "DRYRUN", DAEMON, *probe.command)  # type: ignore[no-untyped-call]
        assert answer == "OK", (probe, answer)
    for refusal in daemon_refusals(config):
        answer = await admin.execute_command("ACL", "DRYRUN", DAEMON, *refusal.command)  # type: ignore[no-untyped-call]
        assert answer != "OK", refusal


async def _journal_state(redis: Redis, plan_id: str, state: str) -> bool:
    return await redis.hget(K.journal(plan_id), "state") == state


async def _beat_after(redis: Redis, earlier: object) -> bool:
    """Whether a heartbeat other than ``earlier`` has been written (each carries its time)."""
    beat = await redis.get(K.HEARTBEAT_KEY)
    return beat is not None and beat != earlier


async def test_the_daemon_runs_every_path_as_its_acl_user(
    acl_server: EmbeddedRedis, admin: Redis, workdir: Path
) -> None:
    # A 1 s poll step: a wait much shorter than that proves the keyspace
    # events reached the daemon through its literal channel grants.
    daemon = Daemon(acl_url(acl_server, DAEMON), workdir, permit_step_ms=1000)
    daemon.start()
    try:
        await daemon.ready(admin)
        started = next(r for r in daemon.records() if r["message"] == "apply_layer_started")
        assert str(started["keyspace_events"]).startswith("on (CONFIG GET refused"), started

        await publish_plan(admin, "acl-exec")
        # Taken and in its permit wait, so that the grant below wakes it.
        await until(lambda: _journal_state(admin, "acl-exec", "received"))
        await grant(admin, "acl-exec")
        executed = await wait_result(admin, "acl-exec")
        assert executed["executed"] == "True", executed
        assert int(executed["wait_ms"]) < 800, executed

        await admin.set(K.ISSUERS["p33"].key("acl-deny"), json.dumps({"allow": False}), ex=60)
        await publish_plan(admin, "acl-deny")
        assert (await wait_result(admin, "acl-deny"))["error"].startswith("p33_permit_denied")

        await admin.xadd(K.PLAN_STREAM, {"garbage": "1"})  # no plan id: rejected directly
        await publish_plan(admin, "acl-exec")  # a duplicate: logged, acknowledged

        await admin.set("quantum:kill", "1")
        await grant(admin, "acl-kill")
        await publish_plan(admin, "acl-kill")
        assert (await wait_result(admin, "acl-kill"))["error"] == "kill_switch"
        await admin.delete("quantum:kill")

        # A whole housekeeping tick (heartbeat, XPENDING, XINFO, XAUTOCLAIM) ran as this
        # user: the heartbeat that began it is followed by the next one.
        await until(lambda: admin.get(K.HEARTBEAT_KEY))
        first_beat = await admin.get(K.HEARTBEAT_KEY)
        await until(lambda: _beat_after(admin, first_beat))
    finally:
        daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.log()
    # Refused: only the watcher's one CONFIG GET at start (by design: no CONFIG
    # for the daemon, which would show requirepass and masterauth).
    entries = await _acl_log(admin)
    assert [(e["object"], int(e["count"])) for e in entries] == [("config|get", 1)], entries
    assert await refusals(admin, DAEMON) == 1
    assert "NOPERM" not in daemon.log() and "no permissions" not in daemon.log()
    assert any("duplicate plan=acl-exec" in r["message"] for r in daemon.records())


async def test_the_daemon_user_reaches_nothing_else(acl_server: EmbeddedRedis) -> None:
    client = create_redis(acl_url(acl_server, DAEMON), name="probe")
    try:
        for forbidden in (
            client.get("quantum:ledger:BTCUSDT"),
            client.set("quantum:stream:apply.plan:x", "1"),
            client.config_get("requirepass"),
            client.keys("*"),
            client.flushall(),
            client.execute_command("ACL", "LIST"),  # type: ignore[no-untyped-call]
            # No script of its own (issue 21): the functions an admin loaded, only.
            client.eval("return redis.call('GET', KEYS[1])", 1, "quantum:ledger:BTCUSDT"),
            client.execute_command("FCALL", LIBRARY.version_function, 1, "quantum:ledger:x"),  # type: ignore[no-untyped-call]
        ):
            with pytest.raises(NoPermissionError):
                await forbidden
    finally:
        await client.aclose()


async def test_the_cli_user_reads_but_cannot_forge_a_permit(
    acl_server: EmbeddedRedis, admin: Redis
) -> None:
    url = acl_url(acl_server, CLI)
    await grant(admin, "peek")
    await admin.set(K.claim("stuck"), "1-0", ex=300)
    await admin.xadd(K.RESULT_STREAM, {"plan_id": "old", "executed": "False", "wait_ms": "5"})

    shown = run_cli("permits", "peek", "--symbol", "BTCUSDT", "--json", url=url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["would_decide"].startswith("OK safe_qty=0.01")
    stats = run_cli("stats", "--from-redis", url=url)
    assert stats.returncode == 0, stats.stderr
    check = run_cli("check", "--role", "cli", url=url)
    assert check.returncode == 0 and "[ OK ] permissions (cli)" in check.stdout, check.stdout
    cleared = run_cli("dedupe-clear", "--plan", "stuck", "--yes", url=url)
    assert cleared.returncode == 0, cleared.stderr
    assert not await admin.exists(K.claim("stuck"))

    client = create_redis(url, name="forger")
    permit = K.ISSUERS["p33"].key("forged")
    try:
        for forgery in (
            client.set(permit, json.dumps({"allow": True, "safe_qty": 1})),
            client.hset(permit, mapping={"allow": "true", "safe_qty": "1"}),
            client.unlink(K.ISSUERS["governor"].key("peek")),  # nor consume a real one
            client.xadd(K.PLAN_STREAM, {"plan_id": "forged"}),
            client.set("quantum:kill", "0"),
            client.evalsha("0" * 40, 1, permit),
            client.script_load(GATE_SCRIPT),
        ):
            with pytest.raises(NoPermissionError):
                await forgery
    finally:
        await client.aclose()
    assert not await admin.exists(permit)
    assert await admin.exists(K.ISSUERS["governor"].key("peek"))


async def test_check_names_each_missing_permission(acl_server: EmbeddedRedis, admin: Redis) -> None:
    rules = acl_lines()[DAEMON]
    dropped = {"+hset", "~quantum:apply:lease:*", "&__keyspace@0__:quantum:kill"}
    await setuser(admin, "partial", *[r for r in rules if r not in dropped], ">partial-pw")
    proc = run_cli("check", url=acl_url(acl_server, "partial", "partial-pw"))
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "permissions (daemon)" in x)
    assert line.startswith("[FAIL]") and "user partial lacks" in line, line
    for rule in dropped:
        assert rule in line, line
    # Probing ran nothing: no key was written.
    assert await admin.dbsize() == 0


async def test_without_its_channels_the_daemon_polls_and_retries_slowly(
    acl_server: EmbeddedRedis, admin: Redis, workdir: Path
) -> None:
    rules = [r for r in acl_lines()[DAEMON] if not r.startswith("&")]
    await setuser(admin, "nochannels", *rules, ">nochannels-pw")
    daemon = Daemon(acl_url(acl_server, "nochannels", "nochannels-pw"), workdir)
    daemon.start()
    try:
        await daemon.ready(admin)
        started = time.monotonic()
        await grant(admin, "polled")
        await publish_plan(admin, "polled")
        assert (await wait_result(admin, "polled"))["executed"] == "True"
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
        refused = await refusals(admin, "nochannels", "channel")
    finally:
        daemon.stop()
    # Doubling from 0.1 s: about six attempts in the first 4-6 s (the old loop: ~10 a second).
    assert 2 <= refused <= 8, refused
    log = daemon.log()
    assert log.count("keyspace_watcher_refused") == 1, log
