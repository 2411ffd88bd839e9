"""``apply-layer dedupe-clear``: SCAN-based, dry run by default, dedupe keys only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from apply_layer.commands import main
from apply_layer.commands.dedupe_clear import PREFIX, Selection, clear_dedupe, is_dedupe_key
from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from tests.harness import cli_database


@pytest.fixture
def db(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[sync_redis.Redis]:
    with cli_database(redis_server, monkeypatch, 7) as client:
        yield client


def _dedupe(db: sync_redis.Redis, *plans: str) -> None:
    db.mset({K.claim(plan): "1" for plan in plans})


def _types(db: sync_redis.Redis) -> dict[str, str]:
    return {str(key): str(db.type(key)) for key in db.scan_iter(count=1000)}


def _neighbours(db: sync_redis.Redis) -> dict[str, str]:
    """Keys that are not dedupe keys, some of them one character away; returns key -> type."""
    for issuer in K.ISSUERS.values():
        db.set(issuer.key("abc1"), json.dumps({"granted": True}), ex=60)
    db.hset(K.journal("abc1"), mapping={"state": "executed", "gate_status": "ALLOW"})
    db.set(K.governor_block("abc2"), json.dumps({"reason": "risk"}))
    db.set(K.cooldown("BTCUSDT"), "1769301008000", ex=3600)
    db.set(K.symbol_lease("BTCUSDT"), "owner")
    db.set(K.HEARTBEAT_KEY, "{}")
    db.set(K.KILL_SWITCH_KEYS[0], "0")
    db.xadd(K.RESULT_STREAM, {"status": "EXECUTED"})
    db.xadd(K.PLAN_STREAM, {"plan_id": "abc1"})
    db.set(PREFIX.removesuffix(":"), "no colon")  # quantum:apply:claim
    db.set(PREFIX.removesuffix(":") + "_old:abc1", "similar prefix")
    db.set("quantum:apply:claimabc1", "no separator")
    db.set("other:quantum:apply:claim:abc1", "prefix elsewhere")
    db.set("abc1", "bare plan id")
    return _types(db)


def test_dry_run_by_plan_lists_and_keeps(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _dedupe(db, "abc1", "abc2", "zzz")
    assert main(["dedupe-clear", "--plan", "abc1", "--plan", "nothere"]) == 0
    out = capsys.readouterr().out
    assert K.claim("abc1") in out and K.claim("abc2") not in out
    assert "no dedupe key for plan nothere" in out
    assert "would delete 1 dedupe keys (plan abc1, nothere); dry run" in out
    assert db.exists(K.claim("abc1"), K.claim("abc2"), K.claim("zzz")) == 3


def test_yes_by_plan_deletes_only_those(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _dedupe(db, "abc1", "abc2", "zzz")
    assert main(["dedupe-clear", "--plan", "abc1", "--plan", "zzz", "--plan", "abc1", "--yes"]) == 0
    assert "deleted 2 of 2 dedupe keys" in capsys.readouterr().out
    assert db.exists(K.claim("abc1"), K.claim("zzz")) == 0
    assert db.exists(K.claim("abc2")) == 1


def test_pattern_dry_run_then_yes(db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    _dedupe(db, "abc1", "abc2", "abd3", "xabc")
    assert main(["dedupe-clear", "--pattern", "abc*"]) == 0
    out = capsys.readouterr().out
    listed = {line for line in out.splitlines() if line.startswith(PREFIX)}
    assert listed == {K.claim("abc1"), K.claim("abc2")}
    assert "would delete 2 dedupe keys (plans matching 'abc*')" in out
    assert db.dbsize() == 4
    assert main(["dedupe-clear", "--pattern", "ab[cd]?", "--yes"]) == 0
    assert "deleted 3 of 3" in capsys.readouterr().out
    assert list(db.scan_iter()) == [K.claim("xabc")]


def test_all_yes_never_touches_other_keys(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _neighbours(db)
    _dedupe(db, "abc1", "abc2", "p-3_x")
    db.set(PREFIX + "legacy:thing", "1")  # under the prefix: a dedupe key too
    assert main(["dedupe-clear", "--all", "--yes"]) == 0
    assert "deleted 4 of 4 dedupe keys (every plan)" in capsys.readouterr().out
    assert _types(db) == before
    assert db.hgetall(K.journal("abc1"))["state"] == "executed"
    assert db.xlen(K.RESULT_STREAM) == 1


def test_thousands_of_keys_go_through_scan_and_batched_unlink(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _neighbours(db)
    with db.pipeline(transaction=False) as pipe:
        for i in range(5000):
            pipe.set(K.claim(f"plan-{i:05d}"), "1", ex=300)
        pipe.execute()
    db.config_resetstat()
    assert main(["dedupe-clear", "--all", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [
        "would delete 5000 dedupe keys (every plan); dry run, nothing deleted (add --yes to delete)"
    ]
    assert main(["dedupe-clear", "--all", "--yes"]) == 0
    assert "deleted 5000 of 5000 dedupe keys" in capsys.readouterr().out
    calls = {
        name.removeprefix("cmdstat_"): int(info["calls"])
        for name, info in db.info("commandstats").items()
    }
    assert "keys" not in calls  # never KEYS
    assert calls["scan"] >= 2 * 5  # two walks of >= 5 SCAN calls each (COUNT 1000)
    assert calls["unlink"] == 10  # 5000 keys, 500 per UNLINK
    assert _types(db) == before


def test_dry_run_lists_every_key_of_a_large_set(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _dedupe(db, *(f"p{i}" for i in range(2500)))
    assert main(["dedupe-clear", "--pattern", "p*", "--scan-count", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len({line for line in lines if line.startswith(PREFIX)}) == 2500
    assert lines[-1].startswith("would delete 2500 dedupe keys")
    assert db.dbsize() == 2500


async def test_clear_dedupe_core(redis: Redis) -> None:
    await redis.mset({K.claim(f"x{i}"): "1" for i in range(23)})
    await redis.set(K.journal("x1"), "keep")
    seen: list[str] = []
    dry = await clear_dedupe(redis, Selection(pattern="x*"), delete=False, on_key=seen.append)
    assert (len(dry.matched), dry.deleted, sorted(seen)) == (23, 0, sorted(dry.matched))
    done = await clear_dedupe(redis, Selection(pattern="*"), delete=True, scan_count=5, batch=4)
    assert (len(done.matched), done.deleted) == (23, 23)
    assert await redis.dbsize() == 1
    gone = await clear_dedupe(redis, Selection(plans=("x1", "x2")), delete=True)
    assert (gone.matched, gone.deleted, gone.missing) == ([], 0, ["x1", "x2"])


def test_is_dedupe_key() -> None:
    assert is_dedupe_key(K.claim("abc"))
    assert not is_dedupe_key(PREFIX)
    assert not is_dedupe_key(K.journal("abc"))
    assert not is_dedupe_key("x" + K.claim("abc"))


def test_no_selector_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dedupe-clear", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "needs a selector: --plan ID, --pattern GLOB or --all" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plan", "bad id!"], "is not a plan id"),
        (["--plan", "x" * 65], "is not a plan id"),
        (["--plan", "quantum:apply:claim:abc"], "is not a plan id"),
        (["--pattern", "abc:*"], "is not a plan-id glob"),
        (["--pattern", ""], "is not a plan-id glob"),
        (["--plan", "abc", "--all"], "not allowed with"),
        (["--pattern", "a*", "--all"], "not allowed with"),
        (["--all", "--scan-count", "0"], "is not a count"),
        (["--all", "--force"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dedupe-clear", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["dedupe-clear", "--all", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://127.0.0.1" in err and "Traceback" not in err


def test_the_planners_dedupe_keys_are_never_touched(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _dedupe(db, "abc1")
    db.set("quantum:apply:dedupe:abc1", "1795977136", ex=300)  # the planner's, same plan
    assert main(["dedupe-clear", "--all", "--yes"]) == 0
    assert "deleted 1 of 1 dedupe keys (every plan)" in capsys.readouterr().out
    assert db.get("quantum:apply:dedupe:abc1") == "1795977136"
    assert not is_dedupe_key("quantum:apply:dedupe:abc1")


def test_a_key_name_is_printed_escaped_never_raw(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Anyone who may write a claim key may name it: a terminal escape or a newline in
    # the name must not draw on the operator's terminal or forge a line of the listing.
    hostile = K.claim("x\x1b[2J\nwould delete 0 dedupe keys\u2028")
    db.set(hostile, "1")
    assert main(["dedupe-clear", "--all"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u2028" not in out
    assert "x\\x1b[2J\\nwould delete 0 dedupe keys\\u2028" in out
    assert out.count("\n") == 2  # the one key, and the summary
    assert db.exists(hostile) == 1
