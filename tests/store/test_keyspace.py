"""The keyspace watcher against a server whose ACL refuses its channels.

Before the fix the watcher counted a subscribe as done as soon as the
command was sent, so Redis's refusal (which arrives afterwards) reset the
backoff every time: about ten refused subscribes a second, forever, and a
warning for each. These tests count the refusals on the server (``ACL LOG``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import keyspace as notify
from apply_layer.store.connection import create_redis
from apply_layer.store.gate import GateConfig
from apply_layer.store.keyspace import KeyspaceWatcher
from tests.acl import refusals, setuser

USER, PASSWORD = "watcher", "watcher-pw-123"
PATTERNS = GateConfig().watch_patterns()
# Everything the watcher sends, but no channel at all (acl-pubsub-default is resetchannels).
RULES = ["on", f">{PASSWORD}", "resetchannels", "-@all", "+psubscribe", "+punsubscribe", "+ping"]
RULES += ["+client|setname", "+config|get", "+select"]


async def _refusals(admin: Redis) -> int:
    return await refusals(admin, USER, "channel")


@pytest.fixture
async def admin(own_redis_server: EmbeddedRedis) -> Any:
    client = create_redis(own_redis_server.url, name="admin")
    await client.config_set("notify-keyspace-events", "K$h")
    await client.acl_setuser(USER, reset=True)
    await setuser(client, USER, *RULES)
    await client.acl_log_reset()
    yield client
    await client.aclose()


def _user_url(server: EmbeddedRedis) -> str:
    return f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"


async def test_a_refused_subscribe_backs_off_and_is_logged_once(
    own_redis_server: EmbeddedRedis, admin: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_redis(_user_url(own_redis_server), name="watcher")
    watcher = KeyspaceWatcher(client, PATTERNS, mode="detect")
    try:
        started = time.monotonic()
        status = await watcher.start()
        active = watcher.active
        await asyncio.sleep(4.0)
        elapsed = time.monotonic() - started
        refused = await _refusals(admin)
        attempts = getattr(watcher, "attempts", None)  # (the old watcher had no count)
    finally:
        await watcher.stop()
        await client.aclose()
    # Doubling from 0.1 s: attempts at ~0, 0.1, 0.3, 0.7, 1.5 and 3.1 s. The old
    # loop made ~10 a second (39 in these 4 s when measured).
    assert 3 <= refused <= 8, f"{refused} refused subscribes in {elapsed:.1f} s"
    assert attempts == refused
    assert status.startswith("subscribe failed (this user has no permissions"), status
    assert not active
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert log.count("keyspace_watcher_refused") == 1, log
    assert "keyspace_watcher_lost" not in log


async def test_once_the_channels_are_granted_it_subscribes_and_wakes(
    own_redis_server: EmbeddedRedis,
    admin: Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(notify, "MAX_REFUSED_BACKOFF_SEC", 0.4)
    client = create_redis(_user_url(own_redis_server), name="watcher")
    watcher = KeyspaceWatcher(client, PATTERNS, mode="detect")
    try:
        await watcher.start()
        assert not watcher.active
        # The literal patterns the watcher uses (the gate's and the heartbeat's, its
        # canary): the ACL compares them as text.
        channels = ["&" + c for c in notify.channels(PATTERNS, 0)]
        await setuser(admin, USER, *channels)
        for _ in range(60):
            if watcher.active:
                break
            await asyncio.sleep(0.05)
        assert watcher.active and watcher.error == ""
        with watcher.watch(["quantum:permit:p33:plan1"]) as woken:
            woken.clear()
            await admin.set("quantum:permit:p33:plan1", "{}")
            await asyncio.wait_for(woken.wait(), timeout=2.0)
    finally:
        await watcher.stop()
        await client.aclose()
    assert "keyspace_watcher_subscribed" in [r.getMessage() for r in caplog.records]


async def test_a_broad_pattern_grant_is_not_enough(
    own_redis_server: EmbeddedRedis, admin: Redis
) -> None:
    """``&__keyspace@0__:quantum:*`` does not cover the watcher's narrower patterns."""
    await setuser(admin, USER, "&__keyspace@0__:quantum:*")
    client = create_redis(_user_url(own_redis_server), name="watcher")
    watcher = KeyspaceWatcher(client, PATTERNS, mode="detect")
    try:
        await watcher.start()
        assert not watcher.active and "no permissions" in watcher.error
    finally:
        await watcher.stop()
        await client.aclose()


async def test_without_config_get_it_still_subscribes(
    own_redis_server: EmbeddedRedis, admin: Redis
) -> None:
    """A least-privilege user has no CONFIG: the watcher subscribes anyway."""
    channels = ["&" + c for c in notify.channels(PATTERNS, 0)]
    await setuser(admin, USER, "-config|get", *channels)
    client = create_redis(_user_url(own_redis_server), name="watcher")
    watcher = KeyspaceWatcher(client, PATTERNS, mode="detect")
    try:
        status = await watcher.start()
        assert status.startswith("on (CONFIG GET refused"), status
        assert watcher.active
    finally:
        await watcher.stop()
        await client.aclose()


async def test_a_failed_heartbeat_write_is_not_taken_for_events_off(
    own_redis_server: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The canary expects an event only for a write that happened: a full Redis
    (``OOM``, ``maxmemory`` with ``noeviction``) refuses the heartbeat, and that
    is not keyspace events off. A write that happened and brought no event is."""
    from apply_layer.core import keys as K
    from apply_layer.daemon.housekeeping import Housekeeping
    from tests.harness import settings_for

    monkeypatch.setattr(notify, "CANARY_SEC", 0.3)
    admin = create_redis(own_redis_server.url, name="admin")
    await admin.config_set("notify-keyspace-events", "K$h")
    await admin.xgroup_create(K.PLAN_STREAM, "apply_layer", id="$", mkstream=True)
    client = create_redis(own_redis_server.url, name="watcher")
    watcher = KeyspaceWatcher(client, PATTERNS, mode="detect")
    settings = settings_for(own_redis_server, poll_sec=0.01)
    chores = Housekeeping(
        settings, client, watcher, in_flight=(), room=lambda: 0, spawn=lambda entry: None
    )

    async def tick() -> None:
        await asyncio.sleep(0.02)  # past poll_sec: the tick is due
        await chores.run_if_due()

    def off_lines() -> int:
        return [r.getMessage() for r in caplog.records].count("keyspace_events_off")

    try:
        await watcher.start()
        await tick()
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        with pytest.raises(OutOfMemoryError):
            await tick()
        await asyncio.sleep(0.6)  # twice the bound
        await admin.config_set("maxmemory", "0")
        await tick()
        await asyncio.sleep(0.1)
        assert watcher.active and off_lines() == 0
        # The same written for real, with events off on the server: noticed.
        await admin.config_set("notify-keyspace-events", "")
        await tick()
        await asyncio.sleep(0.6)
        await tick()
        assert not watcher.active and off_lines() == 1
    finally:
        await watcher.stop()
        await client.aclose()
        await admin.aclose()
