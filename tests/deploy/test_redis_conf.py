"""deploy/redis/apply-layer.conf: a real redis-server started with it, crashed and restarted.

What a test can show of the fragment: the server runs with it (no typo
stops it), every setting RELIABILITY.md relies on is in force, ``apply-layer
check`` reads them back, and a SIGKILL of Redis loses nothing the daemon
wrote. (What ``appendfsync always`` adds over ``everysec``, surviving a crash
of the machine, cannot be shown without crashing one.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from apply_layer.commands import main
from apply_layer.core import keys as K
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store.connection import create_redis
from tests.harness import Daemon, grant, pending_count, publish_plan, results, wait_result

CONF = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "apply-layer.conf"


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    # EmbeddedRedis's own options come first; the fragment, included last, wins.
    with EmbeddedRedis(extra_args=("--include", str(CONF))) as redis_server:
        yield redis_server


@pytest.fixture
async def client(server: EmbeddedRedis) -> AsyncIterator[Redis]:
    redis = create_redis(server.url, name="tests")
    yield redis
    await redis.aclose()


async def test_the_fragment_is_in_force(client: Redis) -> None:
    config: dict[str, str] = {}
    for name in (
        "appendonly",
        "appendfsync",
        "no-appendfsync-on-rewrite",
        "aof-use-rdb-preamble",
        "save",
        "stop-writes-on-bgsave-error",
        "maxmemory-policy",
        "notify-keyspace-events",
        "replica-read-only",
        "proto-max-bulk-len",
    ):
        reply: dict[Any, Any] = await client.config_get(name)
        config |= {str(k): str(v) for k, v in reply.items()}
    assert config == {
        "appendonly": "yes",
        "appendfsync": "always",
        "no-appendfsync-on-rewrite": "no",
        "aof-use-rdb-preamble": "yes",
        "save": "3600 1 300 100 60 10000",
        "stop-writes-on-bgsave-error": "yes",
        "maxmemory-policy": "noeviction",
        "notify-keyspace-events": "$hK",
        "replica-read-only": "yes",
        "proto-max-bulk-len": str(64 * 1024 * 1024),
    }


async def test_no_value_past_64_mb_can_be_written_or_grown(client: Redis) -> None:
    """A huge permit cannot exist: freeing it would stall Redis (issue 21, finding 3)."""
    # Refused as a protocol error: Redis drops the writer's connection.
    with pytest.raises((ResponseError, RedisConnectionError)):
        await client.set(K.ISSUERS["p33"].key("huge"), b"x" * (64 * 1024 * 1024 + 1))
    await client.set("grow", b"x" * (64 * 1024 * 1024 - 8))
    with pytest.raises(ResponseError, match="maximum allowed size"):
        await client.append("grow", b"y" * 16)
    assert await client.exists(K.ISSUERS["p33"].key("huge")) == 0


def test_check_reads_the_persistence_back(
    server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("APPLY_REDIS_URL", server.url)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "AOF on, appendfsync always: a crash loses nothing acknowledged" in out
    assert re.search(r"\[ OK \] keyspace events +on ", out), out


async def test_a_redis_crash_loses_nothing_the_daemon_wrote(
    server: EmbeddedRedis, client: Redis, tmp_path: Path
) -> None:
    daemon = Daemon(server.url, tmp_path, "conf1")
    try:
        await daemon.start().ready(client)
        await grant(client, "c1")
        await publish_plan(client, "c1")
        before = await wait_result(client, "c1")
        journal = await client.hgetall(K.journal("c1"))
        server.stop(kill=True)  # SIGKILL: no shutdown save
        server.start()
        after = [r for r in await results(client) if r["plan_id"] == "c1"]
        assert after == [before]
        assert await client.hgetall(K.journal("c1")) == journal
        await grant(client, "c2")
        await publish_plan(client, "c2")  # the daemon goes on, on the restarted server
        assert (await wait_result(client, "c2", timeout=30))["status"] == "EXECUTED"
        for _ in range(50):
            if await pending_count(client) == 0:
                break
            await asyncio.sleep(0.1)
        assert await pending_count(client) == 0
        messages = [r.get("message") for r in daemon.records()]
        assert "redis_identity_changed" in messages  # a restart is a new server
        for _ in range(100):  # the rewrite of remembered results runs beside the plans
            republished = [r for r in daemon.records() if r.get("message") == "results_republished"]
            if republished:
                break
            await asyncio.sleep(0.05)
        # Nothing was lost, so nothing was written again.
        assert republished and all(r["restored"] == 0 for r in republished), json.dumps(republished)
    finally:
        daemon.stop()
