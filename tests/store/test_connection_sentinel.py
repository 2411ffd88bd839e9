"""Redis through Sentinel (real processes): clients follow a failover, check shows the topology.

A primary, a replica and three sentinels (``redis-server --sentinel``) on
free loopback ports (``tests/sentinels.py``). The daemon under failover,
with plans flowing, is in ``test_chaos.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from apply_layer.commands import main
from apply_layer.core.check_line import CheckLine
from apply_layer.core.errors import ReplicaRefused
from apply_layer.ops.topology import persistence_line, replication_lines
from apply_layer.settings import Settings
from apply_layer.store.connection import close_redis, create_redis, redis_for, sentinel_of
from apply_layer.store.identity import IdentityTracker
from tests.sentinels import SERVICE, RedisSentinels, sentinel_supported

pytestmark = pytest.mark.skipif(
    not sentinel_supported() and os.environ.get("CI") != "true",
    reason="no redis-server that runs in sentinel mode on this machine",
)
UNUSED_URL = "redis://127.0.0.1:1/0"  # with sentinels, only its db, user and password count


def sentinel_settings(setup: RedisSentinels) -> Settings:
    return Settings(
        redis_url=UNUSED_URL,
        redis_sentinels=setup.addresses,  # type: ignore[arg-type]  # parsed from the CSV
        redis_sentinel_service=SERVICE,
    )


async def test_a_client_follows_a_failover_and_notices_the_new_server() -> None:
    async with RedisSentinels() as setup:
        identity = IdentityTracker()
        client = redis_for(sentinel_settings(setup), name="tests", identity=identity)
        try:
            await client.set("before", "1")
            first = identity.identity
            old = await setup.primary_port()
            await setup.kill_primary()
            for _ in range(100):  # a few failed commands while the pool finds the new primary
                try:
                    await client.set("after", "2")
                    break
                except RedisError:
                    await asyncio.sleep(0.1)
            assert await client.get("before") == "1"  # replicated before the kill
            assert await client.get("after") == "2"
            assert await setup.primary_port() != old
            assert identity.changes == 1 and identity.identity != first
            assert identity.identity is not None and identity.identity.role == "master"
        finally:
            await close_redis(client)


async def _sentinel_connections(setup: RedisSentinels, name: str) -> dict[int, int]:
    """Per sentinel, the connections named ``name`` it holds (``CLIENT LIST``)."""
    held: dict[int, int] = {}
    for sentinel in setup.sentinels:
        client = sentinel.client()
        try:
            listed = await client.client_list()
        finally:
            await client.aclose()
        held[sentinel.port] = sum(1 for c in listed if c.get("name") == name)
    return held


async def test_many_tasks_through_a_failover_keep_every_sentinel_and_close_them_all() -> None:
    """Twenty tasks write while the primary is killed: after a failover they reconnect
    at once, each asking the sentinels. The client still knows each sentinel once
    (``store/sentinel_discovery.py``), and closing it leaves no connection open on
    any sentinel (redis-py's own discovery lost one from its list in 2 of 3 such
    runs, and with it the connections it held)."""
    async with RedisSentinels() as setup:
        client = redis_for(sentinel_settings(setup), name="tests", identity=IdentityTracker())
        manager = sentinel_of(client)
        assert manager is not None
        stop = asyncio.Event()

        async def write(n: int) -> None:
            while not stop.is_set():
                try:
                    await client.set(f"k{n}", "v")
                except RedisError:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.005)

        writers = [asyncio.create_task(write(n)) for n in range(20)]
        try:
            await setup.kill_primary()
            await client.set("after", "1")  # through the new primary
        finally:
            stop.set()
            await asyncio.gather(*writers)
            known = [s.connection_pool.connection_kwargs["port"] for s in manager.sentinels]
            await close_redis(client)
        assert sorted(known) == sorted(s.port for s in setup.sentinels)
        for _ in range(50):  # the sentinels notice the closes within a moment
            held = await _sentinel_connections(setup, "tests:sentinel")
            if not any(held.values()):
                break
            await asyncio.sleep(0.05)
        assert held == dict.fromkeys(held, 0)


async def test_a_connection_to_a_replica_is_refused() -> None:
    async with RedisSentinels() as setup:
        primary = await setup.primary_port()
        replica = next(n for n in setup.nodes if n.port != primary)
        client = create_redis(replica.url, name="tests", identity=IdentityTracker())
        try:
            with pytest.raises(RedisConnectionError) as caught:
                await client.ping()
            assert isinstance(caught.value, ReplicaRefused) or "slave" in str(caught.value)
        finally:
            await client.aclose()


@pytest.fixture
def setup() -> Iterator[RedisSentinels]:
    sentinels = RedisSentinels()
    asyncio.run(sentinels.start())
    try:
        yield sentinels
    finally:
        sentinels.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("APPLY_", "BINANCE_")):
            monkeypatch.delenv(name)


def test_check_reports_the_topology(
    setup: RedisSentinels, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLY_REDIS_URL", UNUSED_URL)
    monkeypatch.setenv("APPLY_REDIS_SENTINELS", setup.addresses)
    monkeypatch.setenv("APPLY_REDIS_SENTINEL_SERVICE", SERVICE)
    primary = asyncio.run(setup.primary_port())
    replica = next(n for n in setup.nodes if n.port != primary)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert (
        f"3 of 3 answer for 'quantum' (quorum 2, a failover needs 2); primary 127.0.0.1:{primary}"
        in out
    )
    assert "[ OK ] redis primary" in out and "1 replica(s) connected" in out
    assert f"127.0.0.1:{replica.port} online, lag " in out and "bytes behind" in out
    assert "[ OK ] redis persistence" in out and "none: a restart loses" in out

    setup.sentinels[0].stop()
    setup.sentinels[1].stop()  # one of three left: no failover could be authorised
    monkeypatch.setenv("APPLY_REDIS_WAIT_REPLICAS", "2")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] redis sentinels" in out and "1 of 3 answer" in out
    assert "[FAIL] redis wait" in out and "APPLY_REDIS_WAIT_REPLICAS=2 but 1 replica(s)" in out


def test_check_with_no_sentinel_answering_fails_cleanly(
    setup: RedisSentinels, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for sentinel in setup.sentinels:
        sentinel.stop()
    monkeypatch.setenv("APPLY_REDIS_SENTINELS", setup.addresses)
    monkeypatch.setenv("APPLY_REDIS_SENTINEL_SERVICE", SERVICE)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] redis" in out and "unreachable" in out


# -- the pure parts ------------------------------------------------------------


def by_name(lines: list[CheckLine]) -> dict[str, list[CheckLine]]:
    grouped: dict[str, list[CheckLine]] = {}
    for line in lines:
        grouped.setdefault(line.name, []).append(line)
    return grouped


def test_replication_lines_from_info() -> None:
    info = {
        "role": "master",
        "connected_slaves": "2",
        "slave0": "ip=10.0.0.6,port=6379,state=online,offset=900,lag=0",
        "slave1": "ip=10.0.0.7,port=6379,state=wait_bgsave,offset=0,lag=3",
        "master_repl_offset": "1000",
        "master_replid": "0123456789abcdef",
    }
    lines = by_name(replication_lines(info, Settings(redis_wait_replicas=1)))
    first, second = lines["redis replica"]
    assert first.ok and first.detail == "10.0.0.6:6379 online, lag 0 s, 100 bytes behind"
    assert not second.ok and "wait_bgsave" in second.detail
    assert lines["redis wait"][0].ok
    lines = by_name(replication_lines(info, Settings(redis_wait_replicas=2)))
    assert not lines["redis wait"][0].ok
    replica = replication_lines(
        {"role": "slave", "master_host": "h", "master_port": "1"}, Settings()
    )
    assert not replica[0].ok and "slave of h:1" in replica[0].detail
    alone = by_name(
        replication_lines(
            {"role": "master", "connected_slaves": "0"},
            Settings(redis_sentinels="127.0.0.1:1", redis_sentinel_service="q"),  # type: ignore[arg-type]
        )
    )
    assert not alone["redis replica"][0].ok and "nowhere to go" in alone["redis replica"][0].detail


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"appendonly": "yes", "appendfsync": "everysec", "save": ""}, "up to about 1 s"),
        ({"appendonly": "yes", "appendfsync": "always", "save": ""}, "nothing acknowledged"),
        ({"appendonly": "no", "save": "3600 1"}, "since the last snapshot"),
        ({"appendonly": "no", "save": ""}, "a restart loses every plan"),
    ],
)
def test_persistence_line(config: dict[str, str], words: str) -> None:
    line = persistence_line(config)
    assert line.ok and words in line.detail


def test_the_operators_commands_go_through_the_sentinels(
    setup: RedisSentinels, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats --from-redis and dedupe-clear reach the primary the sentinels name, not the URL."""
    port = asyncio.run(setup.primary_port())
    assert port is not None
    primary = sync_redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    primary.xadd(
        "quantum:stream:apply.result",
        {"plan_id": "s1", "symbol": "BTCUSDT", "status": "BLOCKED", "error": "kill_switch"},
    )
    primary.set("quantum:apply:claim:s1", "1-0", ex=60)
    monkeypatch.setenv("APPLY_REDIS_URL", UNUSED_URL)
    monkeypatch.setenv("APPLY_REDIS_SENTINELS", setup.addresses)
    monkeypatch.setenv("APPLY_REDIS_SENTINEL_SERVICE", SERVICE)
    assert main(["stats", "--from-redis", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.dumps(report).count("kill_switch") >= 1
    assert main(["dedupe-clear", "--plan", "s1", "--yes"]) == 0
    assert "deleted 1 of 1 dedupe keys" in capsys.readouterr().out
    assert primary.exists("quantum:apply:claim:s1") == 0
    primary.close()
