"""Keyspace events turned off are noticed by the shipped least-privilege user (issue 23).

``quantum-apply`` may not run ``CONFIG GET`` (it would show ``requirepass``),
so re-reading the server's setting cannot tell it that an admin ran
``CONFIG SET notify-keyspace-events ""``: before the canary, the gauge stayed
1 and nothing was logged. Now each heartbeat ``SET`` must come back as a
keyspace event: here the daemon runs in-process as ``quantum-apply`` on the
shipped ACL, an admin turns events off and on again, and the gauge and the
log follow, once each way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from apply_layer.core import keys as K
from apply_layer.daemon.service import ApplyService
from apply_layer.ops.embedded_redis import EmbeddedRedis
from apply_layer.store import keyspace
from apply_layer.store.connection import create_redis
from tests.acl import refusals
from tests.deploy.test_redis_acl import (  # the shipped ACL on a real server, as deployed
    DAEMON,
    IN_CI,
    _apply_acl_file,
    _server_version,
    _url,
)
from tests.harness import settings_for
from tests.test_metrics import sample, until

GAUGE = "apply_keyspace_notifications_active"


@pytest.fixture
def shipped() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(notify_keyspace_events="K$h") as server:
        if _server_version(server) < (7, 0):
            if IN_CI:
                pytest.fail("CI needs redis-server >= 7 for the ACL tests")
            pytest.skip("the shipped ACL needs redis-server >= 7")
        _apply_acl_file(server)
        yield server


@pytest.fixture
async def admin(shipped: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(shipped.url, name="admin")
    await client.acl_log_reset()
    yield client
    await client.aclose()


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


async def test_events_turned_off_are_noticed_without_config_get(
    shipped: EmbeddedRedis, admin: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    gauge = {"configured": "detect"}
    service = ApplyService(settings_for(shipped, redis_url=_url(shipped, DAEMON)))  # 0.5 s ticks
    runner = asyncio.create_task(service.run())
    try:
        await until(lambda: service._group_ready)
        # The least-privilege path: the setting cannot be read.
        assert service.watcher.status.startswith("on (CONFIG GET refused"), service.watcher.status
        await until(lambda: sample(GAUGE, **gauge) == 1)
        # Events flowing: no false alarm over more than the canary's bound.
        await asyncio.sleep(keyspace.CANARY_SEC + 1.0)
        assert sample(GAUGE, **gauge) == 1
        assert not _lines(caplog, "keyspace_events_off")

        started = time.monotonic()
        await admin.config_set("notify-keyspace-events", "")
        await until(lambda: sample(GAUGE, **gauge) == 0)
        noticed = time.monotonic() - started
        # The next heartbeat (<= 0.5 s), its bound (2 s), the tick that judges it (<= 0.5 s).
        assert noticed < 4.0, noticed
        await asyncio.sleep(1.5)  # three more ticks of silence: still one line
        assert sample(GAUGE, **gauge) == 0
        (off,) = _lines(caplog, "keyspace_events_off")
        assert "heartbeat" in off.why  # type: ignore[attr-defined]
        assert off.channel == K.keyspace_channel(K.HEARTBEAT_KEY, 0)  # type: ignore[attr-defined]
        assert not _lines(caplog, "keyspace_events_back")

        started = time.monotonic()
        await admin.config_set("notify-keyspace-events", "K$h")
        await until(lambda: sample(GAUGE, **gauge) == 1)
        assert time.monotonic() - started < 2.0  # the next heartbeat's event, the next tick
        await asyncio.sleep(1.0)
        assert sample(GAUGE, **gauge) == 1
        assert len(_lines(caplog, "keyspace_events_back")) == 1
        assert len(_lines(caplog, "keyspace_events_off")) == 1
    finally:
        service.request_stop()
        assert await runner == 0
    # The heartbeat's channel is granted: the one refusal is the watcher's CONFIG GET at start.
    assert await refusals(admin, DAEMON) == 1
