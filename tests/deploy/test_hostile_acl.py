"""The daemon's Redis credential cannot authorise itself (issue 21, finding 2).

A hostile review with the shipped ACL's ``quantum-apply`` credentials could
write governor and P3.3 permits, publish plans, delete the plan stream, turn
the kill switch off, write other databases, and EVAL any script, one that
looped until Redis answered BUSY to everyone. Here each of those is tried
for real with that credential and must be refused (``NOPERM``) with nothing
changed; ``check --role daemon`` must prove each refusal; and without the
function library an admin loads, the daemon must not run any plan: it
refuses to start, and if the library vanishes while it runs, plans wait.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import NoPermissionError

from apply_layer.core import keys as K
from apply_layer.ops.acl_probes import daemon_refusals
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from apply_layer.store.functions import LIBRARY, build
from apply_layer.store.gate import GateConfig
from tests.acl import (  # the shipped ACL on a real server, as deployed
    DAEMON,
    IN_CI,
    acl_lines,
    acl_url,
    apply_acl_file,
    load_functions,
    run_cli,
    server_version,
    setuser,
)
from tests.harness import Daemon, grant, pending_count, publish_plan, until, wait_result

GOV, P33 = K.ISSUERS["governor"], K.ISSUERS["p33"]
LOOP = "while true do end"  # what froze Redis: SCRIPT KILL cannot stop it once it writes
LOOPING_LIBRARY = f"#!lua name=x\nredis.register_function('x', function() {LOOP} end)"


def _acl_server(*, functions: bool) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(notify_keyspace_events="K$h") as server:
        if server_version(server) < (7, 0):
            if IN_CI:
                pytest.fail("CI needs redis-server >= 7 for the ACL tests")
            pytest.skip("the ACL's selectors and Functions need redis-server >= 7")
        apply_acl_file(server, functions=functions)
        yield server


@pytest.fixture
def shipped() -> Iterator[EmbeddedRedis]:
    """The shipped ACL and the function library, as docs/DEPLOY.md installs them."""
    yield from _acl_server(functions=True)


@pytest.fixture
def no_library() -> Iterator[EmbeddedRedis]:
    """The shipped ACL, but the admin has not loaded the function library."""
    yield from _acl_server(functions=False)


async def test_the_daemon_credential_cannot_authorise_itself(shipped: EmbeddedRedis) -> None:
    admin = create_redis(shipped.url, name="admin")
    daemon = create_redis(acl_url(shipped, DAEMON), name="hostile")
    plan = "forge-1"
    try:
        await admin.xadd(K.PLAN_STREAM, {"plan_id": "real"})
        await admin.set(K.governor_block(plan), "risk")
        await admin.set("quantum:kill", "1")
        permit = json.dumps({"granted": True, "allow": True, "safe_qty": "1"})
        # Run first what cannot hang the server if allowed: on main EVAL was granted.
        with pytest.raises(NoPermissionError):
            await daemon.eval("return 1", 0)
        attempts = {
            "SET governor permit": daemon.set(GOV.key(plan), permit),
            "SET P3.3 permit": daemon.set(P33.key(plan), permit),
            "HSET P3.3 permit": daemon.hset(P33.key(plan), mapping={"allow": "1", "safe_qty": "1"}),
            "XADD plan": daemon.xadd(K.PLAN_STREAM, {"plan_id": plan, "symbol": "BTCUSDT"}),
            "DEL plan stream": daemon.delete(K.PLAN_STREAM),
            "XTRIM plan stream": daemon.xtrim(K.PLAN_STREAM, maxlen=0),
            "kill switch off": daemon.set("quantum:kill", "0"),
            "kill switch deleted": daemon.delete("quantum:kill"),
            "global kill switch off": daemon.set("quantum:global:kill_switch", "0"),
            "governor block lifted": daemon.delete(K.governor_block(plan)),
            "other database": daemon.execute_command("SELECT", "1"),  # type: ignore[no-untyped-call]
            "EVAL loop": daemon.eval(LOOP, 0),
            "EVAL writing a permit": daemon.eval(
                "return redis.call('SET', KEYS[1], ARGV[1])", 1, P33.key(plan), permit
            ),
            "SCRIPT LOAD loop": daemon.script_load(LOOP),
            "FUNCTION LOAD loop": daemon.execute_command(  # type: ignore[no-untyped-call]
                "FUNCTION",
                "LOAD",
                f"#!lua name=x\nredis.register_function('x', function() {LOOP} end)",
            ),
            "FUNCTION DELETE": daemon.execute_command("FUNCTION", "DELETE", LIBRARY.name),  # type: ignore[no-untyped-call]
            "FUNCTION FLUSH": daemon.execute_command("FUNCTION", "FLUSH"),  # type: ignore[no-untyped-call]
            "FCALL on a key outside its grants": daemon.execute_command(  # type: ignore[no-untyped-call]
                "FCALL", f"{LIBRARY.name}_claim", 2, "quantum:ledger:x", "quantum:ledger:y"
            ),
        }
        allowed = []
        for name, attempt in attempts.items():
            try:
                await attempt
            except NoPermissionError:
                continue
            allowed.append(name)
        assert allowed == [], allowed
        # Nothing changed, and Redis answers everyone at once (no BUSY script).
        assert await admin.exists(GOV.key(plan), P33.key(plan)) == 0
        assert await admin.xlen(K.PLAN_STREAM) == 1
        assert await admin.get("quantum:kill") == "1"
        assert await admin.get(K.governor_block(plan)) == "risk"
        libraries = [
            dict(zip(lib[::2], lib[1::2], strict=True)) for lib in await admin.function_list()
        ]
        assert [lib["library_name"] for lib in libraries] == [LIBRARY.name]
        assert await asyncio.wait_for(admin.ping(), 1)
    finally:
        await daemon.aclose()
        await admin.aclose()


async def test_check_proves_each_refusal_of_the_shipped_daemon_user(
    shipped: EmbeddedRedis,
) -> None:
    proc = run_cli("check", "--role", "daemon", url=acl_url(shipped, DAEMON))
    lines = {line[7:].split("  ")[0].strip(): line for line in proc.stdout.splitlines()}
    refused = lines["refusals (daemon)"]
    assert refused.startswith("[ OK ]"), proc.stdout
    for refusal in daemon_refusals(GateConfig()):
        assert refusal.label in refused, (refusal, refused)
    assert lines["permissions (daemon)"].startswith("[ OK ]"), proc.stdout
    assert lines["functions"].startswith("[ OK ]") and LIBRARY.name in lines["functions"]

    # A user that may do what the daemon must not: named, and a failed check.
    admin = create_redis(shipped.url, name="admin")
    try:
        await admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", "lax", "on", ">lax-pw", "+@all", "~*", "&*"
        )
    finally:
        await admin.aclose()
    lax = run_cli("check", "--role", "daemon", url=acl_url(shipped, "lax", "lax-pw"))
    assert lax.returncode == 1
    line = next(x for x in lax.stdout.splitlines() if "refusals (daemon)" in x)
    assert line.startswith("[FAIL]") and "user lax may" in line, line
    assert "write the p33 permit" in line and "run a script of its own" in line, line


async def test_without_the_library_the_daemon_does_not_start(
    no_library: EmbeddedRedis, tmp_path: Path
) -> None:
    admin = create_redis(no_library.url, name="admin")
    try:
        # An older version, loaded, is not this one.
        older = build({"gate": "return 1"})
        await admin.execute_command("FUNCTION", "LOAD", older.code)  # type: ignore[no-untyped-call]
        await grant(admin, "nolib")
        await publish_plan(admin, "nolib")
        daemon = Daemon(acl_url(no_library, DAEMON), tmp_path)
        daemon.start()
        assert daemon.proc is not None
        code = await asyncio.to_thread(daemon.proc.wait, 30)
        assert code == 2, daemon.log()
        log = daemon.log()
        assert LIBRARY.name in log and "FUNCTION LOAD" in log, log
        # Nothing was consumed or published, and check says what is missing.
        assert await admin.exists(GOV.key("nolib"), P33.key("nolib")) == 2
        assert await admin.xlen(K.RESULT_STREAM) == 0
        check = run_cli("check", "--role", "daemon", url=acl_url(no_library, DAEMON))
        line = next(x for x in check.stdout.splitlines() if x[7:].startswith("functions"))
        assert line.startswith("[FAIL]") and LIBRARY.name in line, line
        assert check.returncode == 1
    finally:
        await admin.aclose()


async def test_a_library_removed_while_running_leaves_plans_waiting(
    shipped: EmbeddedRedis, tmp_path: Path
) -> None:
    admin = create_redis(shipped.url, name="admin")
    daemon = Daemon(acl_url(shipped, DAEMON), tmp_path)
    daemon.start()
    try:
        await daemon.ready(admin)
        await admin.execute_command("FUNCTION", "FLUSH")  # type: ignore[no-untyped-call]
        await grant(admin, "flushed")
        await publish_plan(admin, "flushed")

        def missing() -> list[dict[str, Any]]:
            return [r for r in daemon.records() if LIBRARY.name in str(r.get("error", ""))]

        await until(missing)  # the daemon has tried the plan and met the missing library
        # Fail closed: no result, the permits untouched, the entry still pending.
        assert await admin.xlen(K.RESULT_STREAM) == 0
        assert await admin.exists(GOV.key("flushed"), P33.key("flushed")) == 2
        assert await pending_count(admin) == 1
        assert "FUNCTION LOAD" in str(missing()[0]["error"]), daemon.log()
        load_functions(shipped)  # the admin loads it again: the plan goes through
        result = await wait_result(admin, "flushed", timeout=30)
        assert result["executed"] == "True", result
        assert await admin.xlen(K.RESULT_STREAM) == 1  # and no earlier result was written
    finally:
        daemon.stop()
        await admin.aclose()


async def test_an_acl_without_fcall_stops_the_start_with_one_line(
    shipped: EmbeddedRedis, tmp_path: Path
) -> None:
    """An upgrade that forgot the new ACL file (no +fcall): no start, and it says why."""
    rules = [r for r in acl_lines()[DAEMON] if "+fcall" not in r]
    admin = create_redis(shipped.url, name="admin")
    try:
        await setuser(admin, "old-acl", *rules, ">old-acl-pw")
        daemon = Daemon(acl_url(shipped, "old-acl", "old-acl-pw"), tmp_path)
        daemon.start()
        assert daemon.proc is not None
        assert await asyncio.to_thread(daemon.proc.wait, 30) == 2, daemon.log()
        assert "may not call" in daemon.log() and "apply-layer.acl" in daemon.log()
    finally:
        await admin.aclose()
