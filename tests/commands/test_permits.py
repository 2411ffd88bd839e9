"""``apply-layer permits``: what the gate would see, without changing anything."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis as sync_redis

from apply_layer.commands import main
from apply_layer.ops.embedded_redis import EmbeddedRedis, free_port
from apply_layer.store.connection import redact_url
from tests.harness import cli_database


@pytest.fixture
def db(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[sync_redis.Redis]:
    with cli_database(redis_server, monkeypatch, 5) as client:
        yield client


def test_permits_shows_each_issuer_and_the_would_be_decision(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    db.set("quantum:permit:p1", json.dumps({"granted": True}), ex=60)
    db.set("quantum:permit:p33:p1", json.dumps({"allow": True, "safe_qty": 0.002}), ex=60)
    assert main(["permits", "p1", "--symbol", "BTCUSDT"]) == 0
    out = capsys.readouterr().out
    assert "governor  allow" in out and "p33       allow" in out
    assert "the gate would decide: OK safe_qty=0.002" in out
    assert db.exists("quantum:permit:p1", "quantum:permit:p33:p1") == 2  # read-only


def test_permits_json_reports_a_deny_and_the_kill_switch(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    db.set("quantum:permit:p33:p2", json.dumps({"allow": False, "reason": "no_position"}))
    db.set("quantum:kill", "on")
    assert main(["permits", "p2", "--symbol", "BTCUSDT", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["would_decide"] == "BLOCK kill_switch"
    assert view["kill_switch"]["quantum:kill"] is True
    p33 = next(p for p in view["permits"] if p["issuer"] == "p33")
    assert (p33["verdict"], p33["reason"], p33["ttl"]) == ("deny", "no_position", -1)
    gov = next(p for p in view["permits"] if p["issuer"] == "governor")
    assert (gov["verdict"], gov["type"], gov["ttl"]) == ("missing", "none", -2)


def test_oversized_permits_and_markers_are_summarised_not_printed(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    db.set("quantum:permit:p33:p3", json.dumps({"allow": True, "pad": "x" * (1 << 20)}))
    db.hset("quantum:permit:p3", mapping={"granted": "true", "pad": "y" * 10_000})
    db.set("quantum:governor:block:p3", "z" * (1 << 20))
    assert main(["permits", "p3", "--symbol", "BTCUSDT", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out) < 5000
    view = json.loads(out)
    assert {p["reason"] for p in view["permits"]} == {"oversized"}
    assert view["would_decide"] == "BLOCK governor_blocked:oversized_marker"


def test_a_permit_of_another_type_is_a_deny_not_missing(
    db: sync_redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the gate reads it (wrong_type); the command used to call it missing and WAIT.
    db.set("quantum:permit:p4", json.dumps({"granted": True}))
    db.rpush("quantum:permit:p33:p4", "1")
    db.hset("quantum:kill", mapping={"on": "1"})  # another type: off, as for the gate
    assert main(["permits", "p4", "--symbol", "BTCUSDT", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    p33 = next(p for p in view["permits"] if p["issuer"] == "p33")
    assert (p33["verdict"], p33["reason"], p33["type"]) == ("deny", "wrong_type", "list")
    assert view["kill_switch"]["quantum:kill"] is False
    assert view["would_decide"] == "BLOCK p33_permit_denied:wrong_type"


def test_bad_plan_id_and_unreachable_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["permits", "bad id!"]) == 1
    assert "is not a plan id" in capsys.readouterr().err
    monkeypatch.setenv("APPLY_REDIS_URL", f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    assert main(["permits", "p1"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://user:***@127.0.0.1" in err
    assert "hunter2" not in err and "Traceback" not in err


def test_redact_url() -> None:
    assert redact_url("rediss://u:pw@h:6380/1") == "rediss://u:***@h:6380/1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
