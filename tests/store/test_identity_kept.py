"""The Redis identity kept across restarts (``APPLY_STATE_DIR``), so a restart against
an unchanged Redis need not wait out ``recvWindow`` before its first send.

Each "process" here is a new :class:`IdentityTracker` on the same state file,
meeting a real ``redis-server`` through a real connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from apply_layer.daemon.service import ApplyService
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.settings import Settings
from apply_layer.store.connection import close_redis, create_redis
from apply_layer.store.identity import STATE_FILE, IdentityTracker, state_file


async def _start(server: EmbeddedRedis, path: Path | None) -> IdentityTracker:
    """A process's first connection to ``server``: what its tracker concludes."""
    tracker = IdentityTracker(state_path=path)
    client = create_redis(server.url, name="tests", identity=tracker)
    try:
        await client.ping()
    finally:
        await close_redis(client)
    return tracker


def _now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_restart_against_the_same_server_keeps_the_first_sighting(
    own_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path = tmp_path / STATE_FILE
    first = await _start(own_redis_server, path)
    assert first.identity is not None and 0 < first.changed_at_ms <= _now_ms()
    kept = json.loads(path.read_text())
    assert kept == {
        "run_id": first.identity.run_id,
        "replid": first.identity.replid,
        "since_ms": first.changed_at_ms,
    }
    await asyncio.sleep(0.05)
    again = await _start(own_redis_server, path)
    # The moment an earlier run first met this server stands: no send can be unseen since.
    assert again.changed_at_ms == first.changed_at_ms < _now_ms() - 40


async def test_a_restart_against_a_restarted_server_counts_as_a_change(
    own_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path = tmp_path / STATE_FILE
    first = await _start(own_redis_server, path)
    own_redis_server.restart()  # a new run_id: writes since the last save may be lost
    before = _now_ms()
    again = await _start(own_redis_server, path)
    assert again.identity is not None and first.identity is not None
    assert again.identity.run_id != first.identity.run_id
    assert again.changed_at_ms >= before  # waits out the window, as with no file
    assert json.loads(path.read_text())["run_id"] == again.identity.run_id


@pytest.mark.parametrize("content", ["", "{", '{"run_id": "x"}', "[1, 2]", None])
async def test_an_unreadable_or_foreign_file_counts_as_a_change(
    own_redis_server: EmbeddedRedis, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / STATE_FILE
    if content is not None:
        path.write_text(content)
    before = _now_ms()
    tracker = await _start(own_redis_server, path)
    assert tracker.changed_at_ms >= before
    assert json.loads(path.read_text())["since_ms"] == tracker.changed_at_ms


async def test_a_kept_moment_in_the_future_is_not_trusted(
    own_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path = tmp_path / STATE_FILE
    first = await _start(own_redis_server, path)
    assert first.identity is not None
    path.write_text(
        json.dumps(
            {
                "run_id": first.identity.run_id,
                "replid": first.identity.replid,
                "since_ms": _now_ms() + 60_000,
            }
        )
    )
    before = _now_ms()
    assert (await _start(own_redis_server, path)).changed_at_ms >= before


async def test_a_change_seen_by_a_running_process_is_kept_for_the_next(
    own_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    path = tmp_path / STATE_FILE
    tracker = IdentityTracker(state_path=path)
    client = create_redis(own_redis_server.url, name="tests", identity=tracker)
    try:
        await client.ping()
        own_redis_server.restart()
        await client.ping()  # reconnects: a new identity
    finally:
        await close_redis(client)
    assert tracker.changes == 1 and tracker.identity is not None
    kept = json.loads(path.read_text())
    assert (kept["run_id"], kept["since_ms"]) == (tracker.identity.run_id, tracker.changed_at_ms)
    assert (await _start(own_redis_server, path)).changed_at_ms == tracker.changed_at_ms


def test_an_identity_that_cannot_be_read_removes_the_kept_one(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_text('{"run_id": "a", "replid": "b", "since_ms": 1}')
    tracker = IdentityTracker(state_path=path)
    tracker.observe(None)  # INFO refused: every reconnect is a possible loss
    assert tracker.unknown and not path.exists()


def test_where_the_identity_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert state_file(None) is None
    assert state_file(tmp_path) == tmp_path / STATE_FILE
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")  # systemd's list
    assert state_file(None) == tmp_path / "a" / STATE_FILE
    assert state_file(tmp_path / "c") == tmp_path / "c" / STATE_FILE  # the setting wins
    monkeypatch.setenv("APPLY_STATE_DIR", str(tmp_path / "d"))
    service = ApplyService(Settings(mode="paper"))
    assert service.identity.state_path == tmp_path / "d" / STATE_FILE
